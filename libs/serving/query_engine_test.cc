#include "libs/serving/query_engine.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::serving {
namespace {

std::shared_ptr<const snapshot::Snapshot> Open(index::Metric metric) {
  std::string root = snapshot::TempSnapshotRoot("engine");
  auto v = snapshot::PublishSynthetic(root, 300, 8, metric, "item");
  REQUIRE(v.ok());
  auto s = snapshot::Snapshot::Open(root, *v, snapshot::VerifyMode::kChecksums);
  REQUIRE(s.ok());
  return *s;
}

TEST_CASE("Query vectors are validated with precise messages") {
  auto snap = Open(index::Metric::kCosine);
  std::vector<float> three = {1, 2, 3};
  auto wrong = PrepareQueryVector(*snap, three.data(), 3);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.status().message() == "query vector has 3 values but snapshot v1 has dimension 8");
  std::vector<float> v(8, 1.0f);
  v[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK(PrepareQueryVector(*snap, v.data(), 8).status().message() == "query vector[5] is NaN");
  v[5] = std::numeric_limits<float>::infinity();
  CHECK(PrepareQueryVector(*snap, v.data(), 8).status().message() == "query vector[5] is infinite");
  std::vector<float> zero(8, 0.0f);
  CHECK(absl::IsInvalidArgument(PrepareQueryVector(*snap, zero.data(), 8).status()));
  CHECK(PrepareQueryVector(*snap, nullptr, 0).status().message() == "query vector is empty");
  std::vector<float> ok(8, 2.0f);
  auto prepared = PrepareQueryVector(*snap, ok.data(), 8);
  REQUIRE(prepared.ok());
  CHECK(std::abs((*prepared)[0] - 1.0f / std::sqrt(8.0f)) < 1e-6);
}

TEST_CASE("top_k and ef limits are enforced") {
  auto snap = Open(index::Metric::kL2);
  auto q = VectorOfId(*snap, "item3");
  REQUIRE(q.ok());
  SearchParams p;
  p.top_k = kMaxTopK + 1;
  CHECK(SearchSnapshot(*snap, q->first, p).status().message() ==
        "top_k 1001 is out of range: the maximum is 1000");
  p.top_k = 5;
  p.ef = kMaxEf + 1;
  CHECK(SearchSnapshot(*snap, q->first, p).status().message() ==
        "ef 10001 is out of range: the maximum is 10000");
  p.ef = 0;
  auto hits = SearchSnapshot(*snap, q->first, p);
  REQUIRE(hits.ok());
  CHECK(hits->size() == 5);
  CHECK((*hits)[0].id == "item3");
  CHECK((*hits)[0].distance == 0.0f);
  CHECK((*hits)[0].score == 0.0f);
  p.top_k = 0;
  CHECK(SearchSnapshot(*snap, q->first, p)->size() == kDefaultTopK);
}

TEST_CASE("Id queries find the item, exclude it on request, and unknown ids are NOT_FOUND") {
  auto snap = Open(index::Metric::kCosine);
  auto q = VectorOfId(*snap, "item42");
  REQUIRE(q.ok());
  CHECK(q->second == 42);
  SearchParams p;
  p.top_k = 10;
  p.exclude_row = q->second;
  auto hits = SearchSnapshot(*snap, q->first, p);
  REQUIRE(hits.ok());
  CHECK(hits->size() == 10);
  for (const auto& h : *hits) CHECK(h.id != "item42");
  for (size_t i = 1; i < hits->size(); ++i) CHECK((*hits)[i - 1].distance <= (*hits)[i].distance);
  auto missing = VectorOfId(*snap, "nope");
  REQUIRE(absl::IsNotFound(missing.status()));
  CHECK(missing.status().message() == "id 'nope' is not in snapshot v1");
}

}  // namespace
}  // namespace imagesearch::serving
