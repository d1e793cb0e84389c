// Test and benchmark helper: snapshot inputs made of deterministic clustered
// vectors (libs/index/test_vectors.h), with ids "<prefix><row>" and URIs
// "mem://<row>". Header-only; not for production code.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_TEST_SNAPSHOTS_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_TEST_SNAPSHOTS_H_

#include <stdlib.h>

#include <string>
#include <vector>

#include "libs/common/test_temp_dir.h"
#include "libs/index/test_vectors.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::snapshot {

// Owns the vectors that `input` points into: move it, never copy it.
struct SyntheticCorpus {
  SyntheticCorpus() = default;
  SyntheticCorpus(SyntheticCorpus&&) = default;
  SyntheticCorpus& operator=(SyntheticCorpus&&) = default;
  SyntheticCorpus(const SyntheticCorpus&) = delete;
  SyntheticCorpus& operator=(const SyntheticCorpus&) = delete;

  // `input` with its graph writer set to build the HNSW graph of `vectors`
  // under input's count, dim, metric and hnsw as they are now.
  const SnapshotInput& WithGraph() {
    input.graph = index::HnswGraphWriter(vectors.data(), input.count,
                                         static_cast<size_t>(input.dim), input.metric, input.hnsw);
    return input;
  }

  std::vector<float> vectors;
  SnapshotInput input;
};

// HNSW defaults are small (M 8, ef_construction 40) so tests build fast, and
// one insert thread, so that a test's graph (and the recall it asserts) is
// the same on every run; callers may change input.hnsw before publishing.
inline SyntheticCorpus MakeSyntheticCorpus(size_t n, int dim, index::Metric metric,
                                           const std::string& id_prefix, uint32_t seed = 5,
                                           size_t clusters = 16, float spread = 0.35f) {
  SyntheticCorpus c;
  c.vectors = index::ClusteredVectors(n, static_cast<size_t>(dim), clusters, seed, spread);
  c.input.count = n;
  c.input.dim = dim;
  c.input.metric = metric;
  c.input.hnsw.m = 8;
  c.input.hnsw.ef_construction = 40;
  c.input.hnsw.threads = 1;
  c.input.ids.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    c.input.ids.push_back({id_prefix + std::to_string(i), "mem://" + std::to_string(i), ""});
  }
  return c;
}

inline absl::StatusOr<uint64_t> PublishSynthetic(const std::string& root, size_t n, int dim,
                                                 index::Metric metric, const std::string& id_prefix,
                                                 uint32_t seed = 5) {
  SyntheticCorpus c = MakeSyntheticCorpus(n, dim, metric, id_prefix, seed);
  return PublishSnapshot(root, c.WithGraph());
}

// The first segment of a version (the only one of a version published by
// PublishSnapshot).
inline const Segment& FirstSegment(const Snapshot& s) { return *s.segments().front().segment; }

// The directory of the first segment of root/v<version>, or "" if the
// version does not open.
inline std::string FirstSegmentDir(const std::string& root, uint64_t version) {
  auto s = Snapshot::Open(root, version, VerifyMode::kSizes);
  return s.ok() ? FirstSegment(**s).dir() : "";
}

// A fresh directory under /tmp, removed when the process exits; returns
// "<dir>/root" (not yet created), or "" if the directory cannot be made.
inline std::string TempSnapshotRoot(const std::string& tag) {
  const std::string dir = testing::NewTempDir(tag);
  return dir.empty() ? "" : dir + "/root";
}

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_TEST_SNAPSHOTS_H_
