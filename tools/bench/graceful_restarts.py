#!/usr/bin/env python3
"""Graceful restarts under image load: 2 replicas of a snapshot indexed with
the default model behind nginx (deploy/local/ctl.sh), one load generator
sending image queries without a retry policy, and `ctl.sh restart` of each
replica in turn (--restarts times, one every few seconds). Prints the load
generator's summary and every failed call with its time and code; a graceful
restart should fail none. All on loopback; ports picked by the processes.

  /usr/bin/python3 tools/bench/graceful_restarts.py --build=build [--restarts=20]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--build", default="build")
p.add_argument("--restarts", type=int, default=20)
p.add_argument("--pause_s", type=float, default=1.5, help="between one restart's end and the next")
a = p.parse_args()
if not 1 <= a.restarts <= 200:
    raise SystemExit("--restarts is 1 to 200")
build = os.path.abspath(a.build)
ctl_sh = os.path.join(SRC, "deploy", "local", "ctl.sh")
images = os.path.join(SRC, "tests", "data", "images")
work = tempfile.mkdtemp(prefix="imagesearch_graceful_")
env = dict(os.environ, RUN_DIR=os.path.join(work, "run"), BUILD_DIR=build, REPLICAS="2",
           SNAPSHOT_ROOT=os.path.join(work, "root"), GRPC_PORT="0", HTTP_PORT="0")


def ctl(*args):
    return subprocess.run(["bash", ctl_sh, *args], env=env, check=True, capture_output=True,
                          text=True)


loadgen = None
try:
    subprocess.run([os.path.join(build, "services", "indexer", "imagesearch-indexer"),
                    f"--input={images}", f"--root={env['SNAPSHOT_ROOT']}",
                    f"--model={os.path.join(build, 'models', 'default', 'model.pt')}",
                    "--max_reject_ratio=0.5", "--progress=none"], check=True, capture_output=True)
    queries = os.path.join(work, "queries")
    os.makedirs(queries)
    for name in ("coffee.png", "rocket.jpg", "chelsea.jpg", "astronaut.png"):
        shutil.copy(os.path.join(images, name), queries)
    ctl("up")
    with open(os.path.join(env["RUN_DIR"], "nginx.ports")) as f:
        grpc_port = json.load(f)["grpc"]
    out = os.path.join(work, "load.json")
    loadgen = subprocess.Popen(
        [os.path.join(build, "tools", "loadgen", "imagesearch-loadgen"),
         f"--target=127.0.0.1:{grpc_port}", "--concurrency=3", "--channels=3",
         "--duration_s=1200", "--timeout_ms=20000", "--kind=image", f"--images={queries}",
         f"--json_out={out}"], stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    time.sleep(3)
    started = []
    for i in range(a.restarts):
        started.append(round(time.monotonic() - t0, 2))
        ctl("restart", str(i % 2))
        time.sleep(a.pause_s)
    loadgen.send_signal(2)
    print(loadgen.communicate(timeout=60)[0].strip())
    with open(out) as f:
        result = json.load(f)
    print(f"restarts began at (s): {started}")
    print(f"GRACEFUL restarts={a.restarts} calls={result['calls']} failed={result['failed']} "
          f"errors={result['errors']}")
finally:
    if loadgen is not None and loadgen.poll() is None:
        loadgen.kill()
    subprocess.run(["bash", ctl_sh, "down"], env=env, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
