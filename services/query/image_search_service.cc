#include "services/query/image_search_service.h"

#include <memory>
#include <utility>
#include <vector>

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

// Proto filter -> core filter; what cannot be converted lands in
// Filter::error, which the core reports as INVALID_ARGUMENT.
void ToFilter(const v1::Filter& in, serving::Filter* out) {
  auto value = [out](const v1::FilterValue& v, absl::string_view field) -> serving::FilterValue {
    switch (v.value_case()) {
      case v1::FilterValue::kKeyword:
        return v.keyword();
      case v1::FilterValue::kInteger:
        return v.integer();
      case v1::FilterValue::kNumber:
        return v.number();
      case v1::FilterValue::kBoolean:
        return v.boolean();
      case v1::FilterValue::kTimestamp:
        return v.timestamp();
      case v1::FilterValue::VALUE_NOT_SET:
        break;
    }
    if (out->error.empty()) {
      out->error = absl::StrCat("filter condition on '", field.substr(0, 64),
                                "' has a value with nothing set");
    }
    return std::string();
  };
  auto convert = [&](const v1::Condition& c) {
    serving::Condition x;
    x.field = c.field();
    switch (c.test_case()) {
      case v1::Condition::kMatch:
        x.kind = serving::Condition::Kind::kMatch;
        x.values.push_back(value(c.match(), c.field()));
        break;
      case v1::Condition::kIn:
        x.kind = serving::Condition::Kind::kIn;
        for (const auto& v : c.in().values()) x.values.push_back(value(v, c.field()));
        break;
      case v1::Condition::kRange:
        x.kind = serving::Condition::Kind::kRange;
        if (c.range().has_gte()) x.gte = value(c.range().gte(), c.field());
        if (c.range().has_gt()) x.gt = value(c.range().gt(), c.field());
        if (c.range().has_lte()) x.lte = value(c.range().lte(), c.field());
        if (c.range().has_lt()) x.lt = value(c.range().lt(), c.field());
        break;
      case v1::Condition::kHasId:
        x.kind = serving::Condition::Kind::kHasId;
        x.ids.assign(c.has_id().ids().begin(), c.has_id().ids().end());
        break;
      case v1::Condition::TEST_NOT_SET:
        if (out->error.empty()) {
          out->error = absl::StrCat("filter condition on '", c.field().substr(0, 64),
                                    "' has no test (match, in, range or has_id)");
        }
        break;
    }
    return x;
  };
  for (const auto& c : in.must()) out->must.push_back(convert(c));
  for (const auto& c : in.should()) out->should.push_back(convert(c));
  for (const auto& c : in.must_not()) out->must_not.push_back(convert(c));
}

// `filter` holds the request's converted filter; it must outlive the core call.
Query ToQuery(const v1::SearchRequest& r, serving::Filter* filter) {
  Query q;
  if (r.has_filter()) {
    ToFilter(r.filter(), filter);
    q.filter = filter;
  }
  switch (r.query_case()) {
    case v1::SearchRequest::kVector:
      q.kind = Query::Kind::kVector;
      q.vector = absl::MakeConstSpan(r.vector().values().data(),
                                     static_cast<size_t>(r.vector().values_size()));
      break;
    case v1::SearchRequest::kId:
      q.kind = Query::Kind::kId;
      q.id = r.id();
      break;
    case v1::SearchRequest::kImage:
      q.kind = Query::Kind::kImage;
      q.data = r.image();
      break;
    case v1::SearchRequest::kText:
      q.kind = Query::Kind::kText;
      q.data = r.text();
      break;
    case v1::SearchRequest::QUERY_NOT_SET:
      break;
  }
  q.params.top_k = r.top_k();
  q.params.ef = r.ef();
  q.include_self = r.include_self();
  q.params.dedup = r.dedup();
  return q;
}

void FillHits(const serving::SearchResult& result, v1::SearchResponse* out) {
  out->set_snapshot_version(result.snapshot_version);
  out->set_collapsed(result.collapsed);
  out->mutable_hits()->Reserve(static_cast<int>(result.hits.size()));
  for (const auto& h : result.hits) {
    v1::Hit* p = out->add_hits();
    p->set_id(h.id);
    p->set_uri(h.uri);
    p->set_attributes_json(h.attributes_json);
    p->set_distance(h.distance);
    p->set_score(h.score);
  }
}

v1::Metric ToProto(index::Metric m) {
  switch (m) {
    case index::Metric::kCosine:
      return v1::METRIC_COSINE;
    case index::Metric::kInnerProduct:
      return v1::METRIC_INNER_PRODUCT;
    case index::Metric::kL2:
      return v1::METRIC_L2;
  }
  return v1::METRIC_UNSPECIFIED;
}

}  // namespace

