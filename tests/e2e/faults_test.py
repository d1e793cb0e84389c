#!/usr/bin/env python3
"""Faults against the real query service: in each case the service keeps
serving the last good version, logs the reason, counts it in /metrics
(imagesearch_snapshot_loads_total{result="refused"}), and a restart comes
back to the last good state.

  1. each file of a new version (a vector snapshot with attributes, and an
     indexed one with model.pt and thumbs.bin) truncated, bit-flipped or
     removed, and the manifest edited into other valid JSON;
  2. CURRENT removed, garbage, or naming a missing version;
  3. the model file of a new version corrupt (its checksums consistent: a bad
     model was published, not a disk fault);
  4. the disk fills up while the indexer publishes (a small tmpfs); after the
     disk grows, the same command publishes and the service swaps.

The indexer killed at each publish step is covered by the snapshot unit test
"A crash at any publish step leaves the previous version live".

Usage: faults_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
from e2e_lib import Server, check, post_json, run  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
IMAGES = os.path.join(SRC, "tests", "data", "images")


def start(root, log_path):
    """The real imagesearch-query on `root`, polling CURRENT every 100 ms. It
    returns once HTTP listens, before anything is loaded: a start on a damaged
    root is a case of its own."""
    return Server(QUERY, [f"--snapshot_root={root}", "--poll_ms=100"], log_path, wait=("http",))


def get(s, path):
    try:
        with urllib.request.urlopen(s.http_url + path, timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def version(s):
    info = get(s, "/info")
    return int(json.loads(info)["snapshot_version"]) if info else None


def refused(s):
    m = re.search(r'^imagesearch_snapshot_loads_total\{result="refused"\} (\S+)$',
                  get(s, "/metrics") or "", re.M)
    return int(float(m.group(1))) if m else None


def serves(s, version_, query_id):
    """Live on `version_`, and a query by id answers from it."""
    s.wait_until(f"serving v{version_}", lambda: version(s) == version_)
    status, body = post_json(s.http_port, {"id": query_id, "top_k": 3, "include_self": True})
    check(status == 200 and int(body["snapshot_version"]) == version_ and
          body["hits"][0]["id"] == query_id, (status, body))


def set_current(root, text):
    tmp = os.path.join(root, "CURRENT.tmp-test")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(root, "CURRENT"))


def damage(path, how):
    if how == "edited":  # still valid JSON: only the manifest's self-checksum can tell
        with open(path) as f:
            text = f.read()
        edited = text.replace('"default_ef": 64', '"default_ef": 65')
        check(edited != text, "no default_ef in the manifest")
        with open(path, "w") as f:
            f.write(edited)
        return
    if how == "removed":
        os.remove(path)
        return
    with open(path, "r+b") as f:
        data = f.read()
        if how == "truncated":
            f.truncate(len(data) // 2)
        else:  # one bit flipped in the middle
            f.seek(len(data) // 2)
            f.write(bytes([data[len(data) // 2] ^ 0x10]))


def restart_and_check(root, work, name, version, query_id):
    """A restart on the damaged root comes back to the last good version."""
    s = start(root, os.path.join(work, f"restart_{name}.log"))
    try:
        serves(s, version, query_id)
        check(f"fell back to v{version}" in s.log_text(), s.log_text()[-2000:])
        check(refused(s) >= 1, "the restart did not count the refusal")
    finally:
        s.stop()


def file_path(root, version, name):
    """A file of root/v<version>: "segment/NAME" is in its (first) segment."""
    if name.startswith("segment/"):
        return os.path.join(e2e_lib.segment_dirs(root, version)[0], name[len("segment/"):])
    return os.path.join(root, f"v{version}", name)


def version_files(root, version):
    """The files of a version: its own, then its first segment's as segment/NAME."""
    seg = e2e_lib.segment_dirs(root, version)[0]
    return (sorted(os.listdir(os.path.join(root, f"v{version}"))) +
            [f"segment/{n}" for n in sorted(os.listdir(seg))])


