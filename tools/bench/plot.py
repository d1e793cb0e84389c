#!/usr/bin/python3
"""Plots for tools/bench/README.md (needs Debian's python3-matplotlib).

  plot.py curves OUT.png TITLE CSV
      recall@10 against QPS (log) for every contender in an
      imagesearch_faiss_bench --csv file.
  plot.py ef OUT.png TITLE LABEL=CSV[,LABEL=CSV...]
      recall@10 against ef of our searcher for several data sets (do the
      synthetic data's curves look like the real embeddings'?).
  plot.py latency OUT.png TITLE JSON_DIR
      p50/p90/p99/p99.9 latency and throughput against concurrency from the
      <kind>_c<N>.json files tools/bench/latency_sweep.sh writes.
"""
import csv
import glob
import json
import os
import re
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "ours": "our mmap searcher (in-process)",
    "ours-f32": "our searcher, float vectors only (no graph.f16)",
    "hnswlib": "hnswlib searchKnn (in-process)",
    "faiss": "faiss IndexHNSWFlat, 1 query/call",
    "faiss-b": "faiss, all queries in 1 call",
    "faiss+k": "faiss graph + our AVX2 kernel",
    "service": "imagesearch-query, unary Search (gRPC)",
    "service-batch": "imagesearch-query, SearchBatch of 16",
    "service-poll": "imagesearch-query, unary Search, client spinning (no wakeups)",
}
STYLES = {
    "ours": dict(marker="o", color="tab:blue"),
    "ours-f32": dict(marker="o", color="tab:cyan", linestyle=":"),
    "hnswlib": dict(marker="s", color="tab:orange", linestyle="--"),
    "faiss": dict(marker="^", color="tab:red"),
    "faiss-b": dict(marker="v", color="tab:pink", linestyle=":"),
    "faiss+k": dict(marker="D", color="tab:brown", linestyle=":"),
    "service": dict(marker="x", color="tab:green"),
    "service-batch": dict(marker="+", color="tab:olive", linestyle="--"),
    "service-poll": dict(marker="x", color="tab:purple", linestyle=":"),
}


def finish(fig, ax, title, out):
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(textwrap.fill(title, 85), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def curves(out, title, path):
    series = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            series.setdefault(row["contender"], []).append(
                (int(row["ef"]), float(row["recall"]), float(row["qps"])))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, points in series.items():
        points.sort()
        ax.plot([p[1] for p in points], [p[2] for p in points], label=LABELS.get(name, name),
                **STYLES.get(name, {}))
    ax.set_xlabel("recall@10 (against brute force)")
    ax.set_ylabel("queries per second (one core)")
    ax.set_yscale("log")
    ax.axvline(0.95, color="grey", linewidth=0.8, linestyle=":")
    finish(fig, ax, title, out)


def ef_curves(out, title, specs):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec in specs.split(","):
        label, path = spec.split("=", 1)
        with open(path) as f:
            points = sorted((int(r["ef"]), float(r["recall"])) for r in csv.DictReader(f)
                            if r["contender"] == "ours")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ef")
    ax.set_ylabel("recall@10 (our searcher)")
    ax.axhline(0.95, color="grey", linewidth=0.8, linestyle=":")
    finish(fig, ax, title, out)


def latency(out, title, directory):
    runs = {}
    for path in glob.glob(os.path.join(directory, "*_c*.json")):
        m = re.match(r"(.+)_c(\d+)\.json$", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            runs.setdefault(m.group(1), []).append((int(m.group(2)), json.load(f)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for kind, points in sorted(runs.items()):
        points.sort()
        cs = [c for c, _ in points]
        for pct, style in (("p50", "-"), ("p90", "--"), ("p99", "-."), ("p999", ":")):
            axes[0].plot(cs, [r["latency_ms"][pct] for _, r in points], linestyle=style, marker="o",
                         label=f"{kind} {pct.replace('p999', 'p99.9')}")
        axes[1].plot(cs, [r["queries_per_s"] for _, r in points], marker="o", label=kind)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent calls (closed loop)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("latency (ms)")
    axes[1].set_ylabel("queries per second")
    fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("curves", "ef", "latency"):
        sys.exit(__doc__)
    {"curves": curves, "ef": ef_curves, "latency": latency}[sys.argv[1]](*sys.argv[2:])
