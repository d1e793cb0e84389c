// The on-disk layout of graph.hnsw (hnswlib 0.6 saveIndex format) and of its
// graph.offsets sidecar. See graph_format.md for the prose description.
// Pure parsing, no hnswlib dependency; thread-compatible.
#ifndef IMAGESEARCH_LIBS_INDEX_GRAPH_FORMAT_H_
#define IMAGESEARCH_LIBS_INDEX_GRAPH_FORMAT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace imagesearch::index {

inline constexpr size_t kHnswHeaderSize = 96;

// The 96-byte header, field for field as hnswlib writes it.
struct HnswHeader {
  uint64_t offset_level0;
  uint64_t max_elements;
  uint64_t count;  // cur_element_count
  uint64_t size_data_per_element;
  uint64_t label_offset;
  uint64_t offset_data;
  int32_t max_level;
  uint32_t enterpoint;
  uint64_t max_m;
  uint64_t max_m0;
  uint64_t m;
  double mult;
  uint64_t ef_construction;

  uint64_t size_links_level0() const { return max_m0 * 4 + 4; }
  uint64_t size_links_per_element() const { return max_m * 4 + 4; }
  // First byte after the level-0 block: the per-element upper link lists.
  uint64_t upper_begin() const { return kHnswHeaderSize + count * size_data_per_element; }
};

// Parses and checks the header of a graph of float vectors of `dim` against
// `file_size`: every derived size must agree, or INVALID_ARGUMENT (DATA_LOSS
// for truncation) says which field is wrong.
absl::StatusOr<HnswHeader> ParseHnswHeader(const char* data, size_t file_size, size_t dim);

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_GRAPH_FORMAT_H_
