#!/usr/bin/env python3
"""Failover through the local scale-out (deploy/local/ctl.sh): 3 replicas
behind nginx, 8 concurrent gRPC clients (imagesearch-loadgen, with the
documented retry policy deploy/local/grpc_service_config.json). During the
load, replica 0 is killed with SIGKILL and restarted, replica 1 restarts
gracefully (SIGTERM), and a new snapshot version is published. Reports calls,
failed calls, p50/p99 and the time until every replica answers from the new
version; asserts no failed call and convergence within one poll interval plus
the load time (plus scheduling slack on a 2-core machine).

Usage: failover_test.py BUILD_DIR SOURCE_DIR [--seconds=N]   (CI: 20 s)
"""
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_lib import check, free_port  # noqa: E402

BUILD, SRC = sys.argv[1:3]
SECONDS = 20.0
for arg in sys.argv[3:]:
    if arg.startswith("--seconds="):
        SECONDS = float(arg.split("=", 1)[1])
CTL = os.path.join(SRC, "deploy", "local", "ctl.sh")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
LOADGEN = os.path.join(BUILD, "tools", "loadgen", "imagesearch-loadgen")
POLL_S = 0.5  # the replicas' default --poll_ms



def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False



def pick_base_port():
    for _ in range(50):
        base = random.randrange(20000, 30000, 10)
        if all(free(base + i) and free(base + 100 + i) for i in range(3)):
            return base
    raise AssertionError("no free port range for the replicas")


def version_of(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=1) as r:
            return json.load(r)["snapshot_version"]
    except (OSError, ValueError, KeyError):
        return None


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_failover_")
    env = dict(os.environ, RUN_DIR=os.path.join(work, "run"), BUILD_DIR=BUILD, REPLICAS="3",
               SNAPSHOT_ROOT=os.path.join(work, "root"), GRPC_PORT=str(free_port()),
               HTTP_PORT=str(free_port()), BASE_PORT=str(pick_base_port()))
    base_port = int(env["BASE_PORT"])
    ctl = lambda *a: subprocess.run(["bash", CTL, *a], env=env, check=True,  # noqa: E731
                                    capture_output=True, text=True)
    load = None
    try:
        base = os.path.join(work, "base.npy")
        subprocess.run([SNAPSHOT, "synth", f"--out={base}", "--count=5000", "--dim=64"],
                       check=True, capture_output=True)
        build = [SNAPSHOT, "build", f"--root={env['SNAPSHOT_ROOT']}", f"--vectors={base}",
                 "--ef_construction=64"]
        subprocess.run(build, check=True, capture_output=True)
        with open(os.path.join(work, "ids.txt"), "w") as f:
            f.write("\n".join(str(i) for i in range(0, 5000, 7)) + "\n")
        print(ctl("up").stdout.strip())

        # HTTP goes through nginx too: the page and a query.
        http = f"http://127.0.0.1:{env['HTTP_PORT']}"
        check(b"<html" in urllib.request.urlopen(http + "/", timeout=5).read(), "GET / via nginx")
        req = urllib.request.Request(http + "/invocations", data=b'{"id":"7","top_k":3}',
                                     headers={"Content-Type": "application/json"})
        check(len(json.load(urllib.request.urlopen(req, timeout=5))["hits"]) == 3, "HTTP via nginx")

        out = os.path.join(work, "load.json")
        t0 = time.monotonic()
        load = subprocess.Popen([LOADGEN, f"--target=127.0.0.1:{env['GRPC_PORT']}", "--kind=id",
                                 f"--ids={os.path.join(work, 'ids.txt')}", "--concurrency=8", "--channels=8",
                                 f"--duration_s={SECONDS}", f"--json_out={out}",
                                 "--service_config=" + os.path.join(SRC, "deploy", "local",
                                                                    "grpc_service_config.json")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        at = lambda frac: time.sleep(max(0.0, t0 + frac * SECONDS - time.monotonic()))  # noqa: E731
        at(0.15)
        ctl("kill", "0")
        ctl("start", "0")
        print(f"  {time.monotonic() - t0:5.1f}s replica 0: SIGKILL, restarted")
        at(0.35)
        ctl("restart", "1")
        print(f"  {time.monotonic() - t0:5.1f}s replica 1: SIGTERM (drained), restarted")
        at(0.55)
        subprocess.run(build, check=True, capture_output=True)
        published = time.monotonic()
        converged = {}
        while len(converged) < 3 and time.monotonic() - published < 30:
            for i in range(3):
                if i not in converged and version_of(base_port + 100 + i) == 2:
                    converged[i] = time.monotonic() - published
            time.sleep(0.01)
        check(len(converged) == 3, f"replicas on v2 after 30 s: {sorted(converged)}")
        convergence = max(converged.values())
        print(f"  {published - t0:5.1f}s published v2; every replica answers from v2 after "
              f"{convergence:.3f} s ({', '.join(f'r{i} {t:.3f}' for i, t in sorted(converged.items()))})")
        stdout, _ = load.communicate(timeout=SECONDS + 60)
        check(load.returncode == 0, f"loadgen exited {load.returncode}: {stdout}")
        r = json.load(open(out))
        print("  " + stdout.strip())

        load_times = []
        for i in range(3):
            log = open(os.path.join(env["RUN_DIR"], f"replica-{i}.log")).read()
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
            load_times += [float(x) * scale[u] for x, u in
                           re.findall(r"serving snapshot v2 .*loaded in ([0-9.]+)(us|ms|s)\)", log)]
        check(len(load_times) == 3, f"v2 load lines: {load_times}")
        bound = POLL_S + max(load_times) / 1e3 + 1.0
        print(f"FAILOVER calls={r['calls']} failed={r['failed']} p50={r['latency_ms']['p50']:.2f}ms "
              f"p99={r['latency_ms']['p99']:.2f}ms convergence={convergence:.3f}s "
              f"(bound {bound:.3f}s = poll {POLL_S}s + load {max(load_times):.1f}ms + 1 s slack)")
        check(r["failed"] == 0, f"failed calls: {r['codes']}")
        check(r["calls"] > 1000, f"only {r['calls']} calls")
        check(set(r["versions"]) == {"1", "2"}, f"versions seen: {r['versions']}")
        check(convergence <= bound, f"convergence {convergence:.3f}s over {bound:.3f}s")
        print(ctl("down").stdout.strip())
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        subprocess.run(["bash", CTL, "down"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print("failover e2e: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
