#!/usr/bin/env python3
"""End to end for the HTTP front end (/ping, /invocations) of the real query
binary over a snapshot of tests/data/images indexed with the default model:
readiness vs gRPC health, every query kind, parity with gRPC (hits, scores and
error text), every error status, concurrency, SIGTERM while busy, and the
SageMaker `serve` mode; and the web routes (GET /, /info, /thumbs/{id}).

Usage: http_frontend_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import check  # noqa: E402

BUILD, SRC, DEFAULT = sys.argv[1:4]
IMAGES = os.path.join(SRC, "tests", "data", "images")
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
pb, pb_grpc = grpc_stubs.load(os.path.join(SRC, "proto"))
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

# Images whose nearest neighbour in the corpus is themselves.
DISTINCT = ["astronaut.png", "camera.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
            "motorcycle_right.png", "logo.png", "chelsea.png"]


H = e2e_lib.health_pb2(os.path.join(SRC, "proto"))


def read(name):
    with open(os.path.join(IMAGES, name), "rb") as f:
        return f.read()


def index(root):
    out = subprocess.run([INDEXER, f"--input={IMAGES}", f"--root={root}", f"--model={DEFAULT}",
                          "--max_reject_ratio=0.5", "--progress=none", "--ef_construction=64"],
                         capture_output=True, text=True)
    check(out.returncode == 0, f"indexer failed: {out.stderr}")
    print(out.stdout.strip())


class GrpcServer(e2e_lib.Server):
    """The query binary with `args`, and, once gRPC listens, a stub and gRPC health."""

    def __init__(self, args, log, env=None, wait=("grpc", "http"), pick_ports=True):
        super().__init__(QUERY, args, log, env=env, wait=wait, pick_ports=pick_ports)
        self.http = self.http_port
        if self.grpc_port is not None:
            self.connect()

    def connect(self):
        self.channel = grpc.insecure_channel(self.grpc_address)
        self.stub = pb_grpc.ImageSearchStub(self.channel)
        self.health = e2e_lib.health_check(self.channel, H)


def request(port, method, path, body=None, headers=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def post_raw(port, body, ctype, params=""):
    return request(port, "POST", "/invocations" + params, body, {"Content-Type": ctype})


def post_json(port, obj, raw=None, params=""):
    return post_raw(port, raw if raw is not None else json.dumps(obj), "application/json", params)


def post_image(port, name, params="?top_k=3"):
    return post_raw(port, read(name), "image/jpeg" if name.endswith(".jpg") else "image/png", params)


def flags(root, *extra):
    return [f"--snapshot_root={root}", *extra]


def hits_of(status, data, what):
    """The answer is a SearchResponse in proto3 JSON, with every field present."""
    check(status == 200, f"{what}: HTTP {status} {data[:300]!r}")
    json_format.Parse(data, pb.SearchResponse())
    r = json.loads(data)
    check(set(r) == {"hits", "snapshot_version", "collapsed", "missing_shards", "shard_versions"}
          and r["snapshot_version"].isdigit(), f"{what}: {r}")
    # Router-only fields: a replica serves one shard and leaves them empty.
    check(r["missing_shards"] == [] and r["shard_versions"] == {}, f"{what}: {r}")
    for h in r["hits"]:
        check(set(h) == {"id", "score", "distance", "uri", "attributes_json"}, f"{what}: {h}")
    return r


def expect_error(got, status, code, substring, what):
    st, data = got
    check(st == status, f"{what}: expected HTTP {status}, got {st} {data[:300]!r}")
    err = json.loads(data)["error"]
    check(err["code"] == code and substring in err["message"],
          f"{what}: expected {code} with '{substring}', got {err}")
    return err["message"]


def grpc_error(stub, req):
    try:
        stub.Search(req)
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError(f"expected a gRPC error for {req}")


def section1(work, root):
    empty = os.path.join(work, "empty")
    os.makedirs(empty)
    e = GrpcServer(flags(empty), os.path.join(work, "empty.log"), wait=("http",))
    check(request(e.http, "GET", "/ping")[0] == 503, "/ping before a snapshot is not 503")
    st, data = post_json(e.http, {"id": "x"})
    check(st == 503 and json.loads(data) == {"error": {"code": "UNAVAILABLE",
                                                       "message": "no snapshot is loaded yet"}},
          f"no snapshot: {st} {data!r}")
    # gRPC does not listen before a snapshot is loaded: a balancer sees a
    # refused connection, never a replica that answers UNAVAILABLE.
    check(e.ports() == {"http": e.http} and listening_ports_of(e.pid) == {e.http},
          f"gRPC listens with no snapshot: {e.ports()}, {listening_ports_of(e.pid)}")
    # Publishing a version makes the same process load it, then listen.
    index(empty)
    e.wait_ports("grpc")
    e.wait_ping()
    e.connect()
    check(e.health() == H.HealthCheckResponse.SERVING, "gRPC listening but health not SERVING")
    e.stop()
    s = GrpcServer(flags(root), os.path.join(work, "main.log"))
    s.wait_ping()
    check(s.health() == H.HealthCheckResponse.SERVING, "/ping 200 but health not SERVING")
    print("1. readiness: /ping 503 and no gRPC listener without a snapshot; once one is "
          "published, gRPC listens and health is SERVING; 200 + SERVING with one at start")
    return s


def section2_3_4(s):
    for name in ("coffee.png", "rocket.jpg"):
        r = hits_of(*post_image(s.http, name), name)
        check(len(r["hits"]) == 3 and r["hits"][0]["id"] == name, f"{name}: {r}")
    print("2. image/png and image/jpeg bodies find the image itself")
    r = hits_of(*post_json(s.http, {"id": "coffee.png", "top_k": 5}), "id query")
    check(len(r["hits"]) == 5 and "coffee.png" not in [h["id"] for h in r["hits"]], r)
    b64 = base64.b64encode(read("camera.png")).decode()
    r = hits_of(*post_json(s.http, {"image": b64}), "image query")
    check(r["hits"][0]["id"] == "camera.png", r)
    emb = s.stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(image=read("astronaut.png"))]))
    r = hits_of(*post_json(s.http, {"vector": {"values": list(emb.embeddings[0].values)}}),
                "vector query")
    check(r["hits"][0]["id"] == "astronaut.png", r)
    expect_error(post_json(s.http, {"text": "a cat"}), 412, "FAILED_PRECONDITION",
                 "no text encoder", "text query")
    # Query parameters set SearchRequest's scalar fields, by .proto or JSON name.
    r = hits_of(*post_json(s.http, {"id": "coffee.png", "topK": 2}, params="?top_k=4&includeSelf=true"),
                "query parameters")
    check([h["id"] for h in r["hits"]][:1] == ["coffee.png"] and len(r["hits"]) == 4, r)
    print("3. JSON id, image and vector queries answer; query parameters override; text gets 412")
    pairs = [(post_json(s.http, {"id": "rocket.jpg", "top_k": 5}),
              pb.SearchRequest(id="rocket.jpg", top_k=5)),
             (post_image(s.http, "coffee.png", "?top_k=5"),
              pb.SearchRequest(image=read("coffee.png"), top_k=5))]
    for (st, data), req in pairs:
        h = hits_of(st, data, "parity")["hits"]
        g = s.stub.Search(req).hits
        check([x["id"] for x in h] == [x.id for x in g], f"hit ids differ: {h} vs {g}")
        check(all(abs(a["score"] - b.score) < 1e-6 for a, b in zip(h, g)), f"scores: {h} vs {g}")
    check(s.stub.GetInfo(pb.GetInfoRequest()).max_top_k < 5000, "max_top_k >= 5000")
    for body, req, status, code in [
            ({"id": "no-such-id"}, pb.SearchRequest(id="no-such-id"), 404, grpc.StatusCode.NOT_FOUND),
            ({"id": "rocket.jpg", "top_k": 5000}, pb.SearchRequest(id="rocket.jpg", top_k=5000),
             400, grpc.StatusCode.INVALID_ARGUMENT)]:
        st, data = post_json(s.http, body)
        gcode, gmsg = grpc_error(s.stub, req)
        msg = json.loads(data)["error"]["message"]
        check(st == status and gcode == code and msg == gmsg,
              f"{body}: HTTP {st} {msg!r} vs gRPC {gcode} {gmsg!r}")
    print("4. HTTP and gRPC agree on hits, scores and error messages")


def post_huge(port, send_body):
    """POST announcing a 50 MiB image/png body. Without send_body the client asks
    "Expect: 100-continue", as curl does, and must get 413 before sending a byte;
    with it, the body goes out in 1 MiB chunks, the answer must be 413, and the
    same connection must then serve a /ping (the body did not leak into it)."""
    c, start = http.client.HTTPConnection("127.0.0.1", port, timeout=30), time.time()
    try:
        c.putrequest("POST", "/invocations")
        c.putheader("Content-Type", "image/png")
        c.putheader("Content-Length", str(50 << 20))
        if not send_body:
            c.putheader("Expect", "100-continue")
        c.endheaders()
        if not send_body:
            r = c.getresponse()
            got = (r.status, r.read())
            check(time.time() - start < 5, f"413 took {time.time() - start:.1f} s")
            return got
        for _ in range(50):
            c.send(b"\0" * (1 << 20))
        r = c.getresponse()
        expect_error((r.status, r.read()), 413, "RESOURCE_EXHAUSTED", "limit", "50 MB body")
        c.request("GET", "/ping")
        r = c.getresponse()
        r.read()
        check(r.status == 200, f"/ping on the same connection after a 413: {r.status}")
        return "sent all, read 413, connection still usable"
    finally:
        c.close()


def section5(s, work, root):
    p, big = s.http, 50 << 20
    cases = [  # (what, status+body, HTTP status, code, message substring)
        ("bad JSON", post_json(p, None, raw="{not json"), 400, "INVALID_ARGUMENT",
         "(imagesearch.v1.SearchRequest in proto3 JSON)"),
        ("unknown field", post_json(p, {"id": "rocket.jpg", "bogus": 1}), 400, "INVALID_ARGUMENT",
         "bogus: Cannot find field"),
        ("two queries", post_json(p, {"id": "rocket.jpg", "text": "a"}), 400, "INVALID_ARGUMENT",
         "oneof field 'query' is already set"),
        ("unknown parameter", post_json(p, {"id": "rocket.jpg"}, params="?filter=1"), 400,
         "INVALID_ARGUMENT", "unknown query parameter 'filter'; known: top_k, ef, include_self, dedup"),
        ("bad parameter", post_json(p, {"id": "rocket.jpg"}, params="?top_k=-1"), 400,
         "INVALID_ARGUMENT", "query parameters: (top_k): invalid value"),
        ("top_k", post_json(p, {"id": "rocket.jpg", "top_k": 5000}), 400, "INVALID_ARGUMENT",
         "top_k 5000 is out of range"),
        ("undecodable image", post_raw(p, b"this is not a png", "image/png"), 400,
         "INVALID_ARGUMENT", "unrecognised image format"),
        ("unknown id", post_json(p, {"id": "no-such-id"}), 404, "NOT_FOUND", "no-such-id"),
        ("unknown route", request(p, "GET", "/nope"), 404, "NOT_FOUND", "no route for GET '/nope'"),
        ("text", post_json(p, {"text": "a cat"}), 412, "FAILED_PRECONDITION", "text"),
        ("413 header-only", post_huge(p, False), 413, "RESOURCE_EXHAUSTED",
         f"request body is {big} bytes"),
        ("415", post_raw(p, b"hello", "text/plain"), 415, "INVALID_ARGUMENT",
         "'text/plain' is not supported"),
        ("504", post_image(p, "astronaut.png", "?timeout_ms=1"), 504, "DEADLINE_EXCEEDED",
         "deadline passed"),
    ]
    for what, got, status, code, substring in cases:
        expect_error(got, status, code, substring, what)
    how = post_huge(p, True)
    check(request(p, "GET", "/ping")[0] == 200, f"/ping after a 50 MB body ({how}) is not 200")
    o = GrpcServer(flags(root, "--max_inflight_requests=0"), os.path.join(work, "overload.log"))
    o.wait_ping()
    expect_error(post_json(o.http, {"id": "rocket.jpg"}), 429, "RESOURCE_EXHAUSTED",
                 "server overloaded", "429")
    o.stop()
    print(f"5. errors: 400 404 412 413 ({how}) 415 429 503 504 as specified")


def run_threads(n, worker, join_s):
    """Starts worker(0..n-1); returns a function that joins them and says if any hung."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()

    def join():
        for t in threads:
            t.join(timeout=join_s)
        return any(t.is_alive() for t in threads)
    return join


