#include "services/indexer/ingest.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "libs/common/client_text.h"
#include "libs/common/cpu_quota.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/ids_table.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "services/indexer/indexer.h"

namespace imagesearch::indexer {
namespace {

// Outcomes of this many recent generations are kept for late waiters (a
// streaming upsert waits for a batch only after answering the one before
// it). Failed generations are kept apart and never dropped, so that no
// waiter, however late, takes a lost write for a published one.
constexpr size_t kSettledKept = 4096;

}  // namespace

absl::StatusOr<std::unique_ptr<IngestCore>> IngestCore::Start(const IngestOptions& o) {
  if (o.root.empty()) return absl::InvalidArgumentError("--root is required");
  RETURN_IF_ERROR(index::ValidateHnswParams(o.hnsw));
  if (o.publish_interval <= absl::ZeroDuration() || o.publish_rows == 0) {
    return absl::InvalidArgumentError("the publish interval and publish rows must be positive");
  }
  std::unique_ptr<IngestCore> core(new IngestCore());
  core->options_ = o;
  std::error_code ec;
  std::filesystem::create_directories(o.root, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", o.root, ": ", ec.message()));
  const std::string lock_path = absl::StrCat(o.root, "/", kIngestLockFile);
  core->lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (core->lock_fd_ < 0) return ErrnoStatus(errno, absl::StrCat("open ", lock_path));
  if (::flock(core->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(core->lock_fd_);
    core->lock_fd_ = -1;
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("another ingest service holds ", lock_path,
                       ": a root has one writer; stop it first (or use another root)"));
    }
    return ErrnoStatus(err, absl::StrCat("flock ", lock_path));
  }
  model::ModelBundleOptions mo;
  mo.encoder.intra_op_threads =
      o.encoder_threads > 0 ? o.encoder_threads : std::max(1, EffectiveCpuCount());
  auto current = snapshot::ReadCurrentVersion(o.root);
  if (current.ok()) {
    ASSIGN_OR_RETURN(auto snap,
                     snapshot::Snapshot::Open(o.root, *current, snapshot::VerifyMode::kSizes));
    core->dim_ = snap->dim();
    core->metric_ = snap->manifest().metric;
    core->shard_ = snap->manifest().shard;
    if (o.shard.sharded() && !(o.shard == core->shard_)) {
      return absl::FailedPreconditionError(
          absl::StrCat(o.root, " is ", snapshot::DescribeShard(core->shard_), ", not ",
                       snapshot::DescribeShard(o.shard)));
    }
    // --schema types the new rows, as the indexer's --base --schema does
    // (merges re-type older rows under the newest schema); else CURRENT's.
    if (!o.schema.empty()) {
      core->schema_ = o.schema;
    } else if (snap->schema_table() != nullptr) {
      core->schema_ = snap->schema_table()->fields();
    }
    if (!snap->model_path().empty()) {
      const std::string& sha256 = snap->manifest().model.sha256;
      if (!o.model_path.empty()) {
        ASSIGN_OR_RETURN(std::string sha, Sha256HexOfFile(o.model_path));
        if (sha != sha256) {
          return absl::FailedPreconditionError(absl::StrCat(
              o.model_path, " is not the model of CURRENT (v", *current, ", model '",
              snap->manifest().model.name, "'): its rows are in another embedding space"));
        }
      }
      core->model_sha256_ = sha256;
      if (o.shared_model != nullptr && o.shared_model_sha256 == sha256) {
        core->bundle_ = o.shared_model;
      } else {
        ASSIGN_OR_RETURN(core->bundle_, model::ModelBundle::Load(snap->model_path(), mo));
      }
    }
  } else if (absl::IsNotFound(current.status())) {
    RETURN_IF_ERROR(snapshot::ValidateShardInfo(o.shard));
    core->shard_ = o.shard;
    core->schema_ = o.schema;
    if (!o.model_path.empty()) {
      ASSIGN_OR_RETURN(core->model_sha256_, Sha256HexOfFile(o.model_path));
      if (o.shared_model != nullptr && o.shared_model_sha256 == core->model_sha256_) {
        core->bundle_ = o.shared_model;
      } else {
        ASSIGN_OR_RETURN(core->bundle_, model::ModelBundle::Load(o.model_path, mo));
      }
      core->dim_ = core->bundle_->dim();
      ASSIGN_OR_RETURN(core->metric_, index::ParseMetric(core->bundle_->info().metric));
      core->model_path_ = o.model_path;
      core->model_identity_ = ModelIdentityOf(core->bundle_->info());
    } else {
      if (o.dim <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(o.root,
                         " has no version yet: give --model (image collections) or --dim and "
                         "--metric (vector collections)"));
      }
      core->dim_ = o.dim;
      core->metric_ = o.metric;
    }
  } else {
    return current.status();
  }
  core->threads_running_ = 3;
  auto ended = [](IngestCore* c) {
    std::lock_guard<std::mutex> lock(c->mu_);
    --c->threads_running_;
    c->changed_.notify_all();
  };
  core->publisher_ = std::thread([c = core.get(), ended] {
    c->PublisherLoop();
    ended(c);
  });
  // Two merge lanes: a fold of a big segment takes seconds to minutes, and
  // meanwhile the other lane joins the new publishes into the tail.
  for (int lane = 0; lane < 2; ++lane) {
    core->mergers_.emplace_back([c = core.get(), ended] {
      c->MergerLoop();
      ended(c);
    });
  }
  return core;
}

