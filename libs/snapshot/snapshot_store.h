// A snapshot root on disk: versioned, immutable snapshot directories plus a
// CURRENT file naming the live one.
//
//   root/CURRENT          "v<N>\n", replaced atomically (temp, fsync, rename)
//   root/HISTORY          "v<N> <UTC time, RFC 3339, ms>\n" appended (fsync'd)
//                         right after each CURRENT replacement: the versions
//                         made live, in order, and when ("v<N>\n" alone in
//                         roots written before the time was recorded)
//   root/v<N>/            MANIFEST.json, graph.hnsw, graph.offsets, [graph.f16], ids.bin,
//                         [model.pt], [thumbs.bin], [attrs.bin], [rejects.jsonl], ...
//   root/.tmp-v<N>-<pid>  a version being written (removed if stale)
//   root/.lock            flock'd by writers (publish, set-current, gc)
//
// Publishing writes the new version into a temp dir, fsyncs every file and
// the dir, renames it to v<N>, fsyncs the root, and only then replaces
// CURRENT. A crash at any step leaves the previous version live.
//
// Functions are safe to call from several processes at once: writers
// serialise on root/.lock; readers never need it.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_STORE_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"
#include "libs/snapshot/attribute_table.h"
#include "libs/snapshot/ids_table.h"
#include "libs/snapshot/manifest.h"

