#!/usr/bin/env python3
"""Filtered search end to end, on real images with the default model:
index Fashion-MNIST with a schema (--schema=class:keyword,n:integer,even:boolean),
then filter over HTTP (the API's messages in proto3 JSON) and gRPC (same
answers), by image and by id; unknown fields and type mismatches name the
field; error text quotes at most 64 bytes of a 1 MiB field name, range key or
value on both fronts; a schema violation is a reject with its reason; an
incremental build carries the columns over.

Usage: filter_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import base64
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check, run  # noqa: E402
from e2e_lib import post_json as post  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
pb, pb_grpc = grpc_stubs.load(os.path.join(SRC, "proto"))
import grpc  # noqa: E402

SCHEMA = "--schema=class:keyword,n:integer,even:boolean"




def main():
    work = tempfile.mkdtemp(prefix="imagesearch_filter_")
    server = None
    try:
        corpus = os.path.join(work, "corpus")
        run("bash", os.path.join(SRC, "tools", "corpus", "fashion_mnist.sh"), corpus, "10")
        items = [json.loads(line) for line in open(os.path.join(corpus, "manifest.jsonl"))]
        for i, it in enumerate(items):
            it["attributes"]["n"] = i
            it["attributes"]["even"] = i % 2 == 0
        bad = dict(items[0], id="bad-n", attributes={"class": "boot", "n": "seven"})
        manifest = os.path.join(corpus, "typed.jsonl")
        with open(manifest, "w") as f:
            for it in items[:90] + [bad]:
                f.write(json.dumps(it) + "\n")
        root = os.path.join(work, "root")
        run(INDEXER, f"--input={manifest}", f"--root={root}", f"--model={MODEL}", "--progress=none",
            SCHEMA)
        rejects = open(os.path.join(root, "v1", "rejects.jsonl")).read()
        check('"id":"bad-n"' in rejects and "attribute 'n': expected an integer, got \\\"seven\\\"" in rejects,
              f"rejects: {rejects}")
        print("1. a schema violation is rejected with its reason; 90 images indexed with typed columns")

        server = Server(QUERY, [f"--snapshot_root={root}", "--poll_ms=200"],
                        os.path.join(work, "query.log"))
        http = server.http_port
        stub = pb_grpc.ImageSearchStub(grpc.insecure_channel(server.grpc_address))
        info = json.load(urllib.request.urlopen(f"{server.http_url}/info", timeout=10))
        check(info["fields"] == [{"name": "class", "type": "keyword"}, {"name": "n", "type": "integer"},
                                 {"name": "even", "type": "boolean"}], f"/info fields: {info['fields']}")
        g = stub.GetInfo(pb.GetInfoRequest())
        check([(f.name, f.type) for f in g.fields] == [("class", "keyword"), ("n", "integer"),
                                                        ("even", "boolean")], f"GetInfo: {g.fields}")

        cls = {it["id"]: it["attributes"]["class"] for it in items[:90]}
        num = {it["id"]: it["attributes"]["n"] for it in items[:90]}
        boot = next(it for it in items[:90] if it["attributes"]["class"] == "boot")
        # The Filter message in proto3 JSON (int64 values may be numbers or strings).
        flt = {"must": [{"field": "class", "match": {"keyword": "bag"}},
                        {"field": "n", "range": {"gte": {"integer": 20}, "lt": {"integer": "80"}}}],
               "must_not": [{"field": "even", "match": {"boolean": True}}]}
        st, r = post(http, {"id": boot["id"], "top_k": 5, "filter": flt})
        check(st == 200 and r["hits"], f"HTTP filtered id query: {st} {r}")
        for h in r["hits"]:
            check(cls[h["id"]] == "bag" and 20 <= num[h["id"]] < 80 and num[h["id"]] % 2 == 1, f"hit {h}")
        want = [h for h in cls if cls[h] == "bag" and 20 <= num[h] < 80 and num[h] % 2 == 1]
        check(len(r["hits"]) == min(5, len(want)), f"{len(r['hits'])} hits, {len(want)} allowed")
        proto = pb.Filter(
            must=[pb.Condition(field="class", match=pb.FilterValue(keyword="bag")),
                  pb.Condition(field="n", range=pb.Range(gte=pb.FilterValue(integer=20),
                                                         lt=pb.FilterValue(integer=80)))],
            must_not=[pb.Condition(field="even", match=pb.FilterValue(boolean=True))])
        gr = stub.Search(pb.SearchRequest(id=boot["id"], top_k=5, filter=proto))
        check([h.id for h in gr.hits] == [h["id"] for h in r["hits"]], f"gRPC {gr.hits} vs HTTP {r['hits']}")
        batch = stub.SearchBatch(pb.SearchBatchRequest(requests=[
            pb.SearchRequest(id=boot["id"], top_k=5, filter=proto), pb.SearchRequest(id=boot["id"], top_k=5)]))
        check([h.id for h in batch.responses[0].hits] == [h.id for h in gr.hits], "SearchBatch filtered")
        check(any(cls[h.id] != "bag" for h in batch.responses[1].hits), "SearchBatch unfiltered item filtered")
        print(f"2. HTTP, gRPC Search and SearchBatch give the same filtered hits ({len(r['hits'])} of {len(want)} allowed rows)")

        # By image: the image itself comes first when its class is allowed, never when excluded.
        img = base64.b64encode(open(os.path.join(corpus, boot["path"]), "rb").read()).decode()
        st, r = post(http, {"image": img, "top_k": 3, "filter": {"must": [
            {"field": "class", "in": {"values": [{"keyword": "boot"}, {"keyword": "bag"}]}}]}})
        check(st == 200 and r["hits"][0]["id"] == boot["id"], f"image + allowed class: {r}")
        st, r = post(http, {"image": img, "top_k": 3,
                            "filter": {"must_not": [{"field": "class", "match": {"keyword": "boot"}},
                                                    {"hasId": {"ids": ["x"]}}]}})
        check(st == 200 and all(cls[h["id"]] != "boot" for h in r["hits"]), f"image, boots excluded: {r}")
        print("3. image queries: filtered by class, the image itself first when allowed")

        kw = {"keyword": "x"}
        for body, needle in [({"field": "colour", "match": {"keyword": "red"}}, "filter field 'colour' is not in the schema"),
                             ({"field": "n", "in": {"values": [kw]}}, "filter field 'n' is integer; in value 'x' does not fit it"),
                             ({"field": "n", "match": {"integer": 3}}, "match takes keyword or boolean fields"),
                             ({"field": "class", "range": {"gte": {"integer": 1}}}, "range takes integer, float or timestamp"),
                             ({"field": "class"}, "filter condition on 'class' has no test (match, in, range or has_id)"),
                             ({"field": "class", "match": {}}, "filter condition on 'class' has a value with nothing set"),
                             ({"field": "n", "match": "bag"}, "(filter.must[0].match): invalid value")]:
            st, r = post(http, {"id": boot["id"], "filter": {"must": [body]}})
            check(st == 400 and r["error"]["code"] == "INVALID_ARGUMENT" and needle in r["error"]["message"],
                  f"{body}: {st} {r}")
        try:
            stub.Search(pb.SearchRequest(id=boot["id"], filter=pb.Filter(
                must=[pb.Condition(field="colour", match=pb.FilterValue(keyword="red"))])))
            raise AssertionError("unknown field accepted over gRPC")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "colour" in e.details(), e.details())
        print("4. unknown fields and type mismatches: INVALID_ARGUMENT naming the field (HTTP and gRPC)")

        # Client text in error messages is quoted to 64 bytes, on both fronts.
        big = "z" * (1 << 20)
        huge = [("field name", {"field": big, "match": kw},
                 pb.Condition(field=big, match=pb.FilterValue(keyword="x")), "filter field 'zzz"),
                ("range key", {"field": "n", "range": {big: {"integer": 1}}}, None, "zzz"),
                ("range value", {"field": "n", "range": {"gte": {"keyword": big}}},
                 pb.Condition(field="n", range=pb.Range(gte=pb.FilterValue(keyword=big))), "'zzz"),
                ("top-level key", None, None, "zzz")]
        for what, cond, grpc_cond, needle in huge:
            body = {"id": boot["id"], "filter": {"must": [cond]}} if cond else {"id": boot["id"], big: 1}
            raw = json.dumps(body).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{http}/invocations", data=raw,
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=30)
                raise AssertionError(f"HTTP {what} of 1 MiB accepted")
            except urllib.error.HTTPError as e:
                status, answer = e.code, e.read()
            msg = json.loads(answer)["error"]["message"]
            check(status == 400 and len(answer) < 600 and needle in msg and " bytes)" in msg,
                  f"HTTP {what} of 1 MiB: {status}, {len(answer)}-byte answer: {answer[:300]!r}")
            if grpc_cond is not None:
                try:
                    stub.Search(pb.SearchRequest(id=boot["id"], filter=pb.Filter(must=[grpc_cond])))
                    raise AssertionError(f"gRPC {what} of 1 MiB accepted")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and len(e.details()) < 400
                          and needle in e.details() and "(1048576 bytes)" in e.details(),
                          f"gRPC {what} of 1 MiB: {e.code()} {e.details()[:300]!r}")
            print(f"   {what} of 1 MiB: {len(answer)}-byte HTTP answer: {msg[:120]}")
        print("4b. 1 MiB field names, range keys and values are quoted to 64 bytes (HTTP and gRPC)")

        # Incremental: new images on top; old rows keep their columns.
        extra = os.path.join(corpus, "extra.jsonl")
        with open(extra, "w") as f:
            for it in items[90:]:
                f.write(json.dumps(it) + "\n")
        # No --model: on top of v1, the indexer embeds with v1's own model.pt.
        run(INDEXER, f"--input={extra}", f"--root={root}", "--progress=none", "--base=v1", SCHEMA)
        server.wait_until("serving v2", lambda: json.load(urllib.request.urlopen(
            f"{server.http_url}/info", timeout=10))["snapshot_version"] == "2")
        st, r = post(http, {"id": boot["id"], "top_k": 100,
                            "filter": {"must": [{"field": "n", "range": {"gte": {"integer": 85}}}]}})
        got = sorted(num.get(h["id"], next(it["attributes"]["n"] for it in items if it["id"] == h["id"]))
                     for h in r["hits"])
        check(st == 200 and got == list(range(85, 100)), f"v2 rows n >= 85: {got}")
        print("5. incremental build (--base, with the base's model): old and new rows filter alike")
        server.stop()
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("filter e2e: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
