// imagesearch-snapshot: builds snapshots from raw vectors and administers a
// snapshot root.
//
//   imagesearch-snapshot build --root=R --vectors=emb.npy [--ids=ids.txt|ids.jsonl]
//       [--metric=cosine|ip|l2] [--m=16] [--ef_construction=200] [--default_ef=64]
//   imagesearch-snapshot build --root=R --shards=DIR --model=model.pt [--m=...]
//       (the shards that `imagesearch-indexer --shard=i/n --embeddings_out=DIR` wrote)
//   imagesearch-snapshot build --root=R --base=v3 [--vectors=new.npy [--ids=...]]
//       [--remove_ids=gone.txt]     (one new segment and deletes on top of v3)
//   imagesearch-snapshot reshard --from=DIR --root=NEW --shard_count=S [--collection=NAME]
//       (a collection's live rows, from its shard roots or one root, as S new shard roots)
//   imagesearch-snapshot merge --root=R [--all | --segments=a,b] [policy flags]
//   imagesearch-snapshot export --root=R [--version=v3] --out=DIR   (self-contained)
//   imagesearch-snapshot list|current --root=R
//   imagesearch-snapshot set-current --root=R --version=v3     (promote, or roll back)
//   imagesearch-snapshot rollback --root=R     (CURRENT -> the version before it)
//   imagesearch-snapshot gc --root=R --keep=2 --grace=1h
//   imagesearch-snapshot verify --root=R [--version=v3]
//   imagesearch-snapshot synth --out=vectors.npy --count=N --dim=D [--seed=1] [--latent=32]
#include <algorithm>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "libs/common/binary_main.h"
#include "libs/common/file_util.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/test_vectors.h"
#include "libs/snapshot/embedding_shard.h"
#include "libs/snapshot/merge_policy_flags.h"
#include "libs/snapshot/shard.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/vector_io.h"

ABSL_FLAG(std::string, root, "", "Snapshot root directory.");
ABSL_FLAG(std::string, vectors, "", "build: .npy (float32/64, N x D) or .fvecs file.");
ABSL_FLAG(std::string, ids, "",
          "build: ids, one per line (.txt) or JSON objects {id, uri, attributes} (.jsonl). "
          "Default: row numbers.");
ABSL_FLAG(std::string, metric, "cosine", "build: cosine, ip or l2 (--shards: the shards' own).");
ABSL_FLAG(std::string, shards, "",
          "build: a directory of shard-<i>-of-<n>/ embedding shards (imagesearch-indexer "
          "--embeddings_out); all n must be there, made with --model.");
ABSL_FLAG(std::string, model, "", "build --shards: the model.pt that made the shards.");
ABSL_FLAG(std::string, schema, "",
          "build: typed attribute fields for filters (name:type,...; keyword, integer, float, "
          "boolean, timestamp), read from the ids' attributes.");
ABSL_FLAG(int, m, 0,
          "build: HNSW M (0: 16); merge: the merged graph's M (0: the biggest merged "
          "segment's, which an extension keeps).");
ABSL_FLAG(int, ef_construction, 0,
          "build: HNSW ef_construction (0: 200); merge: the merged graph's (0: the biggest "
          "merged segment's).");
ABSL_FLAG(int, default_ef, 64, "build: ef used when a query leaves it unset.");
ABSL_FLAG(int, threads, 0, "build: insert threads; 0 = all cores.");
ABSL_FLAG(std::string, base, "",
          "build: add the vectors to this version (e.g. v3) as one new segment; ids the base "
          "holds are replaced. Writes only the new rows.");
ABSL_FLAG(std::string, remove_ids, "",
          "build --base: file of ids (one per line) to delete from the base; --vectors may then "
          "be left out.");
ABSL_FLAG(std::string, segments, "",
          "merge: comma-separated segment names of CURRENT to merge; empty: as the merge "
          "policy chooses (see README, 'Segments and merges').");
ABSL_FLAG(bool, all, false,
          "merge: merge every segment of CURRENT into one new graph, every deleted row dropped.");
ABSL_FLAG(bool, extend, true,
          "merge: when the biggest merged segment holds at least as many rows as the others' "
          "live rows, insert those into its graph instead of building a new one (its deleted "
          "rows stay, deleted); --all never extends.");
ABSL_FLAG(std::string, version, "", "set-current/verify/export: a version like v3.");
ABSL_FLAG(int, keep, 2, "gc: newest versions to keep (CURRENT is always kept).");
ABSL_FLAG(absl::Duration, grace, absl::Hours(1),
          "gc: also keep every version that stopped being CURRENT less than this long ago "
          "(HISTORY's times), so replicas that have not swapped yet keep their files.");
ABSL_FLAG(std::string, out, "",
          "synth: output .npy path. export: the self-contained version directory to write.");