namespace imagesearch::snapshot {

inline constexpr char kManifestFile[] = "MANIFEST.json";
inline constexpr char kCurrentFile[] = "CURRENT";
inline constexpr char kHistoryFile[] = "HISTORY";
inline constexpr char kGraphFile[] = "graph.hnsw";
inline constexpr char kOffsetsFile[] = "graph.offsets";
// The graph's vectors in binary16 (libs/index/half_vectors.h), written at
// publish for dim >= kHalfVectorsMinDim. Optional when reading: versions
// without it are searched from their float vectors only.
inline constexpr char kHalfVectorsFile[] = "graph.f16";
// Below this dimension graph.f16 is not written by default: at 512 the
// search is bound by the latency of each candidate's first cache miss, not
// by bytes, and reading half then float vectors measured 0.96-1.01x of
// floats only; at 1792 (7 KB vectors) it measured 1.2x (tools/bench/README.md).
inline constexpr int kHalfVectorsMinDim = 1024;
inline constexpr char kIdsFile[] = "ids.bin";
inline constexpr char kModelFile[] = "model.pt";

struct SnapshotInput {
  // Required: writes graph.hnsw and graph.offsets, whose labels are the rows
  // 0..count-1 (row i <-> ids[i]). The store publishes the files as they
  // are; graphs are built in libs/index (index::HnswGraphWriter for vectors
  // in memory, HnswStreamBuilder::Save for the indexer's streamed build).
  index::GraphWriter graph;
  size_t count = 0;
  int dim = 0;
  index::Metric metric = index::Metric::kCosine;
  std::vector<IdRecord> ids;
  index::HnswParams hnsw;  // Recorded in the manifest (m, ef_construction).
  // Write graph.f16: unset = when dim >= kHalfVectorsMinDim.
  std::optional<bool> half_vectors;
  int default_ef = 64;
  // Optional: the model that made the vectors; copied in as model.pt.
  std::string model_path;
  ModelIdentity model;  // name/version/...; sha256 and file are filled in.
  uint64_t base_version = 0;
  // Extra files to store verbatim (e.g. "rejects.jsonl"), listed in the manifest.
  std::map<std::string, std::string> extra_files;
  // Optional: one encoded thumbnail per row (empty = none for that row),
  // stored as thumbs.bin. Leave the whole vector empty for no thumbs.bin.
  std::vector<std::string> thumbnails;
  // Optional: typed attribute columns for filters (attrs.bin), one row of
  // values (in schema order) per vector. Empty schema: no attrs.bin.
  std::vector<FieldSpec> schema;
  std::vector<std::vector<AttrValue>> attributes;
};

struct PublishOptions {
  // False: write and rename v<N> into place but leave CURRENT alone, so the
  // version can be checked (tools/promote.sh) before SetCurrentVersion.
  bool make_current = true;
  // Test hook: called with the name of each step ("built", "synced",
  // "renamed") before it is taken; a crash test makes it _exit().
  std::function<void(absl::string_view step)> fault_hook;
};

// Builds and publishes a new version (max existing + 1) and makes it CURRENT
// (unless options.make_current is false). Returns the new version number.
absl::StatusOr<uint64_t> PublishSnapshot(const std::string& root, const SnapshotInput& input,
                                         const PublishOptions& options = {});

std::string VersionDirName(uint64_t version);  // "v<N>"
std::string VersionDir(const std::string& root, uint64_t version);
// Parses "v<N>" (N >= 1); INVALID_ARGUMENT otherwise.
absl::StatusOr<uint64_t> ParseVersionName(absl::string_view name);

// The version CURRENT names. NOT_FOUND if nothing was published yet.
absl::StatusOr<uint64_t> ReadCurrentVersion(const std::string& root);

// One line of root/HISTORY: `version` was made CURRENT at `at` (unset for a
// line written without a time).
struct Promotion {
  uint64_t version = 0;
  std::optional<absl::Time> at;
};
// Every line of root/HISTORY, oldest first (torn or garbage lines skipped).
// Empty if there is no HISTORY.
absl::StatusOr<std::vector<Promotion>> ReadPromotionLog(const std::string& root);

// The versions that were made CURRENT, most recent first, each once, read
// from root/HISTORY (torn or garbage lines are skipped). Versions since
// removed are still listed. Empty if nothing was recorded (a root written
// before HISTORY existed, or HISTORY removed).
absl::StatusOr<std::vector<uint64_t>> PromotionHistory(const std::string& root);
// Published versions (complete v<N> dirs), ascending.
absl::StatusOr<std::vector<uint64_t>> ListVersions(const std::string& root);
// Points CURRENT at an existing version (rollback / roll forward). The
// version must open as a replica opens it with VerifyMode::kSizes: its
// manifest parses and names this version (a directory copied or renamed to
// v<N> is refused), and its files are there with their recorded sizes.
absl::Status SetCurrentVersion(const std::string& root, uint64_t version);
// Points CURRENT at the newest version older than the current one, and
// returns it. FAILED_PRECONDITION if there is none.
absl::StatusOr<uint64_t> RollBack(const std::string& root);

struct GcOptions {
  // The newest versions kept whatever their age. Default: 2.
  size_t keep = 2;
  // A version that stopped being CURRENT less than `grace` ago is kept: a
  // replica that has not swapped yet (or is still finishing calls on it)
  // may have its files mapped, and on NFS removing them under it means
  // SIGBUS on its next page fault. When a version stopped being CURRENT is
  // the time of the HISTORY line that followed its last one; where HISTORY
  // does not tell (no time recorded, not listed, HISTORY missing), the
  // latest it can have been: when CURRENT was last replaced (its mtime).
  // Times come from the writers' and the NFS server's clocks: keep grace
  // well above their skew. Default: 1 hour.
  absl::Duration grace = absl::Hours(1);
  // Test hook: the time gc takes as now. Unset: the clock's.
  std::optional<absl::Time> now;
};

struct GcReport {
  std::vector<uint64_t> removed;  // Ascending.
  // Versions old enough by `keep` but still within the grace, each with the
  // time after which gc may remove it.
  std::map<uint64_t, absl::Time> held;
};

// Removes all but the newest `options.keep` versions, never the CURRENT one
// nor one within the grace, plus stale temp dirs.
absl::StatusOr<GcReport> GarbageCollect(const std::string& root, const GcOptions& options);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_STORE_H_
