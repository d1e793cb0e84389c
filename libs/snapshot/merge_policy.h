// Which segments of a version to merge: a tiered policy after Lucene's
// TieredMergePolicy, simplified to what a vector index needs.
//
// Segments come from bulk loads (one big segment) and from incremental
// updates (a small one each: `--base` builds, and the ingest service, which
// publishes about every second and runs this policy after its publishes).
// Searching a version costs about one graph walk per segment, whatever the
// segment's size (an HNSW walk grows with the log of the rows, and its
// descent and first steps are paid by the smallest graph too), so the count
// must stay very small (tools/bench/results/LOG.md, "Search over segments":
// at 1M x 512, ten segments keep 0.3x of one graph's QPS). A merge that builds a new graph costs a
// build over the merged rows, so small segments reach a big one only by
// extending its graph (the fold):
//
//   - Sizes are live rows. A segment dominates when the others hold no more
//     rows than it (a bulk load with the updates since, say).
//   - Fold: once the segments other than the dominant one hold fold_pct
//     percent of its live rows (and it is not due a rewrite for its
//     deletes), they all merge into it. Such a merge extends the big
//     segment's graph (MergeSegments inserts the others' rows into it), so it
//     costs inserting the small rows and one sequential copy of the big
//     segment, not a build over all of them; a version then goes back to one
//     graph, and folds come rarer as it grows (every fold_pct of its size),
//     so each row's bytes are copied about 100/fold_pct times by folds.
//   - The tails: between folds, the segments beside the dominant one form a
//     ladder: a tail is joined with all the smaller ones (the join extends
//     it when it outweighs them) once they hold 1/tail_ratio of its rows. So
//     each rung is about tail_ratio times the ones below, the rungs grow with
//     the log of the rows added (200-row publishes: three segments beside a
//     1M-row one; four beside 10M, with a max_merged_rows that lets a fold
//     take 10M), and a row is written about tail_ratio/2 times per rung by
//     joins, not once per publish. More than max_tail_segments: the smallest
//     two are joined anyway. Tails are linked
//     to the big segment and walked with it as one graph, so each costs a
//     query little.
//   - With no dominant segment (bulk loads of similar size), tiers after
//     Lucene's TieredMergePolicy: while the version has more than
//     segments_per_tier segments, merge the smallest ones (floored at
//     floor_rows, so that tiny ones look alike), up to max_merge_at_once of
//     them and up to max_merged_rows live rows in all, and only if at least
//     two merge. Repeated, ten small segments become one, ten of those
//     become one, and so on.
//   - A segment whose deleted rows pass deletes_pct_allowed percent of its
//     rows is merged too (alone if need be), which drops its deleted rows:
//     they cost search time (walked, never returned) and disk.
//   - Segments in `busy` (held by a merge already running: the ingest
//     service runs two, so that the tail keeps being joined during a long
//     fold) are left out of every rule.
//
// Pure function of its arguments; thread-compatible.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_H_

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace imagesearch::snapshot {

struct MergePolicy {
  size_t segments_per_tier = 10;         // More segments than this: merge.
  size_t max_merge_at_once = 10;         // Segments joined by one merge.
  uint64_t floor_rows = 10'000;          // Smaller segments count as this size.
  double deletes_pct_allowed = 25;       // Deleted share (%) that forces a rewrite.
  uint64_t max_merged_rows = 5'000'000;  // A merge's result holds at most this.
  // Others' live rows (% of the biggest's) that fold them in; 0: never (no
  // tail either: the tiers alone).
  double fold_pct = 10;
  // Beside a dominant segment, more than this: the smallest two joined; 0:
  // never joined (no ladder either).
  size_t max_tail_segments = 5;
  // A tail is joined with the smaller ones once they hold 1/tail_ratio of its
  // rows (the ladder's rung ratio).
  double tail_ratio = 8;
};

struct SegmentStats {
  std::string name;
  uint64_t rows = 0;     // Rows the segment holds.
  uint64_t deleted = 0;  // Of those, deleted in the version.
};

// The names of the segments to merge into one (in the order given), or none.
std::vector<std::string> ChooseMerge(const std::vector<SegmentStats>& segments,
                                     const MergePolicy& policy,
                                     const std::set<std::string>& busy = {});

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_H_
