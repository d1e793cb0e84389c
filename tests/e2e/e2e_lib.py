"""Small helpers shared by the Python end-to-end tests."""
import atexit
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
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
        query=os.path.join(build, "services", "query", "imagesearch-query"),
        snapshot=os.path.join(build, "tools", "make_snapshot", "imagesearch-snapshot"))


def manifest(root, version):
    """root/v<version>/MANIFEST.json, parsed."""
    with open(os.path.join(root, f"v{version}", "MANIFEST.json")) as f:
        return json.load(f)


def segment_dirs(root, version):
    """The directories of root/v<version>'s segments, oldest first (where
    graph.hnsw, ids.bin, thumbs.bin and attrs.bin are)."""
    m = manifest(root, version)
    if m["format"] == 1:  # A version written before segments is its own one segment.
        return [os.path.join(root, f"v{version}")]
    return [os.path.join(root, "segments", s["name"]) for s in m["segments"]]


class DelayProxy:
    """A TCP proxy on loopback in front of 127.0.0.1:target_port that holds every chunk
    `delay_s` (settable at any time) before passing it on: a slow replica, since this
    kernel has no tc netem. `port` is where it listens."""

    def __init__(self, target_port, delay_s):
        import socket
        import threading
        self.target_port, self.delay_s = target_port, delay_s
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # The replica behind it is down: so is the proxied one.
                client.close()
                continue
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        import socket
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.delay_s > 0:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def read_npy(path, dim):
    """The rows of a float32 .npy file of `dim` columns (as `imagesearch-snapshot synth` writes)."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    header_len = struct.unpack("<H", data[8:10])[0]
    body = data[10 + header_len:]
    n = len(body) // (4 * dim)
    flat = struct.unpack(f"<{n * dim}f", body)
    return [list(flat[i * dim:(i + 1) * dim]) for i in range(n)]


def cosine_distance(a, b):
    """1 - cosine similarity of two vectors (the index's cosine distance)."""
    import math
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def info(server):
    """GET /info of a query replica, parsed (GetInfoResponse in proto3 JSON)."""
    with urllib.request.urlopen(server.http_url + "/info", timeout=10) as r:
        return json.load(r)


def run(*args, ok=True):
    """Runs a command, capturing its output; with ok, it must exit 0."""
    out = subprocess.run(list(args), capture_output=True, text=True)
    if ok:
        check(out.returncode == 0, f"{args[:2]} failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out


# A prefix for commands that must not outlive the test (see Server). A
# preexec_fn calling prctl would do the same, but is unsafe in a process with
# threads (the tests run proxies and load threads); setpriv sets it after fork.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


class Server:
    """The query service (`binary`, an imagesearch-query) as a child process
    of a test, on loopback, on ports it picks itself and reports in its
    --port_file, so tests running side by side never race for a port.

    Runs `binary` with `args` plus --host=127.0.0.1 and --port_file=LOG.ports
    and, with pick_ports, --port=0 --http_port=0; stderr goes to `log`, stdout
    to LOG.out. Returns once the fronts named in `wait` listen: "http" from
    the start, "grpc" once the first snapshot is loaded (the service opens
    its gRPC port only then, and is SERVING by then). grpc_port and http_port
    are the ports the file names (None until then).

    Every Server still running when the test's interpreter exits is killed,
    and the kernel kills it if the interpreter dies without exiting (SIGKILL,
    a crash): it runs under `setpriv --pdeathsig KILL` (util-linux), which
    asks for SIGKILL when the thread that started it ends. So start servers
    from the main thread, or from one that outlives them."""

    running = []

    def __init__(self, binary, args, log, env=None, wait=("grpc", "http"), pick_ports=True,
                 limit_s=120):
        self.log_path, self.out_path, self.port_file = log, log + ".out", log + ".ports"
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        flags = ["--host=127.0.0.1", f"--port_file={self.port_file}"]
        if pick_ports:
            flags += ["--port=0", "--http_port=0"]
        with open(self.log_path, "w") as err, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen([*DIE_WITH_PARENT, binary, *args, *flags], stdout=out,
                                         stderr=err, env=env)
        Server.running.append(self)
        self.grpc_port = self.http_port = None
        self.wait_ports(*wait, limit_s=limit_s)

    @property
    def pid(self):
        return self.proc.pid

    @property
    def grpc_address(self):
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self):
        return f"http://127.0.0.1:{self.http_port}"

    def ports(self):
        """The ports listening now, as the port file names them ({} before it exists)."""
        try:
            with open(self.port_file) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def wait_ports(self, *fronts, limit_s=120):
        """Waits until the port file names each of `fronts`; sets and returns the ports."""
        self.wait_until(f"{' and '.join(fronts)} listening",
                        lambda: set(fronts) <= self.ports().keys(), limit_s, poll_s=0.01)
        ports = self.ports()
        self.grpc_port, self.http_port = ports.get("grpc"), ports.get("http")
        return ports

    def wait_until(self, what, cond, limit_s=60, poll_s=0.05):
        """Polls cond() until it is true; fails if the process exits or
        limit_s passes first, with the end of its log."""
        deadline = time.monotonic() + limit_s
        while True:
            check(self.proc.poll() is None,
                  f"{what}: the service exited ({self.proc.returncode}); log:\n{self.log_tail()}")
            if cond():
                return
            check(time.monotonic() < deadline,
                  f"{what}: not within {limit_s} s; log:\n{self.log_tail()}")
            time.sleep(poll_s)

    def wait_ping(self, limit_s=60):
        """Waits until GET /ping answers 200 (the service is SERVING)."""
        def ok():
            try:
                with urllib.request.urlopen(self.http_url + "/ping", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False
        self.wait_until("/ping 200", ok, limit_s, poll_s=0.1)

    def log_text(self):
        """What the service wrote on stderr so far."""
        with open(self.log_path) as f:
            return f.read()

    def log_tail(self, chars=3000):
        return self.log_text()[-chars:]

    def stdout_text(self):
        """What the service wrote on stdout so far."""
        with open(self.out_path) as f:
            return f.read()

    def stop(self, limit_s=30, expect=0):
        """SIGTERM, then waits for the exit; returns its status, which must be
        `expect` unless that is None. Past limit_s: SIGKILL, and a failure."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit within {limit_s} s of SIGTERM; log:\n{self.log_tail()}")
        check(expect is None or rc == expect,
              f"exit status {rc} on SIGTERM, not {expect}; log:\n{self.log_tail()}")
        return rc

    def kill(self):
        """SIGKILL (if it still runs) and waits."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    @classmethod
    def kill_all(cls):
        for server in cls.running:
            server.kill()


atexit.register(Server.kill_all)


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


def health_check(channel, H):
    """grpc.health.v1.Health/Check on `channel`, with H = health_pb2(...): a
    function of the service's name ("": the server) and a timeout in seconds
    that returns the status (H.HealthCheckResponse.SERVING, ...)."""
    rpc = channel.unary_unary("/grpc.health.v1.Health/Check",
                              request_serializer=H.HealthCheckRequest.SerializeToString,
                              response_deserializer=H.HealthCheckResponse.FromString)
    return lambda service="", timeout=10: rpc(H.HealthCheckRequest(service=service),
                                              timeout=timeout).status
