#!/usr/bin/env python3
"""imagesearch-router against one unsharded replica of the same rows, side by
side on this machine (everything on loopback, sharing its cores):

  recall    recall@10 of the router over S shards and of the unsharded
            replica at the same ef, against the exact top-10 (`exact` on the
            unsharded replica), on held-out queries;
  overhead  one client, one query at a time, alternating rounds: p50 and p99
            latency through the router and straight to the unsharded replica,
            and the router's own CPU per query (/proc/<pid>/stat); taken twice:
            with this script's Python client, and with imagesearch-loadgen
            (C++, --concurrency=1). The Python client spends 100-350 us of
            CPU a call (printed as "client CPU"), more the longer it waits, on
            the same 2 cores as the router and the 4 shard replicas, so its
            figure holds much of the client's own cost; loadgen spends far
            less, so its figure is nearer what a client on another machine
            would see. With loadgen the CPU a query of the unsharded replica,
            and of the shard replicas together, is printed too (on shared
            cores a router query waits for all of it), and shard 0's replica
            called alone, for its CPU a call outside the fan-out;
  clients   C concurrent clients (threads, each its own channel) sending
            the queries, for each C in --clients: QPS, p50 and p99 through
            the router and straight to the unsharded replica (no delay), and
            p99 through the tail's hedged router with the delay below against
            its p99 with none;
  tail      shard 0 has two replicas. The routers of the sections above
            reach both directly; two more reach the second through a proxy
            that can delay every chunk (this kernel has no tc netem; the proxy
            is Python, so it stays out of the overhead figures). With the
            proxy delaying --delay_ms, p50/p99 through the router with hedging
            (the default: after the shard's observed p95) and through one with
            --hedge_after_ms=-1, against the hedged one's p99 with no delay;
            --tail_rounds rounds of the no-delay and hedged windows, and the
            goal read on the median round's ratio.

Goals: router p50 <= unsharded p50 + 0.5 ms at 1 client; p99 with
hedging within 2x of the no-delay p99; router recall >= unsharded recall.

Usage: tools/bench/router_bench.py [--build=build] [--count=100000] [--dim=128] [--vectors=X.npy]
         [--shards=4] [--queries=1000] [--ef=32] [--delay_ms=20] [--workdir=/tmp/router_bench]
Roots are cached in --workdir (rebuilt when missing).
"""
import argparse
import json
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import DelayProxy, Server, run  # noqa: E402
import grpc  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--build", default="build")
ap.add_argument("--vectors", default="",
                help="a float32 .npy of real rows (e.g. embeddings) instead of synthetic ones: "
                     "the last --queries rows are the held-out queries, the rest indexed")
ap.add_argument("--count", type=int, default=100_000)
ap.add_argument("--dim", type=int, default=128)
ap.add_argument("--shards", type=int, default=4)
ap.add_argument("--queries", type=int, default=1000)
ap.add_argument("--ef", type=int, default=32)
ap.add_argument("--delay_ms", type=float, default=20)
ap.add_argument("--rounds", type=int, default=4)
ap.add_argument("--tail_queries", type=int, default=300,
                help="queries per router in the tail phase (a slow call takes 2x the delay)")
ap.add_argument("--tail_rounds", type=int, default=5,
                help="rounds of the tail phase's no-delay and hedged windows; the goal's ratio "
                     "is the median round's")
ap.add_argument("--clients", default="4,8",
                help="concurrent clients for the 'clients' section (comma-separated; empty: skip)")
ap.add_argument("--workdir", default="/tmp/router_bench")
ap.add_argument("--replica_flags", default="",
                help="extra flags for every query replica, space-separated (A/B checks)")
ap.add_argument("--router_flags", default="",
                help="extra flags for both routers, space-separated (A/B checks)")
