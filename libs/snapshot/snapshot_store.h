// A snapshot root on disk: versioned, immutable snapshot directories plus a
// CURRENT file naming the live one. A version lists immutable segments kept
// in root/segments/ and shared between versions (see segment.h, and
// libs/index/graph_format.md for the whole layout).
//
//   root/CURRENT          "v<N>\n", replaced atomically (temp, fsync, rename)
//   root/HISTORY          "v<N> <UTC time, RFC 3339, ms>\n" appended (fsync'd)
//                         right after each CURRENT replacement: the versions
//                         made live, in order, and when ("v<N>\n" alone in
//                         roots written before the time was recorded)
//   root/v<N>/            MANIFEST.json (format 2: the segments, each with its
//                         row count and deleted rows), [model.pt],
//                         [deletes.<segment>.bin], [rejects.jsonl], ...
//                         (format 1, written before segments: the version dir
//                         is itself one segment, graph.hnsw and all)
//   root/segments/<name>/ MANIFEST.json (format 1, no model), graph.hnsw,
//                         graph.offsets, [graph.f16], ids.bin, [thumbs.bin],
//                         [attrs.bin]; never changed once renamed into place
//   root/segments/.tmp-<name>, root/.tmp-v<N>-<pid>
//                         a segment or version being written (removed if stale)
//   root/segments/.merging-<name>-<pid>
//                         a merge's segment being built, without the lock (gc
//                         removes it once no process <pid> runs on its host)
//   root/.lock            flock'd by writers (publish, update, set-current, gc,
//                         and a merge while it publishes)
//
// Publishing writes a new segment into a temp dir and renames it into
// root/segments/, writes the new version into a temp dir (files a version
// keeps unchanged from its base, model.pt and deletes files, are hard links,
// copies where the volume has none), fsyncs every file and dir, renames it to
// v<N>, fsyncs the root, and only then replaces CURRENT. A crash at any step
// leaves the previous version live; gc removes a segment no version names.
//
// Functions are safe to call from several processes at once: writers
// serialise on root/.lock; readers never need it.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_STORE_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
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
#include "libs/snapshot/merge_policy.h"
#include "libs/snapshot/shard.h"
#include "libs/snapshot/thumbs_table.h"

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
// floats only; at 1792 (7 KB vectors) it measured 1.2x (tools/bench/results/LOG.md).
inline constexpr int kHalfVectorsMinDim = 1024;
inline constexpr char kIdsFile[] = "ids.bin";
inline constexpr char kModelFile[] = "model.pt";
inline constexpr char kSegmentsDir[] = "segments";

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
  // Or, instead of `thumbnails`: row i's thumbnail read as thumbs.bin is
  // written (a merge's, from its source segments' maps), so they are never
  // all in memory. Views stay valid until the publish returns.
  ThumbnailOf thumbnail_of;
  // Optional: typed attribute columns for filters (attrs.bin), one row of
  // values (in schema order) per vector. Empty schema: no attrs.bin.
  std::vector<FieldSpec> schema;
  std::vector<std::vector<AttrValue>> attributes;
  // Optional: links.bin (manifest.h, SegmentLinks), count x links.per_row
  // rows of the segment `links` names.
  SegmentLinks links;
  std::vector<uint32_t> link_rows;
  // Optional: the segments whose rows this segment's graph keeps first
  // (manifest.h, ExtendedSegment), nearest first.
  std::vector<ExtendedSegment> extends;
  // PublishSnapshot: the shard of a collection this root is (shard.h), kept
  // by every later version; every id must belong to it. A root whose CURRENT
  // names another shard (or none) refuses the load: a reshard writes new
  // roots. Ignored in SnapshotUpdate::added, whose ids must belong to the
  // base's shard.
  ShardInfo shard;
};

class Snapshot;  // libs/snapshot/snapshot.h

// The last version a long-running writer (the ingest service) opened, kept so
// that its next open shares the segments both hold (Snapshot::Open's `reuse`)
// instead of mapping them afresh: a merge's link searches then touch the big
// segment's pages through page tables the writer filled before, not with a
// page fault each, and no munmap of the big segment (whose TLB shootdown
// interrupts every core the process ran on) follows each call. Holds one
// version's segments mapped until the next open, so a segment GC removed
// keeps its disk space until then. Thread-safe.
class VersionCache {
 public:
  // root/v<version> (kSizes), sharing the segments the last version opened
  // here holds; that last version is replaced by this one if it is newer.
  absl::StatusOr<std::shared_ptr<const Snapshot>> Open(const std::string& root, uint64_t version);

 private:
  // A std::mutex, not absl::Mutex: Debian's libabsl is not built for
  // ThreadSanitizer, which cannot see its locks (ci/tsan.supp).
  std::mutex mu_;
  std::shared_ptr<const Snapshot> last_;  // Guarded by mu_.
};