def section6(s):
    errors = []

    def worker(i):
        try:
            for j in range(4):
                name = DISTINCT[(i + j) % len(DISTINCT)]
                r = hits_of(*post_image(s.http, name), name)
                check(r["hits"][0]["id"] == name, f"{name}: first hit {r['hits'][0]['id']}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"thread {i}: {e}")

    hung = run_threads(16, worker, 300)()
    check(not errors and not hung, f"concurrency: hung={hung} {errors[:3]}")
    print("6. 16 threads x 4 image queries: all 200, each finds itself")


def section7(s):
    """Refused/reset connections happen when the port closes (the accept backlog)."""
    counts, bad, lock, stop_at = {"200": 0, "503": 0, "refused": 0, "reset": 0}, [], \
        threading.Lock(), time.time() + 60
    shutting_down = {"error": {"code": "UNAVAILABLE", "message": "server is shutting down"}}

    def worker(i):
        for j in range(2000):
            if time.time() > stop_at:
                return
            try:
                st, data = post_image(s.http, DISTINCT[(i + j) % len(DISTINCT)])
                out = "200" if st == 200 else "503" if (
                    st == 503 and json.loads(data) == shutting_down) else None
            except ConnectionRefusedError:
                out = "refused"
            except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
                out = "reset"
            with lock:
                counts[out] = counts.get(out, 0) + 1
                if out is None:
                    bad.append((st, data[:200]))
            if out == "refused":
                return

    join = run_threads(8, worker, 90)
    time.sleep(1)
    s.proc.send_signal(signal.SIGTERM)
    start = time.time()
    try:
        rc = s.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("service did not exit within 30 s of SIGTERM")
    took, hung = time.time() - start, join()
    check(rc == 0, f"service exited with {rc} after SIGTERM while busy")
    check(not bad and not hung, f"answers other than 200/503 during shutdown: {bad[:3]}")
    check(counts["200"] > 0, f"no 200 at all: {counts}")
    print(f"7. SIGTERM while busy: exit 0 in {took:.1f} s; {counts}")


def listening_ports_of(pid):
    """The TCP ports process `pid` listens on (from /proc: its socket inodes)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}") if os.path.exists(f"/proc/{pid}/fd/{fd}") else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def section8(work, root):
    model = os.path.join(work, "sm", "model")
    os.makedirs(os.path.dirname(model))
    # One self-contained version directory, as model.tar.gz unpacks.
    e2e_lib.run(e2e_lib.tree(BUILD, SRC).snapshot, "export", f"--root={root}", "--version=v1",
                f"--out={model}")
    # SAGEMAKER_BIND_TO_PORT=0: the port SageMaker names is honoured (else
    # `serve` would take 8080), here as "a free port".
    env = dict(os.environ, SAGEMAKER_BIND_TO_PORT="0")
    sm = GrpcServer(["serve", f"--snapshot_root={model}", "--port=0"], os.path.join(work, "sm.log"),
                env, pick_ports=False)
    check(sm.http != 8080, f"serve bound HTTP to {sm.http}, not to SAGEMAKER_BIND_TO_PORT")
    sm.wait_ping()
    start = time.time()
    check(request(sm.http, "GET", "/ping", timeout=2)[0] == 200, "/ping not 200 once serving")
    check(time.time() - start < 2, "/ping took over 2 s")
    check(sm.health() == H.HealthCheckResponse.SERVING, "serve: /ping 200 but health not SERVING")
    r = hits_of(*post_image(sm.http, "rocket.jpg"), "serve image query")
    check(r["hits"][0]["id"] == "rocket.jpg", r)
    sm.stop()
    # Without --port, `serve` opens only the SageMaker contract's HTTP port.
    only = GrpcServer(["serve", f"--snapshot_root={model}"], os.path.join(work, "sm2.log"), env,
                  wait=("http",), pick_ports=False)
    only.wait_ping()
    # The start-up log line says which fronts it opens, before anything loads.
    log = only.log_text()
    check(", no gRPC" in log and "gRPC listens" not in log, f"`serve` without --port plans gRPC: {log}")
    time.sleep(0.5)  # Margin: gRPC, were it on, would start right after the snapshot loads.
    check(only.ports() == {"http": only.http}, f"`serve` without --port reports {only.ports()}")
    check(only.stdout_text() == f"http listening on port {only.http}\n",
          f"`serve` without --port printed more than its HTTP port: {only.stdout_text()!r}")
    ports = listening_ports_of(only.pid)
    check(ports == {only.http}, f"`serve` without --port listens on {sorted(ports)}, not just HTTP")
    only.stop()
    print("8. `serve` (SageMaker): /ping, /invocations, SIGTERM -> exit 0; without --port it "
          "listens on the HTTP port only")


def jpeg_size(data):
    """(width, height) from a JPEG's SOF marker."""
    check(data[:2] == b"\xff\xd8", f"not a JPEG: {data[:8]!r}")
    i = 2
    while i + 9 < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    raise AssertionError("no SOF marker")


def get_full(port, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def section9(s, work):
    st, headers, page = get_full(s.http, "/")
    check(st == 200 and headers["Content-Type"].startswith("text/html"), f"GET /: {st} {headers}")
    check(b"<html" in page and b"/invocations" in page and b"/thumbs/" in page, "GET /: not the page")
    check("connect-src 'self'" in headers.get("Content-Security-Policy", ""), f"CSP: {headers}")
    for external in (b'src="http', b"src='http", b'href="http', b"url(http", b"@import"):
        check(external not in page, f"the page fetches something external: {external!r}")
    body = get_full(s.http, "/info")[2]
    info, g = json_format.Parse(body, pb.GetInfoResponse()), s.stub.GetInfo(pb.GetInfoRequest())
    check(info == g, f"/info {body!r} vs GetInfo {g}")
    check(json.loads(body)["metric"] == "METRIC_COSINE" and g.has_thumbnails, f"/info: {body!r}")

    st, headers, thumb = get_full(s.http, "/thumbs/rocket.jpg")
    check(st == 200 and headers["Content-Type"] == "image/jpeg", f"thumb: {st} {headers}")
    check(jpeg_size(thumb) == (128, 85), f"rocket.jpg (640x427) thumbnail is {jpeg_size(thumb)}")
    check("max-age" in headers.get("Cache-Control", "") and headers.get("ETag"), f"cache: {headers}")
    st, _, body = get_full(s.http, "/thumbs/rocket.jpg", {"If-None-Match": headers["ETag"]})
    check(st == 304 and body == b"", f"If-None-Match: {st} {body[:50]!r}")
    check(jpeg_size(get_full(s.http, "/thumbs/camera.png")[2]) == (128, 128), "camera thumbnail")
    # Only ids of the snapshot name a thumbnail; a path in the request reads nothing.
    for path in ("/thumbs/nope.png", "/thumbs/..%2F..%2F..%2Fetc%2Fpasswd",
                 "/thumbs/%2Fetc%2Fpasswd", "/thumbs/../../etc/passwd"):
        st, _, body = get_full(s.http, path)
        check(st == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND", f"{path}: {st} {body!r}")
        check(b"root:" not in body, f"{path} leaked a file")
    # Error text quotes a bounded prefix of an id; ids past 4096 bytes are refused as such.
    for size, status in ((4000, 404), (5000, 400)):
        st, _, body = get_full(s.http, "/thumbs/" + "x" * size)
        msg = json.loads(body)["error"]["message"]
        check(st == status and len(msg) < 200 and f"({size} bytes)" in msg,
              f"{size}-byte id: {st} {msg[:300]}")

    # A snapshot indexed with --thumbnails=false: 404 that says why.
    images = os.path.join(work, "few")
    os.makedirs(images)
    for name in ("rocket.jpg", "coffee.png", "camera.png"):
        shutil.copy(os.path.join(IMAGES, name), images)
    bare = os.path.join(work, "bare")
    out = subprocess.run([INDEXER, f"--input={images}", f"--root={bare}", f"--model={DEFAULT}",
                          "--progress=none", "--thumbnails=false"], capture_output=True, text=True)
    check(out.returncode == 0, f"indexer --thumbnails=false: {out.stderr}")
    b = GrpcServer(flags(bare), os.path.join(work, "bare.log"))
    b.wait_ping()
    check(json.loads(get_full(b.http, "/info")[2])["has_thumbnails"] is False, "bare /info")
    check(not b.stub.GetInfo(pb.GetInfoRequest()).has_thumbnails, "bare GetInfo")
    expect_error(get_full(b.http, "/thumbs/rocket.jpg")[::2], 404, "NOT_FOUND",
                 "has no thumbnails", "thumbs of a snapshot without them")
    b.stop()
    print("9. web: GET / (page, CSP), /info == GetInfo, /thumbs/{id} (JPEG, ETag/304, 404s, "
          "no paths), --thumbnails=false")


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_http_")
    try:
        root = os.path.join(work, "root")
        index(root)
        s = section1(work, root)
        section2_3_4(s)
        section5(s, work, root)
        section6(s)
        section9(s, work)
        section7(s)
        section8(work, root)
    finally:
        e2e_lib.Server.kill_all()
        shutil.rmtree(work, ignore_errors=True)
    print("http frontend e2e: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
