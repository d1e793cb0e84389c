#include "libs/serving/filter.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <random>
#include <set>

#include "libs/serving/query_engine.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::serving {
namespace {

constexpr int kDim = 16;

// 6000 clustered rows with: "tag" keyword passing 50% / 10% / 1% / 0.2% of
// rows at random ("p50", "p10", "p1", "p02", else "rest"), "year" 2000-2029,
// "price" = row / 10 (absent every 7th row), "safe" boolean, and "side", a
// keyword that follows the vectors' first coordinate (correlated with the
// geometry: the hard case for graph search).
struct Fixture {
  Fixture() {
    root = snapshot::TempSnapshotRoot("filter");
    REQUIRE(!root.empty());
    corpus = snapshot::MakeSyntheticCorpus(6000, kDim, index::Metric::kCosine, "r", 3, 40, 0.4f);
    auto& in = corpus.input;
    in.hnsw.m = 16;
    in.hnsw.ef_construction = 100;
    in.schema =
        *snapshot::ParseSchema("tag:keyword,year:integer,price:float,safe:boolean,side:keyword");
    std::mt19937 rng(11);
    for (size_t r = 0; r < 6000; ++r) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      std::string tag = u < 0.002   ? "p02"
                        : u < 0.012 ? "p1"
                        : u < 0.112 ? "p10"
                        : u < 0.612 ? "p50"
                                    : "rest";
      std::vector<snapshot::AttrValue> row(5);
      row[0] = tag;
      row[1] = int64_t{2000 + static_cast<int64_t>(r % 30)};
      if (r % 7 != 0) row[2] = static_cast<double>(r) / 10;
      row[3] = r % 2 == 0;
      row[4] = std::string(corpus.vectors[r * kDim] > 0.8f ? "east" : "west");
      in.attributes.push_back(std::move(row));
    }
    REQUIRE(snapshot::PublishSnapshot(root, corpus.WithGraph()).ok());
    auto s = snapshot::Snapshot::Open(root, 1, snapshot::VerifyMode::kChecksums);
    REQUIRE(s.ok());
    snap = *s;
  }
  const snapshot::AttrValue& Value(uint32_t row, int field) const {
    return corpus.input.attributes[row][field];
  }
  std::string root;
  snapshot::SyntheticCorpus corpus;
  std::shared_ptr<const snapshot::Snapshot> snap;
};

Condition Match(std::string field, FilterValue v) {
  Condition c;
  c.kind = Condition::Kind::kMatch;
  c.field = std::move(field);
  c.values = {std::move(v)};
  return c;
}

TEST_CASE("filters select exactly the rows their conditions describe", "[filter]") {
  Fixture f;
  Filter filter;
  filter.must.push_back(Match("tag", std::string("p50")));
  Condition years;
  years.kind = Condition::Kind::kRange;
  years.field = "year";
  years.gte = int64_t{2010};
  years.lt = int64_t{2020};
  filter.must.push_back(years);
  Condition cheap;
  cheap.kind = Condition::Kind::kRange;
  cheap.field = "price";
  cheap.lte = 300.0;
  Condition safe = Match("safe", true);
  filter.should = {cheap, safe};
  Condition ids;
  ids.kind = Condition::Kind::kHasId;
  ids.ids = {"r0", "r2", "r4", "r10", "nope"};
  filter.must_not.push_back(ids);
  auto allowed = EvaluateFilter(*f.snap, filter);
  REQUIRE(allowed.ok());
  size_t expected = 0;
  for (uint32_t r = 0; r < 6000; ++r) {
    const bool tag = std::get<std::string>(f.Value(r, 0)) == "p50";
    const int64_t year = std::get<int64_t>(f.Value(r, 1));
    const auto* price = std::get_if<double>(&f.Value(r, 2));
    const bool should = (price != nullptr && *price <= 300.0) || std::get<bool>(f.Value(r, 3));
    const bool excluded = r == 0 || r == 2 || r == 4 || r == 10;
    const bool want = tag && year >= 2010 && year < 2020 && should && !excluded;
    INFO("row " << r);
    CHECK(allowed->Allows(r) == want);
    expected += want;
  }
  CHECK(allowed->Count() == expected);
  CHECK(expected > 100);

  Condition in;
  in.kind = Condition::Kind::kIn;
  in.field = "year";
  in.values = {int64_t{2003}, int64_t{2005}};
  Filter by_year;
  by_year.must.push_back(in);
  CHECK(EvaluateFilter(*f.snap, by_year)->Count() == 400);  // 2 of 30 years
  Filter none;
  none.must.push_back(Match("tag", std::string("no-such-tag")));
  CHECK(EvaluateFilter(*f.snap, none)->Count() == 0);
}

