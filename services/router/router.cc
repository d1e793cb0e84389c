#include "services/router/router.h"

#include <algorithm>
#include <cmath>
#include <future>
#include <limits>
#include <mutex>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "libs/index/metric.h"
#include "libs/serving/query_core.h"
#include "libs/serving/query_engine.h"
#include "libs/snapshot/shard.h"

namespace imagesearch::router {
namespace {

using serving::kDefaultTopK;
using serving::kMaxTopK;
// A replica's limits on Embed calls and payloads, which the router applies
// to what it embeds itself and to the calls it splits.
const serving::QueryCoreOptions kReplicaLimits;

// Runs call(i, done_i) for i in [0, n) and then done(results), once all of
// them have answered (in any thread).
template <typename T>
void GatherAll(size_t n, const std::function<void(size_t, Router::Done<T>)>& call,
               std::function<void(std::vector<absl::StatusOr<T>>)> done) {
  struct State {
    std::mutex mu;
    std::vector<absl::StatusOr<T>> results;
    size_t left;
    std::function<void(std::vector<absl::StatusOr<T>>)> done;
  };
  auto state = std::make_shared<State>();
  state->results.assign(n, absl::UnknownError("not answered"));
  state->left = n;
  state->done = std::move(done);
  for (size_t i = 0; i < n; ++i) {
    call(i, [state, i](absl::StatusOr<T> r) {
      bool last = false;
      {
        std::lock_guard<std::mutex> lock(state->mu);
        state->results[i] = std::move(r);
        last = --state->left == 0;
      }
      if (last) state->done(std::move(state->results));
    });
  }
}

// A shard call's answer as a message of its own (copied off the call's
// arena), for the calls whose answers are not on the hot path.
template <typename T>
std::function<void(absl::StatusOr<ShardClient::Answer<T>>)> Copied(Router::Done<T> done) {
  return [done = std::move(done)](absl::StatusOr<ShardClient::Answer<T>> r) {
    if (!r.ok()) return done(r.status());
    done(T(**r));
  };
}

// A shard's error that is about the request (the same from every shard and
// from a single replica), as opposed to the shard not answering: the codes
// of ShardClient::QueryError. A replica shedding load (RESOURCE_EXHAUSTED)
// or turning the router's credentials away (UNAUTHENTICATED,
// PERMISSION_DENIED) says nothing about the query.
bool IsRequestError(absl::StatusCode code) {
  return ShardClient::QueryError(static_cast<grpc::StatusCode>(code));
}

// A shard call's failure that is not about the request, named after its
// shard ("shard 1 of 2 (target): failed to connect ..."); an error about
// the request passes as the replica said it.
template <typename T>
Router::Done<T> Named(std::string shard, Router::Done<T> done) {
  return [shard = std::move(shard), done = std::move(done)](absl::StatusOr<T> r) {
    if (r.ok() || IsRequestError(r.status().code())) return done(std::move(r));
    done(absl::Status(r.status().code(), absl::StrCat(shard, ": ", r.status().message())));
  };
}

// An error about "inputs[k]" of a part of an Embed request, as about the
// request's own input positions[k].
absl::Status AtRequestPosition(const absl::Status& s, const std::vector<int>& positions) {
  absl::string_view m = s.message();
  if (!absl::ConsumePrefix(&m, "inputs[")) return s;
  const size_t close = m.find("]");
  size_t k = 0;
  if (close == absl::string_view::npos || !absl::SimpleAtoi(m.substr(0, close), &k) ||
      k >= positions.size()) {
    return s;
  }
  return absl::Status(s.code(), absl::StrCat("inputs[", positions[k], m.substr(close)));
}

// The deadline of a query's shard calls: nine tenths of the caller's time
// left, so that a shard that has not answered by then is given up and the
// caller gets the others' answer (allow_partial) or an error naming that
// shard before its own deadline ends the call with a bare DEADLINE_EXCEEDED.
absl::Time ShardDeadline(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return deadline;
  const absl::Time now = absl::Now();
  return now + (deadline - now) * 0.9;
}
// GetInfo's shard calls: at most this long (an operator's view of a hung shard).
constexpr absl::Duration kInfoShardTimeout = absl::Seconds(2);

std::string ShardName(const ShardClient& s, uint32_t count) {
  return absl::StrCat("shard ", s.index(), " of ", count, " (", s.target(), ")");
}

}  // namespace

Router::Router(const RouterOptions& options)
    : embedder_(options.embedder), model_sha256_(options.model_sha256) {
  for (size_t i = 0; i < options.shard_targets.size(); ++i) {
    shards_.push_back(std::make_unique<ShardClient>(static_cast<uint32_t>(i),
                                                    options.shard_targets[i], options.shard));
  }
}

void Router::CancelAll() {
  for (auto& s : shards_) s->CancelAll();
}

uint32_t Router::NextShard() { return rotate_.fetch_add(1) % shard_count(); }

void Router::ShardSearch(uint32_t shard, std::shared_ptr<const v1::SearchRequest> request,
                         absl::Time deadline, Cancelled cancelled,
                         Done<ShardClient::Answer<v1::SearchResponse>> done) {
  ShardClient* s = shards_[shard].get();
  // Every hit must be a row of this shard: a replica restarted at a listed
  // address as another shard's (until its next check) would otherwise put
  // that shard's rows in twice and this shard's in not at all.
  ShardClient::Vet<v1::SearchResponse> vet = [shard,
                                              count = shard_count()](const v1::SearchResponse& r) {
    for (const v1::Hit& h : r.hits()) {
      if (const uint32_t owner = snapshot::ShardOf(h.id(), count); owner != shard) {
        return absl::StrCat("answered with row '", h.id(), "' of shard ", owner, ", not of shard ",
                            shard);
      }
    }
    return std::string();
  };
  s->Call<v1::SearchRequest, v1::SearchResponse>(
      [](v1::ImageSearch::Stub* stub, grpc::ClientContext* c, const v1::SearchRequest& q,
         grpc::CompletionQueue* queue) { return stub->PrepareAsyncSearch(c, q, queue); },
      std::move(request), deadline, std::move(done), std::move(cancelled), std::move(vet));
}

void Router::ShardEmbed(uint32_t shard, const v1::EmbedRequest& request, absl::Time deadline,
                        Done<v1::EmbedResponse> done, Cancelled cancelled) {
  ShardClient* s = shards_[shard].get();
  // An answer is used only with a vector for every input, each of the
  // collection's dimension: a replica that says otherwise is broken, and
  // its answer an error naming it.
  const int inputs = request.inputs_size();
  Done<v1::EmbedResponse> checked = [this, inputs,
                                     done = Named(ShardName(*s, shard_count()), std::move(done))](
                                        absl::StatusOr<v1::EmbedResponse> r) {
    if (!r.ok()) return done(std::move(r));
    std::string wrong;
    if (r->embeddings_size() != inputs) {
      wrong = absl::StrCat(r->embeddings_size(), " vectors for ", inputs, " inputs");
    } else {
      for (int j = 0; j < inputs && wrong.empty(); ++j) {
        const int d = r->embeddings(j).values_size();
        if (d != static_cast<int>(dim_)) {
          wrong =
              absl::StrCat("a ", d, "-d vector for inputs[", j, "] of a ", dim_, "-d collection");
        }
      }
    }
    if (!wrong.empty()) {
      return done(absl::InternalError(absl::StrCat("answered an Embed with ", wrong)));
    }
    done(std::move(r));
  };
  s->Call<v1::EmbedRequest, v1::EmbedResponse>(
      [](v1::ImageSearch::Stub* stub, grpc::ClientContext* c, const v1::EmbedRequest& q,
         grpc::CompletionQueue* queue) { return stub->PrepareAsyncEmbed(c, q, queue); },
      std::make_shared<const v1::EmbedRequest>(request), deadline, Copied(std::move(checked)),
      std::move(cancelled));
}

void Router::GetThumbnail(const std::string& id, absl::Time deadline,
                          Done<v1::GetThumbnailResponse> done) {
  // Only the shard that owns the id can hold its thumbnail.
  ShardClient* s = shards_[snapshot::ShardOf(id, shard_count())].get();
  v1::GetThumbnailRequest request;
  request.set_id(id);
  s->Call<v1::GetThumbnailRequest, v1::GetThumbnailResponse>(
      [](v1::ImageSearch::Stub* stub, grpc::ClientContext* c, const v1::GetThumbnailRequest& q,
         grpc::CompletionQueue* queue) { return stub->PrepareAsyncGetThumbnail(c, q, queue); },
      std::make_shared<const v1::GetThumbnailRequest>(std::move(request)), deadline,
      Copied(Named(ShardName(*s, shard_count()), std::move(done))));
}

void Router::ShardInfo(uint32_t shard, absl::Time deadline, Done<v1::GetInfoResponse> done) {
  ShardClient* s = shards_[shard].get();
  s->Call<v1::GetInfoRequest, v1::GetInfoResponse>(
      [](v1::ImageSearch::Stub* stub, grpc::ClientContext* c, const v1::GetInfoRequest& q,
         grpc::CompletionQueue* queue) { return stub->PrepareAsyncGetInfo(c, q, queue); },
      std::make_shared<const v1::GetInfoRequest>(), deadline, Copied(std::move(done)));
}

// Whether `info` is the GetInfo of a replica of shard `i` of `count` of the
// collection `like` describes (null: any collection); if not, what it
// serves instead.
static absl::Status FitsShard(const v1::GetInfoResponse& info, uint32_t i, uint32_t count,
                              const v1::GetInfoResponse* like) {
  if (!info.has_shard() || info.shard().count() != count || info.shard().index() != i) {
    return absl::FailedPreconditionError(absl::StrCat(
        "serves ",
        info.has_shard()
            ? absl::StrCat("shard ", info.shard().index(), " of ", info.shard().count())
            : std::string("an unsharded collection"),
        ", not shard ", i, " of ", count,
        ": the router's shard list must name the shards in order, all of them"));
  }
  if (like != nullptr &&
      (info.shard().collection() != like->shard().collection() || info.dim() != like->dim() ||
       info.metric() != like->metric() || info.model().sha256() != like->model().sha256())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "is collection '", info.shard().collection(), "' (", info.dim(), "-d, model '",
        info.model().name(), "'), the others '", like->shard().collection(), "' (", like->dim(),
        "-d, model '", like->model().name(), "'): the shards are not one collection"));
  }
  return absl::OkStatus();
}

