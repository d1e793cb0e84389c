#include "libs/snapshot/merge_policy.h"

#include <algorithm>
#include <set>

namespace imagesearch::snapshot {

std::vector<std::string> ChooseMerge(const std::vector<SegmentStats>& segments,
                                     const MergePolicy& policy, const std::set<std::string>& busy) {
  auto is_free = [&](size_t i) { return busy.count(segments[i].name) == 0; };
  auto live = [&](size_t i) { return segments[i].rows - segments[i].deleted; };
  auto over_deleted = [&](size_t i) {
    return static_cast<double>(segments[i].deleted) * 100.0 >
           policy.deletes_pct_allowed * static_cast<double>(segments[i].rows);
  };
  // Rewrites that drop deleted rows, whatever the segment count.
  std::set<size_t> chosen;
  uint64_t merged_rows = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].rows > 0 && is_free(i) && over_deleted(i)) {
      chosen.insert(i);
      merged_rows += live(i);
    }
  }
  // A big segment dominates: the others hold no more rows than it (after a
  // bulk load and the ingest's small segments, say). Then the small ones are
  // joined into it by the fold and, between folds, into a ladder of tails
  // (below);
  // otherwise the tiers (further below) join segments of similar size.
  size_t big = 0;
  uint64_t all = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    all += live(i);
    if (live(i) > live(big)) big = i;
  }
  const bool dominant =
      segments.size() >= 2 && all - live(big) <= segments[big].rows && policy.fold_pct > 0;
  // Fold: once the other segments (those no other merge holds) have
  // fold_pct of the biggest's live rows, all of them join it
  // (MergeSegments then inserts their rows into its graph rather than
  // building one over everything). Not while the biggest is due a rewrite for
  // its deletes, nor while another merge holds it.
  if (dominant && is_free(big) && !over_deleted(big)) {
    uint64_t others = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      if (i != big && is_free(i)) others += live(i);
    }
    if (others > 0 && live(big) + others <= policy.max_merged_rows &&
        static_cast<double>(others) * 100.0 >= policy.fold_pct * static_cast<double>(live(big))) {
      std::vector<std::string> names;
      for (size_t i = 0; i < segments.size(); ++i) {
        if (i == big || is_free(i)) names.push_back(segments[i].name);
      }
      return names;
    }
  }
  // The tails: between folds, the small segments (not the biggest, none held
  // by another merge) form a ladder. A tail is joined with all the smaller
  // ones once those hold 1/tail_ratio of its rows (the biggest such tail;
  // MergeSegments extends it when it outweighs them), so each tail is about
  // tail_ratio times the sum of the smaller ones, a join copies what it adds
  // times about tail_ratio, and a row is written a few times per rung: the
  // rungs grow with the log of the rows added, the writes with it (one tail
  // joined at every publish would be copied whole each time: a publish would
  // cost what the tail holds). More than max_tail_segments of them: the
  // smallest two are joined anyway. Each tail costs a query little, being
  // linked to the big segment and walked with it as one graph.
  if (dominant && policy.max_tail_segments > 0) {
    std::vector<size_t> small;
    for (size_t i = 0; i < segments.size(); ++i) {
      if (i != big && is_free(i) && !chosen.count(i)) small.push_back(i);
    }
    std::stable_sort(small.begin(), small.end(),
                     [&](size_t a, size_t b) { return live(a) < live(b); });
    size_t take = 0;  // The smallest `take` are joined.
    uint64_t below = 0;
    for (size_t j = 0; j < small.size(); ++j) {
      if (j > 0 &&
          static_cast<double>(live(small[j])) <= policy.tail_ratio * static_cast<double>(below)) {
        take = j + 1;
      }
      below += live(small[j]);
    }
    if (take == 0 && small.size() > policy.max_tail_segments) take = 2;
    uint64_t joined_rows = merged_rows;
    for (size_t j = 0; j < take; ++j) {
      if (chosen.size() == policy.max_merge_at_once) break;
      if (joined_rows + live(small[j]) > policy.max_merged_rows) break;
      chosen.insert(small[j]);
      joined_rows += live(small[j]);
    }
  }
  // Too many segments: join the smallest (floored) ones, within the limits.
  if (!dominant && segments.size() > policy.segments_per_tier) {
    std::vector<size_t> order(segments.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto floored = [&](size_t i) { return std::max(live(i), policy.floor_rows); };
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return floored(a) < floored(b); });
    std::set<size_t> joined;
    uint64_t joined_rows = merged_rows;
    for (size_t i : order) {
      if (joined.size() == policy.max_merge_at_once) break;
      if (chosen.count(i) || !is_free(i)) continue;
      if (joined_rows + live(i) > policy.max_merged_rows) break;
      joined.insert(i);
      joined_rows += live(i);
    }
    if (joined.size() + chosen.size() >= 2) {  // A merge joins at least two.
      chosen.insert(joined.begin(), joined.end());
    }
  }
  if (chosen.size() == 1 && segments[*chosen.begin()].deleted == 0) return {};
  std::vector<std::string> names;
  for (size_t i : chosen) names.push_back(segments[i].name);
  return names;
}

}  // namespace imagesearch::snapshot
