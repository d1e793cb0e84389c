#!/usr/bin/env python3
"""A slow volume: the real query service and ingest service with their
snapshot root on storage that takes its time (tools/slowfs: a FUSE
passthrough that waits before each read, write and fsync, as a busy
network volume does), with default flags.

  1. start-up: a replica on a volume with 20 ms reads loads v1 (its load
     time shows the volume's latency) and answers;
  2. a stalled volume during a swap: v2 is published by another host (into
     the backing directory, so the mount has none of its pages), and every
     read of the volume now takes 1.5 s. While the replica reads v2 (over
     20 s), it keeps answering queries, /ping, /info and gRPC health from
     v1 (the last three well under one stalled read; a query waits only for
     a page of v1 the kernel dropped, never for the load), and /metrics
     names the load in progress (imagesearch_snapshot_loading_version);
     once the volume recovers, v2 is served and a row only v2 holds found;
  3. SIGTERM while a load is stuck on the volume (3 s a read): the replica
     exits within seconds, status 0, saying it did not wait for the load,
     instead of after the load; a restart serves CURRENT;
  4. --verify=sizes (replicas sharing a volume): a swap that adds a small
     segment reads every byte of it in the load, before the swap
     (--verify_swaps_up_to_mb; slowfs's read log shows it), not in the
     queries that follow;
  5. the ingest service on a volume whose fsyncs take 250 ms: an Upsert
     (wait) is acknowledged once published; an Upsert without wait and a
     Status answer promptly while a publish is in its fsyncs; SIGKILL in the
     middle of a slow publish loses no acknowledged row, the root verifies,
     and a replica on the volume finds every acknowledged row; SIGTERM
     while a background merge is stalled on the volume ends the service
     within seconds, and the next start removes the merge's temp files.

Needs /dev/fuse and imagesearch-slowfs; without them it exits 77 (skipped).
IMAGESEARCH_KEEP_WORK=1 keeps the work directory (the services' logs and
slowfs.log, every read slowfs served).

Usage: slow_volume_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check, post_json, run  # noqa: E402
import grpc  # noqa: E402

BUILD, SRC = sys.argv[1:3]
T = e2e_lib.tree(BUILD, SRC)
SLOWFS = os.path.join(BUILD, "tools", "slowfs", "imagesearch-slowfs")
SKIP = 77


class SlowVolume:
    """`backing` mounted at `mount` through imagesearch-slowfs; set() changes
    its delays while everything runs."""

    def __init__(self, work):
        self.backing = os.path.join(work, "backing")
        self.mount = os.path.join(work, "mnt")
        self.control = os.path.join(work, "slowfs.control")
        os.makedirs(self.backing)
        os.makedirs(self.mount)
        self.set(0, 0, 0)
        self.log = open(os.path.join(work, "slowfs.log"), "w")
        self.proc = subprocess.Popen(
            [*e2e_lib.DIE_WITH_PARENT, SLOWFS, f"--backing={self.backing}",
             f"--mountpoint={self.mount}", f"--control={self.control}", "--log_reads"],
            stdout=self.log, stderr=subprocess.STDOUT)
        until = time.monotonic() + 10
        while not os.path.ismount(self.mount):
            if self.proc.poll() is not None or time.monotonic() > until:
                self.log.flush()
                print(f"SKIP: cannot mount a FUSE volume here: "
                      f"{open(self.log.name).read().strip()}")
                self.close()
                sys.exit(SKIP)
            time.sleep(0.05)

    def set(self, read_ms, write_ms, fsync_ms):
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{read_ms} {write_ms} {fsync_ms}\n")
        os.rename(tmp, self.control)
        time.sleep(0.2)  # slowfs reads it every 50 ms.

    def warm(self, top):
        """Reads every file under mount/top through the mount, so their pages
        are in its cache (kept while a process maps them); then clears the
        read log, so reads() shows what comes after."""
        for d, _, names in os.walk(os.path.join(self.mount, top)):
            for n in names:
                with open(os.path.join(d, n), "rb") as f:
                    while f.read(1 << 20):
                        pass
        self.log.flush()
        self.log.truncate(0)
        self.log.seek(0)

    def reads(self):
        """The reads slowfs served since the last warm() (its --log_reads)."""
        self.log.flush()
        with open(self.log.name) as f:
            return [line.strip() for line in f if line.startswith("slowfs: read ")]

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fuse_main unmounts on SIGTERM.
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if os.path.ismount(self.mount):
            subprocess.run(["umount", "-l", self.mount], check=False)


def http_get(server, path, timeout=30):
    """(status, body text, seconds)."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=timeout) as r:
            return r.status, r.read().decode(), time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), time.monotonic() - start


