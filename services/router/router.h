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

  explicit Router(const RouterOptions& options);

  // Asks every shard for GetInfo and checks that they form one collection:
  // shard i of S reports shard index i and count S (S = the targets given),
  // the same collection, dimension, metric and model (and, with an
  // embedder, the model is the router's: same sha256 and dimension). Until
  // it has, the router serves nothing.
  absl::Status Discover(absl::Time deadline);
  const std::string& collection() const { return collection_; }
  uint32_t shard_count() const { return static_cast<uint32_t>(shards_.size()); }
  const ShardClient& shard(uint32_t i) const { return *shards_[i]; }

  void Search(const v1::SearchRequest& request, absl::Time deadline, Done<v1::SearchResponse> done);
  void SearchBatch(const v1::SearchBatchRequest& request, absl::Time deadline,
                   Done<v1::SearchBatchResponse> done);
  void Embed(const v1::EmbedRequest& request, absl::Time deadline, Done<v1::EmbedResponse> done);
  void GetInfo(absl::Time deadline, Done<v1::GetInfoResponse> done);
  // From the shard that owns `id` (its error, e.g. NOT_FOUND, as it says it).
  void GetThumbnail(const std::string& id, absl::Time deadline,
                    Done<v1::GetThumbnailResponse> done);

  // Cancels every shard call in flight and refuses new ones (ShardClient::
  // CancelAll): once the server has stopped taking calls.
  void CancelAll();

 private:
  // The vector query `request` (top_k already set) on every shard, merged.
  // `self_id`: an id query's id, whose hit is dropped.
  void FanOut(v1::SearchRequest request, uint32_t top_k, const std::string& self_id,
              absl::Time deadline, Done<v1::SearchResponse> done);
  // Drops hits (sorted, best first) that are near-duplicates of better hits
  // from other shards; then `finish` with at most top_k of the rest.
  void CollapseAcrossShards(std::vector<v1::Hit> hits, float dedup, uint32_t top_k,
                            absl::Time deadline, v1::SearchResponse* out,
                            std::function<void(std::vector<v1::Hit>)> finish);
  // The shard's answer, held on its call's arena (ShardClient::Answer).
  void ShardSearch(uint32_t shard, std::shared_ptr<const v1::SearchRequest> request,
                   absl::Time deadline, Done<ShardClient::Answer<v1::SearchResponse>> done);
  void ShardEmbed(uint32_t shard, const v1::EmbedRequest& request, absl::Time deadline,
                  Done<v1::EmbedResponse> done);
  void ShardInfo(uint32_t shard, absl::Time deadline, Done<v1::GetInfoResponse> done);
  uint32_t NextShard();  // Rotates image and text embedding over the shards.
  // Image and text inputs of `request` (no ids): by the router's embedder
  // if it has one (checked as a replica checks them; errors name "query
  // image"/"query text" for a Search, "inputs[i]" for an Embed), else by
  // one shard.
  void EmbedModelInputs(const v1::EmbedRequest& request, bool from_search, absl::Time deadline,
                        Done<v1::EmbedResponse> done);

  std::vector<std::unique_ptr<ShardClient>> shards_;
  std::string collection_;
  std::string model_name_;  // The collection's, from Discover.
  std::atomic<uint32_t> rotate_{0};
  const std::shared_ptr<serving::Embedder> embedder_;
  const std::string model_sha256_;
};

}  // namespace imagesearch::router

#endif  // IMAGESEARCH_SERVICES_ROUTER_ROUTER_H_
