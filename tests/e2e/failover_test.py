#!/usr/bin/env python3
"""Failover through the local scale-out (deploy/local/ctl.sh): 3 replicas
behind nginx, each serving a snapshot indexed with the default model (so a
replica takes seconds to load and warm it before it can answer). Two load
generators run side by side for the whole schedule:

  retrying  3 clients, id queries, the documented retry policy
            (deploy/local/grpc_service_config.json)
  plain     3 clients, image queries (through the model), no retries

and during the load:
  SIGKILL replica 0, restart it; restart replica 1 gracefully (SIGTERM);
  SIGKILL replicas 1 and 2 at once, restart both; publish v2.
Every process listens on ports it picks (nginx's picked by ctl.sh); a
restarted replica comes back on new ones, and ctl.sh reloads nginx with them.

Asserts: no failed call for the retrying client; for the plain client, no
failed call but those that could have been in flight on a SIGKILLed replica
(at most its concurrency per replica SIGKILLed; the count is reported); both saw
v1 and v2; every replica answers from v2 within one poll interval plus its
load time (plus slack on a 2-core machine).

Usage: failover_test.py BUILD_DIR SOURCE_DIR MODEL [--seconds=N]   (CI: the schedule over 40 s)
"""
import json
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_lib import check  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
SECONDS = 40.0  # Time the schedule's steps are spread over; the load runs until they are done.
for arg in sys.argv[4:]:
    if arg.startswith("--seconds="):
        SECONDS = float(arg.split("=", 1)[1])
LOAD_LIMIT_S = SECONDS + 240  # The load generators' own bound; they are stopped (SIGINT) sooner.
CTL = os.path.join(SRC, "deploy", "local", "ctl.sh")
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
LOADGEN = os.path.join(BUILD, "tools", "loadgen", "imagesearch-loadgen")
IMAGES = os.path.join(SRC, "tests", "data", "images")
# Images every replica decodes: real photos, small enough to keep a 2-core
# machine's load moderate.
QUERY_IMAGES = ["coffee.png", "rocket.jpg", "chelsea.jpg", "astronaut.png"]
POLL_S = 0.5  # the replicas' default --poll_ms
# How long after a SIGKILL a call that was in flight on that replica may
# still fail: nginx sees the reset at once; 2 s covers a starved 2-core machine.
KILL_WINDOW_S = 2.0
CLIENTS = 3


def ports_of(path):
    """{"grpc": N, "http": M} from a port file of ctl.sh's RUN_DIR."""
    with open(path) as f:
        return json.load(f)


def version_of(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=1) as r:
            return int(json.load(r)["snapshot_version"])
    except (OSError, ValueError, KeyError):
        return None


