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

std::string EncodeThumbsTable(const std::vector<std::string>& thumbs) {
  const size_t n = thumbs.size();
  uint64_t blob = 0;
  for (const auto& t : thumbs) blob += t.size();
  const size_t blob_begin = kHeaderSize + (n + 1) * 8;
  std::string out(blob_begin + blob, '\0');
  std::memcpy(&out[0], kMagic, 8);
  PutLE<uint32_t>(&out, 8, 1);
  PutLE<uint32_t>(&out, 12, kJpeg);
  PutLE<uint64_t>(&out, 16, n);
  PutLE<uint64_t>(&out, 24, blob);
  uint64_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    PutLE<uint64_t>(&out, kHeaderSize + i * 8, off);
    std::memcpy(&out[blob_begin + off], thumbs[i].data(), thumbs[i].size());
    off += thumbs[i].size();
  }
  PutLE<uint64_t>(&out, kHeaderSize + n * 8, off);
  return out;
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
