#include "libs/snapshot/attribute_table.h"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cctype>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "libs/common/file_util.h"
#include "libs/common/test_temp_dir.h"

namespace imagesearch::snapshot {
namespace {

std::string Write(const std::string& bytes) {
  const std::string dir = testing::NewTempDir("attrs_test");
  REQUIRE(!dir.empty());
  const std::string path = dir + "/attrs.bin";
  REQUIRE(WriteFileDurably(path, bytes).ok());
  return path;
}

TEST_CASE("schemas parse name:type lists and refuse anything else", "[attrs]") {
  auto s = ParseSchema("class:keyword, year:integer,price:float,safe:boolean,taken:timestamp");
  REQUIRE(s.ok());
  REQUIRE(s->size() == 5);
  CHECK((*s)[1].name == "year");
  CHECK((*s)[1].type == FieldType::kInteger);
  CHECK((*s)[4].type == FieldType::kTimestamp);
  CHECK(ParseSchema("").ok());
  CHECK(ParseSchema("a:date").status().message().find("unknown field type 'date'") !=
        std::string::npos);
  CHECK(ParseSchema("a").status().message().find("must be name:type") != std::string::npos);
  CHECK(ParseSchema("a:keyword,a:integer").status().message().find("twice") != std::string::npos);
}

TEST_CASE("typed attributes: values by type, absent fields, precise violations", "[attrs]") {
  auto schema = *ParseSchema("class:keyword,year:integer,price:float,safe:boolean,taken:timestamp");
  auto row = TypedAttributes(schema, R"({"class":"boot","year":2021,"price":3,"safe":true,
      "taken":"2024-05-01T12:00:00Z","other":[1,2]})");
  REQUIRE(row.ok());
  CHECK(std::get<std::string>((*row)[0]) == "boot");
  CHECK(std::get<int64_t>((*row)[1]) == 2021);
  CHECK(std::get<double>((*row)[2]) == 3.0);
  CHECK(std::get<bool>((*row)[3]));
  CHECK(std::get<int64_t>((*row)[4]) == 1714564800);
  auto empty = TypedAttributes(schema, "");
  REQUIRE(empty.ok());
  CHECK(std::holds_alternative<std::monostate>((*empty)[0]));
  auto partial = TypedAttributes(schema, R"({"year":null,"class":"x"})");
  REQUIRE(partial.ok());
  CHECK(std::holds_alternative<std::monostate>((*partial)[1]));
  CHECK(TypedAttributes(schema, R"({"year":"abc"})").status().message() ==
        "attribute 'year': expected an integer, got \"abc\"");
  CHECK(TypedAttributes(schema, R"({"year":2.5})").status().message().find("expected an integer") !=
        std::string::npos);
  CHECK(TypedAttributes(schema, R"({"class":7})").status().message() ==
        "attribute 'class': expected a string (keyword), got 7");
  CHECK(TypedAttributes(schema, R"({"safe":"yes"})").status().message().find("true or false") !=
        std::string::npos);
  CHECK(TypedAttributes(schema, R"({"taken":"yesterday"})").status().message().find("RFC 3339") !=
        std::string::npos);
  CHECK(TypedAttributes(schema, R"([1])").status().message() == "attributes are not a JSON object");
  CHECK(*ParseTimestamp("86400") == 86400);
}

TEST_CASE("attribute table round-trips columns and posting lists", "[attrs]") {
  auto schema = *ParseSchema("class:keyword,year:integer,price:float,safe:boolean");
  std::vector<std::vector<AttrValue>> rows;
  const char* classes[] = {"boot", "bag", "shirt"};
  for (int r = 0; r < 1000; ++r) {
    std::vector<AttrValue> v(4);
    if (r % 10 != 9) v[0] = std::string(classes[r % 3]);
    v[1] = int64_t{2000 + r % 25};
    if (r % 4 != 0) v[2] = 0.5 * r;
    v[3] = r % 2 == 0;
    rows.push_back(v);
  }
  auto t = AttributeTable::Open(Write(EncodeAttributeTable(schema, rows)), 1000);
  REQUIRE(t.ok());
  CHECK((*t)->fields().size() == 4);
  const size_t cls = *(*t)->Find("class");
  CHECK(!(*t)->Find("nope").has_value());
  auto boot = (*t)->KeywordCode(cls, "boot");
  REQUIRE(boot.has_value());
  CHECK(!(*t)->KeywordCode(cls, "hat").has_value());
  auto list = (*t)->Postings(cls, *boot);
  size_t want = 0;
  for (int r = 0; r < 1000; ++r) want += (r % 3 == 0 && r % 10 != 9);
  REQUIRE(list.size() == want);
  for (size_t i = 0; i < list.size(); ++i) {
    CHECK(list[i] % 3 == 0);
    if (i > 0) CHECK(list[i] > list[i - 1]);
  }
  const size_t year = *(*t)->Find("year"), price = *(*t)->Find("price"), safe = *(*t)->Find("safe");
  CHECK((*t)->IntegerAt(year, 26) == 2001);
  CHECK(std::isnan((*t)->FloatAt(price, 8)));
  CHECK((*t)->FloatAt(price, 9) == 4.5);
  CHECK((*t)->Postings(safe, *(*t)->KeywordCode(safe, "true")).size() == 500);
  CHECK((*t)->Postings(safe, 7).empty());
}

TEST_CASE("numeric columns list their rows in value order, and tables without an order still open",
          "[attrs]") {
  auto schema = *ParseSchema("year:integer,price:float,at:timestamp,class:keyword");
  std::vector<std::vector<AttrValue>> rows;
  for (int r = 0; r < 500; ++r) {
    std::vector<AttrValue> v(4);
    if (r % 5 != 0) v[0] = int64_t{(r * 37) % 101 - 50};  // repeats, negatives
    if (r % 3 != 0) v[1] = 0.25 * ((r * 53) % 97) - 3;
    v[2] = int64_t{1'700'000'000 - r};
    v[3] = std::string("k");
    rows.push_back(v);
  }
  const std::string encoded = EncodeAttributeTable(schema, rows);
  auto t = AttributeTable::Open(Write(encoded), 500);
  REQUIRE(t.ok());
  auto check_order = [&](size_t field, size_t want_rows, auto value) {
    auto sorted = (*t)->SortedRows(field);
    REQUIRE(sorted.size() == want_rows);  // every row with a value, once
    std::vector<bool> seen(500, false);
    for (size_t i = 0; i < sorted.size(); ++i) {
      REQUIRE(sorted[i] < 500);
      CHECK_FALSE(seen[sorted[i]]);
      seen[sorted[i]] = true;
      if (i > 0) {
        const bool ascending =
            value(sorted[i - 1]) < value(sorted[i]) ||
            (value(sorted[i - 1]) == value(sorted[i]) && sorted[i - 1] < sorted[i]);
        CHECK(ascending);
      }
    }
  };
  check_order(0, 400, [&](uint32_t r) { return (*t)->IntegerAt(0, r); });
  check_order(1, 333, [&](uint32_t r) { return (*t)->FloatAt(1, r); });
  check_order(2, 500, [&](uint32_t r) { return (*t)->IntegerAt(2, r); });
  CHECK((*t)->SortedRows(2)[0] == 499);
  CHECK((*t)->SortedRows(3).empty());  // keywords have posting lists instead

  // A table written before orders: the same header without them (offsets
  // are relative to the body, so the body moves with the header).
  const uint64_t header_size = [&] {
    uint64_t h;
    std::memcpy(&h, encoded.data() + 8, 8);
    return h;
  }();
  std::string header = encoded.substr(16, header_size);
  for (const char* key : {",\"order\":", ",\"order_rows\":"}) {
    for (size_t at; (at = header.find(key)) != std::string::npos;) {
      const size_t end = header.find_first_of(",}", at + 1);
      header.erase(at, end - at);
    }
  }
  REQUIRE(header.find("order") == std::string::npos);
  std::string legacy = encoded.substr(0, 8);
  const uint64_t legacy_size = header.size();
  legacy.append(reinterpret_cast<const char*>(&legacy_size), 8);
  legacy += header;
  legacy.resize((legacy.size() + 7) / 8 * 8, '\0');
  legacy += encoded.substr((16 + header_size + 7) / 8 * 8);
  auto old = AttributeTable::Open(Write(legacy), 500);
  REQUIRE(old.ok());
  CHECK((*old)->SortedRows(0).empty());
  CHECK((*old)->IntegerAt(0, 7) == (*t)->IntegerAt(0, 7));
  CHECK((*old)->FloatAt(1, 7) == (*t)->FloatAt(1, 7));
}

TEST_CASE("damaged attribute tables are refused with a reason", "[attrs]") {
  auto schema = *ParseSchema("class:keyword,year:integer");
  std::vector<std::vector<AttrValue>> rows(50, {std::string("a"), int64_t{1}});
  const std::string good = EncodeAttributeTable(schema, rows);
  CHECK(AttributeTable::Open(Write(good), 50).ok());
  CHECK(absl::IsInvalidArgument(AttributeTable::Open(Write(good), 51).status()));
  for (size_t cut : {size_t{3}, size_t{20}, good.size() / 2, good.size() - 4}) {
    INFO("cut " << cut);
    CHECK(absl::IsDataLoss(AttributeTable::Open(Write(good.substr(0, cut)), 50).status()));
  }
  std::string bad = good;
  bad[0] = 'X';
  CHECK(absl::IsDataLoss(AttributeTable::Open(Write(bad), 50).status()));
  // A header whose postings offset is off by one byte (found by
  // tests/fuzz, regressions/snapshot/attrs_postings_misaligned): the u32
  // rows would be read misaligned. The writer aligns every section to 8.
  std::string shifted = good;
  const size_t key = shifted.find("\"postings\":");
  REQUIRE(key != std::string::npos);
  size_t digit = key + 11;
  while (digit + 1 < shifted.size() &&
         std::isdigit(static_cast<unsigned char>(shifted[digit + 1]))) {
    ++digit;
  }
  REQUIRE(std::isdigit(static_cast<unsigned char>(shifted[digit])));
  REQUIRE((shifted[digit] - '0') % 2 == 0);  // 8-aligned: even, so +1 does not carry
  shifted[digit] = static_cast<char>(shifted[digit] + 1);
  auto misaligned = AttributeTable::Open(Write(shifted), 50);
  CHECK(absl::IsDataLoss(misaligned.status()));
  CHECK(misaligned.status().message().find("postings are not 4-byte aligned") != std::string::npos);

  // The integer column's order section: shifted by one byte, or listing more
  // rows than the table holds (the header edited in place, same length).
  auto edit_number = [&](const std::string& key, int delta) {
    std::string out = good;
    const size_t at = out.find("\"" + key + "\":");
    REQUIRE(at != std::string::npos);
    size_t last = at + key.size() + 3;
    while (std::isdigit(static_cast<unsigned char>(out[last + 1]))) ++last;
    REQUIRE(std::isdigit(static_cast<unsigned char>(out[last])));
    REQUIRE(out[last] - '0' + delta >= 0);
    REQUIRE(out[last] - '0' + delta <= 9);
    out[last] = static_cast<char>(out[last] + delta);
    return out;
  };
  auto order_off = AttributeTable::Open(Write(edit_number("order", 1)), 50);
  CHECK(absl::IsDataLoss(order_off.status()));
  CHECK(order_off.status().message().find("order is not 4-byte aligned") != std::string::npos);
  auto order_long = AttributeTable::Open(Write(edit_number("order_rows", 1)), 50);  // 51 > 50
  CHECK(absl::IsDataLoss(order_long.status()));
  CHECK(order_long.status().message().find("order runs past the end") != std::string::npos);
}

}  // namespace
}  // namespace imagesearch::snapshot
