#include "services/query/image_search_service.h"

#include <memory>
#include <utility>
#include <vector>

#include "services/query/proto_adapter.h"

namespace imagesearch {
namespace {

using serving::Query;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

serving::CallContext ContextOf(grpc::CallbackServerContext* context) {
  serving::CallContext c;
  c.front = "grpc";
  c.deadline = absl::FromChrono(context->deadline());
  c.cancelled = [context] { return context->IsCancelled(); };
  return c;
}

}  // namespace

template <typename Request, typename Response>
grpc::ServerUnaryReactor* ImageSearchService::Serve(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
    const char* method,
    void (ImageSearchService::*handle)(grpc::CallbackServerContext*, const Request&, Response*,
                                       Done)) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto refuse = [&](const absl::Status& status) {
    reactor->Finish(ToGrpc(status));
    return reactor;
  };
  if (absl::Status s = gate_.AuthenticateGrpc(*context, method); !s.ok()) return refuse(s);
  struct Call {
    Request request;
    Response response;
  };
  auto call = std::make_shared<Call>();
  grpc::ByteBuffer bytes(*in);  // Shares the slices; Deserialize consumes its argument.
  const size_t size = in->Length();
  if (!grpc::SerializationTraits<Request>::Deserialize(&bytes, &call->request).ok()) {
    return refuse(gate_.Refuse(
        "grpc", method,
        absl::InvalidArgumentError(absl::StrCat("request (", size, " bytes) does not parse as ",
                                                Request::descriptor()->full_name()))));
  }
  (this->*handle)(context, call->request, &call->response, [reactor, call, out](grpc::Status s) {
    if (s.ok()) {
      bool own_buffer = false;
      s = grpc::SerializationTraits<Response>::Serialize(call->response, out, &own_buffer);
    }
    reactor->Finish(s);
  });
  return reactor;
}

grpc::ServerUnaryReactor* ImageSearchService::Search(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return Serve(context, request, response, "Search", &ImageSearchService::HandleSearch);
}

grpc::ServerUnaryReactor* ImageSearchService::SearchBatch(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return Serve(context, request, response, "SearchBatch", &ImageSearchService::HandleSearchBatch);
}

grpc::ServerUnaryReactor* ImageSearchService::Embed(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return Serve(context, request, response, "Embed", &ImageSearchService::HandleEmbed);
}

grpc::ServerUnaryReactor* ImageSearchService::GetInfo(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return Serve(context, request, response, "GetInfo", &ImageSearchService::HandleGetInfo);
}

grpc::ServerUnaryReactor* ImageSearchService::GetThumbnail(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  return Serve(context, request, response, "Thumbnail", &ImageSearchService::HandleGetThumbnail);
}

void ImageSearchService::HandleSearch(grpc::CallbackServerContext* context,
                                      const v1::SearchRequest& request,
                                      v1::SearchResponse* response, Done done) {
  serving::Filter filter;  // Read before core_->Search returns.
  core_->Search(ToQuery(request, &filter), ContextOf(context),
                [response, done = std::move(done)](absl::StatusOr<serving::SearchResult> r) {
                  if (r.ok()) FillSearchResponse(*r, response);
                  done(ToGrpc(r.status()));
                });
}

void ImageSearchService::HandleSearchBatch(grpc::CallbackServerContext* context,
                                           const v1::SearchBatchRequest& request,
                                           v1::SearchBatchResponse* response, Done done) {
  std::vector<Query> queries;
  queries.reserve(static_cast<size_t>(request.requests_size()));
  std::vector<serving::Filter> filters(static_cast<size_t>(request.requests_size()));
  for (int i = 0; i < request.requests_size(); ++i) {
    queries.push_back(ToQuery(request.requests(i), &filters[static_cast<size_t>(i)]));
  }
  core_->SearchBatch(
      queries, ContextOf(context),
      [response, done = std::move(done)](absl::StatusOr<std::vector<serving::SearchResult>> r) {
        if (r.ok()) {
          for (const auto& one : *r) FillSearchResponse(one, response->add_responses());
          if (!r->empty()) response->set_snapshot_version(r->front().snapshot_version);
        }
        done(ToGrpc(r.status()));
      });
}

void ImageSearchService::HandleEmbed(grpc::CallbackServerContext* context,
                                     const v1::EmbedRequest& request, v1::EmbedResponse* response,
                                     Done done) {
  const std::vector<Query> items = ToEmbedItems(request);
  core_->Embed(items, ContextOf(context),
               [response, done = std::move(done)](absl::StatusOr<serving::EmbedResult> r) {
                 if (r.ok()) FillEmbedResponse(*r, response);
                 done(ToGrpc(r.status()));
               });
}

void ImageSearchService::HandleGetInfo(grpc::CallbackServerContext* context,
                                       const v1::GetInfoRequest& /*request*/,
                                       v1::GetInfoResponse* response, Done done) {
  auto state = core_->Info(ContextOf(context));
  if (!state.ok()) {
    done(ToGrpc(state.status()));
    return;
  }
  FillInfo(**state, response);
  done(grpc::Status::OK);
}

void ImageSearchService::HandleGetThumbnail(grpc::CallbackServerContext* context,
                                            const v1::GetThumbnailRequest& request,
                                            v1::GetThumbnailResponse* response, Done done) {
  auto thumb = core_->Thumbnail(request.id(), ContextOf(context));
  if (!thumb.ok()) {
    done(ToGrpc(thumb.status()));
    return;
  }
  FillThumbnail(*thumb, response);
  done(grpc::Status::OK);
}

}  // namespace imagesearch
