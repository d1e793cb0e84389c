// Writes cost what they change: on N x D clustered vectors,
// side by side in one run,
//   (1) full rebuild: PublishSnapshot of all N + add rows into a fresh root
//       (graph build included): seconds, and the bytes of the new version
//       dir plus its segment dir;
//   (2) incremental add: PublishUpdate of the `add` rows onto the N-row
//       version: seconds, UpdateResult::bytes_written, and the bytes of the
//       files that actually appeared under the root (new inodes) as a check;
//   (3) delete-only: PublishUpdate deleting `delete` ids of the base rows
//       from the version (2) made: seconds and bytes;
//   (4) replica swap: Snapshot::Open of the new version with `reuse` = the
//       version already open (what a replica does when CURRENT moves), and
//       the segments it opened (SegmentRef::opened_here), against opening
//       it with nothing to reuse; in VerifyMode::kChecksums (the query
//       service's default) and kSizes, warm page cache.
// Prints each figure and the ratios incremental / full, with PASS/FAIL
// against the goal (<= 2% of a full rebuild in time and bytes at
// 1M x 512 adding 1,000 rows). A benchmark, not a test: a FAIL does not
// change the exit status, only errors do.
//
// Inputs are fixed (vectors from seed 1, ids "id-<row>", HNSW level seed
// 100). The N-row base root is cached in --workdir and reused by a later run
// with the same --count/--dim/--m/--ef_construction; each run publishes its
// updates into a fresh hard-linked copy of it, so the cache stays one
// version. The full rebuild is always built.
//
//   imagesearch_incremental_bench [--count=100000 --dim=128 --add=1000 --delete=100]
//       [--m=16 --ef_construction=100 --threads=0 --rounds=3 --open_runs=5]
//       [--workdir=/tmp/imagesearch_incremental_bench --json_out=FILE --cpu=-1]
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"
#include "libs/index/test_vectors.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "nlohmann/json.hpp"
#include "tools/bench/bench_util.h"

ABSL_FLAG(int64_t, count, 100000, "Rows of the base version (N).");
ABSL_FLAG(int, dim, 128, "Dimension.");
ABSL_FLAG(int64_t, add, 1000, "Rows the incremental update adds (the full rebuild has N + add).");
ABSL_FLAG(int64_t, delete, 100, "Base ids the delete-only update deletes.");
ABSL_FLAG(int, m, 16, "HNSW M.");
ABSL_FLAG(int, ef_construction, 100, "HNSW ef_construction.");
ABSL_FLAG(int, threads, 0, "Graph build threads (0 = all cores).");
ABSL_FLAG(int, rounds, 3,
          "Incremental add and delete-only updates, each on the same base (median reported).");
ABSL_FLAG(int, open_runs, 5, "Opens per swap figure (median reported).");
ABSL_FLAG(std::string, workdir, "/tmp/imagesearch_incremental_bench",
          "Holds the cached base root (base/), the full rebuild's root (full/) and this run's "
          "update root (run/).");
ABSL_FLAG(std::string, json_out, "", "Also write the figures here as JSON.");
ABSL_FLAG(int, cpu, -1,
          "Pin this process (and the build threads it starts) to this core; -1: not pinned. "
          "With --threads=1 for a one-core comparison.");

