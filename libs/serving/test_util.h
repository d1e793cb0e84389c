// Test helper: publishes small clustered-vector snapshots into a temp root.
#ifndef IMAGESEARCH_LIBS_SERVING_TEST_UTIL_H_
#define IMAGESEARCH_LIBS_SERVING_TEST_UTIL_H_

#include <stdlib.h>

#include <string>
#include <vector>

#include "libs/index/test_vectors.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::serving {

inline std::string TempRoot(const char* tag) {
  std::string tmpl = std::string("/tmp/imagesearch_") + tag + ".XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl + "/root";
}

inline absl::StatusOr<uint64_t> PublishVectors(const std::string& root, size_t n, int dim,
                                               index::Metric metric, const std::string& prefix,
                                               uint32_t seed = 5) {
  std::vector<float> v = index::ClusteredVectors(n, dim, 16, seed);
  snapshot::SnapshotInput in;
  in.vectors = v.data();
  in.count = n;
  in.dim = dim;
  in.metric = metric;
  in.hnsw.m = 8;
  in.hnsw.ef_construction = 40;
  for (size_t i = 0; i < n; ++i) in.ids.push_back({prefix + std::to_string(i), "", ""});
  return snapshot::PublishSnapshot(root, in);
}

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_TEST_UTIL_H_