IngestCore::~IngestCore() {
  StopWithin(absl::ZeroDuration());
  if (publisher_.joinable()) publisher_.join();
  for (std::thread& t : mergers_) {
    if (t.joinable()) t.join();
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

bool IngestCore::StopWithin(absl::Duration wait) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    stop_ = true;
    changed_.notify_all();
    if (!changed_.wait_for(lock, absl::ToChronoNanoseconds(wait),
                           [this] { return threads_running_ == 0; })) {
      return false;
    }
  }
  if (publisher_.joinable()) publisher_.join();
  for (std::thread& t : mergers_) {
    if (t.joinable()) t.join();
  }
  return true;
}

absl::Status IngestCore::CheckAndEmbed(std::vector<IngestItem>* items,
                                       std::vector<absl::Status>* outcome,
                                       std::vector<Row>* rows) const {
  outcome->assign(items->size(), absl::OkStatus());
  rows->assign(items->size(), Row());
  std::vector<size_t> images;
  std::vector<image::RgbImage> decoded;
  for (size_t i = 0; i < items->size(); ++i) {
    IngestItem& item = (*items)[i];
    Row& row = (*rows)[i];
    absl::Status& st = (*outcome)[i];
    const std::string who = absl::StrCat("item ", i, " (id ", QuoteClientText(item.id), "): ");
    if (item.id.empty()) {
      st = absl::InvalidArgumentError(absl::StrCat("item ", i, ": id is empty"));
      continue;
    }
    if (item.id.size() > snapshot::kMaxIdBytes || !IsValidUtf8(item.id) || !IsValidUtf8(item.uri)) {
      st = absl::InvalidArgumentError(absl::StrCat(
          who, "ids and uris must be valid UTF-8, ids at most ", snapshot::kMaxIdBytes, " bytes"));
      continue;
    }
    if (absl::Status mine = snapshot::CheckIdInShard(item.id, shard_); !mine.ok()) {
      st = absl::InvalidArgumentError(absl::StrCat(who, mine.message()));
      continue;
    }
    if (!schema_.empty() || !item.attributes_json.empty()) {
      auto typed = snapshot::TypedAttributes(schema_, item.attributes_json);
      if (!typed.ok()) {
        st = absl::InvalidArgumentError(absl::StrCat(who, typed.status().message()));
        continue;
      }
      if (!schema_.empty()) row.typed = *std::move(typed);
    }
    row.uri = item.uri;
    row.attributes_json = item.attributes_json;
    if (item.is_image) {
      if (bundle_ == nullptr) {
        st = absl::InvalidArgumentError(
            absl::StrCat(who, "this collection has no model (vector-only): send vectors"));
        continue;
      }
      auto d = bundle_->PreprocessImageWithThumbnail(
          item.image, options_.thumbnails ? &options_.thumbnail : nullptr);
      if (!d.ok()) {
        st = absl::InvalidArgumentError(absl::StrCat(who, d.status().message()));
        continue;
      }
      row.thumbnail = std::move(d->thumbnail_jpeg);
      images.push_back(i);
      decoded.push_back(std::move(d->model_input));
      continue;
    }
    if (item.vector.empty()) {
      st = absl::InvalidArgumentError(
          absl::StrCat(who, "has neither an image nor a vector",
                       bundle_ != nullptr ? "" : " (this collection takes vectors only)"));
      continue;
    }
    if (item.vector.size() != static_cast<size_t>(dim_)) {
      st = absl::InvalidArgumentError(absl::StrCat(
          who, "vector has ", item.vector.size(), " values; the collection's dimension is ", dim_));
      continue;
    }
    double norm = 0;
    bool finite = true;
    for (float x : item.vector) {
      finite = finite && std::isfinite(x);
      norm += static_cast<double>(x) * x;
    }
    if (!finite) {
      st = absl::InvalidArgumentError(absl::StrCat(who, "vector has a NaN or infinite value"));
      continue;
    }
    if (metric_ == index::Metric::kCosine && !(norm > 0)) {
      st = absl::InvalidArgumentError(absl::StrCat(who, "zero vector: cosine needs a direction"));
      continue;
    }
    row.vector = std::move(item.vector);
  }
  if (!images.empty()) {
    std::vector<const image::RgbImage*> ptrs;
    for (const auto& d : decoded) ptrs.push_back(&d);
    ASSIGN_OR_RETURN(std::vector<float> out, bundle_->EncodeImages(ptrs));
    for (size_t k = 0; k < images.size(); ++k) {
      (*rows)[images[k]].vector.assign(out.begin() + static_cast<ptrdiff_t>(k * dim_),
                                       out.begin() + static_cast<ptrdiff_t>((k + 1) * dim_));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> IngestCore::WaitPublished(std::unique_lock<std::mutex>& lock, uint64_t gen,
                                                   absl::Time deadline) {
  for (;;) {
    if (published_gen_ >= gen) {
      if (auto failed = failed_gens_.find(gen); failed != failed_gens_.end()) return failed->second;
      auto it = settled_.find(gen);
      if (it != settled_.end()) return it->second;
      // Settled long ago, and not failed: published, in this version or before.
      return absl::StatusOr<uint64_t>(last_published_);
    }
    if (stop_) {
      return absl::UnavailableError(
          "the ingest service is stopping; this write was not published and may be lost");
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          "the deadline passed before the write was published (it is still pending)");
    }
    changed_.wait_for(lock, absl::ToChronoNanoseconds(std::min(deadline - now, absl::Seconds(1))));
  }
}

absl::StatusOr<WriteOutcome> IngestCore::Upsert(std::vector<IngestItem> items, bool wait,
                                                absl::Time deadline) {
  WriteOutcome out;
  std::vector<Row> rows;
  RETURN_IF_ERROR(CheckAndEmbed(&items, &out.items, &rows));
  std::unique_lock<std::mutex> lock(mu_);
  if (pending_.size() + items.size() > options_.max_pending_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat(pending_.size(), " rows wait to be published (the limit is ",
                     options_.max_pending_rows, "); retry after a moment"));
  }
  bool any = false;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!out.items[i].ok()) continue;
    pending_[items[i].id] = std::move(rows[i]);  // A later upsert of an id wins.
    any = true;
  }
  if (!any) return out;
  if (pending_since_ == absl::InfinitePast()) pending_since_ = absl::Now();
  out.generation = open_gen_;
  changed_.notify_all();
  if (!wait) return out;
  ASSIGN_OR_RETURN(out.version, WaitPublished(lock, out.generation, deadline));
  return out;
}

