// Which segments of a version to merge: a tiered policy after Lucene's
// TieredMergePolicy, simplified to what a vector index needs.
//
// Segments come from bulk loads (one big segment) and from incremental
// updates (a small one each: `--base` builds, and the ingest service, which
// publishes about every second and runs this policy after its publishes). Searching a
// version costs one graph walk per segment, so their number must stay small,
// and a merge that builds a new graph costs a build over the merged rows, so
// such merges join segments of similar size (small with small), and small
// segments reach a big one only by extending its graph (the fold):
//
//   - Sizes are live rows, floored at floor_rows, so that all the tiny
//     segments of recent publishes look alike and merge together.
//   - While the version has more than segments_per_tier segments, merge the
//     smallest ones, up to max_merge_at_once of them and up to
//     max_merged_rows live rows in all (counting the rows of segments chosen
//     for their deletes), and only if at least two segments merge. Repeated,
//     this builds tiers: ten small segments become one, ten of those become
//     one, and so on, so a row is rewritten about log_10(N) times in its life.
//   - Fold: once the segments other than the biggest hold fold_pct percent
//     of its live rows (and no more rows than it holds, and it is not due a
//     rewrite for its deletes), they all merge into it. Such a merge extends the
//     biggest segment's graph (MergeSegments inserts the others' rows into
//     it), so it costs inserting the small rows and one sequential copy of
//     the big segment, not a build over all of them; a version then goes back
//     to one graph, and folds come rarer as it grows (every fold_pct of its
//     size), so each row's bytes are copied about 100/fold_pct times in all.
//     Searching costs about one graph walk per segment, so this is what
//     keeps query cost near one graph's between bulk loads.
//   - A segment whose deleted rows pass deletes_pct_allowed percent of its
//     rows is merged too (alone if need be), which drops its deleted rows:
//     they cost search time (walked, never returned) and disk.
//
// Pure function of its arguments; thread-compatible.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace imagesearch::snapshot {

struct MergePolicy {
  size_t segments_per_tier = 10;         // More segments than this: merge.
  size_t max_merge_at_once = 10;         // Segments joined by one merge.
  uint64_t floor_rows = 10'000;          // Smaller segments count as this size.
  double deletes_pct_allowed = 25;       // Deleted share (%) that forces a rewrite.
  uint64_t max_merged_rows = 5'000'000;  // A merge's result holds at most this.
  double fold_pct = 10;  // Others' live rows (% of the biggest's) that fold them in; 0: never.
};

struct SegmentStats {
  std::string name;
  uint64_t rows = 0;     // Rows the segment holds.
  uint64_t deleted = 0;  // Of those, deleted in the version.
};

// The names of the segments to merge into one (in the order given), or none.
std::vector<std::string> ChooseMerge(const std::vector<SegmentStats>& segments,
                                     const MergePolicy& policy);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_H_
