#include "libs/serving/query_core.h"

#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "libs/common/client_text.h"

namespace imagesearch::serving {
namespace {

// Why `state` cannot embed `text` or image queries, or OK.
absl::Status EmbedderAvailable(const ServingState& state, bool text) {
  const auto& model = state.snapshot->manifest().model;
  if (model.name.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot v", state.snapshot->version(),
                     " holds raw vectors and has no model; image and text queries need a snapshot "
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

// Checks an image or text payload before anything decodes it.
absl::Status CheckPayload(const Query& q, const QueryCoreOptions& o, absl::string_view what) {
  const bool text = q.kind == Query::Kind::kText;
  if (q.data.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  const size_t limit = text ? o.max_text_bytes : o.max_image_bytes;
  if (q.data.size() > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", q.data.size(), " bytes; the limit is ", limit));
  }
  return absl::OkStatus();
}

EmbedItem ToEmbedItem(const Query& q) {
  EmbedItem item;
  item.kind = q.kind == Query::Kind::kText ? EmbedItem::Kind::kText : EmbedItem::Kind::kImage;
  item.data = std::string(q.data);
  return item;
}

// The rows the query's filter allows, as SearchParams::allowed (unset for no
// filter). Checked and evaluated before any model work.
absl::Status ApplyFilter(const snapshot::Snapshot& snap, const Query& q, SearchParams* params) {
  if (q.filter == nullptr || q.filter->empty()) return absl::OkStatus();
  auto allowed = EvaluateFilter(snap, *q.filter);
  if (!allowed.ok()) return allowed.status();
  params->allowed = std::make_shared<const index::RowFilter>(*std::move(allowed));
  return absl::OkStatus();
}

// The prepared query vector and params of a vector or id query.
absl::StatusOr<std::pair<std::vector<float>, SearchParams>> VectorQuery(
    const snapshot::Snapshot& snap, const Query& q) {
  SearchParams params = q.params;
  if (absl::Status s = ApplyFilter(snap, q, &params); !s.ok()) return s;
  if (q.kind == Query::Kind::kVector) {
    auto v = PrepareQueryVector(snap, q.vector.data(), q.vector.size());
    if (!v.ok()) return v.status();
    return std::make_pair(*std::move(v), params);
  }
  auto v = VectorOfId(snap, q.id);
  if (!v.ok()) return v.status();
  if (!q.include_self) params.exclude_row = v->second;
  return std::make_pair(std::move(v->first), params);
}

absl::StatusOr<SearchResult> RunSearch(const snapshot::Snapshot& snap,
                                       const std::vector<float>& vector,
                                       const SearchParams& params) {
  uint32_t collapsed = 0;
  auto hits = SearchSnapshot(snap, vector, params, &collapsed);
  if (!hits.ok()) return hits.status();
  return SearchResult{*std::move(hits), snap.version(), collapsed};
}

}  // namespace

QueryCore::QueryCore(SnapshotManager* manager, Metrics* metrics, QueryCoreOptions options)
    : manager_(manager), metrics_(metrics), options_(options) {}

template <typename T>
QueryCore::Done<T> QueryCore::Track(absl::string_view method, const CallContext& context,
                                    Done<T> done) {
  inflight_++;
  if (metrics_ != nullptr) metrics_->AddInflight(1);
  return [this, method, front = context.front, start = absl::Now(),
          done = std::move(done)](absl::StatusOr<T> result) {
    // Counted before the answer goes out, so a scrape that follows an
    // answer always sees it.
    if (metrics_ != nullptr) {
      metrics_->RecordRequest(front, method, result.status().code(), absl::Now() - start);
      metrics_->AddInflight(-1);
    }
    inflight_--;
    done(std::move(result));
  };
}

absl::Status QueryCore::Admit() const {
  if (draining_) return absl::UnavailableError("server is shutting down");
  // inflight_ already counts the caller.
  if (inflight_.load() > options_.max_inflight_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "server overloaded: ", options_.max_inflight_requests, " requests already in flight"));
  }
  return absl::OkStatus();
}

void QueryCore::Search(const Query& query, const CallContext& context, Done<SearchResult> done) {
  done = Track("Search", context, std::move(done));
  if (absl::Status s = Admit(); !s.ok()) return done(s);
  std::shared_ptr<const ServingState> state = manager_->Current();
  if (!state) return done(absl::UnavailableError("no snapshot is loaded yet"));
  if (absl::Status s = ValidateSearchParams(query.params); !s.ok()) return done(s);
  const snapshot::Snapshot& snap = *state->snapshot;
  switch (query.kind) {
    case Query::Kind::kNone:
      return done(
          absl::InvalidArgumentError("query is empty: set one of vector, id, image or text"));
    case Query::Kind::kVector:
    case Query::Kind::kId: {
      auto q = VectorQuery(snap, query);
      if (!q.ok()) return done(q.status());
      if (absl::Status s = context.Check("the search started"); !s.ok()) return done(s);
      return done(RunSearch(snap, q->first, q->second));
    }
    case Query::Kind::kImage:
    case Query::Kind::kText: {
      const bool text = query.kind == Query::Kind::kText;
      if (absl::Status s = CheckPayload(query, options_, text ? "query text" : "query image");
          !s.ok()) {
        return done(s);
      }
      if (absl::Status s = EmbedderAvailable(*state, text); !s.ok()) return done(s);
      SearchParams params = query.params;
      if (absl::Status s = ApplyFilter(snap, query, &params); !s.ok()) return done(s);
      if (absl::Status s = context.Check("decoding"); !s.ok()) return done(s);
      std::vector<EmbedItem> items;
      items.push_back(ToEmbedItem(query));
      state->embedder->Embed(std::move(items), context,
                             [state, context, params = std::move(params),
                              done = std::move(done)](absl::StatusOr<Embedder::Vectors> v) {
                               if (!v.ok()) return done(v.status());
                               const snapshot::Snapshot& snap = *state->snapshot;
                               auto q = PrepareQueryVector(snap, (*v)[0].data(), (*v)[0].size());
                               if (!q.ok()) return done(q.status());
                               if (absl::Status s = context.Check("the search started"); !s.ok())
                                 return done(s);
                               done(RunSearch(snap, *q, params));
                             });
      return;
    }
  }
}

void QueryCore::SearchBatch(absl::Span<const Query> queries, const CallContext& context,
                            Done<std::vector<SearchResult>> done) {
  done = Track("SearchBatch", context, std::move(done));
  if (absl::Status s = Admit(); !s.ok()) return done(s);
  std::shared_ptr<const ServingState> state = manager_->Current();
  if (!state) return done(absl::UnavailableError("no snapshot is loaded yet"));
  const size_t n = queries.size();
  if (n == 0) return done(absl::InvalidArgumentError("requests is empty"));
  if (n > static_cast<size_t>(options_.max_batch_queries)) {
    return done(absl::InvalidArgumentError(absl::StrCat(
        "requests has ", n, " queries; the maximum is ", options_.max_batch_queries, " per call")));
  }
  const snapshot::Snapshot& snap = *state->snapshot;
  // Validate everything before searching anything.
  std::vector<std::pair<std::vector<float>, SearchParams>> prepared;
  prepared.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const Query& q = queries[i];
    absl::Status status = ValidateSearchParams(q.params);
    if (status.ok()) {
      switch (q.kind) {
        case Query::Kind::kVector:
        case Query::Kind::kId: {
          auto v = VectorQuery(snap, q);
          if (v.ok()) {
            prepared.push_back(*std::move(v));
          } else {
            status = v.status();
          }
          break;
        }
        case Query::Kind::kImage:
        case Query::Kind::kText:
          status = absl::InvalidArgumentError(
              "SearchBatch takes vector and id queries; send image and text queries to Search "
              "(or embed them with Embed first)");
          break;
        case Query::Kind::kNone:
          status = absl::InvalidArgumentError("query is empty: set one of vector or id");
          break;
      }
    }
    if (!status.ok()) {
      return done(
          absl::Status(status.code(), absl::StrCat("requests[", i, "]: ", status.message())));
    }
  }
  if (absl::Status s = context.Check("the search started"); !s.ok()) return done(s);
  std::vector<SearchResult> results;
  results.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    auto r = RunSearch(snap, prepared[i].first, prepared[i].second);
    if (!r.ok()) {
      return done(absl::Status(r.status().code(),
                               absl::StrCat("requests[", i, "]: ", r.status().message())));
    }
    results.push_back(*std::move(r));
  }
  done(std::move(results));
}

