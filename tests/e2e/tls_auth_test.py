#!/usr/bin/env python3
"""TLS, mTLS and bearer-token authentication of the real query binary, over a
snapshot of synthetic vectors (no model). Certificates come from the openssl
CLI: a CA, a server certificate for localhost/127.0.0.1 (SAN), a client
certificate from that CA and one from another CA.

  1. mTLS + token, gRPC and HTTPS: plaintext gRPC and plaintext HTTP are
     refused; a client without a certificate, or with one from the other CA,
     is refused (gRPC and HTTPS); a good client without the token gets
     UNAUTHENTICATED / 401 with the JSON error body; with it, real hits
     (gRPC Search by id and vector, HTTPS POST /invocations, GET /info);
     /ping and grpc.health.v1 stay open without a token.
  2. plaintext + token (behind a TLS-terminating proxy): the token alone;
     a refused POST leaves its keep-alive connection usable; Expect:
     100-continue is answered 401 before the body.
  3. TLS without client certificates or token: a client that trusts the CA.
  4. Startup errors: missing/garbage files, key/certificate mismatch, half
     the flags, an empty token file: a message and a non-zero exit, no crash.

Usage: tls_auth_test.py BUILD_DIR SOURCE_DIR
"""
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import check  # noqa: E402

BUILD, SRC = sys.argv[1:3]
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
ROUTER = os.path.join(BUILD, "services", "router", "imagesearch-router")
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
pb, pb_grpc = grpc_stubs.load(os.path.join(SRC, "proto"))
import grpc  # noqa: E402

TOKEN = "s3cr3t-token-0123456789abcdef"
DIM = 32
RESULTS = []


H = e2e_lib.health_pb2(os.path.join(SRC, "proto"))


def ok(what):
    RESULTS.append(what)
    print(f"ok: {what}")


def openssl(*args):
    out = subprocess.run(["openssl", *args], capture_output=True, text=True)
    check(out.returncode == 0, f"openssl {args[:2]} failed: {out.stderr}")


def make_certs(d):
    """ca, server (CA-signed, SAN localhost/127.0.0.1), client (CA-signed),
    other_ca and rogue (a client certificate signed by other_ca)."""
    p = lambda name: os.path.join(d, name)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other_ca"):
        openssl("req", "-x509", *ec, "-keyout", p(f"{ca}.key"), "-out", p(f"{ca}.crt"),
                "-days", "2", "-subj", f"/CN=imagesearch test {ca}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves = {"server": ("ca", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
              "client": ("ca", "clientAuth", "subjectAltName=DNS:client.test"),
              "rogue": ("other_ca", "clientAuth", "subjectAltName=DNS:rogue.test")}
    for name, (ca, usage, san) in leaves.items():
        with open(p(f"{name}.ext"), "w") as f:
            f.write(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    f"extendedKeyUsage={usage}\n{san}\n")
        openssl("req", "-new", *ec, "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"),
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p(f"{ca}.crt"),
                "-CAkey", p(f"{ca}.key"), "-CAcreateserial", "-days", "2",
                "-extfile", p(f"{name}.ext"), "-out", p(f"{name}.crt"))
    return p


def make_snapshot(work):
    root = os.path.join(work, "root")
    npy = os.path.join(work, "v.npy")
    subprocess.run([SNAPSHOT, "synth", f"--out={npy}", "--count=500", f"--dim={DIM}", "--seed=9"],
                   check=True, stdout=subprocess.DEVNULL)
    ids = os.path.join(work, "ids.jsonl")
    with open(ids, "w") as f:
        for i in range(500):
            f.write(json.dumps({"id": f"item-{i}", "uri": f"s3://b/{i}.jpg"}) + "\n")
    subprocess.run([SNAPSHOT, "build", f"--root={root}", f"--vectors={npy}", f"--ids={ids}",
                    "--metric=l2", "--ef_construction=64"], check=True, stdout=subprocess.DEVNULL)
    return root


def start_server(root, log, *flags):
    """The query binary on `root` with `flags`, gRPC and HTTP(S) on ports it picks."""
    return e2e_lib.Server(QUERY, [f"--snapshot_root={root}", "--poll_ms=100",
                                  "--shutdown_grace_ms=1000", *flags], log)


