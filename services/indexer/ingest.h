// The ingest service's core, independent of gRPC: the one writer of a
// snapshot root, which makes images and vectors searchable within seconds.
//
//   Upsert/Delete -> pending rows and deletes (checked item by item)
//     -> publisher thread: every publish_interval, or at publish_rows, or on
//        Flush: PublishUpdate(CURRENT + one new segment + deletes)
//     -> waiters answered with the version (acknowledged = published)
//     -> two merger threads: MergeSegments when the merge policy asks for
//        one, each on segments the other does not hold (so that the tail
//        keeps being joined while a long fold runs)
//
// Durability: a write is acknowledged only once PublishUpdate has returned,
// i.e. the version holding it is fsync'd and CURRENT names it (or a later
// version); a crash before that loses it, and its caller got no
// acknowledgement. Only one ingest service may run on a root: Start takes an
// exclusive flock on root/.ingest.lock and refuses if another process holds
// it (publishes themselves serialise on root/.lock with every other writer).
//
// Thread-safe: any number of threads may call Upsert/Delete/Flush/Status.
#ifndef IMAGESEARCH_SERVICES_INDEXER_INGEST_H_
#define IMAGESEARCH_SERVICES_INDEXER_INGEST_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "libs/image/image.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"
#include "libs/model/model_bundle.h"
#include "libs/serving/filter.h"
#include "libs/snapshot/attribute_table.h"
#include "libs/snapshot/manifest.h"
#include "libs/snapshot/merge_policy.h"
#include "libs/snapshot/shard.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::indexer {

inline constexpr char kIngestLockFile[] = ".ingest.lock";

struct IngestOptions {
  std::string root;
  // The model for image items. Default: the model of CURRENT's version; on a
  // root with no version yet, this one (it is published with the first
  // version). Empty on an empty root: a vector-only collection of `dim`.
  std::string model_path;
  int dim = 0;                                    // Vector-only new roots.
  index::Metric metric = index::Metric::kCosine;  // Vector-only new roots.
  // Which shard of a collection the root is: default CURRENT's; this one on
  // an empty root (published with its first version). Items whose id belongs
  // to another shard are rejected one by one.
  snapshot::ShardInfo shard;
  // Attribute schema of the rows written: this one if given (on a root with
  // versions too, as imagesearch-indexer --base --schema; a merge re-types
  // older rows under the newest schema), else CURRENT's (the newest
  // segment's).
  std::vector<snapshot::FieldSpec> schema;
  absl::Duration publish_interval = absl::Seconds(1);
  size_t publish_rows = 10'000;
  // Pending rows beyond this refuse writes with RESOURCE_EXHAUSTED (the
  // publisher has fallen behind).
  size_t max_pending_rows = 200'000;
  index::HnswParams hnsw;
  int default_ef = 64;
  bool thumbnails = true;
  image::ThumbnailOptions thumbnail;
  bool merge = true;  // Run the merge policy after publishes.
  snapshot::MergePolicy merge_policy;
  int encoder_threads = 0;  // LibTorch intra-op threads; 0: from the CPUs.
  // A model already loaded, used instead of loading the root's (or
  // model_path) when its model.pt has this sha256: the shard roots of one
  // collection share one copy (IngestShards).
  std::shared_ptr<const model::ModelBundle> shared_model;
  std::string shared_model_sha256;
  // The nice value of the merger threads (and the graph-build threads a merge
  // starts, which inherit it): merges yield the cores to query replicas and
  // to the publisher, whose builds are on the path to freshness. 0: unchanged.
  int background_nice = 10;
  // Test hook: called by a merger thread with the segments it chose, before
  // it merges them (the other merger thread chooses and merges meanwhile).
  std::function<void(const std::vector<std::string>&)> before_merge;
};

struct IngestItem {
  std::string id;
  std::string uri;
  std::string attributes_json;
  bool is_image = false;
  std::string image;          // Encoded image bytes, when is_image.
  std::vector<float> vector;  // Otherwise.
};

struct WriteOutcome {
  std::vector<absl::Status> items;  // Per item, in order: OK = accepted.
  uint64_t version = 0;             // The version holding them (0 without wait).
  // The batch they joined, for WaitPublished; 0 when none was accepted.
  uint64_t generation = 0;
};

struct IngestStatus {
  uint64_t pending_rows = 0;
  uint64_t pending_deletes = 0;
  uint64_t last_published = 0;
  uint64_t current_version = 0;
  uint32_t segments = 0;
  uint64_t live_rows = 0;
  uint32_t merges_running = 0;
  uint64_t merges_done = 0;
  std::string last_error;
};

class IngestCore {
 public:
  // Takes the root's ingest lock (FAILED_PRECONDITION naming the root if
  // another process holds it), loads the model if there is one, and starts
  // the publisher and merger threads.
  static absl::StatusOr<std::unique_ptr<IngestCore>> Start(const IngestOptions& options);
  ~IngestCore();  // Stops the threads; waiters of unpublished writes get UNAVAILABLE.

