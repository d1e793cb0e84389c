#!/usr/bin/python3
"""Adding a folder of images through the ingest service: one UpsertStream
(what tools/ingest/ingest_folder.py does) against the same batches as
Upsert calls one after the other, each waiting for its publish (what the
tool did before). Each run starts a fresh ingest service with the default
model on an empty root; the two are alternated over --rounds, and the
encoder's own speed on the same images (imagesearch-indexer into a
throwaway root, its "img/s") is printed beside them.

  /usr/bin/python3 tools/bench/ingest_stream_bench.py --build=build --dir=/tmp/fmq/images

Prints images/s for each run and the stream / unary ratio per round.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "e2e"))
import grpc_stubs  # noqa: E402
import grpc  # noqa: E402


def start(build, root, model, work):
    port_file = os.path.join(work, "ingest.ports")
    if os.path.exists(port_file):
        os.remove(port_file)
    proc = subprocess.Popen(
        [os.path.join(build, "services", "indexer", "imagesearch-indexer"), "serve",
         f"--root={root}", f"--model={model}", "--port=0", f"--port_file={port_file}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "ingest.log"), "a"))
    for _ in range(600):
        if os.path.exists(port_file):
            return proc, json.load(open(port_file))["grpc"]
        if proc.poll() is not None:
            sys.exit(f"the ingest service exited; see {work}/ingest.log")
        time.sleep(0.1)
    sys.exit("the ingest service did not listen within 60 s")


def batches(pb, files, root_dir, size):
    for i in range(0, len(files), size):
        req = pb.UpsertRequest()
        for path in files[i:i + size]:
            with open(path, "rb") as f:
                req.items.add(id=os.path.relpath(path, root_dir), image=f.read())
        yield req


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--dir", required=True, help="a folder of images")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    src = os.path.join(HERE, "..", "..")
    pb, pb_grpc = grpc_stubs.load(os.path.join(src, "proto"))
    model = os.path.join(args.build, "models", "default", "model.pt")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(args.dir) for f in fs
                   if f.lower().endswith((".png", ".jpg", ".jpeg")))
    work = tempfile.mkdtemp(prefix="imagesearch_ingest_stream_")
    try:
        out = subprocess.run([os.path.join(args.build, "services", "indexer", "imagesearch-indexer"),
                              f"--input={args.dir}", f"--root={os.path.join(work, 'enc')}",
                              f"--model={model}", "--progress=none"],
                             capture_output=True, text=True, check=True).stdout
        encoder = float(re.search(r"\(([0-9.]+) img/s", out).group(1))
        print(f"{len(files)} images, batches of {args.batch}; the indexer alone: {encoder:.1f} img/s")
        for r in range(args.rounds):
            rates = {}
            for kind in ("stream", "unary"):
                root = os.path.join(work, f"{kind}{r}")
                proc, port = start(args.build, root, model, work)
                stub = pb_grpc.IngestStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
                t0 = time.monotonic()
                accepted = 0
                if kind == "stream":
                    for a in stub.UpsertStream((pb.UpsertStreamRequest(upsert=b) for b in
                                                batches(pb, files, args.dir, args.batch)), timeout=600):
                        accepted += a.upsert.accepted
                else:
                    for b in batches(pb, files, args.dir, args.batch):
                        accepted += stub.Upsert(b, timeout=600).accepted
                took = time.monotonic() - t0
                proc.terminate()
                proc.wait(60)
                if accepted != len(files):
                    sys.exit(f"{kind}: {accepted} of {len(files)} accepted")
                rates[kind] = len(files) / took
                print(f"round {r + 1} {kind}: {took:.1f} s, {rates[kind]:.1f} img/s "
                      f"({rates[kind] / encoder:.2f}x the indexer)")
            print(f"round {r + 1}: stream / unary {rates['stream'] / rates['unary']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
