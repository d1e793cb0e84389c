#!/usr/bin/env python3
"""Ingest freshness: how soon an upsert or a delete sent to the ingest service
(`imagesearch-indexer serve`) is what every query replica answers, and what a
sustained ingest costs the replicas' query throughput. All on this machine:
the ingest service, its graph builds and merges, the replicas and the clients
share its cores.

Set-up: a fresh root seeded with --base_rows synthetic vectors of --dim
(`imagesearch-snapshot synth`: 100 Gaussian blobs, or with --latent 1,000
clusters of that intrinsic dimension; then `build`: v1); the queries
come from another draw's clusters and the writer upserts i.i.d. N(0, 1) rows
(--workload=foreign), or both are further rows of the base's own draw
(--workload=held_out); `imagesearch-indexer serve`
on it (--publish_interval_ms) and --replicas query replicas following its
CURRENT (inotify). Then, in this order:

  qps before   imagesearch-loadgen, vector queries at --concurrency against
               replica 0 for --qps_seconds, no ingest (one segment);
  freshness    a writer sends --rate upserts/s (Upsert of --batch new rows
               every batch/rate seconds, wait=false so the rate is kept) and
               --delete_rate deletes/s of base rows (Delete, wait=false) for
               --seconds; two prober threads per replica (upserts, deletes)
               ask it, by id over
               HTTP (POST /invocations {"id", "top_k": 1, "include_self"}),
               for every --sample_every-th upserted row until it is found
               (404 before), and for every deleted row until it is gone (404);
               the freshness of a row on a replica is the time from just
               before its Upsert (Delete) was sent to the probe answer that
               first showed it (it gone);
  qps rounds   --qps_rounds rounds of two loadgen runs: one while the same
               writer (no prober) keeps the rate, one with the ingest idle
               (Flush, merges settled, every replica on CURRENT), in ABBA
               order (quiet-during, during-quiet, ...) so that a drift of the
               machine's speed cancels. Both runs of a round search the same
               segments at the same ef, so the same recall (but for the rows
               a window adds): their ratio is what the ingest's own CPU
               (Upserts, publishes, graph builds, merges, the replicas'
               swaps) costs queries;
  qps after    settled again: loadgen (no ingest, but the segments and
               deletes the ingest left);
  qps merged   the ingest service stopped, `imagesearch-snapshot merge --all`
               (one segment, deleted rows dropped), loadgen again
               (--merge_all=0 skips it). before/merged tells how much the
               machine's speed moved meanwhile; after/merged is what the
               segments and deletes cost queries at the same ef.

Goals: upsert and delete freshness p99 <= 2 s on every
replica ("all": a row counts when the last replica shows it); QPS during
ingest >= 0.8x QPS with the ingest idle, at the same recall: the rounds'
pooled ratio (sum of the running windows' QPS over the idle ones'). During/
before, also printed, is at the same ef but not the same recall (one
segment against several) and across minutes of the machine's drift; what
the segments cost at equal recall is imagesearch_segments_bench's to
measure (--layout=tail).

Probing: two probers a replica, each on its own connection, one for the
upserts and one for the deletes (so that neither waits behind the other's
calls), ask about the replica's oldest sampled row not yet seen (oldest
delete not yet gone) and move on to the next only once it is seen, every
--poll_ms. One writer sends in order, and a version holds every
write accepted before it, so rows show up in send order; a row shown before
an older one would be timed late (never early). The figures include the
probe's period and round trip (reported).

Diagnosis: root/HISTORY (when each version became CURRENT), the replicas'
logs ("serving snapshot vN ... loaded in T") and the ingest service's
Status (polled: pending rows, segments, merges running) split each row's
time into send -> CURRENT names a version holding it -> the replica serves
that version -> the probe sees it, and list the merges and loads meanwhile.

  /usr/bin/python3 tools/bench/ingest_freshness.py --build=build \\
      [--base_rows=100000 --dim=128 --rate=200 --seconds=30] [--json_out=F]
  # Image mode: the base is a folder indexed with the default model; the
  # writer upserts its images again under new ids, through the model.
  /usr/bin/python3 tools/bench/ingest_freshness.py --build=build \\
      --images=tests/data/images --rate=10 --batch=1 --delete_rate=1

Everything listens on 127.0.0.1 (ports the services pick); every loop is
bounded in count and time. The work directory (--work, default a new
temporary one) is removed at the end unless --keep_work; a --work given keeps
its seed-<rows>x<dim>-<workload>/ (v1 as built), which the next run with it copies
instead of building v1 again (11 min at 1M x 512; --rebuild_seed builds it).
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))
import grpc_stubs  # noqa: E402
from e2e_lib import Server  # noqa: E402
import grpc  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--build", default="build", help="build directory (binaries found in it)")
p.add_argument("--indexer_binary", default="")
p.add_argument("--query_binary", default="")
p.add_argument("--snapshot_binary", default="")
p.add_argument("--loadgen_binary", default="")
p.add_argument("--proto", default=os.path.join(SRC, "proto"))
p.add_argument("--work", default="", help="work directory (default: a new temporary one)")
p.add_argument("--keep_work", action="store_true", help="keep the work directory (logs, root)")
p.add_argument("--workload", choices=("foreign", "held_out"), default="foreign",
               help="foreign: queries from another seed's 100 clusters and upserts of i.i.d. "
                    "N(0, 1) values, near none of the base's rows; held_out: the queries and the "
                    "upserted rows are further rows of the base's own draw (its clusters), as a "
                    "collection's new images and queries are. On these 512-d Gaussian blobs "
                    "held_out is the heavier (within a blob every row is about as far as any "
                    "other: graph searches and inserts walk wide); real embeddings are neither")
p.add_argument("--latent", type=int, default=0,
               help="the synthetic data: 0: 100 Gaussian blobs filling all --dim dimensions; N > 0: "
                    "1,000 clusters of intrinsic dimension N (`imagesearch-snapshot synth "
                    "--latent`), as real embeddings are, where a graph search walks far less; "
                    "needs --workload=held_out")
p.add_argument("--rebuild_seed", action="store_true",
               help="build v1 again even if the work directory holds one of this size")
p.add_argument("--dim", type=int, default=128)
p.add_argument("--base_rows", type=int, default=100000, help="rows of v1, published first")
p.add_argument("--build_threads", type=int, default=0, help="snapshot build threads (0: all)")
p.add_argument("--replicas", type=int, default=2)
p.add_argument("--publish_interval_ms", type=int, default=1000)
p.add_argument("--ingest_args", default="", help="extra flags for imagesearch-indexer serve")
p.add_argument("--rate", type=float, default=200, help="upserts per second")
p.add_argument("--batch", type=int, default=10, help="rows per Upsert")
p.add_argument("--delete_rate", type=float, default=20, help="deletes per second (base rows)")
p.add_argument("--seconds", type=float, default=30, help="length of the freshness run")
p.add_argument("--sample_every", type=int, default=10, help="probe every n-th upserted row")
p.add_argument("--poll_ms", type=float, default=20, help="each prober's period")
p.add_argument("--visible_timeout_s", type=float, default=60,
               help="after the writer stops, how long rows may take to show")
p.add_argument("--qps_seconds", type=float, default=10, help="each loadgen run (0: skip QPS)")
p.add_argument("--qps_rounds", type=int, default=3,
               help="rounds of a loadgen run with the writer running and one with the ingest idle")
p.add_argument("--concurrency", type=int, default=2, help="loadgen's calls in flight")
p.add_argument("--settle_timeout_s", type=float, default=300,
               help="before 'qps after': the most to wait for merges to finish")
p.add_argument("--merge_all", type=int, default=1,
               help="1: then stop the ingest service, merge every segment into one "
               "(imagesearch-snapshot merge --all) and measure 'qps merged'")
p.add_argument("--goal_p99_s", type=float, default=2.0)
p.add_argument("--goal_qps_ratio", type=float, default=0.8)
p.add_argument("--json_out", default="")
p.add_argument("--images", default="",
               help="image mode: the base is this folder indexed with --model, and the writer "
                    "upserts its images again under new ids (--rate images/s); QPS is skipped")
p.add_argument("--model", default="", help="image mode: the model (default: the build's)")
a = p.parse_args()
if a.rate <= 0 or a.batch <= 0 or a.seconds <= 0 or a.replicas < 1 or a.sample_every < 1:
    sys.exit("--rate, --batch, --seconds, --replicas and --sample_every must be positive")
if a.latent < 0 or (a.latent > 0 and a.workload != "held_out"):
    sys.exit("--latent is 0 or, with --workload=held_out, positive")
if a.seconds > 3600 or a.qps_seconds > 3600:
    sys.exit("--seconds and --qps_seconds are at most 3600")
if not 1 <= a.qps_rounds <= 20:
    sys.exit("--qps_rounds is 1 to 20")


def binary(flag, *rel):
    return flag or os.path.join(a.build, *rel)


INDEXER = binary(a.indexer_binary, "services", "indexer", "imagesearch-indexer")
QUERY = binary(a.query_binary, "services", "query", "imagesearch-query")
SNAPSHOT = binary(a.snapshot_binary, "tools", "make_snapshot", "imagesearch-snapshot")
LOADGEN = binary(a.loadgen_binary, "tools", "loadgen", "imagesearch-loadgen")
pb, pb_grpc = grpc_stubs.load(a.proto)
MODEL = a.model or os.path.join(a.build, "models", "default", "model.pt")
# Image mode: the encoded images the writer sends (every file of --images
# that the indexer took; a rejected one would only be rejected again).
IMAGES = []
WRITER_POOL_ROWS = 40000  # Held-out rows the writer cycles through (200 s at 200/s).
WRITER_ROWS = None  # --workload=held_out: the rows the writer upserts, in order.
if a.images:
    for d, _, files in os.walk(a.images):
        for f in sorted(files):
            if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".avif")):
                with open(os.path.join(d, f), "rb") as fh:
                    IMAGES.append(fh.read())
    if not IMAGES:
        sys.exit(f"--images={a.images}: no .jpg, .png, .webp or .avif files")
    a.qps_seconds = 0  # Vector queries of the model's dimension are not made here.
# The same image sent under several ids gives rows at distance 0 from each
# other, any of which can be the first hit: image mode looks further.
PROBE_TOP_K = 100 if IMAGES else 1


def sh(*args):
    out = subprocess.run([str(x) for x in args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out.stdout


def pct(values, q):
    """The q-quantile (nearest rank) of values; None if empty. inf sorts last."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def dist(values):
    """p50/p90/p99/max and count of a list of seconds (inf: never seen)."""
    d = {"n": len(values)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        v = pct(values, q)
        d[name] = None if v is None or v == float("inf") else round(v, 4)
    d["never"] = sum(1 for v in values if v == float("inf"))
    return d


def fmt(d, unit="rows"):
    def s(v):
        return "never" if v is None and d.get("never") else ("-" if v is None else f"{v:.3f}")
    return (f"p50 {s(d['p50'])}  p90 {s(d['p90'])}  p99 {s(d['p99'])}  max {s(d['max'])} s"
            f"  ({d['n']} {unit}{', %d never' % d['never'] if d.get('never') else ''})")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def io_bytes(pid):
    """The process's wchar (bytes it passed to write calls) and write_bytes (bytes
    it sent to the storage layer), from /proc/PID/io; zeros once it is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
        return int(fields["wchar"]), int(fields["write_bytes"])
    except (OSError, KeyError, ValueError):
        return 0, 0


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def parse_utc(text):
    """'2026-12-03T16:00:03.803Z' -> seconds since the epoch."""
    return datetime.strptime(text.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=timezone.utc).timestamp()


class Writer:
    """Sends Upserts of `batch` new rows every batch/rate s (and Deletes of base
    rows at delete_rate) for `seconds`, wait=false. Every row's send time is
    the monotonic and wall clock just before its call; a row whose call fails
    or is rejected is counted, not sampled."""

    def __init__(self, stub, first_id, seconds, sample, delete_pool):
        self.stub, self.seconds, self.sample = stub, seconds, sample
        self.next_id, self.delete_pool = first_id, delete_pool
        self.samples, self.deletes = [], []  # dicts: id, t_send, wall_send, seen: {}
        self.sent = self.accepted = self.deletes_sent = 0
        self.errors, self.late = {}, 0
        self.upsert_rtt, self.delete_rtt = [], []
        self.rnd = random.Random(first_id)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.elapsed = 0.0

    def vec(self, n):
        if WRITER_ROWS is not None:  # The n-th held-out row of the collection's generator.
            return WRITER_ROWS[n % len(WRITER_ROWS)].tolist()
        return [self.rnd.gauss(0, 1) for _ in range(a.dim)]

    def add_item(self, req, i, n):
        if IMAGES:
            req.items.add(id=i, image=IMAGES[self.rnd.randrange(len(IMAGES))])
        else:
            req.items.add(id=i, vector=pb.Vector(values=self.vec(n)))

    def error(self, what, e):
        key = f"{what} {e.code().name if isinstance(e, grpc.RpcError) else type(e).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def run(self):
        period = a.batch / a.rate
        deletes_per_tick = a.delete_rate * period
        owed = 0.0
        start = time.monotonic()
        ticks = int(self.seconds / period)
        for k in range(ticks):
            due = start + k * period
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            elif now > due + period:
                self.late += 1
            ids = [f"u{self.next_id + i}" for i in range(a.batch)]
            self.next_id += a.batch
            req = pb.UpsertRequest(wait=False)
            for n, i in enumerate(ids):
                self.add_item(req, i, self.next_id - a.batch + n)
            t, wall = time.monotonic(), time.time()
            try:
                resp = self.stub.Upsert(req, timeout=10)
                self.upsert_rtt.append(time.monotonic() - t)
                self.sent += len(ids)
                self.accepted += resp.accepted
                if self.sample:
                    for n, (i, r) in enumerate(zip(ids, resp.results)):
                        if r.code == 0 and (self.next_id - a.batch + n) % a.sample_every == 0:
                            self.samples.append({"id": i, "t": t, "wall": wall, "seen": {},
                                                 "version": {}})
            except grpc.RpcError as e:
                self.error("Upsert", e)
            owed += deletes_per_tick
            n_del = int(owed)
            owed -= n_del
            if n_del and self.delete_pool:
                gone = [self.delete_pool.pop() for _ in range(min(n_del, len(self.delete_pool)))]
                t, wall = time.monotonic(), time.time()
                try:
                    self.stub.Delete(pb.DeleteRequest(ids=gone, wait=False), timeout=10)
                    self.delete_rtt.append(time.monotonic() - t)
                    self.deletes_sent += len(gone)
                    if self.sample:
                        for i in gone:
                            self.deletes.append({"id": i, "t": t, "wall": wall, "seen": {},
                                                 "version": {}})
                except grpc.RpcError as e:
                    self.error("Delete", e)
        self.elapsed = time.monotonic() - start


NOT_IN = re.compile(r"is not in snapshot v(\d+)")


class Prober:
    """Asks one replica, over one keep-alive HTTP connection, about the
    writer's oldest sampled row not yet seen (kind "upserts") or oldest delete
    not yet gone (kind "deletes")."""

    def __init__(self, index, replica, writer, deadline_after_writer, kind="upserts"):
        self.index, self.port, self.writer = index, replica.http_port, writer
        self.kind = kind
        self.deadline_after_writer = deadline_after_writer
        self.up = self.dn = 0
        self.rtt, self.calls, self.errors = [], 0, {}
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def ask(self, row_id):
        """(HTTP status, version that answered or None, whether the id is a hit)."""
        body = json.dumps({"id": row_id, "top_k": PROBE_TOP_K, "include_self": True})
        t = time.monotonic()
        for attempt in range(2):
            try:
                self.conn.request("POST", "/invocations", body,
                                  {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                data = json.loads(r.read() or b"{}")
                break
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
                self.conn.close()
                if attempt:
                    return None, None, False
        self.calls += 1
        self.rtt.append(time.monotonic() - t)
        if r.status == 200:
            hits = [h.get("id") for h in data.get("hits", [])]
            return 200, int(data.get("snapshot_version", 0)), row_id in hits
        m = NOT_IN.search(data.get("error", {}).get("message", ""))
        return r.status, int(m.group(1)) if m else None, False

    def run(self):
        w, r = self.writer, self.index
        done_at = None
        while True:
            if done_at is None and not w.thread.is_alive():
                done_at = time.monotonic()
            while self.kind == "upserts" and self.up < len(w.samples):
                s = w.samples[self.up]
                status, version, hit = self.ask(s["id"])
                if not (status == 200 and hit):
                    break
                s["seen"][r], s["version"][r] = time.monotonic(), version
                self.up += 1
            while self.kind == "deletes" and self.dn < len(w.deletes):
                s = w.deletes[self.dn]
                status, version, _ = self.ask(s["id"])
                if status != 404:
                    break
                s["seen"][r], s["version"][r] = time.monotonic(), version
                self.dn += 1
            todo, done = (w.samples, self.up) if self.kind == "upserts" else (w.deletes, self.dn)
            if done_at is not None and (
                    done == len(todo) or
                    time.monotonic() > done_at + self.deadline_after_writer):
                return
            time.sleep(a.poll_ms / 1000)


class StatusMonitor:
    """Polls the ingest service's Status every 250 ms: pending rows, segments,
    merges running (merge start and end times are read from the transitions)."""

    def __init__(self, stub):
        self.stub, self.samples, self.stop = stub, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        for _ in range(int(4 * 3600 / 0.25)):
            if self.stop.is_set():
                return
            try:
                st = self.stub.Status(pb.IngestStatusRequest(), timeout=5)
                self.samples.append((time.time(), st.pending_rows, st.segments, st.merges_running,
                                     st.merges_done, st.current_version, st.last_error))
            except grpc.RpcError:
                pass
            self.stop.wait(0.25)

    def merge_intervals(self):
        """[(start, end)] wall times of merges, from merges_running going 0 -> >0 -> 0
        (to the poll's 250 ms)."""
        out, start = [], None
        for t, _, _, running, *_ in self.samples:
            if running and start is None:
                start = t
            elif not running and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, None))
        return out


