#include "services/query/image_search_service.h"

#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "libs/serving/query_engine.h"

namespace imagesearch {
namespace {

using serving::ServingState;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

bool DeadlinePassed(const grpc::CallbackServerContext* context) {
  return context->deadline() <= std::chrono::system_clock::now();
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

// Why `state` cannot embed, or OK.
absl::Status EmbedderAvailable(const ServingState& state, bool text) {
  const auto& model = state.snapshot->manifest().model;
  if (model.name.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "snapshot v", state.snapshot->version(),
        " was built from raw vectors and has no model; image and text queries need a snapshot "
        "built by the indexer (vector and id queries work)"));
  }
  if (!state.embedder) {
    return absl::UnimplementedError(
        absl::StrCat("cannot embed with model ", model.name, ": ", state.embedder_error));
  }
  if (text && !state.embedder->has_text()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", model.name, " of snapshot v", state.snapshot->version(),
                     " is image-only and has no text encoder; text queries need a CLIP model"));
  }
  return absl::OkStatus();
}

void FillHits(const std::vector<serving::Hit>& hits, uint64_t version, v1::SearchResponse* out) {
  out->set_snapshot_version(version);
  out->mutable_hits()->Reserve(static_cast<int>(hits.size()));
  for (const auto& h : hits) {
    v1::Hit* p = out->add_hits();
    p->set_id(h.id);
    p->set_uri(h.uri);
    p->set_attributes_json(h.attributes_json);
    p->set_distance(h.distance);
    p->set_score(h.score);
  }
}

}  // namespace

absl::Status ImageSearchService::Admit() {
  if (inflight_.fetch_add(1) < max_inflight_) return absl::OkStatus();
  inflight_--;
  return absl::ResourceExhaustedError(
      absl::StrCat("server overloaded: ", max_inflight_, " searches already in flight"));
}

grpc::ServerUnaryReactor* ImageSearchService::Search(grpc::CallbackServerContext* context,
                                                     const v1::SearchRequest* request,
                                                     v1::SearchResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto finish = [reactor](const absl::Status& s) { reactor->Finish(ToGrpc(s)); };
  std::shared_ptr<const ServingState> state = manager_->Current();
  if (!state) {
    finish(absl::UnavailableError("no snapshot is loaded yet"));
    return reactor;
  }
  serving::SearchParams params;
  params.top_k = request->top_k();
  params.ef = request->ef();

  // Runs the vector search for `query` on the pool and finishes the call.
  // Runs the vector search for `query` and finishes the call. Vector and id
  // queries search inline on the gRPC callback thread (a sub-millisecond CPU
  // task; a hand-off would cost as much as the search). Image and text
  // queries arrive from the embedder's batcher thread and are handed to the
  // pool so the batcher goes straight back to batching.
  auto run_search = [this, context, response, state, finish](
                        std::vector<float> query, serving::SearchParams p, bool inline_search) {
    auto search = [context, response, state, finish, p](const std::vector<float>& q) {
      if (DeadlinePassed(context) || context->IsCancelled()) {
        finish(absl::DeadlineExceededError("deadline passed before the search started"));
        return;
      }
      auto hits = serving::SearchSnapshot(*state->snapshot, q, p);
      if (hits.ok()) FillHits(*hits, state->snapshot->version(), response);
      finish(hits.status());
    };
    if (inline_search) {
      if (absl::Status admitted = Admit(); !admitted.ok()) {
        finish(admitted);
        return;
      }
      search(query);
      inflight_--;
      return;
    }
    bool queued = pool_->TrySubmit([search, query = std::move(query)]() { search(query); });
    if (!queued) {
      finish(absl::ResourceExhaustedError(
          absl::StrCat("server overloaded: ", pool_->queued(), " searches already queued")));
    }
  };

  switch (request->query_case()) {
    case v1::SearchRequest::QUERY_NOT_SET:
      finish(absl::InvalidArgumentError("query is empty: set one of vector, id, image or text"));
      break;
    case v1::SearchRequest::kVector: {
      const auto& values = request->vector().values();
      auto q = serving::PrepareQueryVector(*state->snapshot, values.data(),
                                           static_cast<size_t>(values.size()));
      if (!q.ok()) {
        finish(q.status());
        break;
      }
      run_search(std::move(*q), params, /*inline_search=*/true);
      break;
    }
    case v1::SearchRequest::kId: {
      auto q = serving::VectorOfId(*state->snapshot, request->id());
      if (!q.ok()) {
        finish(q.status());
        break;
      }
      if (!request->include_self()) params.exclude_row = q->second;
      run_search(std::move(q->first), params, /*inline_search=*/true);
      break;
    }
    case v1::SearchRequest::kImage:
    case v1::SearchRequest::kText: {
      const bool text = request->query_case() == v1::SearchRequest::kText;
      if (absl::Status s = EmbedderAvailable(*state, text); !s.ok()) {
        finish(s);
        break;
      }
      serving::EmbedItem item;
      item.kind = text ? serving::EmbedItem::Kind::kText : serving::EmbedItem::Kind::kImage;
      item.data = text ? request->text() : request->image();
      if (item.data.empty()) {
        finish(absl::InvalidArgumentError(text ? "query text is empty" : "query image is empty"));
        break;
      }
      state->embedder->Embed(std::move(item), [state, params, run_search,
                                               finish](absl::StatusOr<std::vector<float>> v) {
        if (!v.ok()) {
          finish(v.status());
          return;
        }
        auto q = serving::PrepareQueryVector(*state->snapshot, v->data(), v->size());
        if (!q.ok()) {
          finish(q.status());
          return;
        }
        run_search(std::move(*q), params, /*inline_search=*/false);
      });
      break;
    }
  }
  return reactor;
}

