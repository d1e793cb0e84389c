#include "services/indexer/indexer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
#include "libs/model/model_bundle.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "services/indexer/bounded_queue.h"
#include <nlohmann/json.hpp>

namespace imagesearch::indexer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Work {
  std::string id;
  std::string path;
  std::string attributes_json;
};

struct Decoded {
  Work work;
  absl::StatusOr<image::DecodedImage> image;
  std::vector<snapshot::AttrValue> typed;  // With a schema: the typed attributes.
};

struct Reject {
  std::string id, path, reason;
};

bool IsImageExtension(const fs::path& p) {
  std::string ext = absl::AsciiStrToLower(p.extension().string());
  static const char* kExts[] = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif",
                                ".tiff", ".bmp", ".avif", ".heic", ".jxl"};
  for (const char* e : kExts) {
    if (ext == e) return true;
  }
  return false;
}

// Shared progress counters, read by the reporter thread.
struct Progress {
  std::atomic<uint64_t> listed{0};
  std::atomic<uint64_t> done{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<bool> listing_done{false};
};

class Reporter {
 public:
  Reporter(const std::string& mode, const Progress* p) : p_(p) {
    bool tty = ::isatty(STDERR_FILENO) != 0;
    bar_ = mode == "bar" || (mode == "auto" && tty);
    enabled_ = mode != "none";
    if (enabled_) thread_ = std::thread([this] { Loop(); });
  }
  ~Reporter() { Stop(); }
  void Stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    if (bar_) std::fprintf(stderr, "%s\n", Line().c_str());
  }

 private:
  std::string Line() const {
    const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
    const uint64_t done = p_->done, listed = p_->listed;
    const double rate = secs > 0 ? done / secs : 0;
    std::string total = p_->listing_done ? std::to_string(listed) : absl::StrCat(listed, "+");
    std::string eta = "?";
    if (p_->listing_done && rate > 0) {
      eta = absl::StrFormat("%.0fs", (listed - done) / rate);
    }
    if (!bar_) {
      return absl::StrFormat("indexer: %d/%s images, %d rejected, %.1f img/s, eta %s", done, total,
                             p_->rejected.load(), rate, eta);
    }
    const int width = 30;
    const double frac = p_->listing_done && listed > 0 ? static_cast<double>(done) / listed : 0;
    const int fill = static_cast<int>(frac * width);
    return absl::StrFormat("\r[%s%s] %d/%s  %.1f img/s  eta %s  rejected %d   ",
                           std::string(fill, '#'), std::string(width - fill, '.'), done, total,
                           rate, eta, p_->rejected.load());
  }
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    const auto period = bar_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(5000);
    while (!cv_.wait_for(lock, period, [this] { return stop_; })) {
      const std::string line = Line();
      std::fprintf(stderr, bar_ ? "%s" : "%s\n", line.c_str());
      std::fflush(stderr);
    }
  }

  const Progress* p_;
  const Clock::time_point start_ = Clock::now();
  bool bar_ = false, enabled_ = false, stop_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

// Parses one JSON manifest line into `w`; relative paths resolve against `dir`.
absl::Status ParseManifestLine(absl::string_view line, const fs::path& dir, Work* w) {
  auto j = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  auto path = j.find("path");
  if (path == j.end() || !path->is_string() || path->get<std::string>().empty()) {
    return absl::InvalidArgumentError("missing string field \"path\"");
  }
  fs::path p = path->get<std::string>();
  w->path = p.is_absolute() ? p.string() : (dir / p).string();
  auto id = j.find("id");
  if (id != j.end() && !id->is_string()) return absl::InvalidArgumentError("\"id\" must be a string");
  w->id = id != j.end() ? id->get<std::string>() : path->get<std::string>();
  auto attrs = j.find("attributes");
  if (attrs != j.end() && !attrs->is_null()) {
    if (!attrs->is_object()) return absl::InvalidArgumentError("\"attributes\" must be an object");
    w->attributes_json = attrs->dump();
  }
  return absl::OkStatus();
}

