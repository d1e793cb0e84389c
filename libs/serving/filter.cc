#include "libs/serving/filter.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "libs/common/client_text.h"
#include "libs/common/status_macros.h"

namespace imagesearch::serving {
namespace {

using snapshot::AttributeTable;
using snapshot::FieldType;

std::string Describe(const FilterValue& v) {
  if (const auto* s = std::get_if<std::string>(&v)) {
    return QuoteClientText(*s);
  }
  if (const auto* i = std::get_if<int64_t>(&v)) return absl::StrCat(*i);
  if (const auto* d = std::get_if<double>(&v)) return absl::StrCat(*d);
  return std::get<bool>(v) ? "true" : "false";
}

absl::Status Mismatch(const snapshot::FieldSpec& f, absl::string_view test, const FilterValue& v) {
  return absl::InvalidArgumentError(absl::StrCat("filter field '", f.name, "' is ",
                                                 snapshot::FieldTypeName(f.type), "; ", test,
                                                 " value ", Describe(v), " does not fit it"));
}

// An integer or timestamp bound as int64 seconds/values.
absl::StatusOr<int64_t> AsInteger(const snapshot::FieldSpec& f, absl::string_view test,
                                  const FilterValue& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (f.type == FieldType::kTimestamp) {
    if (const auto* s = std::get_if<std::string>(&v)) {
      auto t = snapshot::ParseTimestamp(*s);
      if (t.ok()) return *t;
    }
  }
  return Mismatch(f, test, v);
}

absl::StatusOr<double> AsNumber(const snapshot::FieldSpec& f, absl::string_view test,
                                const FilterValue& v) {
  if (const auto* d = std::get_if<double>(&v)) return *d;
  if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  return Mismatch(f, test, v);
}

// Rows holding keyword/boolean `v` of field `fi`, via the posting list.
absl::Status AddPostings(const AttributeTable& t, size_t fi, const FilterValue& v,
                         absl::string_view test, index::RowFilter* out) {
  const snapshot::FieldSpec& f = t.fields()[fi];
  std::string key;
  if (f.type == FieldType::kKeyword) {
    const auto* s = std::get_if<std::string>(&v);
    if (s == nullptr) return Mismatch(f, test, v);
    key = *s;
  } else {
    const auto* b = std::get_if<bool>(&v);
    if (b == nullptr) return Mismatch(f, test, v);
    key = *b ? "true" : "false";
  }
  if (auto code = t.KeywordCode(fi, key)) {
    for (uint32_t row : t.Postings(fi, *code)) out->Allow(row);
  }
  return absl::OkStatus();
}

// has_id: the rows of the listed external ids; an unknown id matches nothing.
absl::StatusOr<index::RowFilter> EvaluateHasId(const snapshot::Snapshot& snap, const Condition& c) {
  if (c.ids.empty()) return absl::InvalidArgumentError("filter has_id lists no ids");
  if (c.ids.size() > kMaxFilterValues) {
    return absl::InvalidArgumentError(absl::StrCat("filter has_id lists ", c.ids.size(),
                                                   " ids; the limit is ", kMaxFilterValues));
  }
  index::RowFilter out(snap.rows());
  for (const auto& id : c.ids) {
    if (auto row = snap.Find(id)) out.Allow(*row);
  }
  return out;
}

// The attribute column a field condition tests, in one segment of `rows`
// rows.
struct Column {
  const AttributeTable* table;
  size_t index;
  const snapshot::FieldSpec* spec;
  size_t rows;
};

// The column of the condition's field in each segment (null where a segment
// has no such column: none of its rows has a value). An error if no segment
// has the field.
absl::StatusOr<std::vector<std::optional<Column>>> FindColumns(const snapshot::Snapshot& snap,
                                                               const Condition& c) {
  if (c.field.empty()) return absl::InvalidArgumentError("filter condition names no field");
  const AttributeTable* schema = snap.schema_table();
  if (schema == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("filter names field ", QuoteClientText(c.field), " but snapshot v",
                     snap.version(), " has no attribute fields (index with --schema to filter)"));
  }
  std::vector<std::optional<Column>> columns;
  bool found = false;
  for (const snapshot::SegmentRef& ref : snap.segments()) {
    const AttributeTable* t = ref.segment->attributes();
    std::optional<size_t> fi = t != nullptr ? t->Find(c.field) : std::nullopt;
    if (fi.has_value()) {
      columns.push_back(Column{t, *fi, &t->fields()[*fi], ref.segment->rows()});
      found = true;
    } else {
      columns.push_back(std::nullopt);
    }
  }
  if (!found) {
    std::string known;
    for (const auto& f : schema->fields()) {
      absl::StrAppend(&known, known.empty() ? "" : ", ", f.name);
    }
    return absl::InvalidArgumentError(absl::StrCat("filter field ", QuoteClientText(c.field),
                                                   " is not in the schema of snapshot v",
                                                   snap.version(), " (fields: ", known, ")"));
  }
  return columns;
}

bool HasPostings(const Column& col) {
  return col.spec->type == FieldType::kKeyword || col.spec->type == FieldType::kBoolean;
}

// `test` ("match" or "in") does not take the column's type.
absl::Status MatchOrInTypeError(const Column& col, absl::string_view test) {
  return absl::InvalidArgumentError(absl::StrCat(
      "filter ", test, " on '", col.spec->name, "' (", snapshot::FieldTypeName(col.spec->type),
      "): match takes keyword or boolean fields, in takes keyword, boolean, integer or "
      "timestamp fields; use range"));
}

// match: the rows holding one keyword or boolean value.
absl::StatusOr<index::RowFilter> EvaluateMatch(const Column& col, const Condition& c) {
  if (c.values.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("filter match on '", col.spec->name, "' needs exactly one value"));
  }
  if (!HasPostings(col)) return MatchOrInTypeError(col, "match");
  index::RowFilter out(col.rows);
  RETURN_IF_ERROR(AddPostings(*col.table, col.index, c.values[0], "match", &out));
  return out;
}