def metric(server, name):
    status, text, _ = http_get(server, "/metrics")
    check(status == 200, (status, text[:200]))
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def served_version(server):
    status, text, _ = http_get(server, "/info")
    return int(json.loads(text)["snapshot_version"]) if status == 200 else None


def finds_itself(server, row_id, version):
    status, body = post_json(server.http_port, {"id": row_id, "top_k": 1, "include_self": True},
                             timeout=30)
    return (status == 200 and int(body["snapshot_version"]) == version and
            body["hits"][0]["id"] == row_id)


def synth(work, name, count, dim, seed, id_prefix):
    npy = os.path.join(work, f"{name}.npy")
    run(T.snapshot, "synth", f"--count={count}", f"--dim={dim}", f"--seed={seed}", f"--out={npy}")
    ids = os.path.join(work, f"{name}.txt")
    with open(ids, "w") as f:
        f.writelines(f"{id_prefix}{i}\n" for i in range(count))
    return npy, ids


def replica(root, log):
    return Server(T.query, [f"--snapshot_root={root}"], log)


def startup_step(work, vol):
    npy, ids = synth(work, "v1", 20000, 64, 1, "r")
    # Published by "another host": straight into the backing directory.
    run(T.snapshot, "build", f"--root={vol.backing}/root", f"--vectors={npy}", f"--ids={ids}")
    vol.set(20, 0, 0)
    s = replica(f"{vol.mount}/root", os.path.join(work, "replica.log"))
    load_s = metric(s, "imagesearch_snapshot_load_seconds_sum")
    check(load_s is not None and load_s >= 0.2,
          f"v1 loaded in {load_s} s: the volume's 20 ms reads were not in its path")
    check(finds_itself(s, "r5", 1), "r5 on v1")
    print(f"start-up on 20 ms reads: v1 (20000 x 64) loaded in {load_s:.2f} s")
    return s


def publish_while_stalled(work, vol, s, version, id_prefix, read_ms):
    """Stalls the volume's reads at read_ms, publishes v<version> (2,000 new
    rows, ids id_prefix0...) from "another host" on top of the version before,
    and returns once replica `s` is reading it."""
    npy, ids = synth(work, f"v{version}", 2000, 64, version, id_prefix)
    vol.set(read_ms, 0, 0)
    run(T.snapshot, "build", f"--root={vol.backing}/root", f"--base=v{version - 1}",
        f"--vectors={npy}", f"--ids={ids}")
    s.wait_until(f"the replica reading v{version}",
                 lambda: metric(s, "imagesearch_snapshot_loading_version") == version, 30)


