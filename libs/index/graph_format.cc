#include "libs/index/graph_format.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace imagesearch::index {

absl::StatusOr<HnswHeader> ParseHnswHeader(const char* data, size_t file_size, size_t dim) {
  if (file_size < kHnswHeaderSize) {
    return absl::DataLossError(absl::StrCat("graph file is ", file_size,
                                            " bytes, shorter than the 96-byte hnswlib header"));
  }
  HnswHeader h;
  const char* p = data;
  auto take = [&p](auto* field) {
    std::memcpy(field, p, sizeof(*field));
    p += sizeof(*field);
  };
  take(&h.offset_level0);
  take(&h.max_elements);
  take(&h.count);
  take(&h.size_data_per_element);
  take(&h.label_offset);
  take(&h.offset_data);
  take(&h.max_level);
  take(&h.enterpoint);
  take(&h.max_m);
  take(&h.max_m0);
  take(&h.m);
  take(&h.mult);
  take(&h.ef_construction);

  auto bad = [](auto... parts) {
    return absl::InvalidArgumentError(absl::StrCat("graph header: ", parts...));
  };
  if (h.offset_level0 != 0) return bad("offsetLevel0 is ", h.offset_level0, ", expected 0");
  if (h.m == 0 || h.m > 10000) return bad("M is ", h.m);
  if (h.max_m != h.m || h.max_m0 != 2 * h.m) {
    return bad("maxM/maxM0 are ", h.max_m, "/", h.max_m0, ", expected ", h.m, "/", 2 * h.m);
  }
  const uint64_t links0 = h.size_links_level0();
  const uint64_t want_size = links0 + dim * sizeof(float) + sizeof(uint64_t);
  if (h.size_data_per_element != want_size) {
    return bad("size_data_per_element is ", h.size_data_per_element, ", expected ", want_size,
               " for dim ", dim, " and M ", h.m, " (wrong dim?)");
  }
  if (h.offset_data != links0) return bad("offsetData is ", h.offset_data, ", expected ", links0);
  if (h.label_offset != links0 + dim * sizeof(float)) {
    return bad("label_offset is ", h.label_offset);
  }
  if (h.count > h.max_elements) {
    return bad("element count ", h.count, " exceeds max_elements ", h.max_elements);
  }
  if (h.count > (uint64_t{1} << 32) - 1) return bad("element count ", h.count, " too large");
  if (h.count > 0 && h.enterpoint >= h.count) {
    return bad("entry point ", h.enterpoint, " out of range for ", h.count, " elements");
  }
  if (h.max_level < 0 || h.max_level > 64) return bad("max level ", h.max_level);
  // Level-0 block plus at least a 4-byte size field per element.
  const uint64_t min_size = h.upper_begin() + h.count * 4;
  if (file_size < min_size) {
    return absl::DataLossError(absl::StrCat("graph file is truncated: ", file_size, " bytes, but ",
                                            h.count, " elements need at least ", min_size));
  }
  return h;
}

}  // namespace imagesearch::index
