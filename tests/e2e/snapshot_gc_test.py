#!/usr/bin/env python3
"""Snapshot gc never pulls a version out from under a replica that still
serves it: a lagging replica of the real imagesearch-query (it polls CURRENT
once an hour, without inotify, as a replica on NFS sees another host's
publish only when it polls) stays on v1 after v2 goes live, while an up-to-date replica
swaps to v2. `imagesearch-snapshot gc --keep=1 --grace=1h` keeps v1's files
(they are still mapped) and the lagging replica keeps answering from v1; once
the grace has passed since v1 stopped being CURRENT (HISTORY's time), gc
removes it. Then set-current refuses a copy whose manifest names another
version (v99 holding v1's manifest) and leaves CURRENT and HISTORY alone.

Usage: snapshot_gc_test.py BUILD_DIR
"""
import datetime
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
from e2e_lib import Server, check, post_json, run  # noqa: E402

BUILD = sys.argv[1]
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")


def replica(root, poll_ms, log, inotify=True):
    """A query replica on `root` that polls CURRENT every `poll_ms` (and with
    `inotify`, reads it as soon as it changes)."""
    return Server(QUERY, [f"--snapshot_root={root}", f"--poll_ms={poll_ms}", "--verify=sizes",
                          f"--inotify={'true' if inotify else 'false'}"], log)


def answers_from(server, version, limit_s=60):
    """Waits until the replica answers a query by id from `version`; returns the answer."""
    last = {}

    def answered():
        try:
            status, last["body"] = post_json(server.http_port,
                                             {"id": "7", "top_k": 3, "include_self": True}, timeout=5)
        except OSError:
            return False
        return status == 200 and int(last["body"]["snapshot_version"]) == version

    server.wait_until(f"replica on {server.http_port} answering from v{version}", answered, limit_s)
    check(last["body"]["hits"][0]["id"] == "7", last["body"])
    return last["body"]


def history_time(root, version):
    """When HISTORY last recorded `version` becoming CURRENT."""
    with open(os.path.join(root, "HISTORY")) as f:
        times = [line.split()[1] for line in f if line.split()[0] == f"v{version}"]
    check(times, f"v{version} is not in HISTORY")
    return datetime.datetime.strptime(times[-1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_gc_")
    replicas = []
    try:
        root = os.path.join(work, "root")
        vectors = os.path.join(work, "v.npy")
        run(SNAPSHOT, "synth", f"--out={vectors}", "--count=3000", "--dim=32")
        build = [SNAPSHOT, "build", f"--root={root}", f"--vectors={vectors}", "--threads=1"]
        run(*build)
        lagging = replica(root, 3_600_000, os.path.join(work, "lagging.log"), inotify=False)
        replicas.append(lagging)
        fresh = replica(root, 100, os.path.join(work, "fresh.log"))
        replicas.append(fresh)
        answers_from(lagging, 1)
        answers_from(fresh, 1)

        run(*build)  # v2 goes live
        answers_from(fresh, 2)
        answers_from(lagging, 1, limit_s=1)
        print("1. v2 is CURRENT: one replica swapped to it, the lagging one still serves v1")

        out = run(SNAPSHOT, "gc", f"--root={root}", "--keep=1", "--grace=1h").stdout
        check(out.startswith("removed 0 version(s)") and "kept v1: within the grace until" in out,
              out)
        check(os.path.isdir(os.path.join(root, "v1")), "gc removed v1 within the grace")
        v1_segments = e2e_lib.segment_dirs(root, 1)
        check(all(map(os.path.isdir, v1_segments)), "gc removed v1's segment within the grace")
        for _ in range(200):
            answers_from(lagging, 1, limit_s=5)
        print("2. gc --keep=1 --grace=1h kept v1; the lagging replica answered 200 queries from it")

        # Once the grace has passed since v1 stopped being CURRENT, it goes.
        retired = history_time(root, 2)
        time.sleep(max(0.0, retired + 2.0 - time.time()))
        out = run(SNAPSHOT, "gc", f"--root={root}", "--keep=1", "--grace=2s").stdout
        # v1's one segment goes with it: no kept version names it.
        (v1_segment,) = v1_segments
        check(out.strip() == f"removed 1 version(s) v1 and 1 segment(s) {os.path.basename(v1_segment)}",
              out)
        check(sorted(os.listdir(root)) == [".lock", "CURRENT", "HISTORY", "segments", "v2"],
              sorted(os.listdir(root)))
        check(not os.path.exists(v1_segment) and all(map(os.path.isdir, e2e_lib.segment_dirs(root, 2))),
              "gc removed the wrong segments")
        answers_from(fresh, 2)
        print("3. 2 s after v1 stopped being CURRENT, gc --grace=2s removed it")

        # A copied directory whose manifest names another version is refused.
        shutil.copytree(os.path.join(root, "v2"), os.path.join(root, "v99"))
        with open(os.path.join(root, "HISTORY")) as f:
            history = f.read()
        r = run(SNAPSHOT, "set-current", f"--root={root}", "--version=v99", ok=False)
        want = (f"refusing to make v99 CURRENT: snapshot {root}/v99: "
                "manifest says version 2, directory is 99")
        check(r.returncode == 1 and want in r.stderr, (r.returncode, r.stderr))
        check(run(SNAPSHOT, "current", f"--root={root}").stdout.strip() == "v2", "CURRENT moved")
        with open(os.path.join(root, "HISTORY")) as f:
            check(f.read() == history, "HISTORY changed")
        r = run(SNAPSHOT, "verify", f"--root={root}", "--version=v99", ok=False)
        check(r.returncode == 1 and "manifest says version 2, directory is 99" in r.stderr, r.stderr)
        print("4. set-current --version=v99 (a copy of v2) refused like verify; CURRENT and "
              "HISTORY unchanged")
    finally:
        for r in replicas:
            r.stop(expect=None)
        shutil.rmtree(work, ignore_errors=True)
    print("snapshot gc: PASS")


if __name__ == "__main__":
    main()