def stalled_swap_step(work, vol, s, health):
    vol.set(0, 0, 0)
    vol.warm("root")  # v1 in memory, as a replica that has served a while has it.
    publish_while_stalled(work, vol, s, 2, "n", read_ms=1500)
    started = metric(s, "imagesearch_snapshot_load_started_timestamp_seconds")
    check(started is not None and abs(time.time() - started) < 60, started)
    # A call that waited for the load would wait until it ends: many 1.5 s
    # reads, past the end of this window. A query may still read a page of
    # v1 from the volume itself, if the kernel dropped it from memory (this
    # VM's DAMON pages out memory it finds idle), and wait for that read;
    # /ping, /info and health read nothing.
    worst = {}
    rounds = slow_queries = 0
    until = time.monotonic() + 6
    while time.monotonic() < until:
        t0 = time.monotonic()
        check(finds_itself(s, f"r{rounds % 20000}", 1), f"r{rounds % 20000} from v1 while v2 loads")
        took = time.monotonic() - t0
        worst["query"] = max(worst.get("query", 0), took)
        slow_queries += took >= 1.0
        for path in ("/ping", "/info"):
            status, text, took = http_get(s, path)
            check(status == 200, (path, status, text[:200]))
            worst[path] = max(worst.get(path, 0), took)
        t0 = time.monotonic()
        check(health() == 1, "gRPC health SERVING while v2 loads")  # 1: SERVING
        worst["health"] = max(worst.get("health", 0), time.monotonic() - t0)
        rounds += 1
    check(metric(s, "imagesearch_snapshot_loading_version") == 2 and served_version(s) == 1,
          "v2 still loading, v1 served: the window above was inside the stalled load")
    check(rounds >= 2, f"only {rounds} rounds of calls in 6 s while v2 loads")
    check(max(worst["/ping"], worst["/info"], worst["health"]) < 1.0,
          f"slowest calls during the stalled load: {worst}")
    print(f"stalled volume (1.5 s a read) while v2 loads: {rounds} rounds, slowest "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in worst.items())
          + f"; {slow_queries} queries over 1 s (a page of v1 read again)")
    vol.set(0, 0, 0)
    s.wait_until("v2 served once the volume recovers", lambda: served_version(s) == 2, 60)
    check(finds_itself(s, "n7", 2), "n7, a row only v2 holds")
    check(metric(s, "imagesearch_snapshot_loading_version") == 0, "no load in progress")


def stop_during_stalled_load_step(work, vol, s):
    publish_while_stalled(work, vol, s, 3, "m", read_ms=3000)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    try:
        code = s.proc.wait(30)
    except subprocess.TimeoutExpired:
        check(False, "SIGTERM: the replica was still waiting for its load after 30 s")
    took = time.monotonic() - t0
    check(code == 0, f"exit status {code}: {s.log_tail()}")
    # The load needs well over ten 3 s reads. The process waits a second for
    # it, and its exit waits for the one read slowfs is serving (the kernel
    # does not abandon a FUSE request the daemon has taken): at most ~5 s.
    check(took < 15, f"SIGTERM to exit took {took:.1f} s with a load stuck on the volume")
    check("exits without waiting for it" in s.log_text(), s.log_tail())
    print(f"SIGTERM while v3 loads at 3 s a read: exited in {took:.1f} s")
    vol.set(0, 0, 0)
    s = replica(f"{vol.mount}/root", os.path.join(work, "replica-restarted.log"))
    check(served_version(s) == 3 and finds_itself(s, "m3", 3), "a restart serves CURRENT (v3)")
    s.stop()


def bytes_read(reads, path):
    """How many distinct bytes of `path` (under the mount) the reads cover."""
    spans = sorted((int(m.group(1)), int(m.group(1)) + int(m.group(2)))
                   for m in (re.match(rf"slowfs: read {re.escape(path)} at (\d+), (\d+) bytes", r)
                             for r in reads) if m)
    covered = end = 0
    for a, b in spans:
        a = max(a, end)
        if b > a:
            covered += b - a
            end = b
    return covered


