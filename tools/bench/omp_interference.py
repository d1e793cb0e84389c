#!/usr/bin/env python3
"""How much a light background load slows a 2-thread LibTorch forward pass.

The default model's encode_image runs at batch 4 on 2 intra-op threads while
another thread keeps a duty-cycled load (PIL bicubic resizes) on the cores.
Each parallel region waits for its slowest thread, so the pass loses more than
the load takes. This is why the query service decodes images inside their
batch, on the model's threads (libs/serving/batching_embedder.h).

  /usr/bin/python3 tools/bench/omp_interference.py build/models/default/model.pt
"""
import sys
import threading
import time

import torch
from PIL import Image


def run(model, duty, seconds=6.0):
    stop = threading.Event()

    def load():
        img = Image.new("RGB", (64, 64), (120, 30, 200))
        while not stop.is_set():
            t = time.time()
            while time.time() - t < 0.01 * duty:
                img.resize((224, 224), Image.BICUBIC)
            time.sleep(0.01 * (1 - duty))

    th = threading.Thread(target=load)
    th.start()
    x = torch.rand(4, 3, 224, 224)
    with torch.inference_mode():
        model.encode_image(x)
        t, n = time.time(), 0
        while time.time() - t < seconds:
            model.encode_image(x)
            n += 4
    stop.set()
    th.join()
    return n / (time.time() - t)


def main():
    model = torch.jit.load(sys.argv[1])
    torch.set_num_threads(2)
    base = run(model, 0.0)
    print(f"no background load        {base:6.1f} img/s")
    for duty in (0.15, 0.3):
        rate = run(model, duty)
        print(f"{duty:.0%} background load      {rate:6.1f} img/s  ({rate / base:.2f}x)")


if __name__ == "__main__":
    main()