ABSL_FLAG(int, count, 10000, "synth: number of vectors.");
ABSL_FLAG(int, dim, 128, "synth: dimension.");
ABSL_FLAG(int, seed, 1, "synth: random seed.");
ABSL_FLAG(int, latent, 0,
          "synth: 0: Gaussian blobs filling all --dim dimensions (100 clusters); N > 0: "
          "clustered data of intrinsic dimension N, as real embeddings are (1,000 clusters; "
          "libs/index/test_vectors.h LowRankVectors).");
ABSL_FLAG(bool, promote, true,
          "build: make the new version CURRENT; false publishes a candidate for "
          "tools/promote.sh to check first.");
ABSL_FLAG(int, shard_count, 0,
          "build: split the collection into this many shards by a stable hash of the id, each "
          "its own snapshot root --root/shard-<i>-of-<S> (0: one root, --root itself).");
ABSL_FLAG(std::string, collection, "",
          "build --shard_count: the collection's name, recorded in every shard's manifest "
          "(default: --root's last path component; reshard: the collection's own).");
ABSL_FLAG(std::string, from, "",
          "reshard: the collection to read: its directory of shard-<i>-of-<S> roots, or one "
          "unsharded root. Each root's CURRENT version is read, live rows only.");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text, or json (one object per line).");

namespace imagesearch {
namespace {

int Fail(const absl::Status& s) {
  std::cerr << "error: " << s << "\n";
  return 1;
}

absl::StatusOr<std::vector<snapshot::IdRecord>> ReadIds(const std::string& path, size_t count) {
  std::vector<snapshot::IdRecord> ids;
  if (path.empty()) {
    for (size_t i = 0; i < count; ++i) ids.push_back({std::to_string(i), "", ""});
    return ids;
  }
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  const bool jsonl = absl::EndsWith(path, ".jsonl");
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_no;
    line = absl::StripTrailingAsciiWhitespace(line);
    if (line.empty()) continue;
    if (!jsonl) {
      ids.push_back({std::string(line), "", ""});
      continue;
    }
    auto record = snapshot::ParseJsonlRecord(line);
    if (!record.ok() || !record->id.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no, ": ",
                       record.ok() ? "missing string field \"id\"" : record.status().message()));
    }
    // The row's URI: "uri", else "path" (an indexer manifest line).
    snapshot::IdRecord r{*std::move(record->id),
                         record->uri.value_or(record->path.value_or(std::string())),
                         std::move(record->attributes_json)};
    ids.push_back(std::move(r));
  }
  if (ids.size() != count) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has ", ids.size(), " ids but the vector file has ", count, " rows"));
  }
  return ids;
}

// Types every row's attributes under --schema into `in` (nothing without one).
absl::Status ApplySchema(snapshot::SnapshotInput* in) {
  auto schema = snapshot::ParseSchema(absl::GetFlag(FLAGS_schema));
  if (!schema.ok()) return schema.status();
  if (schema->empty()) return absl::OkStatus();
  in->schema = *schema;
  in->attributes.reserve(in->ids.size());
  for (const auto& r : in->ids) {
    auto typed = snapshot::TypedAttributes(in->schema, r.attributes_json);
    if (!typed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("id '", r.id.substr(0, 64), "': ", typed.status().message()));
    }
    in->attributes.push_back(*std::move(typed));
  }
  return absl::OkStatus();
}

// build --shards: n workers' embedding shards -> one snapshot, with the
// model, rows in shard order.
// --m and --ef_construction for a build; 0 (unset) keeps HnswParams' defaults.
void SetHnswFlags(index::HnswParams* hnsw) {
  if (absl::GetFlag(FLAGS_m) > 0) hnsw->m = absl::GetFlag(FLAGS_m);
  if (absl::GetFlag(FLAGS_ef_construction) > 0) {
    hnsw->ef_construction = absl::GetFlag(FLAGS_ef_construction);
  }
}

// Builds the graph of `in` (row i's vector at vectors + i * dim) and
// publishes it to `root`; prints the version ("N of TOTAL vectors" for a
// shard, TOTAL > 0). Returns the exit code.
int PublishBuilt(const std::string& root, snapshot::SnapshotInput in, const float* vectors,
                 size_t total, const std::string& what, const snapshot::PublishOptions& po) {
  in.graph =
      index::HnswGraphWriter(vectors, in.count, static_cast<size_t>(in.dim), in.metric, in.hnsw);
  auto v = snapshot::PublishSnapshot(root, in, po);
  if (!v.ok()) return Fail(v.status());
  std::cout << "published v" << *v << " (" << in.count;
  if (total > 0) std::cout << " of " << total;
  std::cout << " vectors" << what;
  if (in.shard.sharded()) std::cout << ", " << snapshot::DescribeShard(in.shard);
  std::cout << ", dim " << in.dim << ", " << index::MetricName(in.metric) << ") to "
            << snapshot::VersionDir(root, *v) << "\n";
  return 0;
}

