// The merge policy's command-line flags (--segments_per_tier, --fold_pct,
// --max_tail_segments, --tail_ratio, --max_merge_at_once, --floor_rows, --deletes_pct_allowed,
// --max_merged_rows), defined once for every binary that merges:
// `imagesearch-snapshot merge` and the ingest service
// (`imagesearch-indexer serve`), so both take the same names and defaults.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_FLAGS_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_FLAGS_H_

#include "libs/snapshot/merge_policy.h"

namespace imagesearch::snapshot {

// The policy the flags set, each clamped to its valid range (at least one
// segment per tier, two segments a merge, one merged row; no negative sizes
// or shares).
MergePolicy MergePolicyFromFlags();

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_MERGE_POLICY_FLAGS_H_