def read_history(root):
    """{version: wall time it became CURRENT} from root/HISTORY (the last line wins)."""
    out = {}
    with open(os.path.join(root, "HISTORY")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith("v"):
                out[int(parts[0][1:])] = parse_utc(parts[1])
    return out


SERVING = re.compile(r"^(\S+) I serving snapshot v(\d+) \(.*loaded in ([^,)]+)")


def parse_duration(text):
    """absl's FormatDuration ('8.539137ms', '1.2s', '850us', '1m2.5s') -> seconds."""
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    for num, unit in re.findall(r"([\d.]+)(h|ms|us|ns|m|s)", text):
        total += float(num) * units[unit]
    return total


def read_swaps(log_path):
    """{version: (wall time the replica served it, load seconds)}."""
    out = {}
    with open(log_path) as f:
        for line in f:
            m = SERVING.match(line)
            if m:
                out[int(m.group(2))] = (parse_utc(m.group(1)), parse_duration(m.group(3)))
    return out


def merged_versions(log_path):
    """{version: line} for the ingest service's 'merged ... into vN' lines."""
    out = {}
    with open(log_path) as f:
        for line in f:
            m = re.search(r"ingest: merged .* into v(\d+)", line)
            if m:
                out[int(m.group(1))] = line.strip()
    return out


def copy_as_written(src, dst):
    """Copies a snapshot root as our writers write one: each file in whole,
    2 MiB-aligned writes (hnswlib's saveIndex writes a graph in one call), so
    the page cache holds it in folios of up to 2 MiB, which mappings of it
    then map with huge pages where the kernel can (Linux 6.x, ext4 and xfs).
    `cp` writes in 128 KiB pieces, whose 4 KiB-mapped copy searched a 1M x
    512 graph 0.85x as fast (log, "Huge pages for the graph"). A seed root
    holds plain files only (one version: no links between versions)."""
    chunk = 8 << 20
    for d, dirs, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(d, src))
        os.makedirs(out, exist_ok=True)
        for name in dirs + files:
            if os.path.islink(os.path.join(d, name)):
                sys.exit(f"copy_as_written: {os.path.join(d, name)} is a link")
        for name in files:
            with open(os.path.join(d, name), "rb", buffering=0) as fin, \
                    open(os.path.join(out, name), "wb", buffering=0) as fout:
                while True:
                    b = memoryview(fin.read(chunk))
                    if not b:
                        break
                    while b:  # An unbuffered write may take part of it.
                        b = b[fout.write(b):]
            shutil.copystat(os.path.join(d, name), os.path.join(out, name))