absl::StatusOr<uint64_t> IngestCore::WaitPublished(uint64_t generation, absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (generation == 0) return last_published_;
  return WaitPublished(lock, generation, deadline);
}

absl::StatusOr<uint64_t> IngestCore::Delete(const std::vector<std::string>& ids, bool wait,
                                            absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  for (const std::string& id : ids) {
    pending_.erase(id);  // A delete after an upsert in the same batch wins.
    pending_deletes_.insert(id);
  }
  if (ids.empty()) return last_published_;
  if (pending_since_ == absl::InfinitePast()) pending_since_ = absl::Now();
  const uint64_t gen = open_gen_;
  changed_.notify_all();
  if (!wait) return uint64_t{0};
  return WaitPublished(lock, gen, deadline);
}

absl::StatusOr<std::vector<std::string>> IngestCore::IdsMatching(
    const serving::Filter& filter) const {
  if (!filter.error.empty()) return absl::InvalidArgumentError(filter.error);
  if (filter.empty()) {
    return absl::InvalidArgumentError(
        "the delete filter has no condition; it would match every row (list ids, or give a "
        "condition)");
  }
  absl::StatusOr<uint64_t> version = snapshot::ReadCurrentVersion(options_.root);
  if (absl::IsNotFound(version.status())) return std::vector<std::string>();
  RETURN_IF_ERROR(version.status());
  ASSIGN_OR_RETURN(auto snap, versions_.Open(options_.root, *version));
  ASSIGN_OR_RETURN(index::RowFilter allowed, serving::EvaluateFilter(*snap, filter));
  std::vector<std::string> ids;
  for (uint32_t row = 0; row < snap->rows(); ++row) {
    if (!allowed.Allows(row) || !snap->IsLive(row)) continue;
    ASSIGN_OR_RETURN(auto view, snap->Id(row));
    ids.emplace_back(view.id);
  }
  return ids;
}