void QueryCore::Embed(absl::Span<const Query> items, const CallContext& context,
                      Done<EmbedResult> done) {
  done = Track("Embed", context, std::move(done));
  if (absl::Status s = Admit(); !s.ok()) return done(s);
  std::shared_ptr<const ServingState> state = manager_->Current();
  if (!state) return done(absl::UnavailableError("no snapshot is loaded yet"));
  const size_t n = items.size();
  if (n == 0) return done(absl::InvalidArgumentError("inputs is empty"));
  if (n > static_cast<size_t>(options_.max_embed_inputs)) {
    return done(absl::InvalidArgumentError(absl::StrCat(
        "inputs has ", n, " items; the maximum is ", options_.max_embed_inputs, " per request")));
  }
  bool any_text = false;
  bool any_model = false;
  // Ids' stored vectors are read here; images and texts go to the model.
  EmbedResult out{Embedder::Vectors(n), state->snapshot->version(),
                  state->snapshot->manifest().model.name};
  for (size_t i = 0; i < n; ++i) {
    const Query& q = items[i];
    if (q.kind == Query::Kind::kId) {
      auto v = VectorOfId(*state->snapshot, q.id);
      if (!v.ok()) {
        return done(absl::Status(v.status().code(),
                                 absl::StrCat("inputs[", i, "]: ", v.status().message())));
      }
      out.vectors[i] = std::move(v->first);
      continue;
    }
    if (q.kind != Query::Kind::kImage && q.kind != Query::Kind::kText) {
      return done(absl::InvalidArgumentError(absl::StrCat("inputs[", i, "] is empty")));
    }
    if (absl::Status s = CheckPayload(q, options_, absl::StrCat("inputs[", i, "]")); !s.ok()) {
      return done(s);
    }
    any_text |= q.kind == Query::Kind::kText;
    any_model = true;
  }
  if (!any_model) return done(std::move(out));
  if (absl::Status s = EmbedderAvailable(*state, any_text); !s.ok()) return done(s);
  if (absl::Status s = context.Check("decoding"); !s.ok()) return done(s);
  std::vector<EmbedItem> embed_items;
  std::vector<size_t> at;  // Where each embedded item's vector goes.
  for (size_t i = 0; i < n; ++i) {
    if (items[i].kind == Query::Kind::kId) continue;
    embed_items.push_back(ToEmbedItem(items[i]));
    at.push_back(i);
  }
  state->embedder->Embed(std::move(embed_items), context,
                         [state, out = std::move(out), at = std::move(at),
                          done = std::move(done)](absl::StatusOr<Embedder::Vectors> v) mutable {
                           if (!v.ok()) return done(v.status());
                           for (size_t k = 0; k < at.size(); ++k)
                             out.vectors[at[k]] = std::move((*v)[k]);
                           done(std::move(out));
                         });
}