ShardClient::Check Router::CheckOf(uint32_t shard) const {
  return [shard, count = shard_count(), like = *identity_](const v1::GetInfoResponse& info) {
    return FitsShard(info, shard, count, &like);
  };
}

absl::Status Router::Discover(absl::Time deadline) {
  if (shards_.empty()) return absl::InvalidArgumentError("no shards given");
  const uint32_t count = shard_count();
  while (true) {
    // What the collection is: the first replica that answers, if it is a
    // shard in its place. The replicas asked for it are judged on what they
    // said, so Verify below asks only those that did not answer.
    for (uint32_t i = 0; i < count && !identity_.has_value(); ++i) {
      const auto set = shards_[i]->replicas();
      const std::vector<std::shared_ptr<ShardClient::Replica>> replicas(set->begin(), set->end());
      const auto infos = shards_[i]->AskAll(
          replicas, std::min(deadline, absl::Now() + ShardClient::kCheckTimeout));
      for (size_t k = 0; k < replicas.size(); ++k) {
        if (!infos[k].ok()) continue;
        if (absl::Status fits = FitsShard(*infos[k], i, count, nullptr); !fits.ok()) {
          return absl::FailedPreconditionError(absl::StrCat(ShardName(*shards_[i], count),
                                                            ": replica ", replicas[k]->address, " ",
                                                            fits.message()));
        }
        if (!identity_.has_value()) identity_ = *infos[k];
      }
      // Without an identity no replica answered: the check is never called.
      const ShardClient::Check check = identity_.has_value() ? CheckOf(i) : nullptr;
      for (size_t k = 0; k < replicas.size(); ++k) shards_[i]->Judge(*replicas[k], infos[k], check);
    }
    if (identity_.has_value()) {
      // Every replica of every shard: one that answers as something else is
      // a list to fix, not a replica to leave out quietly.
      bool all = true;
      for (uint32_t i = 0; i < count; ++i) {
        ShardClient& shard = *shards_[i];
        shard.Verify(CheckOf(i), snapshot::ShardStamp({identity_->shard().collection(), i, count}),
                     deadline);
        for (const auto& r : *shard.replicas()) {
          if (r->state.load() == ShardClient::Replica::State::kWrong) {
            return absl::FailedPreconditionError(
                absl::StrCat(ShardName(shard, count), ": replica ", r->address, " ", r->Why()));
          }
        }
        all = all && shard.AnyGood();
      }
      if (all) break;
    }
    // No round that the deadline would cut short: its calls would end as
    // DEADLINE_EXCEEDED and hide why the replicas did not answer (a refused
    // connection fails in a millisecond; that is the error to report).
    constexpr absl::Duration kPause = absl::Milliseconds(100);
    if (absl::Now() + kPause >= deadline) {
      std::string why;
      for (uint32_t i = 0; i < count; ++i) {
        if (identity_.has_value() && shards_[i]->AnyGood()) continue;
        absl::StrAppend(&why, why.empty() ? "" : "; ", ShardName(*shards_[i], count),
                        " has no replica answering (", shards_[i]->NotGood(), ")");
      }
      return absl::UnavailableError(why);
    }
    absl::SleepFor(kPause);
  }
  const v1::GetInfoResponse* first = &*identity_;
  if (embedder_ != nullptr) {
    if (first->model().sha256() != model_sha256_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--model (sha256 ", model_sha256_.substr(0, 12), "...) is not the collection's model '",
          first->model().name(), "' (sha256 ", first->model().sha256().substr(0, 12),
          first->model().sha256().empty() ? "; a vector-only collection" : "...", ")"));
    }
    if (static_cast<uint32_t>(embedder_->dim()) != first->dim()) {
      return absl::FailedPreconditionError(absl::StrCat("--model embeds ", embedder_->dim(),
                                                        "-d vectors; the collection is ",
                                                        first->dim(), "-d"));
    }
  }
  collection_ = first->shard().collection();
  model_name_ = first->model().name();
  dim_ = first->dim();
  return absl::OkStatus();
}

