#!/usr/bin/env python3
"""Soak at saturation: the real imagesearch-query with
default flags, on a real snapshot of Fashion-MNIST images indexed with the
default model, under closed-loop vector, id and image queries from three
imagesearch-loadgen processes at once (2 cores: CPU-bound), while 20 new
snapshot versions are published and promoted (`imagesearch-snapshot build
--shards --promote`, the distributed-indexing publish path; the service swaps
by watching CURRENT). The service's /proc/PID/{status,fd,maps} are sampled
every 0.2 s. It asserts:

  * no heap leak: the heap in use (imagesearch_malloc_in_use_bytes, glibc's
    own count, from /metrics) with the service idle after the run is within
    1% + 2 MiB of its value idle after the warm-up round, plus 1 MiB for each
    thread more than then (a thread gRPC starts under load and keeps holds a
    malloc cache, tcache, that counts as in use). ~200k calls and 20 swaps: a
    leak of 100 bytes a call, or of 1 MiB a swap, would show as 20 MiB.
  * resident growth is the heap's, and bounded: the service keeps freed heap
    memory for reuse (M_TRIM_THRESHOLD, libs/encoder/encoder.cc), so its RSS
    is the heap's high-water mark, and fragmentation under load (activations
    of tens of MB freed between long-lived allocations) can raise it by
    10-20 MiB with nothing leaked. So: idle RSS after minus before, less what
    the heap grew (imagesearch_malloc_system_bytes), is at most 8 MiB (no
    growth outside the heap: stacks, mappings, file pages); and the median
    RSS of the last 15% of the run (after the last swap, still under load)
    is within 20% of the median of the window right after warm-up (a guard
    against runaway fragmentation). Warm-up = the first 25% of the run, which
    also holds the first 4 of the 20 swaps. Medians, not single samples.
  * no fd leak: once the load generators exit, the fd count returns to the
    baseline taken after a short warm-up round of every query kind.
  * no mapping leak: a version's files are unmapped within the longest call
    deadline + 1.5 s of the next version going live (its last calls end by
    then), and after the run only the live version's files are mapped.
  * deadlines honoured: the load generators see only OK and
    DEADLINE_EXCEEDED (vector and id calls carry 400 ms, image calls 2 s);
    the service's own request-duration histogram (from arrival to answer)
    has no request above its 2.5 s bucket, i.e. none ran more than 500 ms
    past the longest deadline (the counts above 0.1-2.5 s are reported). (The
    load generator records latencies of OK calls only; a DEADLINE_EXCEEDED
    call ends on the client's own timer, so the server histogram is where
    an overrun would show.)
  * every kind got answers, and every version live for a second or more
    of the load answered.

Duration: SOAK_SECONDS (default 30, CI); 300 for the benchmark
(tools/bench/results/LOG.md, "Soak"). SOAK_JSON_OUT=FILE also writes the results.

Usage: soak_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_lib import Server, check, run  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
LOADGEN = os.path.join(BUILD, "tools", "loadgen", "imagesearch-loadgen")

SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
SWAPS = 20
DEADLINE_BUCKET = "2.5"   # Server histogram bucket no request may exceed.
SAMPLE_S = 0.2
WARMUP_S = 3
WARMUP_FRACTION = 0.25
RSS_TOLERANCE = 0.20      # Runaway guard; the leak check is the heap's.
HEAP_TOLERANCE = (0.01, 2 << 20)  # (relative, bytes) on the heap in use, idle,
HEAP_PER_NEW_THREAD = 1 << 20     # plus this for each thread more than before.
NON_HEAP_RSS_GROWTH = 8 << 20
# (kind, concurrency, deadline ms): enough calls in flight to keep both cores
# busy, few enough that snapshot loads still get CPU. Image queries run the
# model (a batch is not interruptible once it started), so their deadline is
# longer; an image call admitted just before its deadline may end one
# forward pass after it.
KINDS = [("vector", 4, 400), ("id", 4, 400), ("image", 2, 2000)]
TIMEOUT_MS = max(k[2] for k in KINDS)


def http_get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read().decode()


def live_version(port):
    try:
        return int(json.loads(http_get(port, "/info"))["snapshot_version"])
    except (OSError, ValueError):
        return None


def wait_version(port, want, what, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if live_version(port) == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: live service on v{live_version(port)}, expected v{want}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def mapped_versions(pid, root):
    """{version: mappings} of files under root/v<N>/ or in a segment version
    N wrote, root/segments/s<N>-* (deleted ones too). Every version here is
    published from scratch, so its one segment is the one it wrote."""
    pat = re.compile(re.escape(os.path.realpath(root)) + r"/(?:v|segments/s)(\d+)[/-]")
    out = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            m = pat.search(line)
            if m:
                v = int(m.group(1))
                out[v] = out.get(v, 0) + 1
    return out


def loadgen(target, kind, conc, timeout_ms, seconds, inputs, json_out):
    args = [LOADGEN, f"--target={target}", f"--kind={kind}", f"--concurrency={conc}",
            f"--timeout_ms={timeout_ms}", f"--json_out={json_out}"]
    args += [f"--duration_s={seconds}"] if seconds else ["--duration_s=60", "--max_requests=40"]
    args.append({"vector": f"--vectors={inputs['vectors']}", "id": f"--ids={inputs['ids']}",
                 "image": f"--images={inputs['images']}"}[kind])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_loadgens(procs):
    results = {}
    for kind, (p, json_out) in procs.items():
        out, err = p.communicate(timeout=max(120, 2 * SECONDS))
        check(p.returncode == 0, f"loadgen {kind} failed ({p.returncode}): {out}{err}")
        with open(json_out) as f:
            results[kind] = json.load(f)
    return results


def metric_values(text, name):
    """[(labels, value)] of one metric family's samples."""
    out = []
    for line in text.splitlines():
        m = re.match(re.escape(name) + r"(\{[^}]*\})? (\S+)$", line)
        if m:
            out.append((m.group(1) or "", float(m.group(2))))
    return out


