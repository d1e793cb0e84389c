#include "libs/snapshot/merge_policy_flags.h"

#include <algorithm>
#include <cstdint>

#include "absl/flags/flag.h"

ABSL_FLAG(int, segments_per_tier, 10, "merge policy: more segments than this are merged.");
ABSL_FLAG(double, fold_pct, 10,
          "merge policy: when the other segments hold this share (%) of the biggest's live rows, "
          "all merge into it (its graph extended); 0: never.");
ABSL_FLAG(int, max_tail_segments, 5,
          "merge policy: beside a segment that outweighs the others, more segments than this "
          "(tails) have their smallest two joined; 0: tails are never joined (they wait for the "
          "fold).");
ABSL_FLAG(double, tail_ratio, 8,
          "merge policy: a tail is joined with the smaller ones once they hold 1/tail_ratio of "
          "its rows.");
ABSL_FLAG(int, max_merge_at_once, 10, "merge policy: segments joined by one merge.");
ABSL_FLAG(int64_t, floor_rows, 10000, "merge policy: smaller segments count as this size.");
ABSL_FLAG(double, deletes_pct_allowed, 25,
          "merge policy: a segment with more deleted rows than this percent is rewritten.");
ABSL_FLAG(int64_t, max_merged_rows, 5000000, "merge policy: a merge's result stays below this.");

namespace imagesearch::snapshot {

MergePolicy MergePolicyFromFlags() {
  MergePolicy p;
  p.segments_per_tier = static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_segments_per_tier)));
  p.max_merge_at_once = static_cast<size_t>(std::max(2, absl::GetFlag(FLAGS_max_merge_at_once)));
  p.floor_rows = static_cast<uint64_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_floor_rows)));
  p.deletes_pct_allowed = std::max(0.0, absl::GetFlag(FLAGS_deletes_pct_allowed));
  p.fold_pct = std::max(0.0, absl::GetFlag(FLAGS_fold_pct));
  p.max_tail_segments = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_max_tail_segments)));
  p.tail_ratio = std::max(1.0, absl::GetFlag(FLAGS_tail_ratio));
  p.max_merged_rows =
      static_cast<uint64_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_max_merged_rows)));
  return p;
}

}  // namespace imagesearch::snapshot
