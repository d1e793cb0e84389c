// Keeps the live snapshot (and its model) for the query service: watches
// root/CURRENT, loads and validates a new version completely (and warms its
// model) BEFORE swapping it in, and keeps the old version serving when a new
// one is bad. In-flight requests hold a shared_ptr to the state they started
// with, so a swap never pulls a version out from under them.
//
// How fast a new CURRENT is seen (StartWatching): the watcher waits on
// inotify for root/CURRENT being renamed onto, rewritten or created, and
// polls as soon as one arrives, so a publish is read within milliseconds
// (plus the load) where the volume reports changes. Every poll_interval it
// polls anyway: NFS and some other volumes report no changes made by other
// hosts, and there the interval is the swap latency, as is the case where
// inotify cannot be used (logged once).
//
// Thread-safe. Current() is std::atomic_load of a shared_ptr, which is not
// lock-free: libstdc++ guards it with a mutex from a small pool keyed by the
// pointer's address, held only while the pointer is copied. So readers never
// wait for a load (loads happen on the watcher thread or in PollOnce(),
// outside that mutex); they wait only for each other's copy or the swap's
// pointer store.
#ifndef IMAGESEARCH_LIBS_SERVING_SNAPSHOT_MANAGER_H_
#define IMAGESEARCH_LIBS_SERVING_SNAPSHOT_MANAGER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "libs/serving/embedder.h"
#include "libs/snapshot/snapshot.h"

namespace imagesearch::serving {

// What a request sees: one snapshot and, when it carries a model and a model
// runtime is configured, the embedder for it.
struct ServingState {
  std::shared_ptr<const snapshot::Snapshot> snapshot;
  std::shared_ptr<Embedder> embedder;  // Null for vector-only snapshots.
  std::string embedder_error;          // Why embedder is null, if it should exist.
};

// Makes the embedder for a snapshot's model (load + warm-up + dim check).
// UNIMPLEMENTED means "no model runtime here": the snapshot is still served,
// without image/text queries. Any other error refuses the snapshot.
using EmbedderFactory =
    std::function<absl::StatusOr<std::shared_ptr<Embedder>>(const snapshot::Snapshot&)>;

// What the manager knows when CURRENT cannot be served and nothing is live
// (a start or restart), for ChooseFallback.
struct FallbackInputs {
  // The version CURRENT names, refused; unset when CURRENT is missing or
  // garbage.
  std::optional<uint64_t> current;
  // root/HISTORY: the versions made CURRENT, most recent first, each once
  // (snapshot::PromotionHistory); empty without a HISTORY.
  std::vector<uint64_t> history;
  // The published versions, ascending (snapshot::ListVersions). Consulted
  // only without a HISTORY.
  std::vector<uint64_t> published;
};

// Which version to serve instead of an unusable CURRENT: the last good
// state. The candidates, in order: with a HISTORY, its versions (most recent
// first) older than `current` (all of them when CURRENT names none), so a
// fallback never moves forward, to a version an operator rolled back from
// or to an unpromoted candidate; without one, the published versions older
// than `current`, newest first. `loads(v)` is asked for each candidate in
// that order until one returns true, and that one is the answer.
// NOT_FOUND: no candidate loads. FAILED_PRECONDITION: no HISTORY and CURRENT
// names no version, so nothing tells which version was live (`loads` is not
// asked). It touches nothing but its arguments: the manager's `loads` is
// what opens (and swaps in) a version.
absl::StatusOr<uint64_t> ChooseFallback(const FallbackInputs& in,
                                        const std::function<bool(uint64_t)>& loads);

struct SnapshotManagerOptions {
  // A snapshot root (holds CURRENT and v<N>/), watched for new versions; or
  // one version directory (holds MANIFEST.json, no CURRENT), served as is.
  std::string root;
  snapshot::VerifyMode verify = snapshot::VerifyMode::kChecksums;
  // With verify == kSizes, a swap whose new segments (those the live version
  // does not hold) total at most this many bytes hashes them anyway, which
  // reads them into memory before any query touches them; 0: never.
  uint64_t hash_new_max_bytes = 64ull << 20;
  // How often the watcher reads CURRENT when nothing told it CURRENT
  // changed: the swap latency where inotify reports nothing (see above).
  absl::Duration poll_interval = absl::Milliseconds(500);
  // Whether the watcher waits on inotify for CURRENT to change. false: it
  // only polls, as it effectively does where the volume reports nothing.
  bool use_inotify = true;
  EmbedderFactory embedder_factory;  // May be empty: image/text queries unavailable.
  // Called after every successful swap (e.g. to flip health to SERVING).
  std::function<void(const ServingState&)> on_swap;
  // Called after every load attempt: whether it was swapped in, and how long
  // opening, verifying and warming it took.
  std::function<void(bool ok, absl::Duration took)> on_load;
  // Called as a load starts, with the version it reads (0: a single version
  // directory), before any of its files is read: on a slow or stalled
  // volume the load may take minutes, and this is how an operator sees it.
  std::function<void(uint64_t version)> on_load_start;
  // Called as that load ends, whatever its outcome, before on_load.
  std::function<void()> on_load_end;
};

class SnapshotManager {
 public:
  explicit SnapshotManager(SnapshotManagerOptions options);
  ~SnapshotManager();  // Stops the watcher.
  SnapshotManager(const SnapshotManager&) = delete;
  SnapshotManager& operator=(const SnapshotManager&) = delete;

