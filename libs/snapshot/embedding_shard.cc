#include "libs/snapshot/embedding_shard.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "libs/common/file_util.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/thumbs_table.h"
#include "libs/snapshot/vector_io.h"

namespace imagesearch::snapshot {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kMaxShards = 100000;
constexpr char kVectors[] = "vectors.npy";
constexpr char kIds[] = "ids.bin";
constexpr char kThumbs[] = "thumbs.bin";
constexpr char kRejects[] = "rejects.jsonl";

absl::Status InShard(const std::string& dir, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("shard ", dir, ": ", s.message()));
}

absl::StatusOr<EmbeddingShard> ReadShard(const std::string& dir) {
  EmbeddingShard shard;
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(dir + "/" + kShardManifestFile));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(kShardManifestFile, " is not a JSON object"));
  }
  try {
    if (j.at("format").get<int>() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(kShardManifestFile, " format ", j.at("format").dump(), " is not supported"));
    }
    shard.spec.index = j.at("shard").get<int>();
    shard.spec.count = j.at("of").get<int>();
    shard.dim = j.at("dim").get<int>();
    ASSIGN_OR_RETURN(shard.metric, index::ParseMetric(j.at("metric").get<std::string>()));
    shard.listed = j.at("listed").get<uint64_t>();
    const json& model = j.at("model");
    shard.model.name = model.at("name").get<std::string>();
    shard.model.version = model.at("version").get<std::string>();
    shard.model.sha256 = model.at("sha256").get<std::string>();
    shard.model.image_size = model.at("image_size").get<int>();
    shard.model.has_text = model.at("has_text").get<bool>();
    shard.model.preprocessing_json = model.at("preprocessing").dump();
    for (const auto& [name, entry] : j.at("files").items()) {
      const std::string path = dir + "/" + name;
      ASSIGN_OR_RETURN(std::string sum, Xxh3HexOfFile(path));
      const auto size = fs::file_size(path);
      if (size != entry.at("size").get<uint64_t>() || sum != entry.at("xxh3").get<std::string>()) {
        return absl::DataLossError(absl::StrCat(
            name, " is ", size, " bytes with checksum ", sum, " but ", kShardManifestFile, " says ",
            entry.at("size").dump(), " bytes, ", entry.at("xxh3").dump(), " (damaged)"));
      }
    }
    const uint64_t count = j.at("count").get<uint64_t>();
    ASSIGN_OR_RETURN(std::string npy, ReadFileToString(dir + "/" + kVectors));
    ASSIGN_OR_RETURN(VectorSet set, ParseNpy(npy));
    if (set.count != count || set.dim != static_cast<size_t>(shard.dim)) {
      return absl::InvalidArgumentError(absl::StrCat(kVectors, " is ", set.count, " x ", set.dim,
                                                     " but ", kShardManifestFile, " says ", count,
                                                     " x ", shard.dim));
    }
    shard.vectors = std::move(set.data);
    ASSIGN_OR_RETURN(auto ids, IdsTable::Open(dir + "/" + kIds, count));
    shard.ids.reserve(count);
    for (uint64_t r = 0; r < count; ++r) {
      ASSIGN_OR_RETURN(IdView v, ids->Get(r));
      shard.ids.push_back({std::string(v.id), std::string(v.uri), std::string(v.attributes_json)});
    }
    if (j.at("files").contains(kThumbs)) {
      ASSIGN_OR_RETURN(shard.thumbs_table, ThumbsTable::Open(dir + "/" + kThumbs, count));
    }
    ASSIGN_OR_RETURN(shard.rejects_jsonl, ReadFileToString(dir + "/" + kRejects));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(kShardManifestFile, " is missing a field or has a wrong type: ", e.what()));
  } catch (const fs::filesystem_error& e) {
    return absl::DataLossError(e.what());
  }
  return shard;
}

}  // namespace

absl::StatusOr<ShardSpec> ParseShardSpec(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '/');
  ShardSpec spec;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &spec.index) ||
      !absl::SimpleAtoi(parts[1], &spec.count) || spec.count < 1 || spec.count > kMaxShards ||
      spec.index < 0 || spec.index >= spec.count) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard '", text.substr(0, 32), "' must be i/n with 0 <= i < n <= ", kMaxShards,
                     " (e.g. 0/3; a Kubernetes Indexed Job passes $(JOB_COMPLETION_INDEX)/n)"));
  }
  return spec;
}

std::string ShardDirName(const ShardSpec& spec) {
  return absl::StrCat("shard-", spec.index, "-of-", spec.count);
}