// Publishes a bulk load: `in` (everything but its graph; row i's vector at
// vectors + i * dim) to `root`, or with --shard_count=S as S shard roots
// root/shard-<i>-of-<S>, each the rows whose id maps to it, built and
// published one after the other (one shard's vectors copied at a time).
// Prints one line per version published.
int PublishBulk(const std::string& root, snapshot::SnapshotInput in, const float* vectors,
                const std::string& what) {
  snapshot::PublishOptions po;
  po.make_current = absl::GetFlag(FLAGS_promote);
  const size_t dim = static_cast<size_t>(in.dim);
  const int shard_count = absl::GetFlag(FLAGS_shard_count);
  if (shard_count < 0 || static_cast<uint32_t>(shard_count) > snapshot::kMaxCollectionShards) {
    std::cerr << "--shard_count must be between 0 and " << snapshot::kMaxCollectionShards << "\n";
    return 2;
  }
  // One layout a directory: a bulk load rebuilds the collection it holds,
  // never beside it (the ingest service and the router refuse a mix).
  const std::vector<std::string> existing = snapshot::ShardRootsUnder(root);
  if (shard_count == 0 && !existing.empty()) {
    return Fail(absl::FailedPreconditionError(
        absl::StrCat(root, " holds the shard roots of a sharded collection (", existing.front(),
                     ", ...): build into one of them with --base, or --shard_count=S for all")));
  }
  if (shard_count > 0) {
    const std::string suffix = absl::StrCat("-of-", shard_count);
    for (const std::string& name : existing) {
      if (!absl::EndsWith(name, suffix)) {
        return Fail(absl::FailedPreconditionError(absl::StrCat(
            root, " holds ", name, ", a collection of another shard count than ", shard_count,
            ": a reshard writes new roots (imagesearch-snapshot reshard --root=NEW_DIR)")));
      }
    }
    if (snapshot::ReadCurrentVersion(root).ok()) {
      return Fail(absl::FailedPreconditionError(
          absl::StrCat(root,
                       " is one snapshot root: shard its rows into new roots with "
                       "imagesearch-snapshot reshard --from=",
                       root, " --root=NEW_DIR")));
    }
  }
  if (shard_count == 0) return PublishBuilt(root, std::move(in), vectors, 0, what, po);
  const auto count = static_cast<uint32_t>(shard_count);
  std::string collection = absl::GetFlag(FLAGS_collection);
  if (collection.empty()) {
    collection = std::string(absl::StripSuffix(root, "/"));
    collection = collection.substr(collection.find_last_of('/') + 1);
  }
  std::vector<std::vector<uint32_t>> rows(count);
  for (size_t r = 0; r < in.count; ++r) {
    rows[snapshot::ShardOf(in.ids[r].id, count)].push_back(static_cast<uint32_t>(r));
  }
  for (uint32_t s = 0; s < count; ++s) {
    if (rows[s].empty()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "shard ", s, " of ", count, " gets none of the ", in.count, " rows; use fewer shards")));
    }
  }
  // The per-row fields are taken out of `in`, so that what is left (dim,
  // metric, model, schema, ...: everything a shard shares) copies cheaply
  // into each shard's input.
  const std::vector<snapshot::IdRecord> ids = std::move(in.ids);
  const std::vector<std::vector<snapshot::AttrValue>> attributes = std::move(in.attributes);
  const std::vector<std::string> thumbnails = std::move(in.thumbnails);
  const snapshot::ThumbnailOf thumbnail_of = std::move(in.thumbnail_of);
  const size_t total = in.count;
  for (uint32_t s = 0; s < count; ++s) {
    const std::vector<uint32_t>& mine = rows[s];
    snapshot::SnapshotInput sub = in;
    sub.ids.clear();
    sub.attributes.clear();
    sub.thumbnails.clear();
    sub.count = mine.size();
    sub.shard = snapshot::ShardInfo{collection, s, count, snapshot::kShardHash};
    std::vector<float> shard_vectors(mine.size() * dim);
    for (size_t i = 0; i < mine.size(); ++i) {
      std::copy_n(vectors + mine[i] * dim, dim, shard_vectors.data() + i * dim);
      sub.ids.push_back(ids[mine[i]]);
      if (!attributes.empty()) sub.attributes.push_back(attributes[mine[i]]);
      if (!thumbnails.empty()) sub.thumbnails.push_back(thumbnails[mine[i]]);
    }
    if (thumbnail_of) {
      sub.thumbnail_of = [&thumbnail_of, &mine](uint64_t row) { return thumbnail_of(mine[row]); };
    }
    const std::string shard_root = absl::StrCat(root, "/", snapshot::ShardRootName(s, count));
    if (int rc = PublishBuilt(shard_root, std::move(sub), shard_vectors.data(), total, what, po);
        rc != 0) {
      return rc;
    }
  }
  return 0;
}

