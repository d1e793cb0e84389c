#include "libs/serving/snapshot_manager.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
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

// What the watch on a root reports: CURRENT renamed onto (a publish or
// set-current), closed after writing (rewritten in place) or created; and
// the root itself removed or moved away.
constexpr uint32_t kRootEvents =
    IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

// Watches a snapshot root for changes to root/CURRENT with inotify.
// Not thread-safe: the watcher thread owns it.
class CurrentWatch {
 public:
  // An inotify instance that watches nothing yet; fd() is -1 when inotify
  // cannot be initialised (logged).
  explicit CurrentWatch(std::string root) : root_(std::move(root)) {
    fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd_ < 0) {
      LogWarning("cannot watch ", root_,
                 "/CURRENT: ", ErrnoStatus(errno, "inotify_init1").message(),
                 "; new versions are seen by polling");
    }
  }
  ~CurrentWatch() {
    if (fd_ >= 0) ::close(fd_);
  }
  CurrentWatch(const CurrentWatch&) = delete;
  CurrentWatch& operator=(const CurrentWatch&) = delete;

  // The inotify descriptor to poll(2) for POLLIN, or -1.
  int fd() const { return fd_; }

  // Watches the directory `root` names now: a directory that replaced the
  // one watched so far is watched instead. A failure is logged once per
  // distinct error; without a watch, only polls see new versions.
  void Arm() {
    if (fd_ < 0) return;
    const int wd = ::inotify_add_watch(fd_, root_.c_str(), kRootEvents);
    if (wd < 0) {
      const std::string error(ErrnoStatus(errno, "inotify_add_watch").message());
      Disarm();  // Whatever is watched, if anything, is not root any more.
      if (error != error_) {
        error_ = error;
        LogWarning("cannot watch ", root_, "/CURRENT: ", error,
                   "; new versions are seen by polling until it can");
      }
      return;
    }
    if (wd != wd_) {
      Disarm();  // Root was replaced: stop watching the old directory.
      if (!watched_once_ || !error_.empty()) {
        LogInfo("watching ", root_, "/CURRENT with inotify");
      }
      watched_once_ = true;
    }
    wd_ = wd;
    error_.clear();
  }

  // Reads every pending event. Returns whether CURRENT may have changed: an
  // event for CURRENT, the watched root removed or moved (the caller Arms
  // again), or events lost to a queue overflow. A CURRENT created as a
  // regular file is read when its writer closes it (IN_CLOSE_WRITE), not at
  // creation, when it may still be empty.
  bool Drain() {
    bool changed = false;
    alignas(struct inotify_event) char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EAGAIN: drained (other errors: the next poll reads CURRENT anyway).
      for (ssize_t at = 0; at < n;) {
        const auto* ev = reinterpret_cast<const struct inotify_event*>(buf + at);
        at += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
        if (ev->mask & IN_Q_OVERFLOW) {
          changed = true;
          continue;
        }
        if (ev->wd != wd_) continue;  // A directory no longer watched.
        if (ev->mask & IN_IGNORED) {  // The watch is gone (root removed, unmounted).
          wd_ = -1;
          changed = true;
          continue;
        }
        if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
          changed = true;
          continue;
        }
        if (ev->len == 0 || std::strcmp(ev->name, snapshot::kCurrentFile) != 0) continue;
        if (ev->mask & (IN_MOVED_TO | IN_CLOSE_WRITE)) {
          changed = true;
        } else if (ev->mask & IN_CREATE) {
          struct stat st;
          const std::string path = root_ + "/" + snapshot::kCurrentFile;
          if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) changed = true;
        }
      }
    }
    return changed;
  }

 private:
  void Disarm() {
    if (wd_ >= 0) ::inotify_rm_watch(fd_, wd_);
    wd_ = -1;
  }

  const std::string root_;
  int fd_ = -1;
  int wd_ = -1;
  std::string error_;  // The last failure to watch root, logged; empty while watched.
  bool watched_once_ = false;
};

}  // namespace

