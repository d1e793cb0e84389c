#include "services/indexer/indexer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "libs/common/client_text.h"
#include "libs/common/cpu_quota.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
#include "libs/model/model_bundle.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "services/indexer/bounded_queue.h"

namespace imagesearch::indexer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Work {
  uint64_t seq = 0;  // Position in this worker's share of the listing.
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
  static const char* kExts[] = {".jpg",  ".jpeg", ".png",  ".webp", ".gif", ".tif",
                                ".tiff", ".bmp",  ".avif", ".heic", ".jxl"};
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

// Parses one JSON manifest line into `w` (snapshot::ParseJsonlRecord's
// rules; "path" is required, "id" defaults to it); relative paths resolve
// against `dir`.
absl::Status ParseManifestLine(absl::string_view line, const fs::path& dir, Work* w) {
  ASSIGN_OR_RETURN(snapshot::JsonlRecord r, snapshot::ParseJsonlRecord(line));
  if (!r.path.has_value() || r.path->empty()) {
    return absl::InvalidArgumentError("missing string field \"path\"");
  }
  const fs::path p = *r.path;
  w->path = p.is_absolute() ? p.string() : (dir / p).string();
  w->id = r.id.value_or(*r.path);
  w->attributes_json = std::move(r.attributes_json);
  return absl::OkStatus();
}

// Reads one entry per non-empty line of `in`: a JSON manifest object, or,
// when `plain_paths`, a bare path (its own id). `where(n)` names line n in
// errors. Stops early, with OK, once `push` returns false (the run stopped).
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
    if (!push(std::move(w))) break;
  }
  return absl::OkStatus();
}

// Streams the input into `out`, numbering this worker's items 0, 1, ...;
// returns an error for unusable input (bad manifest line, missing directory).
// Stops when `out` is closed. Closes nothing; the caller does.
absl::Status ListInput(const IndexerOptions& o, BoundedQueue<Work>* out, Progress* progress) {
  uint64_t position = 0;
  uint64_t seq = 0;
  auto push = [&](Work w) {
    // This worker's share of the input, by list position (all of it for 0/1).
    if (position++ % static_cast<uint64_t>(o.shard.count) != static_cast<uint64_t>(o.shard.index)) {
      return true;
    }
    w.seq = seq++;
    progress->listed++;
    return out->Push(std::move(w));
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
    std::sort(files.begin(), files.end());  // Rows in path order (see StreamImages).
    for (const auto& f : files) {
      Work w;
      w.path = f.string();
      w.id = fs::relative(f, o.input).generic_string();
      if (!push(std::move(w))) break;
    }
    return absl::OkStatus();
  }
  // A .jsonl manifest: ValidateOptions refused every other kind of input.
  std::ifstream in(o.input);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open manifest ", o.input));
  return ListLines(
      in, fs::path(o.input).parent_path(), /*plain_paths=*/false,
      [&o](size_t n) { return absl::StrCat(o.input, ":", n); }, push);
}

// What the manifest (or a shard) records about the model; sha256 and file
// are the caller's.