TEST_CASE("filter errors name the field and say what is wrong", "[filter]") {
  Fixture f;
  auto error = [&](Condition c) {
    Filter filter;
    filter.must.push_back(std::move(c));
    return EvaluateFilter(*f.snap, filter).status();
  };
  absl::Status s = error(Match("colour", std::string("red")));
  CHECK(absl::IsInvalidArgument(s));
  CHECK(
      s.message() ==
      "filter field 'colour' is not in the schema of snapshot v1 (fields: tag, year, price, safe, "
      "side)");
  s = error(Match("tag", int64_t{3}));
  CHECK(s.message() == "filter field 'tag' is keyword; match value 3 does not fit it");
  s = error(Match("year", int64_t{2001}));
  CHECK(absl::IsInvalidArgument(s));
  CHECK(s.message().find("use range") != std::string::npos);
  Condition r;
  r.kind = Condition::Kind::kRange;
  r.field = "year";
  CHECK(error(r).message() == "filter range on 'year' has no bound (gte, gt, lte or lt)");
  r.gte = std::string("soon");
  CHECK(error(r).message().find("filter field 'year' is integer") != std::string::npos);
  Filter many;
  for (int i = 0; i < 65; ++i) many.must.push_back(Match("tag", std::string("p1")));
  CHECK(absl::IsInvalidArgument(EvaluateFilter(*f.snap, many).status()));

  // A snapshot without attributes.
  const std::string root = snapshot::TempSnapshotRoot("filter_none");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "x").ok());
  auto plain = snapshot::Snapshot::Open(root, 1, snapshot::VerifyMode::kSizes);
  REQUIRE(plain.ok());
  Filter filter;
  filter.must.push_back(Match("tag", std::string("a")));
  CHECK(absl::IsFailedPrecondition(EvaluateFilter(**plain, filter).status()));
  Condition ids;
  ids.kind = Condition::Kind::kHasId;
  ids.ids = {"x3"};
  Filter by_id;
  by_id.must.push_back(ids);
  CHECK(EvaluateFilter(**plain, by_id)->Count() == 1);  // has_id needs no schema
}

// The rows `c` allows are exactly those for which `want` holds.
void CheckSelects(const Fixture& f, const Condition& c, const std::function<bool(uint32_t)>& want) {
  Filter filter;
  filter.must.push_back(c);
  auto allowed = EvaluateFilter(*f.snap, filter);
  REQUIRE(allowed.ok());
  size_t wrong = 0, wanted = 0;
  for (uint32_t r = 0; r < 6000; ++r) {
    wrong += allowed->Allows(r) != want(r);
    wanted += want(r);
  }
  CHECK(wrong == 0);
  CHECK(allowed->Count() == wanted);
}

Condition Of(Condition::Kind kind, std::string field, std::vector<FilterValue> values = {}) {
  Condition c;
  c.kind = kind;
  c.field = std::move(field);
  c.values = std::move(values);
  return c;
}