// Allows the rows of `col`'s sorted rows (SortedRows) from the first whose
// value is not `before` the low bound to the first that is `after` the high
// bound: `before(r)` says row r's value is below the range, `after(r)` that
// it is above. Two binary searches, then the rows selected.
template <typename Before, typename After>
void AllowSortedRange(const Column& col, absl::Span<const uint32_t> sorted, Before before,
                      After after, index::RowFilter* out) {
  // A damaged file's row past the end is never read (its value is taken as
  // below the range) nor allowed.
  const auto* first = std::partition_point(sorted.begin(), sorted.end(),
                                           [&](uint32_t r) { return r >= col.rows || before(r); });
  const auto* last = std::partition_point(first, sorted.end(),
                                          [&](uint32_t r) { return r >= col.rows || !after(r); });
  for (const auto* it = first; it != last; ++it) {
    if (*it < col.rows) out->Allow(*it);
  }
}

// in: the rows holding any of the values; keyword and boolean columns by
// their posting lists, integer and timestamp columns by their sorted rows
// (a scan where the file has none).
absl::StatusOr<index::RowFilter> EvaluateIn(const Column& col, const Condition& c) {
  if (c.values.empty() || c.values.size() > kMaxFilterValues) {
    return absl::InvalidArgumentError(absl::StrCat("filter in on '", col.spec->name,
                                                   "' needs 1 to ", kMaxFilterValues, " values"));
  }
  index::RowFilter out(col.rows);
  if (HasPostings(col)) {
    for (const auto& v : c.values) {
      RETURN_IF_ERROR(AddPostings(*col.table, col.index, v, "in", &out));
    }
    return out;
  }
  if (col.spec->type == FieldType::kFloat) return MatchOrInTypeError(col, "in");
  std::vector<int64_t> wanted;
  for (const auto& v : c.values) {
    ASSIGN_OR_RETURN(int64_t x, AsInteger(*col.spec, "in", v));
    wanted.push_back(x);
  }
  std::sort(wanted.begin(), wanted.end());
  const absl::Span<const uint32_t> sorted = col.table->SortedRows(col.index);
  if (!sorted.empty()) {
    for (int64_t w : wanted) {
      AllowSortedRange(
          col, sorted, [&](uint32_t r) { return col.table->IntegerAt(col.index, r) < w; },
          [&](uint32_t r) { return col.table->IntegerAt(col.index, r) > w; }, &out);
    }
    return out;
  }
  for (uint32_t r = 0; r < col.rows; ++r) {
    const int64_t x = col.table->IntegerAt(col.index, r);
    if (x != snapshot::kAbsentInteger && std::binary_search(wanted.begin(), wanted.end(), x)) {
      out.Allow(r);
    }
  }
  return out;
}

