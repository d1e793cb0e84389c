#include "libs/serving/filter.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "libs/common/status_macros.h"

namespace imagesearch::serving {
namespace {

using snapshot::AttributeTable;
using snapshot::FieldType;

std::string Describe(const FilterValue& v) {
  if (const auto* s = std::get_if<std::string>(&v)) {
    return absl::StrCat("\"", s->size() > 40 ? s->substr(0, 40) + "..." : *s, "\"");
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

absl::StatusOr<index::RowFilter> EvaluateCondition(const snapshot::Snapshot& snap,
                                                   const Condition& c) {
  const size_t n = snap.manifest().count;
  index::RowFilter out(n);
  if (c.kind == Condition::Kind::kHasId) {
    if (c.ids.empty()) return absl::InvalidArgumentError("filter has_id lists no ids");
    if (c.ids.size() > kMaxFilterValues) {
      return absl::InvalidArgumentError(absl::StrCat("filter has_id lists ", c.ids.size(),
                                                     " ids; the limit is ", kMaxFilterValues));
    }
    for (const auto& id : c.ids) {
      if (auto row = snap.ids().Find(id)) out.Allow(*row);
    }
    return out;
  }
  if (c.field.empty()) return absl::InvalidArgumentError("filter condition names no field");
  const AttributeTable* t = snap.attributes();
  if (t == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "filter names field '", c.field.substr(0, 64), "' but snapshot v", snap.version(),
        " has no attribute fields (index with --schema to filter)"));
  }
  const auto fi = t->Find(c.field);
  if (!fi.has_value()) {
    std::string known;
    for (const auto& f : t->fields()) absl::StrAppend(&known, known.empty() ? "" : ", ", f.name);
    return absl::InvalidArgumentError(absl::StrCat("filter field '", c.field.substr(0, 64),
                                                   "' is not in the schema of snapshot v",
                                                   snap.version(), " (fields: ", known, ")"));
  }
  const snapshot::FieldSpec& f = t->fields()[*fi];
  switch (c.kind) {
    case Condition::Kind::kMatch:
    case Condition::Kind::kIn: {
      const char* test = c.kind == Condition::Kind::kMatch ? "match" : "in";
      if (c.kind == Condition::Kind::kMatch && c.values.size() != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("filter match on '", f.name, "' needs exactly one value"));
      }
      if (c.values.empty() || c.values.size() > kMaxFilterValues) {
        return absl::InvalidArgumentError(absl::StrCat("filter in on '", f.name, "' needs 1 to ",
                                                       kMaxFilterValues, " values"));
      }
      if (f.type == FieldType::kKeyword || f.type == FieldType::kBoolean) {
        for (const auto& v : c.values) RETURN_IF_ERROR(AddPostings(*t, *fi, v, test, &out));
        return out;
      }
      if (c.kind == Condition::Kind::kMatch || f.type == FieldType::kFloat) {
        return absl::InvalidArgumentError(absl::StrCat(
            "filter ", test, " on '", f.name, "' (", snapshot::FieldTypeName(f.type),
            "): match takes keyword or boolean fields, in takes keyword, boolean, integer or "
            "timestamp fields; use range"));
      }
      std::vector<int64_t> wanted;
      for (const auto& v : c.values) {
        ASSIGN_OR_RETURN(int64_t x, AsInteger(f, test, v));
        wanted.push_back(x);
      }
      std::sort(wanted.begin(), wanted.end());
      for (uint32_t r = 0; r < n; ++r) {
        const int64_t x = t->IntegerAt(*fi, r);
        if (x != snapshot::kAbsentInteger && std::binary_search(wanted.begin(), wanted.end(), x)) {
          out.Allow(r);
        }
      }
      return out;
    }
    case Condition::Kind::kRange: {
      if (!c.gte && !c.gt && !c.lte && !c.lt) {
        return absl::InvalidArgumentError(
            absl::StrCat("filter range on '", f.name, "' has no bound (gte, gt, lte or lt)"));
      }
      if (f.type == FieldType::kFloat) {
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
        for (uint32_t r = 0; r < n; ++r) {
          const double x = t->FloatAt(*fi, r);
          if (std::isnan(x)) continue;
          if ((lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi)) out.Allow(r);
        }
        return out;
      }
      if (f.type != FieldType::kInteger && f.type != FieldType::kTimestamp) {
        return absl::InvalidArgumentError(absl::StrCat(
            "filter range on '", f.name, "' (", snapshot::FieldTypeName(f.type),
            "): range takes integer, float or timestamp fields"));
      }
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
      for (uint32_t r = 0; r < n; ++r) {
        const int64_t x = t->IntegerAt(*fi, r);
        if (x != snapshot::kAbsentInteger && x >= lo && x <= hi) out.Allow(r);
      }
      return out;
    }
    case Condition::Kind::kHasId:
      break;
  }
  return out;
}

}  // namespace

absl::StatusOr<index::RowFilter> EvaluateFilter(const snapshot::Snapshot& snap, const Filter& filter) {
  if (!filter.error.empty()) return absl::InvalidArgumentError(filter.error);
  const size_t n = snap.manifest().count;
  const size_t conditions = filter.must.size() + filter.should.size() + filter.must_not.size();
  if (conditions > kMaxFilterConditions) {
    return absl::InvalidArgumentError(absl::StrCat("filter has ", conditions,
                                                   " conditions; the limit is ",
                                                   kMaxFilterConditions));
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
  return allowed;
}

}  // namespace imagesearch::serving