def auth(token=TOKEN):
    return [("authorization", f"Bearer {token}")]


def health(channel):
    return e2e_lib.health_check(channel, H)("imagesearch.v1.ImageSearch", timeout=5)


def wait_serving(channel):
    grpc.channel_ready_future(channel).result(timeout=15)
    for _ in range(150):
        if health(channel) == H.HealthCheckResponse.SERVING:
            return
        time.sleep(0.1)
    raise AssertionError("never SERVING")


def grpc_code(fn):
    """The status code `fn` fails with; None if it succeeds."""
    try:
        fn()
        return None
    except grpc.RpcError as e:
        return e.code()


def https_ctx(p, cert=None):
    ctx = ssl.create_default_context(cafile=p("ca.crt"))
    if cert:
        ctx.load_cert_chain(p(f"{cert}.crt"), p(f"{cert}.key"))
    return ctx


def http_call(port, method, path, body=None, headers=None, ctx=None, conn=None):
    """(status, headers, body bytes) of one request; `conn` reuses a connection."""
    c = conn or (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
                 if ctx else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    h = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    out = (r.status, r.headers, r.read())
    if conn is None:
        c.close()
    return out


def refused_http(port, ctx=None):
    """True if no HTTP answer comes back (handshake or connection refused)."""
    try:
        status, _, _ = http_call(port, "GET", "/ping", ctx=ctx)
        print(f"  unexpected HTTP status {status}")
        return False
    except (ssl.SSLError, OSError, http.client.HTTPException) as e:
        print(f"  refused as expected: {type(e).__name__}: {str(e)[:100]}")
        return True


def check_401(status, headers, body, what):
    check(status == 401, f"{what}: status {status} {body[:200]!r}")
    err = json.loads(body)["error"]
    check(err["code"] == "UNAUTHENTICATED" and "Bearer" in err["message"], f"{what}: {err}")
    check(headers.get("WWW-Authenticate", "").startswith("Bearer"), f"{what}: {dict(headers)}")
    check(headers.get("Content-Type") == "application/json", f"{what}: {dict(headers)}")


def check_grpc_ok(stub, metadata):
    r = stub.Search(pb.SearchRequest(id="item-7", top_k=3, include_self=True),
                    metadata=metadata, timeout=10)
    check(len(r.hits) == 3 and r.hits[0].id == "item-7" and r.hits[0].distance == 0.0, r)
    check(r.hits[0].uri == "s3://b/7.jpg", r)
    r = stub.Search(pb.SearchRequest(vector=pb.Vector(values=[0.1] * DIM), top_k=5),
                    metadata=metadata, timeout=10)
    check(len(r.hits) == 5, r)
    info = stub.GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=10)
    check(info.vector_count == 500 and info.dim == DIM, info)


def check_http_ok(port, headers, ctx=None):
    status, _, body = http_call(port, "POST", "/invocations",
                                {"id": "item-7", "top_k": 3, "include_self": True},
                                headers=headers, ctx=ctx)
    check(status == 200, f"POST /invocations: {status} {body[:200]!r}")
    hits = json.loads(body)["hits"]
    check(len(hits) == 3 and hits[0]["id"] == "item-7", hits)
    status, _, body = http_call(port, "GET", "/info", headers=headers, ctx=ctx)
    check(status == 200 and json.loads(body)["vector_count"] == "500", f"/info: {status} {body!r}")


def secure_channel(port, p, cert=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(p("ca.crt"), "rb").read(),
        private_key=open(p(f"{cert}.key"), "rb").read() if cert else None,
        certificate_chain=open(p(f"{cert}.crt"), "rb").read() if cert else None)
    return grpc.secure_channel(f"localhost:{port}", creds)


