// imagesearch-indexer: the batch job that turns images into a published
// snapshot version.
//
//   imagesearch-indexer --input=/data/images --root=/snapshots --model=model.pt
//   imagesearch-indexer --input=manifest.jsonl --root=/snapshots --model=model.pt
//   find /data -name '*.jpg' | imagesearch-indexer --input=- --root=... --model=...
//   imagesearch-indexer --input=new/ --base=v3 --remove_ids=gone.txt --root=... --model=...
//
// The ingest service (one writer of a root; images searchable within seconds):
//
//   imagesearch-indexer serve --root=/snapshots [--model=model.pt] [--port=50052]
//
// Exit status: 0 published (serve: stopped by SIGTERM), 1 failed (nothing
// published), 2 usage error.
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "libs/common/binary_main.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/snapshot/merge_policy_flags.h"
#include "libs/snapshot/snapshot_store.h"
#include "services/indexer/indexer.h"
#include "services/indexer/ingest_service.h"

ABSL_FLAG(std::string, input, "", "Directory, .jsonl manifest, or - for stdin.");
ABSL_FLAG(std::string, root, "", "Snapshot root to publish into.");
ABSL_FLAG(std::string, model, "", "TorchScript model.pt (see libs/encoder/MODEL_CONTRACT.md).");
ABSL_FLAG(std::string, base, "", "Incremental build on top of this version (e.g. v3).");
ABSL_FLAG(std::string, remove_ids, "", "With --base: file of ids (one per line) to drop.");
ABSL_FLAG(int, decode_threads, 0,
          "Image decode threads; 0 = one per CPU this process may use (cgroup quota, affinity).");
ABSL_FLAG(int, encoder_instances, 0,
          "Batches encoded at once, each on its own thread; 0 = one per CPU this process may use.");
ABSL_FLAG(int, encoder_threads, 0,
          "LibTorch intra-op threads per encoder instance; 0 = CPUs / encoder_instances.");
ABSL_FLAG(
    int, batch, 4,
    "Encoder batch size. 4 ran the default model end to end at 0.95-1.0x of the encoder "
    "alone at its best batch, 32 at 0.84-0.88x (tools/bench/results/LOG.md, indexer section).");
ABSL_FLAG(double, max_reject_ratio, 0.05,
          "Fail (publish nothing) if more than this share of images is rejected.");
ABSL_FLAG(int, m, 16, "HNSW M.");
ABSL_FLAG(int, ef_construction, 200, "HNSW ef_construction.");
ABSL_FLAG(int, default_ef, 64, "ef for queries that do not set one.");
ABSL_FLAG(int64_t, max_pixels, 64000000, "Refuse images with more pixels (decompression bombs).");
ABSL_FLAG(std::string, progress, "auto", "auto, bar, lines or none.");
ABSL_FLAG(bool, thumbnails, true,
          "Store a JPEG thumbnail of each image in the snapshot (thumbs.bin) for the web page.");
ABSL_FLAG(int, thumbnail_size, 128, "Thumbnail long side in pixels (8-1024); never enlarged.");
ABSL_FLAG(double, duplicates_threshold, 0.95,
          "Report groups of images whose embeddings have cosine similarity >= this in "
          "duplicates.jsonl (0 = no report). Re-encoded copies score > 0.99 with the default "
          "model, a 3/4-size JPEG 0.955, a half-size copy 0.91.");
ABSL_FLAG(std::string, schema, "",
          "Typed attribute fields for filtered search, from each manifest line's attributes: "
          "name:type,... with types keyword, integer, float, boolean, timestamp "
          "(e.g. class:keyword,year:integer). Violations reject the image.");
ABSL_FLAG(bool, dry_run, false, "Encode and build the graph but publish nothing.");
ABSL_FLAG(bool, promote, true,
          "Make the new version CURRENT. false publishes a candidate, left for "
          "tools/promote.sh to gate and promote.");
ABSL_FLAG(std::string, shard, "0/1",
          "Distributed indexing: i/n takes every n-th input item starting at item i (0-based); "
          "a Kubernetes Indexed Job passes $(JOB_COMPLETION_INDEX)/n.");
