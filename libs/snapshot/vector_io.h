// Readers for raw vector files: NumPy .npy (float32 or float64, C order, 2-D)
// and .fvecs (per vector: int32 dim, then dim float32). Thread-compatible.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_VECTOR_IO_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_VECTOR_IO_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace imagesearch {

struct VectorSet {
  size_t count = 0;
  size_t dim = 0;
  std::vector<float> data;  // count x dim, row-major.
};

absl::StatusOr<VectorSet> ParseNpy(absl::string_view bytes);
absl::StatusOr<VectorSet> ParseFvecs(absl::string_view bytes);
// Picks the parser by extension (.npy, .fvecs).
absl::StatusOr<VectorSet> ReadVectorFile(const std::string& path);
// Writes a float32 2-D .npy (used by tests and tools).
std::string EncodeNpy(const VectorSet& set);

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_VECTOR_IO_H_
