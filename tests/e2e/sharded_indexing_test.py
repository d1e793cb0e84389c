#!/usr/bin/env python3
"""Distributed indexing, as the Kubernetes Indexed Job runs it, on one machine:
three indexer workers (--shard=i/3 --embeddings_out) and the final
`imagesearch-snapshot build --shards` give the same vectors, ids, attributes
and thumbnails as one indexer run, and the result serves. Also: a missing
shard, or the wrong model, is refused and nothing is published.

Usage: sharded_indexing_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
from e2e_lib import Server, check, run  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
ROUTER = os.path.join(BUILD, "services", "router", "imagesearch-router")




def read_ids(path):
    """Rows of an ids.bin (libs/snapshot/ids_table.h): [(id, uri, attributes)]."""
    data = open(path, "rb").read()
    check(data[:8] == b"ISIDS\0\0\1", f"{path}: bad magic")
    n, blob = struct.unpack_from("<QQ", data, 16)
    base = 32 + n * 24 + n * 4
    rows = []
    for i in range(n):
        off, a, b, c, _ = struct.unpack_from("<QIIII", data, 32 + i * 24)
        p = base + off
        rows.append((data[p:p + a].decode(), data[p + a:p + a + b].decode(),
                     data[p + a + b:p + a + b + c].decode()))
    return rows


def read_thumbs(path):
    data = open(path, "rb").read()
    check(data[:8] == b"ISTHM\0\0\1", f"{path}: bad magic")
    n = struct.unpack_from("<Q", data, 16)[0]
    offs = struct.unpack_from(f"<{n + 1}Q", data, 32)
    base = 32 + (n + 1) * 8
    return [data[base + offs[i]:base + offs[i + 1]] for i in range(n)]


def by_id(shard_dirs):
    """id -> (vector, uri, attributes, thumbnail) over some shard dirs."""
    rows = {}
    for d in shard_dirs:
        vecs = np.load(os.path.join(d, "vectors.npy"))
        ids = read_ids(os.path.join(d, "ids.bin"))
        thumbs = read_thumbs(os.path.join(d, "thumbs.bin"))
        check(len(ids) == len(vecs) == len(thumbs), f"{d}: {len(ids)} ids, {len(vecs)} vectors")
        for (i, uri, attrs), v, t in zip(ids, vecs, thumbs):
            check(i not in rows, f"id {i} in two shards")
            rows[i] = (v, uri, attrs, t)
    return rows


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_shards_")
    server = None
    extra_servers = []
    try:
        corpus = os.path.join(work, "corpus")
        run("bash", os.path.join(SRC, "tools", "corpus", "fashion_mnist.sh"), corpus, "5")
        manifest = os.path.join(corpus, "manifest.jsonl")
        with open(manifest, "a") as f:  # one undecodable image, rejected by its worker
            f.write(json.dumps({"id": "broken", "path": "broken.png"}) + "\n")
        open(os.path.join(corpus, "broken.png"), "wb").write(b"\x89PNG\r\n\x1a\n broken")
        common = [f"--input={manifest}", f"--model={MODEL}", "--progress=none",
                  "--max_reject_ratio=0.2"]

        # One worker for everything, and three workers, as the Indexed Job's pods.
        one = os.path.join(work, "one")
        run(INDEXER, *common, "--shard=0/1", f"--embeddings_out={one}")
        three = os.path.join(work, "three")
        for i in range(3):
            out = run(INDEXER, *common, f"--shard={i}/3", f"--embeddings_out={three}")
            check(f"wrote shard {three}/shard-{i}-of-3" in out.stdout, out.stdout)
        single = by_id([os.path.join(one, "shard-0-of-1")])
        split = by_id([os.path.join(three, f"shard-{i}-of-3") for i in range(3)])
        check(len(single) == 50 and set(single) == set(split),
              f"ids differ: {len(single)} vs {len(split)}")
        worst = max(float(np.abs(single[i][0] - split[i][0]).max()) for i in single)
        # Batches are composed differently, so allow float rounding, nothing more.
        check(worst < 1e-4, f"vectors differ by up to {worst}")
        for i in single:
            check(single[i][1:] == split[i][1:], f"{i}: uri/attributes/thumbnail differ")
        rejects = "".join(open(os.path.join(three, f"shard-{i}-of-3", "rejects.jsonl")).read()
                          for i in range(3))
        check(rejects.count('"id":"broken"') == 1, f"rejects: {rejects}")
        print(f"1. 3 workers == 1 worker: 50 ids, max |dv| = {worst:.2e}, same uris, attributes, "
              "thumbnails; the broken image rejected once")

        # The final Job: one snapshot from the three shards.
        root = os.path.join(work, "root")
        out = run(SNAPSHOT, "build", f"--root={root}", f"--shards={three}", f"--model={MODEL}")
        check("published v1 (50 vectors from 3 embedding shards" in out.stdout, out.stdout)
        run(SNAPSHOT, "verify", f"--root={root}")
        manifest_json = json.load(open(os.path.join(root, "v1", "MANIFEST.json")))
        (segment,) = e2e_lib.segment_dirs(root, 1)  # A bulk load is one segment.
        check(manifest_json["model"]["sha256"] and "model.pt" in manifest_json["files"]
              and os.path.exists(os.path.join(segment, "thumbs.bin")), manifest_json)
        check('"id":"broken"' in open(os.path.join(root, "v1", "rejects.jsonl")).read(), "rejects")

        # It serves: an image finds itself, with its thumbnail.
        server = Server(QUERY, [f"--snapshot_root={root}"], os.path.join(work, "q.log"))
        base = server.http_url
        first = json.loads(open(manifest).readline())
        body = open(os.path.join(corpus, first["path"]), "rb").read()
        req = urllib.request.Request(base + "/invocations?top_k=3", data=body,
                                     headers={"Content-Type": "image/png"})
        hits = json.load(urllib.request.urlopen(req, timeout=60))["hits"]
        check(hits[0]["id"] == first["id"], f"image query: {hits}")
        thumb = urllib.request.urlopen(f"{base}/thumbs/{first['id']}", timeout=10).read()
        check(thumb == split[first["id"]][3], "served thumbnail differs from the shard's")
        print("2. imagesearch-snapshot build --shards published v1 (model, thumbnails, rejects); "
              "it serves: an image finds itself")

        # The same embedding shards as a collection of 2 shard roots: every row in
        # exactly one, with its own thumbnail, and the model in each.
        coll = os.path.join(work, "coll")
        out = run(SNAPSHOT, "build", f"--root={coll}", f"--shards={three}", f"--model={MODEL}",
                  "--shard_count=2", "--collection=fm")
        check(out.stdout.count("published v1") == 2, out.stdout)
        seen = {}
        for k in range(2):
            sroot = os.path.join(coll, f"shard-{k}-of-2")
            run(SNAPSHOT, "verify", f"--root={sroot}")
            m = e2e_lib.manifest(sroot, 1)
            check(m["shard"]["index"] == k and m["shard"]["count"] == 2 and m["model"]["sha256"] ==
                  manifest_json["model"]["sha256"] and "model.pt" in m["files"], m)
            (seg,) = e2e_lib.segment_dirs(sroot, 1)
            for (rid, _, _), t in zip(read_ids(os.path.join(seg, "ids.bin")),
                                      read_thumbs(os.path.join(seg, "thumbs.bin"))):
                check(rid not in seen, f"{rid} in both shard roots")
                seen[rid] = t
        check(set(seen) == set(split) and all(seen[i] == split[i][3] for i in seen),
              f"shard roots hold {len(seen)} rows")
        print("2b. build --shards --shard_count=2: two shard roots, every row (and its thumbnail) "
              "in exactly one, each with the model")

        # The collection through imagesearch-router's HTTP front end, as a user
        # opens it: the router embeds the image once with its own copy of the
        # model (the shard replicas run with --load_model=false, so none of
        # them could), searches both shards, and fetches thumbnails from the
        # owning shard.
        shard_servers = [Server(QUERY, [f"--snapshot_root={os.path.join(coll, f'shard-{k}-of-2')}",
                                        "--load_model=false"],
                                os.path.join(work, f"s{k}.log")) for k in range(2)]
        extra_servers.extend(shard_servers)
        router = Server(ROUTER, ["--shards=" + ";".join(s.grpc_address for s in shard_servers),
                                 "--port=0", "--http_port=0", f"--model={MODEL}"],
                        os.path.join(work, "router.log"), pick_ports=False)
        extra_servers.append(router)
        rinfo = json.load(urllib.request.urlopen(router.http_url + "/info", timeout=10))
        check(rinfo["shard"]["collection"] == "fm" and rinfo["shard"]["count"] == 2
              and int(rinfo["vector_count"]) == len(split) and rinfo["has_thumbnails"]
              and len(rinfo["router_shards"]) == 2
              # The router embeds (--model) though no replica holds the model.
              and rinfo["model"].get("loaded") is True, rinfo)
        req = urllib.request.Request(router.http_url + "/invocations?top_k=3", data=body,
                                     headers={"Content-Type": "image/png"})
        routed = json.load(urllib.request.urlopen(req, timeout=60))
        check(routed["hits"][0]["id"] == first["id"] and routed["missing_shards"] == []
              and sorted(routed["shard_versions"]) == ["0", "1"], routed)
        # A replica alone cannot answer it.
        try:
            urllib.request.urlopen(urllib.request.Request(
                shard_servers[0].http_url + "/invocations", data=body,
                headers={"Content-Type": "image/png"}), timeout=60)
            check(False, "a shard replica without a model runtime embedded an image")
        except urllib.error.HTTPError as e:
            err = json.load(e)["error"]
            check(e.code == 501 and err["code"] == "UNIMPLEMENTED"
                  and "--load_model=false" in err["message"], f"replica without a model: {err}")
        for hit in routed["hits"]:
            got = urllib.request.urlopen(f"{router.http_url}/thumbs/{hit['id']}", timeout=10)
            check(got.headers["Content-Type"] == "image/jpeg" and got.read() == seen[hit["id"]],
                  f"thumbnail of {hit['id']} through the router")
        try:
            urllib.request.urlopen(f"{router.http_url}/thumbs/no-such-id", timeout=10)
            check(False, "a thumbnail of an unknown id was served")
        except urllib.error.HTTPError as e:
            err = json.load(e)["error"]
            check(e.code == 404 and err["code"] == "NOT_FOUND" and "no-such-id" in err["message"],
                  err)
        # The same page as a replica's: it tells a router from a replica by /info.
        page = urllib.request.urlopen(router.http_url + "/", timeout=10).read()
        check(page == urllib.request.urlopen(shard_servers[0].http_url + "/", timeout=10).read()
              and b"<title>" in page, "the router's web page is not the replica's")
        metrics = urllib.request.urlopen(router.http_url + "/metrics", timeout=10).read().decode()
        for series in ('imagesearch_requests_total{code="OK",front="http",method="Search"} 1',
                       'imagesearch_shard_requests_total{code="OK",shard="0"}',
                       'imagesearch_shard_requests_total{code="OK",shard="1"}',
                       'imagesearch_shard_request_duration_seconds_count{shard="1"}'):
            check(series in metrics, f"{series} not in the router's /metrics")
        # The dashboard's router row asks only for what the router exports.
        with open(os.path.join(SRC, "deploy", "grafana", "imagesearch-dashboard.json")) as f:
            exprs = [t["expr"] for p in json.load(f)["panels"] for t in p.get("targets", [])]
        used = {re.sub(r"_(bucket|sum|count)$", "", m)
                for e in exprs for m in re.findall(r"imagesearch_shard_[a-z_]+", e)}
        typed = set(re.findall(r"^# TYPE (\S+) ", metrics, re.M))
        check(len(used) == 4 and used <= typed, f"dashboard's shard metrics {used}, router's {typed}")
        for s in (router, *shard_servers):
            s.stop()
        print("2c. imagesearch-router --model over the 2 shard roots (replicas with "
              "--load_model=false), over HTTP: /info names the collection; an image finds itself (embedded "
              "by the router, both shards searched); thumbnails from the "
              "owning shard; an unknown id's is 404 NOT_FOUND; the page; per-shard /metrics")

        # Refusals: a missing shard, the wrong model. Nothing is published.
        shutil.rmtree(os.path.join(three, "shard-1-of-3"))
        out = run(SNAPSHOT, "build", f"--root={root}", f"--shards={three}", f"--model={MODEL}", ok=False)
        check(out.returncode == 1 and "has 2 of 3 shards; missing: 1" in out.stderr, out.stderr)
        run(INDEXER, *common, "--shard=1/3", f"--embeddings_out={three}")
        other = os.path.join(work, "other.pt")
        shutil.copy(MODEL, other)
        with open(other, "ab") as f:
            f.write(b"\0")
        out = run(SNAPSHOT, "build", f"--root={root}", f"--shards={three}", f"--model={other}", ok=False)
        check(out.returncode == 1 and "the shards were made with model" in out.stderr, out.stderr)
        out = run(INDEXER, *common, "--shard=3/3", f"--embeddings_out={three}", ok=False)
        check(out.returncode == 2 and "0 <= i < n" in out.stderr, out.stderr)
        out = run(INDEXER, *common, "--shard=0/3", f"--root={root}", ok=False)
        check(out.returncode == 1 and "--shard needs --embeddings_out" in out.stderr, out.stderr)
        left = sorted(x for x in os.listdir(root) if not x.startswith("."))
        check(left == ["CURRENT", "HISTORY", "segments", "v1"], f"something was published: {left}")
        check(len(os.listdir(os.path.join(root, "segments"))) == 1, "a segment was left behind")
        print("3. a missing shard, the wrong model, a bad --shard and a shard without --embeddings_out "
              "are refused; nothing published")
        server.stop()
    finally:
        for s in extra_servers:
            s.kill()
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("sharded indexing e2e: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
