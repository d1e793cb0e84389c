#include "libs/serving/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "libs/common/log.h"
#include "libs/serving/process_stats.h"

namespace imagesearch::serving {
namespace {

using prometheus::Histogram;

Histogram::BucketBoundaries SecondsBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

prometheus::MetricFamily OneSeries(std::string name, std::string help, prometheus::MetricType type,
                                   double value) {
  prometheus::ClientMetric m;
  (type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value) = value;
  return {std::move(name), std::move(help), type, {std::move(m)}};
}

// Read at each scrape, so they need no updating between scrapes.
void AppendProcessFamilies(std::vector<prometheus::MetricFamily>& out) {
  auto stats = ReadProcessStats();
  if (!stats.ok()) {
    LogWarning("metrics: process figures left out: ", stats.status().ToString());
    return;
  }
  const ProcessStats& s = *stats;
  using prometheus::MetricType;
  auto d = [](uint64_t v) { return static_cast<double>(v); };
  out.push_back(OneSeries("process_cpu_seconds_total", "User and system CPU time, in seconds.",
                          MetricType::Counter, s.cpu_seconds));
  out.push_back(OneSeries("process_start_time_seconds", "Start time, in seconds since the epoch.",
                          MetricType::Gauge, s.start_time_seconds));
  out.push_back(OneSeries("process_resident_memory_bytes", "Resident memory size, in bytes.",
                          MetricType::Gauge, d(s.resident_bytes)));
  out.push_back(OneSeries("process_virtual_memory_bytes", "Virtual memory size, in bytes.",
                          MetricType::Gauge, d(s.virtual_bytes)));
  out.push_back(
      OneSeries("process_open_fds", "Open file descriptors.", MetricType::Gauge, d(s.open_fds)));
  out.push_back(OneSeries("process_max_fds", "Limit on open file descriptors.", MetricType::Gauge,
                          d(s.max_fds)));
  out.push_back(
      OneSeries("process_threads", "Threads of the process.", MetricType::Gauge, d(s.threads)));
  out.push_back(OneSeries("imagesearch_malloc_in_use_bytes",
                          "Bytes in allocated heap chunks (glibc mallinfo2). A leak grows this.",
                          MetricType::Gauge, d(s.malloc_in_use_bytes)));
  out.push_back(OneSeries("imagesearch_malloc_system_bytes",
                          "Bytes the heap holds from the system, in use or kept for reuse "
                          "(glibc mallinfo2). Freed memory is kept, so this is the heap's "
                          "high-water mark.",
                          MetricType::Gauge, d(s.malloc_system_bytes)));
}

}  // namespace

Metrics::Metrics(std::string build_version)
    : build_version_(std::move(build_version)),
      registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  requests_ = &prometheus::BuildCounter()
                   .Name("imagesearch_requests_total")
                   .Help("Requests answered, by front end, method and status code.")
                   .Register(r);
  request_seconds_ = &prometheus::BuildHistogram()
                          .Name("imagesearch_request_duration_seconds")
                          .Help("Time from a request's arrival to its answer.")
                          .Register(r);
  inflight_ = &prometheus::BuildGauge()
                   .Name("imagesearch_inflight_requests")
                   .Help("Requests being worked on now.")
                   .Register(r)
                   .Add({});
  batch_size_ = &prometheus::BuildHistogram()
                     .Name("imagesearch_embed_batch_size")
                     .Help("Items per forward pass of the model.")
                     .Register(r);
  queue_seconds_ = &prometheus::BuildHistogram()
                        .Name("imagesearch_embed_queue_seconds")
                        .Help("Time an item waited in the dynamic batcher.")
                        .Register(r);
  encoder_seconds_ = &prometheus::BuildHistogram()
                          .Name("imagesearch_encoder_seconds")
                          .Help("Time of one forward pass of the model (one batch).")
                          .Register(r);
  snapshot_version_ = &prometheus::BuildGauge()
                           .Name("imagesearch_snapshot_version")
                           .Help("Version of the live snapshot (0: none).")
                           .Register(r)
                           .Add({});
  snapshot_vectors_ = &prometheus::BuildGauge()
                           .Name("imagesearch_snapshot_vectors")
                           .Help("Vectors in the live snapshot.")
                           .Register(r)
                           .Add({});
  loading_version_ = &prometheus::BuildGauge()
                          .Name("imagesearch_snapshot_loading_version")
                          .Help("Version a snapshot load in progress reads (0: none runs).")
                          .Register(r)
                          .Add({});
  load_started_ = &prometheus::BuildGauge()
                       .Name("imagesearch_snapshot_load_started_timestamp_seconds")
                       .Help("Unix time the snapshot load in progress started (0: none runs).")
                       .Register(r)
                       .Add({});
  auto& loads = prometheus::BuildCounter()
                    .Name("imagesearch_snapshot_loads_total")
                    .Help("Snapshot versions loaded (ok) or refused as invalid (refused).")
                    .Register(r);
  loads_ok_ = &loads.Add({{"result", "ok"}});
  loads_refused_ = &loads.Add({{"result", "refused"}});
  load_seconds_ = &prometheus::BuildHistogram()
                       .Name("imagesearch_snapshot_load_seconds")
                       .Help("Time to open, verify and warm a snapshot version.")
                       .Register(r)
                       .Add({}, SecondsBuckets());
  build_info_ = &prometheus::BuildGauge()
                     .Name("imagesearch_build_info")
                     .Help("Always 1; labels name the build and the live model.")
                     .Register(r);
  shard_requests_ = &prometheus::BuildCounter()
                         .Name("imagesearch_shard_requests_total")
                         .Help(
                             "imagesearch-router: calls to each shard (with their retries and "
                             "hedges), by final status code.")
                         .Register(r);
  shard_seconds_ = &prometheus::BuildHistogram()
                        .Name("imagesearch_shard_request_duration_seconds")
                        .Help("imagesearch-router: time from a call to a shard to its answer.")
                        .Register(r);
  shard_hedges_ = &prometheus::BuildCounter()
                       .Name("imagesearch_shard_hedges_total")
                       .Help(
                           "imagesearch-router: hedged calls sent to another replica of a "
                           "shard (sent), and those that answered first (won).")
                       .Register(r);
  shard_retries_ = &prometheus::BuildCounter()
                        .Name("imagesearch_shard_retries_total")
                        .Help(
                            "imagesearch-router: calls to a shard retried on another replica "
                            "after UNAVAILABLE or CANCELLED.")
                        .Register(r);
  SetLiveSnapshot(0, 0, "");
}

