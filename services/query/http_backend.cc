#include "services/query/http_backend.h"

#include <utility>

#include "libs/serving/filter.h"
#include "services/query/proto_adapter.h"

namespace imagesearch {

void CoreHttpBackend::Search(v1::SearchRequest request, const serving::CallContext& context,
                             Done<v1::SearchResponse> done) {
  // The core's query points into the request until its callback runs.
  auto held = std::make_shared<v1::SearchRequest>(std::move(request));
  serving::Filter filter;  // Read before core_->Search returns.
  core_->Search(ToQuery(*held, &filter), context,
                [held, done = std::move(done)](absl::StatusOr<serving::SearchResult> r) {
                  if (!r.ok()) return done(r.status());
                  v1::SearchResponse response;
                  FillSearchResponse(*std::move(r), &response);
                  done(std::move(response));
                });
}

void CoreHttpBackend::GetInfo(const serving::CallContext& context, Done<v1::GetInfoResponse> done) {
  auto state = core_->Info(context);
  if (!state.ok()) return done(state.status());
  v1::GetInfoResponse info;
  FillInfo(**state, &info);
  done(std::move(info));
}

void CoreHttpBackend::GetThumbnail(std::string id, const serving::CallContext& context,
                                   Done<v1::GetThumbnailResponse> done) {
  auto thumb = core_->Thumbnail(id, context);
  if (!thumb.ok()) return done(thumb.status());
  v1::GetThumbnailResponse response;
  FillThumbnail(*thumb, &response);
  done(std::move(response));
}

}  // namespace imagesearch