// Reads one entry per non-empty line of `in`: a JSON manifest object, or,
// when `plain_paths`, a bare path (its own id). `where(n)` names line n in
// errors.
template <typename Where, typename Push>
absl::Status ListLines(std::istream& in, const fs::path& dir, bool plain_paths, Where where,
                       Push push) {
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty()) continue;
    Work w;
    if (plain_paths && l.front() != '{') {
      w.path = std::string(l);
      w.id = w.path;
    } else if (absl::Status s = ParseManifestLine(l, dir, &w); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where(n), ": ", s.message()));
    }
    push(std::move(w));
  }
  return absl::OkStatus();
}

// Streams the input into `out`; returns an error for unusable input (bad
// manifest line, missing directory). Closes nothing; the caller does.
absl::Status ListInput(const IndexerOptions& o, BoundedQueue<Work>* out, Progress* progress) {
  uint64_t position = 0;
  auto push = [&](Work w) {
    // This worker's share of the input, by list position (all of it for 0/1).
    if (position++ % static_cast<uint64_t>(o.shard.count) != static_cast<uint64_t>(o.shard.index)) {
      return;
    }
    progress->listed++;
    out->Push(std::move(w));
  };
  if (o.input == "-") {
    std::istream& in = o.stdin_stream != nullptr ? *o.stdin_stream : std::cin;
    return ListLines(
        in, fs::current_path(), /*plain_paths=*/true,
        [](size_t n) { return absl::StrCat("stdin line ", n); }, push);
  }
  std::error_code ec;
  if (fs::is_directory(o.input, ec)) {
    std::vector<fs::path> files;
    for (auto it = fs::recursive_directory_iterator(
             o.input, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file() && IsImageExtension(it->path())) files.push_back(it->path());
    }
    if (ec) return absl::InternalError(absl::StrCat("walking ", o.input, ": ", ec.message()));
    std::sort(files.begin(), files.end());  // Stable row order, reproducible snapshots.
    for (const auto& f : files) {
      Work w;
      w.path = f.string();
      w.id = fs::relative(f, o.input).generic_string();
      push(std::move(w));
    }
    return absl::OkStatus();
  }
  if (absl::EndsWith(o.input, ".jsonl")) {
    std::ifstream in(o.input);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open manifest ", o.input));
    return ListLines(
        in, fs::path(o.input).parent_path(), /*plain_paths=*/false,
        [&o](size_t n) { return absl::StrCat(o.input, ":", n); }, push);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--input '", o.input, "' is neither a directory, a .jsonl manifest, nor '-' (stdin)"));
}

// What the manifest (or a shard) records about the model; sha256 and file
// are the caller's.
snapshot::ModelIdentity IdentityOf(const encoder::ModelInfo& info) {
  snapshot::ModelIdentity id;
  id.name = info.name;
  id.version = info.version;
  id.image_size = info.image_size;
  id.has_text = info.text.has_value();
  nlohmann::json j = {{"resize", info.resize},       {"crop", info.crop},
                      {"interpolation", info.interpolation}, {"image_size", info.image_size},
                      {"mean", info.mean},           {"std", info.std}};
  id.preprocessing_json = j.dump();
  return id;
}

}  // namespace

