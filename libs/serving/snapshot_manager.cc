#include "libs/serving/snapshot_manager.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "libs/common/log.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::serving {

namespace {

// Which directory a version is: its number plus the directory's inode and
// change time, so a version removed and published again under the same
// number (after gc, say) is a new directory, and is tried again.
std::string DirIdentity(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return absl::StrCat(dir, "@missing");
  return absl::StrCat(dir, "@", st.st_ino, ":", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec);
}

bool IsSingleVersionDir(const std::string& dir) {
  struct stat st;
  return ::stat((dir + "/" + snapshot::kManifestFile).c_str(), &st) == 0 &&
         ::stat((dir + "/" + snapshot::kCurrentFile).c_str(), &st) != 0;
}

}  // namespace

SnapshotManager::SnapshotManager(SnapshotManagerOptions options)
    : options_(std::move(options)), single_version_(IsSingleVersionDir(options_.root)) {}

SnapshotManager::~SnapshotManager() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

std::shared_ptr<const ServingState> SnapshotManager::Current() const {
  return std::atomic_load(&state_);
}

absl::StatusOr<std::shared_ptr<const ServingState>> SnapshotManager::Load(
    std::optional<uint64_t> wanted, const ServingState* live) {
  auto snap = wanted.has_value()
                  ? snapshot::Snapshot::Open(options_.root, *wanted, options_.verify)
                  : snapshot::Snapshot::OpenDir(options_.root, options_.verify);
  if (!snap.ok()) return snap.status();
  const uint64_t version = (*snap)->version();
  auto state = std::make_shared<ServingState>();
  state->snapshot = *snap;
  const snapshot::ModelIdentity& model = (*snap)->manifest().model;
  if (live != nullptr && live->embedder != nullptr && !model.sha256.empty() &&
      model.sha256 == live->snapshot->manifest().model.sha256 &&
      model.name == live->snapshot->manifest().model.name &&
      live->embedder->dim() == (*snap)->manifest().dim) {
    // The same model (same bytes): keep its loaded, warmed-up embedder and
    // batcher instead of loading the model again. Most new versions (an
    // incremental reindex) change the index, not the model.
    state->embedder = live->embedder;
    return std::shared_ptr<const ServingState>(std::move(state));
  }
  if (!model.name.empty() && options_.embedder_factory) {
    auto embedder = options_.embedder_factory(**snap);
    if (absl::IsUnimplemented(embedder.status())) {
      // No model runtime in this process: serve vector and id queries, and
      // tell image/text queries why they cannot be answered.
      state->embedder_error = std::string(embedder.status().message());
      return std::shared_ptr<const ServingState>(std::move(state));
    }
    if (!embedder.ok()) {
      // The model is part of the snapshot: a snapshot whose model cannot load
      // is refused as a whole, so the previous one keeps serving.
      return absl::Status(embedder.status().code(),
                          absl::StrCat("model of snapshot v", version, ": ",
                                       embedder.status().message()));
    }
    if ((*embedder)->dim() != (*snap)->manifest().dim) {
      return absl::FailedPreconditionError(
          absl::StrCat("model of snapshot v", version, " produces ", (*embedder)->dim(),
                       "-d vectors but the index is ", (*snap)->manifest().dim, "-d"));
    }
    state->embedder = *embedder;
  } else if (!(*snap)->manifest().model.name.empty()) {
    state->embedder_error = "this server was built without a model runtime";
  }
  return std::shared_ptr<const ServingState>(std::move(state));
}

absl::StatusOr<uint64_t> SnapshotManager::PollOnce() {
  std::lock_guard<std::mutex> lock(load_mu_);
  auto live = Current();
  if (single_version_) {
    if (live) return live->snapshot->version();  // It never changes.
    const std::string identity = DirIdentity(options_.root);
    if (refused_ == identity) {
      return absl::UnavailableError(absl::StrCat("snapshot ", options_.root, " was refused"));
    }
    auto loaded = TryLoad(std::nullopt, nullptr);
    if (!loaded.ok()) refused_ = identity;
    return loaded;
  }
  auto current = snapshot::ReadCurrentVersion(options_.root);
  if (!current.ok()) {
    // CURRENT is missing or garbage. Once per distinct error: log it, count
    // it as a refused load, and with nothing live yet, fall back.
    const std::string error = current.status().ToString();
    if (!live && absl::IsNotFound(current.status())) {
      auto versions = snapshot::ListVersions(options_.root);
      if (versions.ok() && versions->empty()) return current.status();  // Nothing published yet.
    }
    if (error == pointer_error_) {
      if (live) return live->snapshot->version();
      return current.status();
    }
    pointer_error_ = error;
    if (options_.on_load) options_.on_load(false, absl::ZeroDuration());
    if (live) {
      LogError("cannot use ", options_.root, "/CURRENT: ", error, "; still serving v",
               live->snapshot->version());
      return live->snapshot->version();
    }
    return FallBack(std::nullopt, current.status());
  }
  pointer_error_.clear();
  if (live && live->snapshot->version() == *current) return *current;
  const std::string identity = DirIdentity(snapshot::VersionDir(options_.root, *current));
  if (refused_ == identity) {
    if (live) return live->snapshot->version();
    return absl::UnavailableError(absl::StrCat("snapshot v", *current, " was refused"));
  }
  auto loaded = TryLoad(*current, live.get());
  if (loaded.ok()) return loaded;
  if (absl::IsAborted(loaded.status())) {  // CURRENT moved on meanwhile; the next poll follows it.
    if (live) return live->snapshot->version();
    return loaded.status();
  }
  refused_ = identity;
  if (live) return live->snapshot->version();
  return FallBack(*current, loaded.status());
}

