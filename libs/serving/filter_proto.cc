#include "libs/serving/filter_proto.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "libs/common/client_text.h"

namespace imagesearch::serving {
namespace {

// One filter value; one with nothing set is recorded in filter->error.
FilterValue ToValue(const v1::FilterValue& v, absl::string_view field, Filter* filter) {
  switch (v.value_case()) {
    case v1::FilterValue::kKeyword:
      return v.keyword();
    case v1::FilterValue::kInteger:
      return v.integer();
    case v1::FilterValue::kNumber:
      return v.number();
    case v1::FilterValue::kBoolean:
      return v.boolean();
    case v1::FilterValue::kTimestamp:
      return v.timestamp();
    case v1::FilterValue::VALUE_NOT_SET:
      break;
  }
  if (filter->error.empty()) {
    filter->error = absl::StrCat("filter condition on ", QuoteClientText(field),
                                 " has a value with nothing set");
  }
  return std::string();
}

Condition ToCondition(const v1::Condition& c, Filter* filter) {
  Condition x;
  x.field = c.field();
  switch (c.test_case()) {
    case v1::Condition::kMatch:
      x.kind = Condition::Kind::kMatch;
      x.values.push_back(ToValue(c.match(), c.field(), filter));
      break;
    case v1::Condition::kIn:
      x.kind = Condition::Kind::kIn;
      for (const auto& v : c.in().values()) x.values.push_back(ToValue(v, c.field(), filter));
      break;
    case v1::Condition::kRange: {
      x.kind = Condition::Kind::kRange;
      const v1::Range& r = c.range();
      if (r.has_gte()) x.gte = ToValue(r.gte(), c.field(), filter);
      if (r.has_gt()) x.gt = ToValue(r.gt(), c.field(), filter);
      if (r.has_lte()) x.lte = ToValue(r.lte(), c.field(), filter);
      if (r.has_lt()) x.lt = ToValue(r.lt(), c.field(), filter);
      break;
    }
    case v1::Condition::kHasId:
      x.kind = Condition::Kind::kHasId;
      x.ids.assign(c.has_id().ids().begin(), c.has_id().ids().end());
      break;
    case v1::Condition::TEST_NOT_SET:
      if (filter->error.empty()) {
        filter->error = absl::StrCat("filter condition on ", QuoteClientText(c.field()),
                                     " has no test (match, in, range or has_id)");
      }
      break;
  }
  return x;
}

}  // namespace

void FilterFromProto(const v1::Filter& in, Filter* out) {
  for (const auto& c : in.must()) out->must.push_back(ToCondition(c, out));
  for (const auto& c : in.should()) out->should.push_back(ToCondition(c, out));
  for (const auto& c : in.must_not()) out->must_not.push_back(ToCondition(c, out));
}

}  // namespace imagesearch::serving