def mtls_and_token(root, work, p):
    s = start_server(root, os.path.join(work, "mtls.log"), f"--tls_cert={p('server.crt')}",
               f"--tls_key={p('server.key')}", f"--tls_client_ca={p('ca.crt')}",
               f"--auth_token_file={p('token')}")
    try:
        good = secure_channel(s.grpc_port, p, "client")
        wait_serving(good)  # Health: open without a token.
        ok("mTLS: grpc.health.v1 answers SERVING without a token")
        stub = pb_grpc.ImageSearchStub(good)

        # Transport refusals.
        plain = pb_grpc.ImageSearchStub(grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}"))
        code = grpc_code(lambda: plain.GetInfo(pb.GetInfoRequest(), metadata=auth(), timeout=5))
        check(code == grpc.StatusCode.UNAVAILABLE, f"plaintext gRPC: {code}")
        ok("mTLS: plaintext gRPC client refused (UNAVAILABLE)")
        check(refused_http(s.http_port), "plaintext HTTP on the HTTPS port got an answer")
        ok("mTLS: plaintext HTTP client refused on the HTTPS port")
        for cert, what in ((None, "no client certificate"),
                           ("rogue", "a certificate from another CA")):
            st = pb_grpc.ImageSearchStub(secure_channel(s.grpc_port, p, cert))
            code = grpc_code(lambda: st.GetInfo(pb.GetInfoRequest(), metadata=auth(), timeout=5))
            check(code is not None and code != grpc.StatusCode.UNAUTHENTICATED,
                  f"gRPC with {what}: {code}")
            check(refused_http(s.http_port, https_ctx(p, cert)), f"HTTPS with {what} got an answer")
            ok(f"mTLS: {what} refused on gRPC ({code.name}) and HTTPS")

        # The token, with a good certificate.
        ctx = https_ctx(p, "client")
        for md, what in (([], "no token"), (auth("wrong"), "a wrong token"),
                         ([("authorization", TOKEN)], "no Bearer scheme")):
            for call in (lambda: stub.Search(pb.SearchRequest(id="item-7"), metadata=md, timeout=5),
                         lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=md, timeout=5)):
                try:
                    call()
                    raise AssertionError(f"gRPC with {what} succeeded")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"{what}: {e.code()}")
                    check("Bearer" in e.details(), e.details())
            headers = {"Authorization": md[0][1]} if md else {}
            check_401(*http_call(s.http_port, "POST", "/invocations", {"id": "item-7"},
                                 headers=headers, ctx=ctx), f"POST /invocations, {what}")
            check_401(*http_call(s.http_port, "GET", "/info", headers=headers, ctx=ctx),
                      f"GET /info, {what}")
            ok(f"mTLS: {what} -> UNAUTHENTICATED (gRPC) and 401 + JSON error (HTTPS)")
        check_grpc_ok(stub, auth())
        check_grpc_ok(stub, [("authorization", f"bearer   {TOKEN}")])
        ok("mTLS + token: gRPC Search by id and vector, GetInfo")
        check_http_ok(s.http_port, {"Authorization": f"Bearer {TOKEN}"}, ctx)
        ok("mTLS + token: HTTPS POST /invocations and GET /info")
        status, _, _ = http_call(s.http_port, "GET", "/ping", ctx=ctx)
        check(status == 200, f"/ping without a token: {status}")
        ok("mTLS: /ping open without a token")
        for path in ("/metrics", "/", "/thumbs/item-1", "/nowhere"):
            check_401(*http_call(s.http_port, "GET", path, ctx=ctx), f"GET {path} without a token")
        status, _, body = http_call(s.http_port, "GET", "/metrics", ctx=ctx,
                                    headers={"Authorization": f"Bearer {TOKEN}"})
        check(status == 200, status)
        # Every refusal is counted once, under its front and its true method.
        expected = {("grpc", "Search"): 3, ("grpc", "GetInfo"): 3, ("http", "Search"): 3,
                    ("http", "GetInfo"): 3, ("http", "Metrics"): 1, ("http", "Page"): 1,
                    ("http", "Thumbnail"): 1, ("http", "unknown"): 1}
        counted = {}
        for m in re.finditer(rb'imagesearch_requests_total\{code="UNAUTHENTICATED",'
                             rb'front="(\w+)",method="(\w+)"\} (\d+)', body):
            counted[(m[1].decode(), m[2].decode())] = int(m[3])
        check(counted == expected, f"UNAUTHENTICATED counts {counted}, expected {expected}")
        ok("mTLS: /metrics, / and unknown routes need the token; each refusal counted once "
           "under its method")
    finally:
        s.stop()


