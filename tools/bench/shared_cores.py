#!/usr/bin/env python3
"""Throughput when processes share the cores: the query service and the
indexer, alone and two at once, side by side in one run.

  query    one replica (default flags) under 8 image-query clients, then two
           replicas on the same cores, each under its own 8 clients: the
           ratio is what the two serve together over what one serves alone.
  indexer  one imagesearch-indexer over the corpus, then two at once (each
           the whole corpus): the ratio is the images/s the two index
           together over what one indexes alone (wall clock, model load
           included, as an operator sees it).

Goal: both ratios >= 0.9. Every process runs with its
default flags; --query_args / --indexer_args / --env add to them for A/B runs.

  /usr/bin/python3 tools/bench/shared_cores.py --build=build \\
      --model=build/models/default/model.pt [--rounds=3] [--seconds=10]

The corpus is Fashion-MNIST from Debian's archive (tools/corpus/fashion_mnist.sh,
400 images), fetched into --work once.
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--build", default="build")
p.add_argument("--model", required=True)
p.add_argument("--work", default="/tmp/imagesearch_shared_cores")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--seconds", type=float, default=10.0, help="each query measurement")
p.add_argument("--clients", type=int, default=8)
p.add_argument("--query_args", default="", help="extra flags for every replica")
p.add_argument("--indexer_args", default="", help="extra flags for every indexer")
p.add_argument("--env", action="append", default=[], help="KEY=VALUE for every process")
p.add_argument("--skip", default="", help="'query' or 'indexer' to measure only the other")
a = p.parse_args()

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUERY = os.path.join(a.build, "services", "query", "imagesearch-query")
INDEXER = os.path.join(a.build, "services", "indexer", "imagesearch-indexer")
LOADGEN = os.path.join(a.build, "tools", "loadgen", "imagesearch-loadgen")
ENV = dict(os.environ, **dict(kv.split("=", 1) for kv in a.env))


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, text=True, env=ENV, **kw)


def corpus():
    fm = os.path.join(a.work, "fm")
    if not os.path.exists(os.path.join(fm, "manifest.jsonl")):
        sh("bash", os.path.join(SRC, "tools", "corpus", "fashion_mnist.sh"), fm, "40")
    root = os.path.join(a.work, "root")
    if not os.path.exists(os.path.join(root, "CURRENT")):
        sh(INDEXER, f"--input={fm}/manifest.jsonl", f"--root={root}", f"--model={a.model}",
           "--progress=none")
    queries = os.path.join(a.work, "queries")
    if not os.path.isdir(queries):
        os.makedirs(queries)
        lines = open(os.path.join(fm, "manifest.jsonl")).read().splitlines()
        for i, line in enumerate(lines[:32]):
            src = os.path.join(fm, json.loads(line)["path"])
            os.symlink(os.path.abspath(src), os.path.join(queries, f"q{i:02d}.png"))
    return fm, root, queries


def start_replica(root, log):
    proc = subprocess.Popen([QUERY, f"--snapshot_root={root}", "--host=127.0.0.1", "--port=0",
                             *shlex.split(a.query_args)], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, env=ENV)
    for line in proc.stdout:
        m = re.match(r"listening on port (\d+)", line)
        if m:
            return proc, int(m.group(1))
    raise RuntimeError(f"replica exited before listening; see {log}")


def load(ports):
    """One loadgen per port, all at once; the sum of their queries/s."""
    gens = []
    for i, port in enumerate(ports):
        out = os.path.join(a.work, f"load{i}.json")
        gens.append((out, subprocess.Popen(
            [LOADGEN, f"--target=127.0.0.1:{port}", "--kind=image", f"--images={QUERIES}",
             f"--concurrency={a.clients}", f"--channels={a.clients}", "--warmup_s=2",
             f"--duration_s={a.seconds + 2}", f"--json_out={out}"],
            stdout=subprocess.DEVNULL, env=ENV)))
    total = 0.0
    for out, g in gens:
        if g.wait() != 0:
            raise RuntimeError("loadgen failed")
        r = json.load(open(out))
        if r["failed"]:
            raise RuntimeError(f"failed calls: {r['codes']}")
        total += r["qps"]
    return total


def query_round():
    figures = []
    for n in (1, 2):
        procs = [start_replica(ROOT, os.path.join(a.work, f"replica{i}.log")) for i in range(n)]
        try:
            figures.append(load([port for _, port in procs]))
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(timeout=60)
    return figures


def indexer_round():
    figures = []
    count = len(open(os.path.join(FM, "manifest.jsonl")).read().splitlines())
    for n in (1, 2):
        t0 = time.monotonic()
        procs = [subprocess.Popen([INDEXER, f"--input={FM}/manifest.jsonl", f"--model={a.model}",
                                   f"--root={a.work}/ix{i}", "--dry_run", "--progress=none",
                                   *shlex.split(a.indexer_args)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=ENV) for i in range(n)]
        if any(proc.wait() != 0 for proc in procs):
            raise RuntimeError("indexer failed")
        figures.append(n * count / (time.monotonic() - t0))
    return figures


FM, ROOT, QUERIES = corpus()
rows = {"query": [], "indexer": []}
for r in range(a.rounds):
    for what, fn in (("query", query_round), ("indexer", indexer_round)):
        if a.skip == what:
            continue
        one, two = fn()
        rows[what].append((one, two, two / one))
        print(f"round {r + 1} {what:7s}: one alone {one:7.1f}/s, two together {two:7.1f}/s, "
              f"ratio {two / one:.2f}", flush=True)

print(f"\nflags: query '{a.query_args}', indexer '{a.indexer_args}', env {a.env}; "
      f"{a.clients} clients per replica, {a.seconds:.0f} s each; median of {a.rounds} rounds")
for what, unit in (("query", "image queries/s"), ("indexer", "images/s")):
    if rows[what]:
        med = [statistics.median(x[i] for x in rows[what]) for i in range(3)]
        print(f"{what:7s} ({unit}): one alone {med[0]:.1f}, two together {med[1]:.1f}, "
              f"two/one {med[2]:.2f} (goal >= 0.90)")
sys.exit(0)
