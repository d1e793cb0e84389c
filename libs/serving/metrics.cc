#include "libs/serving/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace imagesearch::serving {
namespace {

using prometheus::Histogram;

Histogram::BucketBoundaries SecondsBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
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
  SetLiveSnapshot(0, 0, "");
}

Metrics::~Metrics() = default;

std::string Metrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

Metrics::RequestSeries Metrics::Series(absl::string_view front, absl::string_view method,
                                       absl::StatusCode code) {
  // Short keys stay in std::string's inline buffer: a hit allocates nothing.
  const std::string key = absl::StrCat(front, "/", method, "/", static_cast<int>(code));
  {
    absl::ReaderMutexLock lock(&series_mu_);
    if (auto it = series_.find(key); it != series_.end()) return it->second;
  }
  absl::MutexLock lock(&series_mu_);
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

void Metrics::AddInflight(int delta) { inflight_->Increment(delta); }

void Metrics::RecordBatch(absl::string_view kind, const BatchStats& stats) {
  const prometheus::Labels labels = {{"kind", std::string(kind)}};
  batch_size_->Add(labels, Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128})
      .Observe(static_cast<double>(stats.size));
  auto& queue = queue_seconds_->Add(labels, SecondsBuckets());
  for (absl::Duration d : stats.queue_times) queue.Observe(absl::ToDoubleSeconds(d));
  encoder_seconds_->Add(labels, SecondsBuckets()).Observe(absl::ToDoubleSeconds(stats.run_time));
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