def sizes_swap_step(work, vol):
    """--verify=sizes, the setting for replicas sharing a volume, maps a
    version without reading it; a swap that adds little is hashed anyway, so
    every byte of its new segment is read by the load, before the swap, and
    not by the queries that follow it."""
    s = Server(T.query, [f"--snapshot_root={vol.mount}/root", "--verify=sizes"],
               os.path.join(work, "replica-sizes.log"))
    check(served_version(s) == 3, "the --verify=sizes replica serves v3")
    vol.warm("root")
    npy, ids = synth(work, "v4", 2000, 64, 4, "k")
    vol.set(400, 0, 0)
    out = run(T.snapshot, "build", f"--root={vol.backing}/root", "--base=v3", f"--vectors={npy}",
              f"--ids={ids}")
    segment = re.search(r"segment (s4-\w+)", out.stdout + out.stderr).group(1)
    s.wait_until("v4 served", lambda: served_version(s) == 4, 120)
    before_swap = vol.reads()
    seg_dir = os.path.join(vol.backing, "root", "segments", segment)
    for name in sorted(os.listdir(seg_dir)):
        size = os.path.getsize(os.path.join(seg_dir, name))
        got = bytes_read(before_swap, f"/root/segments/{segment}/{name}")
        check(got >= size, f"{segment}/{name}: the load read {got} of its {size} bytes")
    # Queries on the new rows now find their pages in memory (unless the
    # kernel drops them meanwhile; reported, not asserted).
    worst = 0.0
    for i in range(0, 2000, 50):
        t0 = time.monotonic()
        check(finds_itself(s, f"k{i}", 4), f"k{i}, a row only v4 holds")
        worst = max(worst, time.monotonic() - t0)
    later = [r for r in vol.reads()[len(before_swap):] if f"/{segment}/" in r]
    print(f"--verify=sizes, volume at 400 ms a read: the load read all of v4's new segment "
          f"({segment}) before the swap; then 40 queries on its rows, slowest {worst * 1000:.1f} ms, "
          f"{len(later)} reads of it by queries")
    vol.set(0, 0, 0)
    s.stop()


def vec(i, dim=16):
    rnd = random.Random(i)
    return [rnd.uniform(-1, 1) for _ in range(dim)]


def ingest_step(work, vol):
    pb, pb_grpc = grpc_stubs.load(T.proto)
    root = f"{vol.mount}/ingest"
    vol.set(5, 2, 250)

    def start():
        return Server(T.indexer, ["serve", f"--root={root}", "--port=0", "--dim=16"],
                      os.path.join(work, "ingest.log"), wait=("grpc",), pick_ports=False)

    def upsert(stub, first, n, wait):
        req = pb.UpsertRequest(wait=wait)
        for i in range(first, first + n):
            req.items.add(id=f"u{i}", vector=pb.Vector(values=vec(i)))
        return stub.Upsert(req, timeout=120)

    svc = start()
    stub = pb_grpc.IngestStub(grpc.insecure_channel(svc.grpc_address))
    t0 = time.monotonic()
    first = upsert(stub, 0, 20, True)
    took = time.monotonic() - t0
    check(first.version >= 1 and first.accepted == 20, first)
    check(took >= 0.25, f"the first publish took {took:.2f} s: the 250 ms fsyncs were not paid")
    acked = set(range(20))
    # While the next publish sits in its fsyncs, writes and Status answer. It
    # starts within the publish interval (1 s) and takes seconds at 250 ms an
    # fsync, so 3 s of calls overlap it.
    pending = upsert(stub, 20, 20, False)
    check(pending.accepted == 20, pending)
    worst = 0.0
    until = time.monotonic() + 3
    while time.monotonic() < until:
        t1 = time.monotonic()
        stub.Status(pb.IngestStatusRequest(), timeout=30)
        upsert(stub, 1000, 1, False)
        worst = max(worst, time.monotonic() - t1)
        time.sleep(0.05)
    check(worst < 1.0, f"Status + Upsert(wait=false) took {worst:.2f} s during a slow publish")
    print(f"ingest on 250 ms fsyncs: first Upsert (wait) {took:.2f} s; Status + Upsert without "
          f"wait during a publish at most {worst * 1000:.0f} ms")
    # SIGKILL in the middle of a slow publish: acknowledged rows survive.
    done = upsert(stub, 40, 20, True)
    check(done.version > first.version, done)
    acked |= set(range(20, 60))  # A version holds every write accepted before it.
    upsert(stub, 60, 20, False)
    time.sleep(0.4)  # Inside the publish of 60-79, in its fsyncs.
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(20)
    vol.set(0, 0, 0)
    out = run(T.snapshot, "verify", f"--root={root}")
    check("ok" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr)
    svc = start()
    s = replica(root, os.path.join(work, "ingest-replica.log"))
    for i in sorted(acked):
        status, body = post_json(s.http_port, {"vector": {"values": vec(i)}, "top_k": 1},
                                 timeout=30)
        check(status == 200 and body["hits"][0]["id"] == f"u{i}", (i, status, body))
    print(f"SIGKILL during a slow publish: all {len(acked)} acknowledged rows found after restart")
    svc = sigterm_during_merge_step(vol, svc, start, upsert, acked, pb, pb_grpc)
    for i in sorted(acked):
        s.wait_until(f"u{i} searchable", lambda: post_json(
            s.http_port, {"vector": {"values": vec(i)}, "top_k": 1},
            timeout=30)[1].get("hits", [{}])[0].get("id") == f"u{i}", 30)
    print(f"after the abandoned merge: all {len(acked)} acknowledged rows found")
    s.stop()
    svc.stop()