void Router::Search(const v1::SearchRequest& request, absl::Time deadline,
                    Done<v1::SearchResponse> done, Cancelled cancelled) {
  // After the model (or the id's lookup), before the shards are asked.
  const auto gone = [cancelled] { return cancelled && cancelled(); };
  const uint32_t top_k = request.top_k() == 0 ? kDefaultTopK : request.top_k();
  if (top_k > kMaxTopK) {
    return done(absl::InvalidArgumentError(
        absl::StrCat("top_k ", top_k, " is out of range: the maximum is ", kMaxTopK)));
  }
  // No time at all (HTTP's timeout_ms=0): as a replica says it, not blamed
  // on the shards.
  if (absl::Now() >= deadline) {
    return done(absl::DeadlineExceededError("deadline passed before the search started"));
  }
  switch (request.query_case()) {
    case v1::SearchRequest::kVector:
      return FanOut(request, top_k, std::nullopt, nullptr, deadline, std::move(cancelled),
                    std::move(done));
    case v1::SearchRequest::kId: {
      // The id's stored vector, from the one shard that can hold it.
      const uint32_t owner = snapshot::ShardOf(request.id(), shard_count());
      v1::EmbedRequest embed;
      embed.add_inputs()->set_id(request.id());
      ShardEmbed(
          owner, embed, deadline,
          [this, request = request, owner, top_k, deadline, cancelled, gone,
           done = std::move(done)](absl::StatusOr<v1::EmbedResponse> e) mutable {
            if (e.ok() && gone()) {
              return done(
                  absl::CancelledError("client cancelled the call before the shards were asked"));
            }
            if (!e.ok()) {
              const absl::Status& s = e.status();
              if (s.code() == absl::StatusCode::kDeadlineExceeded) {
                return done(absl::DeadlineExceededError(absl::StrCat(
                    "the deadline passed before ", ShardName(*shards_[owner], shard_count()),
                    ", which holds id '", request.id().substr(0, 64), "', answered")));
              }
              // The router's own check of the answer names the shard already.
              if (s.code() == absl::StatusCode::kInternal &&
                  absl::StartsWith(s.message(), "shard ")) {
                return done(s);
              }
              if (!IsRequestError(s.code())) {
                return done(absl::UnavailableError(absl::StrCat(
                    ShardName(*shards_[owner], shard_count()), ", which holds id '",
                    request.id().substr(0, 64), "', is not answering: ", s.message())));
              }
              // As a replica says it ("id 'x' is not in snapshot v3"), without
              // the "inputs[0]: " of the Embed call it came from; a version
              // is one shard's, so NOT_FOUND names which ("... of shard 1 of 3").
              absl::string_view message = s.message();
              absl::ConsumePrefix(&message, "inputs[0]: ");
              if (s.code() == absl::StatusCode::kNotFound) {
                return done(absl::NotFoundError(
                    absl::StrCat(message, " of shard ", owner, " of ", shard_count())));
              }
              return done(absl::Status(s.code(), message));
            }
            request.set_top_k(top_k);
            auto as_is = std::make_shared<const v1::SearchRequest>(request);
            *request.mutable_vector() = std::move(*e->mutable_embeddings(0));
            FanOut(std::move(request), top_k, owner, std::move(as_is), deadline,
                   std::move(cancelled), std::move(done));
          },
          cancelled);
      return;
    }
    case v1::SearchRequest::kImage:
    case v1::SearchRequest::kText: {
      v1::EmbedRequest embed;
      if (request.query_case() == v1::SearchRequest::kImage) {
        embed.add_inputs()->set_image(request.image());
      } else {
        embed.add_inputs()->set_text(request.text());
      }
      EmbedModelInputs(embed, /*from_search=*/true, deadline, cancelled,
                       [this, request = request, top_k, deadline, cancelled, gone,
                        done = std::move(done)](absl::StatusOr<v1::EmbedResponse> e) mutable {
                         if (!e.ok()) return done(e.status());
                         if (gone()) {
                           return done(absl::CancelledError(
                               "client cancelled the call before the shards were asked"));
                         }
                         *request.mutable_vector() = e->embeddings(0);
                         FanOut(std::move(request), top_k, std::nullopt, nullptr, deadline,
                                std::move(cancelled), std::move(done));
                       });
      return;
    }
    default:
      return done(
          absl::InvalidArgumentError("query is empty: set one of vector, id, image or text"));
  }
}

