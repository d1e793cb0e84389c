#include "services/query/image_search_service.h"

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/arena.h"
#include "services/query/proto_adapter.h"

namespace imagesearch {
namespace {

using serving::Query;

// Bytes of a call's arena held in the call itself (see Make): a query by a
// 1,792-d vector (the default model's) with 10 hits fits.
constexpr size_t kCallArenaBlock = 12 * 1024;

serving::CallContext ContextOf(const rpc::CallInfo& call) {
  serving::CallContext c;
  c.front = "grpc";
  c.deadline = absl::FromChrono(call.context().deadline());
  c.cancelled = call.Cancelled();
  return c;
}

}  // namespace

ImageSearchService::ImageSearchService(serving::QueryCore* core, const BearerToken* token,
                                       serving::Metrics* metrics)
    : core_(core),
      gate_(token, metrics),
      search_(Make("Search", &Async::RequestSearch, &ImageSearchService::HandleSearch)),
      search_batch_(
          Make("SearchBatch", &Async::RequestSearchBatch, &ImageSearchService::HandleSearchBatch)),
      embed_(Make("Embed", &Async::RequestEmbed, &ImageSearchService::HandleEmbed)),
      get_info_(Make("GetInfo", &Async::RequestGetInfo, &ImageSearchService::HandleGetInfo)),
      thumbnail_(Make("Thumbnail", &Async::RequestGetThumbnail,
                      &ImageSearchService::HandleGetThumbnail)) {}

void ImageSearchService::StampAnswers(std::string key, std::string value) {
  stamp_.emplace_back(std::move(key), std::move(value));
}

void ImageSearchService::Start(rpc::CompletionThreads* threads) {
  static constexpr int kAwaiting = 32;  // Calls of each method asked for at a time, per queue.
  for (const RawMethod* m : {&search_, &search_batch_, &embed_, &get_info_, &thumbnail_}) {
    rpc::ServedCall<grpc::ByteBuffer, grpc::ByteBuffer>::AwaitOnEveryQueue(m, threads, kAwaiting);
  }
}

template <typename Request, typename Response>
ImageSearchService::RawMethod ImageSearchService::Make(
    const char* name, RequestFn request,
    void (ImageSearchService::*handle)(const serving::CallContext&, const Request&, Response*,
                                       Done)) {
  RawMethod m;
  m.watch_cancellation = true;  // The core stops work for a client that left.
  m.initial_metadata = &stamp_;
  m.request = [this, request](grpc::ServerContext* c, grpc::ByteBuffer* q,
                              grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* w,
                              grpc::ServerCompletionQueue* queue,
                              void* tag) { (service_.*request)(c, q, w, queue, queue, tag); };
  m.answer = [this, name, handle](const rpc::CallInfo& info, const grpc::ByteBuffer& in,
                                  std::function<void(absl::StatusOr<grpc::ByteBuffer>)> reply) {
    if (absl::Status s = gate_.AuthenticateGrpc(info.context(), name); !s.ok()) return reply(s);
    // The call's messages live on an arena whose first block is part of the
    // call, so that a search's request and its answer (a vector, ten hits
    // and their strings) take no allocation each. An answer filled on
    // another thread (a model's) takes one block of that thread's.
    struct Call {
      // User-provided, so that make_shared does not zero the block first.
      Call() {}  // NOLINT(modernize-use-equals-default)
      alignas(std::max_align_t) char block[kCallArenaBlock];
      google::protobuf::Arena arena{block, sizeof(block)};
      Request* request = google::protobuf::Arena::CreateMessage<Request>(&arena);
      Response* response = google::protobuf::Arena::CreateMessage<Response>(&arena);
    };
    auto call = std::make_shared<Call>();
    grpc::ByteBuffer bytes(in);  // Shares the slices; Deserialize consumes its argument.
    if (!grpc::SerializationTraits<Request>::Deserialize(&bytes, call->request).ok()) {
      return reply(gate_.Refuse("grpc", name,
                                absl::InvalidArgumentError(absl::StrCat(
                                    "request (", in.Length(), " bytes) does not parse as ",
                                    Request::descriptor()->full_name()))));
    }
    (this->*handle)(ContextOf(info), *call->request, call->response,
                    [call, reply = std::move(reply)](absl::Status s) {
                      if (!s.ok()) return reply(s);
                      grpc::ByteBuffer out;
                      bool own_buffer = false;
                      const grpc::Status serialized =
                          grpc::SerializationTraits<Response>::Serialize(*call->response, &out,
                                                                         &own_buffer);
                      if (!serialized.ok()) return reply(rpc::FromGrpc(serialized));
                      reply(std::move(out));
                    });
  };
  return m;
}

void ImageSearchService::HandleSearch(const serving::CallContext& context,
                                      const v1::SearchRequest& request,
                                      v1::SearchResponse* response, Done done) {
  serving::Filter filter;  // Read before core_->Search returns.
  core_->Search(ToQuery(request, &filter), context,
                [response, done = std::move(done)](absl::StatusOr<serving::SearchResult> r) {
                  if (r.ok()) FillSearchResponse(*std::move(r), response);
                  done(r.status());
                });
}

void ImageSearchService::HandleSearchBatch(const serving::CallContext& context,
                                           const v1::SearchBatchRequest& request,
                                           v1::SearchBatchResponse* response, Done done) {
  std::vector<Query> queries;
  queries.reserve(static_cast<size_t>(request.requests_size()));
  std::vector<serving::Filter> filters(static_cast<size_t>(request.requests_size()));
  for (int i = 0; i < request.requests_size(); ++i) {
    queries.push_back(ToQuery(request.requests(i), &filters[static_cast<size_t>(i)]));
  }
  core_->SearchBatch(
      queries, context,
      [response, done = std::move(done)](absl::StatusOr<std::vector<serving::SearchResult>> r) {
        if (r.ok()) {
          if (!r->empty()) response->set_snapshot_version(r->front().snapshot_version);
          for (auto& one : *r) FillSearchResponse(std::move(one), response->add_responses());
        }
        done(r.status());
      });
}

void ImageSearchService::HandleEmbed(const serving::CallContext& context,
                                     const v1::EmbedRequest& request, v1::EmbedResponse* response,
                                     Done done) {
  const std::vector<Query> items = ToEmbedItems(request);
  core_->Embed(items, context,
               [response, done = std::move(done)](absl::StatusOr<serving::EmbedResult> r) {
                 if (r.ok()) FillEmbedResponse(*r, response);
                 done(r.status());
               });
}

void ImageSearchService::HandleGetInfo(const serving::CallContext& context,
                                       const v1::GetInfoRequest& /*request*/,
                                       v1::GetInfoResponse* response, Done done) {
  auto state = core_->Info(context);
  if (!state.ok()) {
    done(state.status());
    return;
  }
  FillInfo(**state, response);
  done(absl::OkStatus());
}

void ImageSearchService::HandleGetThumbnail(const serving::CallContext& context,
                                            const v1::GetThumbnailRequest& request,
                                            v1::GetThumbnailResponse* response, Done done) {
  auto thumb = core_->Thumbnail(request.id(), context);
  if (!thumb.ok()) {
    done(thumb.status());
    return;
  }
  FillThumbnail(*thumb, response);
  done(absl::OkStatus());
}

}  // namespace imagesearch
