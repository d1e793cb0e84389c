// Embedding shards: how distributed indexing splits the work. Worker i of n
// (a Kubernetes Indexed Job pod, say) runs the indexer with --shard=i/n
// --embeddings_out=DIR and writes DIR/shard-<i>-of-<n>/; a final step reads
// all n shards and publishes one snapshot (imagesearch-snapshot build
// --shards=DIR). A shard directory holds:
//
//   vectors.npy    float32 count x dim, row i <-> ids.bin row i
//   ids.bin        the id table format of a snapshot (libs/snapshot/ids_table.h)
//   thumbs.bin     optional, the thumbnail format of a snapshot
//   rejects.jsonl  the images this shard skipped, with reasons
//   SHARD.json     shard index and count, the model identity, dim, metric,
//                  counts, and each file's size and XXH3 checksum
//
// Writing is atomic (temp dir, fsync, rename), so a retried worker never
// leaves a half shard; reading verifies every file against SHARD.json and
// refuses a missing, extra or foreign (other model, other n) shard.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_EMBEDDING_SHARD_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_EMBEDDING_SHARD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/index/metric.h"
#include "libs/snapshot/ids_table.h"
#include "libs/snapshot/manifest.h"
#include "libs/snapshot/thumbs_table.h"

namespace imagesearch::snapshot {

inline constexpr char kShardManifestFile[] = "SHARD.json";

// Which share of the input a worker takes: list positions p with p % count == index.
struct ShardSpec {
  int index = 0;
  int count = 1;
};
// Parses "i/n" (0 <= i < n <= 100000). INVALID_ARGUMENT says what is wrong.
absl::StatusOr<ShardSpec> ParseShardSpec(absl::string_view text);
// "shard-<i>-of-<n>"
std::string ShardDirName(const ShardSpec& spec);

struct EmbeddingShard {
  ShardSpec spec;
  ModelIdentity model;  // sha256 identifies the model; file is unused.
  int dim = 0;
  index::Metric metric = index::Metric::kCosine;
  uint64_t listed = 0;              // Input items in this shard, rejected ones included.
  std::vector<float> vectors;       // count x dim
  std::vector<IdRecord> ids;        // count
  std::vector<std::string> thumbs;  // count, or empty for none (written)
  // A shard read back keeps its thumbs.bin mapped here instead (null: none),
  // so a build from many shards never holds all their thumbnails in memory.
  std::shared_ptr<const ThumbsTable> thumbs_table;
  std::string rejects_jsonl;
};

// Writes `shard` as parent/shard-<i>-of-<n>/, replacing a complete one from
// an earlier attempt. Returns the directory.
absl::StatusOr<std::string> WriteEmbeddingShard(const std::string& parent,
                                                const EmbeddingShard& shard);

// Reads every shard-*-of-<n> directory under `parent`: exactly shards 0..n-1
// of one n, all from the same model, dim and metric, every file matching its
// SHARD.json. Returns them in shard order.
absl::StatusOr<std::vector<EmbeddingShard>> ReadEmbeddingShards(const std::string& parent);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_EMBEDDING_SHARD_H_
