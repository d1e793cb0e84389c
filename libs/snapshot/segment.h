// One immutable segment: an HNSW graph (memory-mapped), its offsets and
// optional half vectors, the id table and the optional thumbnail and
// attribute tables, all listed with sizes and checksums in the segment's own
// MANIFEST.json (format 1, no model). A format-2 version lists segments kept
// under root/segments/<name>/ and shares them with other versions; a format-1
// version directory is itself one segment.
//
// Immutable after Open; safe for concurrent use. Versions hold segments by
// shared_ptr, so a segment two versions list is opened (and mapped) once.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_SEGMENT_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_SEGMENT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libs/common/file_util.h"
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

// Checks that every file in `files` is in `dir` with its size (and, with
// kChecksums, its XXH3). DATA_LOSS names the file and what differs.
absl::Status VerifyFiles(const std::string& dir, const std::map<std::string, FileEntry>& files,
                         VerifyMode mode);

class Segment {
 public:
  // Opens the segment in `dir` (its MANIFEST.json and the files it lists).
  // Errors name the file and what is wrong, not `dir` (callers add it).
  static absl::StatusOr<std::shared_ptr<const Segment>> Open(const std::string& dir,
                                                             VerifyMode mode);
  // Opens `dir` whose manifest is already parsed (a format-1 version dir).
  static absl::StatusOr<std::shared_ptr<const Segment>> OpenWithManifest(const std::string& dir,
                                                                         Manifest manifest,
                                                                         VerifyMode mode);

  const Manifest& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_; }
  uint64_t rows() const { return manifest_.count; }
  const index::MmapHnswSearcher& searcher() const { return *searcher_; }
  const IdsTable& ids() const { return *ids_; }
  // Null if the segment has no thumbs.bin / attrs.bin.
  const ThumbsTable* thumbs() const { return thumbs_.get(); }
  const AttributeTable* attributes() const { return attributes_.get(); }
  // links.bin (manifest.h, SegmentLinks): rows() x manifest().links.per_row
  // rows of the segment manifest().links names; null if none.
  const uint32_t* link_rows() const {
    return links_ == nullptr ? nullptr : reinterpret_cast<const uint32_t*>(links_->data());
  }

 private:
  Segment() = default;
  Manifest manifest_;
  std::string dir_;
  std::unique_ptr<index::MmapHnswSearcher> searcher_;
  std::unique_ptr<IdsTable> ids_;
  std::unique_ptr<ThumbsTable> thumbs_;
  std::unique_ptr<AttributeTable> attributes_;
  std::unique_ptr<MappedFile> links_;
};

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_SEGMENT_H_
