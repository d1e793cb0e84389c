// The query service's Prometheus metrics, in one registry (prometheus-cpp).
// Names follow Prometheus conventions: base units, `_total` for counters.
//
//   imagesearch_requests_total{front,method,code}        counter
//   imagesearch_request_duration_seconds{front,method}   histogram
//   imagesearch_inflight_requests                         gauge
//   imagesearch_embed_batch_size{kind}                    histogram
//   imagesearch_embed_queue_seconds{kind}                 histogram
//   imagesearch_encoder_seconds{kind}                     histogram
//   imagesearch_snapshot_version, imagesearch_snapshot_vectors   gauges
//   imagesearch_snapshot_loads_total{result="ok|refused"} counter
//   imagesearch_snapshot_load_seconds                     histogram
//   imagesearch_snapshot_loading_version, imagesearch_snapshot_load_started_timestamp_seconds
//     gauges: the version a load in progress reads and when it started (both
//     0 when none runs); time() minus the second is how long it has run
//   imagesearch_build_info{version,model}                 gauge, always 1
//   process_{cpu_seconds_total,start_time_seconds,resident_memory_bytes,
//     virtual_memory_bytes,open_fds,max_fds,threads}      the standard process
//                                                         metrics, read at each scrape
//   imagesearch_malloc_in_use_bytes, imagesearch_malloc_system_bytes   gauges,
//     the heap in use and held (process_stats.h says why both)
//
// imagesearch-router adds, per shard of its collection (label `shard`, the
// shard's index):
//   imagesearch_shard_requests_total{shard,code}            counter, one per
//     call to the shard (retries and hedges of it included), by final code
//   imagesearch_shard_request_duration_seconds{shard}       histogram of them
//   imagesearch_shard_hedges_total{shard,result="sent|won"} counter
//   imagesearch_shard_retries_total{shard}                  counter
//
// `code` is the canonical status name (OK, INVALID_ARGUMENT, ...) for every
// front end, so one dashboard covers gRPC and HTTP alike.
//
// One instance per process, owned by main() and passed to whoever records.
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_METRICS_H_
#define IMAGESEARCH_LIBS_SERVING_METRICS_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "libs/serving/dynamic_batcher.h"

namespace prometheus {
class Registry;
class Gauge;
class Counter;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace imagesearch::serving {

class Metrics {
 public:
  explicit Metrics(std::string build_version);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The Prometheus text exposition format (version 0.0.4).
  std::string Serialize() const;

  void RecordRequest(absl::string_view front, absl::string_view method, absl::StatusCode code,
                     absl::Duration duration);
  void AddInflight(int delta);
  // kind: "image" or "text".
  void RecordBatch(absl::string_view kind, const BatchStats& stats);
  void RecordSnapshotLoadStart(uint64_t version);
  void RecordSnapshotLoadEnd();
  void RecordSnapshotLoad(bool ok, absl::Duration duration);
  // After a swap: the live version, its size and its model ("" if none).
  void SetLiveSnapshot(uint64_t version, uint64_t vectors, absl::string_view model);

  // imagesearch-router's calls to its shards. InitShards exports every
  // shard's series at zero from the start, so that rate() and alerts see a
  // counter before its first event.
  void InitShards(uint32_t count);
  void RecordShardCall(uint32_t shard, absl::StatusCode code, absl::Duration duration);
  void RecordShardHedge(uint32_t shard, bool won);
  void RecordShardRetry(uint32_t shard);

 private:
  // The counter and histogram of one (front, method, code), looked up in the
  // families once and then kept: a request records without building labels.
  struct RequestSeries {
    prometheus::Counter* count = nullptr;
    prometheus::Histogram* seconds = nullptr;
  };
  RequestSeries Series(absl::string_view front, absl::string_view method, absl::StatusCode code);
  // A shard family's series for these labels, added once and then kept.
  template <typename T>
  T* ShardSeries(prometheus::Family<T>* family, uint32_t shard, absl::string_view name,
                 absl::string_view value);

  const std::string build_version_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* request_seconds_;
  prometheus::Gauge* inflight_;
  prometheus::Family<prometheus::Histogram>* batch_size_;
  prometheus::Family<prometheus::Histogram>* queue_seconds_;
  prometheus::Family<prometheus::Histogram>* encoder_seconds_;
  prometheus::Gauge* snapshot_version_;
  prometheus::Gauge* snapshot_vectors_;
  prometheus::Gauge* loading_version_;
  prometheus::Gauge* load_started_;
  prometheus::Counter* loads_ok_;
  prometheus::Counter* loads_refused_;
  prometheus::Histogram* load_seconds_;
  prometheus::Family<prometheus::Gauge>* build_info_;
  prometheus::Family<prometheus::Counter>* shard_requests_;
  prometheus::Family<prometheus::Histogram>* shard_seconds_;
  prometheus::Family<prometheus::Counter>* shard_hedges_;
  prometheus::Family<prometheus::Counter>* shard_retries_;
  // A std::shared_mutex, not absl::Mutex: Debian's libabsl is not built for
  // ThreadSanitizer, which would see neither its locking nor the order it
  // gives (ci/build_tsan.sh checks the services' threads calling in here).
  std::shared_mutex series_mu_;
  absl::flat_hash_map<std::string, RequestSeries> series_;  // Guarded by series_mu_.
  absl::flat_hash_map<std::string, void*> shard_series_;    // Guarded by series_mu_.
  std::mutex build_info_mu_;
  prometheus::Gauge* build_info_gauge_ = nullptr;  // Guarded by build_info_mu_.
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_METRICS_H_