int BuildFromShards(const std::string& root) {
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) {
    std::cerr << "build --shards needs --model (the model.pt the shards were made with)\n";
    return 2;
  }
  auto shards = snapshot::ReadEmbeddingShards(absl::GetFlag(FLAGS_shards));
  if (!shards.ok()) return Fail(shards.status());
  const snapshot::EmbeddingShard& first = shards->front();
  auto sha = Sha256HexOfFile(model);
  if (!sha.ok()) return Fail(sha.status());
  if (*sha != first.model.sha256) {
    return Fail(absl::FailedPreconditionError(
        absl::StrCat("the shards were made with model ", first.model.name, " (sha256 ",
                     first.model.sha256.substr(0, 12), "...), not ", model, " (sha256 ",
                     sha->substr(0, 12), "...)")));
  }
  std::vector<float> vectors;
  snapshot::SnapshotInput in;
  bool any_thumbs = false;
  std::string rejects;
  for (const auto& s : *shards) any_thumbs |= s.thumbs_table != nullptr;
  // Each row's thumbnail, read from its shard's map as thumbs.bin is written.
  snapshot::ThumbnailSources thumb_at;
  for (auto& s : *shards) {
    vectors.insert(vectors.end(), s.vectors.begin(), s.vectors.end());
    for (size_t r = 0; r < s.ids.size(); ++r) {
      in.ids.push_back(std::move(s.ids[r]));
      if (any_thumbs) thumb_at.Add(s.thumbs_table.get(), static_cast<uint32_t>(r));
    }
    rejects += s.rejects_jsonl;
  }
  in.count = in.ids.size();
  if (any_thumbs) in.thumbnail_of = thumb_at.Reader();
  in.dim = first.dim;
  in.metric = first.metric;
  SetHnswFlags(&in.hnsw);
  in.hnsw.threads = absl::GetFlag(FLAGS_threads);
  in.default_ef = absl::GetFlag(FLAGS_default_ef);
  in.model_path = model;
  in.model = first.model;
  in.extra_files["rejects.jsonl"] = rejects;
  if (absl::Status st = ApplySchema(&in); !st.ok()) return Fail(st);
  const std::string what =
      absl::StrCat(" from ", shards->size(), " embedding shards, model ", in.model.name);
  return PublishBulk(root, std::move(in), vectors.data(), what);
}

// build --base: the vectors (if any) as one new segment on top of the base,
// and the ids of --remove_ids deleted. Writes what changes only.
int BuildUpdate(const std::string& root) {
  auto base = snapshot::ParseVersionName(absl::GetFlag(FLAGS_base));
  if (!base.ok()) return Fail(base.status());
  snapshot::SnapshotUpdate update;
  update.base_version = *base;
  if (!absl::GetFlag(FLAGS_remove_ids).empty()) {
    auto text = ReadFileToString(absl::GetFlag(FLAGS_remove_ids));
    if (!text.ok()) return Fail(text.status());
    for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipWhitespace())) {
      update.delete_ids.emplace_back(absl::StripAsciiWhitespace(line));
    }
  }
  std::optional<VectorSet> set;
  if (!absl::GetFlag(FLAGS_vectors).empty()) {
    auto read = ReadVectorFile(absl::GetFlag(FLAGS_vectors));
    if (!read.ok()) return Fail(read.status());
    set = std::move(*read);
    auto ids = ReadIds(absl::GetFlag(FLAGS_ids), set->count);
    if (!ids.ok()) return Fail(ids.status());
    auto metric = index::ParseMetric(absl::GetFlag(FLAGS_metric));
    if (!metric.ok()) return Fail(metric.status());
    snapshot::SnapshotInput& in = update.added;
    in.count = set->count;
    in.dim = static_cast<int>(set->dim);
    in.metric = *metric;
    in.ids = std::move(*ids);
    SetHnswFlags(&in.hnsw);
    in.hnsw.threads = absl::GetFlag(FLAGS_threads);
    in.graph = index::HnswGraphWriter(set->data.data(), in.count, set->dim, in.metric, in.hnsw);
    in.default_ef = absl::GetFlag(FLAGS_default_ef);
    if (absl::Status st = ApplySchema(&in); !st.ok()) return Fail(st);
  } else if (update.delete_ids.empty()) {
    std::cerr << "build --base needs --vectors, --remove_ids or both\n";
    return 2;
  }
  snapshot::PublishOptions po;
  po.make_current = absl::GetFlag(FLAGS_promote);
  auto r = snapshot::PublishUpdate(root, update, po);
  if (!r.ok()) return Fail(r.status());
  std::cout << "published v" << r->version << " on v" << *base << ": "
            << (r->segment.empty()
                    ? std::string("no new segment")
                    : absl::StrCat("segment ", r->segment, " of ", update.added.count, " vectors"))
            << ", " << r->replaced << " replaced, " << r->deleted << " deleted, " << r->unknown_ids
            << " ids to delete not found; " << r->bytes_written << " bytes written\n";
  return 0;
}

