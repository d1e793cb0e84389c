#!/usr/bin/env python3
"""Images added with `imagesearch-indexer --base` against a full rebuild of
the collection, side by side in one run (issue 22, "Writes cost what they
change": adding rows must take <= 2% of a full rebuild's time and write <= 2%
of its bytes).

Every step runs the indexer binary as a user would, default flags, model
load included, timed by wall clock:

  base     N images into a fresh root (v1); cached in --work between runs;
  full     a full rebuild: all N + max(--add) images into a fresh root;
  add k    a copy of the base root, then `--base=v1` with k new images
           (a new segment for them, v1's segment shared), for each k of --add;
  delete   a copy of the base root, then `--base=v1 --remove_ids` of --remove
           base ids and no new image (a deletes file only).

Bytes are those of the files each step created under its root (new inodes:
the version's model.pt is a hard link to the base's), against every byte of
the full rebuild's root but its copy of the model. The goal is read on the add whose share of the
collection is the goal's own (1,000 rows of 1M: 0.1%; with the default
N = 10,000 that is --add=10); a bigger add shows that the cost follows k.

  /usr/bin/python3 tools/bench/indexer_base_bench.py --build=build \\
      --model=build/models/default/model.pt [--base_images=10000] [--add=10,100]

The corpus is Fashion-MNIST's training split from Debian's archive
(tools/corpus/fashion_mnist.sh), fetched into --work once: its first N images
(file order, classes interleaved) are the base, the next ones the adds.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--build", default="build")
p.add_argument("--model", required=True)
p.add_argument("--work", default="/tmp/imagesearch_indexer_base")
p.add_argument("--base_images", type=int, default=10000)
p.add_argument("--add", default="10,100", help="comma-separated numbers of images to add")
p.add_argument("--remove", type=int, default=100, help="base ids the delete step removes")
p.add_argument("--goal_pct", type=float, default=2.0)
p.add_argument("--indexer_args", default="", help="extra flags for every indexer run")
a = p.parse_args()

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INDEXER = os.path.abspath(os.path.join(a.build, "services", "indexer", "imagesearch-indexer"))
MODEL = os.path.abspath(a.model)
ADDS = [int(k) for k in a.add.split(",") if k]
N = a.base_images
if not ADDS or min(ADDS) < 1 or N < 1 or not 1 <= a.remove <= N:
    sys.exit("--add needs one or more positive counts, --base_images a positive one, "
             "and --remove a count from 1 to --base_images")


def corpus():
    """Returns the corpus's manifest lines with absolute image paths."""
    per_class = -(-(N + max(ADDS)) // 10)
    fm = os.path.join(a.work, f"fm{per_class}")
    manifest = os.path.join(fm, "manifest.jsonl")
    if not os.path.exists(manifest):
        subprocess.run(["bash", os.path.join(SRC, "tools", "corpus", "fashion_mnist.sh"), fm,
                        str(per_class), "train"], check=True, capture_output=True)
    lines = []
    for line in open(manifest):
        item = json.loads(line)
        item["path"] = os.path.join(fm, item["path"])
        lines.append(item)
    if len(lines) < N + max(ADDS):
        sys.exit(f"the corpus has {len(lines)} images, fewer than {N} + {max(ADDS)}")
    return lines


def write_manifest(path, items):
    with open(path, "w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")


def inodes(root):
    """{(dev, inode): size} of the regular files under root."""
    seen = {}
    for d, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(d, name))
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return seen


def index(root, manifest, *flags):
    """Runs the indexer; returns (wall seconds, bytes of new files, its summary line)."""
    before = inodes(root) if os.path.isdir(root) else {}
    t0 = time.monotonic()
    r = subprocess.run([INDEXER, f"--input={manifest}", f"--root={root}", f"--model={MODEL}",
                        "--progress=none", *flags, *a.indexer_args.split()],
                       capture_output=True, text=True)
    secs = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"indexer failed ({r.returncode}): {r.stderr.strip()}")
    after = inodes(root)
    written = sum(size for key, size in after.items() if key not in before)
    return secs, written, r.stdout.strip().splitlines()[-1]


