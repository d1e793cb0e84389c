#include "libs/snapshot/attribute_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "libs/common/client_text.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/byte_io.h"

namespace imagesearch::snapshot {
namespace {

using internal::LoadLE;
using internal::PutLE;
using json = nlohmann::json;

constexpr char kMagic[8] = {'I', 'S', 'A', 'T', 'R', '\0', '\0', '\1'};
constexpr size_t kMaxFields = 64;

void Align8(std::string* s) { s->resize((s->size() + 7) / 8 * 8, '\0'); }

template <typename T>
void Append(std::string* s, T v) {
  const size_t at = s->size();
  s->resize(at + sizeof(T));
  PutLE<T>(s, at, v);
}

absl::StatusOr<FieldType> ParseFieldType(absl::string_view name) {
  if (name == "keyword") return FieldType::kKeyword;
  if (name == "integer") return FieldType::kInteger;
  if (name == "float") return FieldType::kFloat;
  if (name == "boolean") return FieldType::kBoolean;
  if (name == "timestamp") return FieldType::kTimestamp;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown field type '", name.substr(0, 32),
                   "'; expected keyword, integer, float, boolean or timestamp"));
}

std::string Quote(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 40) + "..." : s;
}

// Writes the keyword/boolean dictionary and posting lists of `codes` (one
// per row, kAbsentCode for none) over `values`; records the offsets in `f`.
void AppendPostings(const std::vector<uint32_t>& codes, const std::vector<std::string>& values,
                    std::string* body, json* f) {
  Align8(body);
  (*f)["value_offsets"] = body->size();
  uint64_t off = 0;
  for (const auto& v : values) {
    Append<uint64_t>(body, off);
    off += v.size();
  }
  Append<uint64_t>(body, off);
  (*f)["values"] = body->size();
  for (const auto& v : values) body->append(v);
  std::vector<std::vector<uint32_t>> lists(values.size());
  for (uint32_t r = 0; r < codes.size(); ++r) {
    if (codes[r] != kAbsentCode) lists[codes[r]].push_back(r);
  }
  Align8(body);
  (*f)["posting_offsets"] = body->size();
  off = 0;
  for (const auto& l : lists) {
    Append<uint64_t>(body, off);
    off += l.size();
  }
  Append<uint64_t>(body, off);
  (*f)["postings"] = body->size();
  for (const auto& l : lists) {
    for (uint32_t r : l) Append<uint32_t>(body, r);
  }
  (*f)["value_count"] = values.size();
}

}  // namespace

absl::string_view FieldTypeName(FieldType type) {
  switch (type) {
    case FieldType::kKeyword:
      return "keyword";
    case FieldType::kInteger:
      return "integer";
    case FieldType::kFloat:
      return "float";
    case FieldType::kBoolean:
      return "boolean";
    case FieldType::kTimestamp:
      return "timestamp";
  }
  return "keyword";
}

absl::StatusOr<std::vector<FieldSpec>> ParseSchema(absl::string_view spec) {
  std::vector<FieldSpec> fields;
  for (absl::string_view part : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    std::vector<absl::string_view> kv = absl::StrSplit(part, absl::MaxSplits(':', 1));
    if (kv.size() != 2 || absl::StripAsciiWhitespace(kv[0]).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("schema entry '", part.substr(0, 64),
                                                     "' must be name:type (e.g. year:integer)"));
    }
    FieldSpec f;
    f.name = std::string(absl::StripAsciiWhitespace(kv[0]));
    ASSIGN_OR_RETURN(f.type, ParseFieldType(absl::StripAsciiWhitespace(kv[1])));
    for (const auto& g : fields) {
      if (g.name == f.name) {
        return absl::InvalidArgumentError(absl::StrCat("schema names field '", f.name, "' twice"));
      }
    }
    fields.push_back(std::move(f));
  }
  if (fields.size() > kMaxFields) {
    return absl::InvalidArgumentError(
        absl::StrCat("schema has ", fields.size(), " fields; the limit is ", kMaxFields));
  }
  return fields;
}

