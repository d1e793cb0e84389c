// The batch indexer: streams images through the model into a new snapshot
// version.
//
//   list -> decode+preprocess (thread pool) -> reorder -> batch -> encode
//        -> HNSW insert -> write snapshot -> publish (atomic)
//
// Every option is checked, and the --base snapshot and --remove_ids ids
// looked up, before the model loads or any image is read. The reorder step
// hands decoded images on in listing order, so the same input gives the same
// rows: a byte-identical ids.bin and the same vector per row.
//
// Stages are threads joined by bounded queues, so image memory stays bounded
// whatever the corpus size, decoding overlaps encoding, and each encoded
// batch is inserted into the graph while the next one is encoded. What grows
// with the corpus is the graph itself (count x dim floats plus links), plus
// the id list and the set of seen ids.
//
// With thumbnails on (the default), each image's thumbnail is made from the
// same decode and stored in the new segment's thumbs.bin; incremental builds
// leave the base's thumbnails in the base's segments, decoding nothing again.
//
// Bad images are skipped and recorded with their reason in rejects.jsonl
// inside the snapshot; the run fails (and publishes nothing) when nothing was
// indexed or the reject share passes max_reject_ratio.
#ifndef IMAGESEARCH_SERVICES_INDEXER_INDEXER_H_
#define IMAGESEARCH_SERVICES_INDEXER_INDEXER_H_

#include <cstdint>
#include <functional>
#include <istream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/encoder/encoder.h"
#include "libs/image/image.h"
#include "libs/index/hnsw_builder.h"
#include "libs/snapshot/attribute_table.h"
#include "libs/snapshot/embedding_shard.h"
#include "libs/snapshot/manifest.h"

namespace imagesearch::indexer {

struct IndexerOptions {
  // Exactly one input: a directory (walked recursively, image extensions
  // only), a .jsonl manifest ({"id", "path", "attributes"}; relative paths
  // are relative to the manifest), or "-" for stdin (paths or JSON lines).
  std::string input;
  std::istream* stdin_stream = nullptr;  // For input "-"; defaults to std::cin.
  std::string root;                      // Snapshot root to publish into.
  std::string model_path;                // model.pt (our TorchScript contract).
  uint64_t base_version = 0;             // Incremental: start from this version.
  std::vector<std::string> remove_ids;   // Incremental: ids to drop from the base.
  int decode_threads = 0;                // 0 = one per CPU (EffectiveCpuCount).
  // Batches encoded at once, each on its own thread; 0 = one per CPU.
  int encoder_instances = 0;
  // LibTorch intra-op threads per instance; 0 = CPUs / instances (1 by
  // default: no OpenMP team that spin-waits when the cores are shared).
  int encoder_threads = 0;
  int batch_size = 4;
  double max_reject_ratio = 0.05;
  index::HnswParams hnsw;
  int default_ef = 64;
  int64_t max_pixels = 64'000'000;
  // Store a thumbnail of each image in the snapshot (thumbs.bin), for the
  // web page; made from the same decode as the model input.
  bool thumbnails = true;
  // Typed attribute fields for filters (attrs.bin): parsed from each manifest
  // line's "attributes"; a value that violates the schema rejects the image
  // into rejects.jsonl with the reason. Empty: no attribute columns.
  std::vector<snapshot::FieldSpec> schema;
  // Near-duplicate report: groups of images whose embeddings have cosine
  // similarity >= this go to duplicates.jsonl in the snapshot, for the corpus
  // owner to clean up. 0 = no report. Not made for --embeddings_out shards.
  double duplicates_threshold = 0.95;
  image::ThumbnailOptions thumbnail;
  // Progress: "auto" (bar on a terminal, lines otherwise), "bar", "lines", "none".
  std::string progress = "auto";
  bool promote = true;   // False: publish v<N> but leave CURRENT (a candidate).
  bool dry_run = false;  // Encode and build, but do not publish (benchmarks).
  // Distributed indexing: take only list positions p with p % shard.count ==
  // shard.index, and with embeddings_out set, write the vectors, ids and
  // thumbnails to embeddings_out/shard-<i>-of-<n>/ instead of building a
  // graph and publishing (see libs/snapshot/embedding_shard.h; the final
  // step is `imagesearch-snapshot build --shards=DIR`).
  snapshot::ShardSpec shard;
  std::string embeddings_out;
};

struct IndexReport {
  uint64_t version = 0;   // 0 for a dry run or an embeddings shard.
  std::string shard_dir;  // With embeddings_out: the shard directory written.
  uint64_t listed = 0;
  uint64_t indexed = 0;  // Newly encoded.
  uint64_t rejected = 0;
  uint64_t kept_from_base = 0;  // Base rows still live in the new version.
  uint64_t removed = 0;         // Base rows deleted by --remove_ids.
  uint64_t replaced = 0;        // Base rows whose ids were indexed again.
  uint64_t total = 0;           // Live vectors in the new snapshot.
  uint64_t bytes_written = 0;   // With --base: the new segment, deletes and manifest.
  std::string segment;          // The new segment's name (none for a delete-only version).
  double seconds = 0;
  double encode_seconds = 0;      // Time the encoder thread spent in forward passes.
  uint64_t duplicate_groups = 0;  // Groups listed in duplicates.jsonl.
};

absl::StatusOr<IndexReport> RunIndexer(const IndexerOptions& options);

// The manifest's record of a model (name, version, preprocessing; no sha256).
snapshot::ModelIdentity ModelIdentityOf(const encoder::ModelInfo& info);

}  // namespace imagesearch::indexer

#endif  // IMAGESEARCH_SERVICES_INDEXER_INDEXER_H_