ABSL_FLAG(std::string, embeddings_out, "",
          "Write this worker's vectors, ids and thumbnails to DIR/shard-<i>-of-<n>/ instead of "
          "publishing a snapshot; then `imagesearch-snapshot build --shards=DIR` publishes one.");
ABSL_FLAG(std::string, host, "0.0.0.0", "serve: address to listen on.");
ABSL_FLAG(int, port, 50052, "serve: gRPC port (0 = a free one, printed and in --port_file).");
ABSL_FLAG(std::string, port_file, "", "serve: write {\"grpc\": PORT} here once listening.");
ABSL_FLAG(int, publish_interval_ms, 1000,
          "serve: publish pending writes as a new version this often (milliseconds).");
ABSL_FLAG(int, publish_rows, 10000, "serve: or as soon as this many rows are pending.");
ABSL_FLAG(int, max_pending_rows, 200000,
          "serve: refuse writes (RESOURCE_EXHAUSTED, retry later) while this many rows wait to "
          "be published.");
ABSL_FLAG(int, dim, 0,
          "serve: dimension of a new vector-only collection (empty root, no --model).");
ABSL_FLAG(std::string, metric, "cosine", "serve: metric of a new vector-only collection.");
ABSL_FLAG(bool, merge, true,
          "serve: merge small segments in the background (the policy of imagesearch-snapshot "
          "merge, set by the same --segments_per_tier, --fold_pct, ... flags).");
ABSL_FLAG(int, background_nice, 10,
          "serve: the nice value (0-19) of the background merges' threads, so that query "
          "replicas on the same cores and the publishes (freshness) come first; 0 keeps the "
          "process's.");
ABSL_FLAG(int, shard_count, 0,
          "serve: make an empty --root a collection of this many shard roots "
          "(shard-<i>-of-<S>/), each write going to its id's shard. A --root that already "
          "holds shard roots is served as that collection without it.");
ABSL_FLAG(std::string, collection, "",
          "serve --shard_count: the new collection's name (default: --root's last component).");
ABSL_FLAG(std::string, tls_cert, "",
          "serve: PEM certificate (chain) of the server; with --tls_key gRPC serves TLS only. "
          "Default: plaintext.");
ABSL_FLAG(std::string, tls_key, "", "serve: PEM private key (unencrypted) of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "serve: PEM CA certificate(s). When set (needs --tls_cert): mutual TLS, every client "
          "must present a certificate that chains to this CA.");
ABSL_FLAG(std::string, auth_token_file, "",
          "serve: file holding a bearer token (one line). When set, every Ingest call must "
          "carry metadata 'authorization: Bearer <token>' (else UNAUTHENTICATED); "
          "grpc.health.v1 and server reflection stay open.");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text, or json (one object per line).");

