#!/usr/bin/env python3
"""A collection bigger than one replica's memory limit, served through
imagesearch-router (real binaries on loopback, vector-only):

  150,000 clustered 128-d rows (about 96 MB of snapshot files) in S = 2 shards; each
  shard replica runs in its own memory cgroup whose limit (75% of the whole
  collection's bytes) is below the collection and above one shard, with the
  page cache dropped first so that the pages a replica maps are charged to
  its cgroup. Through the router:

  1. `exact` equals the brute-force top-10 (numpy) over the whole collection;
  2. recall@10 at ef 32 is at least one unsharded replica's (no limit) at the
     same ef;
  3. no replica was OOM-killed (memory.oom_control), and each is still
     serving.

Needs root and the cgroup v1 memory controller (this machine's); exits 77
(skipped) where /sys/fs/cgroup/memory or drop_caches cannot be written.

Usage: router_capacity_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check, run  # noqa: E402
import grpc  # noqa: E402

BUILD, SRC = sys.argv[1:3]
T = e2e_lib.tree(BUILD, SRC)
ROUTER = os.path.join(BUILD, "services", "router", "imagesearch-router")
pb, pb_grpc = grpc_stubs.load(T.proto)
N, DIM, S = 150_000, 128, 2
CGROUPS = "/sys/fs/cgroup/memory"
SKIP = 77


def tree_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def cgroup_read(cg, name):
    with open(os.path.join(cg, name)) as f:
        return f.read()


def main():
    tag = f"imagesearch_capacity_{os.getpid()}"
    try:
        os.mkdir(os.path.join(CGROUPS, tag))
        os.rmdir(os.path.join(CGROUPS, tag))
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError as e:
        print(f"SKIP: memory cgroups or drop_caches are not writable here: {e}")
        return SKIP
    work = tempfile.mkdtemp(prefix="imagesearch_capacity_")
    procs, cgroups = [], []
    try:
        # Clustered, as embeddings are (uniform random 128-d rows have no
        # near neighbours to find); queries are held-out points of the same mix.
        rnd = np.random.RandomState(3)
        centers = rnd.normal(size=(2000, DIM)).astype(np.float32)
        rows = centers[rnd.randint(0, 2000, N)] + 0.35 * rnd.normal(size=(N, DIM)).astype(np.float32)
        queries = centers[rnd.randint(0, 2000, 200)] + 0.35 * rnd.normal(size=(200, DIM)).astype(np.float32)
        npy = os.path.join(work, "rows.npy")
        np.save(npy, rows.astype(np.float32))
        ids = os.path.join(work, "ids.jsonl")
        with open(ids, "w") as f:
            for i in range(N):
                f.write(json.dumps({"id": f"r{i}"}) + "\n")
        coll, single = os.path.join(work, "coll"), os.path.join(work, "single")
        common = [f"--vectors={npy}", f"--ids={ids}", "--m=8", "--ef_construction=40",
                  "--threads=2"]
        run(T.snapshot, "build", f"--root={coll}", f"--shard_count={S}", "--collection=big",
            *common)
        run(T.snapshot, "build", f"--root={single}", *common)
        whole = tree_bytes(coll)
        shard_bytes = [tree_bytes(os.path.join(coll, f"shard-{i}-of-{S}")) for i in range(S)]
        limit = int(whole * 0.75)
        check(max(shard_bytes) + (16 << 20) < limit < whole, (shard_bytes, limit, whole))

        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        reps = []
        for i in range(S):
            cg = os.path.join(CGROUPS, f"{tag}_{i}")
            os.mkdir(cg)
            cgroups.append(cg)
            with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
                f.write(str(limit))
            # The replica starts inside its cgroup: every page it maps is charged there.
            r = Server("/bin/sh", ["-c", f'echo $$ > {cg}/cgroup.procs && exec "$0" "$@"', T.query,
                                   f"--snapshot_root={os.path.join(coll, f'shard-{i}-of-{S}')}"],
                       os.path.join(work, f"q{i}.log"))
            procs.append(r)
            reps.append(r)
        one = Server(T.query, [f"--snapshot_root={single}"], os.path.join(work, "single.log"))
        procs.append(one)
        router = Server(ROUTER, ["--shards=" + ";".join(r.grpc_address for r in reps), "--port=0"],
                        os.path.join(work, "router.log"), wait=("grpc",), pick_ports=False)
        procs.append(router)
        rs = pb_grpc.ImageSearchStub(grpc.insecure_channel(router.grpc_address))
        ss = pb_grpc.ImageSearchStub(grpc.insecure_channel(one.grpc_address))

        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)

        def search(stub, q, **kw):
            return [h.id for h in stub.Search(
                pb.SearchRequest(vector=pb.Vector(values=q.tolist()), top_k=10, **kw),
                timeout=30).hits]

        hits_router = hits_single = 0
        for k, q in enumerate(queries):
            truth = [f"r{i}" for i in np.argsort(-(unit @ (q / np.linalg.norm(q))))[:10]]
            if k < 10:
                got = search(rs, q, exact=True)
                check(got == truth, (k, got, truth))
            hits_router += len(set(truth) & set(search(rs, q, ef=32)))
            hits_single += len(set(truth) & set(search(ss, q, ef=32)))
        n = 10 * len(queries)
        check(hits_router >= hits_single, (hits_router, hits_single))
        print(f"collection {whole / 1e6:.0f} MB in {S} shards of {shard_bytes[0] / 1e6:.0f} and "
              f"{shard_bytes[1] / 1e6:.0f} MB; each replica limited to {limit / 1e6:.0f} MB")
        print("1. exact through the router == brute force (10 queries)")
        print(f"2. recall@10 at ef 32: router {hits_router / n:.4f} >= unsharded "
              f"{hits_single / n:.4f} (no limit)")

        for i, cg in enumerate(cgroups):
            oom = dict(line.split() for line in cgroup_read(cg, "memory.oom_control").splitlines())
            peak = int(cgroup_read(cg, "memory.max_usage_in_bytes"))
            stat = dict(line.split() for line in cgroup_read(cg, "memory.stat").splitlines())
            # The kernel holds the peak at the limit; what could fail is a kill.
            check(oom.get("oom_kill", "0") == "0" and reps[i].proc.poll() is None, (i, oom, peak))
            print(f"3. shard {i}: no OOM kill, peak {peak / 1e6:.0f} MB of a {limit / 1e6:.0f} MB limit "
                  f"(heap {int(stat['rss']) / 1e6:.0f} MB, mapped {int(stat['mapped_file']) / 1e6:.0f} MB)")
        for r in reps:
            check(len(search(pb_grpc.ImageSearchStub(grpc.insecure_channel(r.grpc_address)),
                             queries[0])) == 10, "a shard replica stopped answering")
    finally:
        for p in procs:
            p.kill()
        for cg in cgroups:
            try:
                os.rmdir(cg)
            except OSError as e:
                print(f"note: {cg} not removed: {e}")
        shutil.rmtree(work, ignore_errors=True)
    print("router capacity: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