// Every parameter, checked before the model loads or any image is read.
absl::Status ValidateOptions(const IndexerOptions& o) {
  if (o.input.empty()) return absl::InvalidArgumentError("--input is required");
  if (o.root.empty() && o.embeddings_out.empty()) {
    return absl::InvalidArgumentError("--root (or --embeddings_out) is required");
  }
  if (o.model_path.empty()) return absl::InvalidArgumentError("--model is required");
  if (o.batch_size < 1 || o.batch_size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch must be in [1, 4096], got ", o.batch_size));
  }
  for (const auto& [flag, value] : {std::pair<const char*, int>{"decode_threads", o.decode_threads},
                                    {"encoder_instances", o.encoder_instances},
                                    {"encoder_threads", o.encoder_threads}}) {
    if (value < 0 || value > 256) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " must be in [0, 256] (0 = from the CPUs), got ", value));
    }
  }
  if (!(o.max_reject_ratio >= 0 && o.max_reject_ratio <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_reject_ratio must be in [0, 1], got ", o.max_reject_ratio));
  }
  RETURN_IF_ERROR(index::ValidateHnswParams(o.hnsw));
  if (o.default_ef < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--default_ef must be at least 1, got ", o.default_ef));
  }
  if (o.max_pixels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_pixels must be positive, got ", o.max_pixels));
  }
  if (o.thumbnails) RETURN_IF_ERROR(image::ValidateThumbnailOptions(o.thumbnail));
  if (!(o.duplicates_threshold >= 0 && o.duplicates_threshold <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--duplicates_threshold must be in [0, 1] (0 = no report), got ", o.duplicates_threshold));
  }
  if (o.progress != "auto" && o.progress != "bar" && o.progress != "lines" &&
      o.progress != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--progress must be auto, bar, lines or none, got '", o.progress, "'"));
  }
  if (o.shard.count < 1 || o.shard.index < 0 || o.shard.index >= o.shard.count) {
    return absl::InvalidArgumentError("--shard must be i/n with 0 <= i < n");
  }
  const bool to_shard = !o.embeddings_out.empty();
  if (to_shard && o.base_version != 0) {
    return absl::InvalidArgumentError(
        "--embeddings_out writes one shard of a new build; it cannot be combined with --base");
  }
  if (!to_shard && o.shard.count != 1) {
    return absl::InvalidArgumentError(
        "--shard needs --embeddings_out: each worker writes a shard, and imagesearch-snapshot "
        "build "
        "--shards publishes them as one snapshot");
  }
  if (o.base_version == 0 && !o.remove_ids.empty()) {
    return absl::InvalidArgumentError("--remove_ids needs --base");
  }
  if (o.input != "-") {
    std::error_code ec;
    const bool is_dir = fs::is_directory(o.input, ec);
    if (!is_dir && !absl::EndsWith(o.input, ".jsonl")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--input '", o.input, "' is neither a directory, a .jsonl manifest, nor '-' (stdin)"));
    }
    if (!is_dir && !fs::is_regular_file(o.input, ec)) {
      return absl::NotFoundError(absl::StrCat("cannot open manifest ", o.input));
    }
  }
  return absl::OkStatus();
}

// The base snapshot of an incremental build (null without --base): built
// with the same model, and holding every id of --remove_ids.
absl::StatusOr<std::shared_ptr<const snapshot::Snapshot>> OpenBase(const IndexerOptions& o,
                                                                   const std::string& model_sha) {
  if (o.base_version == 0) return std::shared_ptr<const snapshot::Snapshot>();
  ASSIGN_OR_RETURN(std::shared_ptr<const snapshot::Snapshot> base,
                   // Sizes, not checksums: reading every byte of a big base would make an
                   // update cost what the index holds (replicas verify what they serve).
                   snapshot::Snapshot::Open(o.root, o.base_version, snapshot::VerifyMode::kSizes));
  if (base->manifest().model.sha256 != model_sha) {
    return absl::FailedPreconditionError(absl::StrCat(
        "base v", o.base_version, " was built with model '", base->manifest().model.name,
        "' (sha256 ", base->manifest().model.sha256.substr(0, 12), "...), not ", o.model_path,
        " (sha256 ", model_sha.substr(0, 12),
        "...); its vectors are in another embedding space. Build from scratch instead."));
  }
  for (const auto& id : o.remove_ids) {
    if (!base->Find(id).has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--remove_ids: id '", id, "' is not in base v", o.base_version));
    }
  }
  return base;
}

// Threads of one pipeline stage. The destructor calls `stop`, which must
// make every thread return soon (by closing the queues they block on), then
// joins them, so a stage never outlives the function that started it, on
// any return path.
class StageThreads {
 public:
  explicit StageThreads(std::function<void()> stop) : stop_(std::move(stop)) {}
  ~StageThreads() {
    stop_();
    Join();
  }
  StageThreads(const StageThreads&) = delete;
  StageThreads& operator=(const StageThreads&) = delete;

  void Start(std::function<void()> body) { threads_.emplace_back(std::move(body)); }
  void Join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::function<void()> stop_;
  std::vector<std::thread> threads_;
};

// What the streaming stages produce: rows in listing order, row-aligned.
struct Rows {
  std::vector<snapshot::IdRecord> ids;
  std::vector<std::string> thumbs;                      // With thumbnails on.
  std::vector<std::vector<snapshot::AttrValue>> typed;  // With a schema.
  std::vector<float> shard_vectors;                     // With embeddings_out, instead of a graph.
  std::vector<Reject> rejects;
  std::unordered_set<std::string> seen;  // Ids encoded in this run.
  uint64_t listed = 0;
  double encode_seconds = 0;
};

int EncoderInstances(const IndexerOptions& o) {
  return o.encoder_instances > 0 ? o.encoder_instances : EffectiveCpuCount();
}

// The streaming part of a run:
//
//   list (1 thread) -> decode (N threads) -> reorder -> batch (this thread)
//        -> encode (K threads, a batch each) -> reorder -> HNSW insert (1 thread)
//
// The reorder step hands decoded images to the encoder in listing order,
// so rows (and each batch's members) do not depend on which decoder finished
// first: the same input gives the same ids.bin and the same vector per row.
absl::StatusOr<Rows> StreamImages(const IndexerOptions& o, const model::ModelBundle& bundle,
                                  index::HnswStreamBuilder* builder, size_t dim) {
  const bool to_shard = !o.embeddings_out.empty();
  const int decode_threads = o.decode_threads > 0 ? o.decode_threads : EffectiveCpuCount();
  const int encoders = EncoderInstances(o);
  const size_t batch_size = static_cast<size_t>(o.batch_size);
  Progress progress;
  Reporter reporter(o.progress, &progress);
  BoundedQueue<Work> work(batch_size * 4);
  ReorderQueue<Decoded> decoded(batch_size * 4);
  struct EncodeJob {
    uint64_t seq;
    uint64_t first_row;
    std::vector<Decoded> batch;
  };
  struct Encoded {
    std::vector<float> vectors;
    uint64_t first_row;
  };
  BoundedQueue<EncodeJob> jobs(static_cast<size_t>(encoders));
  // Batches finish out of order; the graph gets them in row order, so the
  // same input builds the same graph whichever encoder finished first.
  ReorderQueue<std::optional<Encoded>> encoded(static_cast<uint64_t>(encoders) * 2 + 2);
  Rows rows;

  absl::Status list_status;
  StageThreads lister([&work] { work.Close(); });
  lister.Start([&] {
    list_status = ListInput(o, &work, &progress);
    progress.listing_done = true;
    work.Close();
  });

  std::atomic<int> decoders_left{decode_threads};
  StageThreads decoders([&work, &decoded] {
    work.Close();
    decoded.Close();
  });
  for (int t = 0; t < decode_threads; ++t) {
    decoders.Start([&] {
      while (auto w = work.Pop()) {
        Decoded d{std::move(*w), absl::InternalError("unset"), {}};
        d.image =
            bundle.PreprocessFileWithThumbnail(d.work.path, o.thumbnails ? &o.thumbnail : nullptr);
        const uint64_t seq = d.work.seq;
        if (!decoded.Push(seq, std::move(d))) break;  // The run stopped.
      }
      if (--decoders_left == 0) decoded.Close();
    });
  }

  // Inserts each encoded batch into the graph while the next one is encoded.
  absl::Status insert_status;
  StageThreads inserter([&encoded] { encoded.Close(); });
  inserter.Start([&] {
    while (auto item = encoded.Pop()) {
      // A failed batch leaves nullopt in its place; the run has failed.
      if (!item->has_value() || !insert_status.ok()) continue;  // Drain: encoders never block.
      Encoded* e = &**item;
      if (to_shard) {
        rows.shard_vectors.insert(rows.shard_vectors.end(), e->vectors.begin(), e->vectors.end());
      } else {
        insert_status = builder->Add(e->vectors.data(), e->vectors.size() / dim, e->first_row);
      }
    }
  });

  // Encoder stage: `encoders` threads, each running the model on its own
  // batch. Rows are assigned in listing order here, before encoding.
  std::mutex encode_mu;
  absl::Status encode_status;  // Guarded by encode_mu.
  StageThreads encoder_pool([&jobs, &encoded] {
    jobs.Close();
    encoded.Close();
  });
  for (int t = 0; t < encoders; ++t) {
    encoder_pool.Start([&] {
      while (auto job = jobs.Pop()) {
        std::vector<const image::RgbImage*> ptrs;
        for (const auto& d : job->batch) ptrs.push_back(&d.image->model_input);
        const auto t0 = Clock::now();
        auto out = bundle.EncodeImages(ptrs);
        const double took = std::chrono::duration<double>(Clock::now() - t0).count();
        std::optional<Encoded> result;
        {
          std::lock_guard<std::mutex> lock(encode_mu);
          rows.encode_seconds += took;
          if (out.ok()) {
            result = Encoded{std::move(*out), job->first_row};
          } else if (encode_status.ok()) {
            encode_status = out.status();
          }
        }
        progress.done += job->batch.size();
        if (!encoded.Push(job->seq, std::move(result))) break;  // The run stopped.
      }
    });
  }

  std::vector<Decoded> batch;
  uint64_t batches = 0;
  auto reject = [&](const Work& w, std::string reason) {
    rows.rejects.push_back({w.id, w.path, std::move(reason)});
    progress.rejected++;
    progress.done++;
  };
  auto flush = [&] {
    if (batch.empty()) return;
    {
      std::lock_guard<std::mutex> lock(encode_mu);
      if (!encode_status.ok()) {
        batch.clear();
        return;
      }
    }
    const uint64_t first_row = rows.ids.size();
    for (auto& d : batch) {
      rows.ids.push_back(
          {std::move(d.work.id), std::move(d.work.path), std::move(d.work.attributes_json)});
      if (o.thumbnails) rows.thumbs.push_back(std::move(d.image->thumbnail_jpeg));
      if (!o.schema.empty()) rows.typed.push_back(std::move(d.typed));
    }
    jobs.Push(EncodeJob{batches++, first_row, std::move(batch)});
    batch.clear();
  };
  while (auto d = decoded.Pop()) {
    if (!d->image.ok()) {
      reject(d->work, std::string(d->image.status().message()));
      continue;
    }
    if (d->work.id.empty() || rows.seen.count(d->work.id) > 0) {
      reject(d->work, d->work.id.empty() ? "empty id" : "duplicate id in the input");
      continue;
    }
    if (!IsValidUtf8(d->work.id) || !IsValidUtf8(d->work.path)) {
      // Ids and URIs are strings in the API; a client could not read them.
      reject(d->work, "id or path is not valid UTF-8");
      continue;
    }
    if (!o.schema.empty()) {
      auto t = snapshot::TypedAttributes(o.schema, d->work.attributes_json);
      if (!t.ok()) {
        reject(d->work, std::string(t.status().message()));
        continue;
      }
      d->typed = *std::move(t);
    }
    // Only an accepted image replaces a base row of the same id (PublishUpdate
    // deletes it): one rejected for its pixels or attributes leaves it in place.
    rows.seen.insert(d->work.id);
    batch.push_back(std::move(*d));
    if (batch.size() >= batch_size) flush();
  }
  flush();
  jobs.Close();
  encoder_pool.Join();
  encoded.Close();
  inserter.Join();
  lister.Join();
  decoders.Join();
  reporter.Stop();
  RETURN_IF_ERROR(list_status);
  RETURN_IF_ERROR(encode_status);
  RETURN_IF_ERROR(insert_status);
  rows.listed = progress.listed;
  return rows;
}

// rejects.jsonl: every image skipped, with its reason (base rows included).
std::string RejectsJsonl(const std::vector<Reject>& rejects) {
  std::string text;
  for (const auto& r : rejects) {
    // Rejected ids and paths may be any bytes (a Latin-1 file name): U+FFFD.
    text += nlohmann::json{{"id", r.id}, {"path", r.path}, {"reason", r.reason}}.dump(
        -1, ' ', false, nlohmann::json::error_handler_t::replace);
    text += "\n";
  }
  return text;
}

// With embeddings_out: writes this worker's rows as an embedding shard.
absl::Status WriteShard(const IndexerOptions& o, const snapshot::ModelIdentity& model,
                        index::Metric metric, size_t dim, Rows rows, IndexReport* report) {
  snapshot::EmbeddingShard shard;
  shard.spec = o.shard;
  shard.model = model;
  shard.dim = static_cast<int>(dim);
  shard.metric = metric;
  shard.listed = report->listed;
  shard.vectors = std::move(rows.shard_vectors);
  shard.ids = std::move(rows.ids);
  if (o.thumbnails) shard.thumbs = std::move(rows.thumbs);
  shard.rejects_jsonl = RejectsJsonl(rows.rejects);
  if (o.dry_run) return absl::OkStatus();
  ASSIGN_OR_RETURN(report->shard_dir, snapshot::WriteEmbeddingShard(o.embeddings_out, shard));
  return absl::OkStatus();
}

// Publishes the graph the builder holds, with the rows, as a new version:
// from scratch, a version of one segment; with a base, the base's segments
// plus one new segment of these rows, with the base rows of --remove_ids and
// of re-indexed ids deleted (nothing of the base is rewritten).
absl::Status PublishVersion(const IndexerOptions& o, const snapshot::ModelIdentity& model,
                            index::Metric metric, size_t dim, index::HnswStreamBuilder* builder,
                            const snapshot::Snapshot* base, Rows rows, IndexReport* report) {
  if (builder->size() != rows.ids.size()) {
    return absl::InternalError(absl::StrCat("graph holds ", builder->size(), " vectors but ",
                                            rows.ids.size(), " rows were collected"));
  }
  snapshot::SnapshotInput in;
  in.count = rows.ids.size();
  in.dim = static_cast<int>(dim);
  in.metric = metric;
  in.ids = std::move(rows.ids);
  in.hnsw = o.hnsw;
  in.default_ef = o.default_ef;
  in.graph = [builder](const std::string& graph, const std::string& offsets) {
    return builder->Save(graph, offsets);
  };
  in.model_path = o.model_path;
  in.model = model;
  in.base_version = o.base_version;
  in.extra_files["rejects.jsonl"] = RejectsJsonl(rows.rejects);
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
    report->duplicate_groups = groups.size();
  }
  if (o.thumbnails) in.thumbnails = std::move(rows.thumbs);
  in.schema = o.schema;
  in.attributes = std::move(rows.typed);
  if (o.dry_run) return absl::OkStatus();
  snapshot::PublishOptions po;
  po.make_current = o.promote;
  if (base == nullptr) {
    ASSIGN_OR_RETURN(report->version, snapshot::PublishSnapshot(o.root, in, po));
    report->total = in.count;
    return absl::OkStatus();
  }
  snapshot::SnapshotUpdate update;
  update.base_version = o.base_version;
  update.delete_ids = o.remove_ids;
  update.extra_files = std::move(in.extra_files);
  if (in.count > 0) update.added = std::move(in);
  ASSIGN_OR_RETURN(snapshot::UpdateResult r, snapshot::PublishUpdate(o.root, update, po));
  report->version = r.version;
  report->segment = r.segment;
  report->removed = r.deleted;
  report->replaced = r.replaced;
  report->bytes_written = r.bytes_written;
  report->kept_from_base = base->live_count() - r.deleted - r.replaced;
  report->total = report->kept_from_base + report->indexed;
  return absl::OkStatus();
}

}  // namespace

