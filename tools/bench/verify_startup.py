#!/usr/bin/env python3
"""Time to serving of imagesearch-query with --verify=checksums and
--verify=sizes, side by side, with the snapshot's pages cold (evicted from the
page cache, as on a replica that reads the share over NFS for the first time)
and warm. "Serving" is the first /info that names the snapshot version; ports
may accept connections earlier or later, so /info is polled every 10 ms.

  tools/bench/verify_startup.py QUERY_BINARY ROOT [ROOT...] [--runs=3]

Each ROOT is a snapshot root (its CURRENT is served). Cold runs evict only
the version's own files (posix_fadvise DONTNEED), nothing else on the host.
"""
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "e2e"))
from e2e_lib import Server  # noqa: E402


def version_dir(root):
    with open(os.path.join(root, "CURRENT")) as f:
        return os.path.join(root, f.read().strip())


def evict(directory):
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_to_serving(binary, root, verify, limit_s=600):
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as logs:
        server = Server(binary, [f"--snapshot_root={root}", f"--verify={verify}"],
                        os.path.join(logs, "query.log"), wait=("http",))
        try:
            server.wait_until("serving", lambda: serving(server), limit_s, poll_s=0.01)
            return time.monotonic() - start
        finally:
            server.stop(limit_s=60, expect=None)


def serving(server):
    """Whether /info names a snapshot version."""
    try:
        with urllib.request.urlopen(server.http_url + "/info", timeout=5) as r:
            return bool(json.load(r).get("snapshot_version"))
    except (OSError, ValueError):
        return False


def main():
    runs = 3
    args = []
    for a in sys.argv[1:]:
        if a.startswith("--runs="):
            runs = int(a.split("=", 1)[1])
        else:
            args.append(a)
    if len(args) < 2:
        sys.exit(__doc__)
    binary, roots = args[0], args[1:]
    print(f"{'snapshot':<40} {'MB':>6} {'cache':<5} {'checksums s':>12} {'sizes s':>8} {'ratio':>6}")
    for root in roots:
        vdir = version_dir(root)
        mb = sum(os.path.getsize(os.path.join(vdir, n)) for n in os.listdir(vdir)) / 1e6
        for cache in ("cold", "warm"):
            medians = {}
            for verify in ("checksums", "sizes"):
                times = []
                for _ in range(runs):
                    if cache == "cold":
                        evict(vdir)
                    else:
                        time_to_serving(binary, root, "checksums")  # reads every page in
                    times.append(time_to_serving(binary, root, verify))
                medians[verify] = statistics.median(times)
            print(f"{root:<40} {mb:>6.0f} {cache:<5} {medians['checksums']:>12.3f} "
                  f"{medians['sizes']:>8.3f} {medians['checksums'] / medians['sizes']:>5.1f}x")


if __name__ == "__main__":
    main()
