#!/usr/bin/env python3
"""End to end for the query service's Prometheus metrics (GET /metrics) with
the real binary over a snapshot of tests/data/images indexed with the default
model: known traffic over HTTP and gRPC moves the counters by exactly that
much, and the snapshot gauges describe the live snapshot.

Usage: metrics_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check  # noqa: E402

BUILD, SRC, DEFAULT = sys.argv[1:4]
IMAGES = os.path.join(SRC, "tests", "data", "images")
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
pb, pb_grpc = grpc_stubs.load(os.path.join(SRC, "proto"))
import grpc  # noqa: E402

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def read(name):
    with open(os.path.join(IMAGES, name), "rb") as f:
        return f.read()


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        c.close()


def parse(text):
    """Prometheus text format -> {(name, frozenset of (label, value)): float}."""
    series = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = LINE.match(line)
        check(m is not None, f"unparsable metrics line: {line!r}")
        name, labels, value = m.groups()
        pairs = []
        rest = labels or ""
        while rest.strip():
            lm = LABEL.match(rest)
            check(lm is not None, f"unparsable labels in {line!r}")
            pairs.append((lm.group(1), lm.group(2)))
            rest = rest[lm.end():]
        series[(name, frozenset(pairs))] = float(value)
    return series


def get(series, name, **labels):
    return series.get((name, frozenset(labels.items())), 0.0)


def scrape(port):
    status, ctype, body = request(port, "GET", "/metrics")
    check(status == 200, f"/metrics answered {status}")
    check(ctype.startswith("text/plain"), f"/metrics Content-Type is {ctype!r}")
    return parse(body.decode())


REQ = "imagesearch_requests_total"
EXPECTED_DELTAS = [
    ((REQ, {"code": "OK", "front": "http", "method": "Search"}), 3),
    ((REQ, {"code": "NOT_FOUND", "front": "http", "method": "Search"}), 1),
    ((REQ, {"code": "OK", "front": "grpc", "method": "Search"}), 2),
    ((REQ, {"code": "INVALID_ARGUMENT", "front": "grpc", "method": "Search"}), 1),
    ((REQ, {"code": "OK", "front": "grpc", "method": "Embed"}), 1),
    ((REQ, {"code": "INVALID_ARGUMENT", "front": "http", "method": "Malformed"}), 1),
    ((REQ, {"code": "UNIMPLEMENTED", "front": "http", "method": "Malformed"}), 1),
    (("imagesearch_request_duration_seconds_count", {"front": "http", "method": "Search"}), 4),
    (("imagesearch_embed_queue_seconds_count", {"kind": "image"}), 5),
    (("imagesearch_embed_batch_size_sum", {"kind": "image"}), 5),
]


def deltas(before, after):
    return [(name, labels, get(after, name, **labels) - get(before, name, **labels), want)
            for (name, labels), want in EXPECTED_DELTAS]


def send_traffic(port, stub):
    for name in ("coffee.png", "camera.png", "astronaut.png"):
        st, _, data = request(port, "POST", "/invocations?top_k=3", read(name),
                              {"Content-Type": "image/png"})
        check(st == 200 and json.loads(data)["hits"][0]["id"] == name, f"{name}: {st} {data[:200]}")
    st, _, data = request(port, "POST", "/invocations", json.dumps({"id": "no-such-id"}),
                          {"Content-Type": "application/json"})
    check(st == 404, f"unknown id over HTTP: {st} {data[:200]}")
    for i in ("rocket.jpg", "coffee.png"):
        check(len(stub.Search(pb.SearchRequest(id=i, top_k=3)).hits) == 3, f"gRPC Search id={i}")
    try:
        stub.Search(pb.SearchRequest(id="rocket.jpg", top_k=5000))
        raise AssertionError("top_k=5000 did not fail")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"top_k=5000: {e.code()}")
    # Requests the HTTP server refuses before any route: counted as Malformed.
    for raw, want in ((b"GET x HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 "),
                      (b"GET /ping HTTP/2.0\r\n\r\n", b"HTTP/1.1 505 ")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        check(answer.startswith(want), f"{raw!r}: {answer[:80]!r}")
    emb = stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(image=read("rocket.jpg")),
                                             pb.EmbedInput(image=read("logo.png"))]))
    check(len(emb.embeddings) == 2, f"Embed answered {len(emb.embeddings)} vectors")


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_metrics_")
    server = None
    try:
        root = os.path.join(work, "root")
        out = subprocess.run([INDEXER, f"--input={IMAGES}", f"--root={root}", f"--model={DEFAULT}",
                              "--max_reject_ratio=0.5", "--progress=none", "--ef_construction=64"],
                             capture_output=True, text=True)
        check(out.returncode == 0, f"indexer failed: {out.stderr}")
        print(out.stdout.strip())
        server = Server(QUERY, [f"--snapshot_root={root}"], os.path.join(work, "query.log"))
        port = server.http_port
        check(request(port, "GET", "/ping")[0] == 200, "gRPC listens but /ping is not 200")
        stub = pb_grpc.ImageSearchStub(grpc.insecure_channel(server.grpc_address))
        info = stub.GetInfo(pb.GetInfoRequest())

        before = scrape(port)
        send_traffic(port, stub)
        # Requests are counted before their answers go out: no waiting needed.
        after = scrape(port)
        for name, labels, got, want in deltas(before, after):
            check(got == want, f"{name}{labels}: delta {got}, expected {want}")
        print("deltas: " + ", ".join(f"{n}{l}+{int(g)}" for n, l, g, _ in deltas(before, after)))

        check(get(after, "imagesearch_inflight_requests") == 0,
              f"inflight = {get(after, 'imagesearch_inflight_requests')}")
        check(get(after, "imagesearch_snapshot_version") == 1, "snapshot_version != 1")
        check(get(after, "imagesearch_snapshot_vectors") == info.vector_count,
              f"snapshot_vectors {get(after, 'imagesearch_snapshot_vectors')} != "
              f"{info.vector_count}")
        check(get(after, "imagesearch_snapshot_loads_total", result="ok") == 1,
              f"snapshot loads ok = {get(after, 'imagesearch_snapshot_loads_total', result='ok')}")
        build = {labels: v for (n, labels), v in after.items() if n == "imagesearch_build_info"}
        check(len(build) == 1, f"build_info series: {build}")
        labels, value = next(iter(build.items()))
        check(dict(labels).get("model") == info.model.name and info.model.name and value == 1,
              f"build_info {dict(labels)} = {value}, model {info.model.name!r}")
        print(f"gauges: inflight 0, snapshot v1 with {info.vector_count} vectors, 1 load, "
              f"build_info model={info.model.name}")

        # The process figures, read at the scrape, from this very process.
        with open(f"/proc/{server.pid}/status") as f:
            threads = int(next(line for line in f if line.startswith("Threads:")).split()[1])
        rss = get(after, "process_resident_memory_bytes")
        heap = get(after, "imagesearch_malloc_in_use_bytes")
        check(rss > 10 * 2**20 and 0 < heap <= get(after, "imagesearch_malloc_system_bytes"),
              f"resident {rss}, heap in use {heap}")
        check(abs(get(after, "process_threads") - threads) <= 2,
              f"process_threads {get(after, 'process_threads')}, /proc says {threads}")
        check(abs(get(after, "process_start_time_seconds") - time.time()) < 600,
              f"process_start_time_seconds {get(after, 'process_start_time_seconds')}")
        check(get(after, "process_cpu_seconds_total") > 0 and get(after, "process_open_fds") > 3,
              "process_cpu_seconds_total / process_open_fds")
        print(f"process: resident {rss / 2**20:.0f} MiB, heap in use {heap / 2**20:.0f} MiB")

        # The Grafana dashboard queries only metrics the service exports (its
        # router row, imagesearch_shard_*, is checked against imagesearch-router's
        # /metrics by e2e_sharded_indexing).
        with open(os.path.join(SRC, "deploy", "grafana", "imagesearch-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        used = {re.sub(r"_(bucket|sum|count)$", "", m)
                for e in exprs for m in re.findall(r"(?:imagesearch|process)_[a-z_]+", e)
                if not m.startswith("imagesearch_shard_")}
        exported = {re.sub(r"_(bucket|sum|count)$", "", n) for n, _ in after}
        check(used and used <= exported, f"dashboard uses unexported metrics: {used - exported}")
        print(f"dashboard: {len(exprs)} queries over {len(used)} exported metrics")
        server.stop()
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("metrics e2e: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