struct PublishOptions {
  // False: write and rename v<N> into place but leave CURRENT alone, so the
  // version can be checked (tools/promote.sh) before SetCurrentVersion.
  bool make_current = true;
  // Where PublishUpdate and MergeSegments open the versions they read (none:
  // each opens its own); the ingest service keeps one for its lifetime.
  VersionCache* versions = nullptr;
  // Test hook: called with the name of each step ("built", "synced",
  // "renamed") before it is taken; a crash test makes it _exit().
  std::function<void(absl::string_view step)> fault_hook;
};

// Builds and publishes a new version (max existing + 1) of one new segment
// holding `input`, and makes it CURRENT (unless options.make_current is
// false). Returns the new version number.
absl::StatusOr<uint64_t> PublishSnapshot(const std::string& root, const SnapshotInput& input,
                                         const PublishOptions& options = {});

// A change to an existing version: rows added as one new segment, and ids
// deleted. Writes cost what changes: the base's segments are referenced,
// never copied.
struct SnapshotUpdate {
  uint64_t base_version = 0;  // Required: the version changed.
  // The rows added (graph, ids, attributes, thumbnails as for
  // PublishSnapshot; count 0 = none). dim and metric must be the base's. An
  // id the base holds replaces the base's row. model_path, if set, must be
  // the base's model (same sha256); the base's model.pt is linked in.
  SnapshotInput added;
  // Ids whose rows are deleted; ids the base does not hold are ignored (and
  // counted in UpdateResult::unknown_ids).
  std::vector<std::string> delete_ids;
  // Extra files of the new version (e.g. "rejects.jsonl"); the base's are
  // not carried over.
  std::map<std::string, std::string> extra_files;
  // An update that would change no row (nothing added, every delete_id
  // unknown, no extra files) publishes nothing: UpdateResult::version is the
  // base's and `published` is false. For callers whose deletes may repeat
  // (the ingest service: a client retrying, or deleting what a filter
  // matched a moment ago); without it such an update is a new version
  // identical to its base.
  bool skip_if_unchanged = false;
};

struct UpdateResult {
  uint64_t version = 0;
  bool published = true;       // False only for a skipped update (skip_if_unchanged).
  std::string segment;         // The new segment's name; empty if none was added.
  uint64_t replaced = 0;       // Base rows deleted because `added` re-adds their ids.
  uint64_t deleted = 0;        // Base rows deleted by delete_ids.
  uint64_t unknown_ids = 0;    // delete_ids the base does not hold.
  uint64_t bytes_written = 0;  // New bytes: the segment, deletes and manifest.
};

// Publishes base + update as a new version (max existing + 1), made CURRENT
// unless options.make_current is false. A segment left with no live row is
// dropped from the version. FAILED_PRECONDITION if nothing would be left;
// INVALID_ARGUMENT for a dim, metric or model that differs from the base's,
// or an added id that belongs to another shard than the base's.
// A format-1 base is first adopted: its files are hard-linked (or copied)
// into a segment, and the base itself is left as it is.
absl::StatusOr<UpdateResult> PublishUpdate(const std::string& root, const SnapshotUpdate& update,
                                           const PublishOptions& options = {});

// Writes root/v<version> to `out_dir` (which must not exist) as one
// self-contained version directory: the version's files plus its segments in
// out_dir/segments/, hard-linked where the volume allows, else copied. What
// Snapshot::OpenDir opens wherever it is put (a SageMaker model.tar.gz, say).
absl::Status ExportVersion(const std::string& root, uint64_t version, const std::string& out_dir);

// Rows read back out of published versions, for a new bulk load (a reshard:
// tools/make_snapshot "reshard").
struct LiveRows {
  // Everything per row: ids (with uri and attributes JSON), typed attributes
  // under input.schema (set it first; empty: none), count. The caller sets
  // the rest (dim, metric, graph, ...).
  SnapshotInput input;
  std::vector<float> vectors;  // count x dim, row-major.
  // Set before the first AppendLiveRows when any source has thumbnails
  // (HasThumbnails): then each row's thumbnail is recorded in `thumbs`
  // (none for a row whose segment has none), which reads the snapshots'
  // maps.
  bool with_thumbs = false;
  ThumbnailSources thumbs;
};

// Whether some segment of `snap` has thumbnails.
bool HasThumbnails(const Snapshot& snap);

// Appends to `out` the live rows of every segment of `snap` whose id `keep`
// accepts, in segment order. `snap` must stay open while `out.thumbs` is read.
absl::Status AppendLiveRows(const Snapshot& snap,
                            const std::function<bool(absl::string_view id)>& keep, LiveRows* out);