absl::StatusOr<uint64_t> SnapshotManager::TryLoad(std::optional<uint64_t> wanted,
                                                  const ServingState* live,
                                                  const std::string& fallback_reason) {
  const std::string name = wanted.has_value() ? absl::StrCat("v", *wanted) : options_.root;
  const absl::Time start = absl::Now();
  auto loaded = Load(wanted, live);
  const absl::Duration took = absl::Now() - start;
  // Each outcome is logged before it is counted or served, so whoever sees
  // the metric or the new version move can read the reason already.
  if (!loaded.ok()) {
    // CURRENT may have moved on while this version loaded (an operator
    // rolled back and removed the version, say): then the failure is moot,
    // neither a refusal to count nor a reason to fall back.
    if (wanted.has_value() && fallback_reason.empty()) {
      auto now = snapshot::ReadCurrentVersion(options_.root);
      if (now.ok() && *now != *wanted) {
        LogInfo("v", *wanted, " stopped being CURRENT (now v", *now, ") while it loaded (",
                loaded.status().message(), "); not counted as a refusal");
        return absl::AbortedError(absl::StrCat("v", *wanted, " stopped being CURRENT while it loaded: ",
                                               loaded.status().message()));
      }
    }
    LogError("refusing snapshot ", name, ": ", loaded.status().ToString(),
             live != nullptr ? absl::StrCat("; still serving v", live->snapshot->version())
                             : std::string("; nothing is served yet"));
    if (options_.on_load) options_.on_load(false, took);
    return loaded.status();
  }
  const snapshot::Snapshot& snap = *(*loaded)->snapshot;
  if (!fallback_reason.empty()) {
    LogError("CURRENT cannot be served (", fallback_reason, "); fell back to v", snap.version(),
             ", the most recently promoted version before it that loads");
  }
  LogInfo("serving snapshot ", name, wanted.has_value() ? "" : absl::StrCat(" (v", snap.version(), ")"),
          " (", snap.manifest().count, " vectors, dim ", snap.manifest().dim, ", loaded in ",
          absl::FormatDuration(took), ")",
          live != nullptr ? absl::StrCat(", replacing v", live->snapshot->version()) : std::string());
  if (options_.on_load) options_.on_load(true, took);
  std::atomic_store(&state_, *loaded);
  if (options_.on_swap) options_.on_swap(**loaded);
  return snap.version();
}

absl::StatusOr<uint64_t> SnapshotManager::FallBack(std::optional<uint64_t> refused,
                                                   const absl::Status& why) {
  // The last good state: the most recently promoted version (HISTORY) that
  // loads and, when CURRENT names a version, is older than it, so a fallback
  // never moves forward (to a version an operator rolled back from, or to an
  // unpromoted candidate). Without a HISTORY, the published versions older
  // than the refused one; with neither, there is no telling which version
  // was live, and nothing is served.
  std::vector<uint64_t> candidates;
  auto history = snapshot::PromotionHistory(options_.root);
  if (history.ok() && !history->empty()) {
    for (uint64_t v : *history) {
      if (!refused.has_value() || v < *refused) candidates.push_back(v);
    }
  } else if (!refused.has_value()) {
    LogError("CURRENT cannot be served (", why.ToString(), ") and ", options_.root,
             " has no HISTORY to tell which version was live: nothing is served until CURRENT "
             "names a good version");
    return why;
  } else if (auto versions = snapshot::ListVersions(options_.root); versions.ok()) {
    for (auto v = versions->rbegin(); v != versions->rend(); ++v) {
      if (*v < *refused) candidates.push_back(*v);
    }
  }
  for (uint64_t v : candidates) {
    struct stat st;
    if (::stat(snapshot::VersionDir(options_.root, v).c_str(), &st) != 0) continue;  // Removed.
    auto loaded = TryLoad(v, nullptr, why.ToString());
    if (loaded.ok()) return loaded;
  }
  return why;
}

void SnapshotManager::StartWatching() {
  watcher_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(stop_mu_);
    while (!stop_) {
      lock.unlock();
      auto v = PollOnce();
      (void)v;  // Errors are logged by PollOnce; the watcher just keeps polling.
      lock.lock();
      stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.poll_interval),
                        [this] { return stop_; });
    }
  });
}

}  // namespace imagesearch::serving
