#!/usr/bin/env python3
"""End to end for model-backed queries, with the real binaries and models:

 A. Tiny random CLIP (both towers, made by the exporter): the indexer builds a
    snapshot from real test images (recording the bad ones in rejects.jsonl);
    the service answers text queries, and its text embedding (C++ tokenizer +
    LibTorch) equals Python's (reference tokenizer + the same TorchScript).
 B. The default image-only model: image queries find the image itself and its
    stereo twin; a text query gets FAILED_PRECONDITION; corrupt images and a
    decompression bomb get INVALID_ARGUMENT; the process survives it all.
 C. Text and image queries through imagesearch-router with its own model (the
    tiny CLIP), over A's collection resharded into 2 shards whose replicas
    hold no model: the same exact answers as A's one replica.

Usage: model_queries_test.py BUILD_DIR SOURCE_DIR TINY_CLIP_MODEL DEFAULT_MODEL
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import check  # noqa: E402

BUILD, SRC, TINY, DEFAULT = sys.argv[1:5]
IMAGES = os.path.join(SRC, "tests", "data", "images")
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
ROUTER = os.path.join(BUILD, "services", "router", "imagesearch-router")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
pb, pb_grpc = grpc_stubs.load(os.path.join(SRC, "proto"))
import grpc  # noqa: E402


def index(model, root):
    out = subprocess.run([INDEXER, f"--input={IMAGES}", f"--root={root}", f"--model={model}",
                          "--max_reject_ratio=0.5", "--progress=none", "--ef_construction=64"],
                         capture_output=True, text=True)
    check(out.returncode == 0, f"indexer failed: {out.stderr}")
    return out.stdout


class GrpcServer(e2e_lib.Server):
    """The query binary on `root` (gRPC listens once it is loaded), with a stub and its GetInfo."""

    def __init__(self, root, log, extra=()):
        super().__init__(QUERY, [f"--snapshot_root={root}", "--max_delay_us=5000", *extra], log)
        self.stub = pb_grpc.ImageSearchStub(grpc.insecure_channel(self.grpc_address))
        self.info = self.stub.GetInfo(pb.GetInfoRequest())

    def error(self, req):
        try:
            self.stub.Search(req)
        except grpc.RpcError as e:
            return e.code(), e.details()
        raise AssertionError(f"expected an error for {req}")


def read(name):
    with open(os.path.join(IMAGES, name), "rb") as f:
        return f.read()


def part_a(work):
    import torch
    sys.path.insert(0, os.path.join(SRC, "libs", "text", "reference"))
    from simple_tokenizer_ref import ClipTokenizerRef
    root = os.path.join(work, "clip_root")
    print(index(TINY, root).strip())
    rejects = [json.loads(line) for line in open(os.path.join(root, "v1", "rejects.jsonl"))]
    rejected = {r["id"]: r["reason"] for r in rejects}
    check("truncated.jpg" in rejected, f"truncated.jpg not rejected: {rejected}")
    check("bomb_50000x50000.png" in rejected and "pixels" in rejected["bomb_50000x50000.png"],
          f"bomb not rejected with a pixel-count reason: {rejected}")
    s = GrpcServer(root, os.path.join(work, "clip.log"))
    try:
        check(s.info.model.has_text and s.info.model.loaded, s.info)
        texts = ["a photo of a cat", "Rocket launch at night!", "two motorcycles"]
        resp = s.stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts]))
        check(len(resp.embeddings) == 3 and resp.snapshot_version == 1, resp)
        tok = ClipTokenizerRef(os.path.join(SRC, "tests", "data", "clip",
                                            "bpe_simple_vocab_16e6.txt.gz"), use_ftfy=False)
        model = torch.jit.load(TINY)
        ids = torch.tensor([tok.tokenize(t)[0] for t in texts], dtype=torch.int64)
        with torch.inference_mode():
            ref = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
        got = torch.tensor([list(e.values) for e in resp.embeddings])
        cos = (got * ref).sum(-1)
        print(f"text embeddings, service vs Python: min cosine {cos.min().item():.6f}")
        check(cos.min().item() > 0.9999, f"text embeddings disagree: {cos}")
        hits = s.stub.Search(pb.SearchRequest(text="a cat", top_k=5))
        check(len(hits.hits) == 5 and hits.snapshot_version == 1, hits)
        # An image query embeds exactly as the indexer did: it finds itself at distance ~0.
        hit = s.stub.Search(pb.SearchRequest(image=read("coffee.png"), top_k=1)).hits[0]
        check(hit.id == "coffee.png" and hit.distance < 1e-4, hit)
    finally:
        s.stop()


def part_b(work):
    root = os.path.join(work, "default_root")
    print(index(DEFAULT, root).strip())
    s = GrpcServer(root, os.path.join(work, "default.log"))
    try:
        check(s.info.dim == 1792 and not s.info.model.has_text, s.info)
        r = s.stub.Search(pb.SearchRequest(image=read("motorcycle_left.png"), top_k=3))
        ids = [h.id for h in r.hits]
        print(f"motorcycle_left query -> {ids}")
        check(ids[0] == "motorcycle_left.png" and ids[1] == "motorcycle_right.png", ids)
        # Formats: the WebP and JPEG copies of chelsea find themselves first and
        # then chelsea.png's neighbourhood: the PNG original among their top 3,
        # and at least 4 of the PNG query's top 6 among theirs.
        png = [h.id for h in s.stub.Search(pb.SearchRequest(image=read("chelsea.png"),
                                                            top_k=6)).hits]
        check(png[0] == "chelsea.png", png)
        for copy in ("chelsea.webp", "chelsea.jpg"):
            ids = [h.id for h in s.stub.Search(pb.SearchRequest(image=read(copy), top_k=6)).hits]
            print(f"{copy} query -> {ids}; chelsea.png query -> {png}")
            check(ids[0] == copy, (copy, ids))
            check("chelsea.png" in ids[:3], (copy, ids))
            check(len(set(ids) & set(png)) >= 4, (copy, ids, png))
        code, msg = s.error(pb.SearchRequest(text="a cat"))
        check(code == grpc.StatusCode.FAILED_PRECONDITION and "no text encoder" in msg, msg)
        code, msg = s.error(pb.SearchRequest(image=read("truncated.jpg")))
        check(code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg))
        code, msg = s.error(pb.SearchRequest(image=read("bomb_50000x50000.png")))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and "50000x50000" in msg, msg)
        code, msg = s.error(pb.SearchRequest(image=b"GIF89a garbage"))
        check(code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg))
        # Concurrent image queries (batched together) agree with single ones.
        from concurrent.futures import ThreadPoolExecutor
        names = ["rocket.jpg", "coffee.png", "camera.png", "astronaut.png"] * 4
        single = {n: s.stub.Search(pb.SearchRequest(image=read(n), top_k=3)) for n in set(names)}
        with ThreadPoolExecutor(8) as ex:
            many = list(ex.map(lambda n: s.stub.Search(pb.SearchRequest(image=read(n), top_k=3)),
                               names))
        for n, r in zip(names, many):
            check([h.id for h in r.hits] == [h.id for h in single[n].hits], (n, r, single[n]))
            check(r.hits[0].id == n, (n, r))
    finally:
        s.stop()
    # Without its model runtime plugin the service still serves the snapshot's
    # vector and id queries, and says why image queries cannot be answered.
    s = GrpcServer(root, os.path.join(work, "noplugin.log"), ["--model_plugin=/nonexistent/plugin.so"])
    try:
        check(not s.info.model.loaded, s.info)
        r = s.stub.Search(pb.SearchRequest(id="rocket.jpg", top_k=2))
        check(len(r.hits) == 2 and r.snapshot_version == 1, r)
        code, msg = s.error(pb.SearchRequest(image=read("rocket.jpg")))
        check(code == grpc.StatusCode.UNIMPLEMENTED and "/nonexistent/plugin.so" in msg, msg)
    finally:
        s.stop()


def part_c(work):
    root = os.path.join(work, "clip_root")  # Part A's.
    coll = os.path.join(work, "clip_coll")
    out = subprocess.run([SNAPSHOT, "reshard", f"--from={root}", f"--root={coll}",
                          "--shard_count=2", "--collection=clips", "--threads=1"],
                         capture_output=True, text=True)
    check(out.returncode == 0, f"reshard failed: {out.stderr}")
    procs = []
    try:
        single = GrpcServer(root, os.path.join(work, "c_single.log"))
        procs.append(single)
        shards = []
        for i in range(2):
            shards.append(GrpcServer(os.path.join(coll, f"shard-{i}-of-2"),
                                     os.path.join(work, f"c_shard{i}.log"),
                                     extra=("--load_model=false",)))
            procs.append(shards[-1])
            check(not shards[-1].info.model.loaded, shards[-1].info)
        router = e2e_lib.Server(ROUTER, [f"--shards={';'.join(s.grpc_address for s in shards)}",
                                         f"--model={TINY}", "--port=0", "--max_delay_us=5000"],
                                os.path.join(work, "c_router.log"), wait=("grpc",),
                                pick_ports=False)
        procs.append(router)
        stub = pb_grpc.ImageSearchStub(grpc.insecure_channel(router.grpc_address))
        queries = [pb.SearchRequest(text=t, top_k=5, exact=True)
                   for t in ("a cat", "Rocket launch at night!", "two motorcycles")]
        queries.append(pb.SearchRequest(image=read("coffee.png"), top_k=5, exact=True))
        for q in queries:
            want = single.stub.Search(q, timeout=60)
            got = stub.Search(q, timeout=60)
            check([h.id for h in got.hits] == [h.id for h in want.hits] and
                  all(abs(a.distance - b.distance) < 1e-4 for a, b in zip(got.hits, want.hits)),
                  (q.WhichOneof("query"), got, want))
        print("router: text and image queries embedded by its own model, merged over 2 shards "
              "whose replicas hold no model, equal the single replica's exact answers")
    finally:
        for p in procs:
            p.stop()


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_models_")
    try:
        part_a(work)
        part_b(work)
        part_c(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("model queries e2e: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
