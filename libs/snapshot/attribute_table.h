// attrs.bin: typed attribute columns for filtered search, memory-mapped.
//
// A schema (the indexer's --schema="class:keyword,year:integer,...") names
// fields of the manifest lines' "attributes" objects and their types:
// keyword (string), integer (int64), float (double), boolean, timestamp
// (RFC 3339 text or integer seconds, stored as int64 seconds since the epoch).
// Each field is one column of N rows; a row without the field holds "absent".
// Keyword and boolean fields also have a posting list per value (rows
// ascending), so a filter on them costs the matching rows, not N; numeric
// fields have their rows in value order, so a range or an integer `in` costs
// two binary searches per bound and the rows it selects.
//
// Layout (little-endian):
//   0   char[8]  magic "ISATR\0\0\1"
//   8   u64      header size H
//   16  char[H]  header JSON: {"format":1,"rows":N,"fields":[{"name","type",
//                 "column","values","value_offsets","postings","posting_offsets"}]}
//                 (byte offsets of each section from the start of the file)
//   ...          sections, each 8-byte aligned:
//     keyword  column u32[N] value codes (0xFFFFFFFF = absent); values: the
//              distinct strings sorted, u64[V+1] offsets + bytes; postings:
//              u64[V+1] offsets into u32 rows
//     boolean  column u8[N] (0, 1, 255 = absent); postings for false, true
//     integer, timestamp  column i64[N] (INT64_MIN = absent); order: u32[M]
//              the M rows holding a value, ascending by (value, row)
//     float    column f64[N] (NaN = absent); order as for integers
//   ("order" and "order_rows" in a field's header entry; files written
//   before them have neither, and their ranges scan the column.)
//
// Opening validates the header and that every section lies inside the file
// (O(fields), whatever N). AttributeTable is immutable and thread-safe.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_ATTRIBUTE_TABLE_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_ATTRIBUTE_TABLE_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "libs/common/file_util.h"

namespace imagesearch::snapshot {

inline constexpr char kAttributesFile[] = "attrs.bin";

enum class FieldType { kKeyword, kInteger, kFloat, kBoolean, kTimestamp };
absl::string_view FieldTypeName(FieldType type);

struct FieldSpec {
  std::string name;
  FieldType type = FieldType::kKeyword;
};

// Parses "name:type,name:type" (types: keyword, integer, float, boolean,
// timestamp). INVALID_ARGUMENT names the bad part.
absl::StatusOr<std::vector<FieldSpec>> ParseSchema(absl::string_view spec);

// One row's value of one field: absent, keyword, integer or timestamp
// (int64), float, or boolean.
using AttrValue = std::variant<std::monostate, std::string, int64_t, double, bool>;

inline constexpr int64_t kAbsentInteger = std::numeric_limits<int64_t>::min();
inline constexpr uint32_t kAbsentCode = 0xFFFFFFFFu;

// A row's typed values, in schema order, from its attributes JSON object
// (empty text: every field absent). INVALID_ARGUMENT says which field is
// wrong and why, e.g. "attribute 'year': expected an integer, got \"abc\"".
absl::StatusOr<std::vector<AttrValue>> TypedAttributes(const std::vector<FieldSpec>& schema,
                                                       absl::string_view attributes_json);

// Parses a timestamp: RFC 3339 text or integer seconds. INVALID_ARGUMENT
// otherwise.
absl::StatusOr<int64_t> ParseTimestamp(absl::string_view text);

// Serialises rows (each in schema order) as attrs.bin.
std::string EncodeAttributeTable(const std::vector<FieldSpec>& schema,
                                 const std::vector<std::vector<AttrValue>>& rows);

class AttributeTable {
 public:
  static absl::StatusOr<std::unique_ptr<AttributeTable>> Open(const std::string& path,
                                                              uint64_t expected_rows);
  uint64_t rows() const { return rows_; }
  const std::vector<FieldSpec>& fields() const { return specs_; }
  // Index of the field named `name` in fields(), or nullopt.
  std::optional<size_t> Find(absl::string_view name) const;

  // Keyword and boolean fields: the code of `value` (boolean: 0 false,
  // 1 true), or nullopt if no row has it; and the rows holding a code.
  std::optional<uint32_t> KeywordCode(size_t field, absl::string_view value) const;
  absl::Span<const uint32_t> Postings(size_t field, uint32_t code) const;
  // Per-row values. REQUIRES: row < rows() and the field has that type.
  int64_t IntegerAt(size_t field, uint32_t row) const;  // kAbsentInteger if absent
  double FloatAt(size_t field, uint32_t row) const;     // NaN if absent
  // Integer, timestamp and float fields: the rows that hold a value,
  // ascending by (value, row), so that a range is two binary searches and
  // the rows it selects. Empty where the file has no order section: scan
  // the column. A damaged file may list rows out of
  // order or >= rows(); callers skip the latter.
  absl::Span<const uint32_t> SortedRows(size_t field) const;

 private:
  struct Field {
    uint64_t column = 0, values = 0, value_offsets = 0, postings = 0, posting_offsets = 0;
    uint64_t value_count = 0;
    uint64_t order = 0, order_rows = 0;  // numeric fields; 0: no order section
  };
  AttributeTable() = default;
  std::unique_ptr<MappedFile> file_;
  uint64_t rows_ = 0;
  std::vector<FieldSpec> specs_;
  std::vector<Field> fields_;
};

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_ATTRIBUTE_TABLE_H_
