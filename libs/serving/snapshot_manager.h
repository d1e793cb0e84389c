// Keeps the live snapshot (and its model) for the query service: watches
// root/CURRENT, loads and validates a new version completely (and warms its
// model) BEFORE swapping it in, and keeps the old version serving when a new
// one is bad. In-flight requests hold a shared_ptr to the state they started
// with, so a swap never pulls a version out from under them.
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

struct SnapshotManagerOptions {
  // A snapshot root (holds CURRENT and v<N>/), watched for new versions; or
  // one version directory (holds MANIFEST.json, no CURRENT), served as is.
  std::string root;
  snapshot::VerifyMode verify = snapshot::VerifyMode::kChecksums;
  absl::Duration poll_interval = absl::Milliseconds(500);
  EmbedderFactory embedder_factory;  // May be empty: image/text queries unavailable.
  // Called after every successful swap (e.g. to flip health to SERVING).
  std::function<void(const ServingState&)> on_swap;
  // Called after every load attempt: whether it was swapped in, and how long
  // opening, verifying and warming it took.
  std::function<void(bool ok, absl::Duration took)> on_load;
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

  // Starts a background thread calling PollOnce every poll_interval.
  void StartWatching();

  // Whether `root` is one version directory rather than a root.
  bool single_version() const { return single_version_; }

 private:
  // Loads root/v<version>, or the single version directory. A model with
  // the same sha256 as `live`'s (may be null) is not loaded again: the new
  // state shares live's embedder.
  absl::StatusOr<std::shared_ptr<const ServingState>> Load(std::optional<uint64_t> version,
                                                           const ServingState* live);
  // Load, then swap it in and log; or log the refusal. Reports to on_load.
  // A failed load of the version CURRENT named is not a refusal if CURRENT
  // names another version by then (removed during a rollback, say): that
  // returns ABORTED, logged but not counted, and the next poll follows CURRENT.
  // `fallback_reason` non-empty: this load replaces an unusable CURRENT, and
  // the log says so.
  absl::StatusOr<uint64_t> TryLoad(std::optional<uint64_t> wanted, const ServingState* live,
                                   const std::string& fallback_reason = "");
  // With nothing live: serve the last good state instead of `refused` (or
  // of an unusable CURRENT); returns `why` if no version loads.
  absl::StatusOr<uint64_t> FallBack(std::optional<uint64_t> refused, const absl::Status& why);

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

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread watcher_;
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_SNAPSHOT_MANAGER_H_
