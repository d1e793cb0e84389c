#include "libs/serving/metrics.h"

#include <catch2/catch.hpp>

namespace imagesearch::serving {
namespace {

bool Has(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST_CASE("The router's shard series are labelled by shard and counted per call") {
  Metrics m("1.2.3");
  m.RecordShardCall(0, absl::StatusCode::kOk, absl::Milliseconds(2));
  m.RecordShardCall(0, absl::StatusCode::kOk, absl::Milliseconds(3));
  m.RecordShardCall(1, absl::StatusCode::kUnavailable, absl::Milliseconds(9));
  m.RecordShardHedge(1, false);
  m.RecordShardHedge(1, false);
  m.RecordShardHedge(1, true);
  m.RecordShardRetry(1);
  const std::string t = m.Serialize();
  CHECK(Has(t, "imagesearch_shard_requests_total{code=\"OK\",shard=\"0\"} 2"));
  CHECK(Has(t, "imagesearch_shard_requests_total{code=\"UNAVAILABLE\",shard=\"1\"} 1"));
  CHECK(Has(t, "imagesearch_shard_request_duration_seconds_count{shard=\"0\"} 2"));
  CHECK(Has(t, "imagesearch_shard_request_duration_seconds_count{shard=\"1\"} 1"));
  CHECK(Has(t, "imagesearch_shard_hedges_total{result=\"sent\",shard=\"1\"} 2"));
  CHECK(Has(t, "imagesearch_shard_hedges_total{result=\"won\",shard=\"1\"} 1"));
  CHECK(Has(t, "imagesearch_shard_retries_total{shard=\"1\"} 1"));
  CHECK_FALSE(Has(t, "imagesearch_shard_retries_total{shard=\"0\"}"));
  // Once the router knows its shards, each one's series exist from zero.
  m.InitShards(3);
  const std::string z = m.Serialize();
  CHECK(Has(z, "imagesearch_shard_retries_total{shard=\"0\"} 0"));
  CHECK(Has(z, "imagesearch_shard_hedges_total{result=\"won\",shard=\"2\"} 0"));
  CHECK(Has(z, "imagesearch_shard_requests_total{code=\"OK\",shard=\"0\"} 2"));
  CHECK(Has(z, "imagesearch_shard_retries_total{shard=\"1\"} 1"));
}

TEST_CASE("Metrics are exported in Prometheus text format with the documented names") {
  Metrics m("1.2.3");
  m.RecordRequest("grpc", "Search", absl::StatusCode::kOk, absl::Milliseconds(3));
  m.RecordRequest("grpc", "Search", absl::StatusCode::kOk, absl::Milliseconds(3));
  m.RecordRequest("http", "Search", absl::StatusCode::kNotFound, absl::Milliseconds(1));
  m.RecordRequest("grpc", "Search", absl::StatusCode::kInvalidArgument, absl::Milliseconds(1));
  m.RecordRequest("grpc", "SearchBatch", absl::StatusCode::kOk, absl::Milliseconds(1));
  m.AddInflight(2);
  m.AddInflight(-1);
  BatchStats b;
  b.size = 3;
  b.queue_times = {absl::Milliseconds(1), absl::Milliseconds(2), absl::Milliseconds(3)};
  b.run_time = absl::Milliseconds(40);
  m.RecordBatch("image", b);
  m.RecordSnapshotLoad(true, absl::Milliseconds(20));
  m.RecordSnapshotLoad(false, absl::Milliseconds(5));
  m.SetLiveSnapshot(7, 1000, "mobilenet");
  const std::string t = m.Serialize();
  CHECK(Has(t, "imagesearch_requests_total{code=\"OK\",front=\"grpc\",method=\"Search\"} 2"));
  CHECK(
      Has(t, "imagesearch_requests_total{code=\"NOT_FOUND\",front=\"http\",method=\"Search\"} 1"));
  CHECK(Has(
      t,
      "imagesearch_requests_total{code=\"INVALID_ARGUMENT\",front=\"grpc\",method=\"Search\"} 1"));
  CHECK(Has(t, "imagesearch_requests_total{code=\"OK\",front=\"grpc\",method=\"SearchBatch\"} 1"));
  // One duration histogram per (front, method), whatever the code.
  CHECK(Has(t, "imagesearch_request_duration_seconds_count{front=\"grpc\",method=\"Search\"} 3"));
  CHECK(Has(t, "imagesearch_request_duration_seconds_count{front=\"http\",method=\"Search\"} 1"));
  CHECK(Has(t, "imagesearch_inflight_requests 1"));
  CHECK(Has(t, "imagesearch_embed_batch_size_sum{kind=\"image\"} 3"));
  CHECK(Has(t, "imagesearch_embed_queue_seconds_count{kind=\"image\"} 3"));
  CHECK(Has(t, "imagesearch_encoder_seconds_count{kind=\"image\"} 1"));
  CHECK(Has(t, "imagesearch_snapshot_loads_total{result=\"ok\"} 1"));
  CHECK(Has(t, "imagesearch_snapshot_loads_total{result=\"refused\"} 1"));
  CHECK(Has(t, "imagesearch_snapshot_load_seconds_count 1"));
  CHECK(Has(t, "imagesearch_snapshot_version 7"));
  CHECK(Has(t, "imagesearch_snapshot_vectors 1000"));
  CHECK(Has(t, "imagesearch_build_info{model=\"mobilenet\",version=\"1.2.3\"} 1"));
  // The build_info series of the previous model is gone.
  CHECK_FALSE(Has(t, "imagesearch_build_info{model=\"\""));
  // The process figures, read at the scrape.
  for (const char* name :
       {"process_cpu_seconds_total ", "process_start_time_seconds ",
        "process_resident_memory_bytes ", "process_virtual_memory_bytes ", "process_open_fds ",
        "process_max_fds ", "process_threads ", "imagesearch_malloc_in_use_bytes ",
        "imagesearch_malloc_system_bytes "}) {
    INFO(name);
    CHECK(Has(t, std::string("\n") + name));
  }
  CHECK(Has(t, "# TYPE process_cpu_seconds_total counter"));
  CHECK(Has(t, "# TYPE process_resident_memory_bytes gauge"));
}

}  // namespace
}  // namespace imagesearch::serving