snapshot::ModelIdentity ModelIdentityOf(const encoder::ModelInfo& info) {
  snapshot::ModelIdentity id;
  id.name = info.name;
  id.version = info.version;
  id.image_size = info.image_size;
  id.has_text = info.text.has_value();
  nlohmann::json j = {
      {"resize", info.resize},         {"crop", info.crop}, {"interpolation", info.interpolation},
      {"image_size", info.image_size}, {"mean", info.mean}, {"std", info.std}};
  id.preprocessing_json = j.dump();
  return id;
}

absl::StatusOr<IndexReport> RunIndexer(const IndexerOptions& options) {
  const auto start = Clock::now();
  // Everything that can be checked is checked before the model loads and
  // before any image is read.
  RETURN_IF_ERROR(ValidateOptions(options));
  ASSIGN_OR_RETURN(std::string model_sha, Sha256HexOfFile(options.model_path));
  ASSIGN_OR_RETURN(std::shared_ptr<const snapshot::Snapshot> base, OpenBase(options, model_sha));
  IndexerOptions o = options;
  if (base != nullptr && o.schema.empty() && base->schema_table() != nullptr) {
    // An update without --schema types its rows under the base's schema, so
    // the new segment's rows answer the same filters as the base's.
    o.schema = base->schema_table()->fields();
  }
  model::ModelBundleOptions mo;
  mo.encoder.intra_op_threads = o.encoder_threads > 0
                                    ? o.encoder_threads
                                    : std::max(1, EffectiveCpuCount() / EncoderInstances(o));
  mo.max_pixels = o.max_pixels;
  ASSIGN_OR_RETURN(auto bundle, model::ModelBundle::Load(o.model_path, mo));
  const encoder::ModelInfo& info = bundle->info();
  const size_t dim = static_cast<size_t>(info.embed_dim);
  ASSIGN_OR_RETURN(index::Metric metric, index::ParseMetric(info.metric));
  snapshot::ModelIdentity model = ModelIdentityOf(info);
  model.sha256 = model_sha;
  ASSIGN_OR_RETURN(auto builder, index::HnswStreamBuilder::Create(dim, metric, o.hnsw, 4096));

  ASSIGN_OR_RETURN(Rows rows, StreamImages(o, *bundle, builder.get(), dim));
  IndexReport report;
  report.listed = rows.listed;
  report.indexed = rows.ids.size();
  report.rejected = rows.rejects.size();
  report.encode_seconds = rows.encode_seconds;
  if (report.listed > 0 &&
      static_cast<double>(report.rejected) / static_cast<double>(report.listed) >
          o.max_reject_ratio) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%d of %d images (%.1f%%) were rejected, more than --max_reject_ratio=%g; nothing was "
        "published. First: %s: %s",
        report.rejected, report.listed, 100.0 * report.rejected / report.listed, o.max_reject_ratio,
        rows.rejects[0].path, rows.rejects[0].reason));
  }
  report.total = rows.ids.size() + (base ? base->live_count() : 0);
  if (o.thumbnails && rows.thumbs.size() != rows.ids.size()) {
    return absl::InternalError(
        absl::StrCat(rows.thumbs.size(), " thumbnails for ", rows.ids.size(), " rows"));
  }
  const bool to_shard = !o.embeddings_out.empty();
  if (to_shard && report.listed == 0) {
    // More workers than items: this worker's share is empty, which is fine.
  } else if (report.indexed == 0 && !base) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no image was indexed (", report.listed, " listed, ", report.rejected,
        " rejected); nothing was published",
        rows.rejects.empty()
            ? std::string()
            : absl::StrCat(". First: ", rows.rejects[0].path, ": ", rows.rejects[0].reason)));
  }
  if (to_shard) {
    RETURN_IF_ERROR(WriteShard(o, model, metric, dim, std::move(rows), &report));
  } else {
    if (report.total == 0) {
      return absl::FailedPreconditionError(
          "the new snapshot would be empty; nothing was published");
    }
    RETURN_IF_ERROR(
        PublishVersion(o, model, metric, dim, builder.get(), base.get(), std::move(rows), &report));
  }
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return report;
}

}  // namespace imagesearch::indexer