template <typename Request, typename Response>
grpc::ServerUnaryReactor* ImageSearchService::Serve(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
    const char* method,
    void (ImageSearchService::*handle)(grpc::CallbackServerContext*, const Request&, Response*,
                                       Done)) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto refuse = [&](absl::StatusCode code, const std::string& message) {
    if (metrics_ != nullptr) metrics_->RecordRequest("grpc", method, code, absl::ZeroDuration());
    reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(code), message));
    return reactor;
  };
  if (token_ != nullptr) {
    // Metadata keys arrive lower-case; a call may repeat a key.
    bool ok = false;
    const auto& metadata = context->client_metadata();
    for (auto [it, end] = metadata.equal_range("authorization"); it != end; ++it) {
      ok |= token_->Accepts(absl::string_view(it->second.data(), it->second.size()));
    }
    if (!ok) {
      return refuse(absl::StatusCode::kUnauthenticated,
                    "missing or invalid bearer token: send metadata 'authorization: Bearer "
                    "<token>'");
    }
  }
  struct Call {
    Request request;
    Response response;
  };
  auto call = std::make_shared<Call>();
  grpc::ByteBuffer bytes(*in);  // Shares the slices; Deserialize consumes its argument.
  const size_t size = in->Length();
  if (!grpc::SerializationTraits<Request>::Deserialize(&bytes, &call->request).ok()) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("request (", size, " bytes) does not parse as ",
                               Request::descriptor()->full_name()));
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

void ImageSearchService::HandleSearch(grpc::CallbackServerContext* context,
                                      const v1::SearchRequest& request,
                                      v1::SearchResponse* response, Done done) {
  serving::Filter filter;  // Read before core_->Search returns.
  core_->Search(ToQuery(request, &filter), ContextOf(context),
                [response, done = std::move(done)](absl::StatusOr<serving::SearchResult> r) {
                  if (r.ok()) FillHits(*r, response);
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
          for (const auto& one : *r) FillHits(one, response->add_responses());
          if (!r->empty()) response->set_snapshot_version(r->front().snapshot_version);
        }
        done(ToGrpc(r.status()));
      });
}

void ImageSearchService::HandleEmbed(grpc::CallbackServerContext* context,
                                     const v1::EmbedRequest& request, v1::EmbedResponse* response,
                                     Done done) {
  std::vector<Query> items(static_cast<size_t>(request.inputs_size()));
  for (int i = 0; i < request.inputs_size(); ++i) {
    const v1::EmbedInput& in = request.inputs(i);
    if (in.input_case() == v1::EmbedInput::kImage) {
      items[i].kind = Query::Kind::kImage;
      items[i].data = in.image();
    } else if (in.input_case() == v1::EmbedInput::kText) {
      items[i].kind = Query::Kind::kText;
      items[i].data = in.text();
    }
  }
  core_->Embed(items, ContextOf(context),
               [response, done = std::move(done)](absl::StatusOr<serving::EmbedResult> r) {
                 if (r.ok()) {
                   response->set_snapshot_version(r->snapshot_version);
                   response->set_model_name(r->model_name);
                   for (const auto& v : r->vectors) {
                     response->add_embeddings()->mutable_values()->Add(v.begin(), v.end());
                   }
                 }
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
  const auto& m = (*state)->snapshot->manifest();
  response->set_snapshot_version(m.version);
  response->set_dim(static_cast<uint32_t>(m.dim));
  response->set_metric(ToProto(m.metric));
  response->set_vector_count(m.count);
  response->set_created_at(m.created_at);
  response->set_base_version(m.base_version);
  response->set_max_top_k(serving::kMaxTopK);
  response->set_has_thumbnails((*state)->snapshot->thumbs() != nullptr);
  if (const auto* attrs = (*state)->snapshot->attributes()) {
    for (const auto& f : attrs->fields()) {
      v1::FieldInfo* info = response->add_fields();
      info->set_name(f.name);
      info->set_type(std::string(snapshot::FieldTypeName(f.type)));
    }
  }
  auto* hnsw = response->mutable_hnsw();
  hnsw->set_m(static_cast<uint32_t>(m.hnsw_m));
  hnsw->set_ef_construction(static_cast<uint32_t>(m.hnsw_ef_construction));
  hnsw->set_default_ef(static_cast<uint32_t>(m.default_ef));
  auto* model = response->mutable_model();
  model->set_name(m.model.name);
  model->set_version(m.model.version);
  model->set_sha256(m.model.sha256);
  model->set_embed_dim(static_cast<uint32_t>(m.dim));
  model->set_image_size(static_cast<uint32_t>(m.model.image_size));
  model->set_has_text(m.model.has_text);
  model->set_loaded((*state)->embedder != nullptr);
  done(grpc::Status::OK);
}

}  // namespace imagesearch
