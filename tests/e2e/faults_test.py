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
from e2e_lib import check, free_port, post_json, run  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
SNAPSHOT = os.path.join(BUILD, "tools", "make_snapshot", "imagesearch-snapshot")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
IMAGES = os.path.join(SRC, "tests", "data", "images")


class Service:
    """The real imagesearch-query on `root`, HTTP on loopback, its log in a file."""

    def __init__(self, root, log_path):
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [QUERY, f"--snapshot_root={root}", "--host=127.0.0.1", "--port=0",
             f"--http_port={self.port}", "--poll_ms=100"],
            stdout=subprocess.DEVNULL, stderr=self.log)

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None

    def version(self):
        info = self.get("/info")
        return json.loads(info)["snapshot_version"] if info else None

    def refused(self):
        m = re.search(r'^imagesearch_snapshot_loads_total\{result="refused"\} (\S+)$',
                      self.get("/metrics") or "", re.M)
        return int(float(m.group(1))) if m else None

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    def wait(self, what, cond, limit_s=60):
        deadline = time.time() + limit_s
        while time.time() < deadline:
            check(self.proc.poll() is None, f"{what}: the service exited ({self.proc.returncode}); "
                                            f"log:\n{self.log_text()[-3000:]}")
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what}: timed out; log:\n{self.log_text()[-3000:]}")

    def serves(self, version, query_id):
        """Live on `version`, and a query by id answers from it."""
        self.wait(f"serving v{version}", lambda: self.version() == version)
        status, body = post_json(self.port, {"id": query_id, "top_k": 3, "include_self": True})
        check(status == 200 and body["snapshot_version"] == version and
              body["hits"][0]["id"] == query_id, (status, body))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


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
    s = Service(root, os.path.join(work, f"restart_{name}.log"))
    try:
        s.serves(version, query_id)
        check(f"fell back to v{version}" in s.log_text(), s.log_text()[-2000:])
        check(s.refused() >= 1, "the restart did not count the refusal")
    finally:
        s.stop()


def damage_each_file(s, root, work, build, files, query_id):
    """For each file in `files` and each fault: publishes a candidate with
    `build`, damages that file, points CURRENT at it, and checks that the
    live service refuses it (logged naming the file, counted once), keeps v1,
    and that a restart comes back to v1. Returns the number of cases."""
    cases = 0
    for name in files:
        faults = ("truncated", "bit-flipped", "removed")
        for how in faults + (("edited",) if name == "MANIFEST.json" else ()):
            out = run(*build, "--promote=false").stdout
            version = int(re.search(r"published v(\d+)", out).group(1))
            damage(os.path.join(root, f"v{version}", name), how)
            before, mark = s.refused(), len(s.log_text())
            set_current(root, f"v{version}\n")
            s.wait(f"{name} {how}: refusal counted", lambda: s.refused() == before + 1)
            line = [l for l in s.log_text()[mark:].splitlines()
                    if f"refusing snapshot v{version}:" in l]
            check(len(line) == 1, f"{name} {how}: {line}")
            check(name in line[0], f"{name} {how}: the log does not name the file: {line[0]}")
            s.serves(1, query_id)
            restart_and_check(root, work, f"{name}_{how}", 1, query_id)
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
    files = sorted(os.listdir(os.path.join(root, "v1")))
    check({"MANIFEST.json", "ids.bin", "graph.hnsw", "graph.offsets", "attrs.bin"} <= set(files),
          files)
    s = Service(root, os.path.join(work, "files.log"))
    try:
        s.serves(1, "r7")
        cases = damage_each_file(s, root, work, build, files, "r7")
        check(s.refused() == cases, f"refused {s.refused()} != {cases} faults")
    finally:
        s.stop()
    print(f"1. {cases} file faults: each refused, logged, counted; v1 kept serving; restarts came back")
    return root


def current_faults(root, work):
    s = Service(root, os.path.join(work, "current.log"))
    try:
        s.serves(1, "r7")
        cases = [("removed", None), ("garbage", "\x00\x01zz\n"), ("a missing version", "v99\n")]
        for what, text in cases:
            before = s.refused()
            if text is None:
                os.remove(os.path.join(root, "CURRENT"))
            else:
                set_current(root, text)
            s.wait(f"CURRENT {what}: counted", lambda: s.refused() == before + 1)
            time.sleep(0.5)  # several polls: counted once, not once per poll
            check(s.refused() == before + 1, f"CURRENT {what}: counted {s.refused() - before} times")
            s.serves(1, "r7")
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
    s = Service(root, os.path.join(work, "model_files.log"))
    try:
        s.serves(1, "coffee.png")
        build = [SNAPSHOT, "build", f"--root={root}", f"--shards={shards}", f"--model={MODEL}"]
        cases = damage_each_file(s, root, work, build, ["model.pt", "thumbs.bin"], "coffee.png")
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
    s = Service(root, os.path.join(work, "model.log"))
    try:
        s.serves(1, "coffee.png")
        before = s.refused()
        out = run(SNAPSHOT, "build", f"--root={root}", f"--shards={shards}",
                  f"--model={bad_model}").stdout
        version = int(re.search(r"published v(\d+)", out).group(1))
        s.wait("corrupt model: refusal counted", lambda: s.refused() == before + 1)
        line = [l for l in s.log_text().splitlines() if f"refusing snapshot v{version}:" in l]
        check(len(line) == 1 and f"model of snapshot v{version}" in line[0], line)
        s.serves(1, "coffee.png")
        with open(os.path.join(IMAGES, "camera.png"), "rb") as f:
            image = base64.b64encode(f.read()).decode()
        status, body = post_json(s.port, {"image_b64": image, "top_k": 1})
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
        s = Service(root, os.path.join(work, "disk.log"))
        s.serves(1, "rocket.jpg")
        before = s.refused()
        out = run(*index, ok=False)
        check(out.returncode != 0, "the indexer published on a full disk")
        check("No space left on device" in out.stderr, out.stderr)
        left = sorted(os.listdir(root))
        check(left == [".lock", "CURRENT", "HISTORY", "v1"], f"partial files left behind: {left}")
        time.sleep(0.5)
        s.serves(1, "rocket.jpg")
        check(s.refused() == before, "a failed publish reached the service")
        print(f"  disk full: the indexer failed ({out.stderr.strip().splitlines()[-1][:110]})")
        s.stop()
        s = Service(root, os.path.join(work, "disk_restart.log"))
        s.serves(1, "rocket.jpg")
        # The disk grows; the same command publishes v2 and the service swaps.
        run("mount", "-o", f"remount,size={size_mb * 2}m", mnt)
        run(*index)
        s.serves(2, "rocket.jpg")
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