def main():
    items = corpus()
    base_items, extra = items[:N], items[N:N + max(ADDS)]
    os.makedirs(a.work, exist_ok=True)
    lists = os.path.join(a.work, "lists")
    os.makedirs(lists, exist_ok=True)
    base_manifest = os.path.join(lists, f"base{N}.jsonl")
    write_manifest(base_manifest, base_items)

    # The cached base is the one built from these images with this model
    # and these flags; anything else builds it again.
    st = os.stat(MODEL)
    key = json.dumps([MODEL, st.st_size, st.st_mtime_ns, a.indexer_args,
                      [item["path"] for item in base_items]])
    base_root = os.path.join(a.work, f"base{N}")
    stamp = os.path.join(a.work, f"base{N}.key")
    cached = os.path.exists(stamp) and open(stamp).read() == key
    if not (cached and os.path.exists(os.path.join(base_root, "CURRENT"))):
        shutil.rmtree(base_root, ignore_errors=True)
        if os.path.exists(stamp):
            os.remove(stamp)
        secs, written, line = index(base_root, base_manifest)
        with open(stamp, "w") as f:
            f.write(key)
        print(f"base (cached for later runs): {N} images in {secs:.1f} s, {written:,} B\n  {line}")
    else:
        print(f"base: {N} images, cached in {base_root}")

    full_root = os.path.join(a.work, "full")
    shutil.rmtree(full_root, ignore_errors=True)
    full_manifest = os.path.join(lists, f"full{N}+{len(extra)}.jsonl")
    write_manifest(full_manifest, base_items + extra)
    full_secs, full_bytes, line = index(full_root, full_manifest)
    # The version's copy of the model is not the collection's bytes (at 1M
    # rows it is noise; at 10k it would be a fifth of the rebuild): leave it
    # out of the rebuild's bytes, which makes the ratios stricter.
    model_bytes = os.path.getsize(os.path.join(full_root, "v1", "model.pt"))
    full_bytes -= model_bytes
    print(f"full rebuild: {N + len(extra)} images in {full_secs:.1f} s, {full_bytes:,} B "
          f"(and model.pt, {model_bytes:,} B)\n  {line}")

    work_root = os.path.join(a.work, "step")
    results = []
    for k in ADDS:
        shutil.rmtree(work_root, ignore_errors=True)
        shutil.copytree(base_root, work_root, symlinks=True)
        add_manifest = os.path.join(lists, f"add{k}.jsonl")
        write_manifest(add_manifest, extra[:k])
        secs, written, line = index(work_root, add_manifest, "--base=v1")
        results.append((f"add {k} ({100.0 * k / N:.2g}% of N)", k, secs, written))
        print(f"add {k}: {secs:.2f} s, {written:,} B\n  {line}")

    shutil.rmtree(work_root, ignore_errors=True)
    shutil.copytree(base_root, work_root, symlinks=True)
    remove = os.path.join(lists, f"remove{a.remove}.txt")
    with open(remove, "w") as f:
        for item in base_items[:: max(1, N // a.remove)][: a.remove]:
            f.write(item["id"] + "\n")
    empty = os.path.join(lists, "empty.jsonl")
    write_manifest(empty, [])
    secs, written, line = index(work_root, empty, "--base=v1", f"--remove_ids={remove}")
    results.append((f"delete {a.remove}", None, secs, written))
    print(f"delete {a.remove}: {secs:.2f} s, {written:,} B\n  {line}")
    shutil.rmtree(work_root, ignore_errors=True)

    print(f"\nN = {N} Fashion-MNIST images, model {MODEL}; full rebuild of "
          f"{N + len(extra)}: {full_secs:.1f} s, {full_bytes:,} B")
    print(f"{'step':<22} {'seconds':>8} {'bytes':>12} {'time/full':>10} {'bytes/full':>11}")
    goal_k = min(ADDS, key=lambda k: abs(k / N - 0.001))
    verdicts = []
    for name, k, secs, written in results:
        tr, br = 100.0 * secs / full_secs, 100.0 * written / full_bytes
        print(f"{name:<22} {secs:>8.2f} {written:>12,} {tr:>9.2f}% {br:>10.2f}%")
        if k == goal_k or k is None:
            ok = tr <= a.goal_pct and br <= a.goal_pct
            verdicts.append(f"{name}: {'PASS' if ok else 'FAIL'} (time {tr:.2f}%, bytes {br:.2f}% "
                            f"of the full rebuild; goal <= {a.goal_pct:g}%)")
    for v in verdicts:
        print(v)


main()
