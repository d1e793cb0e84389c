// Shards: a collection split into S snapshot roots by a stable hash of each
// row's id. Every version of a shard root records its ShardInfo in its
// MANIFEST.json, and every write path refuses a row whose id belongs to
// another shard, so a row lives in exactly one shard and a router can find
// the shard of an id without asking any of them.
//
// The hash is part of the on-disk format ("xxh3_64-jump"): XXH3-64 of the id's
// bytes (seed 0), mapped onto [0, S) by Lamping and Veach's jump consistent
// hash. Jump keeps the rows that change shard on a reshard from S to S' to
// the fewest possible (1 - S/S' of them when S' > S), which a reshard, a bulk
// rebuild into new roots, does not need but an operator sizing one can use.
// Never change what ShardOf returns for a given id and count.
// Plain functions and value types; thread-safe.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_SHARD_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_SHARD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace imagesearch::snapshot {

inline constexpr char kShardHash[] = "xxh3_64-jump";
// The most shards a collection may have (a sanity bound on manifests).
inline constexpr uint32_t kMaxCollectionShards = 4096;

// Which shard of which collection a root is. count == 0: not sharded (a
// collection of one root; every id belongs).
struct ShardInfo {
  std::string collection;  // A name for operators and GetInfo; may be empty.
  uint32_t index = 0;      // This root's shard, in [0, count).
  uint32_t count = 0;      // S.
  std::string hash = kShardHash;

  bool sharded() const { return count > 0; }
  bool operator==(const ShardInfo& o) const {
    return collection == o.collection && index == o.index && count == o.count && hash == o.hash;
  }
};

// The shard of `id` among `count` (>= 1) shards.
uint32_t ShardOf(absl::string_view id, uint32_t count);

// OK when `id` belongs to `shard` (always, unsharded); INVALID_ARGUMENT
// naming the id and the shard it belongs to otherwise.
absl::Status CheckIdInShard(absl::string_view id, const ShardInfo& shard);

// INVALID_ARGUMENT unless `shard` is unsharded or a valid shard (index <
// count <= kMaxCollectionShards, the hash this build computes).
absl::Status ValidateShardInfo(const ShardInfo& shard);

// "shard-<index>-of-<count>": the directory of each shard's root under a
// collection's directory, as `imagesearch-snapshot build --shard_count`
// writes them.
std::string ShardRootName(uint32_t index, uint32_t count);

// The entries of `dir` named as ShardRootName names them, sorted; empty when
// there are none or `dir` cannot be read.
std::vector<std::string> ShardRootsUnder(const std::string& dir);

// "collection 'c' shard 2 of 4" (or "not sharded"), for messages.
std::string DescribeShard(const ShardInfo& shard);

// The metadata a shard's replica sends with every answer (gRPC initial
// metadata), so that imagesearch-router can tell, answer by answer, that it
// came from the shard it asked: a process restarted at a replica's address
// may serve another shard, or another layout of the collection, before any
// periodic check could notice. The value is "<index>/<count>/<collection>"
// (the collection C-escaped: metadata values are printable ASCII); empty
// for an unsharded root, which sends none.
inline constexpr char kShardStampKey[] = "imagesearch-shard";
std::string ShardStamp(const ShardInfo& shard);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_SHARD_H_