def huge_mapped_share(pid, name="graph.hnsw"):
    """The share of process `pid`'s mappings of files called `name` that
    its page tables map with 2 MiB pages (smaps' FilePmdMapped over Rss)."""
    rss = pmd = 0
    current = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and len(head) >= 5:
                    path = line.rstrip().removesuffix(" (deleted)")  # Unlinked, still mapped.
                    current = path.endswith("/" + name)
                elif current and head[0] == "Rss:":
                    rss += int(head[1])
                elif current and head[0] == "FilePmdMapped:":
                    pmd += int(head[1])
    except OSError:
        return None
    return round(pmd / rss, 3) if rss else None


def loadgen(target, queries, label, work):
    out = os.path.join(work, f"loadgen_{label}.json")
    sh(LOADGEN, f"--target={target}", "--kind=vector", f"--vectors={queries}",
       f"--concurrency={a.concurrency}", f"--duration_s={a.qps_seconds}", "--top_k=10",
       f"--json_out={out}")
    with open(out) as f:
        r = json.load(f)
    return {"qps": round(r["qps"], 1), "ok": r["ok"], "failed": r["failed"],
            "latency_ms": {k: round(v, 3) for k, v in r["latency_ms"].items()},
            "versions": sorted(int(v) for v in r.get("versions", {}))}


