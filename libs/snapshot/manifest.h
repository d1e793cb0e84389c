// MANIFEST.json: what a snapshot version holds and how to verify it. The JSON
// field names are an on-disk format: add fields, never rename them.
// Plain value types; thread-compatible.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_MANIFEST_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_MANIFEST_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/index/metric.h"
#include "libs/snapshot/shard.h"

namespace imagesearch::snapshot {

// Format 2 (written): a version is a list of segments (SegmentEntry) kept
// under root/segments/, plus per-segment deletes. Format 1: a version that is
// one graph in its own directory; still read, as a version of one segment.
// A segment's own MANIFEST.json is format 1 with no model.
inline constexpr int kFormatVersion = 2;
inline constexpr int kSingleGraphFormat = 1;

// Identity of the model that made the vectors. Empty name: a vector-only
// snapshot (built from raw vectors, no model.pt).
struct ModelIdentity {
  std::string name;
  std::string version;
  std::string sha256;  // Of model.pt.
  std::string file;    // File name inside the version dir, e.g. "model.pt".
  int image_size = 0;
  bool has_text = false;
  std::string preprocessing_json = "{}";  // resize/crop/interpolation/mean/std as the model says.
};

struct FileEntry {
  uint64_t size = 0;
  std::string xxh3;  // XXH3-64, 16 hex digits.
};

// A segment written beside a bigger one (a tail: libs/snapshot/merge_policy.h)
// may link its rows to that segment's graph, so that a version holding both
// walks them as one graph (index::JointGraph). links.bin holds, per row of
// this segment, `per_row` rows of the linked segment (little-endian uint32;
// 0xFFFFFFFF: none), chosen among its nearest when the row was first linked
// (index::NearestRows) and copied by later joins.
inline constexpr char kLinksFile[] = "links.bin";
struct SegmentLinks {
  std::string segment;        // The linked segment's name.
  std::string manifest_xxh3;  // Its manifest's checksum: links are to exactly that segment.
  uint32_t per_row = 0;       // 0: no links.
};

// A segment whose graph extends another's (a fold: libs/snapshot/merge_policy.h)
// keeps that segment's rows first, at the same row numbers, with the same
// vectors. It lists that segment and the ones that segment extended in turn,
// nearest first, so that a tail linked to any of them is linked to it too
// (its links are rows below `rows`).
struct ExtendedSegment {
  std::string segment;        // The extended segment's name.
  std::string manifest_xxh3;  // Its manifest's checksum.
  uint64_t rows = 0;          // Its rows: this segment's first `rows` rows.
};
inline constexpr size_t kMaxExtendedSegments = 8;

// One segment of a format-2 version.
struct SegmentEntry {
  std::string name;      // Directory name under root/segments/.
  uint64_t rows = 0;     // Rows the segment holds (its own manifest's count).
  uint64_t deleted = 0;  // Of those, rows deleted in this version.
  // The version file (listed in Manifest::files) holding the deleted-row
  // bitmap; empty when deleted == 0.
  std::string deletes_file;
  // The segment manifest's own manifest_xxh3: binds the version to exactly
  // that segment.
  std::string manifest_xxh3;
};

struct Manifest {
  int format = kFormatVersion;
  uint64_t version = 0;
  uint64_t base_version = 0;  // 0: built from scratch.
  std::string created_at;     // RFC 3339 UTC.
  ModelIdentity model;
  int dim = 0;
  index::Metric metric = index::Metric::kCosine;
  // Live rows: for format 2, the segments' rows less their deleted rows.
  uint64_t count = 0;
  int hnsw_m = 0;
  int hnsw_ef_construction = 0;
  int default_ef = 64;
  std::map<std::string, FileEntry> files;  // By file name in the version dir.
  // Format 2 only: the segments, oldest first. Row numbers run through them
  // in this order (the first segment's rows, then the next's, ...).
  std::vector<SegmentEntry> segments;
  // Which shard of a collection the root is (shard.h); unsharded by default.
  // Written as "shard" only when sharded; every version of a root carries
  // its first version's.
  ShardInfo shard;
  // A segment's manifest only: the segment its links.bin links to.
  SegmentLinks links;
  // A segment's manifest only: the segments its graph extends, nearest first
  // (at most kMaxExtendedSegments).
  std::vector<ExtendedSegment> extends;
  // The self-checksum read from (or written to) the JSON; empty if absent.
  std::string manifest_xxh3;
};

// Whether `links` (a tail's) are rows of the segment `name` whose manifest is
// `segment`: they name it, or a segment whose rows it keeps first
// (Manifest::extends).
bool LinksReach(const SegmentLinks& links, absl::string_view name, const Manifest& segment);

// The JSON carries "manifest_xxh3", the XXH3 of its own content (without
// that field), so a change that leaves valid JSON is caught too.
std::string ManifestToJson(const Manifest& manifest);
// Parses and validates; INVALID_ARGUMENT names the bad or missing field, or
// a content that does not match manifest_xxh3 (checked when present).
absl::StatusOr<Manifest> ParseManifest(absl::string_view json);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_MANIFEST_H_
