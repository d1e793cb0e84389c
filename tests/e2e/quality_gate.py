#!/usr/bin/env python3
"""Quality gate for the CI batch indexer job, run through the live service.

Checks, against a running query service whose snapshot was built from a
labelled corpus (manifest.jsonl with attributes.class):
  1. self-retrieval: querying with an indexed image's bytes returns that
     image first (for a sample of SELF_SAMPLE images);
  2. class precision@10 of "more like this" (id queries, the item itself
     excluded), averaged over every indexed image, is at least MIN_P10.

Usage: quality_gate.py ADDRESS PROTO_DIR MANIFEST MIN_P10 [SELF_SAMPLE=50]
Prints the measured figures; exits non-zero if a gate fails.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc_stubs  # noqa: E402


def main():
    address, proto_dir, manifest, min_p10 = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    self_sample = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    pb, pb_grpc = grpc_stubs.load(proto_dir)
    import grpc
    base = os.path.dirname(manifest)
    items = [json.loads(line) for line in open(manifest) if line.strip()]
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = pb_grpc.ImageSearchStub(channel)
    for _ in range(600):  # The service answers UNAVAILABLE until its snapshot is loaded.
        try:
            info = stub.GetInfo(pb.GetInfoRequest())
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.1)
    assert info.vector_count == len(items), (info.vector_count, len(items))

    # 1. Self-retrieval by image bytes, through the model and the batcher.
    step = max(1, len(items) // self_sample)
    sample = items[::step][:self_sample]
    misses = []
    t0 = time.time()
    for it in sample:
        with open(os.path.join(base, it["path"]), "rb") as f:
            try:
                resp = stub.Search(pb.SearchRequest(image=f.read(), top_k=1))
            except grpc.RpcError as e:  # e.g. a snapshot whose model cannot embed images
                misses.append((it["id"], f"{e.code().name}: {e.details()}"))
                continue
        if not resp.hits or resp.hits[0].id != it["id"]:
            misses.append((it["id"], resp.hits[0].id if resp.hits else None))
    self_rate = 1 - len(misses) / len(sample)
    print(f"self-retrieval: {len(sample) - len(misses)}/{len(sample)} images come back first "
          f"({(time.time() - t0) / len(sample) * 1000:.0f} ms/query)")

    # 2. Class precision@10 of "more like this".
    cls = {it["id"]: it["attributes"]["class"] for it in items}
    total = 0.0
    for it in items:
        resp = stub.Search(pb.SearchRequest(id=it["id"], top_k=10))
        same = sum(1 for h in resp.hits if cls.get(h.id) == cls[it["id"]])
        total += same / 10
    p10 = total / len(items)
    print(f"class precision@10: {p10:.4f} over {len(items)} queries (gate: >= {min_p10})")

    ok = True
    if misses:
        print(f"FAIL: self-retrieval misses (id, got): {misses[:5]}")
        ok = False
    if p10 < min_p10:
        print(f"FAIL: precision@10 {p10:.4f} < {min_p10}")
        ok = False
    print("quality gate: %d passed, %d failed" % ((1, 0) if ok else (0, 1)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