grpc::ServerUnaryReactor* ImageSearchService::SearchBatch(grpc::CallbackServerContext* context,
                                                          const v1::SearchBatchRequest* request,
                                                          v1::SearchBatchResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto finish = [reactor](const absl::Status& s) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  };
  auto state = manager_->Current();
  if (!state) return finish(absl::UnavailableError("no snapshot is loaded yet"));
  const int n = request->requests_size();
  if (n == 0) return finish(absl::InvalidArgumentError("requests is empty"));
  if (n > 256) {
    return finish(absl::InvalidArgumentError(
        absl::StrCat("requests has ", n, " queries; the maximum is 256 per call")));
  }
  if (DeadlinePassed(context)) {
    return finish(absl::DeadlineExceededError("deadline passed before the search started"));
  }
  if (absl::Status admitted = Admit(); !admitted.ok()) return finish(admitted);
  absl::Status status;
  const snapshot::Snapshot& snap = *state->snapshot;
  for (int i = 0; i < n && status.ok(); ++i) {
    const v1::SearchRequest& req = request->requests(i);
    serving::SearchParams params;
    params.top_k = req.top_k();
    params.ef = req.ef();
    absl::StatusOr<std::vector<float>> query;
    switch (req.query_case()) {
      case v1::SearchRequest::kVector:
        query = serving::PrepareQueryVector(snap, req.vector().values().data(),
                                            static_cast<size_t>(req.vector().values_size()));
        break;
      case v1::SearchRequest::kId: {
        auto v = serving::VectorOfId(snap, req.id());
        if (v.ok()) {
          if (!req.include_self()) params.exclude_row = v->second;
          query = std::move(v->first);
        } else {
          query = v.status();
        }
        break;
      }
      case v1::SearchRequest::kImage:
      case v1::SearchRequest::kText:
        query = absl::InvalidArgumentError(
            "SearchBatch takes vector and id queries; send image and text queries to Search "
            "(or embed them with Embed first)");
        break;
      case v1::SearchRequest::QUERY_NOT_SET:
        query = absl::InvalidArgumentError("query is empty: set one of vector or id");
        break;
    }
    absl::StatusOr<std::vector<serving::Hit>> hits =
        query.ok() ? serving::SearchSnapshot(snap, *query, params)
                   : absl::StatusOr<std::vector<serving::Hit>>(query.status());
    if (!hits.ok()) {
      status = absl::Status(hits.status().code(),
                            absl::StrCat("requests[", i, "]: ", hits.status().message()));
      break;
    }
    FillHits(*hits, snap.version(), response->add_responses());
  }
  inflight_--;
  if (status.ok())
    response->set_snapshot_version(snap.version());
  else
    response->Clear();
  return finish(status);
}