// reshard: the live rows of a collection's CURRENT versions (its shard roots
// under --from, or one unsharded root) published as --shard_count new shard
// roots under --root (0: one unsharded root), one new shard at a time: the
// sources are mapped, and only that shard's vectors are copied into memory.
// Ids, uris, attributes, thumbnails and the model go along; the graphs are
// built anew. Writes new roots only: nothing serves a mix of two layouts.
int Reshard(const std::string& root) {
  const std::string from = std::string(absl::StripSuffix(absl::GetFlag(FLAGS_from), "/"));
  const int shard_count = absl::GetFlag(FLAGS_shard_count);
  if (from.empty()) {
    std::cerr << "reshard needs --from (the collection's directory of shard roots, or one root)\n";
    return 2;
  }
  if (shard_count < 0 || static_cast<uint32_t>(shard_count) > snapshot::kMaxCollectionShards) {
    std::cerr << "--shard_count must be between 0 and " << snapshot::kMaxCollectionShards << "\n";
    return 2;
  }
  if (!snapshot::ShardRootsUnder(root).empty() || snapshot::ReadCurrentVersion(root).ok()) {
    return Fail(absl::FailedPreconditionError(
        absl::StrCat(root,
                     " already holds a collection: a reshard writes new roots, so that nothing "
                     "serves a mix of two layouts")));
  }
  std::vector<std::string> roots;
  for (const std::string& name : snapshot::ShardRootsUnder(from))
    roots.push_back(from + "/" + name);
  const bool sharded = !roots.empty();
  if (!sharded) roots.push_back(from);
  std::vector<std::shared_ptr<const snapshot::Snapshot>> sources;
  std::vector<bool> seen(roots.size(), false);
  for (const std::string& r : roots) {
    auto v = snapshot::ReadCurrentVersion(r);
    if (!v.ok()) return Fail(v.status());
    auto snap = snapshot::Snapshot::Open(r, *v, snapshot::VerifyMode::kSizes);
    if (!snap.ok()) return Fail(snap.status());
    const snapshot::Manifest& m = (*snap)->manifest();
    if (!sharded && m.shard.sharded()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat(r, " is ", snapshot::DescribeShard(m.shard),
                       ": pass the collection's directory, which holds all its shard roots")));
    }
    if (sharded) {
      // One layout, every shard once: shard-<i>-of-<S> roots of one S.
      if (!m.shard.sharded() || m.shard.count != roots.size() || seen[m.shard.index]) {
        return Fail(absl::FailedPreconditionError(
            absl::StrCat(from, " holds ", roots.size(), " shard roots, and ", r, " is ",
                         snapshot::DescribeShard(m.shard),
                         ": a collection's directory holds the S roots of "
                         "one layout (remove a half-done reshard's roots first)")));
      }
      seen[m.shard.index] = true;
    }
    if (!sources.empty()) {
      const snapshot::Manifest& f = sources.front()->manifest();
      if (m.dim != f.dim || m.metric != f.metric || m.model.sha256 != f.model.sha256 ||
          m.shard.collection != f.shard.collection) {
        return Fail(absl::FailedPreconditionError(
            absl::StrCat(r, " is not of the collection ", roots.front(),
                         " is of (its dimension, metric, model or name differ)")));
      }
    }
    sources.push_back(*std::move(snap));
  }
  const snapshot::Manifest& first = sources.front()->manifest();
  std::string collection = absl::GetFlag(FLAGS_collection);
  if (collection.empty()) collection = first.shard.collection;
  if (collection.empty()) collection = from.substr(from.find_last_of('/') + 1);
  // Every typed field of every source segment (a shard's ingest service may
  // have typed more fields than another's), each with one type.
  std::vector<snapshot::FieldSpec> schema;
  bool with_thumbs = false;
  for (const auto& snap : sources) {
    with_thumbs = with_thumbs || snapshot::HasThumbnails(*snap);
    for (const snapshot::SegmentRef& ref : snap->segments()) {
      if (ref.segment->attributes() == nullptr) continue;
      for (const snapshot::FieldSpec& f : ref.segment->attributes()->fields()) {
        auto same = std::find_if(schema.begin(), schema.end(),
                                 [&](const snapshot::FieldSpec& g) { return g.name == f.name; });
        if (same == schema.end()) {
          schema.push_back(f);
        } else if (same->type != f.type) {
          return Fail(absl::FailedPreconditionError(
              absl::StrCat("field '", f.name, "' is ", snapshot::FieldTypeName(same->type),
                           " in one segment and ", snapshot::FieldTypeName(f.type), " in another (",
                           snap->dir(), "): merge or retype the collection first")));
        }
      }
    }
  }
  const auto count = static_cast<uint32_t>(shard_count);
  const uint32_t targets = std::max<uint32_t>(count, 1);
  auto target_of = [count](absl::string_view id) {
    return count == 0 ? 0 : snapshot::ShardOf(id, count);
  };
  // Every new shard gets rows, or nothing is written.
  std::vector<uint64_t> per_target(targets, 0);
  for (const auto& snap : sources) {
    snapshot::LiveRows none;  // Counted, not kept.
    absl::Status st = snapshot::AppendLiveRows(
        *snap,
        [&](absl::string_view id) {
          ++per_target[target_of(id)];
          return false;
        },
        &none);
    if (!st.ok()) return Fail(st);
  }
  for (uint32_t s = 0; s < targets; ++s) {
    if (per_target[s] == 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("shard ", s, " of ", count,
                       " would get none of the collection's rows; use fewer shards "
                       "(nothing was written)")));
    }
  }
  snapshot::PublishOptions po;
  po.make_current = absl::GetFlag(FLAGS_promote);
  const std::string what =
      absl::StrCat(" from ", sources.size(), sharded ? " shard roots" : " root", " of ", from);
  for (uint32_t s = 0; s < targets; ++s) {
    snapshot::LiveRows rows;
    rows.input.schema = schema;
    rows.with_thumbs = with_thumbs;
    for (const auto& snap : sources) {
      absl::Status st = snapshot::AppendLiveRows(
          *snap, [&](absl::string_view id) { return target_of(id) == s; }, &rows);
      if (!st.ok()) return Fail(st);
    }
    snapshot::SnapshotInput in = std::move(rows.input);
    in.dim = first.dim;
    in.metric = first.metric;
    in.default_ef = first.default_ef;
    if (first.hnsw_m > 0) in.hnsw.m = first.hnsw_m;
    if (first.hnsw_ef_construction > 0) in.hnsw.ef_construction = first.hnsw_ef_construction;
    SetHnswFlags(&in.hnsw);
    in.hnsw.threads = absl::GetFlag(FLAGS_threads);
    if (!first.model.sha256.empty()) {
      in.model_path = sources.front()->model_path();
      in.model = first.model;
    }
    if (rows.with_thumbs) in.thumbnail_of = rows.thumbs.Reader();
    if (count > 0) in.shard = snapshot::ShardInfo{collection, s, count, snapshot::kShardHash};
    const std::string target =
        count == 0 ? root : absl::StrCat(root, "/", snapshot::ShardRootName(s, count));
    if (int rc = PublishBuilt(target, std::move(in), rows.vectors.data(), 0, what, po); rc != 0) {
      return rc;
    }
  }
  return 0;
}

