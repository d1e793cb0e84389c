// One opened, validated, read-only snapshot version: its manifest and its
// segments (libs/snapshot/segment.h), each with the rows this version
// deleted. Rows are numbered through the segments in manifest order: the
// first segment's rows 0..n0-1, the next's n0..n0+n1-1, and so on. Deleted
// rows keep their numbers but are never returned (live() excludes them).
//
// Opening costs O(1) in the index size with VerifyMode::kSizes, O(bytes) with
// kChecksums, and only for the segments not shared with `reuse` (the version
// a replica already serves): a version that adds one small segment to a big
// one opens in the time of the small one.
//
// Immutable after Open; safe for concurrent use. Holders keep it alive with a
// shared_ptr, so in-flight requests finish on the version they started with.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "libs/index/row_filter.h"
#include "libs/snapshot/manifest.h"
#include "libs/snapshot/segment.h"

namespace imagesearch::snapshot {

// A segment as one version holds it.
struct SegmentRef {
  std::string name;  // Empty for the one segment of a format-1 version.
  std::shared_ptr<const Segment> segment;
  uint32_t base = 0;  // The version's row number of the segment's row 0.
  // The segment's rows this version deleted (its own row numbers); null if
  // none.
  std::shared_ptr<const index::RowFilter> deleted;
  uint64_t deleted_count = 0;
  bool opened_here = false;  // False: shared with the `reuse` version.
};

// A big segment and the tails linked to it (Segment::link_rows), which the
// query engine walks as one graph (index::JointGraph): indexes into
// Snapshot::segments(), tails in version order.
struct JointSegments {
  size_t big = 0;
  std::vector<size_t> tails;
  std::shared_ptr<const index::JointGraph> graph;
};

class Snapshot {
 public:
  // Opens root/v<version>. Any disagreement with the manifest is an error that
  // names the file and what differs. Segments that `reuse` (may be null)
  // already holds, by name and manifest checksum, are shared, not reopened.
  static absl::StatusOr<std::shared_ptr<const Snapshot>> Open(const std::string& root,
                                                              uint64_t version, VerifyMode mode,
                                                              const Snapshot* reuse = nullptr);
  // Opens one version directory wherever it is (e.g. a SageMaker model
  // directory); a format-2 version's segments are in <dir>/segments/ if it
  // has one (ExportVersion), else in the root's, <dir>/../segments/.
  // With `version`, the manifest must name that version.
  static absl::StatusOr<std::shared_ptr<const Snapshot>> OpenDir(
      const std::string& dir, VerifyMode mode, std::optional<uint64_t> version = std::nullopt,
      const Snapshot* reuse = nullptr);

  const Manifest& manifest() const { return manifest_; }
  uint64_t version() const { return manifest_.version; }
  const std::string& dir() const { return dir_; }
  int dim() const { return manifest_.dim; }
  const std::vector<SegmentRef>& segments() const { return segments_; }
  // The version's big segment and the tails linked to it (one between folds,
  // two while a fold runs); null if it holds no tail with the segment its
  // links name. Its graph is built on the first call, in O(big rows + tail
  // links) (searchers call it once right after opening, off the query path;
  // a writer that opens versions to merge or publish never pays for it), or
  // shared with `reuse` when that held the same segments and had built it.
  // Thread-safe.
  const JointSegments* joint() const {
    if (joint_.tails.empty()) return nullptr;
    if (!joint_built_.load(std::memory_order_acquire)) BuildJoint();
    return joint_.graph != nullptr ? &joint_ : nullptr;
  }
  // Row numbers are 0..rows()-1, deleted ones included.
  size_t rows() const { return rows_; }
  // Rows served: rows() less the deleted ones (the manifest's count).
  uint64_t live_count() const { return manifest_.count; }
  // The live rows, or null when no row is deleted (all are live).
  const index::RowFilter* live() const { return live_.get(); }
  std::shared_ptr<const index::RowFilter> live_ptr() const { return live_; }
  bool IsLive(uint32_t row) const {
    return row < rows_ && (live_ == nullptr || live_->Allows(row));
  }

  // The segment holding `row` and the row's number in it. REQUIRES: row < rows().
  std::pair<const SegmentRef*, uint32_t> Locate(uint32_t row) const;
  // The live row of `id`, if any.
  std::optional<uint32_t> Find(absl::string_view id) const;
  // The stored (prepared) vector of `row`. REQUIRES: row < rows().
  const float* Vector(uint32_t row) const;
  // The id, URI and attributes of `row`; errors as IdsTable::Get.
  absl::StatusOr<IdView> Id(uint32_t row) const;
  void PrefetchEntry(uint32_t row) const;
  void PrefetchText(uint32_t row) const;
  // Whether any segment has thumbnails; the thumbnail of `row` (empty: none).
  bool has_thumbnails() const { return has_thumbnails_; }
  absl::StatusOr<absl::string_view> Thumbnail(uint32_t row) const;
  // The schema's fields (from the newest segment with attribute columns), or
  // null if no segment has any.
  const AttributeTable* schema_table() const { return schema_table_; }
  // Path of model.pt in this version, or empty for vector-only snapshots.
  std::string model_path() const;

 private:
  Snapshot() = default;
  // Sets joint_'s segments from their links: the biggest segment that tails
  // here link to (as their links name it), and those tails; and its graph
  // when `reuse` built one over the same segments, else keeps the graph
  // `reuse` built for BuildJoint to start from (JointGraph::Join's
  // `previous`).
  void JoinLinkedTails(const Snapshot* reuse);
  void BuildJoint() const;  // Builds joint_.graph once (joint_mu_).
  Manifest manifest_;
  std::string dir_;
  std::vector<SegmentRef> segments_;
  // Its segments are set at open; its graph by BuildJoint, before
  // joint_built_ is set (and never changed after).
  mutable JointSegments joint_;
  // The previous version's joint graph, until BuildJoint has used it.
  mutable std::shared_ptr<const index::JointGraph> joint_previous_;
  mutable std::atomic<bool> joint_built_{false};
  mutable absl::Mutex joint_mu_;
  size_t rows_ = 0;
  std::shared_ptr<const index::RowFilter> live_;
  bool has_thumbnails_ = false;
  const AttributeTable* schema_table_ = nullptr;
};

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_H_