def freshness(rows, replicas):
    """Per replica and for all: seconds from send to seen (inf: never)."""
    out = {}
    for r in range(replicas):
        out[f"replica{r}"] = dist([s["seen"][r] - s["t"] if r in s["seen"] else float("inf")
                                   for s in rows])
    out["all"] = dist([max(s["seen"][r] for r in range(replicas)) - s["t"]
                       if len(s["seen"]) == replicas else float("inf") for s in rows])
    return out


def breakdown(rows, replicas, history, swaps):
    """Splits each row's time on each replica: send -> CURRENT names the version the
    replica first showed it in (or a later one: replicas may skip versions) ->
    the replica serves that version -> the probe saw it."""
    to_current, to_serving, to_probe = [], [], []
    for s in rows:
        for r in range(replicas):
            v = s["version"].get(r)
            if v is None or v not in history or v not in swaps[r]:
                continue
            promoted, (served, _) = history[v], swaps[r][v]
            seen_wall = s["wall"] + (s["seen"][r] - s["t"])
            to_current.append(promoted - s["wall"])
            to_serving.append(served - promoted)
            to_probe.append(seen_wall - served)
    return {"send_to_current": dist(to_current), "current_to_replica_serving": dist(to_serving),
            "serving_to_probe_seen": dist(to_probe)}