void Router::EmbedModelInputs(const v1::EmbedRequest& request, bool from_search,
                              absl::Time deadline, Cancelled cancelled,
                              Done<v1::EmbedResponse> done) {
  if (embedder_ == nullptr) {
    return EmbedOnShards(std::make_shared<const v1::EmbedRequest>(request), NextShard(),
                         shard_count(), deadline, std::move(cancelled), std::move(done));
  }
  // A replica's checks (libs/serving/query_core.cc), before any decoding.
  // The item count was checked by the caller (Embed; a Search has one).
  const int n = request.inputs_size();
  std::vector<serving::EmbedItem> items;
  for (int i = 0; i < n; ++i) {
    const v1::EmbedInput& in = request.inputs(i);
    const bool text = in.input_case() == v1::EmbedInput::kText;
    const std::string what =
        from_search ? (text ? "query text" : "query image") : absl::StrCat("inputs[", i, "]");
    if (!text && in.input_case() != v1::EmbedInput::kImage) {
      return done(absl::InvalidArgumentError(absl::StrCat(what, ": set one of image, text or id")));
    }
    serving::EmbedItem item;
    item.kind = text ? serving::EmbedItem::Kind::kText : serving::EmbedItem::Kind::kImage;
    item.data = text ? in.text() : in.image();
    const size_t limit = text ? kReplicaLimits.max_text_bytes : kReplicaLimits.max_image_bytes;
    if (item.data.empty()) return done(absl::InvalidArgumentError(absl::StrCat(what, " is empty")));
    if (item.data.size() > limit) {
      return done(absl::InvalidArgumentError(
          absl::StrCat(what, " is ", item.data.size(), " bytes; the limit is ", limit)));
    }
    items.push_back(std::move(item));
  }
  serving::CallContext context;
  context.front = "router";
  context.deadline = deadline;
  context.cancelled = std::move(cancelled);
  embedder_->Embed(std::move(items), context,
                   [this, done = std::move(done)](absl::StatusOr<serving::Embedder::Vectors> v) {
                     if (!v.ok()) return done(v.status());
                     v1::EmbedResponse out;
                     for (const std::vector<float>& one : *v) {
                       out.add_embeddings()->mutable_values()->Assign(one.begin(), one.end());
                     }
                     out.set_model_name(model_name_);
                     done(std::move(out));
                   });
}

