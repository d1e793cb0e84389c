// libFuzzer target: opening a snapshot version directory from arbitrary
// bytes (libs/snapshot/snapshot.h, libs/index/mmap_searcher.h,
// half_vectors.h, libs/snapshot/ids_table.h, thumbs_table.h,
// attribute_table.h), and, if it
// opens, searching it the way the server does (serving::SearchSnapshot,
// which maps graph labels to ids.bin rows) plus an exact filtered scan, id
// lookups, thumbnails and attribute filters.
//
// Input: one mode byte, then the files' bytes in the order of
// SnapshotFileOrder() (MANIFEST.json, ids.bin, graph.offsets, graph.hnsw,
// thumbs.bin, attrs.bin, graph.f16) separated by kFileSeparator; they are written to a
// temp dir. Mode bits:
//   0x01  before opening, rewrite MANIFEST.json's files[*].size/xxh3 to the
//         written files' real sizes and checksums (if it is a JSON object),
//         so the fuzzer gets past the size check into the binary parsers;
//   0x02  open with VerifyMode::kChecksums instead of kSizes.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "libs/common/file_util.h"
#include "libs/serving/filter.h"
#include "libs/serving/query_engine.h"
#include "libs/snapshot/snapshot.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_util.h"

namespace {

using imagesearch::fuzz::SnapshotFileOrder;
namespace serving = imagesearch::serving;
namespace snapshot = imagesearch::snapshot;
namespace index = imagesearch::index;

const std::string& Dir() {
  // In memory (/dev/shm) where there is one: every input rewrites the files.
  static const std::string* dir = [] {
    std::string tmpl = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm/imagesearch_fuzzsnap.XXXXXX"
                                                       : "/tmp/imagesearch_fuzzsnap.XXXXXX";
    FUZZ_CHECK(::mkdtemp(tmpl.data()) != nullptr);
    return new std::string(tmpl);
  }();
  return *dir;
}

void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  FUZZ_CHECK(out.good());
}

// Rewrites the manifest's file sizes and checksums to the written files'.
std::string FixManifest(std::string_view text, const std::string& dir) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::string(text);
  auto files = j.find("files");
  if (files == j.end() || !files->is_object()) return std::string(text);
  for (auto it = files->begin(); it != files->end(); ++it) {
    if (!it->is_object()) continue;
    const std::string path = dir + "/" + it.key();
    struct stat st;
    if (it.key().find('/') != std::string::npos || ::stat(path.c_str(), &st) != 0) continue;
    (*it)["size"] = static_cast<uint64_t>(st.st_size);
    auto sum = imagesearch::Xxh3HexOfFile(path);
    if (sum.ok()) (*it)["xxh3"] = *sum;
  }
  // Reseal: the manifest's self-checksum over its content without it.
  j.erase("manifest_xxh3");
  j["manifest_xxh3"] =
      imagesearch::Xxh3Hex(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void Exercise(const snapshot::Snapshot& snap) {
  const auto& m = snap.manifest();
  const size_t dim = static_cast<size_t>(m.dim);
  // A query from stored row 0 if there is one, else a fixed vector.
  std::vector<float> query(dim, 0.5f);
  if (snap.rows() > 0) {
    const float* v = snap.Vector(0);
    bool finite = true;
    for (size_t i = 0; i < dim; ++i) finite = finite && std::isfinite(v[i]);
    if (finite) query.assign(v, v + dim);
  }
  auto prepared = serving::PrepareQueryVector(snap, query.data(), query.size());
  if (!prepared.ok()) {
    query.assign(dim, 0.5f);
    prepared = serving::PrepareQueryVector(snap, query.data(), query.size());
    if (!prepared.ok()) return;
  }
  serving::SearchParams params;
  params.top_k = 5;
  params.ef = 16;
  (void)serving::SearchSnapshot(snap, *prepared, params);
  params.dedup = 0.9f;
  params.exclude_row = 0;
  (void)serving::SearchSnapshot(snap, *prepared, params);
  // Filtered: a walk (most rows allowed) and an exact scan (few allowed).
  auto most = std::make_shared<index::RowFilter>(snap.rows(), true);
  params.dedup = 0;
  params.allowed = most;
  (void)serving::SearchSnapshot(snap, *prepared, params);
  auto few = std::make_shared<index::RowFilter>(snap.rows());
  few->Allow(0);
  few->Allow(static_cast<uint32_t>(snap.rows() / 2));
  params.allowed = few;
  (void)serving::SearchSnapshot(snap, *prepared, params);
  // Ids both ways, for a few rows.
  for (uint32_t row = 0; row < snap.rows() && row < 4; ++row) {
    auto view = snap.Id(row);
    if (view.ok()) (void)snap.Find(view->id);
  }
  (void)snap.Find("item0");
  for (uint32_t row = 0; row < snap.rows() && row < 4; ++row) (void)snap.Thumbnail(row);
  // Attribute filters over every field of the schema.
  if (snap.schema_table() != nullptr) {
    serving::Filter f;
    for (const auto& field : snap.schema_table()->fields()) {
      serving::Condition c;
      c.field = field.name;
      switch (field.type) {
        case snapshot::FieldType::kKeyword:
          c.kind = serving::Condition::Kind::kIn;
          c.values = {std::string("red"), std::string("")};
          break;
        case snapshot::FieldType::kBoolean:
          c.kind = serving::Condition::Kind::kMatch;
          c.values = {true};
          break;
        case snapshot::FieldType::kFloat:
          c.kind = serving::Condition::Kind::kRange;
          c.gte = 1.5;
          break;
        case snapshot::FieldType::kInteger:
        case snapshot::FieldType::kTimestamp:
          c.kind = serving::Condition::Kind::kRange;
          c.lt = int64_t{2004};
          break;
      }
      f.should.push_back(c);
    }
    serving::Condition ids;
    ids.kind = serving::Condition::Kind::kHasId;
    ids.ids = {"item1", "item2"};
    f.must_not.push_back(ids);
    auto allowed = serving::EvaluateFilter(snap, f);
    if (allowed.ok()) {
      params.allowed = std::make_shared<index::RowFilter>(*std::move(allowed));
      (void)serving::SearchSnapshot(snap, *prepared, params);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string& dir = Dir();
  const auto parts = imagesearch::fuzz::SplitFiles(
      std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  const auto& names = SnapshotFileOrder();
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string path = dir + "/" + names[i];
    if (i < parts.size()) {
      WriteFile(path, parts[i]);
    } else {
      ::unlink(path.c_str());
    }
  }
  if ((mode & 1) && !parts.empty()) WriteFile(dir + "/MANIFEST.json", FixManifest(parts[0], dir));
  const auto verify = (mode & 2) ? snapshot::VerifyMode::kChecksums : snapshot::VerifyMode::kSizes;
  auto snap = snapshot::Snapshot::OpenDir(dir, verify);
  if (!snap.ok()) {
    FUZZ_CHECK(!snap.status().message().empty());
    return 0;
  }
  Exercise(**snap);
  return 0;
}
