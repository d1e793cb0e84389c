#include "libs/snapshot/merge_policy.h"

#include <algorithm>
#include <set>

namespace imagesearch::snapshot {

std::vector<std::string> ChooseMerge(const std::vector<SegmentStats>& segments,
                                     const MergePolicy& policy) {
  auto live = [&](size_t i) { return segments[i].rows - segments[i].deleted; };
  auto over_deleted = [&](size_t i) {
    return static_cast<double>(segments[i].deleted) * 100.0 >
           policy.deletes_pct_allowed * static_cast<double>(segments[i].rows);
  };
  // Rewrites that drop deleted rows, whatever the segment count.
  std::set<size_t> chosen;
  uint64_t merged_rows = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].rows > 0 && over_deleted(i)) {
      chosen.insert(i);
      merged_rows += live(i);
    }
  }
  // Fold: once the other segments hold fold_pct of the biggest's live rows,
  // all of them join it (MergeSegments then inserts their rows into its
  // graph rather than building one over everything).
  if (segments.size() >= 2 && policy.fold_pct > 0) {
    size_t big = 0;
    uint64_t all = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      all += live(i);
      if (live(i) > live(big)) big = i;
    }
    const uint64_t others = all - live(big);
    // Only while the biggest outweighs the others (and is not due a rewrite
    // for its deletes): then the merge extends its graph. Otherwise the
    // fold would be a build over everything, which the tiers avoid.
    if (others > 0 && others <= segments[big].rows && !over_deleted(big) &&
        all <= policy.max_merged_rows &&
        static_cast<double>(others) * 100.0 >= policy.fold_pct * static_cast<double>(live(big))) {
      std::vector<std::string> names;
      for (const SegmentStats& s : segments) names.push_back(s.name);
      return names;
    }
  }
  // Too many segments: join the smallest (floored) ones, within the limits.
  if (segments.size() > policy.segments_per_tier) {
    std::vector<size_t> order(segments.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto floored = [&](size_t i) { return std::max(live(i), policy.floor_rows); };
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return floored(a) < floored(b); });
    std::set<size_t> joined;
    uint64_t joined_rows = merged_rows;
    for (size_t i : order) {
      if (joined.size() == policy.max_merge_at_once) break;
      if (chosen.count(i)) continue;
      if (joined_rows + live(i) > policy.max_merged_rows) break;
      joined.insert(i);
      joined_rows += live(i);
    }
    if (joined.size() + chosen.size() >= 2) {  // A merge joins at least two.
      chosen.insert(joined.begin(), joined.end());
    }
  }
  std::vector<std::string> names;
  for (size_t i : chosen) names.push_back(segments[i].name);
  return names;
}

}  // namespace imagesearch::snapshot
