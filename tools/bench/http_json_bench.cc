// What the HTTP front end's proto3 JSON costs per request, side by side in
// one run:
//   - answering: a SearchResponse of --hits hits printed as proto3 JSON (what
//     HTTP sends), serialized as binary protobuf (what gRPC sends), and built
//     and dumped with nlohmann json (a hand-written mapping, for reference);
//   - asking: a SearchRequest with a --dim vector parsed from proto3 JSON,
//     from binary protobuf, and from a bare JSON array with nlohmann.
// Prints microseconds per call (median of --rounds) and the ratios to binary.
//   imagesearch_http_json_bench [--dim=512] [--hits=10] [--calls=2000] [--rounds=5]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "google/protobuf/util/json_util.h"
#include "imagesearch/v1/imagesearch.pb.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int, dim, 512, "Query vector dimension.");
ABSL_FLAG(int, hits, 10, "Hits in the answer.");
ABSL_FLAG(int, calls, 2000, "Calls per round.");
ABSL_FLAG(int, rounds, 5, "Rounds; the median is reported.");

namespace {

namespace v1 = imagesearch::v1;
using json = nlohmann::json;

size_t sink = 0;  // Keeps the work observable.

// Median microseconds per call of `f` over the rounds.
double Time(const std::function<void()>& f) {
  const int calls = absl::GetFlag(FLAGS_calls);
  std::vector<double> us;
  for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) f();
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
        calls);
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

void Report(const char* what, double proto_json, double binary, double nlohmann) {
  std::printf(
      "%-8s proto3 JSON %8.2f us  binary %8.2f us  nlohmann %8.2f us  "
      "JSON/binary %.1fx  proto3 JSON/nlohmann %.2fx\n",
      what, proto_json, binary, nlohmann, proto_json / binary, proto_json / nlohmann);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int dim = absl::GetFlag(FLAGS_dim);

  v1::SearchResponse response;
  response.set_snapshot_version(7);
  for (int i = 0; i < absl::GetFlag(FLAGS_hits); ++i) {
    v1::Hit* h = response.add_hits();
    h->set_id("fmnist-test-" + std::to_string(10000 + i));
    h->set_uri("/data/corpus/fmnist-test-" + std::to_string(10000 + i) + ".png");
    h->set_attributes_json(R"({"class":"bag","n":17})");
    h->set_score(0.9f - 0.01f * static_cast<float>(i));
    h->set_distance(0.1f + 0.01f * static_cast<float>(i));
  }
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  print.always_print_primitive_fields = true;
  const double answer_json = Time([&] {
    std::string out;
    (void)google::protobuf::util::MessageToJsonString(response, &out, print);
    sink += out.size();
  });
  const double answer_binary = Time([&] { sink += response.SerializeAsString().size(); });
  const double answer_nlohmann = Time([&] {
    json hits = json::array();
    for (const auto& h : response.hits()) {
      hits.push_back({{"id", h.id()},
                      {"score", h.score()},
                      {"distance", h.distance()},
                      {"uri", h.uri()},
                      {"attributes", json::parse(h.attributes_json())}});
    }
    sink += json{{"hits", hits}, {"snapshot_version", 7}, {"collapsed", 0}}.dump().size();
  });

  v1::SearchRequest request;
  request.set_top_k(10);
  for (int i = 0; i < dim; ++i) request.mutable_vector()->add_values(0.001f * (i % 997) - 0.5f);
  std::string request_json;
  (void)google::protobuf::util::MessageToJsonString(request, &request_json);
  const std::string request_binary = request.SerializeAsString();
  json bare = {{"top_k", 10}, {"vector", request.vector().values()}};
  const std::string request_bare = bare.dump();
  google::protobuf::util::JsonParseOptions parse;
  const double ask_json = Time([&] {
    v1::SearchRequest r;
    (void)google::protobuf::util::JsonStringToMessage(request_json, &r, parse);
    sink += static_cast<size_t>(r.vector().values_size());
  });
  const double ask_binary = Time([&] {
    v1::SearchRequest r;
    (void)r.ParseFromString(request_binary);
    sink += static_cast<size_t>(r.vector().values_size());
  });
  const double ask_nlohmann = Time([&] {
    const json j = json::parse(request_bare);
    sink += j["vector"].get<std::vector<float>>().size();
  });

  std::printf("SearchResponse of %d hits; SearchRequest with a %d-d vector\n",
              absl::GetFlag(FLAGS_hits), dim);
  Report("answer", answer_json, answer_binary, answer_nlohmann);
  Report("request", ask_json, ask_binary, ask_nlohmann);
  return sink == 0 ? 1 : 0;
}