def token_on_plaintext(root, work, p):
    s = start_server(root, os.path.join(work, "token.log"), f"--auth_token_file={p('token')}")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}")
        wait_serving(channel)
        stub = pb_grpc.ImageSearchStub(channel)
        code = grpc_code(lambda: stub.Search(pb.SearchRequest(id="item-7"), timeout=5))
        check(code == grpc.StatusCode.UNAUTHENTICATED, code)
        check_grpc_ok(stub, auth())
        status, _, _ = http_call(s.http_port, "GET", "/ping")
        check(status == 200, f"/ping: {status}")
        check_401(*http_call(s.http_port, "POST", "/invocations", {"id": "item-7"}), "no token")
        check_http_ok(s.http_port, {"Authorization": f"Bearer {TOKEN}"})
        ok("plaintext + token: gRPC and HTTP need the token; /ping and health open")

        # A refused POST's body is read, so its keep-alive connection stays in step.
        conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=10)
        body = {"vector": {"values": [0.5] * DIM}, "top_k": 2}
        check_401(*http_call(s.http_port, "POST", "/invocations", body,
                             headers={"Authorization": "Bearer nope"}, conn=conn), "wrong token")
        check_401(*http_call(s.http_port, "POST", "/elsewhere", body, conn=conn), "unknown POST")
        status, _, out = http_call(s.http_port, "GET", "/info", conn=conn,
                                   headers={"Authorization": f"Bearer {TOKEN}"})
        check(status == 200 and json.loads(out)["dim"] == DIM, f"after a 401: {status} {out!r}")
        conn.close()
        ok("plaintext + token: a refused POST leaves the keep-alive connection usable")

        # Expect: 100-continue: 401 before the body is sent.
        with socket.create_connection(("127.0.0.1", s.http_port), timeout=10) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
            answer = sock.recv(4096).decode()
        check(answer.startswith("HTTP/1.1 401"), answer[:200])
        check('"UNAUTHENTICATED"' in answer, answer)
        ok("plaintext + token: Expect: 100-continue is answered 401 before the body")
    finally:
        s.stop()


def tls_only(root, work, p):
    s = start_server(root, os.path.join(work, "tls.log"), f"--tls_cert={p('server.crt')}",
               f"--tls_key={p('server.key')}")
    try:
        channel = secure_channel(s.grpc_port, p)
        wait_serving(channel)
        check_grpc_ok(pb_grpc.ImageSearchStub(channel), [])
        check_http_ok(s.http_port, {}, https_ctx(p))
        untrusting = ssl.create_default_context()  # System CAs only: the test CA is unknown.
        check(refused_http(s.http_port, untrusting),
              "a client that does not trust the CA connected")
        ok("TLS only: gRPC and HTTPS work without a client certificate or token")
    finally:
        s.stop()


def router_over_tls(work, p):
    """imagesearch-router between TLS clients and mTLS shard replicas: it serves
    TLS itself (--tls_cert) and presents a client certificate to the shards
    (--shard_tls_ca/--shard_tls_cert/--shard_tls_key)."""
    npy, ids = os.path.join(work, "v.npy"), os.path.join(work, "ids.jsonl")  # make_snapshot's
    coll = os.path.join(work, "coll")
    subprocess.run([SNAPSHOT, "build", f"--root={coll}", f"--vectors={npy}", f"--ids={ids}",
                    "--metric=l2", "--ef_construction=64", "--shard_count=2", "--collection=tls"],
                   check=True, stdout=subprocess.DEVNULL)
    shards = [start_server(os.path.join(coll, f"shard-{i}-of-2"), os.path.join(work, f"rs{i}.log"),
                           f"--tls_cert={p('server.crt')}", f"--tls_key={p('server.key')}",
                           f"--tls_client_ca={p('ca.crt')}") for i in range(2)]
    router = None
    try:
        router = e2e_lib.Server(
            ROUTER, ["--shards=" + ";".join(f"127.0.0.1:{s.grpc_port}" for s in shards),
                     "--port=0", "--http_port=0", f"--shard_tls_ca={p('ca.crt')}",
                     f"--shard_tls_cert={p('client.crt')}", f"--shard_tls_key={p('client.key')}",
                     f"--tls_cert={p('server.crt')}", f"--tls_key={p('server.key')}"],
            os.path.join(work, "router.log"), pick_ports=False)
        channel = secure_channel(router.grpc_port, p)
        check_grpc_ok(pb_grpc.ImageSearchStub(channel), [])
        check_http_ok(router.http_port, {}, https_ctx(p))
        plain = pb_grpc.ImageSearchStub(grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}"))
        code = grpc_code(lambda: plain.GetInfo(pb.GetInfoRequest(), timeout=5))
        check(code == grpc.StatusCode.UNAVAILABLE, f"plaintext client to the TLS router: {code}")
        ok("router: TLS to its clients (gRPC and HTTPS), mTLS to the shard replicas")
    finally:
        if router is not None:
            router.stop()
        for s in shards:
            s.stop()