absl::StatusOr<std::string> WriteEmbeddingShard(const std::string& parent,
                                                const EmbeddingShard& shard) {
  const size_t count = shard.ids.size();
  if (shard.dim <= 0 || shard.vectors.size() != count * static_cast<size_t>(shard.dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shard has ", count, " ids but ", shard.vectors.size(), " floats of dim ", shard.dim));
  }
  if (!shard.thumbs.empty() && shard.thumbs.size() != count) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard has ", count, " ids but ", shard.thumbs.size(), " thumbnails"));
  }
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", parent, ": ", ec.message()));
  const std::string final_dir = parent + "/" + ShardDirName(shard.spec);
  const std::string tmp = absl::StrCat(parent, "/.tmp-", ShardDirName(shard.spec), "-", ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", tmp, ": ", ec.message()));
  auto status = [&]() -> absl::Status {
    VectorSet set;
    set.count = count;
    set.dim = static_cast<size_t>(shard.dim);
    set.data = shard.vectors;
    std::map<std::string, std::string> files;
    files[kVectors] = EncodeNpy(set);
    ASSIGN_OR_RETURN(files[kIds], EncodeIdsTable(shard.ids));
    if (!shard.thumbs.empty()) files[kThumbs] = EncodeThumbsTable(shard.thumbs);
    files[kRejects] = shard.rejects_jsonl;
    json listing = json::object();
    for (const auto& [name, bytes] : files) {
      RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + name, bytes));
      listing[name] = {{"size", bytes.size()}, {"xxh3", Xxh3Hex(bytes)}};
    }
    json model = {{"name", shard.model.name},
                  {"version", shard.model.version},
                  {"sha256", shard.model.sha256},
                  {"image_size", shard.model.image_size},
                  {"has_text", shard.model.has_text},
                  {"preprocessing", json::parse(shard.model.preprocessing_json, nullptr, false)}};
    json manifest = {{"format", 1},
                     {"shard", shard.spec.index},
                     {"of", shard.spec.count},
                     {"model", model},
                     {"dim", shard.dim},
                     {"metric", std::string(index::MetricName(shard.metric))},
                     {"count", count},
                     {"listed", shard.listed},
                     {"files", listing}};
    RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + kShardManifestFile, manifest.dump(2) + "\n"));
    RETURN_IF_ERROR(SyncPath(tmp));
    // A complete shard from an earlier attempt of this worker is replaced.
    fs::remove_all(final_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("remove ", final_dir, ": ", ec.message()));
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("rename ", tmp, " -> ", final_dir));
    }
    return SyncPath(parent);
  }();
  if (!status.ok()) {
    fs::remove_all(tmp, ec);
    return status;
  }
  return final_dir;
}

absl::StatusOr<std::vector<EmbeddingShard>> ReadEmbeddingShards(const std::string& parent) {
  static const std::regex kName("shard-([0-9]+)-of-([0-9]+)");
  std::map<int, std::string> dirs;
  int n = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (!entry.is_directory() || !std::regex_match(name, m, kName)) continue;
    ASSIGN_OR_RETURN(ShardSpec spec, ParseShardSpec(absl::StrCat(m[1].str(), "/", m[2].str())));
    if (n != 0 && spec.count != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(parent, " mixes shards of ", n, " and of ", spec.count,
                       " workers; remove the stale ones (one run's shards must all share one n)"));
    }
    n = spec.count;
    dirs[spec.index] = entry.path().string();
  }
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", parent, ": ", ec.message()));
  if (n == 0) {
    return absl::NotFoundError(absl::StrCat("no shard-<i>-of-<n> directories in ", parent));
  }
  std::string missing;
  for (int i = 0; i < n; ++i) {
    if (!dirs.count(i)) absl::StrAppend(&missing, missing.empty() ? "" : ", ", i);
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(parent, " has ", dirs.size(), " of ", n,
                                                      " shards; missing: ", missing,
                                                      " (have those workers finished?)"));
  }
  std::vector<EmbeddingShard> shards;
  for (const auto& [i, dir] : dirs) {
    absl::StatusOr<EmbeddingShard> shard = ReadShard(dir);
    if (!shard.ok()) return InShard(dir, shard.status());
    if (shard->spec.index != i || shard->spec.count != n) {
      return InShard(dir, absl::InvalidArgumentError(
                              absl::StrCat(kShardManifestFile, " says shard ", shard->spec.index,
                                           " of ", shard->spec.count, ", not ", i, " of ", n)));
    }
    if (!shards.empty()) {
      const EmbeddingShard& first = shards.front();
      if (shard->model.sha256 != first.model.sha256 || shard->dim != first.dim ||
          shard->metric != first.metric) {
        return InShard(
            dir, absl::FailedPreconditionError(absl::StrCat(
                     "made with model ", shard->model.name, " (sha256 ",
                     shard->model.sha256.substr(0, 12), "...), dim ", shard->dim, "; shard 0 with ",
                     first.model.name, " (sha256 ", first.model.sha256.substr(0, 12), "...), dim ",
                     first.dim, ": their vectors are not in one embedding space")));
      }
    }
    shards.push_back(*std::move(shard));
  }
  return shards;
}

}  // namespace imagesearch::snapshot