int Build(const std::string& root) {
  if (!absl::GetFlag(FLAGS_shards).empty()) {
    if (!absl::GetFlag(FLAGS_base).empty() || !absl::GetFlag(FLAGS_remove_ids).empty()) {
      std::cerr << "build --shards publishes a bulk load from scratch (one big segment); "
                   "--base and --remove_ids do not apply to it\n";
      return 2;
    }
    return BuildFromShards(root);
  }
  if (!absl::GetFlag(FLAGS_base).empty()) {
    if (absl::GetFlag(FLAGS_shard_count) != 0) {
      std::cerr << "build --base updates one root: run it on a shard's root "
                   "(--root=<collection>/shard-<i>-of-<S>) with that shard's rows, or send the "
                   "rows through the ingest service, which routes each to its shard\n";
      return 2;
    }
    return BuildUpdate(root);
  }
  if (!absl::GetFlag(FLAGS_remove_ids).empty()) {
    std::cerr << "--remove_ids needs --base\n";
    return 2;
  }
  auto set = ReadVectorFile(absl::GetFlag(FLAGS_vectors));
  if (!set.ok()) return Fail(set.status());
  auto ids = ReadIds(absl::GetFlag(FLAGS_ids), set->count);
  if (!ids.ok()) return Fail(ids.status());
  auto metric = index::ParseMetric(absl::GetFlag(FLAGS_metric));
  if (!metric.ok()) return Fail(metric.status());
  snapshot::SnapshotInput in;
  in.count = set->count;
  in.dim = static_cast<int>(set->dim);
  in.metric = *metric;
  in.ids = std::move(*ids);
  SetHnswFlags(&in.hnsw);
  in.hnsw.threads = absl::GetFlag(FLAGS_threads);
  in.default_ef = absl::GetFlag(FLAGS_default_ef);
  if (absl::Status st = ApplySchema(&in); !st.ok()) return Fail(st);
  return PublishBulk(root, std::move(in), set->data.data(), "");
}

