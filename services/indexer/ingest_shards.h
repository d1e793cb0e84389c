// The writers behind one ingest service: an IngestCore per shard root of a
// sharded collection (libs/snapshot/shard.h), or the one core of a
// collection of one root. Each upsert and delete goes to the core of the
// shard its id belongs to; Flush and Status span all of them.
//
//   --root=DIR holding CURRENT (or nothing, without --shard_count): one root.
//   --root=DIR holding shard-<i>-of-<S>/ roots (imagesearch-snapshot build
//     --shard_count=S wrote them): S cores, one per root, each with its
//     root's lock; all S must be there.
//   --root=DIR empty, with shard_count S: a new sharded collection.
//
// A call that spans shards runs their cores in parallel; each shard
// publishes its own versions, so answers carry a version per shard. The
// cores share one model.
//
// Thread-safe, as IngestCore.
#ifndef IMAGESEARCH_SERVICES_INDEXER_INGEST_SHARDS_H_
#define IMAGESEARCH_SERVICES_INDEXER_INGEST_SHARDS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/indexer/ingest.h"

namespace imagesearch::indexer {

// Version published per shard index.
using ShardVersions = std::map<uint32_t, uint64_t>;

struct ShardedWriteOutcome {
  std::vector<absl::Status> items;  // Per item, in order: OK = accepted.
  // The versions holding them, by shard (only shards that got an item; 0
  // without wait). For one root: {0: version}.
  ShardVersions versions;
  // What WaitPublished waits for: the batch each shard's accepted items
  // joined (IngestCore's generation), and the items' positions by shard.
  std::map<uint32_t, uint64_t> generations;
  std::map<uint32_t, std::vector<size_t>> positions;
};

struct ShardedIngestStatus {
  IngestStatus total;                // Sums (versions: of shard 0 alone; errors: the first).
  std::vector<IngestStatus> shards;  // By shard index; one for one root.
};

class IngestShards {
 public:
  // `options.root` as described above; shard_count > 0 creates a sharded
  // collection in an empty root (collection: its name, default the root's
  // last path component) and must match an existing one.
  static absl::StatusOr<std::unique_ptr<IngestShards>> Start(const IngestOptions& options,
                                                             uint32_t shard_count,
                                                             const std::string& collection);

  // As IngestCore's. With several shards, a shard whose call fails (its
  // publish, a deadline, its pending limit) fails its own items, each with
  // that status, and the others go on; with one root the call fails.
  absl::StatusOr<ShardedWriteOutcome> Upsert(std::vector<IngestItem> items, bool wait,
                                             absl::Time deadline);
  // Waits until the items `out` accepted (an Upsert without wait) are
  // published, and sets out->versions; a shard's failure fails its own
  // items, as in Upsert (one root: the call's status).
  absl::Status WaitPublished(ShardedWriteOutcome* out, absl::Time deadline);
  // Deletes by id; any shard's failure fails the call (deletes are
  // idempotent: retry it).
  absl::StatusOr<ShardVersions> Delete(const std::vector<std::string>& ids, bool wait,
                                       absl::Time deadline);
  absl::StatusOr<std::vector<std::string>> IdsMatching(const serving::Filter& filter) const;
  absl::StatusOr<ShardVersions> Flush(absl::Time deadline);
  // IngestCore::StopWithin on every shard, together: false if any of them
  // still works after `wait`.
  bool StopWithin(absl::Duration wait);
  ShardedIngestStatus Status() const;

  bool sharded() const { return shard_count_ > 0; }
  uint32_t shard_count() const { return shard_count_; }  // 0: one root.
  int dim() const { return cores_.front()->dim(); }
  std::string Describe() const;  // For the log.

 private:
  IngestShards() = default;
  uint32_t ShardOf(const std::string& id) const;

  std::string root_;
  uint32_t shard_count_ = 0;
  std::vector<std::unique_ptr<IngestCore>> cores_;  // By shard index.
};

}  // namespace imagesearch::indexer

#endif  // IMAGESEARCH_SERVICES_INDEXER_INGEST_SHARDS_H_
