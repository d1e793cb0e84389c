// ids.bin: maps dense rows 0..N-1 to external ids, URIs and optional JSON
// attributes, and external ids back to rows by binary search, read straight
// from a read-only memory map (no load step). Layout (little-endian):
//
//   0   char[8]  magic "ISIDS\0\0\1"
//   8   u32      format (1)
//   12  u32      reserved (0)
//   16  u64      count N
//   24  u64      blob size B
//   32  Entry[N] {u64 blob offset; u32 id_len; u32 uri_len; u32 attrs_len; u32 reserved}
//       u32[N]   rows sorted by id bytes (memcmp order)
//       char[B]  blob: id, uri, attrs of each row, concatenated
//
// IdsTable is immutable after Open and safe to read from any number of threads.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_IDS_TABLE_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_IDS_TABLE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/common/file_util.h"

namespace imagesearch::snapshot {

struct IdRecord {
  std::string id;
  std::string uri;
  std::string attributes_json;  // Empty, or a JSON object text.
};

// The longest id a snapshot can hold, in bytes.
inline constexpr size_t kMaxIdBytes = 4096;

// Serialises `records` (row i = records[i]). Ids must be non-empty, unique,
// at most kMaxIdBytes and valid UTF-8 (as URIs must be); INVALID_ARGUMENT
// names the offending row otherwise.
absl::StatusOr<std::string> EncodeIdsTable(const std::vector<IdRecord>& records);

// One line of a JSON Lines id list (imagesearch-snapshot --ids=*.jsonl) or
// image manifest (imagesearch-indexer --input=*.jsonl):
//   {"id": "...", "path": "...", "uri": "...", "attributes": {...}}
// One set of rules for both: the line is a JSON object; each of these fields
// is optional here, but if present "id", "path" and "uri" are strings and
// "attributes" is an object (null counts as absent); other fields are
// ignored. Each caller then says which fields it needs.
struct JsonlRecord {
  std::optional<std::string> id;
  std::optional<std::string> path;
  std::optional<std::string> uri;
  std::string attributes_json;  // Empty, or a JSON object text.
};
// INVALID_ARGUMENT saying which rule the line broke.
absl::StatusOr<JsonlRecord> ParseJsonlRecord(absl::string_view line);

struct IdView {
  absl::string_view id;
  absl::string_view uri;
  absl::string_view attributes_json;
};

class IdsTable {
 public:
  // Maps and validates `path`; its count must equal `expected_count`.
  static absl::StatusOr<std::unique_ptr<IdsTable>> Open(const std::string& path,
                                                        uint64_t expected_count);
  uint64_t size() const { return count_; }
  // OUT_OF_RANGE for a bad row, DATA_LOSS if the entry points outside the blob.
  absl::StatusOr<IdView> Get(uint64_t row) const;
  // Hints for reading several rows from a cold mapping: PrefetchEntry for
  // each row, then PrefetchText for each, then Get, so that the cache misses
  // of the rows overlap instead of following one another. Out-of-range rows
  // are ignored.
  void PrefetchEntry(uint64_t row) const;
  void PrefetchText(uint64_t row) const;
  // Row of `id`, or nullopt. O(log N) string compares on the mapping.
  std::optional<uint32_t> Find(absl::string_view id) const;

 private:
  IdsTable() = default;
  std::unique_ptr<MappedFile> file_;
  uint64_t count_ = 0;
  uint64_t blob_size_ = 0;
  const char* entries_ = nullptr;
  const char* sorted_ = nullptr;
  const char* blob_ = nullptr;
};

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_IDS_TABLE_H_