def damage_each_file(s, root, work, build, files, query_id):
    """For each file in `files` and each fault: publishes a candidate with
    `build`, damages that file, points CURRENT at it, and checks that the
    live service refuses it (logged naming the file, counted once), keeps v1,
    and that a restart comes back to v1. Returns the number of cases."""
    cases = 0
    for name in files:
        faults = ("truncated", "bit-flipped", "removed")
        for how in faults + (("edited",) if name.endswith("MANIFEST.json") else ()):
            out = run(*build, "--promote=false").stdout
            version = int(re.search(r"published v(\d+)", out).group(1))
            damage(file_path(root, version, name), how)
            before, mark = refused(s), len(s.log_text())
            set_current(root, f"v{version}\n")
            s.wait_until(f"{name} {how}: refusal counted", lambda: refused(s) == before + 1)
            line = [l for l in s.log_text()[mark:].splitlines()
                    if f"refusing snapshot v{version}:" in l]
            check(len(line) == 1, f"{name} {how}: {line}")
            check(os.path.basename(name) in line[0],
                  f"{name} {how}: the log does not name the file: {line[0]}")
            serves(s, 1, query_id)
            restart_and_check(root, work, f"{name.replace('/', '_')}_{how}", 1, query_id)
            set_current(root, "v1\n")
            shutil.rmtree(os.path.join(root, f"v{version}"))
            print(f"  {name} {how}: refused ({line[0].split(': ', 2)[-1][:90]})")
            cases += 1
    return cases


def file_faults(work):
    root = os.path.join(work, "vectors_root")
    vectors = os.path.join(work, "vectors.npy")
    run(SNAPSHOT, "synth", f"--out={vectors}", "--count=400", "--dim=32")
    ids = os.path.join(work, "ids.jsonl")
    with open(ids, "w") as f:
        for i in range(400):
            f.write(json.dumps({"id": f"r{i}", "attributes": {"tag": f"t{i % 5}"}}) + "\n")
    build = [SNAPSHOT, "build", f"--root={root}", f"--vectors={vectors}", f"--ids={ids}",
             "--schema=tag:keyword"]
    run(*build)  # v1, live
    files = version_files(root, 1)
    check({"MANIFEST.json", "segment/MANIFEST.json", "segment/ids.bin", "segment/graph.hnsw",
           "segment/graph.offsets", "segment/attrs.bin"} <= set(files), files)
    s = start(root, os.path.join(work, "files.log"))
    try:
        serves(s, 1, "r7")
        cases = damage_each_file(s, root, work, build, files, "r7")
        check(refused(s) == cases, f"refused {refused(s)} != {cases} faults")
    finally:
        s.stop()
    print(f"1. {cases} file faults: each refused, logged, counted; v1 kept serving; restarts came back")
    return root


def current_faults(root, work):
    s = start(root, os.path.join(work, "current.log"))
    try:
        serves(s, 1, "r7")
        cases = [("removed", None), ("garbage", "\x00\x01zz\n"), ("a missing version", "v99\n")]
        for what, text in cases:
            before = refused(s)
            if text is None:
                os.remove(os.path.join(root, "CURRENT"))
            else:
                set_current(root, text)
            s.wait_until(f"CURRENT {what}: counted", lambda: refused(s) == before + 1)
            time.sleep(0.5)  # several polls: counted once, not once per poll
            check(refused(s) == before + 1, f"CURRENT {what}: counted {refused(s) - before} times")
            serves(s, 1, "r7")
            restart_and_check(root, work, f"current_{what.replace(' ', '_')}", 1, "r7")
            set_current(root, "v1\n")
            print(f"  CURRENT {what}: still serving v1, counted once")
        log = s.log_text()
        check("/CURRENT" in log and "refusing snapshot v99" in log, log[-2000:])
    finally:
        s.stop()
    print("2. CURRENT removed, garbage, or naming a missing version: v1 kept serving; restarts came back")