absl::StatusOr<int64_t> ParseTimestamp(absl::string_view text) {
  int64_t seconds = 0;
  if (absl::SimpleAtoi(text, &seconds)) return seconds;
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, std::string(text), &t, &err)) {
    return absl::InvalidArgumentError(
        absl::StrCat(QuoteClientText(text), " is not an RFC 3339 time or integer seconds"));
  }
  return absl::ToUnixSeconds(t);
}

absl::StatusOr<std::vector<AttrValue>> TypedAttributes(const std::vector<FieldSpec>& schema,
                                                       absl::string_view attributes_json) {
  std::vector<AttrValue> out(schema.size());
  if (attributes_json.empty() || schema.empty()) return out;
  const json j = json::parse(attributes_json.begin(), attributes_json.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("attributes are not a JSON object");
  }
  for (size_t i = 0; i < schema.size(); ++i) {
    const FieldSpec& f = schema[i];
    auto it = j.find(f.name);
    if (it == j.end() || it->is_null()) continue;
    const json& v = *it;
    auto wrong = [&](absl::string_view expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("attribute '", f.name, "': expected ", expected, ", got ", Quote(v)));
    };
    switch (f.type) {
      case FieldType::kKeyword:
        if (!v.is_string()) return wrong("a string (keyword)");
        out[i] = v.get<std::string>();
        break;
      case FieldType::kInteger:
        if (!v.is_number_integer()) return wrong("an integer");
        if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX})
          return wrong("an int64");
        if (v.get<int64_t>() == kAbsentInteger) return wrong("an integer above INT64_MIN");
        out[i] = v.get<int64_t>();
        break;
      case FieldType::kFloat:
        if (!v.is_number()) return wrong("a number");
        out[i] = v.get<double>();
        break;
      case FieldType::kBoolean:
        if (!v.is_boolean()) return wrong("true or false");
        out[i] = v.get<bool>();
        break;
      case FieldType::kTimestamp: {
        if (v.is_number_integer()) {
          out[i] = v.get<int64_t>();
          break;
        }
        if (!v.is_string()) return wrong("an RFC 3339 time or integer seconds");
        auto t = ParseTimestamp(v.get<std::string>());
        if (!t.ok()) return wrong("an RFC 3339 time or integer seconds");
        out[i] = *t;
        break;
      }
    }
  }
  return out;
}

// The order section of a numeric column: the rows that hold a value, as
// u32, ascending by (value, row); its offset and length go in `f`.
template <typename T, typename HasValue>
void AppendOrder(const std::vector<T>& values, HasValue has_value, std::string* body, json* f) {
  std::vector<uint32_t> order;
  for (size_t r = 0; r < values.size(); ++r) {
    if (has_value(values[r])) order.push_back(static_cast<uint32_t>(r));
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return values[a] < values[b]; });
  Align8(body);
  (*f)["order"] = body->size();
  (*f)["order_rows"] = order.size();
  for (uint32_t r : order) Append<uint32_t>(body, r);
}

