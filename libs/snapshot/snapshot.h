// One opened, validated, read-only snapshot version: its manifest, the
// memory-mapped HNSW searcher, the id table and the optional thumbnail table.
// Opening costs O(1) in the index size with VerifyMode::kSizes, O(bytes) with
// kChecksums.
//
// Immutable after Open; safe for concurrent use. Holders keep it alive with a
// shared_ptr, so in-flight requests finish on the version they started with.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "libs/index/mmap_searcher.h"
#include "libs/snapshot/attribute_table.h"
#include "libs/snapshot/ids_table.h"
#include "libs/snapshot/manifest.h"
#include "libs/snapshot/thumbs_table.h"

namespace imagesearch::snapshot {

enum class VerifyMode {
  kSizes,      // Every manifest file exists with its recorded size; structure checked.
  kChecksums,  // kSizes plus the XXH3 checksum of every file.
};

class Snapshot {
 public:
  // Opens root/v<version>. Any disagreement with the manifest is an error that
  // names the file and what differs.
  static absl::StatusOr<std::shared_ptr<const Snapshot>> Open(const std::string& root,
                                                              uint64_t version, VerifyMode mode);
  // Opens one version directory wherever it is (e.g. a SageMaker model
  // directory). With `version`, the manifest must name that version.
  static absl::StatusOr<std::shared_ptr<const Snapshot>> OpenDir(
      const std::string& dir, VerifyMode mode, std::optional<uint64_t> version = std::nullopt);

  const Manifest& manifest() const { return manifest_; }
  uint64_t version() const { return manifest_.version; }
  const std::string& dir() const { return dir_; }
  const index::MmapHnswSearcher& searcher() const { return *searcher_; }
  const IdsTable& ids() const { return *ids_; }
  // The row thumbnails, or null if this version has none (thumbs.bin is
  // optional: the indexer's --thumbnails=false, or a vector-only snapshot).
  const ThumbsTable* thumbs() const { return thumbs_.get(); }
  // The typed attribute columns for filters, or null if the version was
  // built without a schema.
  const AttributeTable* attributes() const { return attributes_.get(); }
  // Path of model.pt in this version, or empty for vector-only snapshots.
  std::string model_path() const;

 private:
  Snapshot() = default;
  Manifest manifest_;
  std::string dir_;
  std::unique_ptr<index::MmapHnswSearcher> searcher_;
  std::unique_ptr<IdsTable> ids_;
  std::unique_ptr<ThumbsTable> thumbs_;
  std::unique_ptr<AttributeTable> attributes_;
};

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_SNAPSHOT_H_