def model_fault(work):
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus)
    for name in ("rocket.jpg", "coffee.png", "camera.png", "chelsea.png"):
        shutil.copy(os.path.join(IMAGES, name), corpus)
    root = os.path.join(work, "model_root")
    run(INDEXER, f"--input={corpus}", f"--root={root}", f"--model={MODEL}", "--progress=none")
    # The same rows as an embedding shard: candidates are published from it
    # (imagesearch-snapshot build --shards, no re-encoding), with the model.
    shards = os.path.join(work, "shards")
    run(INDEXER, f"--input={corpus}", f"--embeddings_out={shards}", "--shard=0/1",
        f"--model={MODEL}", "--progress=none")
    # The files only an indexed snapshot has: the model and the thumbnails.
    s = start(root, os.path.join(work, "model_files.log"))
    try:
        serves(s, 1, "coffee.png")
        build = [SNAPSHOT, "build", f"--root={root}", f"--shards={shards}", f"--model={MODEL}"]
        cases = damage_each_file(s, root, work, build, ["model.pt", "segment/thumbs.bin"],
                                 "coffee.png")
    finally:
        s.stop()
    print(f"3. {cases} faults of model.pt and thumbs.bin: each refused, logged, counted; v1 kept "
          "serving; restarts came back")
    # A published model that does not load: a copy of the shard names a
    # truncated model.pt, so every checksum in the new version is consistent.
    bad_shards = os.path.join(work, "bad_shards")
    shutil.copytree(shards, bad_shards)
    bad_model = os.path.join(work, "corrupt_model.pt")
    with open(MODEL, "rb") as f:
        data = f.read()
    with open(bad_model, "wb") as f:
        f.write(data[: len(data) // 3])  # a truncated TorchScript archive
    shard_json = os.path.join(bad_shards, "shard-0-of-1", "SHARD.json")
    with open(shard_json) as f:
        shard = json.load(f)
    shard["model"]["sha256"] = hashlib.sha256(data[: len(data) // 3]).hexdigest()
    with open(shard_json, "w") as f:
        json.dump(shard, f)
    shards = bad_shards
    s = start(root, os.path.join(work, "model.log"))
    try:
        serves(s, 1, "coffee.png")
        before = refused(s)
        out = run(SNAPSHOT, "build", f"--root={root}", f"--shards={shards}",
                  f"--model={bad_model}").stdout
        version = int(re.search(r"published v(\d+)", out).group(1))
        s.wait_until("corrupt model: refusal counted", lambda: refused(s) == before + 1)
        line = [l for l in s.log_text().splitlines() if f"refusing snapshot v{version}:" in l]
        check(len(line) == 1 and f"model of snapshot v{version}" in line[0], line)
        serves(s, 1, "coffee.png")
        with open(os.path.join(IMAGES, "camera.png"), "rb") as f:
            image = base64.b64encode(f.read()).decode()
        status, body = post_json(s.http_port, {"image": image, "top_k": 1})
        check(status == 200 and body["hits"][0]["id"] == "camera.png", (status, body))
        print(f"  corrupt model: {line[0].split(': ', 2)[-1][:100]}")
    finally:
        s.stop()
    restart_and_check(root, work, "model", 1, "coffee.png")
    print("4. a new version with a corrupt model: refused as a whole; v1 (and its model) kept serving")


def disk_full(work):
    mnt = os.path.join(work, "small_disk")
    os.makedirs(mnt)
    # Room for one version (the model copy is most of it), not for two.
    model_mb = os.path.getsize(MODEL) / 2**20
    size_mb = int(model_mb * 1.6) + 2
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", mnt],
                           capture_output=True, text=True)
    # mount(2) needs CAP_SYS_ADMIN: root, and in a container the grant of CI's
    # test job (.github/workflows/ci.yml: --cap-add=SYS_ADMIN
    # --security-opt=apparmor=unconfined, since Docker's AppArmor profile
    # denies mounts).
    check(mount.returncode == 0, "cannot mount a tmpfs: this case needs CAP_SYS_ADMIN (root; in a "
          "container, --cap-add=SYS_ADMIN --security-opt=apparmor=unconfined as CI's test job "
          f"grants): {mount.stderr.strip()}")
    s = None
    try:
        corpus = os.path.join(work, "corpus")
        root = os.path.join(mnt, "root")
        index = [INDEXER, f"--input={corpus}", f"--root={root}", f"--model={MODEL}",
                 "--progress=none"]
        run(*index)  # v1
        s = start(root, os.path.join(work, "disk.log"))
        serves(s, 1, "rocket.jpg")
        before = refused(s)
        out = run(*index, ok=False)
        check(out.returncode != 0, "the indexer published on a full disk")
        check("No space left on device" in out.stderr, out.stderr)
        left = sorted(os.listdir(root))
        check(left == [".lock", "CURRENT", "HISTORY", "segments", "v1"],
              f"partial files left behind: {left}")
        segments = sorted(os.listdir(os.path.join(root, "segments")))
        check([os.path.join(root, "segments", n) for n in segments] ==
              e2e_lib.segment_dirs(root, 1), f"partial segments left behind: {segments}")
        time.sleep(0.5)
        serves(s, 1, "rocket.jpg")
        check(refused(s) == before, "a failed publish reached the service")
        print(f"  disk full: the indexer failed ({out.stderr.strip().splitlines()[-1][:110]})")
        s.stop()
        s = start(root, os.path.join(work, "disk_restart.log"))
        serves(s, 1, "rocket.jpg")
        # The disk grows; the same command publishes v2 and the service swaps.
        run("mount", "-o", f"remount,size={size_mb * 2}m", mnt)
        run(*index)
        serves(s, 2, "rocket.jpg")
    finally:
        if s is not None:
            s.stop()
        subprocess.run(["umount", mnt])
    print("5. disk full while publishing: nothing published or left behind, v1 kept serving, "
          "restart on v1; after the disk grew, v2 published and served")


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_faults_")
    try:
        root = file_faults(work)
        current_faults(root, work)
        model_fault(work)
        disk_full(work)
    finally:
        subprocess.run(["umount", os.path.join(work, "small_disk")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print("faults: 5 passed, 0 failed")


if __name__ == "__main__":
    main()
