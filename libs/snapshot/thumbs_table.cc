#include "libs/snapshot/thumbs_table.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/byte_io.h"

namespace imagesearch::snapshot {
namespace {

using internal::LoadLE;
using internal::PutLE;

constexpr char kMagic[8] = {'I', 'S', 'T', 'H', 'M', '\0', '\0', '\1'};
constexpr size_t kHeaderSize = 32;
constexpr uint32_t kJpeg = 1;

}  // namespace

// The table in order (header and offsets, then the blob), handed to `sink`
// a piece at a time; `thumb` is read twice per row.
absl::Status EmitThumbsTable(uint64_t n, const ThumbnailOf& thumb,
                             const std::function<absl::Status(absl::string_view)>& sink) {
  std::string head(kHeaderSize + (n + 1) * 8, '\0');
  std::memcpy(&head[0], kMagic, 8);
  PutLE<uint32_t>(&head, 8, 1);
  PutLE<uint32_t>(&head, 12, kJpeg);
  PutLE<uint64_t>(&head, 16, n);
  uint64_t off = 0;
  for (uint64_t i = 0; i < n; ++i) {
    PutLE<uint64_t>(&head, kHeaderSize + i * 8, off);
    ASSIGN_OR_RETURN(absl::string_view t, thumb(i));
    off += t.size();
  }
  PutLE<uint64_t>(&head, kHeaderSize + n * 8, off);
  PutLE<uint64_t>(&head, 24, off);
  RETURN_IF_ERROR(sink(head));
  uint64_t written = 0;
  for (uint64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(absl::string_view t, thumb(i));
    written += t.size();
    if (written > off) break;  // Checked below.
    RETURN_IF_ERROR(sink(t));
  }
  if (written != off) {
    return absl::InternalError("thumbnails changed while the table was written");
  }
  return absl::OkStatus();
}

std::string EncodeThumbsTable(const std::vector<std::string>& thumbs) {
  std::string out;
  const absl::Status s = EmitThumbsTable(
      thumbs.size(), [&](uint64_t i) -> absl::StatusOr<absl::string_view> { return thumbs[i]; },
      [&](absl::string_view piece) {
        out.append(piece.data(), piece.size());
        return absl::OkStatus();
      });
  (void)s;  // Neither the rows nor the sink can fail.
  return out;
}

ThumbnailOf ThumbnailSources::Reader() const {
  return [at = at_](uint64_t row) -> absl::StatusOr<absl::string_view> {
    if (row >= at->size()) {
      return absl::OutOfRangeError(absl::StrCat("no thumbnail source for row ", row));
    }
    const auto& [table, r] = (*at)[row];
    if (table == nullptr) return absl::string_view();
    return table->Get(r);
  };
}

absl::Status WriteThumbsTable(const std::string& path, uint64_t count, const ThumbnailOf& thumb) {
  return WriteFileDurablyStreamed(
      path, [&](const AppendFn& append) { return EmitThumbsTable(count, thumb, append); });
}

absl::StatusOr<std::unique_ptr<ThumbsTable>> ThumbsTable::Open(const std::string& path,
                                                               uint64_t expected_count) {
  std::unique_ptr<ThumbsTable> t(new ThumbsTable());
  ASSIGN_OR_RETURN(t->file_, MappedFile::Open(path));
  const char* d = t->file_->data();
  const uint64_t size = t->file_->size();
  if (size < kHeaderSize) {
    return absl::DataLossError(absl::StrCat("thumbnail table ", path, " is ", size,
                                            " bytes, shorter than its 32-byte header"));
  }
  if (std::memcmp(d, kMagic, 8) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("thumbnail table ", path, " has a bad magic number"));
  }
  if (LoadLE<uint32_t>(d + 8) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("thumbnail table format ", LoadLE<uint32_t>(d + 8), " is not supported"));
  }
  if (LoadLE<uint32_t>(d + 12) != kJpeg) {
    return absl::InvalidArgumentError(absl::StrCat("thumbnail table media type ",
                                                   LoadLE<uint32_t>(d + 12),
                                                   " is not supported (1 = image/jpeg)"));
  }
  t->count_ = LoadLE<uint64_t>(d + 16);
  t->blob_size_ = LoadLE<uint64_t>(d + 24);
  if (t->count_ != expected_count) {
    return absl::InvalidArgumentError(absl::StrCat("thumbnail table holds ", t->count_,
                                                   " rows but the manifest says ", expected_count));
  }
  // Overflow-safe: both terms are bounded by the file size before adding.
  if (t->count_ >= size / 8 || t->blob_size_ > size ||
      size != kHeaderSize + (t->count_ + 1) * 8 + t->blob_size_) {
    return absl::DataLossError(absl::StrCat("thumbnail table ", path, " is ", size,
                                            " bytes, which disagrees with its header (", t->count_,
                                            " rows, ", t->blob_size_, "-byte blob)"));
  }
  t->offsets_ = d + kHeaderSize;
  t->blob_ = t->offsets_ + (t->count_ + 1) * 8;
  return t;
}

absl::StatusOr<absl::string_view> ThumbsTable::Get(uint64_t row) const {
  if (row >= count_) {
    return absl::OutOfRangeError(absl::StrCat("row ", row, " is out of range (", count_, " rows)"));
  }
  const uint64_t begin = LoadLE<uint64_t>(offsets_ + row * 8);
  const uint64_t end = LoadLE<uint64_t>(offsets_ + (row + 1) * 8);
  if (begin > end || end > blob_size_) {
    return absl::DataLossError(
        absl::StrCat("thumbnail table entry ", row, " points outside the blob"));
  }
  return absl::string_view(blob_ + begin, end - begin);
}

}  // namespace imagesearch::snapshot