def heap_bytes(port):
    """{"in_use", "system", "threads"}: the service's heap and thread count, from its /metrics."""
    text = http_get(port, "/metrics")
    out = {}
    for key, name in (("in_use", "imagesearch_malloc_in_use_bytes"),
                      ("system", "imagesearch_malloc_system_bytes"),
                      ("threads", "process_threads")):
        values = metric_values(text, name)
        check(len(values) == 1, f"/metrics has no {name}")
        out[key] = values[0][1]
    return out


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_soak_")
    server = None
    try:
        # A real snapshot made with the default model: 100 Fashion-MNIST
        # images encoded once into a shard; every version is published from
        # it (same vectors, thumbnails and model; new files, new mappings).
        corpus = os.path.join(work, "corpus")
        run("bash", os.path.join(SRC, "tools", "corpus", "fashion_mnist.sh"), corpus, "10")
        manifest = os.path.join(corpus, "manifest.jsonl")
        shards = os.path.join(work, "shards")
        run(INDEXER, f"--input={manifest}", f"--embeddings_out={shards}", f"--model={MODEL}",
            "--progress=none")
        root = os.path.join(work, "root")
        publish = [SNAPSHOT, "build", f"--root={root}", f"--shards={shards}", f"--model={MODEL}"]
        run(*publish)  # v1

        # Query inputs of each kind.
        rows = [json.loads(line) for line in open(manifest)]
        ids = os.path.join(work, "ids.txt")
        with open(ids, "w") as f:
            f.write("".join(r["id"] + "\n" for r in rows))
        images = os.path.join(work, "query_images")
        os.makedirs(images)
        for r in rows[::5]:  # 20 images, every class
            shutil.copy(os.path.join(corpus, r["path"]),
                        os.path.join(images, os.path.basename(r["path"])))
        inputs = {"vectors": os.path.join(shards, "shard-0-of-1", "vectors.npy"), "ids": ids,
                  "images": images}

        # The service, default flags (plus loopback ports it picks).
        server = Server(QUERY, [f"--snapshot_root={root}"], os.path.join(work, "query.log"))
        http = server.http_port
        target = server.grpc_address
        pid = server.pid
        wait_version(http, 1, "start")

        # Warm-up round of every kind at the soak's concurrency, then the
        # idle baselines. WARMUP_S of load, not a few calls: the heap in use
        # idle after 40 calls of each kind read 78.1-79.4 MiB from run to
        # run, and 79.7 MiB after any longer load.
        warm = {k: (loadgen(target, k, c, t, WARMUP_S, inputs, os.path.join(work, f"warm_{k}.json")),
                    os.path.join(work, f"warm_{k}.json")) for k, c, t in KINDS}
        finish_loadgens(warm)
        time.sleep(1.0)
        fd_base = fd_count(pid)
        rss_base = rss_kib(pid)
        heap_base = heap_bytes(http)

        # The soak.
        samples = []  # (t, rss KiB, fds, {version: mappings})
        swaps = []    # (t live, version)
        stop = threading.Event()
        errors = []
        t0 = time.monotonic()

        def sampler():
            while not stop.is_set():
                samples.append((time.monotonic() - t0, rss_kib(pid), fd_count(pid),
                                mapped_versions(pid, root)))
                stop.wait(SAMPLE_S)

        def swapper():
            try:
                for i in range(SWAPS):
                    due = SECONDS * (0.05 + 0.70 * i / (SWAPS - 1))
                    time.sleep(max(0.0, due - (time.monotonic() - t0)))
                    version = i + 2
                    out = run(*publish)
                    check(f"published v{version} " in out.stdout, out.stdout)
                    wait_version(http, version, f"swap {i + 1}")
                    swaps.append((time.monotonic() - t0, version))
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                errors.append(f"swapper: {e}")

        threads = [threading.Thread(target=sampler), threading.Thread(target=swapper)]
        procs = {k: (loadgen(target, k, c, t, SECONDS, inputs, os.path.join(work, f"{k}.json")),
                     os.path.join(work, f"{k}.json")) for k, c, t in KINDS}
        for t in threads:
            t.start()
        threads[1].join()
        results = finish_loadgens(procs)
        load_end = time.monotonic() - t0
        # Idle: calls drain, connections close.
        settle_end = time.monotonic() + 15
        while time.monotonic() < settle_end and fd_count(pid) > fd_base:
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        threads[0].join()
        check(not errors, "; ".join(errors))
        check(server.proc.poll() is None, "the service died")
        fd_end = fd_count(pid)
        rss_end = rss_kib(pid)
        heap_end = heap_bytes(http)
        maps_end = mapped_versions(pid, root)
        live = live_version(http)
        metrics = http_get(http, "/metrics")

        # --- Results.
        under_load = [s for s in samples if s[0] <= load_end]
        warm_t = SECONDS * WARMUP_FRACTION
        ref = [s[1] for s in under_load if warm_t <= s[0] < warm_t + 0.15 * SECONDS]
        tail = [s[1] for s in under_load if s[0] >= 0.85 * SECONDS]
        after_warm = [s[1] for s in under_load if s[0] >= warm_t]
        rss_ref, rss_tail = statistics.median(ref), statistics.median(tail)
        codes = {}
        for r in results.values():
            for c, n in r["codes"].items():
                codes[c] = codes.get(c, 0) + n
        grpc_search = [(lab, v) for lab, v in metric_values(
            metrics, "imagesearch_request_duration_seconds_bucket")
            if 'front="grpc"' in lab and 'method="Search"' in lab]
        bucket = {re.search(r'le="([^"]+)"', lab).group(1): v for lab, v in grpc_search}
        over_deadline = bucket["+Inf"] - bucket[DEADLINE_BUCKET]
        server_codes = {re.search(r'code="([^"]+)"', lab).group(1): int(v) for lab, v in
                        metric_values(metrics, "imagesearch_requests_total")
                        if 'front="grpc"' in lab and 'method="Search"' in lab}
        versions_seen = set()
        for r in results.values():
            versions_seen.update(int(v) for v in r["versions"])
        # A version is superseded when the next one is live; its last calls
        # end within TIMEOUT_MS, so by then + 1.5 s its files must be unmapped.
        live_since = {1: 0.0}
        live_since.update({v: t for t, v in swaps})
        late_maps = []
        for t, _, _, maps in samples:
            for v in maps:
                nxt = live_since.get(v + 1)
                if nxt is not None and t > nxt + TIMEOUT_MS / 1000 + 1.5:
                    late_maps.append((round(t, 2), v))
        summary = {
            "seconds": SECONDS, "load_seconds": round(load_end, 1), "swaps": len(swaps),
            "swap_times_s": [round(t, 1) for t, _ in swaps],
            "rss_mib": {"idle_before": round(rss_base / 1024, 1),
                        "after_warmup_median": round(rss_ref / 1024, 1),
                        "last_15pct_median": round(rss_tail / 1024, 1),
                        "max_after_warmup": round(max(after_warm) / 1024, 1),
                        "max": round(max(s[1] for s in samples) / 1024, 1),
                        "idle_after": round(rss_end / 1024, 1),
                        "drift": round(rss_tail / rss_ref - 1, 4)},
            "heap_mib": {"in_use_idle_before": round(heap_base["in_use"] / 2**20, 2),
                         "in_use_idle_after": round(heap_end["in_use"] / 2**20, 2),
                         "system_idle_before": round(heap_base["system"] / 2**20, 1),
                         "system_idle_after": round(heap_end["system"] / 2**20, 1),
                         "threads_idle_before": int(heap_base["threads"]),
                         "threads_idle_after": int(heap_end["threads"])},
            "fds": {"baseline": fd_base, "max": max(s[2] for s in samples), "end": fd_end},
            "mapped_versions": {"max_at_once": max(len(s[3]) for s in samples),
                                "end": {f"v{v}": n for v, n in sorted(maps_end.items())},
                                "late": late_maps[:10]},
            "live_version": live, "versions_answering": len(versions_seen),
            "calls": {k: r["calls"] for k, r in results.items()},
            "qps": {k: round(r["qps"], 1) for k, r in results.items()},
            "latency_ms": {k: {p: round(r["latency_ms"][p], 1) for p in ("p50", "p99", "max")}
                           for k, r in results.items()},
            "codes": codes, "server_codes": server_codes,
            "server_requests_over_deadline_bucket": int(over_deadline),
            "server_requests_over_s": {le: int(bucket["+Inf"] - bucket[le])
                                       for le in ("0.1", "0.25", "0.5", "1", "2.5")},
        }
        print(json.dumps(summary, indent=1))
        if os.environ.get("SOAK_JSON_OUT"):
            with open(os.environ["SOAK_JSON_OUT"], "w") as f:
                json.dump(summary, f, indent=1)

        # --- Assertions.
        check(len(swaps) == SWAPS and live == SWAPS + 1, f"{len(swaps)} swaps, live v{live}")
        for k, r in results.items():
            check(r["ok"] > 0, f"no {k} query answered")
        check(set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, f"unexpected errors: {codes}")
        # Every version live for a second or more of the load answered calls.
        expected = {v for v, t in live_since.items() if t < load_end - 1.0}
        check(expected <= versions_seen,
              f"answers came from {sorted(versions_seen)}; live under load: {sorted(expected)}")
        rel, slack = HEAP_TOLERANCE
        new_threads = max(0, int(heap_end["threads"] - heap_base["threads"]))
        check(heap_end["in_use"] <= heap_base["in_use"] * (1 + rel) + slack
              + new_threads * HEAP_PER_NEW_THREAD,
              f"heap leak: {heap_base['in_use'] / 2**20:.1f} MiB in use idle before the run, "
              f"{heap_end['in_use'] / 2**20:.1f} MiB idle after ({new_threads} threads more)")
        non_heap = (rss_end - rss_base) * 1024 - (heap_end["system"] - heap_base["system"])
        check(non_heap <= NON_HEAP_RSS_GROWTH,
              f"RSS grew {(rss_end - rss_base) / 1024:.1f} MiB idle, the heap "
              f"{(heap_end['system'] - heap_base['system']) / 2**20:.1f} MiB: "
              f"{non_heap / 2**20:.1f} MiB outside the heap")
        check(rss_tail / rss_ref - 1 <= RSS_TOLERANCE,
              f"RSS ran away: {rss_ref // 1024} MiB after warm-up, {rss_tail // 1024} MiB at the end")
        check(fd_end <= fd_base, f"fd leak: {fd_base} before, {fd_end} after")
        check(set(maps_end) == {live}, f"mapped after the run: {maps_end}, live v{live}")
        check(not late_maps, f"old versions still mapped (t, version): {late_maps[:10]}")
        check(over_deadline == 0,
              f"{int(over_deadline)} requests ran past {DEADLINE_BUCKET} s (deadline {TIMEOUT_MS} ms)")
        server.stop(limit_s=60)
    except Exception:
        log = os.path.join(work, "query.log")
        if os.path.exists(log):
            sys.stderr.write("--- query.log (tail)\n" + open(log).read()[-4000:])
        raise
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"soak ({SECONDS:.0f} s, {SWAPS} swaps): passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