grpc::ServerUnaryReactor* ImageSearchService::Embed(grpc::CallbackServerContext* context,
                                                    const v1::EmbedRequest* request,
                                                    v1::EmbedResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto state = manager_->Current();
  auto fail = [&](const absl::Status& s) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  };
  if (!state) return fail(absl::UnavailableError("no snapshot is loaded yet"));
  const int n = request->inputs_size();
  if (n == 0) return fail(absl::InvalidArgumentError("inputs is empty"));
  if (n > 64) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("inputs has ", n, " items; the maximum is 64 per request")));
  }
  bool any_text = false;
  for (int i = 0; i < n; ++i) {
    const auto& in = request->inputs(i);
    if (in.input_case() == v1::EmbedInput::INPUT_NOT_SET) {
      return fail(absl::InvalidArgumentError(absl::StrCat("inputs[", i, "] is empty")));
    }
    any_text |= in.input_case() == v1::EmbedInput::kText;
  }
  if (absl::Status s = EmbedderAvailable(*state, any_text); !s.ok()) return fail(s);

  // Collects the n results; the last one to arrive finishes the call.
  struct Gather {
    std::mutex mu;
    std::vector<std::vector<float>> vectors;
    absl::Status first_error;
    int remaining;
  };
  auto gather = std::make_shared<Gather>();
  gather->vectors.resize(n);
  gather->remaining = n;
  for (int i = 0; i < n; ++i) {
    const auto& in = request->inputs(i);
    serving::EmbedItem item;
    const bool text = in.input_case() == v1::EmbedInput::kText;
    item.kind = text ? serving::EmbedItem::Kind::kText : serving::EmbedItem::Kind::kImage;
    item.data = text ? in.text() : in.image();
    state->embedder->Embed(std::move(item), [gather, i, state, response,
                                             reactor](absl::StatusOr<std::vector<float>> v) {
      std::unique_lock<std::mutex> lock(gather->mu);
      if (v.ok()) {
        gather->vectors[i] = std::move(*v);
      } else if (gather->first_error.ok()) {
        gather->first_error = absl::Status(v.status().code(),
                                           absl::StrCat("inputs[", i, "]: ", v.status().message()));
      }
      if (--gather->remaining > 0) return;
      lock.unlock();
      if (!gather->first_error.ok()) {
        reactor->Finish(ToGrpc(gather->first_error));
        return;
      }
      response->set_snapshot_version(state->snapshot->version());
      response->set_model_name(state->snapshot->manifest().model.name);
      for (auto& vec : gather->vectors) {
        auto* out = response->add_embeddings();
        out->mutable_values()->Add(vec.begin(), vec.end());
      }
      reactor->Finish(grpc::Status::OK);
    });
  }
  return reactor;
}

grpc::ServerUnaryReactor* ImageSearchService::GetInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetInfoRequest* /*request*/,
                                                      v1::GetInfoResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto state = manager_->Current();
  if (!state) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "no snapshot is loaded yet"));
    return reactor;
  }
  const auto& m = state->snapshot->manifest();
  response->set_snapshot_version(m.version);
  response->set_dim(static_cast<uint32_t>(m.dim));
  response->set_metric(ToProto(m.metric));
  response->set_vector_count(m.count);
  response->set_created_at(m.created_at);
  response->set_base_version(m.base_version);
  response->set_max_top_k(serving::kMaxTopK);
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
  model->set_loaded(state->embedder != nullptr);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace imagesearch