TEST_CASE("each condition kind selects its rows: match, in, range (float, integer), has_id",
          "[filter]") {
  Fixture f;
  auto tag = [&](uint32_t r) { return std::get<std::string>(f.Value(r, 0)); };
  auto year = [&](uint32_t r) { return std::get<int64_t>(f.Value(r, 1)); };
  auto price = [&](uint32_t r) { return std::get_if<double>(&f.Value(r, 2)); };
  auto safe = [&](uint32_t r) { return std::get<bool>(f.Value(r, 3)); };
  using Kind = Condition::Kind;
  INFO("match");
  CheckSelects(f, Match("tag", std::string("p10")), [&](uint32_t r) { return tag(r) == "p10"; });
  CheckSelects(f, Match("safe", false), [&](uint32_t r) { return !safe(r); });
  INFO("in");
  CheckSelects(f, Of(Kind::kIn, "tag", {std::string("p1"), std::string("p02")}),
               [&](uint32_t r) { return tag(r) == "p1" || tag(r) == "p02"; });
  CheckSelects(f, Of(Kind::kIn, "safe", {true}), [&](uint32_t r) { return safe(r); });
  CheckSelects(f, Of(Kind::kIn, "year", {int64_t{2029}, int64_t{2000}, int64_t{1999}}),
               [&](uint32_t r) { return year(r) == 2000 || year(r) == 2029; });
  INFO("range on a float field: open and closed bounds, integer bounds, absent values");
  Condition p = Of(Kind::kRange, "price");
  p.gt = 10.0;
  p.lt = 20.0;
  CheckSelects(f, p, [&](uint32_t r) { return price(r) && *price(r) > 10.0 && *price(r) < 20.0; });
  p = Of(Kind::kRange, "price");
  p.gte = int64_t{10};
  p.lte = 20.0;
  CheckSelects(f, p,
               [&](uint32_t r) { return price(r) && *price(r) >= 10.0 && *price(r) <= 20.0; });
  INFO("a NaN bound: no value is in the range (the proto's double can carry NaN)");
  for (int side = 0; side < 4; ++side) {
    p = Of(Kind::kRange, "price");
    (side == 0 ? p.gte : side == 1 ? p.gt : side == 2 ? p.lte : p.lt) = std::nan("");
    CheckSelects(f, p, [](uint32_t) { return false; });
  }
  INFO("range on an integer field, at the ends of int64");
  Condition y = Of(Kind::kRange, "year");
  y.gt = int64_t{2027};
  CheckSelects(f, y, [&](uint32_t r) { return year(r) > 2027; });
  y = Of(Kind::kRange, "year");
  y.gte = int64_t{2003};
  y.lte = int64_t{2005};
  CheckSelects(f, y, [&](uint32_t r) { return year(r) >= 2003 && year(r) <= 2005; });
  y = Of(Kind::kRange, "year");
  y.lt = int64_t{2002};
  CheckSelects(f, y, [&](uint32_t r) { return year(r) < 2002; });
  y = Of(Kind::kRange, "year");
  y.gt = INT64_MAX;
  CheckSelects(f, y, [](uint32_t) { return false; });
  y = Of(Kind::kRange, "year");
  y.lt = INT64_MIN + 1;
  CheckSelects(f, y, [](uint32_t) { return false; });
  y = Of(Kind::kRange, "year");
  y.lte = INT64_MAX;
  CheckSelects(f, y, [](uint32_t) { return true; });
  INFO("has_id");
  Condition ids;
  ids.kind = Kind::kHasId;
  ids.ids = {"r7", "r7", "r5999", "r6000"};
  CheckSelects(f, ids, [](uint32_t r) { return r == 7 || r == 5999; });
}

TEST_CASE("each condition kind refuses what it cannot test, naming the field", "[filter]") {
  Fixture f;
  auto error = [&](const Condition& c) {
    Filter filter;
    filter.must.push_back(c);
    return std::string(EvaluateFilter(*f.snap, filter).status().message());
  };
  using Kind = Condition::Kind;
  const std::vector<FilterValue> too_many(kMaxFilterValues + 1, FilterValue(std::string("p1")));
  Condition range = Of(Kind::kRange, "tag");
  range.gte = int64_t{1};
  Condition unbounded = Of(Kind::kRange, "price");
  Condition bad_bound = Of(Kind::kRange, "price");
  bad_bound.lt = std::string("cheap");
  Condition no_ids;
  no_ids.kind = Kind::kHasId;
  Condition many_ids = no_ids;
  many_ids.ids.assign(kMaxFilterValues + 1, "r1");
  const std::pair<Condition, std::string> cases[] = {
      {Of(Kind::kMatch, "tag"), "filter match on 'tag' needs exactly one value"},
      {Of(Kind::kMatch, "tag", {std::string("a"), std::string("b")}),
       "filter match on 'tag' needs exactly one value"},
      {Of(Kind::kMatch, "year", {int64_t{2001}}),
       "filter match on 'year' (integer): match takes keyword or boolean fields, in takes "
       "keyword, boolean, integer or timestamp fields; use range"},
      {Of(Kind::kMatch, "safe", {std::string("yes")}),
       "filter field 'safe' is boolean; match value 'yes' does not fit it"},
      {Of(Kind::kIn, "tag"), "filter in on 'tag' needs 1 to 1024 values"},
      {Of(Kind::kIn, "tag", too_many), "filter in on 'tag' needs 1 to 1024 values"},
      {Of(Kind::kIn, "tag", {std::string("p1"), true}),
       "filter field 'tag' is keyword; in value true does not fit it"},
      {Of(Kind::kIn, "price", {1.5}),
       "filter in on 'price' (float): match takes keyword or boolean fields, in takes keyword, "
       "boolean, integer or timestamp fields; use range"},
      {Of(Kind::kIn, "year", {int64_t{2001}, 2002.0}),
       "filter field 'year' is integer; in value 2002 does not fit it"},
      {range, "filter range on 'tag' (keyword): range takes integer, float or timestamp fields"},
      {unbounded, "filter range on 'price' has no bound (gte, gt, lte or lt)"},
      {bad_bound, "filter field 'price' is float; range value 'cheap' does not fit it"},
      {no_ids, "filter has_id lists no ids"},
      {many_ids, "filter has_id lists 1025 ids; the limit is 1024"},
      {Of(Kind::kMatch, "", {std::string("a")}), "filter condition names no field"},
  };
  for (const auto& [condition, message] : cases) {
    INFO(message);
    CHECK(error(condition) == message);
  }
}

