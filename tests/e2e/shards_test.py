#!/usr/bin/env python3
"""A collection split into shards, as an operator builds and serves it (real
binaries on loopback, vector-only so that no model is needed):

  1. `imagesearch-snapshot build --shard_count=3 --collection=photos` writes
     three shard roots (shard-<i>-of-3), each MANIFEST naming its shard, the
     rows partitioned by the id hash, none lost or doubled;
  2. one query replica per shard: GetInfo (/info) names the collection, the
     shard and S; an id is found on its own shard's replica and on no other;
  3. `exact` search on every shard, merged by distance, is exactly the
     brute-force top-10 over the whole collection;
  4. `build --base` of foreign ids into a shard root is refused, naming the
     shard they belong to;
  5. the ingest service over the collection's directory routes each upsert
     and delete to its shard: new rows are searchable on their shard's
     replica, a deleted one is gone, Status counts every shard;
  6. the ingest service on one shard root rejects an item of another shard
     alone, with the reason; a --shard_count that differs from the
     collection's is refused at start;
  7. the ingest service makes a new sharded collection on an empty root;
  8. `imagesearch-snapshot reshard` rebuilds the collection, rows added and
     deleted through the ingest service included, as 4 new shard roots, and
     as one unsharded root, and that root as 2 shards again: every layout
     answers exact queries as the old one does; it refuses to write into a
     collection, and to read one shard root as a collection.

Usage: shards_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check, post_json, run  # noqa: E402
import grpc  # noqa: E402

BUILD, SRC = sys.argv[1:3]
T = e2e_lib.tree(BUILD, SRC)
pb, pb_grpc = grpc_stubs.load(T.proto)
DIM = 16
N = 2400
S = 3


def read_npy(path):
    return e2e_lib.read_npy(path, DIM)


def info(server):
    return e2e_lib.info(server)


def cosine_distance(a, b):
    return e2e_lib.cosine_distance(a, b)


def search(replica, values, exact=False, top_k=10):
    status, body = post_json(replica.http_port,
                             {"vector": {"values": values}, "top_k": top_k, "exact": exact},
                             timeout=20)
    check(status == 200, body)
    return body


def vec(i):
    rnd = random.Random(10_000 + i)
    return [rnd.uniform(-1, 1) for _ in range(DIM)]


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_shards_")
    servers = []
    try:
        coll = os.path.join(work, "photos")
        npy = os.path.join(work, "rows.npy")
        run(T.snapshot, "synth", f"--out={npy}", f"--count={N}", f"--dim={DIM}", "--seed=3")
        ids = os.path.join(work, "ids.jsonl")
        with open(ids, "w") as f:
            for i in range(N):
                f.write(json.dumps({"id": f"p{i}"}) + "\n")
        out = run(T.snapshot, "build", f"--root={coll}", f"--vectors={npy}", f"--ids={ids}",
                  f"--shard_count={S}", "--collection=photos", "--threads=1").stdout
        roots = [os.path.join(coll, f"shard-{i}-of-{S}") for i in range(S)]
        counts = []
        for i, root in enumerate(roots):
            m = e2e_lib.manifest(root, 1)
            check(m["shard"] == {"collection": "photos", "index": i, "count": S,
                                 "hash": "xxh3_64-jump"}, m.get("shard"))
            counts.append(m["count"])
        check(sum(counts) == N and min(counts) > N / S * 0.8, counts)
        check(out.count("published v1") == S, out)
        print(f"1. build --shard_count={S}: roots of {counts} rows, each manifest names its shard")

        for i, root in enumerate(roots):
            servers.append(Server(T.query, [f"--snapshot_root={root}"],
                                  os.path.join(work, f"query{i}.log")))
        for i, server in enumerate(servers):
            got = info(server)
            check(got.get("shard") == {"collection": "photos", "index": i, "count": S,
                                       "hash": "xxh3_64-jump"} and
                  int(got["vector_count"]) == counts[i], got)
        owner = {}
        for row in (0, 1, 2, 3, 500, 1234, N - 1):
            found = []
            for i, server in enumerate(servers):
                status, body = post_json(server.http_port, {"id": f"p{row}", "top_k": 1})
                check(status in (200, 404), body)
                if status == 200:  # "More like this": the id's own row is left out.
                    found.append(i)
                    check(body["hits"] and body["hits"][0]["id"] != f"p{row}", body)
                else:
                    check(f"'p{row}' is not in snapshot v1" in body["error"]["message"], body)
            check(len(found) == 1, f"p{row} found on shards {found}")
            owner[row] = found[0]
        check(len(set(owner.values())) > 1, owner)
        print(f"2. GetInfo names collection, shard and S; each id on exactly one shard {owner}")

        rows = read_npy(npy)
        for q in range(5):
            query = vec(q)
            merged = []
            for server in servers:
                body = search(server, query, exact=True)
                merged += [(h["distance"], h["id"]) for h in body["hits"]]
            merged.sort()
            got = [hid for _, hid in merged[:10]]
            truth = sorted(range(N), key=lambda r: cosine_distance(query, rows[r]))[:10]
            check(got == [f"p{r}" for r in truth], (got, truth))
        print("3. exact search per shard, merged: the brute-force top-10 of the collection")

        foreign_npy = os.path.join(work, "foreign.npy")
        run(T.snapshot, "synth", f"--out={foreign_npy}", "--count=20", f"--dim={DIM}", "--seed=4")
        foreign_ids = os.path.join(work, "foreign.jsonl")
        with open(foreign_ids, "w") as f:
            for i in range(20):
                f.write(json.dumps({"id": f"f{i}"}) + "\n")
        out = run(T.snapshot, "build", f"--root={roots[0]}", "--base=v1",
                  f"--vectors={foreign_npy}", f"--ids={foreign_ids}", "--threads=1", ok=False)
        check(out.returncode != 0 and "belongs to shard" in out.stderr and
              "not to this root (collection 'photos' shard 0 of 3)" in out.stderr, out.stderr)
        check("v2" not in os.listdir(roots[0]), os.listdir(roots[0]))
        print("4. build --base of another shard's ids into a shard root: refused")

        svc = Server(T.indexer, ["serve", f"--root={coll}", "--port=0",
                                 "--publish_interval_ms=200", "--m=8", "--ef_construction=40"],
                     os.path.join(work, "ingest.log"), wait=("grpc",), pick_ports=False)
        servers.append(svc)
        stub = pb_grpc.IngestStub(grpc.insecure_channel(svc.grpc_address))
        req = pb.UpsertRequest()
        for i in range(60):
            req.items.add(id=f"n{i}", vector=pb.Vector(values=vec(1000 + i)))
        resp = stub.Upsert(req, timeout=60)
        check(resp.accepted == 60 and resp.rejected == 0 and resp.version == 0 and
              set(resp.shard_versions.keys()) == set(range(S)) and
              all(v == 2 for v in resp.shard_versions.values()), resp)
        for i in (0, 7, 33, 59):
            sid = f"n{i}"
            hits = {}
            def visible():
                for k, server in enumerate(servers[:S]):
                    hits[k] = search(server, vec(1000 + i), top_k=1)["hits"][0]["id"]
                return sid in hits.values()
            servers[0].wait_until(f"{sid} searchable", visible, 30)
            check(list(hits.values()).count(sid) == 1, hits)
        # The same through UpsertStream: each answer names the shards its batch went to.
        reqs = []
        for b in range(3):
            reqs.append(pb.UpsertRequest())
            for i in range(10):
                reqs[b].items.add(id=f"t{10 * b + i}", vector=pb.Vector(values=vec(3000 + 10 * b + i)))
        answers = [a.upsert for a in stub.UpsertStream(
            (pb.UpsertStreamRequest(upsert=r) for r in reqs), timeout=60)]
        check(len(answers) == 3 and all(a.accepted == 10 and a.version == 0 and a.shard_versions
                                        and min(a.shard_versions.values()) >= 3 for a in answers),
              answers)
        resp = stub.Delete(pb.DeleteRequest(ids=["n7", "p0"]), timeout=60)
        check(resp.accepted == 2 and resp.version == 0 and len(resp.shard_versions) >= 1, resp)
        for gone in ("n7", "p0"):
            def deleted():
                return all(post_json(s.http_port, {"id": gone})[0] == 404 for s in servers[:S])
            servers[0].wait_until(f"{gone} deleted", deleted, 30)
        st = stub.Status(pb.IngestStatusRequest(), timeout=10)
        check(st.shard_count == S and len(st.shards) == S and
              st.live_rows == N + 60 + 30 - 2 == sum(s.live_rows for s in st.shards), st)
        # The folder tool names the shard its delete went to, not "v0".
        out = run("/usr/bin/python3", os.path.join(SRC, "tools", "ingest", "ingest_folder.py"),
                  f"--target={svc.grpc_address}", "--delete", "n33").stdout
        check(re.search(r"live in shard \d v\d+$", out.strip()) and "v0" not in out, out)
        svc.stop()
        servers.remove(svc)
        print("5. the ingest service routes upserts (one call, and a stream) and deletes to their "
              "shards; Status sums them")

        bad = run(T.indexer, "serve", f"--root={coll}", "--port=0", "--shard_count=4", ok=False)
        check(bad.returncode != 0 and "is a collection of 3 shards, not 4" in bad.stderr,
              bad.stderr)
        one = Server(T.indexer, ["serve", f"--root={roots[1]}", "--port=0",
                                 "--publish_interval_ms=200"],
                     os.path.join(work, "ingest1.log"), wait=("grpc",), pick_ports=False)
        servers.append(one)
        stub = pb_grpc.IngestStub(grpc.insecure_channel(one.grpc_address))
        req = pb.UpsertRequest()
        for i in range(12):
            req.items.add(id=f"m{i}", vector=pb.Vector(values=vec(2000 + i)))
        resp = stub.Upsert(req, timeout=60)
        accepted = [r.id for r in resp.results if r.code == 0]
        rejected = [r for r in resp.results if r.code != 0]
        check(accepted and rejected and resp.accepted == len(accepted) and
              resp.rejected == len(rejected) and resp.version >= 2, resp)
        for r in rejected:
            check(r.code == 3 and "belongs to shard " in r.error and
                  "not to this root (collection 'photos' shard 1 of 3)" in r.error, r)
        for sid in accepted:
            servers[1].wait_until(f"{sid} searchable on shard 1",
                                  lambda: post_json(servers[1].http_port, {"id": sid})[0] == 200,
                                  30)
        print("6. one shard root's ingest service rejects another shard's item alone; "
              "a --shard_count that differs from the collection's is refused")

        fresh = os.path.join(work, "fresh")
        new = Server(T.indexer, ["serve", f"--root={fresh}", "--port=0", "--shard_count=2",
                                 f"--dim={DIM}", "--collection=clips"],
                     os.path.join(work, "ingest2.log"), wait=("grpc",), pick_ports=False)
        servers.append(new)
        stub = pb_grpc.IngestStub(grpc.insecure_channel(new.grpc_address))
        req = pb.UpsertRequest()
        for i in range(20):
            req.items.add(id=f"c{i}", vector=pb.Vector(values=vec(3000 + i)))
        resp = stub.Upsert(req, timeout=60)
        check(resp.accepted == 20 and dict(resp.shard_versions) == {0: 1, 1: 1}, resp)
        made = [e2e_lib.manifest(os.path.join(fresh, f"shard-{i}-of-2"), 1) for i in range(2)]
        check([m["shard"]["index"] for m in made] == [0, 1] and
              all(m["shard"]["collection"] == "clips" for m in made) and
              sum(m["count"] for m in made) == 20, made)
        print("7. serve --shard_count=2 on an empty root makes a new sharded collection")

        def merged_exact(replicas, query):
            hits = []
            for server in replicas:
                hits += [(h["distance"], h["id"]) for h in search(server, query, exact=True)["hits"]]
            return [hid for _, hid in sorted(hits)[:10]]

        live = sum(int(info(server)["vector_count"]) for server in servers[:S])
        coll4 = os.path.join(work, "photos-4")
        out = run(T.snapshot, "reshard", f"--from={coll}", f"--root={coll4}", "--shard_count=4",
                  "--threads=1").stdout
        check(out.count("published v1") == 4 and f"from 3 shard roots of {coll}" in out, out)
        made = [e2e_lib.manifest(os.path.join(coll4, f"shard-{i}-of-4"), 1) for i in range(4)]
        check([m["shard"] for m in made] == [{"collection": "photos", "index": i, "count": 4,
                                              "hash": "xxh3_64-jump"} for i in range(4)] and
              sum(m["count"] for m in made) == live, (made, live))
        new = [Server(T.query, [f"--snapshot_root={os.path.join(coll4, f'shard-{i}-of-4')}"],
                      os.path.join(work, f"query4_{i}.log")) for i in range(4)]
        servers += new
        for q in range(5):
            check(merged_exact(new, vec(q)) == merged_exact(servers[:S], vec(q)), q)
        for gone in ("n7", "p0", "n33"):  # Deleted through the ingest service: not brought back.
            check(all(post_json(s.http_port, {"id": gone})[0] == 404 for s in new), gone)
        check(any(post_json(s.http_port, {"id": "t5"})[0] == 200 for s in new), "t5 lost")

        flat = os.path.join(work, "flat")
        out = run(T.snapshot, "reshard", f"--from={coll4}", f"--root={flat}", "--shard_count=0",
                  "--threads=1").stdout
        check("published v1" in out and "shard" not in e2e_lib.manifest(flat, 1), out)
        one = Server(T.query, [f"--snapshot_root={flat}"], os.path.join(work, "query_flat.log"))
        servers.append(one)
        for q in range(5):
            check(merged_exact([one], vec(q)) == merged_exact(servers[:S], vec(q)), q)
        two = os.path.join(work, "photos-2")
        out = run(T.snapshot, "reshard", f"--from={flat}", f"--root={two}", "--shard_count=2",
                  "--collection=photos", "--threads=1").stdout
        halves = [e2e_lib.manifest(os.path.join(two, f"shard-{i}-of-2"), 1) for i in range(2)]
        check(sum(m["count"] for m in halves) == live and
              all(m["shard"]["collection"] == "photos" for m in halves), halves)

        again = run(T.snapshot, "reshard", f"--from={coll}", f"--root={coll4}", "--shard_count=5",
                    ok=False)
        check(again.returncode != 0 and "already holds a collection: a reshard writes new roots"
              in again.stderr, again.stderr)
        part = run(T.snapshot, "reshard", f"--from={roots[0]}", f"--root={work}/x",
                   "--shard_count=2", ok=False)
        check(part.returncode != 0 and "is collection 'photos' shard 0 of 3: pass the "
              "collection's directory" in part.stderr, part.stderr)
        # Shards typed differently (one has a field more): the new roots type them all.
        typed_ids = os.path.join(work, "typed.jsonl")
        with open(typed_ids, "w") as f:
            for i in range(N):
                f.write(json.dumps({"id": f"p{i}", "attributes": {"tag": f"t{i % 3}",
                                                                 "color": f"c{i % 2}"}}) + "\n")
        for name, schema in (("narrow", "tag:keyword"), ("wide", "tag:keyword,color:keyword")):
            run(T.snapshot, "build", f"--root={os.path.join(work, name)}", f"--vectors={npy}",
                f"--ids={typed_ids}", "--shard_count=2", "--collection=photos", f"--schema={schema}",
                "--threads=1")
        both = os.path.join(work, "both")
        os.makedirs(both)
        # The wide one first: the schema must not be the last root's.
        shutil.copytree(os.path.join(work, "wide", "shard-0-of-2"), os.path.join(both, "shard-0-of-2"))
        shutil.copytree(os.path.join(work, "narrow", "shard-1-of-2"),
                        os.path.join(both, "shard-1-of-2"))
        one_typed = os.path.join(work, "one_typed")
        run(T.snapshot, "reshard", f"--from={both}", f"--root={one_typed}", "--shard_count=0",
            "--threads=1")
        typed = Server(T.query, [f"--snapshot_root={one_typed}"], os.path.join(work, "q_typed.log"))
        servers.append(typed)
        got = {f["name"]: f["type"] for f in info(typed).get("fields", [])}
        check(got == {"tag": "keyword", "color": "keyword"}, got)
        # A shard count that leaves a new shard empty: refused before anything is written.
        empty = run(T.snapshot, "reshard", f"--from={coll}", f"--root={os.path.join(work, 'many')}",
                    "--shard_count=4000", ok=False)
        check(empty.returncode != 0 and "(nothing was written)" in empty.stderr and
              not os.path.exists(os.path.join(work, "many")), empty.stderr)

        mixed = run(T.snapshot, "build", f"--root={coll}", f"--vectors={npy}", f"--ids={ids}",
                    "--shard_count=4", ok=False)
        check(mixed.returncode != 0 and "a collection of another shard count than 4: a reshard "
              "writes new roots" in mixed.stderr, mixed.stderr)
        check(not os.path.exists(os.path.join(coll, "shard-0-of-4")), os.listdir(coll))
        whole = subprocess.run([T.query, f"--snapshot_root={coll}", "--port=0"],
                               capture_output=True, text=True, timeout=30)
        check(whole.returncode == 2 and "it holds the shard roots of a sharded collection" in
              whole.stderr, whole.stderr)
        print(f"8. reshard: {live} live rows as 4 shards, as one root and as 2 shards again, each "
              "answering exact queries as the 3 shards do; every shard's typed fields kept; new "
              "roots only, none written when a new shard would be empty. build refuses a second "
              "layout beside the first, and a replica refuses the collection's directory at once")
    finally:
        for s in servers:
            s.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("shards: PASS")


if __name__ == "__main__":
    main()
