#include "services/indexer/ingest_shards.h"

#include <filesystem>
#include <iterator>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/shard.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::indexer {
namespace {

namespace fs = std::filesystem;

// Parses "shard-<i>-of-<S>".
bool ParseShardRootName(const std::string& name, uint32_t* index, uint32_t* count) {
  absl::string_view rest = name;
  if (!absl::ConsumePrefix(&rest, "shard-")) return false;
  std::vector<absl::string_view> parts = absl::StrSplit(rest, "-of-");
  return parts.size() == 2 && absl::SimpleAtoi(parts[0], index) &&
         absl::SimpleAtoi(parts[1], count) && *count > 0 && *index < *count &&
         snapshot::ShardRootName(*index, *count) == name;
}

// Runs f(i) for every i of `which`, in parallel when there are several.
template <typename F>
void ForEachShard(const std::vector<uint32_t>& which, const F& f) {
  if (which.size() == 1) {
    f(which.front());
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(which.size());
  for (uint32_t s : which) threads.emplace_back([&f, s] { f(s); });
  for (auto& t : threads) t.join();
}

std::vector<uint32_t> AllShards(size_t n) {
  std::vector<uint32_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = static_cast<uint32_t>(i);
  return all;
}

// The version of each shard in `which`, or the first failure (named by its
// shard when there are several).
absl::StatusOr<ShardVersions> CollectVersions(const std::vector<uint32_t>& which,
                                              std::vector<absl::StatusOr<uint64_t>>& results,
                                              uint32_t shard_count) {
  ShardVersions versions;
  for (uint32_t s : which) {
    if (!results[s].ok()) {
      if (shard_count == 0) return results[s].status();
      return absl::Status(
          results[s].status().code(),
          absl::StrCat("shard ", s, " of ", shard_count, ": ", results[s].status().message()));
    }
    versions[s] = *results[s];
  }
  return versions;
}

}  // namespace

absl::StatusOr<std::unique_ptr<IngestShards>> IngestShards::Start(const IngestOptions& options,
                                                                  uint32_t shard_count,
                                                                  const std::string& collection) {
  if (options.root.empty()) return absl::InvalidArgumentError("--root is required");
  if (shard_count > snapshot::kMaxCollectionShards) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--shard_count ", shard_count, " is above the limit of ", snapshot::kMaxCollectionShards));
  }
  std::unique_ptr<IngestShards> out(new IngestShards());
  out->root_ = options.root;
  const std::string& root = options.root;
  std::error_code ec;
  const bool one_root = fs::exists(fs::path(root) / snapshot::kCurrentFile, ec);
  std::map<uint32_t, uint32_t> found;  // index -> count, of shard-<i>-of-<S> dirs.
  if (fs::is_directory(root, ec)) {
    for (const auto& e : fs::directory_iterator(root, ec)) {
      uint32_t i = 0, n = 0;
      if (e.is_directory() && ParseShardRootName(e.path().filename().string(), &i, &n)) {
        found[i] = n;
      }
    }
  }
  if (one_root && !found.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        root, " holds both a CURRENT (one root) and shard-<i>-of-<S> roots; point --root at one"));
  }
  if (one_root) {
    if (shard_count > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(root, " is one snapshot root, not a collection of ", shard_count,
                       " shards; a reshard is a bulk rebuild into new roots (deploy/README.md)"));
    }
    ASSIGN_OR_RETURN(auto core, IngestCore::Start(options));
    out->cores_.push_back(std::move(core));
    return out;
  }
  uint32_t count = shard_count;
  if (!found.empty()) {
    count = found.begin()->second;
    for (const auto& [i, n] : found) {
      if (n != count) {
        return absl::FailedPreconditionError(
            absl::StrCat(root, " holds roots of ", count, " and of ", n,
                         " shards; a collection has one shard count"));
      }
    }
    if (found.size() != count) {
      std::string missing;
      for (uint32_t i = 0; i < count; ++i) {
        if (!found.count(i)) absl::StrAppend(&missing, missing.empty() ? "" : ", ", i);
      }
      return absl::FailedPreconditionError(
          absl::StrCat(root, " lacks the roots of shard(s) ", missing, " of ", count));
    }
    if (shard_count > 0 && shard_count != count) {
      return absl::FailedPreconditionError(
          absl::StrCat(root, " is a collection of ", count, " shards, not ", shard_count,
                       "; a reshard is a bulk rebuild into new roots (deploy/README.md)"));
    }
  }
  if (count == 0) {  // An empty root, unsharded.
    ASSIGN_OR_RETURN(auto core, IngestCore::Start(options));
    out->cores_.push_back(std::move(core));
    return out;
  }
  std::string name = collection;
  if (name.empty()) name = fs::path(std::string(absl::StripSuffix(root, "/"))).filename().string();
  out->shard_count_ = count;
  IngestOptions o = options;
  for (uint32_t i = 0; i < count; ++i) {
    o.root = (fs::path(root) / snapshot::ShardRootName(i, count)).string();
    // A shard root with a version says which shard it is; an empty one is made this one.
    const bool has_version = fs::exists(fs::path(o.root) / snapshot::kCurrentFile, ec);
    o.shard = has_version ? snapshot::ShardInfo() : snapshot::ShardInfo{name, i, count};
    auto core = IngestCore::Start(o);
    if (!core.ok()) {
      return absl::Status(core.status().code(),
                          absl::StrCat("shard ", i, " of ", count, ": ", core.status().message()));
    }
    const snapshot::ShardInfo& got = (*core)->shard();
    if (!got.sharded() || got.index != i || got.count != count) {
      return absl::FailedPreconditionError(absl::StrCat(
          o.root, " serves ", snapshot::DescribeShard(got), ", not shard ", i, " of ", count));
    }
    if (o.shared_model == nullptr) {
      o.shared_model = (*core)->model();
      o.shared_model_sha256 = (*core)->model_sha256();
    }
    out->cores_.push_back(*std::move(core));
  }
  return out;
}