a = ap.parse_args()
T = e2e_lib.tree(a.build, SRC)
ROUTER = os.path.join(a.build, "services", "router", "imagesearch-router")
LOADGEN = os.path.join(a.build, "tools", "loadgen", "imagesearch-loadgen")
pb, pb_grpc = grpc_stubs.load(T.proto)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split_npy(path, first, last):
    """A float32 .npy of N rows as two: its first N - --queries rows, and the rest."""
    with open(path, "rb") as f:
        raw = f.read()
    body = raw[10 + int.from_bytes(raw[8:10], "little"):]
    row = 4 * a.dim
    n = len(body) // row
    for out, part in ((first, body[:(n - a.queries) * row]), (last, body[(n - a.queries) * row:])):
        head = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (
            len(part) // row, a.dim)
        head += " " * (63 - (10 + len(head)) % 64) + "\n"
        with open(out, "wb") as f:
            f.write(b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head.encode())
            f.write(part)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    os.makedirs(a.workdir, exist_ok=True)
    if a.vectors:
        with open(a.vectors, "rb") as f:
            head = f.read(128).decode("latin1")
        a.dim = int(head.split("'shape': (")[1].split(")")[0].split(",")[1])
        tag = f"{os.path.basename(a.vectors).rsplit('.', 1)[0]}-d{a.dim}-s{a.shards}"
    else:
        tag = f"n{a.count}-d{a.dim}-s{a.shards}"
    data, queries = f"{a.workdir}/{tag}.npy", f"{a.workdir}/{tag}-q{a.queries}.npy"
    single, coll = f"{a.workdir}/{tag}-single", f"{a.workdir}/{tag}-coll"
    if not os.path.exists(f"{single}/CURRENT") or not os.path.exists(
            f"{coll}/shard-{a.shards - 1}-of-{a.shards}/CURRENT") or not os.path.exists(queries):
        for d in (single, coll):
            run("rm", "-rf", d)
        # The last --queries rows are held out: of --vectors, or of one synthetic
        # draw of count + queries rows.
        both = a.vectors or f"{a.workdir}/{tag}-all.npy"
        if not a.vectors:
            run(T.snapshot, "synth", f"--out={both}", f"--count={a.count + a.queries}",
                f"--dim={a.dim}", "--seed=21")
        split_npy(both, data, queries)
        if not a.vectors:
            os.remove(both)
        t0 = time.monotonic()
        run(T.snapshot, "build", f"--root={single}", f"--vectors={data}")
        t1 = time.monotonic()
        run(T.snapshot, "build", f"--root={coll}", f"--vectors={data}",
            f"--shard_count={a.shards}", "--collection=bench")
        print(f"built: unsharded {t1 - t0:.1f} s, {a.shards} shards {time.monotonic() - t1:.1f} s")
    qs = e2e_lib.read_npy(queries, a.dim)
    logs = os.path.join(a.workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    procs = []
    try:
        def serve(root, name):
            s = Server(T.query, [f"--snapshot_root={root}", *a.replica_flags.split()],
                       f"{logs}/{name}.log")
            procs.append(s)
            return s
        one = serve(single, "single")
        reps = [[serve(f"{coll}/shard-{i}-of-{a.shards}", f"shard{i}")] for i in range(a.shards)]
        reps[0].append(serve(f"{coll}/shard-0-of-{a.shards}", "shard0b"))
        proxy = DelayProxy(reps[0][1].grpc_port, 0.0)
        # Routers for the overhead and clients sections reach both of shard 0's
        # replicas directly; those of the tail section reach its second one
        # through the proxy (a Python process forwarding every chunk: with no
        # delay it still costs CPU and time on the shared cores, so it stays
        # out of the overhead figures).
        rest = [f"127.0.0.1:{r[0].grpc_port}" for r in reps[1:]]
        direct = [f"127.0.0.1:{reps[0][0].grpc_port},127.0.0.1:{reps[0][1].grpc_port}"] + rest
        proxied = [f"127.0.0.1:{reps[0][0].grpc_port},127.0.0.1:{proxy.port}"] + rest

        def router(name, targets, *flags):
            r = Server(ROUTER, [f"--shards={';'.join(targets)}", "--port=0", *flags,
                                *a.router_flags.split()],
                       f"{logs}/{name}.log", wait=("grpc",), pick_ports=False)
            procs.append(r)
            return r
        hedged = router("router", direct)
        plain = router("router_nohedge", direct, "--hedge_after_ms=-1")
        tail_hedged = router("router_tail", proxied)
        tail_plain = router("router_tail_nohedge", proxied, "--hedge_after_ms=-1")
        servers = {"single": one, "router": hedged, "plain": plain, "tail": tail_hedged,
                   "tail_plain": tail_plain, "shard0": reps[0][0]}
        stubs = {name: pb_grpc.ImageSearchStub(grpc.insecure_channel(s.grpc_address))
                 for name, s in servers.items()}

        def ask(stub, q, **kw):
            return stub.Search(pb.SearchRequest(vector=pb.Vector(values=q), top_k=10, **kw),
                               timeout=30)

        truth = [{h.id for h in ask(stubs["single"], q, exact=True).hits} for q in qs]
        recall = {}
        for name in ("single", "router"):
            got = sum(len(truth[i] & {h.id for h in ask(stubs[name], q, ef=a.ef).hits})
                      for i, q in enumerate(qs))
            recall[name] = got / (10 * len(qs))
        print(f"recall@10 at ef {a.ef}: router over {a.shards} shards {recall['router']:.4f}, "
              f"unsharded {recall['single']:.4f}")

        def timed(name, pid=None):
            """Latencies, the server's CPU a query (pid's) and this client's (all its threads)."""
            lat = []
            cpu0, mine0 = (cpu_seconds(pid) if pid else 0), time.process_time()
            for q in qs:
                t0 = time.perf_counter()
                ask(stubs[name], q, ef=a.ef)
                lat.append(time.perf_counter() - t0)
            cpu = (cpu_seconds(pid) - cpu0) / len(qs) if pid else 0
            return lat, cpu, (time.process_time() - mine0) / len(qs)

        lat = {"single": [], "router": [], "plain": []}
        cpu = {"router": [], "plain": []}
        client = {"single": [], "router": [], "plain": []}
        for _ in range(a.rounds):
            r, _, m = timed("single")
            lat["single"] += r
            client["single"].append(m)
            for name, proc in (("router", hedged), ("plain", plain)):
                r, c, m = timed(name, proc.pid)
                lat[name] += r
                cpu[name].append(c)
                client[name].append(m)
        p = {n: (pct(v, 50) * 1e3, pct(v, 99) * 1e3) for n, v in lat.items()}
        mine = {n: statistics.median(v) * 1e6 for n, v in client.items()}
        print(f"1 client, ef {a.ef}, {a.rounds} alternating rounds of {len(qs)} queries:")
        print(f"  unsharded replica  p50 {p['single'][0]:.3f} ms  p99 {p['single'][1]:.3f} ms  "
              f"(client CPU {mine['single']:.0f} us a query)")
        for name, what in (("router", "router"), ("plain", "router, no hedging")):
            print(f"  {what:18} p50 {p[name][0]:.3f} ms  p99 {p[name][1]:.3f} ms  "
                  f"(router CPU {statistics.median(cpu[name]) * 1e6:.0f} us, "
                  f"client CPU {mine[name]:.0f} us a query)")
        print(f"  router p50 - unsharded p50: {p['router'][0] - p['single'][0]:+.3f} ms "
              f"(goal <= +0.5 ms)")

        shard_pids = [r.pid for rs in reps for r in rs]

        def loadgen(name, pid, others=()):
            """p50, p99, pid's CPU a query and the CPU of others (summed) a query."""
            out = f"{a.workdir}/loadgen-{name}.json"
            cpu0 = cpu_seconds(pid)
            others0 = sum(cpu_seconds(o) for o in others)
            run(LOADGEN, f"--target={servers[name].grpc_address}", f"--vectors={queries}",
                "--concurrency=1", "--duration_s=3", "--warmup_s=0.5", f"--ef={a.ef}",
                f"--json_out={out}")
            with open(out) as f:
                r = json.load(f)
            n = max(1, r["calls"])
            return (r["latency_ms"]["p50"], r["latency_ms"]["p99"], (cpu_seconds(pid) - cpu0) / n,
                    (sum(cpu_seconds(o) for o in others) - others0) / n)

        lg = {"single": [], "shard0": [], "router": [], "plain": []}
        for _ in range(a.rounds):
            lg["single"].append(loadgen("single", one.pid))
            lg["shard0"].append(loadgen("shard0", reps[0][0].pid))
            for name, proc in (("router", hedged), ("plain", plain)):
                lg[name].append(loadgen(name, proc.pid, shard_pids))
        lp = {n: tuple(statistics.median(x[k] for x in v) for k in range(4))
              for n, v in lg.items()}
        # The CPU a query of every process that serves it, besides the client:
        # on these 2 shared cores, the router's query costs the sum.
        print(f"1 client, imagesearch-loadgen --concurrency=1, {a.rounds} alternating rounds of "
              f"3 s (medians of the rounds):")
        print(f"  unsharded replica  p50 {lp['single'][0]:.3f} ms  p99 {lp['single'][1]:.3f} ms  "
              f"(replica CPU {lp['single'][2] * 1e6:.0f} us a query)")
        print(f"  shard 0's replica, called alone  p50 {lp['shard0'][0]:.3f} ms  "
              f"(replica CPU {lp['shard0'][2] * 1e6:.0f} us a call)")
        for name, what in (("router", "router"), ("plain", "router, no hedging")):
            print(f"  {what:18} p50 {lp[name][0]:.3f} ms  p99 {lp[name][1]:.3f} ms  "
                  f"(router CPU {lp[name][2] * 1e6:.0f} us, shard replicas "
                  f"{lp[name][3] * 1e6:.0f} us together, "
                  f"{lp[name][3] * 1e6 / a.shards:.0f} us a shard, a query)")
        print(f"  router p50 - unsharded p50: {lp['router'][0] - lp['single'][0]:+.3f} ms "
              f"(goal <= +0.5 ms)")

        def concurrent(name, clients):
            """Latencies and QPS of `clients` threads sending qs once between them."""
            chans = [grpc.insecure_channel(servers[name].grpc_address) for _ in range(clients)]
            cstubs = [pb_grpc.ImageSearchStub(ch) for ch in chans]
            per = [[] for _ in range(clients)]

            def worker(k):
                for q in qs[k::clients]:
                    t0 = time.perf_counter()
                    ask(cstubs[k], q, ef=a.ef)
                    per[k].append(time.perf_counter() - t0)
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            for ch in chans:
                ch.close()
            ls = [x for xs in per for x in xs]
            return pct(ls, 50) * 1e3, pct(ls, 99) * 1e3, len(ls) / wall

        def tail_run(name, n):
            ls = []
            for q in qs[:n]:
                t0 = time.perf_counter()
                ask(stubs[name], q, ef=a.ef)
                ls.append(time.perf_counter() - t0)
            return pct(ls, 50) * 1e3, pct(ls, 99) * 1e3

        # --tail_rounds rounds, each the no-delay p99 (the same router and path,
        # through the proxy passing chunks on at once; more queries than the
        # delayed window's, as a p99 of few queries is noisy) and then the
        # hedged router's p99 with the delay; the goal's figure is the median
        # of the rounds' ratios, since one ratio of two p99s on these shared
        # cores moves by more than a change does.
        rounds = []
        for _ in range(max(1, a.tail_rounds)):
            proxy.delay_s = 0
            nd = tail_run("tail", min(len(qs), 3 * a.tail_queries))
            proxy.delay_s = a.delay_ms / 1000
            rounds.append((nd, tail_run("tail", a.tail_queries)))
        ratios = [r[1][1] / r[0][1] for r in rounds]
        mid = sorted(range(len(rounds)), key=lambda i: ratios[i])[len(rounds) // 2]
        nodelay, hedged = rounds[mid]
        tail = {"tail": hedged, "tail_plain": tail_run("tail_plain", a.tail_queries)}
        base = nodelay[1]
        print(f"one of shard 0's two replicas behind a proxy, delayed {a.delay_ms:g} ms a chunk; "
              f"{len(rounds)} rounds of {min(len(qs), 3 * a.tail_queries)} queries without the "
              f"delay and {a.tail_queries} with it:")
        for i, (nd, hd) in enumerate(rounds):
            print(f"  round {i + 1}: no-delay p99 {nd[1]:.3f} ms (p50 {nd[0]:.3f}), hedged p99 "
                  f"{hd[1]:.3f} ms (p50 {hd[0]:.3f}): {ratios[i]:.2f}x")
        print(f"  hedged (default)   p50 {tail['tail'][0]:.3f} ms  p99 {tail['tail'][1]:.3f} ms"
              f"  = {ratios[mid]:.2f}x the no-delay p99, the median round (goal <= 2x)")
        print(f"  no hedging         p50 {tail['tail_plain'][0]:.3f} ms  "
              f"p99 {tail['tail_plain'][1]:.3f} ms  = {tail['tail_plain'][1] / base:.2f}x")
        info = stubs["tail"].GetInfo(pb.GetInfoRequest(), timeout=10)
        s0 = info.router_shards[0]
        print(f"  shard 0 through the hedged router: {s0.hedges_sent} hedges sent, "
              f"{s0.hedges_won} won, p95 {s0.p95_us} us")
        proxy.delay_s = 0

        many = {}
        for c in [int(x) for x in a.clients.split(",") if x]:
            many[c] = {n: concurrent(n, c) for n in ("single", "router")}
            print(f"{c} clients, ef {a.ef}, {len(qs)} queries:")
            for n, what in (("single", "unsharded replica"), ("router", "router")):
                m = many[c][n]
                print(f"  {what:18} p50 {m[0]:.3f} ms  p99 {m[1]:.3f} ms  {m[2]:.0f} QPS")

        for c in many:
            proxy.delay_s = 0
            m0 = concurrent("tail", c)
            proxy.delay_s = a.delay_ms / 1000
            m = concurrent("tail", c)
            many[c]["router_delayed"] = m
            print(f"{c} clients, one of shard 0's replicas behind the proxy, delayed "
                  f"{a.delay_ms:g} ms: hedged router p99 {m[1]:.3f} ms = {m[1] / m0[1]:.2f}x "
                  f"its no-delay p99 ({m0[1]:.3f} ms)")
        proxy.delay_s = 0
        print(json.dumps({"recall": recall, "p50_p99_ms": p, "loadgen_p50_p99_ms_cpu_s_shards_cpu_s": lp, "router_cpu_us": {n: statistics.median(c) * 1e6 for n, c in cpu.items()},
                          "tail_ms": tail, "tail_nodelay_ms": nodelay, "tail_ratios": ratios,
                          "clients_p50_p99_qps": many}))
    finally:
        for s in procs:
            s.kill()


if __name__ == "__main__":
    main()
