// The floor under a unary Search on this machine: a gRPC server that does
// no work at all. It answers ImageSearch.Search with a fixed response of
// --hits hits (ids and scores as a real answer carries), so the request (a
// 512-d vector is 2 KiB) and the response are the sizes a real call moves.
// Pinned and loaded as the query service is (tools/bench/grpc_floor.sh), its
// CPU per call is what gRPC and the kernel charge a call here before any
// search: the part of the service's "beyond the search" figure no serving
// code can remove.
//
//   imagesearch_grpc_floor_server [--api=callback|async] [--hits=10] [--spin_us=0]
//       [--touch_mib=0] [--host=127.0.0.1] [--port=0]
//
// --api=callback: gRPC's callback API, on gRPC's own threads (its default).
// --api=async: one completion queue, one thread, the classic async loop.
// Prints "listening on port N" when it serves.
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"

ABSL_FLAG(std::string, api, "callback", "callback (gRPC's callback API) or async (one CQ thread)");
ABSL_FLAG(int, hits, 10, "hits in every answer");
ABSL_FLAG(int, spin_us, 0,
          "busy-wait this long in each call before answering, in place of a search, so "
          "the client waits (and sleeps) as long as it waits for the service");
ABSL_FLAG(int, touch_mib, 0,
          "while spinning, read random 2 KiB rows of a buffer this big (on huge pages), as "
          "a search reads vectors, so gRPC and the kernel find the caches as cold as after "
          "a search");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on");
ABSL_FLAG(int, port, 0, "port (0: any)");

namespace {

using imagesearch::v1::ImageSearch;
using imagesearch::v1::SearchRequest;
using imagesearch::v1::SearchResponse;

// Stands in for the search: its CPU time and, with a buffer, its reads of
// 2 KiB rows (a 512-d float vector) at random across a large mapping.
class FakeSearch {
 public:
  FakeSearch(int spin_us, int touch_mib) : spin_us_(spin_us) {
    if (touch_mib <= 0) return;
    bytes_ = static_cast<size_t>(touch_mib) << 20;
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    ::madvise(p, bytes_, MADV_HUGEPAGE);
    buffer_ = static_cast<uint64_t*>(p);
    for (size_t i = 0; i < bytes_ / sizeof(uint64_t); ++i) buffer_[i] = i * 0x9E3779B97F4A7C15ull;
  }
  // False when the buffer asked for could not be mapped: a floor measured
  // without it would be the warm one.
  bool ok() const { return bytes_ == 0 || buffer_ != nullptr; }
  FakeSearch(const FakeSearch&) = delete;
  FakeSearch& operator=(const FakeSearch&) = delete;
  ~FakeSearch() {
    if (buffer_ != nullptr) ::munmap(buffer_, bytes_);
  }

  // Returns a sum of what it read, so the reads cannot be left out.
  uint64_t Run() {
    if (spin_us_ <= 0) return 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
    uint64_t sum = 0;
    // Per thread: the callback API runs calls on several threads.
    thread_local uint64_t x = 88172645463325252ull;
    const size_t rows = buffer_ == nullptr ? 0 : bytes_ / kRowBytes;
    while (std::chrono::steady_clock::now() < end) {
      if (rows == 0) continue;
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const uint64_t* row = buffer_ + (x % rows) * (kRowBytes / sizeof(uint64_t));
      for (size_t i = 0; i < kRowBytes / sizeof(uint64_t); ++i) sum += row[i];
    }
    return sum;
  }

 private:
  static constexpr size_t kRowBytes = 2048;
  const int spin_us_;
  size_t bytes_ = 0;
  uint64_t* buffer_ = nullptr;
};

// Read by nobody: keeps the fake search's reads from being optimised away.
std::atomic<uint64_t> g_sink{0};

SearchResponse FixedAnswer(int hits) {
  SearchResponse r;
  for (int i = 0; i < hits; ++i) {
    imagesearch::v1::Hit* h = r.add_hits();
    h->set_id(absl::StrCat("row-", 100000 + i));
    h->set_score(0.9f - 0.01f * static_cast<float>(i));
    h->set_distance(0.1f + 0.01f * static_cast<float>(i));
  }
  r.set_snapshot_version(1);
  return r;
}

class CallbackFloor final : public ImageSearch::CallbackService {
 public:
  CallbackFloor(SearchResponse answer, FakeSearch* search)
      : answer_(std::move(answer)), search_(search) {}
  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* ctx, const SearchRequest*,
                                   SearchResponse* response) override {
    g_sink.fetch_add(search_->Run(), std::memory_order_relaxed);
    *response = answer_;
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const SearchResponse answer_;
  FakeSearch* const search_;
};

// The classic async loop: one call object waits for the next request while
// the one before it is answered.
class AsyncCall {
 public:
  AsyncCall(ImageSearch::AsyncService* service, grpc::ServerCompletionQueue* cq,
            const SearchResponse* answer, FakeSearch* search)
      : service_(service), cq_(cq), answer_(answer), search_(search), responder_(&ctx_) {
    service_->RequestSearch(&ctx_, &request_, &responder_, cq_, cq_, this);
  }
  // Returns false once the call is finished and may be deleted.
  bool Proceed() {
    if (finishing_) return false;
    new AsyncCall(service_, cq_, answer_, search_);
    g_sink.fetch_add(search_->Run(), std::memory_order_relaxed);
    finishing_ = true;
    responder_.Finish(*answer_, grpc::Status::OK, this);
    return true;
  }

 private:
  ImageSearch::AsyncService* service_;
  grpc::ServerCompletionQueue* cq_;
  const SearchResponse* answer_;
  FakeSearch* const search_;
  grpc::ServerContext ctx_;
  SearchRequest request_;
  grpc::ServerAsyncResponseWriter<SearchResponse> responder_;
  bool finishing_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string api = absl::GetFlag(FLAGS_api);
  const SearchResponse answer = FixedAnswer(absl::GetFlag(FLAGS_hits));
  FakeSearch search(absl::GetFlag(FLAGS_spin_us), absl::GetFlag(FLAGS_touch_mib));
  if (!search.ok()) {
    std::fprintf(stderr, "could not map --touch_mib=%d MiB\n", absl::GetFlag(FLAGS_touch_mib));
    return 1;
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port)),
                           grpc::InsecureServerCredentials(), &port);
  std::unique_ptr<CallbackFloor> callback;
  std::unique_ptr<ImageSearch::AsyncService> async;
  std::unique_ptr<grpc::ServerCompletionQueue> cq;
  if (api == "callback") {
    callback = std::make_unique<CallbackFloor>(answer, &search);
    builder.RegisterService(callback.get());
  } else if (api == "async") {
    async = std::make_unique<ImageSearch::AsyncService>();
    builder.RegisterService(async.get());
    cq = builder.AddCompletionQueue();
  } else {
    std::fprintf(stderr, "--api must be callback or async, not '%s'\n", api.c_str());
    return 2;
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "could not listen\n");
    return 1;
  }
  std::printf("listening on port %d\n", port);
  std::fflush(stdout);
  // The line tools/bench/pinned_service.sh waits for, as from imagesearch-query.
  std::fprintf(stderr, "serving snapshot v1 (no snapshot: the floor server, --api=%s)\n",
               api.c_str());
  if (cq == nullptr) {
    server->Wait();
    return 0;
  }
  new AsyncCall(async.get(), cq.get(), &answer, &search);
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) {
    auto* call = static_cast<AsyncCall*>(tag);
    if (!ok || !call->Proceed()) delete call;
  }
  return 0;
}