namespace imagesearch {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using snapshot::VerifyMode;

// The data, fixed: changing any of these changes the cached base's key.
constexpr uint32_t kSeed = 1;
constexpr size_t kClusters = 1000;
constexpr float kSpread = 0.6f;
constexpr double kGoal = 0.02;  // Issue 22 §2: <= 2% of a full rebuild.

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string RowId(size_t row) { return absl::StrCat("id-", row); }

// Rows [first, first + count) of `vectors` as a snapshot input whose graph
// writer records the seconds it took in *graph_seconds.
snapshot::SnapshotInput MakeInput(const std::vector<float>& vectors, size_t first, size_t count,
                                  int dim, const index::HnswParams& hnsw, double* graph_seconds) {
  snapshot::SnapshotInput in;
  in.count = count;
  in.dim = dim;
  in.metric = index::Metric::kCosine;
  in.hnsw = hnsw;
  in.ids.reserve(count);
  for (size_t i = first; i < first + count; ++i) {
    in.ids.push_back({RowId(i), absl::StrCat("mem://", i), ""});
  }
  index::GraphWriter build =
      index::HnswGraphWriter(vectors.data() + first * static_cast<size_t>(dim), count,
                             static_cast<size_t>(dim), in.metric, hnsw);
  in.graph = [build, graph_seconds](const std::string& graph, const std::string& offsets) {
    const auto t0 = Clock::now();
    absl::Status s = build(graph, offsets);
    *graph_seconds = Seconds(t0);
    return s;
  };
  return in;
}

// Calls f on every regular file under the root's version dirs and
// segments/ (not CURRENT, HISTORY or .lock: a few bytes of bookkeeping).
void ForEachStoreFile(const std::string& root,
                      const std::function<void(const fs::path&, const struct stat&)>& f) {
  std::error_code ec;
  for (const auto& top : fs::directory_iterator(root, ec)) {
    const std::string name = top.path().filename().string();
    const bool version = snapshot::ParseVersionName(name).ok();
    if (!top.is_directory() || (!version && name != snapshot::kSegmentsDir)) continue;
    for (const auto& e : fs::recursive_directory_iterator(top.path(), ec)) {
      struct stat st;
      if (::lstat(e.path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) f(e.path(), st);
    }
  }
}

using InodeSet = std::set<std::pair<uint64_t, uint64_t>>;

InodeSet Inodes(const std::string& root) {
  InodeSet out;
  ForEachStoreFile(root, [&](const fs::path&, const struct stat& st) {
    out.insert({static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)});
  });
  return out;
}

// Bytes of the files under the root that are not among `before` (by inode):
// what a publish actually wrote, hard links to older files excluded.
uint64_t NewBytes(const std::string& root, const InodeSet& before, size_t* files = nullptr) {
  uint64_t bytes = 0;
  size_t n = 0;
  ForEachStoreFile(root, [&](const fs::path&, const struct stat& st) {
    if (before.count({static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)})) return;
    bytes += static_cast<uint64_t>(st.st_size);
    ++n;
  });
  if (files != nullptr) *files = n;
  return bytes;
}

