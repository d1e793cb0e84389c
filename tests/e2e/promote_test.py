#!/usr/bin/env python3
"""Gated promotion and rollback, against a live query service on the root:
a good candidate (indexed with --promote=false) passes tools/promote.sh and
the live service swaps to it; a bad one (random vectors under the same ids)
fails the gate, CURRENT and the live service stay where they were; then
`imagesearch-snapshot rollback` is one command and the live service follows.

Usage: promote_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_lib import Server, check, run  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
PROMOTE = os.path.join(SRC, "tools", "promote.sh")




def live_version(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=2) as r:
            return int(json.load(r)["snapshot_version"])
    except (OSError, ValueError):
        return None


def wait_version(server, want, what):
    server.wait_until(f"{what}: the live service on v{want}",
                      lambda: live_version(server.http_port) == want, limit_s=10)


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_promote_")
    server = None
    try:
        corpus = os.path.join(work, "corpus")
        run("bash", os.path.join(SRC, "tools", "corpus", "fashion_mnist.sh"), corpus, "10")
        manifest = os.path.join(corpus, "manifest.jsonl")
        root = os.path.join(work, "root")
        index = [INDEXER, f"--input={manifest}", f"--root={root}", f"--model={MODEL}",
                 "--progress=none"]
        run(*index)  # v1, live
        server = Server(QUERY, [f"--snapshot_root={root}", "--poll_ms=200"],
                        os.path.join(work, "query.log"))
        http = server.http_port
        wait_version(server, 1, "start")

        # A good candidate: published, not live, until the gate passes.
        out = run(*index, "--promote=false")
        check("published v2 (candidate; CURRENT unchanged)" in out.stdout, out.stdout)
        check(run(SNAPSHOT, "current", f"--root={root}").stdout.strip() == "v1", "CURRENT moved")
        time.sleep(0.5)
        check(live_version(http) == 1, "the live service picked up a candidate")
        gate = [PROMOTE, f"--root={root}", f"--manifest={manifest}", "--min_p10=0.25",
                "--self_sample=20", f"--build={BUILD}"]
        out = run(*gate, "--version=v2")
        check("promoted: CURRENT v1 -> v2" in out.stdout and "quality gate: 1 passed" in out.stdout,
              out.stdout)
        wait_version(server, 2, "after promotion")
        print("1. good candidate v2: gated on a canary, promoted, the live service swapped to it")

        # A bad candidate: random vectors under the same ids, no model.
        ids = os.path.join(work, "ids.jsonl")
        with open(manifest) as f, open(ids, "w") as g:
            for line in f:
                g.write(json.dumps({"id": json.loads(line)["id"]}) + "\n")
        vec = os.path.join(work, "random.npy")
        np.save(vec, np.random.default_rng(1).standard_normal((100, 1792)).astype(np.float32))
        out = run(SNAPSHOT, "build", f"--root={root}", f"--vectors={vec}", f"--ids={ids}",
                  "--promote=false")
        check("published v3" in out.stdout, out.stdout)
        out = run(*gate, "--version=v3", ok=False)
        check(out.returncode == 1 and "NOT promoted: v3 failed the quality gate; CURRENT stays v2"
              in out.stderr, f"{out.returncode}: {out.stdout}{out.stderr}")
        check("FAIL: self-retrieval" in out.stdout, out.stdout)
        check(run(SNAPSHOT, "current", f"--root={root}").stdout.strip() == "v2", "CURRENT moved")
        time.sleep(0.5)
        check(live_version(http) == 2, "the live service left v2")
        print("2. bad candidate v3: gate failed, CURRENT and the live service stay on v2")

        # Rollback: one command.
        out = run(SNAPSHOT, "rollback", f"--root={root}")
        check(out.stdout.strip() == "CURRENT -> v1", out.stdout)
        wait_version(server, 1, "after rollback")
        print("3. imagesearch-snapshot rollback: CURRENT v2 -> v1, the live service followed")
        server.stop()
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("promotion e2e: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
