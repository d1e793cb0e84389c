#include "libs/snapshot/manifest.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"

namespace imagesearch::snapshot {

using nlohmann::json;

namespace {

constexpr char kSelfChecksum[] = "manifest_xxh3";

// XXH3 of the manifest's content without its self-checksum: nlohmann's
// compact dump (keys sorted), so formatting does not matter, content does.
std::string ContentChecksum(json j) {
  j.erase(kSelfChecksum);
  return Xxh3Hex(j.dump(-1, ' ', false, json::error_handler_t::replace));
}

}  // namespace

bool LinksReach(const SegmentLinks& links, absl::string_view name, const Manifest& segment) {
  if (links.per_row == 0) return false;
  if (links.segment == name && links.manifest_xxh3 == segment.manifest_xxh3) return true;
  for (const ExtendedSegment& e : segment.extends) {
    if (e.segment == links.segment && e.manifest_xxh3 == links.manifest_xxh3) return true;
  }
  return false;
}

std::string ManifestToJson(const Manifest& m) {
  json files = json::object();
  for (const auto& [name, entry] : m.files) {
    files[name] = {{"size", entry.size}, {"xxh3", entry.xxh3}};
  }
  json model = nullptr;
  if (!m.model.name.empty()) {
    model = {{"name", m.model.name},
             {"version", m.model.version},
             {"sha256", m.model.sha256},
             {"file", m.model.file},
             {"image_size", m.model.image_size},
             {"has_text", m.model.has_text},
             {"preprocessing", json::parse(m.model.preprocessing_json, nullptr, false)}};
  }
  json j = {{"format", m.format},
            {"version", m.version},
            {"base_version", m.base_version},
            {"created_at", m.created_at},
            {"model", model},
            {"dim", m.dim},
            {"metric", std::string(index::MetricName(m.metric))},
            {"count", m.count},
            {"hnsw",
             {{"M", m.hnsw_m},
              {"ef_construction", m.hnsw_ef_construction},
              {"default_ef", m.default_ef}}},
            {"files", files}};
  if (m.format >= kFormatVersion) {
    json segments = json::array();
    for (const SegmentEntry& e : m.segments) {
      json seg = {{"name", e.name},
                  {"rows", e.rows},
                  {"deleted", e.deleted},
                  {"manifest_xxh3", e.manifest_xxh3}};
      if (!e.deletes_file.empty()) seg["deletes"] = e.deletes_file;
      segments.push_back(seg);
    }
    j["segments"] = segments;
  }
  if (m.links.per_row > 0) {
    j["links"] = {{"segment", m.links.segment},
                  {"manifest_xxh3", m.links.manifest_xxh3},
                  {"per_row", m.links.per_row}};
  }
  if (!m.extends.empty()) {
    json extends = json::array();
    for (const ExtendedSegment& e : m.extends) {
      extends.push_back(
          {{"segment", e.segment}, {"manifest_xxh3", e.manifest_xxh3}, {"rows", e.rows}});
    }
    j["extends"] = extends;
  }
  if (m.shard.sharded()) {
    j["shard"] = {{"collection", m.shard.collection},
                  {"index", m.shard.index},
                  {"count", m.shard.count},
                  {"hash", m.shard.hash}};
  }
  j[kSelfChecksum] = ContentChecksum(j);
  return j.dump(2) + "\n";
}

absl::StatusOr<Manifest> ParseManifest(absl::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("MANIFEST.json is not a JSON object (truncated or corrupt?)");
  }
  auto bad = [](auto... parts) {
    return absl::InvalidArgumentError(absl::StrCat("MANIFEST.json: ", parts...));
  };
  // Optional (manifests written before it existed have none), checked when present.
  std::string self_checksum;
  if (auto self = j.find(kSelfChecksum); self != j.end()) {
    const std::string actual = ContentChecksum(j);
    if (!self->is_string() || self->get<std::string>() != actual) {
      return bad("its content hashes to ", actual, ", not the ", kSelfChecksum,
                 " it carries (bit rot, or an edit)");
    }
    self_checksum = actual;
  }
  auto get_uint = [&](const json& obj, const char* key, uint64_t* out) -> absl::Status {
    auto it = obj.find(key);
    if (it == obj.end() || !it->is_number_unsigned()) {
      return bad("field '", key, "' is missing or not a non-negative integer");
    }
    *out = it->get<uint64_t>();
    return absl::OkStatus();
  };
  auto get_string = [&](const json& obj, const char* key, std::string* out) -> absl::Status {
    auto it = obj.find(key);
    if (it == obj.end() || !it->is_string())
      return bad("field '", key, "' is missing or not a string");
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  Manifest m;
  uint64_t u = 0;
  absl::Status s;
  if (!(s = get_uint(j, "format", &u)).ok()) return s;
  if (u != kFormatVersion && u != kSingleGraphFormat) {
    return bad("format ", u, " is not supported (this build reads formats ", kSingleGraphFormat,
               " and ", kFormatVersion, ")");
  }
  m.format = static_cast<int>(u);
  m.manifest_xxh3 = self_checksum;
  if (!(s = get_uint(j, "version", &m.version)).ok()) return s;
  if (!(s = get_uint(j, "base_version", &m.base_version)).ok()) return s;
  if (!(s = get_string(j, "created_at", &m.created_at)).ok()) return s;
  if (!(s = get_uint(j, "dim", &u)).ok()) return s;
  if (u == 0 || u > 65536) return bad("dim ", u, " is out of range");
  m.dim = static_cast<int>(u);
  std::string metric;
  if (!(s = get_string(j, "metric", &metric)).ok()) return s;
  auto parsed_metric = index::ParseMetric(metric);
  if (!parsed_metric.ok()) return bad(parsed_metric.status().message());
  m.metric = *parsed_metric;
  if (!(s = get_uint(j, "count", &m.count)).ok()) return s;
  auto hnsw = j.find("hnsw");
  if (hnsw == j.end() || !hnsw->is_object()) return bad("field 'hnsw' is missing");
  if (!(s = get_uint(*hnsw, "M", &u)).ok()) return s;
  m.hnsw_m = static_cast<int>(u);
  if (!(s = get_uint(*hnsw, "ef_construction", &u)).ok()) return s;
  m.hnsw_ef_construction = static_cast<int>(u);
  if (!(s = get_uint(*hnsw, "default_ef", &u)).ok()) return s;
  m.default_ef = static_cast<int>(u);

  auto model = j.find("model");
  if (model == j.end()) return bad("field 'model' is missing (null for vector-only snapshots)");
  if (model->is_object()) {
    if (!(s = get_string(*model, "name", &m.model.name)).ok()) return s;
    if (!(s = get_string(*model, "version", &m.model.version)).ok()) return s;
    if (!(s = get_string(*model, "sha256", &m.model.sha256)).ok()) return s;
    if (!(s = get_string(*model, "file", &m.model.file)).ok()) return s;
    if (!(s = get_uint(*model, "image_size", &u)).ok()) return s;
    m.model.image_size = static_cast<int>(u);
    auto has_text = model->find("has_text");
    m.model.has_text = has_text != model->end() && has_text->is_boolean() && has_text->get<bool>();
    auto pre = model->find("preprocessing");
    m.model.preprocessing_json = pre != model->end() ? pre->dump() : "{}";
  } else if (!model->is_null()) {
    return bad("field 'model' must be an object or null");
  }

  auto files = j.find("files");
  if (files == j.end() || !files->is_object()) return bad("field 'files' is missing");
  for (const auto& [name, entry] : files->items()) {
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
      return bad("file name '", name, "' is not a plain file name");
    }
    FileEntry fe;
    if (!entry.is_object()) return bad("files['", name, "'] is not an object");
    if (!(s = get_uint(entry, "size", &fe.size)).ok()) return s;
    if (!(s = get_string(entry, "xxh3", &fe.xxh3)).ok()) return s;
    m.files[name] = fe;
  }
  if (auto shard = j.find("shard"); shard != j.end()) {
    if (!shard->is_object()) return bad("field 'shard' is not an object");
    if (!(s = get_string(*shard, "collection", &m.shard.collection)).ok()) return s;
    if (!(s = get_string(*shard, "hash", &m.shard.hash)).ok()) return s;
    if (!(s = get_uint(*shard, "index", &u)).ok()) return s;
    if (u > kMaxCollectionShards) return bad("shard index ", u, " is out of range");
    m.shard.index = static_cast<uint32_t>(u);
    if (!(s = get_uint(*shard, "count", &u)).ok()) return s;
    if (u == 0 || u > kMaxCollectionShards) return bad("shard count ", u, " is out of range");
    m.shard.count = static_cast<uint32_t>(u);
    if (absl::Status v = ValidateShardInfo(m.shard); !v.ok()) return bad(v.message());
  }
  if (auto links = j.find("links"); links != j.end()) {
    if (!links->is_object()) return bad("field 'links' is not an object");
    if (!(s = get_string(*links, "segment", &m.links.segment)).ok()) return s;
    if (!(s = get_string(*links, "manifest_xxh3", &m.links.manifest_xxh3)).ok()) return s;
    if (!(s = get_uint(*links, "per_row", &u)).ok()) return s;
    if (u == 0 || u > 256) return bad("links per_row ", u, " is out of range (1-256)");
    m.links.per_row = static_cast<uint32_t>(u);
  }
  if (auto extends = j.find("extends"); extends != j.end()) {
    if (!extends->is_array()) return bad("field 'extends' is not an array");
    if (extends->size() > kMaxExtendedSegments) {
      return bad("field 'extends' lists ", extends->size(), " segments (at most ",
                 kMaxExtendedSegments, ")");
    }
    for (const auto& e : *extends) {
      if (!e.is_object()) return bad("an 'extends' entry is not an object");
      ExtendedSegment x;
      if (!(s = get_string(e, "segment", &x.segment)).ok()) return s;
      if (!(s = get_string(e, "manifest_xxh3", &x.manifest_xxh3)).ok()) return s;
      if (!(s = get_uint(e, "rows", &x.rows)).ok()) return s;
      if (x.rows > m.count) return bad("an 'extends' entry has ", x.rows, " rows of ", m.count);
      m.extends.push_back(std::move(x));
    }
  }
  if (m.format == kSingleGraphFormat) return m;
  auto segments = j.find("segments");
  if (segments == j.end() || !segments->is_array() || segments->empty()) {
    return bad("field 'segments' is missing or empty (format ", m.format, ")");
  }
  uint64_t live = 0;
  for (const auto& seg : *segments) {
    if (!seg.is_object()) return bad("a 'segments' entry is not an object");
    SegmentEntry e;
    if (!(s = get_string(seg, "name", &e.name)).ok()) return s;
    if (e.name.empty() || e.name.find('/') != std::string::npos || e.name[0] == '.') {
      return bad("segment name '", e.name, "' is not a plain directory name");
    }
    for (const SegmentEntry& other : m.segments) {
      if (other.name == e.name) return bad("segment '", e.name, "' is listed twice");
    }
    if (!(s = get_uint(seg, "rows", &e.rows)).ok()) return s;
    if (!(s = get_uint(seg, "deleted", &e.deleted)).ok()) return s;
    if (e.rows == 0 || e.deleted > e.rows) {
      return bad("segment '", e.name, "' has ", e.rows, " rows and ", e.deleted, " deleted");
    }
    if (!(s = get_string(seg, "manifest_xxh3", &e.manifest_xxh3)).ok()) return s;
    if (auto d = seg.find("deletes"); d != seg.end()) {
      if (!d->is_string()) return bad("segment '", e.name, "': 'deletes' is not a string");
      e.deletes_file = d->get<std::string>();
    }
    if (e.deleted > 0 && (e.deletes_file.empty() || !m.files.count(e.deletes_file))) {
      return bad("segment '", e.name, "' has ", e.deleted,
                 " deleted rows but no deletes file listed in 'files'");
    }
    live += e.rows - e.deleted;
    m.segments.push_back(std::move(e));
  }
  if (live != m.count) {
    return bad("count ", m.count, " is not the segments' live rows (", live, ")");
  }
  return m;
}

}  // namespace imagesearch::snapshot
