#!/usr/bin/env python3
"""How imagesearch-router spreads calls over a shard's equal replicas, side by
side with another router binary (the one before a change, say), on the same
replicas: S shards x 2 replicas of a collection built by router_bench.py, two
routers in front of them (this build's and --baseline's), and
imagesearch-loadgen at each --concurrency against each router in alternating
rounds. Prints, per router and concurrency, the median round's QPS, p50 and
p99, and the share of each shard's calls its busier replica answered (0.5:
an even split), read from the replicas' /metrics.

--hog: a noisy neighbour. Each shard's first replica is pinned to core 0
and its second to core 1, where a busy loop runs too (router and clients
unpinned): the second replicas get half a core between them.

Usage: tools/bench/router_balance.py --baseline=OTHER/imagesearch-router [--build=build]
         [--collection=/tmp/router_bench/n100000-d128-s2-coll]
         [--queries=/tmp/router_bench/n100000-d128-s2-q1000.npy] [--concurrency=1,8]
         [--rounds=3] [--seconds=4] [--ef=32] [--hog]
(router_bench.py --shards=2 builds that collection and its queries.)
"""
import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))
from e2e_lib import Server, run  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--build", default="build")
ap.add_argument("--baseline", required=True)
ap.add_argument("--collection", default="/tmp/router_bench/n100000-d128-s2-coll")
ap.add_argument("--queries", default="/tmp/router_bench/n100000-d128-s2-q1000.npy")
ap.add_argument("--concurrency", default="1,8")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--seconds", type=float, default=4)
ap.add_argument("--ef", type=int, default=32)
ap.add_argument("--workdir", default="/tmp/router_balance")
ap.add_argument("--hog", action="store_true")
a = ap.parse_args()

QUERY = os.path.join(a.build, "services", "query", "imagesearch-query")
LOADGEN = os.path.join(a.build, "tools", "loadgen", "imagesearch-loadgen")
ROUTERS = {"this build": os.path.join(a.build, "services", "router", "imagesearch-router"),
           "baseline": a.baseline}


def searches(replica):
    """Search calls the replica answered, from its /metrics."""
    with urllib.request.urlopen(replica.http_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^imagesearch_requests_total\{[^}]*method="Search"[^}]*\} (\S+)$', text, re.M))


def main():
    roots = sorted(glob.glob(os.path.join(a.collection, "shard-*-of-*")))
    if not roots:
        sys.exit(f"no shard roots in {a.collection} (tools/bench/router_bench.py --shards=2 "
                 "builds one)")
    os.makedirs(a.workdir, exist_ok=True)
    procs = []
    hog = None
    try:
        reps = []
        for i, root in enumerate(roots):
            reps.append([Server(QUERY, [f"--snapshot_root={root}"],
                                f"{a.workdir}/shard{i}{r}.log") for r in "ab"])
            procs += reps[-1]
        if a.hog:
            for rs in reps:
                for core, r in enumerate(rs):
                    run("taskset", "-a", "-p", "-c", str(core), str(r.pid))
            hog = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c",
                                    "import time\nend = time.time() + 3600\n"
                                    "while time.time() < end: pass"])
        targets = ";".join(",".join(f"127.0.0.1:{r.grpc_port}" for r in rs) for rs in reps)
        routers = {}
        for name, binary in ROUTERS.items():
            routers[name] = Server(binary, [f"--shards={targets}", "--port=0"],
                                   f"{a.workdir}/{name.replace(' ', '_')}.log", wait=("grpc",),
                                   pick_ports=False)
            procs.append(routers[name])
        results = {}
        for c in [int(x) for x in a.concurrency.split(",")]:
            for _ in range(a.rounds):
                for name, router in routers.items():
                    before = [[searches(r) for r in rs] for rs in reps]
                    out = f"{a.workdir}/loadgen.json"
                    run(LOADGEN, f"--target={router.grpc_address}", f"--vectors={a.queries}",
                        f"--concurrency={c}", f"--duration_s={a.seconds}", "--warmup_s=0.5",
                        f"--ef={a.ef}", f"--json_out={out}")
                    after = [[searches(r) for r in rs] for rs in reps]
                    with open(out) as f:
                        lg = json.load(f)
                    shares = []
                    for b, e in zip(before, after):
                        d = [y - x for x, y in zip(b, e)]
                        shares.append(max(d) / max(1, sum(d)))
                    results.setdefault((name, c), []).append(
                        (lg["qps"], lg["latency_ms"]["p50"], lg["latency_ms"]["p99"],
                         max(shares)))
        print(("a busy loop beside the second replicas (--hog); " if a.hog else "") +
              f"{len(roots)} shards x 2 replicas, ef {a.ef}, {a.rounds} alternating rounds of "
              f"{a.seconds:g} s (medians of the rounds; busier replica's share of its shard's "
              "calls, the largest over the shards):")
        for (name, c), rs in results.items():
            med = [statistics.median(x[k] for x in rs) for k in range(4)]
            print(f"  c={c:<3} {name:10}  {med[0]:7.0f} QPS  p50 {med[1]:.3f} ms  "
                  f"p99 {med[2]:.3f} ms  busier replica {med[3]:.2f}")
        for c in sorted({c for _, c in results}):
            ours = statistics.median(x[0] for x in results[("this build", c)])
            base = statistics.median(x[0] for x in results[("baseline", c)])
            print(f"  c={c}: QPS this build / baseline = {ours / base:.2f}")
    finally:
        if hog is not None:
            hog.kill()
        for p in procs:
            p.kill()


main()