// range on a float column; NaN (no value) is in no range.
absl::StatusOr<index::RowFilter> EvaluateFloatRange(const Column& col, const Condition& c) {
  const snapshot::FieldSpec& f = *col.spec;
  double lo = -INFINITY, hi = INFINITY;
  bool lo_open = false, hi_open = false;
  if (c.gte) {
    ASSIGN_OR_RETURN(lo, AsNumber(f, "range", *c.gte));
  }
  if (c.gt) {
    ASSIGN_OR_RETURN(lo, AsNumber(f, "range", *c.gt));
    lo_open = true;
  }
  if (c.lte) {
    ASSIGN_OR_RETURN(hi, AsNumber(f, "range", *c.lte));
  }
  if (c.lt) {
    ASSIGN_OR_RETURN(hi, AsNumber(f, "range", *c.lt));
    hi_open = true;
  }
  index::RowFilter out(col.rows);
  // No value compares with a NaN bound: nothing is in the range (as the
  // scan's comparisons say; the binary searches below would not).
  if (std::isnan(lo) || std::isnan(hi)) return out;
  const absl::Span<const uint32_t> sorted = col.table->SortedRows(col.index);
  if (!sorted.empty()) {
    auto at = [&](uint32_t r) { return col.table->FloatAt(col.index, r); };
    AllowSortedRange(
        col, sorted, [&](uint32_t r) { return lo_open ? at(r) <= lo : at(r) < lo; },
        [&](uint32_t r) { return hi_open ? at(r) >= hi : at(r) > hi; }, &out);
    return out;
  }
  for (uint32_t r = 0; r < col.rows; ++r) {
    const double x = col.table->FloatAt(col.index, r);
    if (std::isnan(x)) continue;
    if ((lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi)) out.Allow(r);
  }
  return out;
}

// range on an integer or timestamp column, as the closed interval [lo, hi].
absl::StatusOr<index::RowFilter> EvaluateIntegerRange(const Column& col, const Condition& c) {
  const snapshot::FieldSpec& f = *col.spec;
  index::RowFilter out(col.rows);
  int64_t lo = INT64_MIN + 1, hi = INT64_MAX;
  if (c.gte) {
    ASSIGN_OR_RETURN(lo, AsInteger(f, "range", *c.gte));
  }
  if (c.gt) {
    ASSIGN_OR_RETURN(int64_t x, AsInteger(f, "range", *c.gt));
    if (x == INT64_MAX) return out;  // nothing is greater
    lo = std::max(lo, x + 1);
  }
  if (c.lte) {
    ASSIGN_OR_RETURN(hi, AsInteger(f, "range", *c.lte));
  }
  if (c.lt) {
    ASSIGN_OR_RETURN(int64_t x, AsInteger(f, "range", *c.lt));
    if (x <= INT64_MIN + 1) return out;  // nothing is less
    hi = std::min(hi, x - 1);
  }
  const absl::Span<const uint32_t> sorted = col.table->SortedRows(col.index);
  if (!sorted.empty()) {
    AllowSortedRange(
        col, sorted, [&](uint32_t r) { return col.table->IntegerAt(col.index, r) < lo; },
        [&](uint32_t r) { return col.table->IntegerAt(col.index, r) > hi; }, &out);
    return out;
  }
  for (uint32_t r = 0; r < col.rows; ++r) {
    const int64_t x = col.table->IntegerAt(col.index, r);
    if (x != snapshot::kAbsentInteger && x >= lo && x <= hi) out.Allow(r);
  }
  return out;
}