Metrics::~Metrics() = default;

std::string Metrics::Serialize() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  AppendProcessFamilies(families);
  return prometheus::TextSerializer().Serialize(families);
}

Metrics::RequestSeries Metrics::Series(absl::string_view front, absl::string_view method,
                                       absl::StatusCode code) {
  // Short keys stay in std::string's inline buffer: a hit allocates nothing.
  const std::string key = absl::StrCat(front, "/", method, "/", static_cast<int>(code));
  {
    std::shared_lock<std::shared_mutex> lock(series_mu_);
    if (auto it = series_.find(key); it != series_.end()) return it->second;
  }
  std::unique_lock<std::shared_mutex> lock(series_mu_);
  auto [it, inserted] = series_.try_emplace(key);
  if (inserted) {
    it->second.count = &requests_->Add({{"front", std::string(front)},
                                        {"method", std::string(method)},
                                        {"code", absl::StatusCodeToString(code)}});
    it->second.seconds = &request_seconds_->Add(
        {{"front", std::string(front)}, {"method", std::string(method)}}, SecondsBuckets());
  }
  return it->second;
}

void Metrics::RecordRequest(absl::string_view front, absl::string_view method,
                            absl::StatusCode code, absl::Duration duration) {
  const RequestSeries series = Series(front, method, code);
  series.count->Increment();
  series.seconds->Observe(absl::ToDoubleSeconds(duration));
}