uint32_t IngestShards::ShardOf(const std::string& id) const {
  return sharded() ? snapshot::ShardOf(id, shard_count_) : 0;
}

absl::StatusOr<ShardedWriteOutcome> IngestShards::Upsert(std::vector<IngestItem> items, bool wait,
                                                         absl::Time deadline) {
  ShardedWriteOutcome out;
  if (!sharded()) {
    ASSIGN_OR_RETURN(WriteOutcome w, cores_.front()->Upsert(std::move(items), false, deadline));
    out.items = std::move(w.items);
    out.versions[0] = 0;
    out.generations[0] = w.generation;
  } else {
    std::vector<std::vector<IngestItem>> per(cores_.size());
    for (size_t i = 0; i < items.size(); ++i) {
      const uint32_t s = ShardOf(items[i].id);
      per[s].push_back(std::move(items[i]));
      out.positions[s].push_back(i);
    }
    std::vector<uint32_t> touched;
    for (const auto& [s, unused] : out.positions) touched.push_back(s);
    std::vector<absl::StatusOr<WriteOutcome>> results(cores_.size(), WriteOutcome());
    ForEachShard(touched, [&](uint32_t s) {
      results[s] = cores_[s]->Upsert(std::move(per[s]), false, deadline);
    });
    out.items.assign(items.size(), absl::OkStatus());
    for (uint32_t s : touched) {
      const std::vector<size_t>& where = out.positions[s];
      if (!results[s].ok()) {
        const absl::Status failed(
            results[s].status().code(),
            absl::StrCat("shard ", s, " of ", shard_count_, ": ", results[s].status().message()));
        for (size_t pos : where) out.items[pos] = failed;
        continue;
      }
      for (size_t k = 0; k < where.size(); ++k) out.items[where[k]] = results[s]->items[k];
      out.versions[s] = 0;
      out.generations[s] = results[s]->generation;
    }
  }
  if (wait) RETURN_IF_ERROR(WaitPublished(&out, deadline));
  return out;
}