// Recall@10 of the filtered search against exact filtered ground truth.
// With `graph`, always walks the graph (no exact fallback).
double FilteredRecall(const Fixture& f, const Filter& filter, size_t* allowed_rows,
                      bool graph = false) {
  auto allowed = EvaluateFilter(*f.snap, filter);
  REQUIRE(allowed.ok());
  *allowed_rows = allowed->Count();
  SearchParams params;
  params.top_k = 10;
  params.allowed = std::make_shared<const index::RowFilter>(*allowed);
  size_t hits = 0, total = 0;
  for (uint32_t q = 0; q < 6000;
       q += 60) {  // 100 queries: indexed vectors, themselves allowed or not
    const float* v = f.snap->Vector(q);
    std::vector<float> query(v, v + kDim);
    auto got = SearchSnapshot(*f.snap, query, params);
    REQUIRE(got.ok());
    if (graph) {
      got->clear();
      for (const auto& n : f.snap->segments().front().segment->searcher().Search(
               query.data(), 10, 64, allowed.operator->())) {
        Hit h;
        h.id = std::string(f.snap->Id(n.row)->id);
        got->push_back(h);
      }
    }
    auto truth =
        f.snap->segments().front().segment->searcher().SearchExact(query.data(), 10, *allowed);
    std::set<std::string> want;
    for (const auto& n : truth) want.insert(std::string(f.snap->Id(n.row)->id));
    for (const auto& h : *got) {
      REQUIRE(allowed->Allows(*f.snap->Find(h.id)));  // only allowed rows, ever
      hits += want.count(h.id);
    }
    total += want.size();
  }
  return total == 0 ? 1.0 : static_cast<double>(hits) / total;
}

TEST_CASE("filtered search keeps recall at every selectivity, correlated filters too", "[filter]") {
  Fixture f;
  for (const char* tag : {"p50", "p10", "p1", "p02"}) {
    Filter filter;
    filter.must.push_back(Match("tag", std::string(tag)));
    size_t rows = 0;
    const double recall = FilteredRecall(f, filter, &rows);
    INFO(tag << ": " << rows << " rows allowed, recall@10 " << recall);
    CHECK(recall >= 0.95);
  }
  // The graph walk itself, below the exact-scan threshold too.
  for (const char* tag : {"p50", "p10"}) {
    Filter filter;
    filter.must.push_back(Match("tag", std::string(tag)));
    size_t rows = 0;
    const double recall = FilteredRecall(f, filter, &rows, /*graph=*/true);
    INFO(tag << " (graph walk): " << rows << " rows allowed, recall@10 " << recall);
    CHECK(recall >= 0.95);
  }
  for (const char* side : {"east", "west"}) {
    Filter filter;
    filter.must.push_back(Match("side", std::string(side)));
    size_t rows = 0;
    const double recall = FilteredRecall(f, filter, &rows);
    INFO(side << ": " << rows << " rows allowed, recall@10 " << recall);
    CHECK(rows > 0);
    CHECK(recall >= 0.95);
  }
}

}  // namespace
}  // namespace imagesearch::serving
