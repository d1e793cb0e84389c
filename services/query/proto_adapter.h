// The public API's messages (proto/imagesearch/v1) to and from the query
// core's types, shared by both front ends: gRPC (image_search_service.cc)
// sends and receives the messages as protobuf, HTTP (http_frontend.cc) as
// their proto3 JSON. A field added to a request or response message is
// mapped here, once, and both fronts and the web page have it.
//
// Thread-safe (pure functions).
#ifndef IMAGESEARCH_SERVICES_QUERY_PROTO_ADAPTER_H_
#define IMAGESEARCH_SERVICES_QUERY_PROTO_ADAPTER_H_

#include "imagesearch/v1/imagesearch.pb.h"
#include "libs/serving/query_core.h"

namespace imagesearch {

// The core's query for `request`. Its views point into `request`, and its
// filter (if the request has one) is converted into `*filter`; both must
// outlive the core call. What cannot be converted lands in Filter::error,
// which the core answers with INVALID_ARGUMENT.
serving::Query ToQuery(const v1::SearchRequest& request, serving::Filter* filter);

// The core's items for an Embed request; views point into `request`. An
// input with nothing set stays Query::Kind::kNone, which the core refuses.
std::vector<serving::Query> ToEmbedItems(const v1::EmbedRequest& request);

// Moves the hits' strings into `out` (pass the result with std::move where
// it is not needed after); empty strings are left unset, as proto3 reads them.
void FillSearchResponse(serving::SearchResult result, v1::SearchResponse* out);
void FillEmbedResponse(const serving::EmbedResult& result, v1::EmbedResponse* out);
void FillInfo(const serving::ServingState& state, v1::GetInfoResponse* out);
void FillThumbnail(const serving::ThumbnailResult& thumb, v1::GetThumbnailResponse* out);

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_PROTO_ADAPTER_H_