absl::StatusOr<IndexReport> RunIndexer(const IndexerOptions& o) {
  const auto start = Clock::now();
  if (o.root.empty() && o.embeddings_out.empty()) {
    return absl::InvalidArgumentError("--root (or --embeddings_out) is required");
  }
  if (o.model_path.empty()) return absl::InvalidArgumentError("--model is required");
  if (o.batch_size < 1) return absl::InvalidArgumentError("--batch must be at least 1");
  model::ModelBundleOptions mo;
  mo.encoder.intra_op_threads = o.encoder_threads;
  mo.max_pixels = o.max_pixels;
  ASSIGN_OR_RETURN(auto bundle, model::ModelBundle::Load(o.model_path, mo));
  const encoder::ModelInfo& info = bundle->info();
  const size_t dim = static_cast<size_t>(info.embed_dim);
  ASSIGN_OR_RETURN(index::Metric metric, index::ParseMetric(info.metric));
  ASSIGN_OR_RETURN(std::string model_sha, Sha256HexOfFile(o.model_path));

  // The base snapshot, for incremental builds: same model, or refuse.
  std::shared_ptr<const snapshot::Snapshot> base;
  if (o.base_version != 0) {
    ASSIGN_OR_RETURN(base, snapshot::Snapshot::Open(o.root, o.base_version,
                                                    snapshot::VerifyMode::kChecksums));
    if (base->manifest().model.sha256 != model_sha) {
      return absl::FailedPreconditionError(absl::StrCat(
          "base v", o.base_version, " was built with model '", base->manifest().model.name,
          "' (sha256 ", base->manifest().model.sha256.substr(0, 12), "...), not ", o.model_path,
          " (sha256 ", model_sha.substr(0, 12),
          "...); its vectors are in another embedding space. Build from scratch instead."));
    }
  } else if (!o.remove_ids.empty()) {
    return absl::InvalidArgumentError("--remove_ids needs --base");
  }
  const bool to_shard = !o.embeddings_out.empty();
  if (to_shard && o.base_version != 0) {
    return absl::InvalidArgumentError(
        "--embeddings_out writes one shard of a new build; it cannot be combined with --base");
  }
  if (o.shard.count < 1 || o.shard.index < 0 || o.shard.index >= o.shard.count) {
    return absl::InvalidArgumentError("--shard must be i/n with 0 <= i < n");
  }
  if (!to_shard && o.shard.count != 1) {
    return absl::InvalidArgumentError(
        "--shard needs --embeddings_out: each worker writes a shard, and imagesearch-snapshot build "
        "--shards publishes them as one snapshot");
  }

  int decode_threads = o.decode_threads;
  if (decode_threads <= 0) decode_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  Progress progress;
  BoundedQueue<Work> work(static_cast<size_t>(o.batch_size) * 4);
  BoundedQueue<Decoded> decoded(static_cast<size_t>(o.batch_size) * 2);
  absl::Status list_status;
  Reporter reporter(o.progress, &progress);

  std::thread lister([&] {
    list_status = ListInput(o, &work, &progress);
    progress.listing_done = true;
    work.Close();
  });
  std::vector<std::thread> decoders;
  std::atomic<int> decoders_left{decode_threads};
  for (int t = 0; t < decode_threads; ++t) {
    decoders.emplace_back([&] {
      while (auto w = work.Pop()) {
        Decoded d{std::move(*w), absl::InternalError("unset"), {}};
        d.image = bundle->PreprocessFileWithThumbnail(d.work.path,
                                                      o.thumbnails ? &o.thumbnail : nullptr);
        decoded.Push(std::move(d));
      }
      if (--decoders_left == 0) decoded.Close();
    });
  }

  // HNSW insert stage: a thread inserts each encoded batch into the graph
  // while the encoder works on the next one.
  ASSIGN_OR_RETURN(auto builder, index::HnswStreamBuilder::Create(dim, metric, o.hnsw, 4096));
  struct Encoded {
    std::vector<float> vectors;
    uint64_t first_row;
  };
  BoundedQueue<Encoded> encoded(4);
  absl::Status insert_status;
  std::vector<float> shard_vectors;  // With embeddings_out: the rows, instead of a graph.
  std::thread inserter([&] {
    while (auto e = encoded.Pop()) {
      if (!insert_status.ok()) continue;  // Drain so the encoder never blocks.
      if (to_shard) {
        shard_vectors.insert(shard_vectors.end(), e->vectors.begin(), e->vectors.end());
      } else {
        insert_status = builder->Add(e->vectors.data(), e->vectors.size() / dim, e->first_row);
      }
    }
  });

  // Encoder stage (this thread): batches decoded images, encodes, collects rows.
  std::vector<snapshot::IdRecord> ids;
  std::vector<std::string> thumbs;  // Row-aligned with ids when o.thumbnails.
  std::vector<std::vector<snapshot::AttrValue>> typed;  // Row-aligned with ids when o.schema.
  std::vector<Reject> rejects;
  std::unordered_set<std::string> seen;
  absl::Status encode_status;
  double encode_seconds = 0;
  std::vector<Decoded> batch;
  auto flush = [&] {
    if (batch.empty() || !encode_status.ok()) {
      batch.clear();
      return;
    }
    std::vector<const image::RgbImage*> ptrs;
    for (const auto& d : batch) ptrs.push_back(&d.image->model_input);
    const auto t0 = Clock::now();
    auto out = bundle->EncodeImages(ptrs);
    encode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    if (!out.ok()) {
      encode_status = out.status();
    } else {
      encoded.Push(Encoded{std::move(*out), ids.size()});
      for (auto& d : batch) {
        ids.push_back({std::move(d.work.id), std::move(d.work.path), std::move(d.work.attributes_json)});
        if (o.thumbnails) thumbs.push_back(std::move(d.image->thumbnail_jpeg));
        if (!o.schema.empty()) typed.push_back(std::move(d.typed));
      }
    }
    progress.done += batch.size();
    batch.clear();
  };
  while (auto d = decoded.Pop()) {
    if (!d->image.ok()) {
      rejects.push_back({d->work.id, d->work.path, std::string(d->image.status().message())});
      progress.rejected++;
      progress.done++;
      continue;
    }
    if (d->work.id.empty() || !seen.insert(d->work.id).second) {
      rejects.push_back({d->work.id, d->work.path,
                         d->work.id.empty() ? "empty id" : "duplicate id in the input"});
      progress.rejected++;
      progress.done++;
      continue;
    }
    if (!o.schema.empty()) {
      auto t = snapshot::TypedAttributes(o.schema, d->work.attributes_json);
      if (!t.ok()) {
        rejects.push_back({d->work.id, d->work.path, std::string(t.status().message())});
        progress.rejected++;
        progress.done++;
        continue;
      }
      d->typed = *std::move(t);
    }
    batch.push_back(std::move(*d));
    if (batch.size() >= static_cast<size_t>(o.batch_size)) flush();
  }
  flush();
  encoded.Close();
  inserter.join();
  lister.join();
  for (auto& t : decoders) t.join();
  reporter.Stop();
  RETURN_IF_ERROR(list_status);
  RETURN_IF_ERROR(encode_status);
  RETURN_IF_ERROR(insert_status);

  IndexReport report;
  report.listed = progress.listed;
  report.indexed = ids.size();
  report.rejected = rejects.size();
  report.encode_seconds = encode_seconds;

  if (report.listed > 0 &&
      static_cast<double>(report.rejected) / static_cast<double>(report.listed) > o.max_reject_ratio) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%d of %d images (%.1f%%) were rejected, more than --max_reject_ratio=%g; nothing was "
        "published. First: %s: %s",
        report.rejected, report.listed, 100.0 * report.rejected / report.listed,
        o.max_reject_ratio, rejects[0].path, rejects[0].reason));
  }

  // rejects.jsonl: every image skipped, with its reason (base rows included).
  auto rejects_text = [&rejects] {
    std::string text;
    for (const auto& r : rejects) {
      text += nlohmann::json{{"id", r.id}, {"path", r.path}, {"reason", r.reason}}.dump();
      text += "\n";
    }
    return text;
  };
  // Merge with the base: base rows that were neither removed nor re-supplied
  // follow the new rows; their stored vectors go in as they are (no re-encode).
  if (base) {
    std::unordered_set<std::string> remove(o.remove_ids.begin(), o.remove_ids.end());
    for (const auto& id : o.remove_ids) {
      if (!base->ids().Find(id).has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--remove_ids: id '", id, "' is not in base v", o.base_version));
      }
    }
    std::vector<float> chunk;
    uint64_t chunk_first = ids.size();
    auto flush_chunk = [&]() -> absl::Status {
      if (chunk.empty()) return absl::OkStatus();
      absl::Status s = builder->Add(chunk.data(), chunk.size() / dim, chunk_first);
      chunk_first += chunk.size() / dim;
      chunk.clear();
      return s;
    };
    for (uint64_t r = 0; r < base->manifest().count; ++r) {
      ASSIGN_OR_RETURN(snapshot::IdView v, base->ids().Get(r));
      const std::string id(v.id);
      if (remove.count(id)) {
        report.removed++;
        continue;
      }
      if (seen.count(id)) continue;  // Replaced by a newly encoded image.
      std::vector<snapshot::AttrValue> row_typed;
      if (!o.schema.empty()) {
        // Base rows are typed under this build's schema, from their stored attributes.
        auto t = snapshot::TypedAttributes(o.schema, v.attributes_json);
        if (!t.ok()) {
          rejects.push_back({id, std::string(v.uri),
                             absl::StrCat("kept from base v", o.base_version, ": ", t.status().message())});
          report.rejected++;
          continue;
        }
        row_typed = *std::move(t);
      }
      const float* vec = base->searcher().Vector(static_cast<uint32_t>(r));
      chunk.insert(chunk.end(), vec, vec + dim);
      ids.push_back({id, std::string(v.uri), std::string(v.attributes_json)});
      if (o.thumbnails) {
        // Carried over as stored; a base without thumbnails leaves the row without one.
        absl::string_view thumb;
        if (base->thumbs() != nullptr) {
          ASSIGN_OR_RETURN(thumb, base->thumbs()->Get(r));
        }
        thumbs.emplace_back(thumb);
      }
      if (!o.schema.empty()) typed.push_back(std::move(row_typed));
      report.kept_from_base++;
      if (chunk.size() >= 1024 * dim) RETURN_IF_ERROR(flush_chunk());
    }
    RETURN_IF_ERROR(flush_chunk());
  }
  report.total = ids.size();
  if (o.thumbnails && thumbs.size() != ids.size()) {
    return absl::InternalError(absl::StrCat(thumbs.size(), " thumbnails for ", ids.size(), " rows"));
  }
  if (to_shard && report.listed == 0) {
    // More workers than items: this worker's share is empty, which is fine.
  } else if (report.indexed == 0 && !base) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no image was indexed (", report.listed, " listed, ", report.rejected,
        " rejected); nothing was published",
        rejects.empty() ? std::string() : absl::StrCat(". First: ", rejects[0].path, ": ", rejects[0].reason)));
  }
  if (to_shard) {
    snapshot::EmbeddingShard shard;
    shard.spec = o.shard;
    shard.model = IdentityOf(info);
    shard.model.sha256 = model_sha;
    shard.dim = static_cast<int>(dim);
    shard.metric = metric;
    shard.listed = report.listed;
    shard.vectors = std::move(shard_vectors);
    shard.ids = std::move(ids);
    if (o.thumbnails) shard.thumbs = std::move(thumbs);
    shard.rejects_jsonl = rejects_text();
    if (!o.dry_run) {
      ASSIGN_OR_RETURN(report.shard_dir, snapshot::WriteEmbeddingShard(o.embeddings_out, shard));
    }
    report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return report;
  }
  if (report.total == 0) {
    return absl::FailedPreconditionError("the new snapshot would be empty; nothing was published");
  }

  if (builder->size() != ids.size()) {
    return absl::InternalError(absl::StrCat("graph holds ", builder->size(), " vectors but ",
                                            ids.size(), " rows were collected"));
  }
  snapshot::SnapshotInput in;
  in.count = ids.size();
  in.dim = static_cast<int>(dim);
  in.metric = metric;
  in.ids = std::move(ids);
  in.hnsw = o.hnsw;
  in.default_ef = o.default_ef;
  in.write_graph = [&builder](const std::string& graph, const std::string& offsets) {
    return builder->Save(graph, offsets);
  };
  in.model_path = o.model_path;
  in.model = IdentityOf(info);
  in.base_version = o.base_version;
  in.extra_files["rejects.jsonl"] = rejects_text();
  if (o.duplicates_threshold > 0) {
    ASSIGN_OR_RETURN(std::vector<index::DuplicateGroup> groups,
                     builder->FindNearDuplicates(o.duplicates_threshold, 8));
    std::string text;
    for (const auto& g : groups) {
      nlohmann::json ids = nlohmann::json::array();
      for (uint64_t row : g.rows) ids.push_back(in.ids[row].id);
      text += nlohmann::json{{"ids", ids}, {"min_similarity", g.min_similarity}}.dump() + "\n";
    }
    in.extra_files["duplicates.jsonl"] = text;
    report.duplicate_groups = groups.size();
  }
  if (o.thumbnails) in.thumbnails = std::move(thumbs);
  in.schema = o.schema;
  in.attributes = std::move(typed);
  if (!o.dry_run) {
    snapshot::PublishOptions po;
    po.make_current = o.promote;
    ASSIGN_OR_RETURN(report.version, snapshot::PublishSnapshot(o.root, in, po));
  }
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return report;
}

}  // namespace imagesearch::indexer
