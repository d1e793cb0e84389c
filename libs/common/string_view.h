// Debian's Abseil is built with its own absl::string_view (not an alias of
// std::string_view), so code that takes std::string_view and calls Abseil
// converts with this.
#ifndef IMAGESEARCH_LIBS_COMMON_STRING_VIEW_H_
#define IMAGESEARCH_LIBS_COMMON_STRING_VIEW_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace imagesearch {

inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_COMMON_STRING_VIEW_H_
