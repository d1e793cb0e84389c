#include "libs/snapshot/deletes.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "libs/snapshot/byte_io.h"

namespace imagesearch::snapshot {
namespace {

constexpr char kMagic[8] = {'I', 'S', 'D', 'E', 'L', '\0', '\0', '\1'};
constexpr size_t kHeader = 24;

}  // namespace

std::string DeletesFileName(absl::string_view segment) {
  return absl::StrCat("deletes.", segment, ".bin");
}

std::string EncodeDeletes(const index::RowFilter& deleted) {
  const size_t words = (deleted.rows() + 63) / 64;
  std::string out(kHeader + words * 8, '\0');
  std::memcpy(out.data(), kMagic, sizeof(kMagic));
  internal::PutLE<uint64_t>(&out, 8, deleted.rows());
  internal::PutLE<uint64_t>(&out, 16, deleted.Count());
  deleted.ForEach([&](uint32_t row) {
    const size_t pos = kHeader + (row / 64) * 8;
    uint64_t w = internal::LoadLE<uint64_t>(out.data() + pos);
    w |= uint64_t{1} << (row % 64);
    internal::PutLE<uint64_t>(&out, pos, w);
  });
  return out;
}

absl::StatusOr<index::RowFilter> DecodeDeletes(absl::string_view bytes, uint64_t rows) {
  if (bytes.size() < kHeader || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(
        "deletes file has no ISDEL header (truncated or not a deletes file)");
  }
  const uint64_t n = internal::LoadLE<uint64_t>(bytes.data() + 8);
  const uint64_t d = internal::LoadLE<uint64_t>(bytes.data() + 16);
  if (n != rows) {
    return absl::DataLossError(
        absl::StrCat("deletes file is for ", n, " rows but the segment has ", rows));
  }
  const size_t words = (rows + 63) / 64;
  if (bytes.size() != kHeader + words * 8) {
    return absl::DataLossError(absl::StrCat("deletes file is ", bytes.size(), " bytes; ", rows,
                                            " rows need ", kHeader + words * 8));
  }
  index::RowFilter out(rows);
  for (size_t i = 0; i < words; ++i) {
    uint64_t w = internal::LoadLE<uint64_t>(bytes.data() + kHeader + i * 8);
    for (; w != 0; w &= w - 1) {
      const uint64_t row = i * 64 + static_cast<uint64_t>(__builtin_ctzll(w));
      if (row >= rows) {
        return absl::DataLossError(
            absl::StrCat("deletes file marks row ", row, " of a ", rows, "-row segment"));
      }
      out.Allow(static_cast<uint32_t>(row));
    }
  }
  if (out.Count() != d) {
    return absl::DataLossError(
        absl::StrCat("deletes file says ", d, " rows but marks ", out.Count()));
  }
  return out;
}

}  // namespace imagesearch::snapshot
