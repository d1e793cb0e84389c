// A merge's memory when its segments carry thumbnails: builds (once, cached
// in --workdir) a root of two segments of --rows rows each, every row with a
// --thumb_bytes thumbnail, hard-links it into a fresh copy and merges the two
// segments there (MergeSegments, --extend), then checks that every merged
// row kept its thumbnail. Its peak memory is what to read: run it under
// /usr/bin/time, or in a memory cgroup to see whether the merge fits one.
// Thumbnails are read from the source segments' maps as thumbs.bin is
// written, so they never all sit in the heap (tools/bench/results/LOG.md,
// "Merges hold one thumbnail at a time").
//
//   imagesearch_merge_memory_bench [--rows=40000 --thumb_bytes=25000 --extend
//       --workdir=/tmp/imagesearch_merge_memory_bench]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"
#include "tools/bench/bench_util.h"

ABSL_FLAG(int, rows, 40000, "Rows per segment (two segments).");
ABSL_FLAG(int, thumb_bytes, 25000, "Bytes of every row's thumbnail.");
ABSL_FLAG(bool, extend, true, "Merge by extending the first segment's graph.");
ABSL_FLAG(std::string, workdir, "/tmp/imagesearch_merge_memory_bench",
          "Where the source root is cached, and the merged copy made.");

namespace imagesearch {
namespace {

constexpr int kDim = 16;

std::string Thumb(size_t row, size_t bytes) {
  std::string t = absl::StrCat("thumb-", row, "-");
  t.resize(bytes, static_cast<char>('a' + row % 26));
  return t;
}

int Run() {
  const size_t n = static_cast<size_t>(absl::GetFlag(FLAGS_rows));
  const size_t bytes = static_cast<size_t>(absl::GetFlag(FLAGS_thumb_bytes));
  const std::string dir = absl::StrCat(absl::GetFlag(FLAGS_workdir), "/rows", n, "-thumb", bytes);
  const std::string source = dir + "/source";
  namespace fs = std::filesystem;
  if (!fs::exists(dir + "/BUILT")) {
    fs::remove_all(dir);
    for (int s = 0; s < 2; ++s) {
      auto c = snapshot::MakeSyntheticCorpus(n, kDim, index::Metric::kCosine, s ? "b" : "a", 3 + s);
      for (size_t i = 0; i < n; ++i) c.input.thumbnails.push_back(Thumb(s * n + i, bytes));
      absl::Status st;
      if (s == 0) {
        st = snapshot::PublishSnapshot(source, c.WithGraph()).status();
      } else {
        snapshot::SnapshotUpdate u;
        u.base_version = 1;
        u.added = c.WithGraph();
        st = snapshot::PublishUpdate(source, u).status();
      }
      if (!st.ok()) {
        std::cerr << st << "\n";
        return 1;
      }
    }
    std::ofstream(dir + "/BUILT") << "2\n";
  }
  const std::string root = dir + "/merged";
  fs::remove_all(root);
  bench::LinkCopyRoot(source, root);
  auto before = snapshot::Snapshot::Open(root, 2, snapshot::VerifyMode::kSizes);
  if (!before.ok()) {
    std::cerr << before.status() << "\n";
    return 1;
  }
  snapshot::MergeRequest req;
  for (const auto& ref : (*before)->segments()) req.segments.push_back(ref.name);
  req.extend = absl::GetFlag(FLAGS_extend);
  before->reset();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = snapshot::MergeSegments(root, req);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r.ok()) {
    std::cerr << r.status() << "\n";
    return 1;
  }
  auto after = snapshot::Snapshot::Open(root, r->version, snapshot::VerifyMode::kSizes);
  if (!after.ok()) {
    std::cerr << after.status() << "\n";
    return 1;
  }
  for (size_t s = 0; s < 2; ++s) {
    for (size_t i = 0; i < n; i += std::max<size_t>(1, n / 100)) {
      const std::string id = absl::StrCat(s ? "b" : "a", i);
      auto row = (*after)->Find(id);
      absl::StatusOr<absl::string_view> thumb =
          row ? (*after)->Thumbnail(*row) : absl::NotFoundError(id);
      if (!thumb.ok() || *thumb != Thumb(s * n + i, bytes)) {
        std::cerr << id << ": thumbnail lost in the merge\n";
        return 1;
      }
    }
  }
  std::printf("merged %llu rows with %zu-byte thumbnails (%.2f GB) in %.2f s%s\n",
              static_cast<unsigned long long>(r->rows), bytes,
              static_cast<double>(2 * n * bytes) / 1e9, secs,
              r->extended.empty() ? ", a new graph" : ", the first segment's graph extended");
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