std::string EncodeAttributeTable(const std::vector<FieldSpec>& schema,
                                 const std::vector<std::vector<AttrValue>>& rows) {
  const size_t n = rows.size();
  std::string body;
  json fields = json::array();
  for (size_t fi = 0; fi < schema.size(); ++fi) {
    const FieldSpec& spec = schema[fi];
    json f = {{"name", spec.name}, {"type", std::string(FieldTypeName(spec.type))}};
    Align8(&body);
    f["column"] = body.size();
    switch (spec.type) {
      case FieldType::kKeyword: {
        std::map<std::string, uint32_t> dict;
        for (const auto& row : rows) {
          if (const auto* s = std::get_if<std::string>(&row[fi])) dict.emplace(*s, 0);
        }
        std::vector<std::string> values;
        for (auto& [v, code] : dict) {
          code = static_cast<uint32_t>(values.size());
          values.push_back(v);
        }
        std::vector<uint32_t> codes(n, kAbsentCode);
        for (size_t r = 0; r < n; ++r) {
          if (const auto* s = std::get_if<std::string>(&rows[r][fi])) codes[r] = dict[*s];
        }
        for (uint32_t c : codes) Append<uint32_t>(&body, c);
        AppendPostings(codes, values, &body, &f);
        break;
      }
      case FieldType::kBoolean: {
        std::vector<uint32_t> codes(n, kAbsentCode);
        for (size_t r = 0; r < n; ++r) {
          if (const auto* b = std::get_if<bool>(&rows[r][fi])) codes[r] = *b ? 1 : 0;
        }
        for (uint32_t c : codes)
          Append<uint8_t>(&body, c == kAbsentCode ? 255 : static_cast<uint8_t>(c));
        AppendPostings(codes, {"false", "true"}, &body, &f);
        break;
      }
      case FieldType::kInteger:
      case FieldType::kTimestamp: {
        std::vector<int64_t> values(n, kAbsentInteger);
        for (size_t r = 0; r < n; ++r) {
          if (const auto* v = std::get_if<int64_t>(&rows[r][fi])) values[r] = *v;
        }
        for (int64_t v : values) Append<int64_t>(&body, v);
        AppendOrder(
            values, [](int64_t v) { return v != kAbsentInteger; }, &body, &f);
        break;
      }
      case FieldType::kFloat: {
        std::vector<double> values(n, std::nan(""));
        for (size_t r = 0; r < n; ++r) {
          if (const auto* v = std::get_if<double>(&rows[r][fi])) values[r] = *v;
        }
        for (double v : values) Append<double>(&body, v);
        AppendOrder(
            values, [](double v) { return !std::isnan(v); }, &body, &f);
        break;
      }
    }
    fields.push_back(std::move(f));
  }
  const std::string header = json{{"format", 1}, {"rows", n}, {"fields", fields}}.dump();
  std::string out(kMagic, 8);
  Append<uint64_t>(&out, header.size());
  out += header;
  Align8(&out);
  out += body;
  return out;
}

absl::StatusOr<std::unique_ptr<AttributeTable>> AttributeTable::Open(const std::string& path,
                                                                     uint64_t expected_rows) {
  std::unique_ptr<AttributeTable> t(new AttributeTable());
  ASSIGN_OR_RETURN(t->file_, MappedFile::Open(path));
  const char* d = t->file_->data();
  const uint64_t size = t->file_->size();
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("attribute table ", path, ": ", why));
  };
  if (size < 16 || std::memcmp(d, kMagic, 8) != 0) return bad("bad magic number or too short");
  const uint64_t header_size = LoadLE<uint64_t>(d + 8);
  if (header_size > size - 16) return bad("header runs past the end (truncated)");
  const json h = json::parse(d + 16, d + 16 + header_size, nullptr, false);
  const uint64_t base = (16 + header_size + 7) / 8 * 8;
  try {
    if (h.is_discarded() || h.at("format").get<int>() != 1) return bad("unreadable header");
    t->rows_ = h.at("rows").get<uint64_t>();
    if (t->rows_ != expected_rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attribute table holds ", t->rows_, " rows but the manifest says ", expected_rows));
    }
    for (const json& jf : h.at("fields")) {
      FieldSpec spec;
      spec.name = jf.at("name").get<std::string>();
      auto type = ParseFieldType(jf.at("type").get<std::string>());
      if (!type.ok()) return bad(type.status().message());
      spec.type = *type;
      Field f;
      f.column = base + jf.at("column").get<uint64_t>();
      const uint64_t width = spec.type == FieldType::kKeyword   ? 4
                             : spec.type == FieldType::kBoolean ? 1
                                                                : 8;
      if (f.column > size || t->rows_ > (size - f.column) / width) {
        return bad(absl::StrCat("column '", spec.name, "' runs past the end (truncated)"));
      }
      if (spec.type == FieldType::kKeyword || spec.type == FieldType::kBoolean) {
        f.value_count = jf.at("value_count").get<uint64_t>();
        f.value_offsets = base + jf.at("value_offsets").get<uint64_t>();
        f.values = base + jf.at("values").get<uint64_t>();
        f.posting_offsets = base + jf.at("posting_offsets").get<uint64_t>();
        f.postings = base + jf.at("postings").get<uint64_t>();
        for (uint64_t table : {f.value_offsets, f.posting_offsets}) {
          if (table > size || f.value_count >= (size - table) / 8) {
            return bad(absl::StrCat("field '", spec.name, "' offsets run past the end"));
          }
        }
        const uint64_t value_bytes = LoadLE<uint64_t>(d + f.value_offsets + f.value_count * 8);
        const uint64_t posting_rows = LoadLE<uint64_t>(d + f.posting_offsets + f.value_count * 8);
        if (f.values > size || value_bytes > size - f.values || f.postings > size ||
            posting_rows > (size - f.postings) / 4 || posting_rows > t->rows_) {
          return bad(absl::StrCat("field '", spec.name, "' values or postings run past the end"));
        }
        // Postings() hands out the u32 rows in place: the writer aligns every
        // section to 8 bytes, and the mapping starts on a page.
        if (f.postings % alignof(uint32_t) != 0) {
          return bad(absl::StrCat("field '", spec.name, "' postings are not 4-byte aligned"));
        }
      } else if (jf.contains("order")) {  // Optional: without it, ranges scan.
        f.order = base + jf.at("order").get<uint64_t>();
        f.order_rows = jf.at("order_rows").get<uint64_t>();
        if (f.order % alignof(uint32_t) != 0) {
          return bad(absl::StrCat("field '", spec.name, "' order is not 4-byte aligned"));
        }
        if (f.order > size || f.order_rows > t->rows_ || f.order_rows > (size - f.order) / 4) {
          return bad(absl::StrCat("field '", spec.name, "' order runs past the end"));
        }
      }
      t->specs_.push_back(std::move(spec));
      t->fields_.push_back(f);
    }
  } catch (const json::exception& e) {
    return bad(absl::StrCat("header is missing a field: ", e.what()));
  }
  return t;
}

