// What the query core knows about one call besides its payload: which front
// end it came through (for metrics), when it must be answered by, and whether
// the client has gone away. Every stage of a query (admission, decode, the
// batcher, the search) calls Check() before doing work, so a call whose
// deadline has passed or whose client cancelled costs nothing more.
//
// Copyable; `cancelled` must stay callable until the call is answered.
#ifndef IMAGESEARCH_LIBS_SERVING_CALL_CONTEXT_H_
#define IMAGESEARCH_LIBS_SERVING_CALL_CONTEXT_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace imagesearch::serving {

struct CallContext {
  // The `front` label of the request metrics ("grpc", "http"). Each front
  // end sets it; the core has no transport of its own to assume.
  std::string front;
  absl::Time deadline = absl::InfiniteFuture();
  // Returns true once the client has cancelled. May be empty (never).
  std::function<bool()> cancelled;

  // OK while the call is worth working on; otherwise DEADLINE_EXCEEDED or
  // CANCELLED saying before which `stage` it stopped.
  absl::Status Check(absl::string_view stage) const {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("deadline passed before ", stage));
    }
    if (cancelled && cancelled()) {
      return absl::CancelledError(absl::StrCat("client cancelled the call before ", stage));
    }
    return absl::OkStatus();
  }
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_CALL_CONTEXT_H_