absl::StatusOr<uint64_t> IngestCore::Flush(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (pending_.empty() && pending_deletes_.empty() && published_gen_ + 1 >= open_gen_) {
    auto v = snapshot::ReadCurrentVersion(options_.root);
    return v.ok() ? *v : last_published_;
  }
  flush_requested_ = true;
  const uint64_t gen = pending_.empty() && pending_deletes_.empty() ? open_gen_ - 1 : open_gen_;
  changed_.notify_all();
  return WaitPublished(lock, gen, deadline);
}

IngestStatus IngestCore::Status() const {
  IngestStatus s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.pending_rows = pending_.size();
    s.pending_deletes = pending_deletes_.size();
    s.last_published = last_published_;
    s.merges_running = merges_running_;
    s.merges_done = merges_done_;
    s.last_error = last_error_;
  }
  auto v = snapshot::ReadCurrentVersion(options_.root);
  if (v.ok()) {
    s.current_version = *v;
    auto snap = versions_.Open(options_.root, *v);
    if (snap.ok()) {
      s.segments = static_cast<uint32_t>((*snap)->segments().size());
      s.live_rows = (*snap)->live_count();
    }
  }
  return s;
}

absl::StatusOr<uint64_t> IngestCore::PublishBatch(std::map<std::string, Row> rows,
                                                  std::set<std::string> deletes) {
  std::vector<float> vectors;
  snapshot::SnapshotInput in;
  in.dim = dim_;
  in.metric = metric_;
  in.hnsw = options_.hnsw;
  in.default_ef = options_.default_ef;
  in.schema = schema_;
  bool thumbs = false;
  for (const auto& [id, row] : rows) thumbs = thumbs || !row.thumbnail.empty();
  for (auto& [id, row] : rows) {
    vectors.insert(vectors.end(), row.vector.begin(), row.vector.end());
    in.ids.push_back({id, std::move(row.uri), std::move(row.attributes_json)});
    if (thumbs) in.thumbnails.push_back(std::move(row.thumbnail));
    if (!schema_.empty()) in.attributes.push_back(std::move(row.typed));
  }
  in.count = in.ids.size();
  if (in.count > 0) {
    in.graph = index::HnswGraphWriter(vectors.data(), in.count, static_cast<size_t>(dim_), metric_,
                                      in.hnsw);
  }
  auto current = snapshot::ReadCurrentVersion(options_.root);
  if (absl::IsNotFound(current.status())) {
    if (in.count == 0) return uint64_t{0};  // Deletes on an empty root delete nothing.
    in.model_path = model_path_;
    in.model = model_identity_;
    in.shard = shard_;
    return snapshot::PublishSnapshot(options_.root, in);
  }
  RETURN_IF_ERROR(current.status());
  snapshot::SnapshotUpdate update;
  update.base_version = 0;  // CURRENT under the lock: a merge published meanwhile is kept.
  update.delete_ids.assign(deletes.begin(), deletes.end());
  // Deleting ids that are already gone (a retry, a filter's ids deleted
  // twice) is no new version.
  update.skip_if_unchanged = true;
  if (in.count > 0) update.added = std::move(in);
  snapshot::PublishOptions publish;
  publish.versions = &versions_;
  ASSIGN_OR_RETURN(snapshot::UpdateResult r,
                   snapshot::PublishUpdate(options_.root, update, publish));
  return r.version;
}

namespace {

// Lowers the calling thread's CPU priority (Linux: nice is per thread, and
// threads it starts inherit it). A failure only costs the priority: logged.
void LowerThisThread(int nice) {
  if (nice <= 0) return;
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  if (setpriority(PRIO_PROCESS, tid, nice) != 0) {
    LogWarning("cannot lower the priority of a background thread to nice ", nice, ": ",
               std::strerror(errno));
  }
}

}  // namespace

