#!/usr/bin/env python3
"""Near-duplicates on real images with known duplicates: chelsea.png and its
re-encodings (JPEG, WebP, EXIF-rotated JPEG), a 3/4-size JPEG and a half-size
PNG made here with PIL, among distinct photos.
  1. the indexer's duplicates.jsonl groups the re-encodings and leaves the
     half-size copy (cosine 0.91 with the default model) and distinct photos out;
  2. a query with dedup collapses them: top_k distinct items still come back,
     the response says how many were collapsed, and gRPC agrees with HTTP.

Usage: dedup_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import base64
import json
import os
import shutil
import sys
import tempfile

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check, run  # noqa: E402
from e2e_lib import post_json as post  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
IMAGES = os.path.join(SRC, "tests", "data", "images")
pb, pb_grpc = grpc_stubs.load(os.path.join(SRC, "proto"))
import grpc  # noqa: E402

REENCODED = {"chelsea.png", "chelsea.jpg", "chelsea.webp", "chelsea_exif6.jpg"}
DISTINCT = ["coffee.png", "astronaut.png", "rocket.jpg", "camera.png", "motorcycle_left.png", "logo.png"]




def main():
    work = tempfile.mkdtemp(prefix="imagesearch_dedup_")
    server = None
    try:
        corpus = os.path.join(work, "in")
        os.makedirs(corpus)
        for name in sorted(REENCODED) + DISTINCT:
            shutil.copy(os.path.join(IMAGES, name), corpus)
        cat = Image.open(os.path.join(IMAGES, "chelsea.png")).convert("RGB")
        cat.resize((338, 225), Image.BICUBIC).save(os.path.join(corpus, "chelsea_34.jpg"), quality=70)
        cat.resize((225, 150), Image.LANCZOS).save(os.path.join(corpus, "chelsea_half.png"))
        root = os.path.join(work, "root")
        out = run(INDEXER, f"--input={corpus}", f"--root={root}", f"--model={MODEL}", "--progress=none")
        check("near-duplicate groups" in out.stdout, out.stdout)
        groups = [json.loads(line) for line in open(os.path.join(root, "v1", "duplicates.jsonl"))]
        cats = [g for g in groups if "chelsea.png" in g["ids"]]
        check(len(cats) == 1, f"groups: {groups}")
        check(REENCODED <= set(cats[0]["ids"]), f"re-encodings not grouped: {cats[0]}")
        check("chelsea_half.png" not in cats[0]["ids"], f"half-size copy grouped at 0.95: {cats[0]}")
        grouped = {i for g in groups for i in g["ids"]}
        for name in ["coffee.png", "astronaut.png", "rocket.jpg", "camera.png", "logo.png"]:
            check(name not in grouped, f"{name} reported as a duplicate: {groups}")
        check(cats[0]["min_similarity"] >= 0.95, cats[0])
        print(f"1. duplicates.jsonl: {len(groups)} group(s); chelsea's: {sorted(cats[0]['ids'])} "
              f"(min similarity {cats[0]['min_similarity']:.3f}); the half-size copy and distinct photos left out")

        server = Server(QUERY, [f"--snapshot_root={root}"], os.path.join(work, "query.log"))
        http = server.http_port
        img = open(os.path.join(IMAGES, "chelsea.png"), "rb").read()
        b64 = base64.b64encode(img).decode()
        st, plain = post(http, {"image": b64, "top_k": 4})
        check(st == 200 and {h["id"] for h in plain["hits"]} <= REENCODED | {"chelsea_34.jpg"}
              and plain["collapsed"] == 0, f"without dedup: {plain}")
        st, d = post(http, {"image": b64, "top_k": 4, "dedup": 0.95})
        ids = [h["id"] for h in d["hits"]]
        check(st == 200 and len(ids) == 4, f"dedup: {st} {d}")
        check(ids[0] in REENCODED and not set(ids[1:]) & (REENCODED | {"chelsea_34.jpg"}),
              f"duplicates left in: {ids}")
        check(d["collapsed"] >= 3, f"collapsed: {d['collapsed']}")
        stub = pb_grpc.ImageSearchStub(grpc.insecure_channel(server.grpc_address))
        g = stub.Search(pb.SearchRequest(image=img, top_k=4, dedup=0.95))
        check([h.id for h in g.hits] == ids and g.collapsed == d["collapsed"], f"gRPC {g} vs HTTP {d}")
        st, e = post(http, {"id": "coffee.png", "dedup": 1.5})
        check(st == 400 and "dedup 1.5 is out of range" in e["error"]["message"], f"{st} {e}")
        print(f"2. dedup=0.95: {ids}, {d['collapsed']} collapsed (without: {[h['id'] for h in plain['hits']]}); "
              "gRPC agrees; dedup 1.5 refused")
        server.stop()
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("dedup e2e: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