// A tail's links (manifest.h, SegmentLinks): for each row, kTailLinksPerRow
// rows of the big segment chosen among its nearest by HNSW's neighbour
// heuristic, the rest of its nearest after them, searched with
// kTailLinkSearchEf (index::NearestRows). The search is most of a tail
// join's CPU (one per row the ingest service takes in), and its cost
// follows ef: ef 16 (the 16 nearest, all kept, the
// diverse ones first) costs about three quarters of ef 32 (the heuristic's
// choice from 32) in the ingest service and links about as well: a tail
// walked with the big segment finds its rows at the same recall within a
// few thousandths, above the merged graph's, and 8 links a row would lose
// more (tools/bench/results/LOG.md, "The ingest service's link searches"
// and "Tail links searched at ef 16").
inline constexpr uint32_t kTailLinksPerRow = 16;
inline constexpr size_t kTailLinkSearchEf = 16;

struct MergeRequest {
  // The segments of CURRENT's version to merge, by name; empty: the ones
  // `policy` chooses (none: nothing is published).
  std::vector<std::string> segments;
  MergePolicy policy;
  // HNSW M and ef_construction of the merged graph; 0: the biggest merged
  // segment's (which an extension keeps).
  int m = 0;
  int ef_construction = 0;
  int threads = 0;  // Graph build threads; 0: all cores.
  // Whether a merge whose biggest segment holds at least as many rows as the
  // others' live rows together may extend that segment's graph (insert the
  // others' rows into it) instead of building a new graph; see MergeResult.
  // Not when the merge is for that segment's deletes (their share passes
  // policy.deletes_pct_allowed), nor when m or ef_construction differ from it.
  bool extend = true;
  // Test hook: called once the merged segment is built, before the publish
  // (another writer may publish meanwhile; the merge then builds on that).
  std::function<void()> before_publish;
};

struct MergeResult {
  uint64_t version = 0;             // The version published; 0 when nothing was merged.
  std::vector<std::string> merged;  // The segments replaced.
  std::string segment;              // The merged segment.
  uint64_t rows = 0;                // Its rows (the live rows merged, and any kept deleted).
  uint64_t dropped = 0;             // Deleted rows left out.
  // Set when the merge extended this segment's graph: its rows come first,
  // in their order, its deleted rows kept (still deleted: they are walked,
  // never returned) so that its graph stays valid; the other segments' live
  // rows follow, inserted into that graph.
  std::string extended;
  uint64_t kept_deleted = 0;  // Deleted rows of `extended` kept, deleted.
  // Rows deleted by versions published while the merge ran: deleted in the
  // merged segment too, so no delete is lost.
  uint64_t carried_deletes = 0;
  // Rows searched in the big segment's graph for their links (a tail join);
  // the other merged rows' links were copied from the tails they came from.
  uint64_t linked = 0;
  // Wall time of the links' step (its searches are most of a tail join's
  // CPU), and its CPU time when the searches ran on the merging thread
  // (MergeRequest::threads 1, as the ingest service's merges run; zero
  // otherwise: the searches ran on threads of their own).
  absl::Duration link_time;
  absl::Duration link_cpu;
};

// Merges segments of the CURRENT version into one (their live rows, with
// their ids, attributes and thumbnails; a new graph, or the biggest one's
// graph extended: MergeRequest::extend) and publishes a version
// that lists it in their place; every other segment and delete is carried
// over. The merged segment is built without the root lock, so publishes go
// on meanwhile; the version is composed under the lock from whatever is then
// CURRENT. ABORTED if that no longer lists every merged segment (a rollback,
// or another merge took them): nothing is published, merge again.
absl::StatusOr<MergeResult> MergeSegments(const std::string& root, const MergeRequest& request,
                                          const PublishOptions& options = {});

// The segments of CURRENT's version that `policy` would merge, less those in
// `busy` (ChooseMerge over its segments); empty when none. The ingest service
// chooses with this, then merges the names with MergeSegments, so that its
// two merges never choose the same segments.
absl::StatusOr<std::vector<std::string>> ChooseMergeInCurrent(
    const std::string& root, const MergePolicy& policy, const std::set<std::string>& busy = {},
    VersionCache* versions = nullptr);

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
  // Segments no remaining version names, removed.
  std::vector<std::string> removed_segments;
  // Versions old enough by `keep` but still within the grace, each with the
  // time after which gc may remove it.
  std::map<uint64_t, absl::Time> held;
};

// Removes all but the newest `options.keep` versions, never the CURRENT one
// nor one within the grace, then the segments no remaining version names,
// plus stale temp dirs.
absl::StatusOr<GcReport> GarbageCollect(const std::string& root, const GcOptions& options);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_STORE_H_