absl::StatusOr<std::shared_ptr<const ServingState>> QueryCore::Info(const CallContext& context) {
  absl::StatusOr<std::shared_ptr<const ServingState>> result;
  auto done = Track<std::shared_ptr<const ServingState>>(
      "GetInfo", context,
      [&result](absl::StatusOr<std::shared_ptr<const ServingState>> r) { result = std::move(r); });
  if (absl::Status s = Admit(); !s.ok()) {
    done(s);
    return result;
  }
  auto state = manager_->Current();
  if (!state) {
    done(absl::UnavailableError("no snapshot is loaded yet"));
  } else {
    done(std::move(state));
  }
  return result;
}

absl::StatusOr<ThumbnailResult> QueryCore::Thumbnail(absl::string_view id,
                                                     const CallContext& context) {
  absl::StatusOr<ThumbnailResult> result;
  auto done = Track<ThumbnailResult>(
      "Thumbnail", context,
      [&result](absl::StatusOr<ThumbnailResult> r) { result = std::move(r); });
  if (absl::Status s = Admit(); !s.ok()) {
    done(s);
    return result;
  }
  done([&]() -> absl::StatusOr<ThumbnailResult> {
    std::shared_ptr<const ServingState> state = manager_->Current();
    if (!state) return absl::UnavailableError("no snapshot is loaded yet");
    const snapshot::Snapshot& snap = *state->snapshot;
    if (!snap.has_thumbnails()) {
      return absl::NotFoundError(absl::StrCat("snapshot v", snap.version(),
                                              " has no thumbnails (indexed with "
                                              "--thumbnails=false, or built from raw vectors)"));
    }
    auto row = RowOfId(snap, id);
    if (!row.ok()) return row.status();
    auto bytes = snap.Thumbnail(*row);
    if (!bytes.ok()) return bytes.status();
    if (bytes->empty()) {
      return absl::NotFoundError(absl::StrCat("id ", QuoteClientText(id),
                                              " has no thumbnail in snapshot v", snap.version()));
    }
    return ThumbnailResult{*bytes, snapshot::kThumbsMediaType, snap.version(), std::move(state)};
  }());
  return result;
}

bool QueryCore::Serving() const { return !draining_ && manager_->Current() != nullptr; }

void QueryCore::StartDraining() { draining_ = true; }

bool QueryCore::WaitIdle(absl::Duration timeout) const {
  const absl::Time until = absl::Now() + timeout;
  while (inflight_.load() > 0) {
    if (absl::Now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace imagesearch::serving