void Router::EmbedOnShards(std::shared_ptr<const v1::EmbedRequest> request, uint32_t shard,
                           uint32_t tries, absl::Time deadline, Cancelled cancelled,
                           Done<v1::EmbedResponse> done) {
  ShardEmbed(
      shard, *request, deadline,
      [this, request, shard, tries, deadline, cancelled,
       done = std::move(done)](absl::StatusOr<v1::EmbedResponse> e) mutable {
        // Every shard's replicas hold the model: a shard that cannot answer
        // passes the inputs on to the next.
        if (e.ok() || tries <= 1 || IsRequestError(e.status().code()) ||
            e.status().code() == absl::StatusCode::kDeadlineExceeded || absl::Now() >= deadline ||
            (cancelled && cancelled())) {
          return done(std::move(e));
        }
        EmbedOnShards(std::move(request), (shard + 1) % shard_count(), tries - 1, deadline,
                      std::move(cancelled), std::move(done));
      },
      cancelled);
}

void Router::FanOut(v1::SearchRequest request, uint32_t top_k, std::optional<uint32_t> owner,
                    std::shared_ptr<const v1::SearchRequest> owner_request, absl::Time deadline,
                    Cancelled cancelled, Done<v1::SearchResponse> done) {
  request.set_top_k(top_k);
  request.set_include_self(false);
  const bool allow_partial = request.allow_partial();
  const float dedup = request.dedup();
  auto shared = std::make_shared<const v1::SearchRequest>(std::move(request));
  const absl::Time shard_deadline = ShardDeadline(deadline);
  using Answer = ShardClient::Answer<v1::SearchResponse>;
  GatherAll<Answer>(
      shards_.size(),
      [this, shared, owner, owner_request, shard_deadline, cancelled](size_t i, Done<Answer> d) {
        ShardSearch(static_cast<uint32_t>(i), owner == i ? owner_request : shared, shard_deadline,
                    cancelled, std::move(d));
      },
      [this, top_k, allow_partial, dedup, deadline, cancelled,
       done = std::move(done)](std::vector<absl::StatusOr<Answer>> results) {
        // A caller that has gone gets no merge (its shard calls were
        // cancelled: their errors are not the shards').
        if (cancelled && cancelled()) {
          return done(absl::CancelledError("client cancelled the call while the shards searched"));
        }
        const uint32_t count = shard_count();
        std::vector<uint32_t> missing;
        std::string why, late;  // The first failure; the shards cut off by the deadline.
        for (uint32_t i = 0; i < count; ++i) {
          if (results[i].ok()) continue;
          const absl::Status& s = results[i].status();
          if (IsRequestError(s.code())) return done(s);
          missing.push_back(i);
          if (s.code() == absl::StatusCode::kDeadlineExceeded) {
            absl::StrAppend(&late, late.empty() ? "" : ", ", ShardName(*shards_[i], count));
          } else if (why.empty()) {
            why = absl::StrCat(ShardName(*shards_[i], count),
                               " has no replica answering: ", s.message());
          }
        }
        if (!missing.empty() && (!allow_partial || missing.size() == count)) {
          if (!late.empty() && (why.empty() || absl::Now() >= deadline)) {
            return done(absl::DeadlineExceededError(
                absl::StrCat("the deadline passed before ", late, " answered")));
          }
          return done(absl::UnavailableError(
              missing.size() == 1 ? why
                                  : absl::StrCat(missing.size(), " of ", count,
                                                 " shards are not answering; ", why)));
        }
        auto out = std::make_shared<v1::SearchResponse>();
        // The shards' hits (on their calls' arenas) are ordered by pointer;
        // only those kept are copied out.
        std::vector<const v1::Hit*> order;
        size_t total = 0;
        for (const auto& r : results) total += r.ok() ? static_cast<size_t>((*r)->hits_size()) : 0;
        order.reserve(total);
        for (uint32_t i = 0; i < count; ++i) {
          if (!results[i].ok()) continue;
          const v1::SearchResponse& r = **results[i];
          (*out->mutable_shard_versions())[i] = r.snapshot_version();
          out->set_collapsed(out->collapsed() + r.collapsed());
          for (const v1::Hit& h : r.hits()) order.push_back(&h);
        }
        std::stable_sort(order.begin(), order.end(), [](const v1::Hit* a, const v1::Hit* b) {
          if (a->distance() != b->distance()) return a->distance() < b->distance();
          return a->id() < b->id();
        });
        // Dedup may drop some of the best, so it gets them all.
        const size_t keep = dedup > 0 ? order.size() : std::min<size_t>(order.size(), top_k);
        std::vector<v1::Hit> hits(keep);
        for (size_t k = 0; k < keep; ++k) hits[k].CopyFrom(*order[k]);
        for (uint32_t i : missing) out->add_missing_shards(i);
        auto finish = [top_k, out, done](std::vector<v1::Hit> kept) {
          if (kept.size() > top_k) kept.resize(top_k);
          out->mutable_hits()->Reserve(static_cast<int>(kept.size()));
          for (v1::Hit& h : kept) *out->add_hits() = std::move(h);
          done(std::move(*out));
        };
        if (dedup <= 0 || hits.size() < 2) return finish(std::move(hits));
        CollapseAcrossShards(std::move(hits), dedup, top_k, deadline, out.get(), std::move(finish));
      });
}

