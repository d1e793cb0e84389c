#!/usr/bin/env python3
"""imagesearch-router over a sharded collection, all real binaries on
loopback (vector-only, so that no model is needed): 3 shards x 2 replicas,
and one unsharded replica of the same rows to compare with.

  1. GetInfo through the router: the collection, S, every shard available,
     the vector count of the whole collection;
  2. `exact` through the router equals the brute-force top-10, and at the
     same ef its recall@10 is at least the unsharded snapshot's;
  3. an id query is resolved through the shard that owns the id (its own
     row left out), and equals the unsharded replica's exact answer;
  4. a replica of a shard SIGKILLed while a client queries: no failed call
     (the router retries on another replica);
  5. every replica of one shard killed: UNAVAILABLE naming the shard, or,
     with allow_partial, an answer from the others naming it missing;
     restarted, the router recovers without a restart of its own;
  6. a replica made slow (a proxy delaying it by 1 s): the call that finds
     it slow is hedged to its sibling, which answers first, and the calls
     after it go to the sibling: every call stays fast, and few are hedged;
  7. the router's /metrics counts hedges, retries and failures per shard;
     GetThumbnail is answered by the shard that owns the id;
  8. dedup across shards: with exact search, the router's answer equals an
     unsharded replica's over the same rows, 40 of them duplicated;
  9. bearer tokens: to replicas that require one, and on the router itself;
 10. connections aged out every 0.3 s under load lose no call; stopping
     the router: SIGTERM under 4 clients' load exits 0 within the
     grace period, with no failure but refusals of calls that came too late;
     a call waiting on a hung (SIGSTOPped) replica is cancelled once the
     grace period is over, and the router exits 0 then, not at the call's
     deadline.

Usage: router_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import DelayProxy, Server, check, post_json, run  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402

BUILD, SRC = sys.argv[1:3]
T = e2e_lib.tree(BUILD, SRC)
ROUTER = os.path.join(BUILD, "services", "router", "imagesearch-router")
pb, pb_grpc = grpc_stubs.load(T.proto)
DIM = 24
N = 3000
S = 3


def vec(i):
    rnd = random.Random(50_000 + i)
    return [rnd.uniform(-1, 1) for _ in range(DIM)]


def cosine_distance(a, b):
    return e2e_lib.cosine_distance(a, b)


def stub_of(address):
    return pb_grpc.ImageSearchStub(grpc.insecure_channel(address))


def search(stub, values, **kw):
    return stub.Search(pb.SearchRequest(vector=pb.Vector(values=values), **kw), timeout=20)


def bad_shard_lists():
    """--shards mistakes that would shift the shards or list a replica twice: refused at once."""
    for shards, want in (("127.0.0.1:1;;127.0.0.1:2", "shard 1 is empty"),
                         ("127.0.0.1:1;127.0.0.1:2;", "shard 2 is empty"),
                         ("127.0.0.1:1,;127.0.0.1:2", "has an empty address"),
                         ("127.0.0.1:1;127.0.0.1:2,127.0.0.1:1", "127.0.0.1:1 is listed twice")):
        out = run(ROUTER, f"--shards={shards}", "--port=0", "--startup_timeout_s=5", ok=False)
        check(out.returncode == 2 and want in out.stderr and "waiting for the shards" not in out.stderr,
              (shards, out.returncode, out.stderr))
    print("0. --shards with an empty entry or an address twice: refused before it starts")


def main():
    bad_shard_lists()
    work = tempfile.mkdtemp(prefix="imagesearch_router_")
    procs = []
    try:
        npy = os.path.join(work, "rows.npy")
        run(T.snapshot, "synth", f"--out={npy}", f"--count={N}", f"--dim={DIM}", "--seed=7")
        ids = os.path.join(work, "ids.jsonl")
        with open(ids, "w") as f:
            for i in range(N):
                f.write(json.dumps({"id": f"r{i}"}) + "\n")
        coll, single = os.path.join(work, "coll"), os.path.join(work, "single")
        common = [f"--vectors={npy}", f"--ids={ids}", "--threads=1", "--m=8",
                  "--ef_construction=40"]
        run(T.snapshot, "build", f"--root={coll}", f"--shard_count={S}", "--collection=c", *common)
        run(T.snapshot, "build", f"--root={single}", *common)
        rows = e2e_lib.read_npy(npy, DIM)

        def replica(root, name):
            s = Server(T.query, [f"--snapshot_root={root}"], os.path.join(work, name + ".log"))
            procs.append(s)
            return s

        reps = {i: [replica(os.path.join(coll, f"shard-{i}-of-{S}"), f"q{i}{r}") for r in range(2)]
                for i in range(S)}
        one = replica(single, "single")
        # Shard 2's second replica is reached through a proxy that can be made slow.
        proxy = DelayProxy(reps[2][1].grpc_port, 0.0)
        targets = []
        for i in range(S):
            ports = [r.grpc_port for r in reps[i]]
            if i == 2:
                ports[1] = proxy.port
            targets.append(",".join(f"127.0.0.1:{p}" for p in ports))
        router = Server(ROUTER, [f"--shards={';'.join(targets)}", "--port=0", "--http_port=0",
                                 "--hedge_after_ms=30"],
                        os.path.join(work, "router.log"), pick_ports=False)
        procs.append(router)
        rs, single_stub = stub_of(router.grpc_address), stub_of(one.grpc_address)

        info = rs.GetInfo(pb.GetInfoRequest(), timeout=10)
        check(info.shard.collection == "c" and info.shard.count == S and info.vector_count == N
              and info.dim == DIM and len(info.router_shards) == S
              and all(s.available for s in info.router_shards), info)
        print(f"1. GetInfo: collection 'c', {S} shards available, {info.vector_count} vectors")

        for q in range(5):
            query = vec(q)
            got = [h.id for h in search(rs, query, exact=True).hits]
            truth = sorted(range(N), key=lambda r: cosine_distance(query, rows[r]))[:10]
            check(got == [f"r{r}" for r in truth], (got, truth))
        hits_router = hits_single = 0
        for q in range(60):
            query = vec(100 + q)
            truth = {h.id for h in search(single_stub, query, exact=True).hits}
            hits_router += len(truth & {h.id for h in search(rs, query, ef=10).hits})
            hits_single += len(truth & {h.id for h in search(single_stub, query, ef=10).hits})
        check(hits_router >= hits_single, (hits_router, hits_single))
        print(f"2. exact through the router == brute force; recall@10 at ef 10: router "
              f"{hits_router / 600:.3f} >= unsharded {hits_single / 600:.3f}")

        for rid in ("r5", "r77", "r2999"):
            got = rs.Search(pb.SearchRequest(id=rid, exact=True), timeout=20)
            want = single_stub.Search(pb.SearchRequest(id=rid, exact=True), timeout=20)
            check([h.id for h in got.hits] == [h.id for h in want.hits] and
                  rid not in [h.id for h in got.hits], (got, want))
            with_self = rs.Search(pb.SearchRequest(id=rid, exact=True, include_self=True), timeout=20)
            check(with_self.hits[0].id == rid, with_self)
        try:
            rs.Search(pb.SearchRequest(id="nope"), timeout=20)
            check(False, "an unknown id was answered")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND and
                  re.fullmatch(r"id 'nope' is not in snapshot v1 of shard [0-2] of 3", e.details()),
                  e.details())
        # imagesearch-loadgen through the router reports each shard's version.
        report = os.path.join(work, "loadgen.json")
        run(os.path.join(BUILD, "tools", "loadgen", "imagesearch-loadgen"),
            f"--target={router.grpc_address}", "--kind=vector", f"--vectors={npy}",
            "--duration_s=1", "--concurrency=1", f"--json_out={report}")
        with open(report) as f:
            seen = json.load(f)["versions"]
        check(list(seen) == [",".join(f"{i}:1" for i in range(S))], seen)
        print("3. id queries resolved through the owning shard == the unsharded exact answer; "
              "an unknown id is NOT_FOUND; loadgen sees each shard's version "
              f"({list(seen)[0]})")

        failures, done = [], threading.Event()
        calls = [0]

        def load():
            i = 0
            while not done.is_set() and i < 5000:
                try:
                    search(rs, vec(i % 200), ef=16)
                    calls[0] += 1
                except grpc.RpcError as e:
                    failures.append(e.code())
                i += 1
        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.5)
        reps[0][0].kill()
        time.sleep(1.0)
        done.set()
        t.join()
        check(calls[0] > 20 and not failures, (calls[0], failures))
        reps[0][0] = replica(os.path.join(coll, f"shard-0-of-{S}"), "q00b")
        print(f"4. a replica of shard 0 SIGKILLed under load: {calls[0]} calls, none failed")

        for r in reps[1]:
            r.kill()
        try:
            search(rs, vec(1))
            check(False, "answered without shard 1")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAVAILABLE and "shard 1 of 3" in e.details(),
                  e.details())
        partial = search(rs, vec(1), allow_partial=True)
        check(list(partial.missing_shards) == [1] and len(partial.hits) == 10 and
              sorted(partial.shard_versions.keys()) == [0, 2], partial)
        # The same ports again, so that the router's channels find them.
        for k, r in enumerate(reps[1]):
            port = r.grpc_port
            s = Server(T.query, [f"--snapshot_root={os.path.join(coll, f'shard-1-of-{S}')}",
                                 "--host=127.0.0.1", f"--port={port}", "--http_port=0"],
                       os.path.join(work, f"q1{k}b.log"), pick_ports=False)
            procs.append(s)
        def recovered():
            try:
                return not search(rs, vec(2)).missing_shards
            except grpc.RpcError:
                return False
        router.wait_until("the router answers from every shard again", recovered, 30)
        print("5. shard 1 down: UNAVAILABLE naming it; allow_partial answers from shards 0 and 2 "
              "and names 1 missing; restarted, the router recovers")

        proxy.delay_s = 1.0
        # The router sends each call to the replica that looks least loaded
        # (services/router/replica_load.h). The proxied replica is tried again
        # once its cost has decayed below its sibling's (at once, or within a
        # few seconds), that call is hedged to its sibling after 30 ms and
        # loses, and its cost (at least the 30 ms it took, decaying with a
        # time constant of 1 s) keeps the next calls off it for seconds.
        # Queries until a hedge was won, then 300 more; the counters are
        # those of this step (earlier steps may have hedged).
        before = rs.GetInfo(pb.GetInfoRequest(), timeout=10).router_shards[2]
        slow = f"127.0.0.1:{proxy.port}"
        slowest, queries, won_at, costs = 0.0, 0, None, {}
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up and (won_at is None or queries < won_at + 300):
            t0 = time.monotonic()
            search(rs, vec(300 + queries % 500), ef=16)
            slowest = max(slowest, time.monotonic() - t0)
            queries += 1
            if won_at is None and queries % 10 == 0:
                s2 = rs.GetInfo(pb.GetInfoRequest(), timeout=10).router_shards[2]
                if s2.hedges_won > before.hedges_won:
                    won_at = queries
                    # GetInfo shows why, once the cancelled call has ended:
                    # the slow replica's cost against its sibling's.
                    for _ in range(100):
                        if all(r.in_flight == 0 for r in s2.replicas if r.address == slow):
                            break
                        time.sleep(0.01)
                        s2 = rs.GetInfo(pb.GetInfoRequest(), timeout=10).router_shards[2]
                    costs = {r.address: r.cost_us for r in s2.replicas}
        shard2 = rs.GetInfo(pb.GetInfoRequest(), timeout=10).router_shards[2]
        sent = shard2.hedges_sent - before.hedges_sent
        won = shard2.hedges_won - before.hedges_won
        # Round-robin would send every other call to the slow replica (one
        # hedge in two queries); here it gets a probe every few seconds.
        check(won_at is not None and won > 0 and slowest < 0.7 and
              sent <= max(5, queries // 20), (won_at, queries, slowest, sent, won, shard2))
        check(len(costs) == 2 and slow in costs and
              costs[slow] > max(c for addr, c in costs.items() if addr != slow), costs)
        print(f"6. one replica of shard 2 delayed 1 s: {queries} queries, {sent} hedges sent, "
              f"{won} won, slowest call {slowest * 1000:.0f} ms; replica costs (GetInfo, us) "
              f"{costs}")

        # The same figures on the router's /metrics, per shard.
        text = urllib.request.urlopen(router.http_url + "/metrics", timeout=10).read().decode()

        def value(series):
            m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
            return float(m.group(1)) if m else 0.0
        won = value('imagesearch_shard_hedges_total{result="won",shard="2"}')
        sent = value('imagesearch_shard_hedges_total{result="sent",shard="2"}')
        retried = value('imagesearch_shard_retries_total{shard="1"}')
        unavailable = value('imagesearch_shard_requests_total{code="UNAVAILABLE",shard="1"}')
        check(won >= shard2.hedges_won and sent >= won and retried > 0 and unavailable > 0,
              (won, sent, retried, unavailable))
        # A vector-only collection has no thumbnails: the owning shard says so.
        try:
            rs.GetThumbnail(pb.GetThumbnailRequest(id="r5"), timeout=10)
            check(False, "a thumbnail was served from a vector-only collection")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND and "has no thumbnails" in e.details(),
                  e.details())
        print(f"7. /metrics per shard: shard 2 hedges {sent:.0f} sent, {won:.0f} won; shard 1 "
              f"retries {retried:.0f}; shard 1 UNAVAILABLE {unavailable:.0f}; GetThumbnail "
              "through the owning shard")

        # Dedup across shards: 40 rows copied under other ids ("z<i>" copies
        # "r<i>"); each pair lands on one shard or two by the id hash. With
        # exact search and dedup, the router collapses a pair that two shards
        # return as the unsharded replica does within its one snapshot.
        base_rows = rows[:400]
        dup_npy, dup_ids = os.path.join(work, "dup.npy"), os.path.join(work, "dup.jsonl")
        np.save(dup_npy, np.array(base_rows + base_rows[:40], dtype=np.float32))
        with open(dup_ids, "w") as f:
            for i in range(400):
                f.write(json.dumps({"id": f"r{i}"}) + "\n")
            for i in range(40):
                f.write(json.dumps({"id": f"z{i}"}) + "\n")
        dcoll, dsingle = os.path.join(work, "dcoll"), os.path.join(work, "dsingle")
        dcommon = [f"--vectors={dup_npy}", f"--ids={dup_ids}", "--threads=1", "--m=8"]
        run(T.snapshot, "build", f"--root={dcoll}", f"--shard_count={S}", "--collection=d", *dcommon)
        run(T.snapshot, "build", f"--root={dsingle}", *dcommon)
        dreps = [replica(os.path.join(dcoll, f"shard-{i}-of-{S}"), f"d{i}") for i in range(S)]
        done_single = replica(dsingle, "dsingle")
        drouter = Server(ROUTER, ["--shards=" + ";".join(r.grpc_address for r in dreps), "--port=0"],
                         os.path.join(work, "drouter.log"), wait=("grpc",), pick_ports=False)
        procs.append(drouter)
        dr, ds = stub_of(drouter.grpc_address), stub_of(done_single.grpc_address)
        for i in range(40):
            q = [x + 0.01 for x in base_rows[i]]
            got = search(dr, q, exact=True, dedup=0.999, top_k=5)
            want = search(ds, q, exact=True, dedup=0.999, top_k=5)
            check([h.id for h in got.hits] == [h.id for h in want.hits] and
                  f"z{i}" not in [h.id for h in got.hits] and got.collapsed >= 1,
                  (i, got, want))
            plain = search(dr, q, exact=True, top_k=5)
            check({f"r{i}", f"z{i}"} <= {h.id for h in plain.hits}, plain)
        print("8. dedup across shards: 40 duplicated rows, the router's exact+dedup answer equals "
              "the unsharded replica's (each copy collapsed, wherever the pair landed)")

        # Bearer tokens: shard replicas that require one (--auth_token_file),
        # reached with --shard_token_file; the router requiring its own.
        shard_token, router_token = os.path.join(work, "shard.token"), os.path.join(work, "router.token")
        open(shard_token, "w").write("shard-secret-1\n")
        open(router_token, "w").write("router-secret-2\n")
        locked = [Server(T.query, [f"--snapshot_root={os.path.join(dcoll, f'shard-{i}-of-{S}')}",
                                   f"--auth_token_file={shard_token}"],
                         os.path.join(work, f"locked{i}.log")) for i in range(S)]
        procs.extend(locked)
        guarded = Server(ROUTER, ["--shards=" + ";".join(r.grpc_address for r in locked),
                                  "--port=0", "--http_port=0", f"--shard_token_file={shard_token}",
                                  f"--auth_token_file={router_token}"],
                         os.path.join(work, "guarded.log"), pick_ports=False)
        procs.append(guarded)
        gs = stub_of(guarded.grpc_address)
        q = pb.SearchRequest(vector=pb.Vector(values=base_rows[3]), top_k=3, exact=True)
        try:
            gs.Search(q, timeout=10)
            check(False, "the router answered a call without its token")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAUTHENTICATED, e.details())
        got = gs.Search(q, timeout=10, metadata=[("authorization", "Bearer router-secret-2")])
        check(got.hits[0].id == "r3", got)
        try:
            urllib.request.urlopen(guarded.http_url + "/info", timeout=10)
            check(False, "HTTP /info answered without the token")
        except urllib.error.HTTPError as e:
            check(e.code == 401, e.code)
        check(urllib.request.urlopen(guarded.http_url + "/ping", timeout=10).status == 200, "ping")
        print("9. tokens: the router sends --shard_token_file to replicas that require one, and "
              "requires its own (gRPC UNAUTHENTICATED, HTTP 401 without it; /ping open)")

        # 10a. SIGTERM under load. Calls the router took finish; later ones
        # are refused (UNAVAILABLE: the listener is closed, which a client
        # retries elsewhere). gRPC 1.51 may also cancel a call that reaches
        # the server between the start of its shutdown and the client's
        # receipt of GOAWAY (deploy/README.md): CANCELLED, also retryable.
        proxy.delay_s = 0.0
        # A connection age of 0.3 s: the clients reconnect (GOAWAY) several
        # times during the load, which must lose no call either.
        stopping = Server(ROUTER, [f"--shards={';'.join(targets)}", "--port=0",
                                   "--max_connection_age_ms=300"],
                          os.path.join(work, "stopping.log"), wait=("grpc",), pick_ports=False)
        procs.append(stopping)
        st = stub_of(stopping.grpc_address)
        outcomes, outcomes_lock, stop_load = [], threading.Lock(), threading.Event()

        def client(c):
            for i in range(3000):
                if stop_load.is_set():
                    break
                try:
                    search(st, vec(1000 * c + i % 200), ef=16)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                with outcomes_lock:
                    outcomes.append((time.monotonic(), code))
        clients = [threading.Thread(target=client, args=(c,)) for c in range(4)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        term_at = time.monotonic()
        rc = stopping.stop(limit_s=20)
        exited_s = time.monotonic() - term_at
        stop_load.set()
        for c in clients:
            c.join()
        before = [code for t, code in outcomes if t < term_at]
        codes = {}
        for _, code in outcomes:
            codes[code] = codes.get(code, 0) + 1
        check(rc == 0 and exited_s < 5 + 2, (rc, exited_s))
        check(len(before) > 20 and set(before) == {"OK"}, (len(before), set(before)))
        check(set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes)
        print(f"10a. 4 clients, connections aged out every 0.3 s, then SIGTERM: exit 0 after "
              f"{exited_s:.2f} s; {len(before)} calls before it, all OK; outcomes in all: {codes}")

        # 10b. A hung replica: a call waits on it (no other replica of its
        # shard, no deadline for 60 s). The stop waits out --shutdown_grace_ms,
        # then cancels the shard call, and the router exits 0.
        hung = Server(ROUTER, ["--shards=" + ";".join(r.grpc_address for r in dreps), "--port=0",
                               "--shutdown_grace_ms=1000"],
                      os.path.join(work, "hung.log"), wait=("grpc",), pick_ports=False)
        procs.append(hung)
        hs = stub_of(hung.grpc_address)
        check(len(search(hs, base_rows[0], top_k=3).hits) == 3, "the router before the hang")
        os.kill(dreps[0].pid, signal.SIGSTOP)
        # kill(2) returns before every thread has stopped; a call sent in that
        # moment would still be answered. Wait until all of them show "T".
        def stopped():
            tasks = f"/proc/{dreps[0].pid}/task"
            return all(open(f"{tasks}/{t}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
                       for t in os.listdir(tasks))
        dreps[0].wait_until("shard 0's replica stopped", stopped, 10)
        waited = {}

        def hung_call():
            t0 = time.monotonic()
            try:
                hs.Search(pb.SearchRequest(vector=pb.Vector(values=base_rows[1])), timeout=60)
                waited["code"] = "OK"
            except grpc.RpcError as e:
                waited["code"] = e.code().name
            waited["s"] = time.monotonic() - t0
        caller = threading.Thread(target=hung_call)
        caller.start()
        try:
            time.sleep(0.5)
            check(caller.is_alive(), f"the call did not wait on the stopped replica: {waited}")
            term_at = time.monotonic()
            rc = hung.stop(limit_s=20)
            exited_s = time.monotonic() - term_at
            caller.join(20)
        finally:
            os.kill(dreps[0].pid, signal.SIGCONT)
        check(rc == 0 and 1.0 <= exited_s < 1.0 + 4, (rc, exited_s))
        check(waited.get("code") not in (None, "OK") and waited["s"] < 10, waited)
        print(f"10b. a call waiting on a SIGSTOPped replica: the router exits 0 {exited_s:.2f} s "
              f"after SIGTERM (grace 1 s); the call ended {waited['code']} after "
              f"{waited['s']:.2f} s, not at its 60 s deadline")

        # 10c. An HTTP request in flight at SIGTERM finishes within the grace
        # period, as a gRPC call does, and the router then exits 0.
        draining = Server(ROUTER, ["--shards=" + ";".join(r.grpc_address for r in dreps),
                                   "--port=0", "--http_port=0", "--shutdown_grace_ms=5000",
                                   "--max_body_mb=1"],
                          os.path.join(work, "draining.log"), wait=("grpc", "http"),
                          pick_ports=False)
        procs.append(draining)
        body = {"vector": {"values": base_rows[1]}, "top_k": 3}
        check(post_json(draining.http_port, body)[0] == 200, "the router's HTTP before the stop")
        big = {"vector": {"values": [0.5] * (300 << 10)}}  # 1.5 MB of JSON: over --max_body_mb=1.
        check(post_json(draining.http_port, big)[0] == 413, "--max_body_mb=1 on the router")
        os.kill(dreps[0].pid, signal.SIGSTOP)
        dreps[0].wait_until("shard 0's replica stopped", stopped, 10)
        answered = {}

        def http_call():
            answered["status"], answered["body"] = post_json(draining.http_port, body, timeout=30)
        def inflight():
            metrics = urllib.request.urlopen(draining.http_url + "/metrics", timeout=10).read()
            m = re.search(rb"^imagesearch_inflight_requests (\S+)", metrics, re.M)
            return m is not None and float(m.group(1)) >= 1
        caller = threading.Thread(target=http_call)
        caller.start()
        try:
            draining.wait_until("the request in flight in the router", inflight, 20)
            check(caller.is_alive(), f"the request did not wait on the stopped replica: {answered}")
            stopper = threading.Thread(target=lambda: answered.update(rc=draining.stop(limit_s=20)))
            stopper.start()
            # SIGTERM taken (the router logs it) while the request still waits on the shard.
            draining.wait_until("the router's stop", lambda: "stopping" in draining.log_tail(), 20)
            check(caller.is_alive(), f"the request ended before the shard was resumed: {answered}")
        finally:
            os.kill(dreps[0].pid, signal.SIGCONT)
        caller.join(20)
        stopper.join(30)
        check(answered.get("status") == 200 and len(answered["body"]["hits"]) == 3, answered)
        check(answered.get("rc") == 0, answered)
        print("10c. an HTTP request in flight at SIGTERM (its shard stopped for 1 s): answered 200 "
              "within the grace period, then the router exits 0")
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("router: PASS")


if __name__ == "__main__":
    main()