  // The live state, or null before the first successful load.
  std::shared_ptr<const ServingState> Current() const;

  // Reads CURRENT and, if it names a version not yet live (and not already
  // refused), loads it and swaps it in. Returns the live version afterwards,
  // or the load error. Safe to call concurrently with the watcher.
  //
  // A refused version, or a CURRENT that is missing or garbage, is logged
  // and counted (on_load(false)) once; the live version keeps serving. With
  // nothing live yet (a start or restart), the manager falls back to the last
  // good state: the most recently promoted version (root/HISTORY) that loads
  // and is older than the refused one; without a HISTORY, the newest version
  // older than the refused one; with neither, nothing.
  absl::StatusOr<uint64_t> PollOnce();

  // Starts a background thread that calls PollOnce at once, then whenever
  // inotify reports root/CURRENT renamed onto, closed after writing, or
  // created as something other than a regular file (a regular file is read
  // when its writer closes it, not half written); whenever the root
  // directory is removed or moved, or inotify dropped events (the watch is
  // then set on whatever directory `root` names now); and at the latest
  // poll_interval after the previous call. Without inotify (use_inotify is
  // false, inotify cannot be initialised, or root cannot be watched yet) it
  // only polls; a root that
  // cannot be watched is tried again at every poll. A single version
  // directory is not watched: its thread only polls, as it never changes.
  // Call at most once. The destructor stops the thread without waiting for
  // the interval, and closes its file descriptors.
  void StartWatching();

  // Stops the watcher and waits at most `wait` for its thread to end. False
  // if it is still inside a load then (reading a stalled volume, whose read
  // nothing can interrupt): the thread keeps running, and the caller must
  // end the process without destroying this manager (the destructor would
  // wait for the load). True once the thread has ended, or if none ran.
  bool StopWatching(absl::Duration wait);

  // Whether `root` is one version directory rather than a root.
  bool single_version() const { return single_version_; }

 private:
  // Loads root/v<version>, or the single version directory. A model with
  // the same sha256 as `live`'s (may be null) is not loaded again: the new
  // state shares live's embedder.
  absl::StatusOr<std::shared_ptr<const ServingState>> Load(std::optional<uint64_t> version,
                                                           const ServingState* live);
  // With verify == kSizes: hashes the segments of `snap` opened for it (not
  // shared with the live version) if they total at most hash_new_max_bytes.
  absl::Status HashSmallSwap(const snapshot::Snapshot& snap) const;
  // Load, then swap it in and log; or log the refusal. Reports to on_load.
  // A failed load of the version CURRENT named is not a refusal if CURRENT
  // names another version by then (removed during a rollback, say): that
  // returns ABORTED, logged but not counted, and the next poll follows CURRENT.
  // `fallback_reason` non-empty: this load replaces an unusable CURRENT, and
  // the log says so.
  absl::StatusOr<uint64_t> TryLoad(std::optional<uint64_t> wanted, const ServingState* live,
                                   const std::string& fallback_reason = "");
  // With nothing live: serve the last good state instead of `refused` (or
  // of an unusable CURRENT), as ChooseFallback picks it from root/HISTORY
  // or the published versions; returns `why` if no version loads.
  absl::StatusOr<uint64_t> FallBack(std::optional<uint64_t> refused, const absl::Status& why);
  // The watcher thread's loop, as StartWatching describes it: waits with
  // poll(2) on stop_fd_ and, with `use_inotify`, an inotify watch on root.
  // Returns once stop_fd_ is readable; on an unexpected poll(2) error, logs
  // it and continues as PollEvery.
  void WatchAndPoll(bool use_inotify);
  // The watcher thread's loop without file descriptors: PollOnce every
  // poll_interval until stop_ is set. Used where stop_fd_ cannot be made.
  void PollEvery();
  // The watcher thread's last act: sets watcher_done_ for StopWatching.
  void MarkWatcherDone();

  const SnapshotManagerOptions options_;
  std::shared_ptr<const ServingState> state_;  // Accessed with std::atomic_load/store.
  std::mutex load_mu_;                         // Serialises PollOnce.
  const bool single_version_;
  // The last version directory refused (its path, inode and change time);
  // not retried while CURRENT still names that same directory. Guarded by
  // load_mu_.
  std::string refused_;
  // The last error reading CURRENT, logged once; empty while CURRENT reads.
  std::string pointer_error_;

  // Stopping the watcher: the destructor sets stop_ (and notifies stop_cv_,
  // for PollEvery) and makes stop_fd_, an eventfd, readable (for
  // WatchAndPoll). stop_fd_ is set before the watcher starts and closed
  // after it is joined; -1 when not watching, or when no eventfd could be
  // made.
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  bool watcher_done_ = false;  // Set by the watcher thread as it ends.
  int stop_fd_ = -1;
  std::thread watcher_;
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_SNAPSHOT_MANAGER_H_
