"""Small helpers shared by the Python end-to-end tests."""
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import types
import urllib.error
import urllib.request


def check(cond, what):
    """Fails the test with `what` unless `cond`."""
    if not cond:
        raise AssertionError(what)


def tree(build, src):
    """Where the tests' inputs and the binaries are, given BUILD_DIR and SOURCE_DIR."""
    return types.SimpleNamespace(
        images=os.path.join(src, "tests", "data", "images"),
        proto=os.path.join(src, "proto"),
        indexer=os.path.join(build, "services", "indexer", "imagesearch-indexer"),
        query=os.path.join(build, "services", "query", "imagesearch-query"))


def run(*args, ok=True):
    """Runs a command, capturing its output; with ok, it must exit 0."""
    out = subprocess.run(list(args), capture_output=True, text=True)
    if ok:
        check(out.returncode == 0, f"{args[:2]} failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out


def free_port():
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_ports(readline, grpc=True, http=False):
    """Reads the query service's stdout (readline returns its next line) until
    it has named each port wanted; returns {"grpc": N, "http": M}. The HTTP
    port is named at start, the gRPC port once the first snapshot is loaded
    and warmed (the port listens only then)."""
    want = {name for name, on in (("grpc", grpc), ("http", http)) if on}
    ports = {}
    while not want <= ports.keys():
        line = readline()
        check(line != "", f"the service's stdout ended before it named its ports (got {ports})")
        m = re.match(r"(http )?listening on port (\d+)", line)
        if m:
            ports["http" if m.group(1) else "grpc"] = int(m.group(2))
    return ports


def post_json(port, body, timeout=60):
    """POST /invocations with a JSON body on loopback: (HTTP status, parsed JSON)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def health_pb2(proto_dir):
    """grpc.health.v1's Python messages, generated with protoc from `proto_dir`."""
    gen = tempfile.mkdtemp(prefix="imagesearch_health_")
    try:
        subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--python_out={gen}",
                        "grpc/health/v1/health.proto"], check=True)
        spec = importlib.util.spec_from_file_location(
            "health_pb2", os.path.join(gen, "grpc", "health", "v1", "health_pb2.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # Loaded into memory: the file is no longer needed.
        return mod
    finally:
        shutil.rmtree(gen, ignore_errors=True)