def sigterm_during_merge_step(vol, svc, start, upsert, acked, pb, pb_grpc):
    """SIGTERM while a background merge is stalled on the volume: the ingest
    service exits within seconds instead of waiting for the merge; the next
    start removes what the merge left, and loses nothing acknowledged."""
    stub = pb_grpc.IngestStub(grpc.insecure_channel(svc.grpc_address))
    vol.set(5, 150, 150)
    stop = threading.Event()

    def writer():  # Small publishes, which the tail policy joins in the background.
        i = 2000
        while not stop.is_set() and i < 2400:
            try:
                upsert(stub, i, 10, True)
            except grpc.RpcError:
                return
            with lock:
                acked.update(range(i, i + 10))
            i += 10

    lock = threading.Lock()
    t = threading.Thread(target=writer)
    t.start()
    svc.wait_until("a background merge running", lambda: stub.Status(
        pb.IngestStatusRequest(), timeout=30).merges_running > 0, 120, poll_s=0.02)
    stop.set()
    vol.set(5, 2000, 2000)  # Whatever the merge writes next takes 2 s.
    t0 = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    code = svc.proc.wait(120)
    took = time.monotonic() - t0
    t.join()
    check(code == 0, f"exit status {code}: {svc.log_tail()}")
    check("exiting without waiting for it" in svc.log_text(), svc.log_tail())
    # The final flush tries for 20 s to publish the writer's last batch (its
    # writes take 2 s each now); then a second for the waiting call to be
    # told, one for the merge, and the FUSE write in flight: about 25 s.
    # Waiting for the publish and the merge instead (dozens of 2 s writes and
    # fsyncs) would take over a minute.
    check(took < 40, f"SIGTERM to exit took {took:.1f} s with a merge stalled on the volume")
    vol.set(0, 0, 0)
    svc = start()
    stub = pb_grpc.IngestStub(grpc.insecure_channel(svc.grpc_address))
    upsert(stub, 3000, 1, True)  # A publish: it clears the crashed merge's temp files.
    acked.add(3000)
    root = os.path.join(vol.backing, "ingest")
    leftovers = [n for d in (root, os.path.join(root, "segments")) for n in os.listdir(d)
                 if n.startswith(".tmp-")]
    check(not leftovers, f"temp files left by the abandoned merge: {leftovers}")
    print(f"SIGTERM with a merge stalled on the volume: exited in {took:.1f} s; "
          "the next start removed its temp files")
    return svc


def main():
    if not os.path.exists(SLOWFS) or not os.path.exists("/dev/fuse"):
        print(f"SKIP: needs {SLOWFS} and /dev/fuse")
        return SKIP
    work = tempfile.mkdtemp(prefix="imagesearch_slow_volume_")
    vol = SlowVolume(work)
    try:
        s = startup_step(work, vol)
        H = e2e_lib.health_pb2(T.proto)
        stalled_swap_step(work, vol, s,
                          e2e_lib.health_check(grpc.insecure_channel(s.grpc_address), H))
        stop_during_stalled_load_step(work, vol, s)
        sizes_swap_step(work, vol)
        if os.path.exists(T.indexer):
            ingest_step(work, vol)
        else:
            print(f"no {T.indexer} (a build without LibTorch): the ingest step is skipped")
    finally:
        Server.kill_all()
        vol.close()
        if os.environ.get("IMAGESEARCH_KEEP_WORK"):
            print(f"work directory kept: {work}")  # Logs, slowfs.log, the roots.
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("slow volume: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
