// thumbs.bin: one small preview image per row (JPEG, made by the indexer with
// libvips), served to people by the query service's web page, read straight
// from a read-only memory map. Layout (little-endian):
//
//   0   char[8]  magic "ISTHM\0\0\1"
//   8   u32      format (1)
//   12  u32      media type: 1 = image/jpeg
//   16  u64      count N
//   24  u64      blob size B
//   32  u64[N+1] offsets into the blob: row i is [offsets[i], offsets[i+1]),
//                empty when the row has no thumbnail
//       char[B]  blob: the encoded images, concatenated
//
// Opening checks only the header and the total size (O(1), whatever N);
// each Get checks its own two offsets, so a damaged offset gives DATA_LOSS
// for that row and never a read outside the mapping.
//
// ThumbsTable is immutable after Open and safe to read from any number of
// threads.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_THUMBS_TABLE_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_THUMBS_TABLE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/common/file_util.h"

namespace imagesearch::snapshot {

inline constexpr char kThumbsFile[] = "thumbs.bin";
inline constexpr char kThumbsMediaType[] = "image/jpeg";

// Serialises one thumbnail per row (row i = thumbs[i]; empty = none).
std::string EncodeThumbsTable(const std::vector<std::string>& thumbs);

// Row i's thumbnail (empty: none), for WriteThumbsTable; a view that stays
// valid until the write returns (into a source segment's map, say).
using ThumbnailOf = std::function<absl::StatusOr<absl::string_view>(uint64_t row)>;

// Writes the table of `count` rows to `path` as it reads them, holding one
// thumbnail at a time (a merge of a million rows need not hold gigabytes of
// JPEGs), and fsyncs it. `thumb` is called twice per row (sizes, then bytes)
// and must answer the same both times; an error from it is returned.
absl::Status WriteThumbsTable(const std::string& path, uint64_t count, const ThumbnailOf& thumb);

class ThumbsTable;

// Where each row of a table to be written finds its thumbnail: a row of an
// open ThumbsTable (a merge's source segment, a build's shard), or none.
// 16 bytes a row instead of the thumbnail's bytes.
class ThumbnailSources {
 public:
  // The next row's thumbnail: `row` of `table` (null: the row has none).
  void Add(const ThumbsTable* table, uint32_t row) { at_->emplace_back(table, row); }
  size_t size() const { return at_->size(); }
  // Reads them for WriteThumbsTable (SnapshotInput::thumbnail_of); it shares
  // the list, and the tables must stay open while it is used.
  ThumbnailOf Reader() const;

 private:
  std::shared_ptr<std::vector<std::pair<const ThumbsTable*, uint32_t>>> at_ =
      std::make_shared<std::vector<std::pair<const ThumbsTable*, uint32_t>>>();
};

class ThumbsTable {
 public:
  // Maps and validates `path`; its count must equal `expected_count`.
  static absl::StatusOr<std::unique_ptr<ThumbsTable>> Open(const std::string& path,
                                                           uint64_t expected_count);
  uint64_t size() const { return count_; }
  const char* media_type() const { return kThumbsMediaType; }
  // The row's encoded image; empty if it has none. OUT_OF_RANGE for a bad
  // row, DATA_LOSS if its offsets are damaged.
  absl::StatusOr<absl::string_view> Get(uint64_t row) const;

 private:
  ThumbsTable() = default;
  std::unique_ptr<MappedFile> file_;
  uint64_t count_ = 0;
  uint64_t blob_size_ = 0;
  const char* offsets_ = nullptr;
  const char* blob_ = nullptr;
};

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_THUMBS_TABLE_H_
