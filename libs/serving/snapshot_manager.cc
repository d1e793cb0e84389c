#include "libs/serving/snapshot_manager.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "libs/common/log.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::serving {

namespace {

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
    std::optional<uint64_t> wanted) {
  auto snap = wanted.has_value()
                  ? snapshot::Snapshot::Open(options_.root, *wanted, options_.verify)
                  : snapshot::Snapshot::OpenDir(options_.root, options_.verify);
  if (!snap.ok()) return snap.status();
  const uint64_t version = (*snap)->version();
  auto state = std::make_shared<ServingState>();
  state->snapshot = *snap;
  if (!(*snap)->manifest().model.name.empty() && options_.embedder_factory) {
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
  // The version to load: CURRENT's, or (nullopt) the single version directory.
  std::optional<uint64_t> wanted;
  if (single_version_) {
    if (live) return live->snapshot->version();  // It never changes.
  } else {
    auto current = snapshot::ReadCurrentVersion(options_.root);
    if (!current.ok()) {
      if (live) return live->snapshot->version();
      return current.status();
    }
    if (live && live->snapshot->version() == *current) return *current;
    wanted = *current;
  }
  const std::string name = wanted.has_value() ? absl::StrCat("v", *wanted) : options_.root;
  const uint64_t key = wanted.value_or(0);  // Versions start at 1.
  if (refused_ == key) {
    if (live) return live->snapshot->version();
    return absl::UnavailableError(absl::StrCat("snapshot ", name, " was refused"));
  }
  const absl::Time start = absl::Now();
  auto loaded = Load(wanted);
  if (options_.on_load) options_.on_load(loaded.ok(), absl::Now() - start);
  if (!loaded.ok()) {
    refused_ = key;
    LogError("refusing snapshot ", name, ": ", loaded.status().ToString(),
             live ? absl::StrCat("; still serving v", live->snapshot->version())
                  : std::string("; nothing is served yet"));
    if (live) return live->snapshot->version();
    return loaded.status();
  }
  const snapshot::Snapshot& snap = *(*loaded)->snapshot;
  std::atomic_store(&state_, *loaded);
  LogInfo("serving snapshot ", name, wanted.has_value() ? "" : absl::StrCat(" (v", snap.version(), ")"),
          " (", snap.manifest().count, " vectors, dim ", snap.manifest().dim, ", loaded in ",
          absl::FormatDuration(absl::Now() - start), ")",
          live ? absl::StrCat(", replacing v", live->snapshot->version()) : std::string());
  if (options_.on_swap) options_.on_swap(**loaded);
  return snap.version();
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