absl::Status IngestShards::WaitPublished(ShardedWriteOutcome* out, absl::Time deadline) {
  std::vector<uint32_t> waiting;  // Shards with accepted items.
  for (const auto& [s, generation] : out->generations) {
    if (generation != 0) waiting.push_back(s);
  }
  std::vector<absl::StatusOr<uint64_t>> results(cores_.size(), uint64_t{0});
  ForEachShard(waiting, [&](uint32_t s) {
    results[s] = cores_[s]->WaitPublished(out->generations.at(s), deadline);
  });
  for (uint32_t s : waiting) {
    if (results[s].ok()) {
      out->versions[s] = *results[s];
      continue;
    }
    if (!sharded()) return results[s].status();  // Their writes may be lost: the call fails.
    const absl::Status failed(
        results[s].status().code(),
        absl::StrCat("shard ", s, " of ", shard_count_, ": ", results[s].status().message()));
    for (size_t pos : out->positions[s]) {
      if (out->items[pos].ok()) out->items[pos] = failed;
    }
    out->versions.erase(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardVersions> IngestShards::Delete(const std::vector<std::string>& ids, bool wait,
                                                   absl::Time deadline) {
  std::vector<std::vector<std::string>> per(cores_.size());
  for (const std::string& id : ids) per[ShardOf(id)].push_back(id);
  std::vector<uint32_t> touched;
  for (uint32_t s = 0; s < per.size(); ++s) {
    if (!per[s].empty() || !sharded()) touched.push_back(s);
  }
  std::vector<absl::StatusOr<uint64_t>> results(cores_.size(), uint64_t{0});
  ForEachShard(touched,
               [&](uint32_t s) { results[s] = cores_[s]->Delete(per[s], wait, deadline); });
  return CollectVersions(touched, results, shard_count_);
}

absl::StatusOr<std::vector<std::string>> IngestShards::IdsMatching(
    const serving::Filter& filter) const {
  std::vector<std::string> ids;
  for (const auto& core : cores_) {
    ASSIGN_OR_RETURN(std::vector<std::string> more, core->IdsMatching(filter));
    ids.insert(ids.end(), std::make_move_iterator(more.begin()),
               std::make_move_iterator(more.end()));
  }
  return ids;
}

absl::StatusOr<ShardVersions> IngestShards::Flush(absl::Time deadline) {
  std::vector<absl::StatusOr<uint64_t>> results(cores_.size(), uint64_t{0});
  const std::vector<uint32_t> all = AllShards(cores_.size());
  ForEachShard(all, [&](uint32_t s) { results[s] = cores_[s]->Flush(deadline); });
  return CollectVersions(all, results, shard_count_);
}

bool IngestShards::StopWithin(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  bool all = true;
  for (const auto& core : cores_) all = core->StopWithin(deadline - absl::Now()) && all;
  return all;
}

ShardedIngestStatus IngestShards::Status() const {
  ShardedIngestStatus out;
  for (const auto& core : cores_) out.shards.push_back(core->Status());
  out.total = out.shards.front();
  for (size_t s = 1; s < out.shards.size(); ++s) {
    const IngestStatus& x = out.shards[s];
    out.total.pending_rows += x.pending_rows;
    out.total.pending_deletes += x.pending_deletes;
    out.total.segments += x.segments;
    out.total.live_rows += x.live_rows;
    out.total.merges_running += x.merges_running;
    out.total.merges_done += x.merges_done;
    if (out.total.last_error.empty() && !x.last_error.empty()) {
      out.total.last_error = absl::StrCat("shard ", s, ": ", x.last_error);
    }
  }
  return out;
}

std::string IngestShards::Describe() const {
  std::string fields;
  for (const snapshot::FieldSpec& f : cores_.front()->schema()) {
    absl::StrAppend(&fields, fields.empty() ? "" : ",", f.name, ":",
                    snapshot::FieldTypeName(f.type));
  }
  // Without a schema, attributes are kept as JSON but cannot be filtered on.
  const std::string typed = fields.empty()
                                ? "no attribute schema (--schema types attributes for filters)"
                                : absl::StrCat("attributes typed as ", fields);
  if (!sharded()) return absl::StrCat(root_, ", ", typed);
  return absl::StrCat(root_, " (collection '", cores_.front()->shard().collection, "', ",
                      shard_count_, " shard roots: ", snapshot::ShardRootName(0, shard_count_),
                      " to ", snapshot::ShardRootName(shard_count_ - 1, shard_count_), "), ",
                      typed);
}

}  // namespace imagesearch::indexer
