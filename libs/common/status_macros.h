// Status propagation helpers. Debian's Abseil (20220623) ships no status
// macros, so they are defined once, here.
#ifndef IMAGESEARCH_LIBS_COMMON_STATUS_MACROS_H_
#define IMAGESEARCH_LIBS_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define IMAGESEARCH_CONCAT_INNER_(a, b) a##b
#define IMAGESEARCH_CONCAT_(a, b) IMAGESEARCH_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function
// if it is not OK.
#define RETURN_IF_ERROR(expr)                                  \
  do {                                                         \
    ::absl::Status imagesearch_status_ = (expr);               \
    if (!imagesearch_status_.ok()) return imagesearch_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, rexpr): evaluates `rexpr` (an absl::StatusOr<T>);
// returns its status if not OK, else moves the value into `lhs`, which may be
// a declaration (`auto x`) or an existing variable.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(IMAGESEARCH_CONCAT_(imagesearch_statusor_, __LINE__), lhs, rexpr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return statusor.status();      \
  lhs = std::move(statusor).value()

#endif  // IMAGESEARCH_LIBS_COMMON_STATUS_MACROS_H_
