#!/usr/bin/env python3
"""Stalled gRPC clients against a real imagesearch-query (vector snapshot, no
model). Two clients speak HTTP/2 by hand on raw sockets, take the server's
SETTINGS and acknowledge them (their transport is alive at first), announce a
zero flow-control window, and then never read again: the server can send them
no answer, as with a client whose process stalled or whose host is gone.

  1. "flood": sends 10000 Search calls on its one connection. The server works
     on at most its stream limit (1024) of them, and resets the connection
     that opens more, instead of holding 3000 answers;
  2. "quiet": sends 20 calls, then nothing. The server's keepalive ping goes
     unanswered, and the server closes the connection (20 s idle + 10 s)
     within 40 s, with the calls it held;
  3. meanwhile an ordinary client's calls all succeed, and the replica's
     resident memory grows by less than 64 MB.

Usage: stalled_client_test.py BUILD_DIR SOURCE_DIR
"""
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check, run  # noqa: E402
import grpc  # noqa: E402

BUILD, SRC = sys.argv[1:3]
T = e2e_lib.tree(BUILD, SRC)
pb, pb_grpc = grpc_stubs.load(T.proto)
DIM = 64
STREAM_LIMIT = 1024  # services/query/connection_limits.h
KEEPALIVE_S = 20 + 10  # ping after 20 s without traffic, closed 10 s later


def frame(ftype, flags, stream, payload):
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) +
            struct.pack(">I", stream) + payload)


def literal(name, value):
    """An HPACK header field: literal, not indexed, no Huffman coding."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


class StalledClient:
    """An HTTP/2 connection that acknowledges the server's SETTINGS, sets its
    receive window to 0, sends calls, and never reads after the handshake."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" +
                          frame(4, 0, 0, struct.pack(">HI", 4, 0)))  # INITIAL_WINDOW_SIZE 0
        buf = b""
        self.sock.settimeout(10)
        while True:  # Up to the server's SETTINGS (not an ACK), then acknowledge them.
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                more = self.sock.recv(65536)
                check(more, "the server closed the connection during the handshake")
                buf += more
            length, ftype, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
            buf = buf[9 + length:]
            if ftype == 4 and not flags & 1:
                self.sock.sendall(frame(4, 1, 0, b""))
                break
        self.next_stream = 1
        self.headers = b"".join(literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"),
            (":path", "/imagesearch.v1.ImageSearch/Search"), (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")])

    def send_calls(self, n, message):
        """Sends n Search calls; returns how many went out before the server
        reset the connection."""
        body = b"\x00" + struct.pack(">I", len(message)) + message
        for i in range(n):
            sid = self.next_stream
            self.next_stream += 2
            try:
                self.sock.sendall(frame(1, 0x4, sid, self.headers) + frame(0, 0x1, sid, body))
            except OSError:  # Reset by the server.
                return i
        return n

    def closed_by_server(self):
        """Reads what the kernel holds for it (never read by the client
        itself): True if the server has closed the connection."""
        self.sock.settimeout(0.5)
        try:
            while True:
                if not self.sock.recv(1 << 20):
                    return True
        except socket.timeout:
            return False
        except OSError:  # ECONNRESET
            return True


def searches(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(
        r'^imagesearch_requests_total\{[^}]*method="Search"[^}]*\} (\S+)$', text, re.M))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_stalled_")
    try:
        npy, root = os.path.join(work, "rows.npy"), os.path.join(work, "root")
        run(T.snapshot, "synth", f"--out={npy}", "--count=2000", f"--dim={DIM}", "--seed=3")
        run(T.snapshot, "build", f"--root={root}", f"--vectors={npy}", "--threads=1", "--m=8",
            "--ef_construction=40")
        replica = Server(T.query, [f"--snapshot_root={root}"], os.path.join(work, "query.log"))
        stub = pb_grpc.ImageSearchStub(grpc.insecure_channel(replica.grpc_address))
        query = pb.SearchRequest(vector=pb.Vector(values=[0.1] * DIM), top_k=10)
        for _ in range(20):
            stub.Search(query, timeout=10)  # Warm: threads, arenas, pages.
        rss0, searched0 = rss_mb(replica.pid), searches(replica.http_port)
        message = query.SerializeToString()

        quiet = StalledClient(replica.grpc_port)
        check(quiet.send_calls(20, message) == 20, "quiet: reset while sending 20 calls")
        quiet_since = time.monotonic()
        flood = StalledClient(replica.grpc_port)
        sent = flood.send_calls(10000, message)
        time.sleep(2.0)  # Whatever the server took, it has searched by now.
        worked = searches(replica.http_port) - searched0 - 20
        check(worked <= STREAM_LIMIT + 20,
              f"flood: the server searched {worked:.0f} of its {sent} calls (limit {STREAM_LIMIT})")
        check(flood.closed_by_server(), f"flood: the connection is still open after {sent} calls")
        print(f"1. flood: {sent} of 10000 calls sent before the server reset the connection; "
              f"{worked:.0f} searched (stream limit {STREAM_LIMIT})")

        failed = 0
        for _ in range(200):
            try:
                stub.Search(query, timeout=10)
            except grpc.RpcError:
                failed += 1
        grown = rss_mb(replica.pid) - rss0
        check(failed == 0 and grown < 64, f"ordinary client: {failed} failed; RSS +{grown:.1f} MB")

        deadline = quiet_since + KEEPALIVE_S + 10
        while not quiet.closed_by_server():
            check(time.monotonic() < deadline,
                  f"quiet: still open {time.monotonic() - quiet_since:.0f} s after its last call")
            time.sleep(1.0)
        closed_after = time.monotonic() - quiet_since
        check(closed_after >= 15, f"quiet: closed after only {closed_after:.1f} s")
        print(f"2. quiet: closed by the server's keepalive {closed_after:.1f} s after its calls")
        print(f"3. an ordinary client meanwhile: 200 calls, none failed; RSS +{grown:.1f} MB")
        replica.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("stalled clients: PASS")


if __name__ == "__main__":
    main()
