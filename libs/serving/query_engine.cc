#include "libs/serving/query_engine.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "libs/common/client_text.h"
#include "libs/index/metric.h"
#include "libs/snapshot/ids_table.h"
#include "libs/snapshot/shard.h"

namespace imagesearch::serving {

absl::StatusOr<std::vector<float>> PrepareQueryVector(const snapshot::Snapshot& snap,
                                                      const float* values, size_t size) {
  const size_t dim = static_cast<size_t>(snap.dim());
  if (size == 0) return absl::InvalidArgumentError("query vector is empty");
  if (size != dim) {
    return absl::InvalidArgumentError(absl::StrCat("query vector has ", size,
                                                   " values but snapshot v", snap.version(),
                                                   " has dimension ", dim));
  }
  // One pass over the values for the common case: their sum of squares is
  // finite exactly when every value is; only then is each one looked at.
  const double sum_of_squares = index::SumOfSquares(values, size);
  if (!std::isfinite(sum_of_squares)) {
    for (size_t i = 0; i < size; ++i) {
      if (std::isnan(values[i])) {
        return absl::InvalidArgumentError(absl::StrCat("query vector[", i, "] is NaN"));
      }
      if (std::isinf(values[i])) {
        return absl::InvalidArgumentError(absl::StrCat("query vector[", i, "] is infinite"));
      }
    }
  }
  std::vector<float> q(values, values + size);
  if (snap.manifest().metric == index::Metric::kCosine &&
      !index::NormalizeInPlace(q.data(), dim, sum_of_squares)) {
    return absl::InvalidArgumentError(
        "query vector has zero norm (or one below about 2.9e-39, which a float cannot invert); "
        "cosine search needs a non-zero vector");
  }
  return q;
}

absl::StatusOr<uint32_t> RowOfId(const snapshot::Snapshot& snap, absl::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError("query id is empty");
  if (id.size() > snapshot::kMaxIdBytes) {
    // No snapshot can hold it; refused without quoting it whole.
    return absl::InvalidArgumentError(absl::StrCat("query id ", QuoteClientText(id),
                                                   " is over the limit of ", snapshot::kMaxIdBytes,
                                                   " bytes"));
  }
  auto row = snap.Find(id);
  if (!row.has_value()) {
    // A shard's replica asked for another shard's id: say where it lives.
    const snapshot::ShardInfo& shard = snap.manifest().shard;
    std::string elsewhere;
    if (shard.sharded()) {
      const uint32_t owner = snapshot::ShardOf(id, shard.count);
      if (owner != shard.index) {
        elsewhere = absl::StrCat(": it belongs to shard ", owner, " of ", shard.count,
                                 ", and this replica serves shard ", shard.index);
      }
    }
    return absl::NotFoundError(absl::StrCat("id ", QuoteClientText(id), " is not in snapshot v",
                                            snap.version(), elsewhere));
  }
  return *row;
}

absl::StatusOr<std::pair<std::vector<float>, uint32_t>> VectorOfId(const snapshot::Snapshot& snap,
                                                                   absl::string_view id) {
  auto row = RowOfId(snap, id);
  if (!row.ok()) return row.status();
  const float* v = snap.Vector(*row);
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

namespace {

// Searches one segment for `want` rows (its own row numbers), the way the
// query asks: the whole graph, the graph walk restricted to `allowed` (the
// filter, deleted rows excluded), or an exact scan of the allowed rows when
// that is cheaper or the query is `exact`. `allowed` is over the version's
// rows (the segment's start at ref.base); a segment without deletes under no
// filter ignores it.
std::vector<index::Neighbor> SearchSegment(const snapshot::SegmentRef& ref, const float* query,
                                           size_t want, size_t ef, const index::RowFilter* allowed,
                                           bool filtered, bool one_of_many, float bound,
                                           bool exact) {
  const index::MmapHnswSearcher& searcher = ref.segment->searcher();
  const size_t rows = ref.segment->rows();
  if (!filtered && ref.deleted == nullptr) allowed = nullptr;
  if (exact) {
    return allowed == nullptr
               ? searcher.SearchExact(query, want, index::RowFilter(rows, /*all=*/true))
               : searcher.SearchExact(query, want, *allowed, ref.base);
  }
  if (allowed == nullptr) {
    // A segment so small that reading every row costs less than the walk
    // (the ingest service's one-second segments): scanned, exactly. The
    // same rule as for filters, with every row allowed.
    if (one_of_many && rows <= kSmallSegmentScanFactor * std::max(ef, want)) {
      return searcher.SearchExact(query, want, index::RowFilter(rows, /*all=*/true));
    }
    return searcher.Search(query, want, std::max(ef, want), nullptr, 0, bound);
  }
  // Deletes alone: the live rows are known without counting them.
  const size_t allowed_here =
      filtered ? allowed->CountIn(ref.base, ref.base + rows) : rows - ref.deleted_count;
  if (allowed_here == 0) return {};
  // Deleted rows alone are excluded with the query's own ef, as hnswlib
  // excludes its deleted elements; a filter walks with the wider ef.
  const size_t walk_ef = filtered ? FilteredWalkEf(std::max(ef, want)) : std::max(ef, want);
  if (ExactScanIsCheaper(allowed_here, rows, walk_ef)) {
    return searcher.SearchExact(query, want, *allowed, ref.base);
  }
  return searcher.Search(query, want, walk_ef, allowed, ref.base, bound);
}

// The `want` nearest rows of the version (its row numbers), nearest first:
// every segment searched, their top rows merged. The biggest segment goes
// first; once `want` rows are held, the farthest of them bounds the walks of
// the segments after it (MmapHnswSearcher::Search's `bound`), so a small
// segment with nothing that near costs a few dozen distances, not a walk.
std::vector<index::Neighbor> SearchSegments(const snapshot::Snapshot& snap, const float* query,
                                            size_t want, size_t ef, const index::RowFilter* allowed,
                                            bool filtered, bool exact) {
  const auto& segments = snap.segments();
  const bool many = segments.size() > 1;
  if (!many) {
    // One graph's answer as it gives it (hnswlib's order: the knn-equality
    // tests hold it), its rows already the version's.
    return SearchSegment(segments.front(), query, want, ef, allowed, filtered, false,
                         std::numeric_limits<float>::infinity(), exact);
  }
  std::vector<size_t> order(segments.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return segments[a].segment->rows() > segments[b].segment->rows();
  });
  index::NearestK best(want);
  float bound = std::numeric_limits<float>::infinity();
  // The big segment and the tails linked to it, walked as one graph first
  // (unless the query is exact, or its filter is cheaper to scan): then the
  // rest, bounded by what that walk found.
  if (const snapshot::JointSegments* joint = exact ? nullptr : snap.joint(); joint != nullptr) {
    std::vector<size_t> members = joint->tails;
    members.push_back(joint->big);
    std::vector<size_t> tail_bases;
    for (size_t t : joint->tails) tail_bases.push_back(segments[t].base);
    size_t rows = 0, allowed_here = 0;
    bool any_excluded = filtered;
    for (size_t m : members) {
      const snapshot::SegmentRef& ref = segments[m];
      rows += ref.segment->rows();
      any_excluded = any_excluded || ref.deleted != nullptr;
      if (filtered) allowed_here += allowed->CountIn(ref.base, ref.base + ref.segment->rows());
    }
    const size_t walk_ef = filtered ? FilteredWalkEf(std::max(ef, want)) : std::max(ef, want);
    if (!filtered || !ExactScanIsCheaper(allowed_here, rows, walk_ef)) {
      for (const index::Neighbor& n :
           joint->graph->Search(query, want, walk_ef, any_excluded ? allowed : nullptr,
                                segments[joint->big].base, tail_bases)) {
        best.Offer(n);
      }
      if (best.full()) bound = best.farthest().distance;
      order.erase(std::remove_if(
                      order.begin(), order.end(),
                      [&](size_t i) { return std::count(members.begin(), members.end(), i) > 0; }),
                  order.end());
    }
  }
  for (size_t i : order) {
    const snapshot::SegmentRef& ref = segments[i];
    for (index::Neighbor n :
         SearchSegment(ref, query, want, ef, allowed, filtered, true, bound, exact)) {
      n.row += static_cast<uint32_t>(ref.base);
      best.Offer(n);
    }
    if (best.full()) bound = best.farthest().distance;
  }
  return best.TakeSorted();
}

}  // namespace

absl::StatusOr<std::vector<Hit>> SearchSnapshot(const snapshot::Snapshot& snap,
                                                const std::vector<float>& query,
                                                const SearchParams& params, uint32_t* collapsed) {
  if (absl::Status s = ValidateSearchParams(params); !s.ok()) return s;
  const uint32_t k = params.top_k == 0 ? kDefaultTopK : params.top_k;
  const size_t ef = params.ef == 0 ? static_cast<size_t>(snap.manifest().default_ef) : params.ef;
  const size_t rows = snap.live_count();
  const size_t dim = static_cast<size_t>(snap.dim());
  const bool dedup = params.dedup > 0;
  // The rows a hit may be: the filter's (which callers build over live rows
  // only), or the live rows (null: all).
  const bool filtered = params.allowed != nullptr;
  const index::RowFilter* allowed = filtered ? params.allowed.get() : snap.live();
  // Search, then choose the rows to answer with: exclude_row left out and,
  // with dedup, every row whose cosine similarity to a chosen (better) row
  // reaches the threshold. Dedup asks for 4x as many and widens the search
  // until k rows are chosen or the index has no more.
  size_t want = k + (params.exclude_row.has_value() ? 1 : 0);
  if (dedup) want = std::min(rows, 4 * want);
  const size_t max_want = std::min(rows, 4 * static_cast<size_t>(kMaxTopK));
  std::vector<index::Neighbor> chosen;
  chosen.reserve(k);
  uint32_t dropped = 0;
  for (;;) {
    std::vector<index::Neighbor> neighbors =
        SearchSegments(snap, query.data(), want, ef, allowed, filtered, params.exact);
    chosen.clear();
    dropped = 0;
    for (const auto& n : neighbors) {
      if (params.exclude_row.has_value() && n.row == *params.exclude_row) continue;
      if (chosen.size() == k) break;
      if (dedup) {
        const float* v = snap.Vector(n.row);
        auto similar = [&](const index::Neighbor& c) {
          return index::CosineSimilarity(v, snap.Vector(c.row), dim) >= params.dedup;
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
  for (const auto& n : chosen) snap.PrefetchEntry(n.row);
  for (const auto& n : chosen) snap.PrefetchText(n.row);
  std::vector<Hit> hits;
  hits.reserve(chosen.size());
  for (const auto& n : chosen) {
    auto view = snap.Id(n.row);
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