// range: gte/gt/lte/lt bounds on an integer, float or timestamp column.
absl::StatusOr<index::RowFilter> EvaluateRange(const Column& col, const Condition& c) {
  if (!c.gte && !c.gt && !c.lte && !c.lt) {
    return absl::InvalidArgumentError(
        absl::StrCat("filter range on '", col.spec->name, "' has no bound (gte, gt, lte or lt)"));
  }
  switch (col.spec->type) {
    case FieldType::kFloat:
      return EvaluateFloatRange(col, c);
    case FieldType::kInteger:
    case FieldType::kTimestamp:
      return EvaluateIntegerRange(col, c);
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "filter range on '", col.spec->name, "' (", snapshot::FieldTypeName(col.spec->type),
          "): range takes integer, float or timestamp fields"));
  }
}

// The condition on one segment's column: its rows (the segment's numbers).
absl::StatusOr<index::RowFilter> EvaluateOnColumn(const Column& col, const Condition& c) {
  switch (c.kind) {
    case Condition::Kind::kMatch:
      return EvaluateMatch(col, c);
    case Condition::Kind::kIn:
      return EvaluateIn(col, c);
    case Condition::Kind::kRange:
      return EvaluateRange(col, c);
    case Condition::Kind::kHasId:
      break;
  }
  return index::RowFilter(col.rows);
}

absl::StatusOr<index::RowFilter> EvaluateCondition(const snapshot::Snapshot& snap,
                                                   const Condition& c) {
  if (c.kind == Condition::Kind::kHasId) return EvaluateHasId(snap, c);
  ASSIGN_OR_RETURN(std::vector<std::optional<Column>> columns, FindColumns(snap, c));
  if (columns.size() == 1 && columns[0].has_value()) return EvaluateOnColumn(*columns[0], c);
  index::RowFilter out(snap.rows());
  for (size_t i = 0; i < columns.size(); ++i) {
    if (!columns[i].has_value()) continue;
    ASSIGN_OR_RETURN(index::RowFilter rows, EvaluateOnColumn(*columns[i], c));
    const uint32_t base = snap.segments()[i].base;
    rows.ForEach([&](uint32_t r) { out.Allow(base + r); });
  }
  return out;
}

}  // namespace

absl::StatusOr<index::RowFilter> EvaluateFilter(const snapshot::Snapshot& snap,
                                                const Filter& filter) {
  if (!filter.error.empty()) return absl::InvalidArgumentError(filter.error);
  const size_t n = snap.rows();
  const size_t conditions = filter.must.size() + filter.should.size() + filter.must_not.size();
  if (conditions > kMaxFilterConditions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "filter has ", conditions, " conditions; the limit is ", kMaxFilterConditions));
  }
  index::RowFilter allowed(n, /*all=*/true);
  for (const auto& c : filter.must) {
    ASSIGN_OR_RETURN(index::RowFilter r, EvaluateCondition(snap, c));
    allowed.IntersectWith(r);
  }
  if (!filter.should.empty()) {
    index::RowFilter any(n);
    for (const auto& c : filter.should) {
      ASSIGN_OR_RETURN(index::RowFilter r, EvaluateCondition(snap, c));
      any.UnionWith(r);
    }
    allowed.IntersectWith(any);
  }
  for (const auto& c : filter.must_not) {
    ASSIGN_OR_RETURN(index::RowFilter r, EvaluateCondition(snap, c));
    allowed.Subtract(r);
  }
  if (snap.live() != nullptr) allowed.IntersectWith(*snap.live());  // Deleted rows never match.
  return allowed;
}

}  // namespace imagesearch::serving