// Each shard collapsed its own near-duplicates; two shards can still return
// the same picture under two ids. The merged hits' stored vectors (Embed of
// their ids, from their shards) decide, as a replica decides within one
// snapshot: a hit whose cosine similarity to a better kept hit reaches
// `dedup` is dropped and counted in `collapsed`.
void Router::CollapseAcrossShards(std::vector<v1::Hit> hits, float dedup, uint32_t top_k,
                                  absl::Time deadline, v1::SearchResponse* out,
                                  std::function<void(std::vector<v1::Hit>)> finish) {
  const int max_ids_per_embed = kReplicaLimits.max_embed_inputs;
  struct Part {
    uint32_t shard;
    v1::EmbedRequest request;
    std::vector<size_t> positions;  // Into hits.
  };
  auto parts = std::make_shared<std::vector<Part>>();
  std::vector<int> open(shard_count(), -1);  // Shard -> its part being filled.
  for (size_t k = 0; k < hits.size(); ++k) {
    const uint32_t shard = snapshot::ShardOf(hits[k].id(), shard_count());
    if (open[shard] < 0 || (*parts)[open[shard]].request.inputs_size() == max_ids_per_embed) {
      open[shard] = static_cast<int>(parts->size());
      parts->push_back(Part{shard, {}, {}});
    }
    Part& part = (*parts)[open[shard]];
    part.request.add_inputs()->set_id(hits[k].id());
    part.positions.push_back(k);
  }
  auto held = std::make_shared<std::vector<v1::Hit>>(std::move(hits));
  GatherAll<v1::EmbedResponse>(
      parts->size(),
      [this, parts, deadline](size_t k, Done<v1::EmbedResponse> d) {
        ShardEmbed((*parts)[k].shard, (*parts)[k].request, deadline, std::move(d));
      },
      [parts, held, dedup, top_k, out,
       finish = std::move(finish)](std::vector<absl::StatusOr<v1::EmbedResponse>> results) {
        std::vector<std::vector<float>> vectors(held->size());
        for (size_t k = 0; k < results.size(); ++k) {
          // A shard that cannot say (gone since it answered): its hits stay.
          if (!results[k].ok()) continue;
          const Part& part = (*parts)[k];
          for (size_t j = 0; j < part.positions.size(); ++j) {
            const auto& values = results[k]->embeddings(static_cast<int>(j)).values();
            vectors[part.positions[j]].assign(values.begin(), values.end());
          }
        }
        std::vector<v1::Hit> kept;
        std::vector<const std::vector<float>*> kept_vectors;
        uint32_t collapsed = 0;
        for (size_t k = 0; k < held->size() && kept.size() < top_k; ++k) {
          const std::vector<float>& v = vectors[k];
          bool duplicate = false;
          for (const std::vector<float>* w : kept_vectors) {
            if (!v.empty() && w->size() == v.size() &&
                index::CosineSimilarity(v.data(), w->data(), v.size()) >= dedup) {
              duplicate = true;
              break;
            }
          }
          if (duplicate) {
            ++collapsed;
            continue;
          }
          kept.push_back(std::move((*held)[k]));
          kept_vectors.push_back(&v);
        }
        out->set_collapsed(out->collapsed() + collapsed);
        finish(std::move(kept));
      });
}

