// The search page served at GET / (services/query/web/index.html, compiled
// into the binary by embed_file.cmake): static HTML with inline CSS and JS,
// no build step and no external fetches, so it works offline.
#ifndef IMAGESEARCH_SERVICES_QUERY_WEB_PAGE_H_
#define IMAGESEARCH_SERVICES_QUERY_WEB_PAGE_H_

#include "absl/strings/string_view.h"

namespace imagesearch {

absl::string_view WebPageHtml();

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_WEB_PAGE_H_