def main():
    global WRITER_ROWS
    work = a.work or tempfile.mkdtemp(prefix="imagesearch_ingest_freshness_")
    os.makedirs(work, exist_ok=True)
    root = os.path.join(work, "root")
    if os.path.exists(root):
        shutil.rmtree(root)
    finished = False
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "flags": vars(a), "cpus": os.cpu_count(), "loadavg_start": loadavg()}
    try:
        t0 = time.monotonic()
        base = os.path.join(work, "base.npy")
        queries = os.path.join(work, "queries.npy")
        if IMAGES:
            sh(INDEXER, f"--input={a.images}", f"--root={root}", f"--model={MODEL}",
               "--max_reject_ratio=0.5", "--progress=none")
            base_ids = sorted(os.path.relpath(os.path.join(d, f), a.images)
                              for d, _, fs in os.walk(a.images) for f in fs)
            print(f"v1: {a.images} indexed with {MODEL} in {round(time.monotonic() - t0, 1)} s; "
                  f"the writer sends {len(IMAGES)} images again under new ids", flush=True)
        else:
            # v1 of a given size is built once per work directory and copied
            # afresh for each run (a real copy: a root written long before a
            # run can search slower than a fresh one, LOG.md "The tail policy").
            seed = os.path.join(work, f"seed-{a.base_rows}x{a.dim}-{a.workload}"
                                + (f"-latent{a.latent}" if a.latent else ""))
            if a.rebuild_seed and os.path.exists(seed):
                shutil.rmtree(seed)
            how = "copied from " + seed
            if not os.path.exists(seed):
                shutil.rmtree(f"{seed}.tmp", ignore_errors=True)  # An interrupted build's.
                os.makedirs(f"{seed}.tmp")
                if a.workload == "held_out":
                    # One draw of the generator (seed 1): the base, then 1,000
                    # queries, then the writer's rows (it cycles through them).
                    import numpy as np
                    n_writer = WRITER_POOL_ROWS
                    every = os.path.join(work, "drawn.npy")
                    sh(SNAPSHOT, "synth", f"--out={every}",
                       f"--count={a.base_rows + 1000 + n_writer}", f"--dim={a.dim}", "--seed=1",
                       f"--latent={a.latent}")
                    rows = np.load(every, mmap_mode="r")
                    np.save(base, rows[:a.base_rows])
                    np.save(os.path.join(seed + ".tmp", "queries.npy"),
                            rows[a.base_rows:a.base_rows + 1000])
                    np.save(os.path.join(seed + ".tmp", "writer.npy"),
                            rows[a.base_rows + 1000:])
                    del rows
                    os.remove(every)
                else:
                    sh(SNAPSHOT, "synth", f"--out={base}", f"--count={a.base_rows}",
                       f"--dim={a.dim}", "--seed=1")
                    sh(SNAPSHOT, "synth", f"--out={os.path.join(seed + '.tmp', 'queries.npy')}",
                       "--count=1000", f"--dim={a.dim}", "--seed=2")
                sh(SNAPSHOT, "build", f"--root={seed}.tmp/root", f"--vectors={base}",
                   "--metric=cosine", f"--threads={a.build_threads}")
                os.rename(f"{seed}.tmp", seed)
                how = "built"
            shutil.copy(os.path.join(seed, "queries.npy"), queries)
            if a.workload == "held_out":
                import numpy as np
                WRITER_ROWS = np.load(os.path.join(seed, "writer.npy"))
            copy_as_written(os.path.join(seed, "root"), root)
            base_ids = [str(i) for i in range(a.base_rows)]
            data = f"intrinsic dimension {a.latent}" if a.latent else "Gaussian blobs"
            print(f"v1: {a.base_rows} x {a.dim} ({data}, {a.workload}) {how} in "
                  f"{round(time.monotonic() - t0, 1)} s", flush=True)
        result["base_build_s"] = round(time.monotonic() - t0, 1)

        replicas = [Server(QUERY, [f"--snapshot_root={root}"], os.path.join(work, f"query{r}.log"))
                    for r in range(a.replicas)]
        ingest = Server(INDEXER, ["serve", f"--root={root}", "--port=0",
                                  f"--publish_interval_ms={a.publish_interval_ms}",
                                  *a.ingest_args.split()],
                        os.path.join(work, "ingest.log"), wait=("grpc",), pick_ports=False)
        stub = pb_grpc.IngestStub(grpc.insecure_channel(ingest.grpc_address))
        monitor = StatusMonitor(stub)
        monitor.thread.start()
        target = replicas[0].grpc_address
        procs = {"ingest": ingest.pid, **{f"replica{r}": s.pid for r, s in enumerate(replicas)}}

        def cpu():
            return {k: cpu_seconds(v) for k, v in procs.items()}

        qps = {}
        if a.qps_seconds > 0:
            qps["before"] = loadgen(target, queries, "before", work)
            print(f"qps before ingest: {qps['before']['qps']}", flush=True)

        # Freshness.
        pool = list(base_ids)
        if IMAGES:  # Only the images the indexer took are rows to delete.
            asker = Prober(0, replicas[0], None, 0)
            pool = [i for i in pool if asker.ask(i)[2]]
        random.Random(3).shuffle(pool)
        writer = Writer(stub, 0, a.seconds, True, pool)
        probers = [Prober(r, s, writer, a.visible_timeout_s, kind)
                   for r, s in enumerate(replicas) for kind in ("upserts", "deletes")]
        cpu0, wall0, load0 = cpu(), time.monotonic(), loadavg()
        io0 = io_bytes(ingest.pid)
        fresh_start = time.time()
        writer.thread.start()
        for pr in probers:
            pr.thread.start()
        writer.thread.join(timeout=a.seconds + 120)
        for pr in probers:
            pr.thread.join(timeout=a.visible_timeout_s + 60)
        fresh_end = time.time()
        cpu1, wall1 = cpu(), time.monotonic()
        io1 = io_bytes(ingest.pid)
        result["freshness_phase"] = {
            "upserts_sent": writer.sent, "upserts_accepted": writer.accepted,
            "achieved_rate": round(writer.sent / max(writer.elapsed, a.seconds), 1),
            "deletes_sent": writer.deletes_sent, "late_ticks": writer.late,
            "errors": writer.errors,
            "upsert_call_ms": dist([x * 1e3 for x in writer.upsert_rtt]),
            "sampled_upserts": len(writer.samples), "sampled_deletes": len(writer.deletes),
            "probe_calls": [pr.calls for pr in probers],
            "probe_rtt_ms": [dist([x * 1e3 for x in pr.rtt]) for pr in probers],
            "probe_errors": [pr.errors for pr in probers],
            "cpu_share": {k: round((cpu1[k] - cpu0[k]) / (wall1 - wall0), 3) for k in cpu0},
            "loadavg_start": load0, "loadavg_end": loadavg(),
            # How much of each process's graph.hnsw mappings is on 2 MiB pages.
            "graph_huge_mapped_share": {k: huge_mapped_share(v) for k, v in procs.items()},
            # What the ingest service wrote (publishes and merges) per row
            # upserted, and that over the row's vector bytes: the write
            # amplification of the merge policy's joins and folds.
            "ingest_wrote_mb": round((io1[0] - io0[0]) / 1e6, 1),
            "ingest_write_bytes_mb": round((io1[1] - io0[1]) / 1e6, 1),
            "ingest_wrote_per_row_kb": round((io1[0] - io0[0]) / 1e3 / max(1, writer.accepted), 2),
            "ingest_wrote_over_vector_bytes": round(
                (io1[0] - io0[0]) / max(1, writer.accepted) / (4 * a.dim), 1)}
        result["upsert_freshness_s"] = freshness(writer.samples, a.replicas)
        result["delete_freshness_s"] = freshness(writer.deletes, a.replicas)

        # Query throughput during ingest, against the same collection with the
        # ingest idle: rounds of a window with the writer running and a window
        # with it stopped (everything published, merges done, every replica on
        # CURRENT), in ABBA order so a drift of the machine's speed cancels.
        # Both windows of a round search the same segments (the writer adds
        # about rate x qps_seconds rows of the base's), so at the same ef they
        # have the same recall: what is left between them is what the ingest's
        # CPU (Upserts, publishes, graph builds, merges, replica swaps) costs.
        if a.qps_seconds > 0:
            writer_next = [writer.next_id]

            def settle():
                """Flush, wait for merges to end and every replica to serve CURRENT."""
                flushed = stub.Flush(pb.FlushRequest(), timeout=120).version
                deadline = time.monotonic() + a.settle_timeout_s
                while time.monotonic() < deadline:
                    st = stub.Status(pb.IngestStatusRequest(), timeout=10)
                    if st.merges_running == 0 and st.pending_rows == 0 and st.pending_deletes == 0:
                        time.sleep(2)  # A merge may start right after a publish.
                        st = stub.Status(pb.IngestStatusRequest(), timeout=10)
                        if st.merges_running == 0:
                            break
                    time.sleep(0.5)
                current = st.current_version
                for r, s in enumerate(replicas):
                    s.wait_until(f"replica{r} on v{current}",
                                 lambda s=s: read_swaps(s.log_path).get(current) is not None, 60)
                return st, current, flushed

            def with_cpu(q, c0, c1, w0, w1):
                """Adds each process's cores and replica 0's CPU per query (us)."""
                q["cpu_share"] = {k: round((c1[k] - c0[k]) / (w1 - w0), 3) for k in c0}
                q["replica0_cpu_us_per_query"] = round(
                    1e6 * (c1["replica0"] - c0["replica0"]) / max(1, q["ok"]), 1)
                return q

            def quiet_window(label):
                st, current, _ = settle()
                c0, w0 = cpu(), time.monotonic()
                q = loadgen(target, queries, label, work)
                with_cpu(q, c0, cpu(), w0, time.monotonic())
                q["segments"], q["version"] = st.segments, current
                return q

            def during_window(label):
                w = Writer(stub, writer_next[0], a.qps_seconds + 2, False, pool)
                w.thread.start()
                time.sleep(1)  # The writer is running before loadgen starts.
                c1, w1 = cpu(), time.monotonic()
                q = loadgen(target, queries, label, work)
                with_cpu(q, c1, cpu(), w1, time.monotonic())
                w.thread.join(timeout=a.qps_seconds + 60)
                writer_next[0] = w.next_id
                q["upserts_sent"], q["writer_errors"] = w.sent, w.errors
                segs = [x[2] for x in monitor.samples if x[0] >= time.time() - a.qps_seconds - 1]
                q["segments_min_max"] = [min(segs), max(segs)] if segs else None
                return q

            rounds = []
            for i in range(a.qps_rounds):
                order = ("quiet", "during") if i % 2 == 0 else ("during", "quiet")
                rnd = {}
                for kind in order:
                    rnd[kind] = (quiet_window if kind == "quiet" else during_window)(f"{kind}{i}")
                rnd["ratio"] = round(rnd["during"]["qps"] / rnd["quiet"]["qps"], 3)
                rounds.append(rnd)
                print(f"qps round {i + 1}/{a.qps_rounds} ({' then '.join(order)}): during "
                      f"{rnd['during']['qps']}, ingest idle {rnd['quiet']['qps']} "
                      f"({rnd['quiet']['segments']} segments): {rnd['ratio']}; replica0 CPU a "
                      f"query {rnd['during']['replica0_cpu_us_per_query']} / "
                      f"{rnd['quiet']['replica0_cpu_us_per_query']} us; cores during "
                      f"{rnd['during']['cpu_share']}", flush=True)
            qps["rounds"] = rounds

            def pooled(kind):
                ws = [r[kind] for r in rounds]
                return {"qps": round(sum(w["qps"] for w in ws) / len(ws), 1),
                        "ok": sum(w["ok"] for w in ws), "failed": sum(w["failed"] for w in ws),
                        "latency_ms": {"p99": max(w["latency_ms"]["p99"] for w in ws)}}
            qps["during"], qps["quiet"] = pooled("during"), pooled("quiet")
            segs = [s for r in rounds for s in (r["during"]["segments_min_max"] or [])]
            qps["during"]["segments_min_max"] = [min(segs), max(segs)] if segs else None
            qps["during"]["cpu_share"] = {
                k: round(sum(r["during"]["cpu_share"][k] for r in rounds) / len(rounds), 3)
                for k in rounds[0]["during"]["cpu_share"]}
            qps["ratio_during_over_quiet"] = round(qps["during"]["qps"] / qps["quiet"]["qps"], 3)
            ratios = sorted(r["ratio"] for r in rounds)
            qps["ratio_during_over_quiet_rounds"] = ratios
            print(f"qps during ingest {qps['during']['qps']}, ingest idle {qps['quiet']['qps']}: "
                  f"{qps['ratio_during_over_quiet']}", flush=True)
            st, current, flushed = settle()
            qps["after"] = loadgen(target, queries, "after", work)
            qps["after"]["segments"] = st.segments
            qps["after"]["version"] = current
            qps["after"]["flushed_version"] = flushed
            print(f"qps after ingest: {qps['after']['qps']} ({st.segments} segments)", flush=True)
            qps["ratio_during_over_before"] = round(qps["during"]["qps"] / qps["before"]["qps"], 3)
            qps["ratio_after_over_before"] = round(qps["after"]["qps"] / qps["before"]["qps"], 3)
            qps["ratio_during_over_after"] = round(qps["during"]["qps"] / qps["after"]["qps"], 3)
            if a.merge_all:
                monitor.stop.set()
                ingest.stop(expect=None)
                t = time.monotonic()
                sh(SNAPSHOT, "merge", f"--root={root}", "--all")
                merge_s = time.monotonic() - t
                merged = int(sh(SNAPSHOT, "current", f"--root={root}").strip()[1:])
                for r, s in enumerate(replicas):
                    s.wait_until(f"replica{r} on v{merged}",
                                 lambda s=s: read_swaps(s.log_path).get(merged) is not None, 60)
                qps["merged"] = loadgen(target, queries, "merged", work)
                qps["merged"]["merge_all_s"] = round(merge_s, 1)
                qps["merged"]["version"] = merged
                print(f"qps merged into one segment: {qps['merged']['qps']}", flush=True)
                for k in ("before", "after", "during"):
                    qps[f"ratio_{k}_over_merged"] = round(qps[k]["qps"] / qps["merged"]["qps"], 3)
        result["qps"] = qps
        monitor.stop.set()
        monitor.thread.join(timeout=10)

        # Diagnosis from HISTORY, the replicas' and the ingest service's logs.
        history = read_history(root)
        swaps = [read_swaps(s.log_path) for s in replicas]
        merges = merged_versions(ingest.log_path)
        in_phase = sorted(v for v, t in history.items() if fresh_start <= t <= fresh_end)
        gaps = [history[v] - history[u] for u, v in zip(in_phase, in_phase[1:])]
        diag = {"versions_in_freshness_phase": len(in_phase),
                "current_interval_s": dist(gaps),
                "merge_versions_in_phase": [v for v in in_phase if v in merges],
                "merges": [{"start": round(s_ - fresh_start, 2),
                            "end": None if e is None else round(e - fresh_start, 2)}
                           for s_, e in monitor.merge_intervals()
                           if s_ <= fresh_end and (e is None or e >= fresh_start)],
                "merge_lines": list(merges.values()),
                "replicas": []}
        pend = [x[1] for x in monitor.samples if fresh_start <= x[0] <= fresh_end]
        segs = [x[2] for x in monitor.samples if fresh_start <= x[0] <= fresh_end]
        # The tail joins' link searches over the whole run (the log says
        # "N rows linked to the big segment in T ms, C ms of CPU"): a row.
        links = [re.search(r"(\d+) rows linked to the big segment in (\d+) ms"
                           r"(?:, (\d+) ms of CPU)?", line) for line in merges.values()]
        links = [(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) for m in links if m]
        diag["link_rows"] = sum(x[0] for x in links)
        for i, key in ((1, "link_ms_a_row"), (2, "link_cpu_ms_a_row")):
            diag[key] = (round(sum(x[i] for x in links) / diag["link_rows"], 3)
                         if diag["link_rows"] else None)
        diag["pending_rows_max"] = max(pend) if pend else None
        diag["segments_max"] = max(segs) if segs else None
        for r in range(a.replicas):
            vs = [v for v in in_phase if v in swaps[r]]
            diag["replicas"].append({
                "versions_served": len(vs), "versions_skipped": len(in_phase) - len(vs),
                "load_s": dist([swaps[r][v][1] for v in vs]),
                "current_to_serving_s": dist([swaps[r][v][0] - history[v] for v in vs])})
        diag["upsert_breakdown"] = breakdown(writer.samples, a.replicas, history, swaps)
        diag["delete_breakdown"] = breakdown(writer.deletes, a.replicas, history, swaps)
        # The slowest rows: what happened around them.
        slow = sorted((s for s in writer.samples if len(s["seen"]) == a.replicas),
                      key=lambda s: -max(s["seen"].values()) + s["t"])[:5]
        diag["slowest_upserts"] = [{
            "id": s["id"], "sent_at_s": round(s["wall"] - fresh_start, 2),
            "seen_s": {r: round(s["seen"][r] - s["t"], 3) for r in range(a.replicas)},
            "versions": s["version"],
            "current_at_s": {v: round(history[v] - fresh_start, 2)
                             for v in set(s["version"].values()) if v in history}}
            for s in slow]
        result["diagnosis"] = diag
        result["loadavg_end"] = loadavg()
        for s in [*replicas, ingest]:
            s.stop(expect=None)
        finished = True
    finally:
        Server.kill_all()
        if a.keep_work or not finished:
            print(f"work directory kept: {work}")
        elif a.work:  # The seed (v1) stays for the next run.
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)

    report(result)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    # Ran and measured something (the goals are reported, not asserted).
    up, dn = result["upsert_freshness_s"]["all"], result["delete_freshness_s"]["all"]
    ok = (up["n"] > up["never"] and dn["n"] > dn["never"] and
          (a.qps_seconds == 0 or (result["qps"]["before"]["qps"] > 0 and
                                  result["qps"]["during"]["qps"] > 0)))
    return 0 if ok else 1