template <typename T>
T* Metrics::ShardSeries(prometheus::Family<T>* family, uint32_t shard, absl::string_view name,
                        absl::string_view value) {
  const std::string key =
      absl::StrCat(reinterpret_cast<uintptr_t>(family), "/", shard, "/", name, "=", value);
  {
    std::shared_lock<std::shared_mutex> lock(series_mu_);
    if (auto it = shard_series_.find(key); it != shard_series_.end()) {
      return static_cast<T*>(it->second);
    }
  }
  std::unique_lock<std::shared_mutex> lock(series_mu_);
  auto [it, inserted] = shard_series_.try_emplace(key);
  if (inserted) {
    prometheus::Labels labels = {{"shard", absl::StrCat(shard)}};
    if (!name.empty()) labels.emplace(std::string(name), std::string(value));
    if constexpr (std::is_same_v<T, Histogram>) {
      it->second = &family->Add(labels, SecondsBuckets());
    } else {
      it->second = &family->Add(labels);
    }
  }
  return static_cast<T*>(it->second);
}

void Metrics::InitShards(uint32_t count) {
  for (uint32_t shard = 0; shard < count; ++shard) {
    ShardSeries(shard_requests_, shard, "code", absl::StatusCodeToString(absl::StatusCode::kOk));
    ShardSeries(shard_seconds_, shard, "", "");
    ShardSeries(shard_hedges_, shard, "result", "sent");
    ShardSeries(shard_hedges_, shard, "result", "won");
    ShardSeries(shard_retries_, shard, "", "");
  }
}

void Metrics::RecordShardCall(uint32_t shard, absl::StatusCode code, absl::Duration duration) {
  ShardSeries(shard_requests_, shard, "code", absl::StatusCodeToString(code))->Increment();
  ShardSeries(shard_seconds_, shard, "", "")->Observe(absl::ToDoubleSeconds(duration));
}

void Metrics::RecordShardHedge(uint32_t shard, bool won) {
  ShardSeries(shard_hedges_, shard, "result", won ? "won" : "sent")->Increment();
}

void Metrics::RecordShardRetry(uint32_t shard) {
  ShardSeries(shard_retries_, shard, "", "")->Increment();
}

void Metrics::AddInflight(int delta) { inflight_->Increment(delta); }

void Metrics::RecordBatch(absl::string_view kind, const BatchStats& stats) {
  const prometheus::Labels labels = {{"kind", std::string(kind)}};
  batch_size_->Add(labels, Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128})
      .Observe(static_cast<double>(stats.size));
  auto& queue = queue_seconds_->Add(labels, SecondsBuckets());
  for (absl::Duration d : stats.queue_times) queue.Observe(absl::ToDoubleSeconds(d));
  encoder_seconds_->Add(labels, SecondsBuckets()).Observe(absl::ToDoubleSeconds(stats.run_time));
}

void Metrics::RecordSnapshotLoadStart(uint64_t version) {
  load_started_->Set(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
  loading_version_->Set(static_cast<double>(version));
}

void Metrics::RecordSnapshotLoadEnd() {
  loading_version_->Set(0);
  load_started_->Set(0);
}

void Metrics::RecordSnapshotLoad(bool ok, absl::Duration duration) {
  (ok ? loads_ok_ : loads_refused_)->Increment();
  if (ok) load_seconds_->Observe(absl::ToDoubleSeconds(duration));
}

void Metrics::SetLiveSnapshot(uint64_t version, uint64_t vectors, absl::string_view model) {
  snapshot_version_->Set(static_cast<double>(version));
  snapshot_vectors_->Set(static_cast<double>(vectors));
  std::lock_guard<std::mutex> lock(build_info_mu_);
  if (build_info_gauge_ != nullptr) build_info_->Remove(build_info_gauge_);
  build_info_gauge_ =
      &build_info_->Add({{"version", build_version_}, {"model", std::string(model)}});
  build_info_gauge_->Set(1);
}

}  // namespace imagesearch::serving