  // Stops the publisher and merger threads and waits at most `wait` for them
  // to end. False if one is still working then (a merge of a big segment
  // takes a minute; a publish on a stalled volume, as long as the volume
  // stalls): the caller may end the process instead of destroying this core,
  // whose destructor would wait. That is safe: an unfinished merge or publish
  // is what a crash leaves, its temp files are removed by the next start
  // (under the root's lock), and nothing acknowledged depends on it.
  bool StopWithin(absl::Duration wait);
  IngestCore(const IngestCore&) = delete;
  IngestCore& operator=(const IngestCore&) = delete;

  // Accepts the items that check out (others get INVALID_ARGUMENT in their
  // outcome); with `wait`, returns once they are published, or the publish
  // error (their writes are then lost). DEADLINE_EXCEEDED if `deadline`
  // passes first (the writes stay pending and will be published).
  absl::StatusOr<WriteOutcome> Upsert(std::vector<IngestItem> items, bool wait,
                                      absl::Time deadline);
  // The version that published batch `generation` (WriteOutcome::generation;
  // 0: nothing to wait for, the last published version), once it is
  // published; its publish error; or DEADLINE_EXCEEDED. Upsert without wait
  // and then this is Upsert with wait, with the writes accepted in call order
  // and the waits free to overlap (the streaming upsert).
  absl::StatusOr<uint64_t> WaitPublished(uint64_t generation, absl::Time deadline);
  absl::StatusOr<uint64_t> Delete(const std::vector<std::string>& ids, bool wait,
                                  absl::Time deadline);
  // The ids of CURRENT's live rows that pass `filter` (none on a root with
  // no version yet), for Delete. INVALID_ARGUMENT for a filter with no
  // condition (it would match every row) or one the version cannot evaluate
  // (an unknown field, a wrong type: serving::EvaluateFilter's errors).
  absl::StatusOr<std::vector<std::string>> IdsMatching(const serving::Filter& filter) const;
  // Publishes what is pending now; the version holding every write accepted
  // before the call (CURRENT's when nothing was pending).
  absl::StatusOr<uint64_t> Flush(absl::Time deadline);
  IngestStatus Status() const;
  int dim() const { return dim_; }
  // The attribute fields of the rows it writes (empty: none typed).
  const std::vector<snapshot::FieldSpec>& schema() const { return schema_; }
  const snapshot::ShardInfo& shard() const { return shard_; }
  // The model (null: vector-only) and its model.pt's sha256.
  std::shared_ptr<const model::ModelBundle> model() const { return bundle_; }
  const std::string& model_sha256() const { return model_sha256_; }

 private:
  struct Row {
    std::vector<float> vector;
    std::string uri, attributes_json, thumbnail;
    std::vector<snapshot::AttrValue> typed;
  };
  IngestCore() = default;
  absl::Status CheckAndEmbed(std::vector<IngestItem>* items, std::vector<absl::Status>* outcome,
                             std::vector<Row>* rows) const;
  // Waits until generation `gen` is published (or failed) or the deadline.
  absl::StatusOr<uint64_t> WaitPublished(std::unique_lock<std::mutex>& lock, uint64_t gen,
                                         absl::Time deadline);
  void PublisherLoop();
  void MergerLoop();  // One per merge lane.
  absl::StatusOr<uint64_t> PublishBatch(std::map<std::string, Row> rows,
                                        std::set<std::string> deletes);

  IngestOptions options_;
  int lock_fd_ = -1;
  std::shared_ptr<const model::ModelBundle> bundle_;  // Null: vector-only.
  int dim_ = 0;
  index::Metric metric_ = index::Metric::kCosine;
  std::vector<snapshot::FieldSpec> schema_;
  snapshot::ShardInfo shard_;
  std::string model_sha256_;
  std::string model_path_;  // Published with the first version of an empty root.
  snapshot::ModelIdentity model_identity_;
  // Every version this process opens (publishes, merges, Status), so that
  // the big segment stays mapped between them (snapshot::VersionCache).
  mutable snapshot::VersionCache versions_;

  mutable std::mutex mu_;
  std::condition_variable changed_;  // Pending, published or stop changed.
  std::map<std::string, Row> pending_;
  std::set<std::string> pending_deletes_;
  absl::Time pending_since_ = absl::InfinitePast();
  bool flush_requested_ = false;
  uint64_t open_gen_ = 1;                         // The generation new writes join.
  uint64_t published_gen_ = 0;                    // Every generation <= this is settled.
  std::map<uint64_t, uint64_t> settled_;          // Recent published versions by generation.
  std::map<uint64_t, absl::Status> failed_gens_;  // Every failed generation's error.
  uint64_t last_published_ = 0;
  std::string last_error_;
  bool stop_ = false;
  int threads_running_ = 0;  // Publisher and merger threads not yet ended.
  // Bumped by each publish and each merge published: the merger threads
  // then ask the policy again.
  uint64_t merge_epoch_ = 0;
  std::set<std::string> merging_;  // Segments the running merges hold.
  std::mutex choose_mu_;           // One merger thread chooses at a time.
  uint32_t merges_running_ = 0;
  uint64_t merges_done_ = 0;
  std::thread publisher_;
  std::vector<std::thread> mergers_;
};

}  // namespace imagesearch::indexer

#endif  // IMAGESEARCH_SERVICES_INDEXER_INGEST_H_
