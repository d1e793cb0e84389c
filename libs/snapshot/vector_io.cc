#include "libs/snapshot/vector_io.h"

#include <cstring>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"

namespace imagesearch {

absl::StatusOr<VectorSet> ParseNpy(absl::string_view bytes) {
  if (bytes.size() < 10 || bytes.substr(0, 6) != absl::string_view("\x93NUMPY", 6)) {
    return absl::InvalidArgumentError("not a .npy file (bad magic)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, pos = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    pos = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return absl::InvalidArgumentError(".npy header truncated");
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    pos = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(".npy version ", major, " is not supported"));
  }
  if (pos + header_len > bytes.size()) return absl::InvalidArgumentError(".npy header truncated");
  const std::string header(bytes.substr(pos, header_len));
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([<>|=]?)([a-z])(\\d+)'"))) {
    return absl::InvalidArgumentError(".npy header has no descr");
  }
  const std::string kind = m[2].str() + m[3].str();
  if (m[1].str() == ">") return absl::InvalidArgumentError(".npy big-endian data is not supported");
  if (kind != "f4" && kind != "f8") {
    return absl::InvalidArgumentError(absl::StrCat(".npy dtype ", kind, " is not float32/float64"));
  }
  if (std::regex_search(header, std::regex("'fortran_order':\\s*True"))) {
    return absl::InvalidArgumentError(".npy in Fortran order is not supported; save C order");
  }
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\((\\d+),\\s*(\\d+),?\\s*\\)"))) {
    return absl::InvalidArgumentError(".npy array must be 2-D (count, dim)");
  }
  VectorSet set;
  if (!absl::SimpleAtoi(m[1].str(), &set.count) || !absl::SimpleAtoi(m[2].str(), &set.dim) ||
      set.dim == 0) {
    return absl::InvalidArgumentError(".npy shape is invalid");
  }
  const size_t esize = kind == "f4" ? 4 : 8;
  const absl::string_view payload = bytes.substr(pos + header_len);
  if (payload.size() != set.count * set.dim * esize) {
    return absl::InvalidArgumentError(absl::StrCat(".npy payload is ", payload.size(),
                                                   " bytes, expected ", set.count * set.dim * esize,
                                                   " (truncated?)"));
  }
  set.data.resize(set.count * set.dim);
  if (esize == 4) {
    std::memcpy(set.data.data(), payload.data(), payload.size());
  } else {
    for (size_t i = 0; i < set.data.size(); ++i) {
      double d;
      std::memcpy(&d, payload.data() + i * 8, 8);
      set.data[i] = static_cast<float>(d);
    }
  }
  return set;
}

absl::StatusOr<VectorSet> ParseFvecs(absl::string_view bytes) {
  VectorSet set;
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (pos + 4 > bytes.size()) return absl::InvalidArgumentError(".fvecs truncated in a header");
    int32_t d;
    std::memcpy(&d, bytes.data() + pos, 4);
    if (d <= 0 || d > 65536) return absl::InvalidArgumentError(absl::StrCat(".fvecs bad dim ", d));
    if (set.dim == 0) set.dim = static_cast<size_t>(d);
    if (static_cast<size_t>(d) != set.dim) {
      return absl::InvalidArgumentError(
          absl::StrCat(".fvecs vector ", set.count, " has dim ", d, ", earlier ones ", set.dim));
    }
    pos += 4;
    if (pos + set.dim * 4 > bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat(".fvecs truncated in vector ", set.count));
    }
    const size_t old = set.data.size();
    set.data.resize(old + set.dim);
    std::memcpy(set.data.data() + old, bytes.data() + pos, set.dim * 4);
    pos += set.dim * 4;
    ++set.count;
  }
  if (set.count == 0) return absl::InvalidArgumentError(".fvecs file is empty");
  return set;
}

absl::StatusOr<VectorSet> ReadVectorFile(const std::string& path) {
  auto bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<VectorSet> set;
  if (absl::EndsWith(path, ".npy")) {
    set = ParseNpy(*bytes);
  } else if (absl::EndsWith(path, ".fvecs")) {
    set = ParseFvecs(*bytes);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unknown vector file type; use .npy or .fvecs"));
  }
  if (!set.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", set.status().message()));
  return set;
}

std::string EncodeNpy(const VectorSet& set) {
  std::string header = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (",
                                    set.count, ", ", set.dim, "), }");
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(reinterpret_cast<const char*>(set.data.data()), set.data.size() * sizeof(float));
  return out;
}

}  // namespace imagesearch
