#include "libs/snapshot/shard.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace imagesearch::snapshot {
namespace {

// Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm"
// (2014), as published: the bucket in [0, buckets) of `key`.
uint32_t JumpConsistentHash(uint64_t key, uint32_t buckets) {
  int64_t b = -1;
  int64_t j = 0;
  while (j < static_cast<int64_t>(buckets)) {
    b = j;
    key = key * 2862933555777941757ULL + 1;
    j = static_cast<int64_t>(static_cast<double>(b + 1) * (static_cast<double>(1LL << 31) /
                                                           static_cast<double>((key >> 33) + 1)));
  }
  return static_cast<uint32_t>(b);
}

}  // namespace

uint32_t ShardOf(absl::string_view id, uint32_t count) {
  if (count <= 1) return 0;
  return JumpConsistentHash(XXH3_64bits(id.data(), id.size()), count);
}

absl::Status CheckIdInShard(absl::string_view id, const ShardInfo& shard) {
  if (!shard.sharded()) return absl::OkStatus();
  const uint32_t owner = ShardOf(id, shard.count);
  if (owner == shard.index) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("id '", id.substr(0, 128), "' belongs to shard ",
                                                 owner, " of ", shard.count, ", not to this root (",
                                                 DescribeShard(shard), ")"));
}

absl::Status ValidateShardInfo(const ShardInfo& shard) {
  if (!shard.sharded()) return absl::OkStatus();
  if (shard.count > kMaxCollectionShards) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard count ", shard.count, " is above the limit of ", kMaxCollectionShards));
  }
  if (shard.index >= shard.count) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard index ", shard.index, " is not below the shard count ", shard.count));
  }
  if (shard.hash != kShardHash) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shard hash '", shard.hash, "' is not one this build computes (", kShardHash, ")"));
  }
  return absl::OkStatus();
}

std::string ShardRootName(uint32_t index, uint32_t count) {
  return absl::StrCat("shard-", index, "-of-", count);
}

std::string ShardStamp(const ShardInfo& shard) {
  if (!shard.sharded()) return "";
  return absl::StrCat(shard.index, "/", shard.count, "/", absl::CHexEscape(shard.collection));
}

std::string DescribeShard(const ShardInfo& shard) {
  if (!shard.sharded()) return "not sharded";
  return absl::StrCat("collection '", shard.collection, "' shard ", shard.index, " of ",
                      shard.count);
}

std::vector<std::string> ShardRootsUnder(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    uint32_t index = 0, count = 0;
    absl::string_view rest = name;
    if (!absl::ConsumePrefix(&rest, "shard-")) continue;
    const std::vector<std::string> parts = absl::StrSplit(rest, "-of-");
    if (parts.size() == 2 && absl::SimpleAtoi(parts[0], &index) &&
        absl::SimpleAtoi(parts[1], &count) && name == ShardRootName(index, count)) {
      out.push_back(name);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace imagesearch::snapshot
