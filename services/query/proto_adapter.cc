#include "services/query/proto_adapter.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "libs/common/client_text.h"
#include "libs/serving/filter_proto.h"

namespace imagesearch {
namespace {

using serving::Query;

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

Query ToQuery(const v1::SearchRequest& r, serving::Filter* filter) {
  Query q;
  if (r.has_filter()) {
    serving::FilterFromProto(r.filter(), filter);
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
  q.params.exact = r.exact();
  return q;
}

std::vector<Query> ToEmbedItems(const v1::EmbedRequest& request) {
  std::vector<Query> items(static_cast<size_t>(request.inputs_size()));
  for (int i = 0; i < request.inputs_size(); ++i) {
    const v1::EmbedInput& in = request.inputs(i);
    Query& item = items[static_cast<size_t>(i)];
    if (in.input_case() == v1::EmbedInput::kImage) {
      item.kind = Query::Kind::kImage;
      item.data = in.image();
    } else if (in.input_case() == v1::EmbedInput::kText) {
      item.kind = Query::Kind::kText;
      item.data = in.text();
    } else if (in.input_case() == v1::EmbedInput::kId) {
      item.kind = Query::Kind::kId;
      item.id = in.id();
    }
  }
  return items;
}

void FillSearchResponse(serving::SearchResult result, v1::SearchResponse* out) {
  out->set_snapshot_version(result.snapshot_version);
  out->set_collapsed(result.collapsed);
  out->mutable_hits()->Reserve(static_cast<int>(result.hits.size()));
  for (auto& h : result.hits) {
    v1::Hit* p = out->add_hits();
    // Setting a string field allocates it, even an empty one; a moved
    // string keeps its buffer (on an arena message, the field too).
    p->set_id(std::move(h.id));
    if (!h.uri.empty()) p->set_uri(std::move(h.uri));
    if (!h.attributes_json.empty()) p->set_attributes_json(std::move(h.attributes_json));
    p->set_distance(h.distance);
    p->set_score(h.score);
  }
}

void FillEmbedResponse(const serving::EmbedResult& result, v1::EmbedResponse* out) {
  out->set_snapshot_version(result.snapshot_version);
  out->set_model_name(result.model_name);
  for (const auto& v : result.vectors) {
    out->add_embeddings()->mutable_values()->Add(v.begin(), v.end());
  }
}

void FillInfo(const serving::ServingState& state, v1::GetInfoResponse* out) {
  const auto& m = state.snapshot->manifest();
  out->set_snapshot_version(m.version);
  out->set_dim(static_cast<uint32_t>(m.dim));
  out->set_metric(ToProto(m.metric));
  out->set_vector_count(m.count);
  out->set_created_at(m.created_at);
  out->set_base_version(m.base_version);
  out->set_max_top_k(serving::kMaxTopK);
  out->set_has_thumbnails(state.snapshot->has_thumbnails());
  for (const snapshot::SegmentRef& ref : state.snapshot->segments()) {
    v1::SegmentInfo* seg = out->add_segments();
    seg->set_name(ref.name);
    seg->set_rows(ref.segment->rows());
    seg->set_deleted(ref.deleted_count);
  }
  if (m.shard.sharded()) {
    v1::ShardInfo* shard = out->mutable_shard();
    shard->set_collection(m.shard.collection);
    shard->set_index(m.shard.index);
    shard->set_count(m.shard.count);
    shard->set_hash(m.shard.hash);
  }
  if (const auto* attrs = state.snapshot->schema_table()) {
    for (const auto& f : attrs->fields()) {
      v1::FieldInfo* info = out->add_fields();
      info->set_name(f.name);
      info->set_type(std::string(snapshot::FieldTypeName(f.type)));
    }
  }
  auto* hnsw = out->mutable_hnsw();
  hnsw->set_m(static_cast<uint32_t>(m.hnsw_m));
  hnsw->set_ef_construction(static_cast<uint32_t>(m.hnsw_ef_construction));
  hnsw->set_default_ef(static_cast<uint32_t>(m.default_ef));
  auto* model = out->mutable_model();
  model->set_name(m.model.name);
  model->set_version(m.model.version);
  model->set_sha256(m.model.sha256);
  model->set_embed_dim(static_cast<uint32_t>(m.dim));
  model->set_image_size(static_cast<uint32_t>(m.model.image_size));
  model->set_has_text(m.model.has_text);
  model->set_loaded(state.embedder != nullptr);
}

void FillThumbnail(const serving::ThumbnailResult& thumb, v1::GetThumbnailResponse* out) {
  out->set_data(thumb.bytes.data(), thumb.bytes.size());
  out->set_media_type(thumb.media_type);
  out->set_snapshot_version(thumb.snapshot_version);
}

}  // namespace imagesearch