def ingest_over_mtls(work, p):
    """The ingest service (imagesearch-indexer serve) with mTLS and a token,
    as the query service: plaintext and a client without a certificate are
    refused, a call without the token is UNAUTHENTICATED, health stays open,
    and with both a write goes in."""
    s = e2e_lib.Server(INDEXER, ["serve", f"--root={os.path.join(work, 'iroot')}", "--port=0",
                                 f"--dim={DIM}", "--publish_interval_ms=100",
                                 f"--tls_cert={p('server.crt')}", f"--tls_key={p('server.key')}",
                                 f"--tls_client_ca={p('ca.crt')}",
                                 f"--auth_token_file={p('token')}"],
                       os.path.join(work, "ingest.log"), wait=("grpc",), pick_ports=False)
    try:
        good = secure_channel(s.grpc_port, p, "client")
        grpc.channel_ready_future(good).result(timeout=15)
        stub = pb_grpc.IngestStub(good)
        status = lambda md=None: stub.Status(pb.IngestStatusRequest(), timeout=10,  # noqa: E731
                                             metadata=md)
        check(e2e_lib.health_check(good, H)("imagesearch.v1.Ingest", timeout=5)
              == H.HealthCheckResponse.SERVING, "ingest health over mTLS without a token")
        check(grpc_code(status) == grpc.StatusCode.UNAUTHENTICATED, "ingest: no token")
        check(grpc_code(lambda: status(auth("wrong-token"))) == grpc.StatusCode.UNAUTHENTICATED,
              "ingest: a wrong token")
        req = pb.UpsertRequest(wait=True)
        req.items.add(id="x1", vector=pb.Vector(values=[0.5] * DIM))
        check(grpc_code(lambda: stub.Upsert(req, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED,
              "ingest: an upsert without the token")
        resp = stub.Upsert(req, timeout=30, metadata=auth())
        check(resp.accepted == 1 and resp.version >= 1, resp)
        check(status(auth()).live_rows == 1, "ingest: the row is in")
        plain = grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}")
        check(grpc_code(lambda: pb_grpc.IngestStub(plain).Status(
            pb.IngestStatusRequest(), timeout=5, metadata=auth())) == grpc.StatusCode.UNAVAILABLE,
            "ingest: plaintext refused")
        nocert = secure_channel(s.grpc_port, p)
        check(grpc_code(lambda: pb_grpc.IngestStub(nocert).Status(
            pb.IngestStatusRequest(), timeout=5, metadata=auth())) == grpc.StatusCode.UNAVAILABLE,
            "ingest: a client without a certificate refused")
        ok("ingest service: mTLS + token (plaintext, no certificate, no or a wrong token refused; "
           "health open; an upsert with both goes in)")
    finally:
        s.stop()


def startup_errors(root, work, p):
    garbage = os.path.join(work, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    empty = os.path.join(work, "empty_token")
    open(empty, "w").close()
    missing = os.path.join(work, "missing.pem")
    cases = [
        ([f"--tls_cert={missing}", f"--tls_key={p('server.key')}"], "cannot read"),
        ([f"--tls_cert={garbage}", f"--tls_key={p('server.key')}"], "no PEM certificate"),
        ([f"--tls_cert={p('server.crt')}", f"--tls_key={garbage}"], "no PEM private key"),
        ([f"--tls_cert={p('server.crt')}", f"--tls_key={p('client.key')}"], "does not match"),
        ([f"--tls_cert={p('server.crt')}"], "go together"),
        ([f"--tls_client_ca={p('ca.crt')}"], "go together"),
        ([f"--tls_cert={p('server.crt')}", f"--tls_key={p('server.key')}",
          f"--tls_client_ca={garbage}"], "no PEM CA certificate"),
        ([f"--tls_cert={p('server.crt')}", f"--tls_key={p('server.key')}",
          f"--tls_client_ca={work}"], "tls_client_ca"),
        ([f"--auth_token_file={missing}"], "cannot read"),
        ([f"--auth_token_file={empty}"], "empty"),
    ]
    for flags, want in cases:
        out = subprocess.run([QUERY, f"--snapshot_root={root}", "--host=127.0.0.1", "--port=0",
                              "--http_port=0", *flags],
                             capture_output=True, text=True, timeout=30)
        check(out.returncode > 0, f"{flags}: exit {out.returncode}, stderr {out.stderr!r}")
        check(want in out.stderr, f"{flags}: {want!r} not in {out.stderr!r}")
        check("listening" not in out.stdout, f"{flags}: started anyway: {out.stdout!r}")
        # The ingest service checks the same flags the same way, before it opens its root.
        iroot = os.path.join(work, "never")
        out = subprocess.run([INDEXER, "serve", f"--root={iroot}", f"--dim={DIM}",
                              "--host=127.0.0.1", "--port=0", *flags],
                             capture_output=True, text=True, timeout=30)
        check(out.returncode > 0 and want in out.stderr and not os.path.exists(iroot),
              f"ingest {flags}: exit {out.returncode}, stderr {out.stderr!r}")
    ok(f"startup errors: {len(cases)} bad configurations exit non-zero with a clear message "
       "(query service and ingest service)")
    # The router's flags toward its shards fail the same way, before it looks for them.
    router_cases = [
        ([f"--shard_tls_cert={p('client.crt')}", f"--shard_tls_key={p('client.key')}"],
         "need --shard_tls_ca"),
        ([f"--shard_tls_ca={p('ca.crt')}", f"--shard_tls_cert={p('client.crt')}"], "go together"),
        ([f"--shard_tls_ca={garbage}"], "--shard_tls_ca=" + garbage + ": holds no PEM CA certificate"),
        ([f"--shard_tls_ca={p('ca.crt')}", f"--shard_tls_cert={p('client.crt')}",
          f"--shard_tls_key={garbage}"], "no unencrypted PEM private key"),
        ([f"--shard_tls_ca={missing}"], "cannot read"),
        ([f"--shard_token_file={empty}"], "--shard_token_file=" + empty + ": the token is empty"),
    ]
    for flags, want in router_cases:
        out = subprocess.run([ROUTER, "--shards=127.0.0.1:1;127.0.0.1:2", "--host=127.0.0.1",
                              "--port=0", "--startup_timeout_s=5", *flags],
                             capture_output=True, text=True, timeout=30)
        check(out.returncode > 0, f"router {flags}: exit {out.returncode}, stderr {out.stderr!r}")
        check(want in out.stderr, f"router {flags}: {want!r} not in {out.stderr!r}")
        check("waiting for the shards" not in out.stderr,
              f"router {flags}: looked for its shards first: {out.stderr!r}")
    ok(f"router startup errors: {len(router_cases)} bad shard TLS or token flags exit non-zero "
       "with a clear message")


def main():
    check(shutil.which("openssl"), "the openssl CLI is needed (apt-get install openssl)")
    work = tempfile.mkdtemp(prefix="imagesearch_tls_")
    try:
        p = make_certs(work)
        with open(p("token"), "w") as f:
            f.write(TOKEN + "\n")
        root = make_snapshot(work)
        mtls_and_token(root, work, p)
        token_on_plaintext(root, work, p)
        tls_only(root, work, p)
        router_over_tls(work, p)
        ingest_over_mtls(work, p)
        startup_errors(root, work, p)
    except BaseException:
        print(f"logs kept in {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)
    print(f"tls/auth e2e: {len(RESULTS)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
