// Fixed-width values in the snapshot's little-endian binary files (ids.bin,
// thumbs.bin), as unaligned copies in host order: like hnswlib's graph.hnsw,
// these files assume a little-endian host (x86-64, arm64). Header-only;
// internal to libs/snapshot.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_BYTE_IO_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_BYTE_IO_H_

#include <cstring>
#include <string>

namespace imagesearch::snapshot::internal {

// Writes `value` at byte `pos` of `out`. REQUIRES: pos + sizeof(T) <= size.
template <typename T>
void PutLE(std::string* out, size_t pos, T value) {
  std::memcpy(&(*out)[pos], &value, sizeof(T));
}

// Reads a T from `p`, which need not be aligned.
template <typename T>
T LoadLE(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace imagesearch::snapshot::internal

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_BYTE_IO_H_