absl::StatusOr<uint64_t> ChooseFallback(const FallbackInputs& in,
                                        const std::function<bool(uint64_t)>& loads) {
  if (in.history.empty() && !in.current.has_value()) {
    return absl::FailedPreconditionError(
        "no HISTORY, and CURRENT names no version: nothing tells which version was live");
  }
  const bool from_history = !in.history.empty();
  const std::vector<uint64_t> newest_first =
      from_history ? in.history : std::vector<uint64_t>(in.published.rbegin(), in.published.rend());
  for (uint64_t v : newest_first) {
    if ((!in.current.has_value() || v < *in.current) && loads(v)) return v;
  }
  return absl::NotFoundError(absl::StrCat(
      "no ", from_history ? "version in HISTORY" : "published version",
      in.current.has_value() ? absl::StrCat(" older than v", *in.current) : "", " loads"));
}

SnapshotManager::SnapshotManager(SnapshotManagerOptions options)
    : options_(std::move(options)), single_version_(IsSingleVersionDir(options_.root)) {}

SnapshotManager::~SnapshotManager() {
  StopWatching(absl::ZeroDuration());
  if (watcher_.joinable()) watcher_.join();
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

bool SnapshotManager::StopWatching(absl::Duration wait) {
  std::unique_lock<std::mutex> lock(stop_mu_);
  if (!stop_) {
    stop_ = true;
    stop_cv_.notify_all();
    if (stop_fd_ >= 0) {
      const uint64_t one = 1;
      while (::write(stop_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
      }
    }
  }
  if (!watcher_.joinable()) return true;
  if (!stop_cv_.wait_for(lock, absl::ToChronoNanoseconds(wait), [this] { return watcher_done_; })) {
    return false;
  }
  lock.unlock();
  watcher_.join();
  return true;
}

std::shared_ptr<const ServingState> SnapshotManager::Current() const {
  return std::atomic_load(&state_);
}

// With --verify=sizes nothing of a new version is read at load, so the first
// queries to touch a new segment would page it in from the volume, each
// waiting for its reads (on a slow or stalled volume, that long). A swap that
// adds little (an ingest publish, a tail join, an incremental build) is
// hashed anyway: its pages are then in memory before a query needs them, a
// slow volume delays the swap instead of the queries, and a corrupt new
// segment is refused. A large one (a full rebuild) is not, so that replicas
// sharing a volume do not all read it through at once.
absl::Status SnapshotManager::HashSmallSwap(const snapshot::Snapshot& snap) const {
  uint64_t bytes = 0;
  for (const snapshot::SegmentRef& s : snap.segments()) {
    if (!s.opened_here) continue;
    for (const auto& [name, file] : s.segment->manifest().files) bytes += file.size;
  }
  if (bytes == 0 || bytes > options_.hash_new_max_bytes) return absl::OkStatus();
  for (const snapshot::SegmentRef& s : snap.segments()) {
    if (!s.opened_here) continue;
    absl::Status st = snapshot::VerifyFiles(s.segment->dir(), s.segment->manifest().files,
                                            snapshot::VerifyMode::kChecksums);
    if (!st.ok()) {
      return absl::Status(
          st.code(), absl::StrCat("segment ", s.name.empty() ? "0" : s.name, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const ServingState>> SnapshotManager::Load(
    std::optional<uint64_t> wanted, const ServingState* live) {
  // Segments the live version holds are shared, not opened and verified
  // again: a version that adds a small segment loads in the time of that one.
  const snapshot::Snapshot* reuse = live != nullptr ? live->snapshot.get() : nullptr;
  auto snap =
      wanted.has_value()
          ? snapshot::Snapshot::Open(options_.root, *wanted, options_.verify, reuse)
          : snapshot::Snapshot::OpenDir(options_.root, options_.verify, std::nullopt, reuse);
  if (!snap.ok()) return snap.status();
  // The joint graph of its big segment and tails, built here (or taken from
  // the live version) so that no query waits for it.
  (void)(*snap)->joint();
  if (live != nullptr && options_.verify == snapshot::VerifyMode::kSizes) {
    RETURN_IF_ERROR(HashSmallSwap(**snap));
  }
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
      return absl::Status(
          embedder.status().code(),
          absl::StrCat("model of snapshot v", version, ": ", embedder.status().message()));
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
  if (options_.on_load_start) options_.on_load_start(wanted.value_or(0));
  auto loaded = Load(wanted, live);
  const absl::Duration took = absl::Now() - start;
  if (options_.on_load_end) options_.on_load_end();
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
        return absl::AbortedError(absl::StrCat(
            "v", *wanted, " stopped being CURRENT while it loaded: ", loaded.status().message()));
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
  LogInfo(
      "serving snapshot ", name, wanted.has_value() ? "" : absl::StrCat(" (v", snap.version(), ")"),
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
  FallbackInputs in;
  in.current = refused;
  if (auto history = snapshot::PromotionHistory(options_.root); history.ok()) {
    in.history = *std::move(history);
  }
  if (in.history.empty() && refused.has_value()) {
    if (auto versions = snapshot::ListVersions(options_.root); versions.ok()) {
      in.published = *std::move(versions);
    }
  }
  auto chosen = ChooseFallback(in, [&](uint64_t v) {
    struct stat st;
    if (::stat(snapshot::VersionDir(options_.root, v).c_str(), &st) != 0) return false;  // Removed.
    return TryLoad(v, nullptr, why.ToString()).ok();
  });
  if (absl::IsFailedPrecondition(chosen.status())) {
    LogError("CURRENT cannot be served (", why.ToString(), ") and ", options_.root,
             " has no HISTORY to tell which version was live: nothing is served until CURRENT "
             "names a good version");
  }
  if (!chosen.ok()) return why;
  return chosen;
}

void SnapshotManager::StartWatching() {
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) {
    LogWarning("cannot make an eventfd (", ErrnoStatus(errno, "eventfd").message(),
               "): new versions are seen by polling every ",
               absl::FormatDuration(options_.poll_interval));
    watcher_ = std::thread([this] {
      PollEvery();
      MarkWatcherDone();
    });
    return;
  }
  watcher_ = std::thread([this] {
    WatchAndPoll(/*use_inotify=*/options_.use_inotify && !single_version_);
    MarkWatcherDone();
  });
}

void SnapshotManager::MarkWatcherDone() {
  std::lock_guard<std::mutex> lock(stop_mu_);
  watcher_done_ = true;
  stop_cv_.notify_all();
}

void SnapshotManager::WatchAndPoll(bool use_inotify) {
  std::optional<CurrentWatch> watch;
  if (use_inotify) watch.emplace(options_.root);
  const int watch_fd = watch.has_value() ? watch->fd() : -1;
  using Clock = std::chrono::steady_clock;
  // poll(2) takes an int of milliseconds: ~24 days at most.
  const std::chrono::milliseconds interval(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(options_.poll_interval), 0, INT_MAX));
  for (;;) {
    // Armed before CURRENT is read, so a change after the read is an event.
    if (watch.has_value()) watch->Arm();
    auto v = PollOnce();
    (void)v;  // Errors are logged by PollOnce; the watcher just keeps polling.
    const Clock::time_point next_poll = Clock::now() + interval;
    for (bool changed = false; !changed;) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(next_poll - Clock::now());
      struct pollfd fds[2] = {{stop_fd_, POLLIN, 0}, {watch_fd, POLLIN, 0}};
      const int n =
          ::poll(fds, watch_fd >= 0 ? 2 : 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
      if (n < 0) {
        if (errno == EINTR) continue;
        LogError("the watcher of ", options_.root, " stops waiting on inotify (",
                 ErrnoStatus(errno, "poll").message(), "); it polls every ",
                 absl::FormatDuration(options_.poll_interval), " from now on");
        PollEvery();
        return;
      }
      if (fds[0].revents != 0) return;  // Stopped.
      if (n == 0) break;                // The interval passed.
      if (fds[1].revents != 0) changed = watch->Drain();
    }
  }
}

void SnapshotManager::PollEvery() {
  std::unique_lock<std::mutex> lock(stop_mu_);
  while (!stop_) {
    lock.unlock();
    auto v = PollOnce();
    (void)v;  // Errors are logged by PollOnce; the watcher just keeps polling.
    lock.lock();
    stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.poll_interval),
                      [this] { return stop_; });
  }
}

}  // namespace imagesearch::serving
