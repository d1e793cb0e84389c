// Structured filters for search, transport-neutral (gRPC and HTTP JSON both
// convert into this). No query language: lists of conditions.
//
//   must      every condition holds
//   should    at least one holds (when the list is not empty)
//   must_not  none holds
//
// A condition names a schema field (attrs.bin) and one test:
//   match  a keyword or boolean value
//   in     one of a set of keyword, integer or timestamp values
//   range  gte/gt/lte/lt bounds on an integer, float or timestamp field
//   has_id one of a set of external ids (no field)
// A row without a value for the field fails match, in and range.
//
// EvaluateFilter turns a filter into the set of allowed rows of one snapshot:
// keyword and boolean tests read posting lists (cost: the matching rows),
// range and integer `in` scan the column (cost: N). Unknown fields and
// values of the wrong type are INVALID_ARGUMENT naming the field.
#ifndef IMAGESEARCH_LIBS_SERVING_FILTER_H_
#define IMAGESEARCH_LIBS_SERVING_FILTER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/index/row_filter.h"
#include "libs/snapshot/snapshot.h"

namespace imagesearch::serving {

// A value in a condition: string (keyword, or timestamp text), integer
// (integer, or timestamp seconds), number (float) or boolean.
using FilterValue = std::variant<std::string, int64_t, double, bool>;

struct Condition {
  enum class Kind { kMatch, kIn, kRange, kHasId };
  Kind kind = Kind::kMatch;
  std::string field;                            // Not used by kHasId.
  std::vector<FilterValue> values;              // kMatch: one; kIn: the set.
  std::optional<FilterValue> gte, gt, lte, lt;  // kRange
  std::vector<std::string> ids;                 // kHasId
};

struct Filter {
  std::vector<Condition> must, should, must_not;
  // Set by a front end that could not convert its request's filter (e.g. a
  // value with nothing set): the core answers INVALID_ARGUMENT with it, so
  // the refusal is counted like any other.
  std::string error;
  bool empty() const { return must.empty() && should.empty() && must_not.empty() && error.empty(); }
};

inline constexpr size_t kMaxFilterConditions = 64;
inline constexpr size_t kMaxFilterValues = 1024;  // per `in` or `has_id`

// The rows of `snap` the filter allows. INVALID_ARGUMENT for an unknown
// field, a type mismatch, a malformed condition or a filter over the limits;
// FAILED_PRECONDITION if the snapshot has no attribute columns and the filter
// names a field.
absl::StatusOr<index::RowFilter> EvaluateFilter(const snapshot::Snapshot& snap,
                                                const Filter& filter);

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_FILTER_H_