def report(r):
    f = r["freshness_phase"]
    base = (f"the images of {a.images}" if a.images else f"{a.base_rows} x {a.dim}")
    print(f"\nIngest freshness: {base} base, {a.replicas} replicas, "
          f"publish every {a.publish_interval_ms} ms; {os.cpu_count()} CPUs shared by all; "
          f"load average {r['loadavg_start']} at start, {r['loadavg_end']} at end")
    print(f"writer: {f['upserts_sent']} upserts ({f['achieved_rate']}/s of {a.rate:g} asked, "
          f"{f['late_ticks']} late ticks), {f['deletes_sent']} deletes; errors {f['errors'] or 'none'}")
    print(f"probes (replica 0's upserts, its deletes, replica 1's ...): {f['probe_calls']} "
          f"calls, round trip p50 "
          f"{[d['p50'] for d in f['probe_rtt_ms']]} ms, every {a.poll_ms:g} ms")
    print(f"cpu share (cores) during the freshness run: {f['cpu_share']}")
    print(f"share of the graph.hnsw mappings' bytes on 2 MiB pages: {f['graph_huge_mapped_share']}")
    print(f"the ingest service wrote {f['ingest_wrote_mb']} MB ({f['ingest_write_bytes_mb']} MB "
          f"to storage): {f['ingest_wrote_per_row_kb']} kB a row upserted, "
          f"{f['ingest_wrote_over_vector_bytes']}x the row's vector")
    goal = a.goal_p99_s
    for name in ("upsert", "delete"):
        print(f"{name} -> visible{' (gone)' if name == 'delete' else ''}, "
              f"{f['sampled_' + name + 's']} rows:")
        for who, d in r[f"{name}_freshness_s"].items():
            met = "" if who != "all" else (
                "   goal p99 <= %gs: %s" % (goal, "MET" if d["p99"] is not None and d["p99"] <= goal
                                            else "MISSED"))
            print(f"  {who:<9} {fmt(d)}{met}")
    q = r.get("qps")
    if q:
        print(f"query QPS (loadgen, vector, concurrency {a.concurrency}, {a.qps_seconds:g} s "
              f"windows, replica 0): before {q['before']['qps']} (one segment); "
              f"{len(q['rounds'])} rounds of ingest running / idle on the same segments: "
              + ", ".join(f"{r['during']['qps']} / {r['quiet']['qps']} ({r['ratio']})"
                          for r in q["rounds"]))
        ratio = q["ratio_during_over_quiet"]
        print(f"  during/idle {ratio} (rounds pooled)   goal >= {a.goal_qps_ratio}: "
              f"{'MET' if ratio >= a.goal_qps_ratio else 'MISSED'};  per round "
              f"{q['ratio_during_over_quiet_rounds']}")
        print(f"  after {q['after']['qps']} ({q['after']['segments']} segments); during/before "
              f"{q['ratio_during_over_before']}, after/before {q['ratio_after_over_before']} "
              f"(at the same ef, not the same recall: the segments' cost at equal recall is "
              f"imagesearch_segments_bench's)")
        print(f"  p99 latency ms: before {q['before']['latency_ms']['p99']}, during "
              f"{q['during']['latency_ms']['p99']}, idle {q['quiet']['latency_ms']['p99']}, "
              f"after {q['after']['latency_ms']['p99']}; segments during "
              f"{q['during']['segments_min_max']}; cpu share during: {q['during']['cpu_share']}")
        if "merged" in q:
            print(f"  merged into one segment ({q['merged']['merge_all_s']} s): "
                  f"{q['merged']['qps']} QPS; over merged: before {q['ratio_before_over_merged']}"
                  f" (the machine's drift), after {q['ratio_after_over_merged']} (segments and "
                  f"deletes), during {q['ratio_during_over_merged']}")
        print("  recall: the two windows of a round search the same segments at the same ef "
              "(64), so the same recall but for the rows a window adds (not measured here)")
    d = r["diagnosis"]
    print(f"diagnosis: {d['versions_in_freshness_phase']} versions made CURRENT in the run, "
          f"every {fmt(d['current_interval_s'], 'intervals')}; merges {d['merges']}; "
          f"max pending rows {d['pending_rows_max']}, max segments {d['segments_max']}")
    if d.get("link_rows"):
        print(f"  tail joins' link searches (whole run): {d['link_rows']} rows searched in the "
              f"big segment, {d['link_ms_a_row']} ms a row ({d['link_cpu_ms_a_row']} ms of CPU; "
              f"the merge lane's one thread at the ingest's --background_nice)")
    for i, rep in enumerate(d["replicas"]):
        print(f"  replica{i}: served {rep['versions_served']}, skipped {rep['versions_skipped']}; "
              f"load {fmt(rep['load_s'], 'loads')}; CURRENT -> serving "
              f"{fmt(rep['current_to_serving_s'], 'versions')}")
    for name in ("upsert", "delete"):
        b = d[f"{name}_breakdown"]
        pairs = "(row, replica) pairs"
        print(f"  {name}s: send -> CURRENT {fmt(b['send_to_current'], pairs)}")
        print(f"  {' ' * len(name)}  CURRENT -> replica serving "
              f"{fmt(b['current_to_replica_serving'], pairs)}")
        print(f"  {' ' * len(name)}  serving -> probe saw it {fmt(b['serving_to_probe_seen'], pairs)}")
    print("  (CURRENT's time is HISTORY's, taken after CURRENT's rename and fsync: a replica "
          "may serve a version a few ms 'before' it)")


if __name__ == "__main__":
    sys.exit(main())