std::optional<size_t> AttributeTable::Find(absl::string_view name) const {
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (specs_[i].name == name) return i;
  }
  return std::nullopt;
}

std::optional<uint32_t> AttributeTable::KeywordCode(size_t field, absl::string_view value) const {
  const Field& f = fields_[field];
  const char* d = file_->data();
  const uint64_t total = LoadLE<uint64_t>(d + f.value_offsets + f.value_count * 8);
  uint64_t lo = 0, hi = f.value_count;
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    const uint64_t b = LoadLE<uint64_t>(d + f.value_offsets + mid * 8);
    const uint64_t e = LoadLE<uint64_t>(d + f.value_offsets + (mid + 1) * 8);
    if (b > e || e > total) return std::nullopt;  // damaged: no match
    const int c = absl::string_view(d + f.values + b, e - b).compare(value);
    if (c == 0) return static_cast<uint32_t>(mid);
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return std::nullopt;
}

absl::Span<const uint32_t> AttributeTable::Postings(size_t field, uint32_t code) const {
  const Field& f = fields_[field];
  if (code >= f.value_count) return {};
  const char* d = file_->data();
  const uint64_t total = LoadLE<uint64_t>(d + f.posting_offsets + f.value_count * 8);
  const uint64_t b = LoadLE<uint64_t>(d + f.posting_offsets + uint64_t{code} * 8);
  const uint64_t e = LoadLE<uint64_t>(d + f.posting_offsets + (uint64_t{code} + 1) * 8);
  if (b > e || e > total) return {};  // damaged: no rows
  return absl::Span<const uint32_t>(reinterpret_cast<const uint32_t*>(d + f.postings) + b, e - b);
}

absl::Span<const uint32_t> AttributeTable::SortedRows(size_t field) const {
  const Field& f = fields_[field];
  if (f.order == 0) return {};
  return absl::Span<const uint32_t>(reinterpret_cast<const uint32_t*>(file_->data() + f.order),
                                    f.order_rows);
}

int64_t AttributeTable::IntegerAt(size_t field, uint32_t row) const {
  return LoadLE<int64_t>(file_->data() + fields_[field].column + uint64_t{row} * 8);
}

double AttributeTable::FloatAt(size_t field, uint32_t row) const {
  return LoadLE<double>(file_->data() + fields_[field].column + uint64_t{row} * 8);
}

}  // namespace imagesearch::snapshot