// A copy of root `from` at `to` whose version and segment files are hard
// links (they are immutable); CURRENT and HISTORY are copied (HISTORY is
// appended to in place).
absl::Status LinkTree(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::remove_all(to, ec);
  fs::create_directories(to, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", to, ": ", ec.message()));
  for (auto it = fs::recursive_directory_iterator(from, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const fs::path rel = fs::relative(it->path(), from);
    const std::string name = it->path().filename().string();
    if (name == ".lock" || name.rfind(".tmp-", 0) == 0) {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    const fs::path dst = fs::path(to) / rel;
    if (it->is_directory()) {
      fs::create_directory(dst, ec);
    } else if (it.depth() == 0) {
      fs::copy_file(it->path(), dst, ec);
    } else {
      fs::create_hard_link(it->path(), dst, ec);
    }
    if (ec) return absl::InternalError(absl::StrCat(it->path().string(), ": ", ec.message()));
  }
  if (ec) return absl::InternalError(absl::StrCat("copy ", from, ": ", ec.message()));
  return absl::OkStatus();
}

std::string BaseKey(size_t n, int dim, const index::HnswParams& hnsw) {
  return absl::StrCat("incremental_bench base: count=", n, " dim=", dim, " m=", hnsw.m,
                      " ef_construction=", hnsw.ef_construction, " seed=", kSeed,
                      " clusters=", kClusters, " spread=", kSpread, " ids=id-<row> cosine\n");
}

// The cached base root if it holds exactly v1 of these parameters; else
// builds it (and caches it). Returns whether it was built.
absl::StatusOr<bool> EnsureBase(const std::string& root, const std::string& key_file,
                                const std::string& key, const std::vector<float>& vectors, size_t n,
                                int dim, const index::HnswParams& hnsw) {
  {
    std::ifstream f(key_file);
    std::string cached((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto versions = snapshot::ListVersions(root);
    if (cached == key && versions.ok() && *versions == std::vector<uint64_t>{1}) {
      auto s = snapshot::Snapshot::Open(root, 1, VerifyMode::kSizes);
      if (s.ok() && (*s)->live_count() == n && (*s)->dim() == dim) {
        std::printf("base: reusing the cached %zu x %d version in %s\n", n, dim, root.c_str());
        return false;
      }
    }
  }
  std::error_code ec;
  fs::remove(key_file, ec);
  fs::remove_all(root, ec);
  std::printf("base: building %zu x %d in %s (cached for later runs)...\n", n, dim, root.c_str());
  std::fflush(stdout);
  double graph_s = 0;
  const auto t0 = Clock::now();
  auto v = snapshot::PublishSnapshot(root, MakeInput(vectors, 0, n, dim, hnsw, &graph_s));
  if (!v.ok()) return v.status();
  std::printf("base: built in %.1f s (graph %.1f s)\n", Seconds(t0), graph_s);
  std::ofstream(key_file) << key;
  return true;
}

struct OpenFigure {
  double seconds = 0;  // Median.
  size_t opened = 0;   // Segments opened (not shared with `reuse`).
  size_t segments = 0;
};

// Opens root/v<version> `runs` times with `reuse` (may be null).
absl::StatusOr<OpenFigure> TimeOpen(const std::string& root, uint64_t version, VerifyMode mode,
                                    const snapshot::Snapshot* reuse, int runs) {
  std::vector<double> t;
  OpenFigure f;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = Clock::now();
    auto s = snapshot::Snapshot::Open(root, version, mode, reuse);
    t.push_back(Seconds(t0));
    if (!s.ok()) return s.status();
    f.segments = (*s)->segments().size();
    f.opened = static_cast<size_t>(
        std::count_if((*s)->segments().begin(), (*s)->segments().end(),
                      [](const snapshot::SegmentRef& ref) { return ref.opened_here; }));
  }
  f.seconds = bench::Median(t);
  return f;
}

json OpenJson(const OpenFigure& f) {
  return {{"seconds", f.seconds}, {"segments_opened", f.opened}, {"segments", f.segments}};
}

std::string JoinSeconds(const std::vector<double>& v) {
  return absl::StrJoin(v, ", ",
                       [](std::string* o, double x) { absl::StrAppend(o, absl::SixDigits(x)); });
}

const char* PassFail(double ratio) { return ratio <= kGoal ? "PASS" : "FAIL"; }

int Fail(const absl::Status& s, const char* what) {
  std::cerr << what << ": " << s << "\n";
  return 1;
}

int Run() {
  const size_t n = static_cast<size_t>(absl::GetFlag(FLAGS_count));
  const int dim = absl::GetFlag(FLAGS_dim);
  const size_t add = static_cast<size_t>(absl::GetFlag(FLAGS_add));
  const size_t del = static_cast<size_t>(absl::GetFlag(FLAGS_delete));
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const int open_runs = std::max(1, absl::GetFlag(FLAGS_open_runs));
  if (n == 0 || dim <= 0 || add == 0 || del == 0 || del > n) {
    std::cerr << "need --count > 0, --dim > 0, --add > 0 and 0 < --delete <= --count\n";
    return 1;
  }
  bench::PinTo(absl::GetFlag(FLAGS_cpu));
  index::HnswParams hnsw;
  hnsw.m = absl::GetFlag(FLAGS_m);
  hnsw.ef_construction = absl::GetFlag(FLAGS_ef_construction);
  hnsw.threads = absl::GetFlag(FLAGS_threads);
  const std::string workdir = absl::GetFlag(FLAGS_workdir);
  const std::string base_root = workdir + "/base", full_root = workdir + "/full",
                    run_root = workdir + "/run";
  std::error_code ec;
  fs::create_directories(workdir, ec);

  std::printf(
      "data: %zu + %zu x %d clustered vectors (cosine, seed %u, %zu clusters), M %d, "
      "ef_construction %d, %s build threads%s\n",
      n, add, dim, kSeed, kClusters, hnsw.m, hnsw.ef_construction,
      hnsw.threads == 0 ? "all" : std::to_string(hnsw.threads).c_str(),
      absl::GetFlag(FLAGS_cpu) >= 0
          ? absl::StrCat(", pinned to core ", absl::GetFlag(FLAGS_cpu)).c_str()
          : "");
  std::fflush(stdout);
  // One draw: the base is rows 0..N-1, the added rows N..N+add-1.
  const std::vector<float> vectors =
      index::ClusteredVectors(n + add, static_cast<size_t>(dim), kClusters, kSeed, kSpread);

  auto built =
      EnsureBase(base_root, workdir + "/base.key", BaseKey(n, dim, hnsw), vectors, n, dim, hnsw);
  if (!built.ok()) return Fail(built.status(), "base");

  // (1) Full rebuild of N + add rows into a fresh root.
  fs::remove_all(full_root, ec);
  double full_graph_s = 0;
  std::printf("full rebuild: %zu rows...\n", n + add);
  std::fflush(stdout);
  const auto f0 = Clock::now();
  auto full_v = snapshot::PublishSnapshot(full_root,
                                          MakeInput(vectors, 0, n + add, dim, hnsw, &full_graph_s));
  const double full_s = Seconds(f0);
  if (!full_v.ok()) return Fail(full_v.status(), "full rebuild");
  size_t full_files = 0;
  const uint64_t full_bytes = NewBytes(full_root, {}, &full_files);

  // (2) and (3), `rounds` times each on a hard-linked copy of the base root:
  // add onto v1, then delete base ids from the version the add made.
  if (absl::Status s = LinkTree(base_root, run_root); !s.ok()) return Fail(s, "copy base");
  std::vector<std::string> delete_ids;
  for (size_t i = 0; i < del; ++i) delete_ids.push_back(RowId(i * n / del));
  std::vector<double> add_s, add_graph_s, del_s;
  snapshot::UpdateResult add_result, del_result;
  uint64_t add_disk = 0, del_disk = 0;
  size_t add_files = 0, del_files = 0;
  uint64_t add_version = 0, del_version = 0;
  for (int r = 0; r < rounds; ++r) {
    snapshot::SnapshotUpdate up;
    up.base_version = 1;
    double graph_s = 0;
    up.added = MakeInput(vectors, n, add, dim, hnsw, &graph_s);
    InodeSet before = Inodes(run_root);
    auto t0 = Clock::now();
    auto a = snapshot::PublishUpdate(run_root, up);
    add_s.push_back(Seconds(t0));
    add_graph_s.push_back(graph_s);
    if (!a.ok()) return Fail(a.status(), "incremental add");
    if (a->replaced != 0 || a->deleted != 0) {
      std::cerr << "incremental add replaced " << a->replaced << " rows, deleted " << a->deleted
                << "; expected none\n";
      return 1;
    }
    add_result = *a;
    add_disk = NewBytes(run_root, before, &add_files);

    snapshot::SnapshotUpdate d;
    d.base_version = a->version;
    d.delete_ids = delete_ids;
    before = Inodes(run_root);
    t0 = Clock::now();
    auto dr = snapshot::PublishUpdate(run_root, d);
    del_s.push_back(Seconds(t0));
    if (!dr.ok()) return Fail(dr.status(), "delete-only update");
    if (dr->deleted != del || dr->unknown_ids != 0) {
      std::cerr << "delete-only update deleted " << dr->deleted << " of " << del << " ids ("
                << dr->unknown_ids << " unknown)\n";
      return 1;
    }
    del_result = *dr;
    del_disk = NewBytes(run_root, before, &del_files);
    if (r == 0) {
      add_version = a->version;
      del_version = dr->version;
    }
  }
  const double inc_s = bench::Median(add_s), inc_graph_s = bench::Median(add_graph_s),
               delete_s = bench::Median(del_s);

  // (4) Replica swap: open the new version with the one already open as
  // `reuse`, against with nothing to reuse. A first checksummed open of
  // each version warms the page cache.
  for (const auto& [root, v] : std::vector<std::pair<std::string, uint64_t>>{
           {run_root, 1}, {run_root, add_version}, {run_root, del_version}, {full_root, *full_v}}) {
    if (auto s = snapshot::Snapshot::Open(root, v, VerifyMode::kChecksums); !s.ok()) {
      return Fail(s.status(), "open");
    }
  }
  struct Swap {
    OpenFigure base, full_reuse, add_reuse, add_fresh, del_reuse, del_fresh;
  };
  Swap swap[2];
  const VerifyMode modes[2] = {VerifyMode::kChecksums, VerifyMode::kSizes};
  const char* mode_names[2] = {"checksums", "sizes"};
  for (int i = 0; i < 2; ++i) {
    const VerifyMode mode = modes[i];
    auto base = snapshot::Snapshot::Open(run_root, 1, mode);
    auto added = snapshot::Snapshot::Open(run_root, add_version, mode);
    if (!base.ok() || !added.ok()) return Fail(base.ok() ? added.status() : base.status(), "open");
    struct Item {
      OpenFigure* out;
      std::string root;
      uint64_t version;
      const snapshot::Snapshot* reuse;
    };
    const Item items[] = {
        {&swap[i].base, run_root, 1, nullptr},
        {&swap[i].full_reuse, full_root, *full_v, base->get()},
        {&swap[i].add_reuse, run_root, add_version, base->get()},
        {&swap[i].add_fresh, run_root, add_version, nullptr},
        {&swap[i].del_reuse, run_root, del_version, added->get()},
        {&swap[i].del_fresh, run_root, del_version, nullptr},
    };
    for (const Item& it : items) {
      auto f = TimeOpen(it.root, it.version, mode, it.reuse, open_runs);
      if (!f.ok()) return Fail(f.status(), "open");
      *it.out = *f;
    }
  }

  // Report.
  const double r_time = inc_s / full_s;
  const double r_bytes =
      static_cast<double>(add_result.bytes_written) / static_cast<double>(full_bytes);
  const double r_del_time = delete_s / full_s;
  const double r_del_bytes =
      static_cast<double>(del_result.bytes_written) / static_cast<double>(full_bytes);
  const uint64_t bitmap_bytes = 24 + (n + 63) / 64 * 8;  // deletes.h: header + one bit a row.
  std::printf("\n%zu x %d base, +%zu rows, -%zu ids (updates: median of %d rounds)\n", n, dim, add,
              del, rounds);
  std::printf("  %-30s %9.3f s %-16s %12llu bytes in %zu files\n",
              absl::StrCat("full rebuild, ", n + add, " rows").c_str(), full_s,
              absl::StrFormat("(graph %.3f s)", full_graph_s).c_str(),
              static_cast<unsigned long long>(full_bytes), full_files);
  // One update's line: UpdateResult's bytes, checked against the new files.
  auto update_line = [](const std::string& what, double secs, const std::string& graph,
                        uint64_t written, uint64_t disk, size_t files) {
    std::printf("  %-30s %9.3f s %-16s %12llu bytes (UpdateResult), %llu on disk in %zu files%s\n",
                what.c_str(), secs, graph.c_str(), static_cast<unsigned long long>(written),
                static_cast<unsigned long long>(disk), files, disk == written ? "" : "  MISMATCH");
  };
  update_line(absl::StrCat("incremental add, ", add, " rows"), inc_s,
              absl::StrFormat("(graph %.3f s)", inc_graph_s), add_result.bytes_written, add_disk,
              add_files);
  update_line(absl::StrCat("delete-only, ", del, " ids"), delete_s, "", del_result.bytes_written,
              del_disk, del_files);
  std::printf(
      "    the deletes file is a bitmap of the segment's rows: %llu bytes for %zu rows, whatever "
      "the number deleted\n",
      static_cast<unsigned long long>(bitmap_bytes), n);
  std::printf("  add rounds: %s s; delete rounds: %s s\n", JoinSeconds(add_s).c_str(),
              JoinSeconds(del_s).c_str());

  std::printf("\nreplica swap: Snapshot::Open of the new version (median of %d, warm page cache)\n",
              open_runs);
  for (int i = 0; i < 2; ++i) {
    const Swap& s = swap[i];
    auto line = [](const char* what, const OpenFigure& f) {
      std::printf("    %-44s %9.6f s  %zu of %zu segments opened\n", what, f.seconds, f.opened,
                  f.segments);
    };
    std::printf("  VerifyMode::k%s%s\n", i == 0 ? "Checksums" : "Sizes",
                i == 0 ? " (the query service's default)" : "");
    line("base v1, nothing to reuse", s.base);
    line("full rebuild's version, reuse = base", s.full_reuse);
    line("incremental add, reuse = base", s.add_reuse);
    line("incremental add, nothing to reuse", s.add_fresh);
    line("delete-only, reuse = the add's version", s.del_reuse);
    line("delete-only, nothing to reuse", s.del_fresh);
    std::printf(
        "    swap to the add / swap to the full rebuild: %.4fx; reuse / nothing to reuse: "
        "%.4fx (add), %.4fx (delete)\n",
        s.add_reuse.seconds / s.full_reuse.seconds, s.add_reuse.seconds / s.add_fresh.seconds,
        s.del_reuse.seconds / s.del_fresh.seconds);
  }

  const bool goal_size = n == 1000000 && dim == 512 && add == 1000;
  std::printf("\nratio incremental add / full rebuild: time %.4f (%.2f%%), bytes %.4f (%.2f%%)\n",
              r_time, 100 * r_time, r_bytes, 100 * r_bytes);
  std::printf("ratio delete-only / full rebuild:     time %.4f (%.2f%%), bytes %.4f (%.2f%%)\n",
              r_del_time, 100 * r_del_time, r_del_bytes, 100 * r_del_bytes);
  std::printf("goal: an add of 1,000 rows to 1M x 512 costs <= 2%% of a full rebuild%s\n",
              goal_size ? "" : " (this run is not at that size)");
  std::printf("  time %s, bytes %s\n", PassFail(r_time), PassFail(r_bytes));

  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    json swaps;
    for (int i = 0; i < 2; ++i) {
      const Swap& s = swap[i];
      swaps[mode_names[i]] = {{"base_fresh", OpenJson(s.base)},
                              {"full_reuse_base", OpenJson(s.full_reuse)},
                              {"add_reuse_base", OpenJson(s.add_reuse)},
                              {"add_fresh", OpenJson(s.add_fresh)},
                              {"delete_reuse_add", OpenJson(s.del_reuse)},
                              {"delete_fresh", OpenJson(s.del_fresh)}};
    }
    json out = {
        {"params",
         {{"count", n},
          {"dim", dim},
          {"add", add},
          {"delete", del},
          {"m", hnsw.m},
          {"ef_construction", hnsw.ef_construction},
          {"threads", hnsw.threads},
          {"rounds", rounds},
          {"open_runs", open_runs},
          {"cpu", absl::GetFlag(FLAGS_cpu)},
          {"base_cached", !*built}}},
        {"full", {{"seconds", full_s}, {"graph_seconds", full_graph_s}, {"bytes", full_bytes}}},
        {"add",
         {{"seconds", inc_s},
          {"graph_seconds", inc_graph_s},
          {"rounds_seconds", add_s},
          {"bytes_written", add_result.bytes_written},
          {"bytes_on_disk", add_disk}}},
        {"delete",
         {{"seconds", delete_s},
          {"rounds_seconds", del_s},
          {"bytes_written", del_result.bytes_written},
          {"bytes_on_disk", del_disk}}},
        {"swap", swaps},
        {"ratios",
         {{"add_time", r_time},
          {"add_bytes", r_bytes},
          {"delete_time", r_del_time},
          {"delete_bytes", r_del_bytes}}},
        {"goal",
         {{"max_ratio", kGoal}, {"time_met", r_time <= kGoal}, {"bytes_met", r_bytes <= kGoal}}}};
    std::ofstream f(absl::GetFlag(FLAGS_json_out));
    f << out.dump(2) << "\n";
    if (!f) {
      std::cerr << "cannot write " << absl::GetFlag(FLAGS_json_out) << "\n";
      return 1;
    }
  }
  // The full rebuild's root is not reused: free its disk.
  fs::remove_all(full_root, ec);
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