void Router::SearchBatch(const v1::SearchBatchRequest& request, absl::Time deadline,
                         Done<v1::SearchBatchResponse> done) {
  const size_t n = static_cast<size_t>(request.requests_size());
  if (n == 0) return done(absl::InvalidArgumentError("requests is empty"));
  // A replica's limit: each query here is a call to every shard.
  if (n > static_cast<size_t>(kReplicaLimits.max_batch_queries)) {
    return done(
        absl::InvalidArgumentError(absl::StrCat("requests has ", n, " queries; the maximum is ",
                                                kReplicaLimits.max_batch_queries, " per call")));
  }
  for (size_t i = 0; i < n; ++i) {
    const auto kind = request.requests(static_cast<int>(i)).query_case();
    if (kind == v1::SearchRequest::kImage || kind == v1::SearchRequest::kText) {
      return done(absl::InvalidArgumentError(
          absl::StrCat("requests[", i,
                       "]: image and text queries are not taken by SearchBatch; embed them with "
                       "Embed, or send them to Search")));
    }
  }
  auto shared = std::make_shared<const v1::SearchBatchRequest>(request);
  GatherAll<v1::SearchResponse>(
      n,
      [this, shared, deadline](size_t i, Done<v1::SearchResponse> d) {
        Search(shared->requests(static_cast<int>(i)), deadline, std::move(d));
      },
      [done = std::move(done)](std::vector<absl::StatusOr<v1::SearchResponse>> results) {
        v1::SearchBatchResponse out;
        for (size_t i = 0; i < results.size(); ++i) {
          if (!results[i].ok()) {
            const absl::Status& s = results[i].status();
            return done(absl::Status(s.code(), absl::StrCat("requests[", i, "]: ", s.message())));
          }
          *out.add_responses() = std::move(*results[i]);
        }
        done(std::move(out));
      });
}

void Router::Embed(const v1::EmbedRequest& request, absl::Time deadline,
                   Done<v1::EmbedResponse> done, Cancelled cancelled) {
  // Each id from its own shard; images and texts together from one shard.
  struct Part {
    uint32_t shard;
    v1::EmbedRequest request;
    std::vector<int> positions;
    bool model = false;  // Images and texts: EmbedModelInputs.
  };
  // The request's own limits first: its parts go to different places.
  const int max_inputs = kReplicaLimits.max_embed_inputs;
  if (request.inputs_size() == 0) return done(absl::InvalidArgumentError("inputs is empty"));
  if (request.inputs_size() > max_inputs) {
    return done(absl::InvalidArgumentError(absl::StrCat("inputs has ", request.inputs_size(),
                                                        " items; the maximum is ", max_inputs,
                                                        " per request")));
  }
  auto parts = std::make_shared<std::vector<Part>>();
  Part model_part{0, {}, {}, true};
  for (int i = 0; i < request.inputs_size(); ++i) {
    const v1::EmbedInput& in = request.inputs(i);
    if (in.input_case() == v1::EmbedInput::kId) {
      parts->push_back(Part{snapshot::ShardOf(in.id(), shard_count()), {}, {i}, false});
      *parts->back().request.add_inputs() = in;
    } else {
      *model_part.request.add_inputs() = in;
      model_part.positions.push_back(i);
    }
  }
  if (!model_part.positions.empty()) parts->push_back(std::move(model_part));
  const int n = request.inputs_size();
  GatherAll<v1::EmbedResponse>(
      parts->size(),
      [this, parts, deadline, cancelled](size_t k, Done<v1::EmbedResponse> d) {
        const Part& part = (*parts)[k];
        if (part.model) {
          return EmbedModelInputs(part.request, false, deadline, cancelled, std::move(d));
        }
        ShardEmbed(part.shard, part.request, deadline, std::move(d), cancelled);
      },
      [parts, n, done = std::move(done)](std::vector<absl::StatusOr<v1::EmbedResponse>> results) {
        v1::EmbedResponse out;
        for (int i = 0; i < n; ++i) out.add_embeddings();
        for (size_t k = 0; k < results.size(); ++k) {
          const Part& part = (*parts)[k];
          if (!results[k].ok()) return done(AtRequestPosition(results[k].status(), part.positions));
          for (size_t j = 0; j < part.positions.size(); ++j) {
            *out.mutable_embeddings(part.positions[j]) =
                results[k]->embeddings(static_cast<int>(j));
          }
          if (out.model_name().empty()) out.set_model_name(results[k]->model_name());
        }
        done(std::move(out));
      });
}

