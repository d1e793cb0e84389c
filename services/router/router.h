// imagesearch-router's core: one collection of S shards (each its own
// snapshot root served by its own replicas, libs/snapshot/shard.h) answered
// as one ImageSearch endpoint.
//
//   vector query -> the vector to every shard (the query's top_k, ef,
//     filter, dedup, exact) -> merge the shards' top-k by distance; with
//     dedup, near-duplicates across shards collapse too (their stored
//     vectors, Embed of their ids from their shards)
//   id query -> Embed{id} on the shard that owns the id (its stored vector)
//     -> as a vector query, the id's own hit left out unless include_self
//   image/text query -> the router's own embedder (--model), or else Embed
//     on one shard (rotating) -> as a vector query
//   thumbnail -> GetThumbnail on the shard that owns the id
//
// Merging per-shard top-k is lossless: recall is lost only inside each
// shard's search, so with `exact` the answer is the collection's true top-k.
// A shard that fails for availability (UNAVAILABLE, its deadline, ...)
// fails the query with UNAVAILABLE naming it, or with allow_partial is left
// out and named in missing_shards. A request error a shard reports
// (INVALID_ARGUMENT, NOT_FOUND, ...) is returned as that shard said it.
//
// Thread-safe; calls complete on the shard clients' completion threads
// (completion_threads.h), or on the embedder's.
#ifndef IMAGESEARCH_SERVICES_ROUTER_ROUTER_H_
#define IMAGESEARCH_SERVICES_ROUTER_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "imagesearch/v1/imagesearch.pb.h"
#include "libs/serving/embedder.h"
#include "services/router/shard_client.h"

namespace imagesearch::router {

struct RouterOptions {
  // Shard i's gRPC target (see ShardClient), in shard order.
  std::vector<std::string> shard_targets;
  ShardClientOptions shard;
  // The collection's model, loaded here (imagesearch-router --model): image
  // and text queries are embedded once, by the router, and the shard
  // replicas need no model in memory. Null: a shard embeds them (rotating).
  std::shared_ptr<serving::Embedder> embedder;
  std::string model_sha256;  // Of the embedder's model.pt; Discover checks it.
};

class Router {
 public:
  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;
  // Whether the caller has gone (rpc::CallInfo::Cancelled, the HTTP front's
  // CallContext::cancelled); empty: never. A query whose caller left sends
  // no shard call after the model step, no hedge and no retry.
  using Cancelled = std::function<bool()>;

  explicit Router(const RouterOptions& options);

  // Asks every replica of every shard for GetInfo and checks that they form
  // one collection: a replica of shard i of S reports shard index i and
  // count S (S = the targets given), the same collection, dimension, metric
  // and model (and, with an embedder, the model is the router's: same
  // sha256 and dimension). Waits until every shard has a replica that
  // passed, or `deadline` (UNAVAILABLE naming each shard that has none and
  // why); a replica that answers as something else is FAILED_PRECONDITION,
  // naming it. Replicas found or answering later are checked by their
  // ShardClient, and get no calls until they pass. Until Discover has
  // passed, the router serves nothing.
  absl::Status Discover(absl::Time deadline);
  const std::string& collection() const { return collection_; }
  uint32_t shard_count() const { return static_cast<uint32_t>(shards_.size()); }
  const ShardClient& shard(uint32_t i) const { return *shards_[i]; }

  void Search(const v1::SearchRequest& request, absl::Time deadline, Done<v1::SearchResponse> done,
              Cancelled cancelled = {});
  void SearchBatch(const v1::SearchBatchRequest& request, absl::Time deadline,
                   Done<v1::SearchBatchResponse> done);
  void Embed(const v1::EmbedRequest& request, absl::Time deadline, Done<v1::EmbedResponse> done,
             Cancelled cancelled = {});
  void GetInfo(absl::Time deadline, Done<v1::GetInfoResponse> done);
  // From the shard that owns `id` (its error, e.g. NOT_FOUND, as it says it).
  void GetThumbnail(const std::string& id, absl::Time deadline,
                    Done<v1::GetThumbnailResponse> done);

  // Cancels every shard call in flight and refuses new ones (ShardClient::
  // CancelAll): once the server has stopped taking calls.
  void CancelAll();
  // Lets go of the embedder, once nothing calls Search or Embed any more:
  // the caller then destroys it (its queued inputs are answered, into this
  // router) while the router and what its callbacks use still live.
  void DropEmbedder() { embedder_.reset(); }

 private:
  // The vector query `request` on every shard, merged. `owner`, where
  // given, gets `owner_request` instead: an id query goes as it is to the
  // shard that holds the id (which leaves its own row out before dedup, as
  // an unsharded replica does), and as the id's vector to the others.
  void FanOut(v1::SearchRequest request, uint32_t top_k, std::optional<uint32_t> owner,
              std::shared_ptr<const v1::SearchRequest> owner_request, absl::Time deadline,
              Cancelled cancelled, Done<v1::SearchResponse> done);
  // Drops hits (sorted, best first) that are near-duplicates of better hits
  // from other shards; then `finish` with at most top_k of the rest.
  void CollapseAcrossShards(std::vector<v1::Hit> hits, float dedup, uint32_t top_k,
                            absl::Time deadline, v1::SearchResponse* out,
                            std::function<void(std::vector<v1::Hit>)> finish);
  // The shard's answer, held on its call's arena (ShardClient::Answer).
  void ShardSearch(uint32_t shard, std::shared_ptr<const v1::SearchRequest> request,
                   absl::Time deadline, Cancelled cancelled,
                   Done<ShardClient::Answer<v1::SearchResponse>> done);
  void ShardEmbed(uint32_t shard, const v1::EmbedRequest& request, absl::Time deadline,
                  Done<v1::EmbedResponse> done, Cancelled cancelled = {});
  void ShardInfo(uint32_t shard, absl::Time deadline, Done<v1::GetInfoResponse> done);
  uint32_t NextShard();  // Rotates image and text embedding over the shards.
  // What a replica of `shard` must answer to GetInfo (FitsShard against
  // identity_). REQUIRES: identity_.
  ShardClient::Check CheckOf(uint32_t shard) const;
  // Image and text inputs embedded by `shard`'s replicas, or where they do
  // not answer, by the next shard's, `tries` shards in all.
  void EmbedOnShards(std::shared_ptr<const v1::EmbedRequest> request, uint32_t shard,
                     uint32_t tries, absl::Time deadline, Cancelled cancelled,
                     Done<v1::EmbedResponse> done);
  // Image and text inputs of `request` (no ids): by the router's embedder
  // if it has one (checked as a replica checks them; errors name "query
  // image"/"query text" for a Search, "inputs[i]" for an Embed), else by
  // one shard.
  void EmbedModelInputs(const v1::EmbedRequest& request, bool from_search, absl::Time deadline,
                        Cancelled cancelled, Done<v1::EmbedResponse> done);

  std::vector<std::unique_ptr<ShardClient>> shards_;
  std::string collection_;
  std::string model_name_;  // The collection's, from Discover.
  uint32_t dim_ = 0;        // The collection's, from Discover.
  // The first replica's GetInfo that Discover found in its place: what
  // every replica of every shard is checked against.
  std::optional<v1::GetInfoResponse> identity_;
  std::atomic<uint32_t> rotate_{0};
  std::shared_ptr<serving::Embedder> embedder_;
  const std::string model_sha256_;
};

}  // namespace imagesearch::router

#endif  // IMAGESEARCH_SERVICES_ROUTER_ROUTER_H_
