// MANIFEST.json: what a snapshot version holds and how to verify it. The JSON
// field names are an on-disk format: add fields, never rename them.
// Plain value types; thread-compatible.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_MANIFEST_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_MANIFEST_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/index/metric.h"

namespace imagesearch::snapshot {

inline constexpr int kFormatVersion = 1;

// Identity of the model that made the vectors. Empty name: a vector-only
// snapshot (built from raw vectors, no model.pt).
struct ModelIdentity {
  std::string name;
  std::string version;
  std::string sha256;           // Of model.pt.
  std::string file;             // File name inside the version dir, e.g. "model.pt".
  int image_size = 0;
  bool has_text = false;
  std::string preprocessing_json = "{}";  // resize/crop/interpolation/mean/std as the model says.
};

struct FileEntry {
  uint64_t size = 0;
  std::string xxh3;  // XXH3-64, 16 hex digits.
};

struct Manifest {
  int format = kFormatVersion;
  uint64_t version = 0;
  uint64_t base_version = 0;  // 0: built from scratch.
  std::string created_at;     // RFC 3339 UTC.
  ModelIdentity model;
  int dim = 0;
  index::Metric metric = index::Metric::kCosine;
  uint64_t count = 0;
  int hnsw_m = 0;
  int hnsw_ef_construction = 0;
  int default_ef = 64;
  std::map<std::string, FileEntry> files;  // By file name in the version dir.
};

// The JSON carries "manifest_xxh3", the XXH3 of its own content (without
// that field), so a change that leaves valid JSON is caught too.
std::string ManifestToJson(const Manifest& manifest);
// Parses and validates; INVALID_ARGUMENT names the bad or missing field, or
// a content that does not match manifest_xxh3 (checked when present).
absl::StatusOr<Manifest> ParseManifest(absl::string_view json);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_MANIFEST_H_