void IngestCore::PublisherLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const bool pending = !pending_.empty() || !pending_deletes_.empty();
    const bool due = pending && (flush_requested_ || pending_.size() >= options_.publish_rows ||
                                 absl::Now() >= pending_since_ + options_.publish_interval);
    if (!due) {
      const absl::Duration wait =
          pending ? std::max(absl::Milliseconds(1),
                             pending_since_ + options_.publish_interval - absl::Now())
                  : absl::Seconds(1);
      changed_.wait_for(lock, absl::ToChronoNanoseconds(wait));
      continue;
    }
    std::map<std::string, Row> rows = std::move(pending_);
    std::set<std::string> deletes = std::move(pending_deletes_);
    pending_.clear();
    pending_deletes_.clear();
    pending_since_ = absl::InfinitePast();
    flush_requested_ = false;
    const uint64_t gen = open_gen_++;
    lock.unlock();
    absl::StatusOr<uint64_t> v = PublishBatch(std::move(rows), std::move(deletes));
    if (!v.ok())
      LogError("ingest: publishing generation ", gen, " failed: ", v.status().ToString());
    lock.lock();
    if (v.ok() && *v > 0) last_published_ = *v;
    last_error_ = v.ok() ? "" : v.status().ToString();
    if (v.ok() && *v == 0) v = last_published_;
    if (v.ok()) {
      settled_.emplace(gen, *v);
      while (settled_.size() > kSettledKept) settled_.erase(settled_.begin());
    } else {
      failed_gens_.emplace(gen, v.status());
    }
    published_gen_ = gen;
    ++merge_epoch_;
    changed_.notify_all();
  }
}

void IngestCore::MergerLoop() {
  LowerThisThread(options_.background_nice);
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!options_.merge || merge_epoch_ == seen) {
      changed_.wait(lock);
      continue;
    }
    seen = merge_epoch_;
    lock.unlock();
    // Choose (one lane at a time) among the segments the other lane's merge
    // does not hold, and hold the chosen ones.
    std::vector<std::string> names;
    {
      std::lock_guard<std::mutex> choosing(choose_mu_);
      std::set<std::string> busy;
      {
        std::lock_guard<std::mutex> l(mu_);
        busy = merging_;
      }
      auto chosen =
          snapshot::ChooseMergeInCurrent(options_.root, options_.merge_policy, busy, &versions_);
      if (chosen.ok()) {
        names = std::move(*chosen);
      } else if (!absl::IsNotFound(chosen.status())) {
        LogError("ingest: choosing a merge failed: ", chosen.status().ToString());
      }
      if (!names.empty()) {
        std::lock_guard<std::mutex> l(mu_);
        merging_.insert(names.begin(), names.end());
        ++merges_running_;
      }
    }
    if (names.empty()) {
      lock.lock();
      continue;
    }
    if (options_.before_merge) options_.before_merge(names);
    snapshot::MergeRequest req;
    req.segments = names;
    req.policy = options_.merge_policy;
    req.threads = 1;  // Leave the other cores to queries and the publisher.
    snapshot::PublishOptions publish;
    publish.versions = &versions_;
    auto r = snapshot::MergeSegments(options_.root, req, publish);
    if (!r.ok() && !absl::IsAborted(r.status()) && !absl::IsNotFound(r.status())) {
      LogError("ingest: merge failed: ", r.status().ToString());
    } else if (r.ok() && r->version > 0) {
      LogInfo(
          "ingest: merged ", r->merged.size(), " segments (", r->rows, " rows, ", r->dropped,
          " deleted rows dropped", r->extended.empty() ? "" : ", extending ", r->extended,
          r->extended.empty() ? "" : absl::StrCat(" with ", r->kept_deleted, " deleted rows kept"),
          r->linked > 0
              ? absl::StrCat(
                    ", ", r->linked, " rows linked to the big segment in ",
                    absl::ToInt64Milliseconds(r->link_time), " ms",
                    r->link_cpu > absl::ZeroDuration()
                        ? absl::StrCat(", ", absl::ToInt64Milliseconds(r->link_cpu), " ms of CPU")
                        : "")
              : "",
          ") into v", r->version);
    }
    lock.lock();
    for (const std::string& name : names) merging_.erase(name);
    --merges_running_;
    if (r.ok() && r->version > 0) {
      ++merges_done_;
      ++merge_epoch_;  // The policy may want another, in either lane.
      changed_.notify_all();
    } else if (!r.ok() && !absl::IsAborted(r.status()) && !absl::IsNotFound(r.status())) {
      last_error_ = r.status().ToString();
    }
  }
}

}  // namespace imagesearch::indexer
