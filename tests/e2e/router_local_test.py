#!/usr/bin/env python3
"""deploy/local/shards.sh as an operator runs it: S = 2 shards x R = 2 query
replicas and imagesearch-router with one command, then failover under load
from clients that do not retry (the router does):

  1. `shards.sh up` on a 2-shard collection: the router answers, GetInfo
     names both shards;
  2. under load, one replica of each shard SIGKILLed and started again, and
     one stopped gracefully (SIGTERM) and started again: no failed call;
  3. both replicas of shard 1 killed: UNAVAILABLE naming shard 1, or with
     allow_partial an answer from shard 0 naming 1 missing; both started
     again, the router answers from both without a restart of its own;
  4. `shards.sh down` stops every process.

Usage: router_local_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import check, run  # noqa: E402
import grpc  # noqa: E402

BUILD, SRC = sys.argv[1:3]
T = e2e_lib.tree(BUILD, SRC)
SHARDS_SH = os.path.join(SRC, "deploy", "local", "shards.sh")
pb, pb_grpc = grpc_stubs.load(T.proto)
DIM = 16


def vec(i):
    rnd = random.Random(70_000 + i)
    return [rnd.uniform(-1, 1) for _ in range(DIM)]


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_router_local_")
    env = dict(os.environ, RUN_DIR=os.path.join(work, "run"), BUILD_DIR=os.path.abspath(BUILD))

    def ctl(*args, ok=True):
        out = subprocess.run([SHARDS_SH, *args], env=env, capture_output=True, text=True,
                             timeout=120)
        if ok:
            check(out.returncode == 0, f"shards.sh {' '.join(args)}: {out.stdout}{out.stderr}")
        return out

    up = False
    try:
        coll = os.path.join(work, "coll")
        npy = os.path.join(work, "rows.npy")
        run(T.snapshot, "synth", f"--out={npy}", "--count=2000", f"--dim={DIM}", "--seed=9")
        run(T.snapshot, "build", f"--root={coll}", f"--vectors={npy}", "--shard_count=2",
            "--threads=1", "--m=8", "--ef_construction=40")
        env["COLLECTION"] = coll
        env["REPLICAS"] = "2"
        out = ctl("up")
        up = True
        check("up: 2 shards x 2 replicas" in out.stdout, out.stdout)
        with open(os.path.join(env["RUN_DIR"], "router.ports")) as f:
            port = json.load(f)["grpc"]
        stub = pb_grpc.ImageSearchStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
        check(info.shard.count == 2 and info.vector_count == 2000 and
              all(s.available for s in info.router_shards), info)
        print("1. shards.sh up: 2 shards x 2 replicas behind the router; GetInfo names both")

        failures, calls, stop = [], [0], threading.Event()

        def load(k):
            i = 0
            while not stop.is_set() and i < 20_000:
                try:
                    stub.Search(pb.SearchRequest(vector=pb.Vector(values=vec(k * 1000 + i % 500)),
                                                 top_k=5), timeout=10)
                    calls[0] += 1
                except grpc.RpcError as e:
                    failures.append((time.monotonic(), e.code(), e.details()))
                i += 1
        threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        for action in (("kill", "0", "1"), ("start", "0", "1"), ("kill", "1", "0"),
                       ("start", "1", "0"), ("stop", "0", "0"), ("start", "0", "0")):
            ctl(*action)
            time.sleep(0.7)
        stop.set()
        for t in threads:
            t.join()
        check(calls[0] > 100 and not failures, (calls[0], failures[:5]))
        print(f"2. under load ({calls[0]} calls from clients without retries): two SIGKILLs, a "
              "SIGTERM and three restarts, no failed call")

        ctl("kill", "1", "0")
        ctl("kill", "1", "1")
        try:
            stub.Search(pb.SearchRequest(vector=pb.Vector(values=vec(1))), timeout=10)
            check(False, "answered with shard 1 down")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAVAILABLE and "shard 1 of 2" in e.details(),
                  e.details())
        partial = stub.Search(pb.SearchRequest(vector=pb.Vector(values=vec(1)), top_k=5,
                                               allow_partial=True), timeout=10)
        check(list(partial.missing_shards) == [1] and len(partial.hits) == 5, partial)
        ctl("start", "1", "0")
        ctl("start", "1", "1")
        deadline = time.monotonic() + 30
        while True:
            try:
                stub.Search(pb.SearchRequest(vector=pb.Vector(values=vec(2))), timeout=10)
                break
            except grpc.RpcError:
                check(time.monotonic() < deadline, "the router did not recover in 30 s")
                time.sleep(0.1)
        print("3. shard 1 down: UNAVAILABLE naming it, allow_partial answers from shard 0; "
              "restarted, the router recovers")

        status = ctl("status").stdout
        check(status.count(": up") == 5, status)
        ctl("down")
        up = False
        pids = [open(os.path.join(env["RUN_DIR"], f)).read().strip()
                for f in os.listdir(env["RUN_DIR"]) if f.endswith(".pid")]
        check(not pids, pids)
        print("4. shards.sh down: every process stopped")
    finally:
        if sys.exc_info()[0] is not None:  # What the router and the replicas said, for CI's log.
            run_dir = env["RUN_DIR"]
            for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
                if name.endswith(".log"):
                    with open(os.path.join(run_dir, name), errors="replace") as f:
                        print(f"--- {name} (last lines)\n" + "".join(f.readlines()[-15:]))
        if up:
            ctl("down", ok=False)
        shutil.rmtree(work, ignore_errors=True)
    print("router local: PASS")


if __name__ == "__main__":
    main()