namespace {

int Serve() {
  imagesearch::indexer::ServeOptions so;
  imagesearch::indexer::IngestOptions& o = so.ingest;
  o.root = absl::GetFlag(FLAGS_root);
  o.model_path = absl::GetFlag(FLAGS_model);
  o.dim = absl::GetFlag(FLAGS_dim);
  auto metric = imagesearch::index::ParseMetric(absl::GetFlag(FLAGS_metric));
  if (!metric.ok()) {
    std::cerr << "--metric: " << metric.status().message() << "\n";
    return 2;
  }
  o.metric = *metric;
  auto schema = imagesearch::snapshot::ParseSchema(absl::GetFlag(FLAGS_schema));
  if (!schema.ok()) {
    std::cerr << "--schema: " << schema.status().message() << "\n";
    return 2;
  }
  o.schema = *std::move(schema);
  if (o.root.empty() || absl::GetFlag(FLAGS_publish_interval_ms) <= 0 ||
      absl::GetFlag(FLAGS_publish_rows) <= 0 || absl::GetFlag(FLAGS_max_pending_rows) <= 0) {
    std::cerr << "usage: imagesearch-indexer serve --root=DIR [--model=model.pt] [--port=N] "
                 "(--publish_interval_ms, --publish_rows and --max_pending_rows positive)\n";
    return 2;
  }
  if (const int nice = absl::GetFlag(FLAGS_background_nice); nice < 0 || nice > 19) {
    std::cerr << "--background_nice=" << nice << " is out of range: 0 (unchanged) to 19\n";
    return 2;
  }
  o.publish_interval = absl::Milliseconds(absl::GetFlag(FLAGS_publish_interval_ms));
  o.publish_rows = static_cast<size_t>(absl::GetFlag(FLAGS_publish_rows));
  o.max_pending_rows = static_cast<size_t>(absl::GetFlag(FLAGS_max_pending_rows));
  o.hnsw.m = absl::GetFlag(FLAGS_m);
  o.hnsw.ef_construction = absl::GetFlag(FLAGS_ef_construction);
  o.default_ef = absl::GetFlag(FLAGS_default_ef);
  o.thumbnails = absl::GetFlag(FLAGS_thumbnails);
  o.thumbnail.max_side = absl::GetFlag(FLAGS_thumbnail_size);
  o.encoder_threads = absl::GetFlag(FLAGS_encoder_threads);
  o.merge = absl::GetFlag(FLAGS_merge);
  o.merge_policy = imagesearch::snapshot::MergePolicyFromFlags();
  o.background_nice = absl::GetFlag(FLAGS_background_nice);
  so.host = absl::GetFlag(FLAGS_host);
  so.port = absl::GetFlag(FLAGS_port);
  so.port_file = absl::GetFlag(FLAGS_port_file);
  if (absl::GetFlag(FLAGS_shard_count) < 0) {
    std::cerr << "--shard_count must not be negative\n";
    return 2;
  }
  so.shard_count = static_cast<uint32_t>(absl::GetFlag(FLAGS_shard_count));
  // A bad TLS or token file is a clear error before anything starts.
  auto security = imagesearch::LoadServerSecurityFlags(
      absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
      absl::GetFlag(FLAGS_tls_client_ca), absl::GetFlag(FLAGS_auth_token_file));
  if (!security.ok()) {
    std::cerr << security.status().message() << "\n";
    return 2;
  }
  so.security = *std::move(security);
  so.collection = absl::GetFlag(FLAGS_collection);
  return imagesearch::indexer::RunIngestServer(so);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args = imagesearch::InitBinary(
      "imagesearch batch indexer: images -> encoder -> HNSW graph -> a published snapshot.\n"
      "  imagesearch-indexer --input=DIR|FILE.jsonl|- --root=DIR --model=model.pt\n"
      "  imagesearch-indexer serve --root=DIR [--model=model.pt] [--port=50052]  (ingest "
      "service)\n"
      "See services/indexer/indexer.h and ingest.h.",
      argc, argv, FLAGS_log_format);
  if (args.size() > 1) {
    if (std::string(args[1]) == "serve" && args.size() == 2) return Serve();
    std::cerr << "unknown command '" << args[1] << "' (the only one is serve)\n";
    return 2;
  }
  using imagesearch::indexer::IndexerOptions;
  IndexerOptions o;
  o.input = absl::GetFlag(FLAGS_input);
  o.root = absl::GetFlag(FLAGS_root);
  o.model_path = absl::GetFlag(FLAGS_model);
  if (!absl::GetFlag(FLAGS_base).empty()) {
    auto v = imagesearch::snapshot::ParseVersionName(absl::GetFlag(FLAGS_base));
    if (!v.ok()) {
      std::cerr << "--base: " << v.status().message() << "\n";
      return 2;
    }
    o.base_version = *v;
    // On top of a version, its own model unless another is named (which
    // the indexer then checks is the same).
    if (o.model_path.empty() && !o.root.empty()) {
      o.model_path =
          imagesearch::snapshot::VersionDir(o.root, *v) + "/" + imagesearch::snapshot::kModelFile;
      if (!std::filesystem::exists(o.model_path)) {
        std::cerr << "--model is not set, and --base " << absl::GetFlag(FLAGS_base)
                  << " has no model to use (" << o.model_path
                  << " does not exist): name the model with --model\n";
        return 2;
      }
    }
  }
  std::vector<std::string> missing;
  if (o.input.empty()) missing.push_back("--input");
  if (o.root.empty() && absl::GetFlag(FLAGS_embeddings_out).empty()) {
    missing.push_back("--root (or --embeddings_out)");
  }
  if (o.model_path.empty()) missing.push_back("--model");
  if (!missing.empty()) {
    std::cerr << absl::StrJoin(missing, ", ") << (missing.size() == 1 ? " is" : " are")
              << " required\n"
              << "usage: imagesearch-indexer --input=DIR|FILE.jsonl|- --root=DIR --model=model.pt "
                 "(with --base=vN, --model defaults to that version's)\n";
    return 2;
  }
  if (!absl::GetFlag(FLAGS_remove_ids).empty()) {
    auto text = imagesearch::ReadFileToString(absl::GetFlag(FLAGS_remove_ids));
    if (!text.ok()) {
      std::cerr << "--remove_ids: " << text.status().message() << "\n";
      return 2;
    }
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (!line.empty()) o.remove_ids.emplace_back(line);
    }
  }
  o.decode_threads = absl::GetFlag(FLAGS_decode_threads);
  o.encoder_instances = absl::GetFlag(FLAGS_encoder_instances);
  o.encoder_threads = absl::GetFlag(FLAGS_encoder_threads);
  o.batch_size = absl::GetFlag(FLAGS_batch);
  o.max_reject_ratio = absl::GetFlag(FLAGS_max_reject_ratio);
  o.hnsw.m = absl::GetFlag(FLAGS_m);
  o.hnsw.ef_construction = absl::GetFlag(FLAGS_ef_construction);
  o.default_ef = absl::GetFlag(FLAGS_default_ef);
  o.max_pixels = absl::GetFlag(FLAGS_max_pixels);
  o.progress = absl::GetFlag(FLAGS_progress);
  o.thumbnails = absl::GetFlag(FLAGS_thumbnails);
  o.thumbnail.max_side = absl::GetFlag(FLAGS_thumbnail_size);
  auto schema = imagesearch::snapshot::ParseSchema(absl::GetFlag(FLAGS_schema));
  if (!schema.ok()) {
    std::cerr << "--schema: " << schema.status().message() << "\n";
    return 2;
  }
  o.schema = *std::move(schema);
  o.duplicates_threshold = absl::GetFlag(FLAGS_duplicates_threshold);
  o.dry_run = absl::GetFlag(FLAGS_dry_run);
  o.promote = absl::GetFlag(FLAGS_promote);
  auto shard = imagesearch::snapshot::ParseShardSpec(absl::GetFlag(FLAGS_shard));
  if (!shard.ok()) {
    std::cerr << "--shard: " << shard.status().message() << "\n";
    return 2;
  }
  o.shard = *shard;
  o.embeddings_out = absl::GetFlag(FLAGS_embeddings_out);
  auto report = imagesearch::indexer::RunIndexer(o);
  if (!report.ok()) {
    imagesearch::LogError("indexer failed: ", report.status().ToString());
    return 1;
  }
  const auto& r = *report;
  std::cout << absl::StrFormat(
      "%s: %d listed, %d indexed, %d rejected, %d kept from base, %d removed, %d replaced -> %d "
      "vectors in %.1fs (%.1f img/s; encoder busy %.1fs); %d near-duplicate groups%s\n",
      r.version              ? absl::StrFormat("published v%d%s", r.version,
                                  o.promote ? "" : " (candidate; CURRENT unchanged)")
      : !r.shard_dir.empty() ? absl::StrCat("wrote shard ", r.shard_dir)
                             : std::string("dry run"),
      r.listed, r.indexed, r.rejected, r.kept_from_base, r.removed, r.replaced, r.total, r.seconds,
      r.seconds > 0 ? r.indexed / r.seconds : 0.0, r.encode_seconds, r.duplicate_groups,
      o.base_version == 0 || r.version == 0
          ? std::string()
          : absl::StrFormat("; wrote %s (%d bytes)",
                            r.segment.empty() ? std::string("deletes only")
                                              : absl::StrCat("segment ", r.segment),
                            r.bytes_written));
  return 0;
}
