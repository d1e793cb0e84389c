#!/usr/bin/env python3
"""Health under load, end to end, against the real query binary over a snapshot
of tests/data/images indexed with the default model:

  - 32 clients keep POSTing images to /invocations on keep-alive connections,
    with --max_inflight_requests=8, so the model is always busy and the excess
    is refused;
  - 1000 idle connections and 1000 that sent a request line and some headers
    and never finish are opened on top;
  - every GET /ping probe (a new connection each) must answer 200 within 1 s,
    and gRPC health SERVING within 1 s, while all of that is going on;
  - the server closes the 2000 idle and half-sent connections once its read
    timeout (--http_read_timeout_ms) has passed, not before;
  - the excess /invocations get 429 RESOURCE_EXHAUSTED, never a reset.

The 1 s bounds are correctness bounds (a thread-per-connection server whose
threads are held by 16 stalled connections never answers /ping at all);
tools/bench measures latency.

Usage: http_under_load_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import http.client
import json
import multiprocessing
import os
import resource
import selectors
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
from e2e_lib import check  # noqa: E402
import grpc  # noqa: E402

BUILD, SRC, DEFAULT = sys.argv[1:4]
T = e2e_lib.tree(BUILD, SRC)
H = e2e_lib.health_pb2(T.proto)

# Long enough that opening 2000 connections on a loaded 2-core CI machine (6 s
# seen while other tests ran) plus the probes fits well inside it.
READ_TIMEOUT_S = 20
# Images whose queries the model answers (the corpus also holds refused ones).
LOAD_IMAGES = ["astronaut.png", "camera.png", "coffee.png", "chelsea.png", "logo.png"]
IDLE, HALF_SENT, LOADERS, MAX_INFLIGHT = 1000, 1000, 32, 8
PROBES, PROBE_BOUND_S = 20, 1.0


def ping(port, timeout):
    """GET /ping on a new connection: (status, seconds)."""
    start = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/ping")
        r = c.getresponse()
        r.read()
        return r.status, time.monotonic() - start
    finally:
        c.close()


OUTCOMES = ["200", "429", "reset", "other"]


def load_clients(port, images, stop, counts, bad):
    """In a child process (so that the test's own sockets never wait for the
    clients' GIL): LOADERS keep-alive clients POSTing images until `stop`."""
    def record(what, detail=None):
        with counts.get_lock():
            counts[OUTCOMES.index(what)] += 1
        if detail is not None:
            bad.put(detail)

    def run(i):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        j = i
        while not stop.is_set():
            data = images[j % len(images)]
            j += 1
            try:
                c.request("POST", "/invocations?top_k=3", body=data,
                          headers={"Content-Type": "image/png"})
                r = c.getresponse()
                body = r.read()
            except (ConnectionError, http.client.RemoteDisconnected) as e:
                record("reset", repr(e))
                c.close()
                continue
            if r.status == 200:
                record("200")
            elif r.status == 429 and json.loads(body)["error"]["code"] == "RESOURCE_EXHAUSTED":
                record("429")
                time.sleep(0.2)  # Pacing: refused clients do not take the cores.
            else:
                record("other", (r.status, body[:200]))
        c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(LOADERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class Load:
    """load_clients in a child process, with live counts."""

    def __init__(self, port, images):
        ctx = multiprocessing.get_context("fork")
        self.stop_event, self.shared, self.bad = ctx.Event(), ctx.Array("l", len(OUTCOMES)), ctx.Queue()
        self.proc = ctx.Process(target=load_clients,
                                args=(port, images, self.stop_event, self.shared, self.bad))
        self.proc.start()

    @property
    def counts(self):
        with self.shared.get_lock():
            return dict(zip(OUTCOMES, self.shared[:]))

    def stop(self):
        self.stop_event.set()
        self.proc.join(timeout=120)
        check(self.proc.exitcode == 0, f"the load clients hung or failed ({self.proc.exitcode})")
        bad = []
        while not self.bad.empty():
            bad.append(self.bad.get())
        return self.counts, bad


def open_connections(port):
    """IDLE connections that send nothing and HALF_SENT that send part of a request."""
    socks, opened = [], []
    partial = (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: image/png\r\nContent-Len")
    for i in range(IDLE + HALF_SENT):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i >= IDLE:
            s.sendall(partial)
        s.setblocking(False)
        socks.append(s)
        opened.append(time.monotonic())
    return socks, opened


def still_open(s):
    try:
        s.recv(1, socket.MSG_PEEK)  # Data or EOF: not an open, silent connection.
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def wait_closed(socks, until):
    """Seconds (monotonic) at which the server closed each socket; None if it did not."""
    closed = [None] * len(socks)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    left = len(socks)
    while left and time.monotonic() < until:
        for key, _ in sel.select(timeout=max(0.0, until - time.monotonic())):
            i = key.data
            try:
                data = socks[i].recv(4096)
            except ConnectionResetError:
                data = b""
            check(data == b"", f"connection {i} got bytes instead of a close: {data[:100]!r}")
            closed[i] = time.monotonic()
            sel.unregister(socks[i])
            left -= 1
    sel.close()
    return closed


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + HALF_SENT + LOADERS + 200
    check(hard >= need, f"this test needs {need} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    work = tempfile.mkdtemp(prefix="imagesearch_http_load_")
    root = os.path.join(work, "root")
    e2e_lib.run(T.indexer, f"--input={T.images}", f"--root={root}", f"--model={DEFAULT}",
                "--max_reject_ratio=0.5", "--progress=none", "--ef_construction=64")
    server = e2e_lib.Server(T.query, [f"--snapshot_root={root}",
                                      f"--http_read_timeout_ms={READ_TIMEOUT_S * 1000}",
                                      f"--max_inflight_requests={MAX_INFLIGHT}"],
                            os.path.join(work, "query.log"))
    http_port = server.http_port
    socks, load = [], None
    try:
        server.wait_ping()
        health = e2e_lib.health_check(grpc.insecure_channel(server.grpc_address), H)
        images = [open(os.path.join(T.images, n), "rb").read() for n in LOAD_IMAGES]
        load = Load(http_port, images)
        until = time.monotonic() + 60
        while time.monotonic() < until:
            counts = load.counts
            if counts["200"] >= 4 and counts["429"] >= 1:
                break
            time.sleep(0.05)
        check(counts["200"] >= 4 and counts["429"] >= 1,
              f"load did not saturate the service: {counts}")

        socks, opened = open_connections(http_port)
        took = opened[-1] - opened[0]
        print(f"opened {IDLE} idle + {HALF_SENT} half-sent connections in {took:.1f} s "
              f"under load {load.counts}")
        # Opening the connections is the test's own speed, not the server's: no
        # bound on it here. What matters is that the probes below run while
        # every connection is still open, which is checked after them.

        worst_ping, worst_health = 0.0, 0.0
        for i in range(PROBES):
            status, seconds = ping(http_port, PROBE_BOUND_S)
            check(status == 200, f"probe {i}: /ping answered {status}")
            check(seconds < PROBE_BOUND_S, f"probe {i}: /ping took {seconds:.3f} s")
            start = time.monotonic()
            got = health("", timeout=PROBE_BOUND_S)
            hs = time.monotonic() - start
            check(got == H.HealthCheckResponse.SERVING, f"probe {i}: gRPC health {got}")
            worst_ping, worst_health = max(worst_ping, seconds), max(worst_health, hs)
            time.sleep(0.05)
        # The probes ran while every connection was still open.
        check(time.monotonic() < opened[0] + READ_TIMEOUT_S - 0.5,
              f"opening the connections ({took:.1f} s) and the probes outlasted the "
              f"{READ_TIMEOUT_S} s read timeout, so the test could not check them all open")
        check(all(still_open(s) for s in socks), "a connection was closed before the read timeout")
        print(f"{PROBES} probes with all {len(socks)} connections open: /ping 200 in at most "
              f"{worst_ping * 1e3:.0f} ms, gRPC health SERVING in at most {worst_health * 1e3:.0f} ms")

        closed = wait_closed(socks, opened[-1] + READ_TIMEOUT_S + 10)
        never = sum(c is None for c in closed)
        check(never == 0, f"{never} idle or half-sent connections were not closed within "
                          f"{READ_TIMEOUT_S + 10} s")
        early = min(c - o for c, o in zip(closed, opened))
        late = max(c - o for c, o in zip(closed, opened))
        check(early >= READ_TIMEOUT_S - 0.5, f"a connection was closed after {early:.2f} s, "
                                             f"before the {READ_TIMEOUT_S} s read timeout")
        print(f"the server closed all {len(socks)} after {early:.2f}-{late:.2f} s "
              f"(read timeout {READ_TIMEOUT_S} s)")

        status, seconds = ping(http_port, PROBE_BOUND_S)
        check(status == 200, f"/ping after the closes: {status}")
        counts, bad = load.stop()
        check(counts["reset"] == 0 and counts["other"] == 0,
              f"/invocations outcomes other than 200 and 429: {counts} {bad[:3]}")
        check(counts["200"] > 0 and counts["429"] > 0, f"no 200 or no 429: {counts}")
        print(f"/invocations under load: {counts} (429 RESOURCE_EXHAUSTED, no resets)")
    finally:
        if load is not None and load.proc.is_alive():
            load.stop_event.set()
            load.proc.join(timeout=60)
        for s in socks:
            s.close()
        server.stop(limit_s=60, expect=None)
    check(server.proc.returncode == 0, f"service exited with {server.proc.returncode} on SIGTERM")
    print("PASS")


if __name__ == "__main__":
    main()