int List(const std::string& root) {
  auto versions = snapshot::ListVersions(root);
  if (!versions.ok()) return Fail(versions.status());
  auto current = snapshot::ReadCurrentVersion(root);
  // A collection's directory of shard roots: say so, not an empty list.
  if (versions->empty() && absl::IsNotFound(current.status()) &&
      !snapshot::ShardRootsUnder(root).empty()) {
    return Fail(current.status());
  }
  for (uint64_t v : *versions) {
    auto text = ReadFileToString(snapshot::VersionDir(root, v) + "/MANIFEST.json");
    auto m = text.ok() ? snapshot::ParseManifest(*text)
                       : absl::StatusOr<snapshot::Manifest>(text.status());
    std::cout << (current.ok() && *current == v ? "* " : "  ") << "v" << v;
    if (m.ok()) {
      uint64_t deleted = 0;
      for (const auto& seg : m->segments) deleted += seg.deleted;
      std::cout << "  " << m->count << " vectors  dim " << m->dim << "  "
                << index::MetricName(m->metric) << "  " << m->created_at << "  model "
                << (m->model.name.empty() ? "-" : m->model.name) << "  segments "
                << std::max<size_t>(1, m->segments.size()) << "  deleted " << deleted;
      if (m->shard.sharded()) std::cout << "  " << snapshot::DescribeShard(m->shard);
    } else {
      std::cout << "  (unreadable: " << m.status().message() << ")";
    }
    std::cout << "\n";
  }
  return 0;
}