def index(root, source, *extra):
    out = subprocess.run([INDEXER, f"--input={source}", f"--root={root}", f"--model={MODEL}",
                          "--max_reject_ratio=0.5", "--progress=none", "--ef_construction=64",
                          *extra], capture_output=True, text=True)
    check(out.returncode == 0, f"indexer failed: {out.stderr}")
    return out.stdout.strip()


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_failover_")
    # Port 0: nginx on ports ctl.sh picks, the replicas on ports they pick;
    # each is read back from its port file in RUN_DIR.
    env = dict(os.environ, RUN_DIR=os.path.join(work, "run"), BUILD_DIR=BUILD, REPLICAS="3",
               SNAPSHOT_ROOT=os.path.join(work, "root"), GRPC_PORT="0", HTTP_PORT="0")

    def ctl(*a):
        return subprocess.run(["bash", CTL, *a], env=env, check=True, capture_output=True,
                              text=True)

    loads = []
    try:
        print(index(env["SNAPSHOT_ROOT"], IMAGES))
        queries = os.path.join(work, "queries")
        os.makedirs(queries)
        for name in QUERY_IMAGES:
            shutil.copy(os.path.join(IMAGES, name), queries)
        added = os.path.join(work, "added")
        os.makedirs(added)
        shutil.copy(os.path.join(IMAGES, "coffee.png"), os.path.join(added, "coffee_again.png"))
        with open(os.path.join(work, "ids.txt"), "w") as f:
            f.write("coffee.png\nrocket.jpg\nchelsea.jpg\n")
        # An `up` that cannot finish (nginx's fixed HTTP port taken) stops the
        # replica it started and says why; nothing is left to `down`.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            failed = subprocess.run(["bash", CTL, "up"], capture_output=True, text=True,
                                    env=dict(env, REPLICAS="1",
                                             HTTP_PORT=str(taken.getsockname()[1])))
        check(failed.returncode != 0 and "nginx did not start" in failed.stderr
              and "stopped the replicas it had started" in failed.stderr, failed.stderr)
        pidf = os.path.join(env["RUN_DIR"], "replica-0.pid")
        check(not os.path.exists(pidf) or not os.path.exists(f"/proc/{open(pidf).read().strip()}"),
              "a failed up left its replica running")
        print(ctl("up").stdout.strip())
        nginx = ports_of(os.path.join(env["RUN_DIR"], "nginx.ports"))

        # HTTP goes through nginx too: the page and a query.
        http = f"http://127.0.0.1:{nginx['http']}"
        check(b"<html" in urllib.request.urlopen(http + "/", timeout=5).read(), "GET / via nginx")
        req = urllib.request.Request(http + "/invocations", data=b'{"id":"coffee.png","top_k":3}',
                                     headers={"Content-Type": "application/json"})
        check(len(json.load(urllib.request.urlopen(req, timeout=5))["hits"]) == 3, "HTTP via nginx")

        common = [f"--target=127.0.0.1:{nginx['grpc']}", f"--concurrency={CLIENTS}",
                  f"--channels={CLIENTS}", f"--duration_s={LOAD_LIMIT_S}", "--timeout_ms=20000"]
        retry_cfg = os.path.join(SRC, "deploy", "local", "grpc_service_config.json")
        runs = {
            "retrying": ["--kind=id", f"--ids={os.path.join(work, 'ids.txt')}",
                         f"--service_config={retry_cfg}"],
            "plain": ["--kind=image", f"--images={queries}"],
        }
        t0 = time.monotonic()  # The load generators' clocks start within a few ms of this.
        for name, args in runs.items():
            out = os.path.join(work, f"{name}.json")
            loads.append((name, out, subprocess.Popen(
                [LOADGEN, *common, *args, f"--json_out={out}"], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)))

        def at(frac):
            time.sleep(max(0.0, t0 + frac * SECONDS - time.monotonic()))

        def log(what):
            print(f"  {time.monotonic() - t0:5.1f}s {what}", flush=True)

        sigkills = []  # When each SIGKILL was sent, in seconds since t0.
        killed = 0  # Replicas SIGKILLed in all.
        at(0.10)
        sigkills.append(time.monotonic() - t0)
        killed += 1
        ctl("kill", "0")
        ctl("start", "0")
        log("replica 0: SIGKILL, restarted (serving again)")
        at(0.30)
        ctl("restart", "1")
        log("replica 1: SIGTERM (drained), restarted (serving again)")
        at(0.45)
        sigkills.append(time.monotonic() - t0)
        killed += 2
        kills = [subprocess.Popen(["bash", CTL, "kill", str(i)], env=env) for i in (1, 2)]
        check(all(k.wait() == 0 for k in kills), "ctl kill 1/2 failed")
        starts = [subprocess.Popen(["bash", CTL, "start", str(i)], env=env,
                                   stdout=subprocess.DEVNULL) for i in (1, 2)]
        check(all(s.wait() == 0 for s in starts), "ctl start 1/2 failed")
        log("replicas 1 and 2: SIGKILL together, both restarted (serving again)")
        at(0.65)
        print("  " + index(env["SNAPSHOT_ROOT"], added, "--base=v1"))
        published = time.monotonic()
        replica_http = [ports_of(os.path.join(env["RUN_DIR"], f"replica-{i}.ports"))["http"]
                        for i in range(3)]
        converged = {}
        last_seen = {}  # What each replica's /info said last (None: no answer within 1 s).
        while len(converged) < 3 and time.monotonic() - published < 60:
            for i in range(3):
                if i not in converged:
                    last_seen[i] = version_of(replica_http[i])
                    if last_seen[i] == 2:
                        converged[i] = time.monotonic() - published
            time.sleep(0.01)
        check(len(converged) == 3, f"replicas on v2 after 60 s: {sorted(converged)}; the others' "
              f"/info (port: version): {[(replica_http[i], last_seen[i]) for i in range(3) if i not in converged]}")
        convergence = max(converged.values())
        log(f"published v2; every replica answers from v2 after {convergence:.3f} s "
            f"({', '.join(f'r{i} {t:.3f}' for i, t in sorted(converged.items()))})")

        time.sleep(2.0)  # Some load on v2 everywhere.
        for _, _, proc in loads:
            proc.send_signal(signal.SIGINT)
        results = {}
        for name, out, proc in loads:
            stdout, _ = proc.communicate(timeout=60)
            check(proc.returncode == 0, f"loadgen {name} exited {proc.returncode}: {stdout}")
            results[name] = json.load(open(out))
            print(f"  {name}: " + stdout.strip().replace("\n", "\n    "))

        load_times = []
        for i in range(3):
            text = open(os.path.join(env["RUN_DIR"], f"replica-{i}.log")).read()
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
            load_times += [float(x) * scale[u] for x, u in
                           re.findall(r"serving snapshot v2 .*loaded in ([0-9.]+)(us|ms|s)\)", text)]
        check(len(load_times) == 3, f"v2 load lines: {load_times}")
        bound = POLL_S + max(load_times) / 1e3 + 2.0
        retrying, plain = results["retrying"], results["plain"]
        # Each client has one call at a time. A killed replica can fail the
        # calls nginx sent it before nginx saw its first failure (max_fails=1
        # then takes it out): at most one per client. Two replicas killed
        # together can each take a client's call in turn (the resend of a call
        # that failed on one may land on a stale keep-alive connection to the
        # other), so the bound counts killed replicas, not kill events.
        in_flight_bound = CLIENTS * killed
        # A call in flight on a SIGKILLed replica fails when its connection
        # drops, within moments of the kill; any other failure is a defect.
        unexplained = [e for e in plain["errors"]
                       if not any(k - 0.5 <= e["at_s"] <= k + KILL_WINDOW_S for k in sigkills)]
        errors = os.path.join(env["RUN_DIR"], "nginx-error.log")
        routine = ("Connection refused", "temporarily disabled", "signal process")
        notable = [line for line in open(errors).read().splitlines()
                   if line.strip() and not any(r in line for r in routine)]
        failed_at = ", ".join(f"{e['at_s']:.1f}s" for e in plain["errors"]) or "-"
        print(f"  SIGKILLs at {', '.join(f'{k:.1f}s' for k in sigkills)}; plain client's failed "
              f"calls at {failed_at}")
        print(f"  nginx error log: {len(notable)} lines besides refused connections"
              + "".join(f"\n    {line}" for line in notable[-10:]))
        print(f"FAILOVER retrying: calls={retrying['calls']} failed={retrying['failed']} "
              f"p99={retrying['latency_ms']['p99']:.1f}ms; plain (no retries): "
              f"calls={plain['calls']} failed={plain['failed']} (at most {in_flight_bound} could "
              f"be in flight on a SIGKILLed replica) p99={plain['latency_ms']['p99']:.1f}ms; "
              f"convergence={convergence:.3f}s (bound {bound:.3f}s = poll {POLL_S}s + load "
              f"{max(load_times):.1f}ms + 2 s slack)")
        check(retrying["failed"] == 0, f"retrying client: failed calls {retrying['codes']}")
        check(plain["failed"] <= in_flight_bound,
              f"plain client: {plain['failed']} failed calls, more than the {in_flight_bound} "
              f"that could be in flight on a SIGKILLed replica: {plain['codes']}")
        check(not unexplained, f"plain client: failures away from any SIGKILL: {unexplained}")
        check(retrying["calls"] > 200 and plain["calls"] > 20,
              f"too few calls: {retrying['calls']} / {plain['calls']}")
        for name, r in results.items():
            check(set(r["versions"]) == {"1", "2"}, f"{name}: versions seen {r['versions']}")
        check(convergence <= bound, f"convergence {convergence:.3f}s over {bound:.3f}s")
        print(ctl("down").stdout.strip())
    except BaseException:
        # What the processes said, before `down` and the temporary folder take it away.
        run = env["RUN_DIR"]
        status = subprocess.run(["bash", CTL, "status"], env=env, capture_output=True, text=True)
        print(f"--- ctl.sh status:\n{status.stdout}{status.stderr}", file=sys.stderr)
        for name in sorted(os.listdir(run)) if os.path.isdir(run) else []:
            if name.endswith((".log", ".out", ".ports", ".pid")):
                with open(os.path.join(run, name), errors="replace") as f:
                    lines = f.read().splitlines()
                print(f"--- {name} (last 40 of {len(lines)} lines):", *lines[-40:], sep="\n    ",
                      file=sys.stderr)
        raise
    finally:
        for _, _, proc in loads:
            if proc.poll() is None:
                proc.kill()
        subprocess.run(["bash", CTL, "down"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print("failover e2e: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
