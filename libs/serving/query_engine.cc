#include "libs/serving/query_engine.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "libs/index/metric.h"

namespace imagesearch::serving {

absl::StatusOr<std::vector<float>> PrepareQueryVector(const snapshot::Snapshot& snap,
                                                      const float* values, size_t size) {
  const size_t dim = static_cast<size_t>(snap.manifest().dim);
  if (size == 0) return absl::InvalidArgumentError("query vector is empty");
  if (size != dim) {
    return absl::InvalidArgumentError(absl::StrCat("query vector has ", size,
                                                   " values but snapshot v", snap.version(),
                                                   " has dimension ", dim));
  }
  for (size_t i = 0; i < size; ++i) {
    if (std::isnan(values[i])) {
      return absl::InvalidArgumentError(absl::StrCat("query vector[", i, "] is NaN"));
    }
    if (std::isinf(values[i])) {
      return absl::InvalidArgumentError(absl::StrCat("query vector[", i, "] is infinite"));
    }
  }
  std::vector<float> q(values, values + size);
  if (snap.manifest().metric == index::Metric::kCosine && !index::NormalizeInPlace(q.data(), dim)) {
    return absl::InvalidArgumentError(
        "query vector has zero (or overflowing) norm; cosine search needs a non-zero vector");
  }
  return q;
}

absl::StatusOr<uint32_t> RowOfId(const snapshot::Snapshot& snap, absl::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError("query id is empty");
  auto row = snap.ids().Find(id);
  if (!row.has_value()) {
    // Quote a bounded prefix: error text travels in gRPC trailers and HTTP bodies.
    constexpr size_t kQuote = 64;
    return absl::NotFoundError(absl::StrCat("id '", id.substr(0, kQuote),
                                            id.size() > kQuote ? "...' (" : "'",
                                            id.size() > kQuote ? absl::StrCat(id.size(), " bytes)") : "",
                                            " is not in snapshot v", snap.version()));
  }
  return *row;
}

absl::StatusOr<std::pair<std::vector<float>, uint32_t>> VectorOfId(const snapshot::Snapshot& snap,
                                                                    absl::string_view id) {
  auto row = RowOfId(snap, id);
  if (!row.ok()) return row.status();
  const float* v = snap.searcher().Vector(*row);
  return std::make_pair(std::vector<float>(v, v + snap.manifest().dim), *row);
}

absl::Status ValidateSearchParams(const SearchParams& params) {
  if (params.top_k > kMaxTopK) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k ", params.top_k, " is out of range: the maximum is ", kMaxTopK));
  }
  if (params.ef > kMaxEf) {
    return absl::InvalidArgumentError(
        absl::StrCat("ef ", params.ef, " is out of range: the maximum is ", kMaxEf));
  }
  if (!(params.dedup >= 0 && params.dedup <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dedup ", params.dedup, " is out of range: 0 (off) to 1 (a cosine similarity)"));
  }
  return absl::OkStatus();
}

size_t FilteredWalkEf(size_t ef) { return std::min<size_t>(kMaxEf, ef * kFilteredEfFactor); }

bool ExactScanIsCheaper(size_t allowed, size_t rows, size_t walk_ef) {
  const double a = static_cast<double>(allowed);
  return a * a <= kGraphCostPerEf * static_cast<double>(walk_ef) * static_cast<double>(rows);
}

absl::StatusOr<std::vector<Hit>> SearchSnapshot(const snapshot::Snapshot& snap,
                                                const std::vector<float>& query,
                                                const SearchParams& params, uint32_t* collapsed) {
  if (absl::Status s = ValidateSearchParams(params); !s.ok()) return s;
  const uint32_t k = params.top_k == 0 ? kDefaultTopK : params.top_k;
  const size_t ef = params.ef == 0 ? static_cast<size_t>(snap.manifest().default_ef) : params.ef;
  const size_t rows = snap.manifest().count;
  const size_t dim = static_cast<size_t>(snap.manifest().dim);
  const bool dedup = params.dedup > 0;
  // With dedup, ask for more and widen until k distinct items are found or
  // the index has no more.
  size_t want = k + (params.exclude_row.has_value() ? 1 : 0);
  if (dedup) want = std::min(rows, 4 * want);
  std::vector<uint32_t> kept_rows;
  uint32_t dropped = 0;
  std::vector<Hit> hits;
  for (;;) {
    std::vector<index::Neighbor> neighbors;
    if (params.allowed == nullptr) {
      neighbors = snap.searcher().Search(query.data(), want, std::max(ef, want));
    } else {
      const size_t walk_ef = FilteredWalkEf(std::max(ef, want));
      neighbors = ExactScanIsCheaper(params.allowed->Count(), rows, walk_ef)
                      ? snap.searcher().SearchExact(query.data(), want, *params.allowed)
                      : snap.searcher().Search(query.data(), want, walk_ef, params.allowed.get());
    }
    hits.clear();
    kept_rows.clear();
    dropped = 0;
    const bool similarity_is_one_minus = snap.manifest().metric != index::Metric::kL2;
    for (const auto& n : neighbors) {
      if (params.exclude_row.has_value() && n.row == *params.exclude_row) continue;
      if (hits.size() == k) break;
      if (dedup) {
        const float* v = snap.searcher().Vector(n.row);
        bool duplicate = false;
        for (uint32_t r : kept_rows) {
          if (index::CosineSimilarity(v, snap.searcher().Vector(r), dim) >= params.dedup) {
            duplicate = true;
            break;
          }
        }
        if (duplicate) {
          ++dropped;
          continue;
        }
        kept_rows.push_back(n.row);
      }
      auto view = snap.ids().Get(n.row);
      if (!view.ok()) {
        return absl::DataLossError(absl::StrCat("snapshot v", snap.version(),
                                                " is inconsistent: ", view.status().message()));
      }
      Hit h;
      h.id = std::string(view->id);
      h.uri = std::string(view->uri);
      h.attributes_json = std::string(view->attributes_json);
      h.distance = n.distance;
      h.score = similarity_is_one_minus ? 1.0f - n.distance : -n.distance;
      hits.push_back(std::move(h));
    }
    // Done unless dedup dropped so many that the search could go further.
    if (!dedup || hits.size() == k || neighbors.size() < want || want >= rows ||
        want >= 4 * static_cast<size_t>(kMaxTopK)) {
      break;
    }
    want = std::min({rows, 4 * want, 4 * static_cast<size_t>(kMaxTopK)});
  }
  if (collapsed != nullptr) *collapsed = dropped;
  return hits;
}

}  // namespace imagesearch::serving
