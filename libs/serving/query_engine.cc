#include "libs/serving/query_engine.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "libs/index/metric.h"
#include "libs/snapshot/ids_table.h"

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

std::string QuoteId(absl::string_view id) {
  // Error text travels in gRPC trailers and HTTP bodies: quote a bounded prefix.
  constexpr size_t kQuote = 64;
  if (id.size() <= kQuote) return absl::StrCat("'", id, "'");
  return absl::StrCat("'", id.substr(0, kQuote), "...' (", id.size(), " bytes)");
}

absl::StatusOr<uint32_t> RowOfId(const snapshot::Snapshot& snap, absl::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError("query id is empty");
  if (id.size() > snapshot::kMaxIdBytes) {
    // No snapshot can hold it; refused without quoting it whole.
    return absl::InvalidArgumentError(absl::StrCat("query id ", QuoteId(id),
                                                   " is over the limit of ",
                                                   snapshot::kMaxIdBytes, " bytes"));
  }
  auto row = snap.ids().Find(id);
  if (!row.has_value()) {
    return absl::NotFoundError(
        absl::StrCat("id ", QuoteId(id), " is not in snapshot v", snap.version()));
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
  // Search, then choose the rows to answer with: exclude_row left out and,
  // with dedup, every row whose cosine similarity to a chosen (better) row
  // reaches the threshold. Dedup asks for 4x as many and widens the search
  // until k rows are chosen or the index has no more.
  size_t want = k + (params.exclude_row.has_value() ? 1 : 0);
  if (dedup) want = std::min(rows, 4 * want);
  const size_t max_want = std::min(rows, 4 * static_cast<size_t>(kMaxTopK));
  std::vector<index::Neighbor> chosen;
  uint32_t dropped = 0;
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
    chosen.clear();
    dropped = 0;
    for (const auto& n : neighbors) {
      if (params.exclude_row.has_value() && n.row == *params.exclude_row) continue;
      if (chosen.size() == k) break;
      if (dedup) {
        const float* v = snap.searcher().Vector(n.row);
        auto similar = [&](const index::Neighbor& c) {
          return index::CosineSimilarity(v, snap.searcher().Vector(c.row), dim) >= params.dedup;
        };
        if (std::any_of(chosen.begin(), chosen.end(), similar)) {
          ++dropped;
          continue;
        }
      }
      chosen.push_back(n);
    }
    if (!dedup || chosen.size() == k || neighbors.size() < want || want >= max_want) break;
    want = std::min(max_want, 4 * want);
  }
  const bool similarity_is_one_minus = snap.manifest().metric != index::Metric::kL2;
  for (const auto& n : chosen) snap.ids().PrefetchEntry(n.row);
  for (const auto& n : chosen) snap.ids().PrefetchText(n.row);
  std::vector<Hit> hits;
  hits.reserve(chosen.size());
  for (const auto& n : chosen) {
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
  if (collapsed != nullptr) *collapsed = dropped;
  return hits;
}

}  // namespace imagesearch::serving