int Run(const std::vector<char*>& args) {
  if (args.size() < 2) {
    std::cerr << "usage: imagesearch-snapshot "
                 "build|reshard|list|current|set-current|rollback|gc|verify|merge|export|synth "
                 "[flags]; see --help\n";
    return 2;
  }
  const std::string cmd = args[1];
  const std::string root = absl::GetFlag(FLAGS_root);
  if (cmd == "synth") {
    VectorSet set;
    set.count = static_cast<size_t>(absl::GetFlag(FLAGS_count));
    set.dim = static_cast<size_t>(absl::GetFlag(FLAGS_dim));
    const auto seed = static_cast<uint32_t>(absl::GetFlag(FLAGS_seed));
    const int latent = absl::GetFlag(FLAGS_latent);
    if (latent < 0 || static_cast<size_t>(latent) > set.dim) {
      std::cerr << "--latent is 0 to --dim (" << set.dim << "), not " << latent << "\n";
      return 2;
    }
    set.data = latent == 0 ? index::ClusteredVectors(set.count, set.dim, 100, seed)
                           : index::LowRankVectors(set.count, set.dim, static_cast<size_t>(latent),
                                                   1000, seed);
    absl::Status s = WriteFileDurably(absl::GetFlag(FLAGS_out), EncodeNpy(set));
    if (!s.ok()) return Fail(s);
    std::cout << "wrote " << set.count << " x " << set.dim << " to " << absl::GetFlag(FLAGS_out)
              << "\n";
    return 0;
  }
  if (root.empty()) {
    std::cerr << "--root is required\n";
    return 2;
  }
  if (cmd == "build") return Build(root);
  if (cmd == "reshard") return Reshard(root);
  if (cmd == "list") return List(root);
  if (cmd == "current") {
    auto v = snapshot::ReadCurrentVersion(root);
    if (!v.ok()) return Fail(v.status());
    std::cout << "v" << *v << "\n";
    return 0;
  }
  if (cmd == "set-current" || cmd == "verify") {
    uint64_t version = 0;
    if (!absl::GetFlag(FLAGS_version).empty()) {
      auto v = snapshot::ParseVersionName(absl::GetFlag(FLAGS_version));
      if (!v.ok()) return Fail(v.status());
      version = *v;
    } else if (cmd == "verify") {
      auto v = snapshot::ReadCurrentVersion(root);
      if (!v.ok()) return Fail(v.status());
      version = *v;
    } else {
      std::cerr << "--version is required\n";
      return 2;
    }
    if (cmd == "set-current") {
      absl::Status s = snapshot::SetCurrentVersion(root, version);
      if (!s.ok()) return Fail(s);
      std::cout << "CURRENT -> v" << version << "\n";
      return 0;
    }
    auto snap = snapshot::Snapshot::Open(root, version, snapshot::VerifyMode::kChecksums);
    if (!snap.ok()) return Fail(snap.status());
    size_t files = (*snap)->manifest().files.size();
    for (const auto& seg : (*snap)->segments()) {
      if (!seg.name.empty()) files += seg.segment->manifest().files.size();
    }
    std::cout << "v" << version << " OK: " << (*snap)->segments().size() << " segment(s), " << files
              << " files match their manifests\n";
    return 0;
  }
  if (cmd == "merge") {
    snapshot::MergeRequest req;
    req.threads = absl::GetFlag(FLAGS_threads);
    req.extend = absl::GetFlag(FLAGS_extend) && !absl::GetFlag(FLAGS_all);
    req.m = std::max(0, absl::GetFlag(FLAGS_m));
    req.ef_construction = std::max(0, absl::GetFlag(FLAGS_ef_construction));
    req.policy = snapshot::MergePolicyFromFlags();
    if (absl::GetFlag(FLAGS_all)) {
      auto v = snapshot::ReadCurrentVersion(root);
      if (!v.ok()) return Fail(v.status());
      auto snap = snapshot::Snapshot::Open(root, *v, snapshot::VerifyMode::kSizes);
      if (!snap.ok()) return Fail(snap.status());
      for (const auto& ref : (*snap)->segments()) {
        if (!ref.name.empty()) req.segments.push_back(ref.name);
      }
    } else if (!absl::GetFlag(FLAGS_segments).empty()) {
      req.segments = absl::StrSplit(absl::GetFlag(FLAGS_segments), ',', absl::SkipEmpty());
    }
    snapshot::PublishOptions po;
    po.make_current = absl::GetFlag(FLAGS_promote);
    auto r = snapshot::MergeSegments(root, req, po);
    if (!r.ok()) return Fail(r.status());
    if (r->version == 0) {
      std::cout << "nothing to merge\n";
      return 0;
    }
    std::cout << "published v" << r->version << ": merged " << r->merged.size()
              << " segment(s) into " << (r->segment.empty() ? "none" : r->segment) << " ("
              << r->rows << " rows; " << r->dropped << " deleted rows dropped, "
              << r->carried_deletes << " deleted while merging";
    if (!r->extended.empty()) {
      std::cout << "; extended " << r->extended << "'s graph";
      if (r->kept_deleted > 0) std::cout << ", its " << r->kept_deleted << " deleted rows kept";
    }
    std::cout << ")\n";
    return 0;
  }
  if (cmd == "export") {
    const std::string out = absl::GetFlag(FLAGS_out);
    if (out.empty()) {
      std::cerr << "export needs --out (a directory that does not exist yet)\n";
      return 2;
    }
    absl::StatusOr<uint64_t> v = absl::GetFlag(FLAGS_version).empty()
                                     ? snapshot::ReadCurrentVersion(root)
                                     : snapshot::ParseVersionName(absl::GetFlag(FLAGS_version));
    if (!v.ok()) return Fail(v.status());
    absl::Status s = snapshot::ExportVersion(root, *v, out);
    if (!s.ok()) return Fail(s);
    std::cout << "exported v" << *v << " to " << out
              << " (self-contained: its segments are inside)\n";
    return 0;
  }
  if (cmd == "rollback") {
    auto v = snapshot::RollBack(root);
    if (!v.ok()) return Fail(v.status());
    std::cout << "CURRENT -> v" << *v << "\n";
    return 0;
  }
  if (cmd == "gc") {
    if (absl::GetFlag(FLAGS_keep) < 0 || absl::GetFlag(FLAGS_grace) < absl::ZeroDuration()) {
      std::cerr << "--keep and --grace must not be negative\n";
      return 2;
    }
    snapshot::GcOptions options;
    options.keep = static_cast<size_t>(absl::GetFlag(FLAGS_keep));
    options.grace = absl::GetFlag(FLAGS_grace);
    auto report = snapshot::GarbageCollect(root, options);
    if (!report.ok()) return Fail(report.status());
    std::cout << "removed " << report->removed.size() << " version(s)";
    for (uint64_t v : report->removed) std::cout << " v" << v;
    std::cout << " and " << report->removed_segments.size() << " segment(s)";
    for (const auto& name : report->removed_segments) std::cout << " " << name;
    std::cout << "\n";
    for (const auto& [v, until] : report->held) {
      std::cout << "kept v" << v << ": within the grace until "
                << absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", until, absl::UTCTimeZone()) << "\n";
    }
    return 0;
  }
  std::cerr << "unknown command '" << cmd << "'\n";
  return 2;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  std::vector<char*> args = imagesearch::InitBinary(
      "Build and manage imagesearch snapshots.\n"
      "  imagesearch-snapshot build|list|current|set-current|rollback|gc|verify|merge|export|synth "
      "--root=DIR ...\n"
      "See tools/make_snapshot/main.cc.",
      argc, argv, FLAGS_log_format);
  return imagesearch::Run(args);
}
