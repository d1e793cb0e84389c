#!/usr/bin/env python3
"""Segments end to end, as an operator runs them, against a live query replica
(the real imagesearch-query over HTTP on loopback):

  1. `imagesearch-snapshot build` publishes v1 (3000 vectors, one segment);
  2. `build --base=v1` adds 200 vectors as one new segment: the new version
     directory holds only its manifest and a deletes file, nothing of v1 is
     rewritten, and the replica answers from both segments (an added row
     finds itself; /info lists two segments);
  3. `build --base=v2 --remove_ids` publishes a version whose only new file
     is the deletes: the removed ids are gone from answers and id queries;
  4. `merge --all` joins the segments into one (deleted rows dropped), and
     answers do not change;
  5. `gc --keep=1 --grace=0s` removes the old versions and the segments only
     they named, while the replica keeps serving.

Usage: segments_test.py BUILD_DIR
"""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
from e2e_lib import Server, check, post_json, run  # noqa: E402

BUILD = sys.argv[1]
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
DIM = 32


def read_npy(path):
    return e2e_lib.read_npy(path, DIM)


def info(server):
    return e2e_lib.info(server)


def wait_version(server, version):
    server.wait_until(f"serving v{version}",
                      lambda: int(info(server)["snapshot_version"]) == version, 60)


def nearest(server, vector):
    status, body = post_json(server.http_port, {"vector": {"values": vector}, "top_k": 3})
    check(status == 200, body)
    return [h["id"] for h in body["hits"]]


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_segments_")
    server = None
    try:
        root = os.path.join(work, "root")
        base_npy, new_npy = os.path.join(work, "base.npy"), os.path.join(work, "new.npy")
        run(SNAPSHOT, "synth", f"--out={base_npy}", "--count=3000", f"--dim={DIM}", "--seed=1")
        run(SNAPSHOT, "synth", f"--out={new_npy}", "--count=200", f"--dim={DIM}", "--seed=2")
        new_ids = os.path.join(work, "new_ids.jsonl")
        with open(new_ids, "w") as f:
            for i in range(200):
                f.write(json.dumps({"id": f"n{i}"}) + "\n")
        run(SNAPSHOT, "build", f"--root={root}", f"--vectors={base_npy}", "--threads=1")
        server = Server(QUERY, [f"--snapshot_root={root}", "--poll_ms=100"],
                        os.path.join(work, "query.log"))
        wait_version(server, 1)
        check(len(info(server)["segments"]) == 1, info(server))
        print("1. v1: 3000 vectors, one segment, served")

        (v1_segment,) = e2e_lib.segment_dirs(root, 1)
        v1_files = {n: os.stat(os.path.join(v1_segment, n)).st_mtime_ns
                    for n in os.listdir(v1_segment)}
        out = run(SNAPSHOT, "build", f"--root={root}", "--base=v1", f"--vectors={new_npy}",
                  f"--ids={new_ids}", "--threads=1").stdout
        check("published v2 on v1: segment " in out and "of 200 vectors" in out, out)
        check(sorted(os.listdir(os.path.join(root, "v2"))) == ["MANIFEST.json"],
              os.listdir(os.path.join(root, "v2")))
        check({n: os.stat(os.path.join(v1_segment, n)).st_mtime_ns
               for n in os.listdir(v1_segment)} == v1_files, "v1's segment was rewritten")
        wait_version(server, 2)
        segments = info(server)["segments"]
        check([int(s["rows"]) for s in segments] == [3000, 200], segments)
        new = read_npy(new_npy)
        for i in (0, 17, 199):
            check(nearest(server, new[i])[0] == f"n{i}", f"n{i} does not find itself")
        base = read_npy(base_npy)
        check(nearest(server, base[42])[0] == "42", "a v1 row does not find itself")
        print(f"2. build --base=v1 added a 200-row segment ({out.strip().split(': ', 1)[1]}); "
              "v1's files untouched; both segments answer")

        remove = os.path.join(work, "remove.txt")
        with open(remove, "w") as f:
            f.write("42\nn17\n")
        out = run(SNAPSHOT, "build", f"--root={root}", "--base=v2",
                  f"--remove_ids={remove}").stdout
        check("no new segment" in out and "2 deleted" in out, out)
        v3_files = sorted(os.listdir(os.path.join(root, "v3")))
        # MANIFEST.json and one deletes file per segment: nothing else is new.
        check(v3_files[0] == "MANIFEST.json" and len(v3_files) == 3 and
              all(f.startswith("deletes.") for f in v3_files[1:]), v3_files)
        wait_version(server, 3)
        check("42" not in nearest(server, base[42]), "a removed row is still returned")
        check("n17" not in nearest(server, new[17]), "a removed row is still returned")
        status, body = post_json(server.http_port, {"id": "n17"})
        check(status == 404 and "is not in snapshot v3" in body["error"]["message"], body)
        check(int(info(server)["vector_count"]) == 3198, info(server))
        print("3. build --remove_ids: a version of deletes only; removed ids are gone")

        before = {i: nearest(server, new[i]) for i in (0, 5, 199)}
        out = run(SNAPSHOT, "merge", f"--root={root}", "--all", "--threads=1").stdout
        check(out.startswith("published v4: merged 2 segment(s)") and
              "2 deleted rows dropped" in out, out)
        wait_version(server, 4)
        segments = info(server)["segments"]
        check(len(segments) == 1 and int(segments[0]["rows"]) == 3198
              and int(segments[0].get("deleted", 0)) == 0, segments)
        for i, hits in before.items():
            check(nearest(server, new[i])[0] == hits[0], f"n{i} answers changed after the merge")
        print("4. merge --all: one segment of 3198 rows, deleted rows dropped, same answers")

        out = run(SNAPSHOT, "gc", f"--root={root}", "--keep=1", "--grace=0s").stdout
        check(out.startswith("removed 3 version(s) v1 v2 v3 and 2 segment(s)"), out)
        check(sorted(os.listdir(os.path.join(root, "segments"))) ==
              [os.path.basename(d) for d in e2e_lib.segment_dirs(root, 4)],
              os.listdir(os.path.join(root, "segments")))
        check(nearest(server, new[5])[0] == "n5", "the replica stopped answering after gc")
        print("5. gc --keep=1 --grace=0s: old versions and the segments only they named removed")
        server.stop()
        server = None
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("segments: PASS")


if __name__ == "__main__":
    main()