void Router::GetInfo(absl::Time deadline, Done<v1::GetInfoResponse> done) {
  // What an operator asks when a shard hangs: the shards that answer are
  // described, and a hung one is marked unavailable after kInfoShardTimeout
  // (or ShardDeadline), not left to hold the answer.
  const absl::Time shard_deadline =
      std::min(absl::Now() + kInfoShardTimeout, ShardDeadline(deadline));
  GatherAll<v1::GetInfoResponse>(
      shards_.size(),
      [this, shard_deadline](size_t i, Done<v1::GetInfoResponse> d) {
        ShardInfo(static_cast<uint32_t>(i), shard_deadline, std::move(d));
      },
      [this, done = std::move(done)](std::vector<absl::StatusOr<v1::GetInfoResponse>> results) {
        v1::GetInfoResponse out;
        bool any = false;
        for (uint32_t i = 0; i < results.size(); ++i) {
          const ShardClient& s = *shards_[i];
          const ShardStats st = s.Stats();
          v1::RouterShard* rs = out.add_router_shards();
          rs->set_index(i);
          rs->set_target(s.target());
          rs->set_calls(st.calls);
          rs->set_failures(st.failures);
          rs->set_hedges_sent(st.hedges_sent);
          rs->set_hedges_won(st.hedges_won);
          rs->set_retries(st.retries);
          rs->set_p50_us(static_cast<uint64_t>(absl::ToInt64Microseconds(st.p50)));
          rs->set_p95_us(static_cast<uint64_t>(absl::ToInt64Microseconds(st.p95)));
          const int64_t now = ShardClient::NowNs();
          for (const auto& r : *s.replicas()) {
            v1::RouterReplica* rr = rs->add_replicas();
            rr->set_address(r->address);
            rr->set_in_flight(static_cast<uint32_t>(r->load.pending()));
            const double cost = r->load.Cost(now);
            rr->set_cost_us(std::isinf(cost) ? std::numeric_limits<uint64_t>::max()
                                             : static_cast<uint64_t>(cost / 1000));
            if (!s.Usable(*r)) rr->set_error(r->Why());
          }
          if (!results[i].ok()) {
            rs->set_error(std::string(results[i].status().message()));
            continue;
          }
          const v1::GetInfoResponse& info = *results[i];
          rs->set_available(true);
          rs->set_snapshot_version(info.snapshot_version());
          rs->set_vector_count(info.vector_count());
          if (!any) {  // The collection's description, from the first shard answering.
            out.set_dim(info.dim());
            out.set_metric(info.metric());
            *out.mutable_model() = info.model();
            // Image and text queries are embedded here when the router has
            // --model, whatever the replicas hold (--load_model=false).
            if (embedder_ != nullptr) {
              out.mutable_model()->set_loaded(true);
              out.mutable_model()->set_has_text(embedder_->has_text());
            }
            *out.mutable_hnsw() = info.hnsw();
            out.set_max_top_k(info.max_top_k());
            *out.mutable_fields() = info.fields();
            any = true;
          }
          out.set_vector_count(out.vector_count() + info.vector_count());
          out.set_has_thumbnails(out.has_thumbnails() || info.has_thumbnails());
          if (info.created_at() > out.created_at()) out.set_created_at(info.created_at());
          for (const auto& seg : info.segments()) *out.add_segments() = seg;
        }
        if (!any) {
          return done(absl::UnavailableError(
              absl::StrCat("no shard is answering: ", out.router_shards(0).error())));
        }
        v1::ShardInfo* shard = out.mutable_shard();
        shard->set_collection(collection_);
        shard->set_count(shard_count());
        shard->set_hash(snapshot::kShardHash);
        done(std::move(out));
      });
}

}  // namespace imagesearch::router
