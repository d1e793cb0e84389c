#include "libs/snapshot/snapshot_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <set>
#include <string_view>
#include <thread>
#include <unordered_set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
#include "libs/index/half_vectors.h"
#include "libs/index/mmap_searcher.h"
#include "libs/snapshot/deletes.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/thumbs_table.h"

namespace imagesearch::snapshot {
namespace {

namespace fs = std::filesystem;

// Holds an exclusive flock on root/.lock for its lifetime.
class RootLock {
 public:
  static absl::StatusOr<std::unique_ptr<RootLock>> Acquire(const std::string& root) {
    std::string path = root + "/.lock";
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
    if (::flock(fd, LOCK_EX) != 0) {
      int err = errno;
      ::close(fd);
      return ErrnoStatus(err, absl::StrCat("flock ", path));
    }
    return std::unique_ptr<RootLock>(new RootLock(fd));
  }
  ~RootLock() { ::close(fd_); }

 private:
  explicit RootLock(int fd) : fd_(fd) {}
  int fd_;
};

absl::Status EnsureDir(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", path, ": ", ec.message()));
  return absl::OkStatus();
}

// Removes leftovers of crashed publishes. REQUIRES: the root lock is held, so
// no live writer owns them.
void RemoveStaleTempDirs(const std::string& root) {
  for (const std::string& dir : {root, root + "/" + kSegmentsDir}) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(".tmp-", 0) == 0) fs::remove_all(entry.path(), ec);
    }
  }
}

}  // namespace

std::string VersionDirName(uint64_t version) { return absl::StrCat("v", version); }

std::string VersionDir(const std::string& root, uint64_t version) {
  return absl::StrCat(root, "/", VersionDirName(version));
}

absl::StatusOr<uint64_t> ParseVersionName(absl::string_view name) {
  uint64_t v = 0;
  if (!absl::ConsumePrefix(&name, "v") || name.empty() ||
      !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(name, &v) || v == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "' is not a version name like v1, v2, ..."));
  }
  return v;
}

namespace {

// HISTORY's time field: RFC 3339 in UTC with milliseconds.
constexpr char kHistoryTimeFormat[] = "%Y-%m-%dT%H:%M:%E3SZ";
constexpr char kHistoryTimeParse[] = "%Y-%m-%dT%H:%M:%E*SZ";

// Points CURRENT at `version`, then records it in HISTORY with the time. The
// caller holds the root lock. In this order a failure can only leave a
// version out of HISTORY (a fallback then picks an older one; gc then takes
// CURRENT's mtime as the time), never list one that was not made live. A
// failed append is logged, not returned: CURRENT has moved.
absl::Status MakeCurrent(const std::string& root, uint64_t version) {
  RETURN_IF_ERROR(ReplaceFileAtomically(root + "/" + kCurrentFile, VersionDirName(version) + "\n"));
  const std::string line =
      absl::StrCat(VersionDirName(version), " ",
                   absl::FormatTime(kHistoryTimeFormat, absl::Now(), absl::UTCTimeZone()), "\n");
  if (absl::Status s = AppendFileDurably(root + "/" + kHistoryFile, line); !s.ok()) {
    LogError("CURRENT is ", VersionDirName(version), " but ", root,
             "/HISTORY was not updated: ", s.ToString());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<Promotion>> ReadPromotionLog(const std::string& root) {
  auto text = ReadFileToString(root + "/" + kHistoryFile);
  if (absl::IsNotFound(text.status())) return std::vector<Promotion>();
  if (!text.ok()) return text.status();
  std::vector<absl::string_view> lines = absl::StrSplit(*text, '\n');
  lines.pop_back();  // What follows the last newline: empty, or a torn append.
  std::vector<Promotion> log;
  for (absl::string_view line : lines) {
    std::vector<absl::string_view> fields =
        absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
    if (fields.empty() || fields.size() > 2) continue;
    auto v = ParseVersionName(fields[0]);
    if (!v.ok()) continue;
    Promotion p;
    p.version = *v;
    if (fields.size() == 2) {
      absl::Time at;
      std::string err;
      if (!absl::ParseTime(kHistoryTimeParse, fields[1], &at, &err)) continue;
      p.at = at;
    }
    log.push_back(p);
  }
  return log;
}

absl::StatusOr<std::vector<uint64_t>> PromotionHistory(const std::string& root) {
  ASSIGN_OR_RETURN(std::vector<Promotion> log, ReadPromotionLog(root));
  std::vector<uint64_t> history;  // Newest first: walk the log backwards.
  for (auto p = log.rbegin(); p != log.rend(); ++p) {
    if (std::find(history.begin(), history.end(), p->version) == history.end()) {
      history.push_back(p->version);
    }
  }
  return history;
}

absl::StatusOr<uint64_t> ReadCurrentVersion(const std::string& root) {
  // CURRENT names a version in a few bytes; a larger one is corrupt.
  auto text = ReadFileToString(root + "/" + kCurrentFile, /*max_bytes=*/4096);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      std::string shards;
      if (const std::vector<std::string> names = ShardRootsUnder(root); !names.empty()) {
        shards = absl::StrCat("; it holds the shard roots of a sharded collection (",
                              absl::StrJoin(names, ", "), "): name one of them, e.g. ", root, "/",
                              names.front());
      }
      struct stat st;
      if (::stat(root.c_str(), &st) != 0) {  // A mistyped root, most likely: say so.
        return absl::NotFoundError(absl::StrCat("no snapshot published under ", root,
                                                " yet (the directory ", root,
                                                " does not exist: ", std::strerror(errno), ")"));
      }
      return absl::NotFoundError(absl::StrCat("no snapshot published under ", root, " yet (", root,
                                              "/CURRENT does not exist)", shards));
    }
    if (absl::IsInvalidArgument(text.status())) {  // Over the limit, or not a file.
      return absl::InvalidArgumentError(
          absl::StrCat(root, "/CURRENT is corrupt: ", text.status().message()));
    }
    return text.status();
  }
  auto v = ParseVersionName(absl::StripAsciiWhitespace(*text));
  if (!v.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(root, "/CURRENT is corrupt: ", v.status().message()));
  }
  return v;
}

absl::StatusOr<std::vector<uint64_t>> ListVersions(const std::string& root) {
  std::vector<uint64_t> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    auto v = ParseVersionName(entry.path().filename().string());
    if (v.ok() && entry.is_directory()) out.push_back(*v);
  }
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", root, ": ", ec.message()));
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

absl::Status CheckSegmentInput(const SnapshotInput& input) {
  if (input.dim <= 0) return absl::InvalidArgumentError("dim must be positive");
  if (input.ids.size() != input.count) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", input.count, " vectors but ", input.ids.size(), " ids"));
  }
  if (input.count == 0) return absl::InvalidArgumentError("refusing to publish an empty snapshot");
  if (!input.graph)
    return absl::InvalidArgumentError("no graph writer: SnapshotInput.graph is unset");
  if (!input.schema.empty() && input.attributes.size() != input.count) {
    return absl::InvalidArgumentError(absl::StrCat("got ", input.count, " vectors but ",
                                                   input.attributes.size(), " attribute rows"));
  }
  if (!input.thumbnails.empty() && input.thumbnails.size() != input.count) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", input.count, " vectors but ", input.thumbnails.size(), " thumbnails"));
  }
  if (!input.thumbnails.empty() && input.thumbnail_of) {
    return absl::InvalidArgumentError("set thumbnails or thumbnail_of, not both");
  }
  return absl::OkStatus();
}

// INVALID_ARGUMENT naming the first of `ids` that `shard` does not own.
absl::Status CheckIdsInShard(const std::vector<IdRecord>& ids, const ShardInfo& shard) {
  if (!shard.sharded()) return absl::OkStatus();
  for (const IdRecord& r : ids) RETURN_IF_ERROR(CheckIdInShard(r.id, shard));
  return absl::OkStatus();
}

// "s<version>-<8 hex digits>": the version that wrote it, and a random part
// so that a name is never reused even after a crash.
std::string NewSegmentName(uint64_t version) {
  std::random_device rd;
  return absl::StrCat("s", version, "-", absl::Hex(rd(), absl::kZeroPad8));
}

std::string NowRfc3339() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
}

// Every file in `dir` but the manifest, with its size and XXH3.
absl::Status ListFiles(const std::string& dir, std::map<std::string, FileEntry>* files,
                       uint64_t* bytes) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == kManifestFile) continue;
    FileEntry fe;
    fe.size = entry.file_size();
    ASSIGN_OR_RETURN(fe.xxh3, Xxh3HexOfFile(entry.path().string()));
    (*files)[name] = fe;
    if (bytes != nullptr) *bytes += fe.size;
  }
  if (ec) return absl::InternalError(absl::StrCat("list ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

// A hard link `to` of `from`, or a durable copy where the volume has no hard
// links (or they cross devices).
absl::Status LinkOrCopy(const std::string& from, const std::string& to) {
  if (::link(from.c_str(), to.c_str()) == 0) return absl::OkStatus();
  const int err = errno;
  if (err != EXDEV && err != EPERM && err != ENOTSUP && err != EMLINK) {
    return ErrnoStatus(err, absl::StrCat("link ", from, " -> ", to));
  }
  return CopyFileDurably(from, to);
}

// A manifest of `input`'s rows for `version`, before its files (and, for a
// version, its segments and model).
Manifest ManifestOfInput(const SnapshotInput& input, uint64_t version) {
  Manifest m;
  m.version = version;
  m.created_at = NowRfc3339();
  m.dim = input.dim;
  m.metric = input.metric;
  m.count = input.count;
  m.hnsw_m = input.hnsw.m;
  m.hnsw_ef_construction = input.hnsw.ef_construction;
  m.default_ef = input.default_ef;
  m.shard = input.shard;
  return m;
}

// The manifest of the version after `base`, before its segments, files and
// count: the base's model, dim, metric, shard and query default, and the base's
// HNSW parameters (a version records those of its newest graph; a caller
// that builds one sets its own).
Manifest NextVersionManifest(const Manifest& base, uint64_t version) {
  Manifest m;
  m.version = version;
  m.base_version = base.version;
  m.created_at = NowRfc3339();
  m.model = base.model;
  m.dim = base.dim;
  m.metric = base.metric;
  m.hnsw_m = base.hnsw_m;
  m.hnsw_ef_construction = base.hnsw_ef_construction;
  m.default_ef = base.default_ef;
  m.shard = base.shard;
  return m;
}

struct WrittenSegment {
  SegmentEntry entry;
  uint64_t bytes = 0;
};

// Writes `input`'s segment files and segment manifest into `dir` (made
// here), every file fsync'd. The entry's name is left to the caller.
absl::StatusOr<WrittenSegment> WriteSegmentFiles(const std::string& dir, uint64_t version,
                                                 const SnapshotInput& input) {
  RETURN_IF_ERROR(EnsureDir(dir));
  Manifest m = ManifestOfInput(input, version);
  m.format = kSingleGraphFormat;
  WrittenSegment out;
  ASSIGN_OR_RETURN(std::string ids, EncodeIdsTable(input.ids));
  RETURN_IF_ERROR(WriteFileDurably(dir + "/" + kIdsFile, ids));
  if (!input.schema.empty()) {
    RETURN_IF_ERROR(WriteFileDurably(dir + "/" + kAttributesFile,
                                     EncodeAttributeTable(input.schema, input.attributes)));
  }
  ThumbnailOf thumbnail_of = input.thumbnail_of;
  if (!thumbnail_of && !input.thumbnails.empty()) {
    thumbnail_of = [&input](uint64_t row) -> absl::StatusOr<absl::string_view> {
      return input.thumbnails[row];
    };
  }
  if (thumbnail_of) {
    RETURN_IF_ERROR(WriteThumbsTable(dir + "/" + kThumbsFile, input.count, thumbnail_of));
  }
  RETURN_IF_ERROR(input.graph(dir + "/" + kGraphFile, dir + "/" + kOffsetsFile));
  if (input.half_vectors.value_or(input.dim >= kHalfVectorsMinDim)) {
    RETURN_IF_ERROR(index::WriteHalfVectors(dir + "/" + kGraphFile, input.dim, input.metric,
                                            dir + "/" + kHalfVectorsFile));
  }
  if (input.links.per_row > 0) {
    if (input.link_rows.size() != input.count * input.links.per_row) {
      return absl::InternalError(absl::StrCat("links: ", input.link_rows.size(), " for ",
                                              input.count, " rows x ", input.links.per_row));
    }
    std::string bytes(input.link_rows.size() * sizeof(uint32_t), '\0');
    for (size_t i = 0; i < input.link_rows.size(); ++i) {
      for (size_t b = 0; b < 4; ++b)
        bytes[i * 4 + b] = static_cast<char>(input.link_rows[i] >> (8 * b));
    }
    RETURN_IF_ERROR(WriteFileDurably(dir + "/" + kLinksFile, bytes));
    m.links = input.links;
  }
  m.extends = input.extends;
  RETURN_IF_ERROR(ListFiles(dir, &m.files, &out.bytes));
  const std::string json = ManifestToJson(m);
  out.bytes += json.size();
  RETURN_IF_ERROR(WriteFileDurably(dir + "/" + kManifestFile, json));
  RETURN_IF_ERROR(SyncPath(dir));
  ASSIGN_OR_RETURN(Manifest written, ParseManifest(json));
  out.entry.rows = input.count;
  out.entry.manifest_xxh3 = written.manifest_xxh3;
  return out;
}

// Renames a finished segment dir to root/segments/<name>.
absl::Status RenameSegmentIntoPlace(const std::string& root, const std::string& from,
                                    const std::string& name) {
  const std::string segments = absl::StrCat(root, "/", kSegmentsDir);
  const std::string final_dir = absl::StrCat(segments, "/", name);
  if (::rename(from.c_str(), final_dir.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("rename ", from, " -> ", final_dir));
  }
  return SyncPath(segments);
}

// Writes `input` as root/segments/<name>: a temp dir, every file fsync'd,
// renamed into place. REQUIRES: the root lock is held.
absl::StatusOr<WrittenSegment> WriteSegment(const std::string& root, const std::string& name,
                                            uint64_t version, const SnapshotInput& input) {
  const std::string segments = absl::StrCat(root, "/", kSegmentsDir);
  RETURN_IF_ERROR(EnsureDir(segments));
  const std::string tmp = absl::StrCat(segments, "/.tmp-", name);
  auto out = WriteSegmentFiles(tmp, version, input);
  absl::Status status = out.status();
  if (status.ok()) status = RenameSegmentIntoPlace(root, tmp, name);
  if (!status.ok()) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    return status;
  }
  out->entry.name = name;
  return out;
}

absl::Status WriteExtraFiles(const std::string& dir,
                             const std::map<std::string, std::string>& extra_files) {
  for (const auto& [name, contents] : extra_files) {
    // Every name the store writes itself is reserved, whether or not this
    // version has that file: an extra file must never stand in for one.
    static const char* const kReserved[] = {kManifestFile,    kGraphFile,     kOffsetsFile,
                                            kHalfVectorsFile, kIdsFile,       kModelFile,
                                            kThumbsFile,      kAttributesFile};
    bool reserved = name.rfind("deletes.", 0) == 0;
    for (const char* r : kReserved) reserved = reserved || name == r;
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' || reserved) {
      return absl::InvalidArgumentError(absl::StrCat("bad extra file name '", name, "'"));
    }
    RETURN_IF_ERROR(WriteFileDurably(dir + "/" + name, contents));
  }
  return absl::OkStatus();
}

// Writes the manifest of the version in `tmp`, fsyncs it, renames it to
// v<version> and (with make_current) makes it CURRENT.
absl::Status FinishVersion(const std::string& root, const std::string& tmp, uint64_t version,
                           Manifest* m, const PublishOptions& options, uint64_t* bytes) {
  auto hook = [&](absl::string_view step) {
    if (options.fault_hook) options.fault_hook(step);
  };
  RETURN_IF_ERROR(ListFiles(tmp, &m->files, nullptr));
  hook("built");
  const std::string json = ManifestToJson(*m);
  if (bytes != nullptr) *bytes += json.size();
  RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + kManifestFile, json));
  RETURN_IF_ERROR(SyncPath(tmp));
  hook("synced");
  const std::string final_dir = VersionDir(root, version);
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("rename ", tmp, " -> ", final_dir));
  }
  RETURN_IF_ERROR(SyncPath(root));
  hook("renamed");
  if (!options.make_current) return absl::OkStatus();
  return MakeCurrent(root, version);
}

// The next version number. REQUIRES: the root lock is held.
absl::StatusOr<uint64_t> NextVersion(const std::string& root) {
  ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(root));
  return versions.empty() ? 1 : versions.back() + 1;
}

// A bulk load may replace what a root serves, not which shard it is: OK on a
// root with nothing CURRENT, or whose CURRENT is `shard` (or both unsharded).
// A CURRENT whose manifest does not read says nothing, and a bulk load is
// how such a root is repaired: allowed.
absl::Status CheckRootShard(const std::string& root, const ShardInfo& shard) {
  auto current = ReadCurrentVersion(root);
  if (!current.ok()) return absl::OkStatus();
  auto text = ReadFileToString(absl::StrCat(VersionDir(root, *current), "/", kManifestFile));
  if (!text.ok()) return absl::OkStatus();
  auto cm = ParseManifest(*text);
  if (!cm.ok() || cm->shard == shard) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(root, " serves ", VersionDirName(*current), " as ", DescribeShard(cm->shard),
                   "; this load is ", DescribeShard(shard),
                   ". A shard root stays that shard: reshard into new roots (deploy/README.md)"));
}

void RemoveDir(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace

absl::StatusOr<uint64_t> PublishSnapshot(const std::string& root, const SnapshotInput& input,
                                         const PublishOptions& options) {
  RETURN_IF_ERROR(CheckSegmentInput(input));
  RETURN_IF_ERROR(ValidateShardInfo(input.shard));
  RETURN_IF_ERROR(CheckIdsInShard(input.ids, input.shard));
  RETURN_IF_ERROR(EnsureDir(root));
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  RemoveStaleTempDirs(root);
  RETURN_IF_ERROR(CheckRootShard(root, input.shard));
  ASSIGN_OR_RETURN(const uint64_t version, NextVersion(root));
  const std::string tmp = absl::StrCat(root, "/.tmp-", VersionDirName(version), "-", ::getpid());
  RETURN_IF_ERROR(EnsureDir(tmp));

  Manifest m = ManifestOfInput(input, version);
  m.base_version = input.base_version;

  std::string segment_dir;
  auto status = [&]() -> absl::Status {
    const std::string name = NewSegmentName(version);
    ASSIGN_OR_RETURN(WrittenSegment seg, WriteSegment(root, name, version, input));
    segment_dir = absl::StrCat(root, "/", kSegmentsDir, "/", name);
    m.segments.push_back(seg.entry);
    if (!input.model_path.empty()) {
      m.model = input.model;
      m.model.file = kModelFile;
      ASSIGN_OR_RETURN(m.model.sha256, Sha256HexOfFile(input.model_path));
      RETURN_IF_ERROR(CopyFileDurably(input.model_path, tmp + "/" + kModelFile));
    }
    RETURN_IF_ERROR(WriteExtraFiles(tmp, input.extra_files));
    return FinishVersion(root, tmp, version, &m, options, nullptr);
  }();
  if (!status.ok()) {
    RemoveDir(tmp);
    // A version that did not rename into place names no segment.
    struct stat st;
    if (!segment_dir.empty() && ::stat(VersionDir(root, version).c_str(), &st) != 0) {
      RemoveDir(segment_dir);
    }
    return status;
  }
  return version;
}

namespace {

// The base's one segment when the base is a format-1 version: its graph
// files hard-linked (or copied) into root/segments/<name> under a segment
// manifest, so that the new version can name it. REQUIRES: the root lock.
absl::StatusOr<SegmentEntry> AdoptSingleGraphVersion(const std::string& root,
                                                     const Snapshot& base) {
  const Manifest& bm = base.manifest();
  const std::string name = absl::StrCat("v", bm.version, "-adopted-", NewSegmentName(0).substr(3));
  const std::string segments = absl::StrCat(root, "/", kSegmentsDir);
  RETURN_IF_ERROR(EnsureDir(segments));
  const std::string tmp = absl::StrCat(segments, "/.tmp-", name);
  RETURN_IF_ERROR(EnsureDir(tmp));
  Manifest m = bm;
  m.format = kSingleGraphFormat;
  m.shard = ShardInfo();
  m.model = ModelIdentity();
  m.base_version = 0;
  m.files.clear();
  auto status = [&]() -> absl::Status {
    for (const char* f :
         {kGraphFile, kOffsetsFile, kHalfVectorsFile, kIdsFile, kThumbsFile, kAttributesFile}) {
      auto it = bm.files.find(f);
      if (it == bm.files.end()) continue;
      RETURN_IF_ERROR(LinkOrCopy(base.dir() + "/" + f, tmp + "/" + f));
      m.files[f] = it->second;
    }
    const std::string json = ManifestToJson(m);
    RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + kManifestFile, json));
    RETURN_IF_ERROR(SyncPath(tmp));
    const std::string final_dir = segments + "/" + name;
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("rename ", tmp, " -> ", final_dir));
    }
    return SyncPath(segments);
  }();
  if (!status.ok()) {
    RemoveDir(tmp);
    return status;
  }
  ASSIGN_OR_RETURN(Manifest written, ParseManifest(ManifestToJson(m)));
  SegmentEntry e;
  e.name = name;
  e.rows = m.count;
  e.manifest_xxh3 = written.manifest_xxh3;
  return e;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Snapshot>> VersionCache::Open(const std::string& root,
                                                                   uint64_t version) {
  std::shared_ptr<const Snapshot> last;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last = last_;
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const Snapshot> opened,
                   Snapshot::Open(root, version, VerifyMode::kSizes, last.get()));
  std::lock_guard<std::mutex> lock(mu_);
  if (last_ == nullptr || last_->version() <= version) last_ = opened;
  return opened;
}

namespace {

// root/v<version> (kSizes), through `versions` when given.
absl::StatusOr<std::shared_ptr<const Snapshot>> OpenVersion(const std::string& root,
                                                            uint64_t version,
                                                            VersionCache* versions) {
  if (versions != nullptr) return versions->Open(root, version);
  return Snapshot::Open(root, version, VerifyMode::kSizes);
}

}  // namespace

absl::StatusOr<UpdateResult> PublishUpdate(const std::string& root, const SnapshotUpdate& update,
                                           const PublishOptions& options) {
  const bool adding = update.added.count > 0;
  if (adding) RETURN_IF_ERROR(CheckSegmentInput(update.added));
  if (struct stat st; ::stat(root.c_str(), &st) != 0) {  // Not "open ROOT/.lock" below.
    return absl::NotFoundError(absl::StrCat("root ", root, " does not exist (",
                                            std::strerror(errno),
                                            "): an update needs the root of its base version"));
  }
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  RemoveStaleTempDirs(root);
  uint64_t base_version = update.base_version;
  if (base_version == 0) {  // CURRENT, read under the lock: no publish in between is lost.
    ASSIGN_OR_RETURN(base_version, ReadCurrentVersion(root));
  }
  auto opened = OpenVersion(root, base_version, options.versions);
  if (!opened.ok()) {
    return absl::Status(opened.status().code(), absl::StrCat("base ", VersionDirName(base_version),
                                                             ": ", opened.status().message()));
  }
  const Snapshot& base = **opened;
  const Manifest& bm = base.manifest();
  if (adding) {
    RETURN_IF_ERROR(CheckIdsInShard(update.added.ids, bm.shard));
    if (update.added.dim != bm.dim || update.added.metric != bm.metric) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the added rows are ", update.added.dim, "-d ", index::MetricName(update.added.metric),
          " but base ", VersionDirName(bm.version), " is ", bm.dim, "-d ",
          index::MetricName(bm.metric)));
    }
    if (!update.added.model_path.empty()) {
      ASSIGN_OR_RETURN(std::string sha, Sha256HexOfFile(update.added.model_path));
      if (sha != bm.model.sha256) {
        return absl::InvalidArgumentError(
            absl::StrCat("the added rows were made with ", update.added.model_path, " (sha256 ",
                         sha.substr(0, 12), "...) but base ", VersionDirName(bm.version),
                         " was built with model '", bm.model.name, "' (sha256 ",
                         bm.model.sha256.substr(0, 12), "...)"));
      }
    }
  }
  UpdateResult result;

  // The deleted rows of each base segment, starting from the base's own.
  std::vector<index::RowFilter> deleted;
  std::vector<bool> changed(base.segments().size(), false);
  for (const SegmentRef& ref : base.segments()) {
    deleted.push_back(ref.deleted != nullptr ? *ref.deleted
                                             : index::RowFilter(ref.segment->rows()));
  }
  auto delete_row = [&](uint32_t row) {
    auto [ref, local] = base.Locate(row);
    const size_t i = static_cast<size_t>(ref - base.segments().data());
    deleted[i].Allow(local);
    changed[i] = true;
  };
  for (const std::string& id : update.delete_ids) {
    if (auto row = base.Find(id)) {
      delete_row(*row);
      ++result.deleted;
    } else {
      ++result.unknown_ids;
    }
  }
  if (adding) {
    for (const IdRecord& rec : update.added.ids) {
      if (auto row = base.Find(rec.id)) {
        delete_row(*row);
        ++result.replaced;
      }
    }
  }
  if (update.skip_if_unchanged && !adding && result.deleted == 0 && update.extra_files.empty() &&
      bm.format != kSingleGraphFormat) {
    result.version = bm.version;
    result.published = false;
    return result;
  }
  ASSIGN_OR_RETURN(const uint64_t version, NextVersion(root));
  result.version = version;

  const std::string tmp = absl::StrCat(root, "/.tmp-", VersionDirName(version), "-", ::getpid());
  RETURN_IF_ERROR(EnsureDir(tmp));
  Manifest m = NextVersionManifest(bm, version);
  if (adding) {
    m.hnsw_m = update.added.hnsw.m;
    m.hnsw_ef_construction = update.added.hnsw.ef_construction;
  }
  std::vector<std::string> new_segments;  // Removed again if the version fails.
  auto status = [&]() -> absl::Status {
    for (size_t i = 0; i < base.segments().size(); ++i) {
      const SegmentRef& ref = base.segments()[i];
      SegmentEntry e;
      if (bm.format == kSingleGraphFormat) {
        ASSIGN_OR_RETURN(e, AdoptSingleGraphVersion(root, base));
        new_segments.push_back(e.name);
      } else {
        e = bm.segments[i];
      }
      e.deleted = deleted[i].Count();
      e.deletes_file.clear();
      if (e.deleted == e.rows) continue;  // Nothing live: dropped.
      if (e.deleted > 0) {
        e.deletes_file = DeletesFileName(e.name);
        if (!changed[i] && ref.deleted != nullptr) {
          RETURN_IF_ERROR(LinkOrCopy(base.dir() + "/" + bm.segments[i].deletes_file,
                                     tmp + "/" + e.deletes_file));
        } else {
          const std::string bytes = EncodeDeletes(deleted[i]);
          result.bytes_written += bytes.size();
          RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + e.deletes_file, bytes));
        }
      }
      m.count += e.rows - e.deleted;
      m.segments.push_back(std::move(e));
    }
    if (adding) {
      const std::string name = NewSegmentName(version);
      ASSIGN_OR_RETURN(WrittenSegment seg, WriteSegment(root, name, version, update.added));
      new_segments.push_back(name);
      result.segment = name;
      result.bytes_written += seg.bytes;
      m.count += seg.entry.rows;
      m.segments.push_back(seg.entry);
    }
    if (m.segments.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("the update deletes every row of base ",
                                                        VersionDirName(bm.version),
                                                        "; refusing to publish an empty snapshot"));
    }
    if (!bm.model.name.empty()) {
      RETURN_IF_ERROR(LinkOrCopy(base.model_path(), tmp + "/" + bm.model.file));
    }
    RETURN_IF_ERROR(WriteExtraFiles(tmp, update.extra_files));
    for (const auto& [name, contents] : update.extra_files) result.bytes_written += contents.size();
    return FinishVersion(root, tmp, version, &m, options, &result.bytes_written);
  }();
  if (!status.ok()) {
    RemoveDir(tmp);
    struct stat st;
    if (::stat(VersionDir(root, version).c_str(), &st) != 0) {
      for (const std::string& name : new_segments) {
        RemoveDir(absl::StrCat(root, "/", kSegmentsDir, "/", name));
      }
    }
    return status;
  }
  return result;
}

namespace {

// Appends live row `r` of `seg` to `in`: its id, uri and attributes (typed
// under in->schema, if any), its thumbnail's place to `thumbs` (when
// `thumbs_on`) and, with `vectors`, its vector.
absl::Status AppendRow(const Segment& seg, uint32_t r, size_t dim, bool thumbs_on,
                       ThumbnailSources* thumbs, SnapshotInput* in, std::vector<float>* vectors) {
  ASSIGN_OR_RETURN(IdView v, seg.ids().Get(r));
  in->ids.push_back({std::string(v.id), std::string(v.uri), std::string(v.attributes_json)});
  if (vectors != nullptr) {
    const float* vec = seg.searcher().Vector(r);
    vectors->insert(vectors->end(), vec, vec + dim);
  }
  if (thumbs_on) thumbs->Add(seg.thumbs(), r);
  if (!in->schema.empty()) {
    // Typed again from the stored attributes, under the newest schema; a
    // row that does not fit it keeps no values (it was indexed under
    // another schema).
    auto typed = TypedAttributes(in->schema, v.attributes_json);
    in->attributes.push_back(typed.ok() ? *std::move(typed)
                                        : std::vector<AttrValue>(in->schema.size()));
  }
  return absl::OkStatus();
}

}  // namespace

bool HasThumbnails(const Snapshot& snap) {
  for (const SegmentRef& ref : snap.segments()) {
    if (ref.segment->thumbs() != nullptr) return true;
  }
  return false;
}

absl::Status AppendLiveRows(const Snapshot& snap,
                            const std::function<bool(absl::string_view id)>& keep, LiveRows* out) {
  for (const SegmentRef& ref : snap.segments()) {
    const Segment& seg = *ref.segment;
    for (uint32_t r = 0; r < seg.rows(); ++r) {
      if (ref.deleted != nullptr && ref.deleted->Allows(r)) continue;
      ASSIGN_OR_RETURN(IdView v, seg.ids().Get(r));
      if (!keep(v.id)) continue;
      RETURN_IF_ERROR(AppendRow(seg, r, static_cast<size_t>(snap.dim()), out->with_thumbs,
                                &out->thumbs, &out->input, &out->vectors));
    }
  }
  out->input.count = out->input.ids.size();
  return absl::OkStatus();
}

namespace {

// The live rows of `chosen` segments of `base` as one SnapshotInput (the
// vectors in `vectors`, which the input's graph writer reads), and for each
// chosen segment the merged row of each of its rows (-1: deleted). With
// `extended` (a chosen segment), that segment's rows come first, every one of
// them (its graph is extended, so its rows keep their numbers): a deleted row
// is kept as a tombstone (listed in `tombstones`; no uri, attributes or
// thumbnail, and an id that no other merged row has, since an id re-added
// elsewhere is live in the merged rows too), and `vectors` holds the other
// segments' rows only.
struct MergeRows {
  std::vector<float> vectors;
  SnapshotInput input;
  std::map<std::string, std::vector<int64_t>> row_map;
  uint64_t dropped = 0;
  std::vector<uint32_t> tombstones;
};

absl::StatusOr<MergeRows> CollectMergeRows(const Snapshot& base,
                                           const std::set<std::string>& chosen,
                                           const std::string& extended) {
  MergeRows out;
  const size_t dim = static_cast<size_t>(base.dim());
  SnapshotInput& in = out.input;
  in.dim = base.dim();
  in.metric = base.manifest().metric;
  in.default_ef = base.manifest().default_ef;
  bool thumbs = false;
  // Where each merged row's thumbnail is (null: none), read as thumbs.bin is
  // written: `base` holds the segments' maps until the merge returns.
  ThumbnailSources thumb_at;
  for (const SegmentRef& ref : base.segments()) {
    if (!chosen.count(ref.name)) continue;
    thumbs = thumbs || ref.segment->thumbs() != nullptr;
    if (ref.segment->attributes() != nullptr) in.schema = ref.segment->attributes()->fields();
  }
  std::vector<const SegmentRef*> order;
  for (const SegmentRef& ref : base.segments()) {
    if (ref.name == extended)
      order.insert(order.begin(), &ref);
    else if (chosen.count(ref.name))
      order.push_back(&ref);
  }
  for (const SegmentRef* ref : order) {
    const Segment& seg = *ref->segment;
    const bool keep_all = ref->name == extended;
    std::vector<int64_t>& map = out.row_map[ref->name];
    map.assign(seg.rows(), -1);
    for (uint32_t r = 0; r < seg.rows(); ++r) {
      const bool deleted = ref->deleted != nullptr && ref->deleted->Allows(r);
      if (deleted && !keep_all) {
        ++out.dropped;
        continue;
      }
      map[r] = static_cast<int64_t>(in.ids.size());
      if (deleted) {
        out.tombstones.push_back(static_cast<uint32_t>(in.ids.size()));
        in.ids.push_back({});  // Its id is chosen below, once every live id is known.
        if (thumbs) thumb_at.Add(nullptr, 0);
        if (!in.schema.empty()) in.attributes.emplace_back(in.schema.size());
        continue;
      }
      RETURN_IF_ERROR(
          AppendRow(seg, r, dim, thumbs, &thumb_at, &in, keep_all ? nullptr : &out.vectors));
    }
  }
  if (!out.tombstones.empty()) {
    // "(deleted row N)", primed until no live merged row has it: unique in
    // the segment, as its ids table requires, and never found (deleted).
    std::unordered_set<std::string_view> live;
    for (const IdRecord& r : in.ids) {
      if (!r.id.empty()) live.insert(r.id);
    }
    for (uint32_t row : out.tombstones) {
      std::string id = absl::StrCat("(deleted row ", row, ")");
      while (live.count(id)) id += "'";
      in.ids[row].id = std::move(id);
    }
  }
  in.count = in.ids.size();
  if (thumbs) in.thumbnail_of = thumb_at.Reader();
  return out;
}

// A merged segment at most 1/kLinkTargetFactor the size of the biggest
// segment left beside it is a tail: it is linked to that segment
// (kTailLinksPerRow rows each, chosen by index::NearestRows among the nearest
// found with kTailLinkSearchEf), so that
// versions holding both walk them as one graph (index::JointGraph).
constexpr uint64_t kLinkTargetFactor = 2;

// Sets in->links and in->link_rows when the merged rows make a tail of a
// bigger segment of `base` not among `chosen`. Each merged row's links are
// copied from the segment it comes from when that segment's links are rows
// of the same segment (links to it, or to one whose rows it keeps first), so
// a row is searched in the big graph once, not at every join that moves it
// up the ladder of tails; the other rows are searched. `row_map`: for each
// merged segment, its rows' merged rows (-1: dropped). Returns the rows
// searched.
uint64_t LinkToBigSegment(const Snapshot& base, const std::set<std::string>& chosen,
                          const std::map<std::string, std::vector<int64_t>>& row_map, int threads,
                          SnapshotInput* in) {
  const SegmentRef* target = nullptr;
  for (const SegmentRef& ref : base.segments()) {
    if (ref.name.empty() || chosen.count(ref.name)) continue;
    if (target == nullptr || ref.segment->rows() > target->segment->rows()) target = &ref;
  }
  if (in->count == 0 || target == nullptr ||
      target->segment->rows() < kLinkTargetFactor * in->count) {
    return 0;
  }
  const index::MmapHnswSearcher& big = target->segment->searcher();
  const size_t dim = static_cast<size_t>(in->dim);
  const size_t per = kTailLinksPerRow;
  const int n_threads =
      threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  in->links = {target->name, target->segment->manifest().manifest_xxh3, kTailLinksPerRow};
  in->link_rows.assign(in->count * per, index::JointGraph::kNoRow);
  std::vector<size_t> to_search;  // Merged rows whose links are searched.
  std::vector<float> vectors;
  for (const SegmentRef& ref : base.segments()) {
    const auto map = row_map.find(ref.name);
    if (!chosen.count(ref.name) || map == row_map.end()) continue;
    const Segment& seg = *ref.segment;
    const SegmentLinks& had = seg.manifest().links;
    const bool keep = seg.link_rows() != nullptr && had.per_row == per &&
                      LinksReach(had, target->name, target->segment->manifest());
    for (uint32_t r = 0; r < seg.rows() && r < map->second.size(); ++r) {
      const int64_t at = map->second[r];
      if (at < 0) continue;
      if (keep) {
        std::copy(seg.link_rows() + r * per, seg.link_rows() + (r + 1) * per,
                  in->link_rows.begin() + at * per);
      } else {
        to_search.push_back(static_cast<size_t>(at));
        const float* v = seg.searcher().Vector(r);
        vectors.insert(vectors.end(), v, v + dim);
      }
    }
  }
  const std::vector<uint32_t> found = index::NearestRows(big, vectors.data(), to_search.size(), dim,
                                                         per, kTailLinkSearchEf, n_threads);
  for (size_t i = 0; i < to_search.size(); ++i) {
    std::copy(found.begin() + i * per, found.begin() + (i + 1) * per,
              in->link_rows.begin() + to_search[i] * per);
  }
  return to_search.size();
}

// The calling thread's CPU time.
absl::Duration ThisThreadCpu() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return absl::DurationFromTimespec(ts);
}

// Whether `pid` is a running process.
bool ProcessAlive(long pid) {
  return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

// ChooseMerge over `version`'s segments; none for a single-graph version
// (one segment, no deletes).
std::vector<std::string> ChooseMergeIn(const Snapshot& version, const MergePolicy& policy,
                                       const std::set<std::string>& busy) {
  if (version.manifest().format == kSingleGraphFormat) return {};
  std::vector<SegmentStats> stats;
  for (const SegmentRef& ref : version.segments()) {
    stats.push_back({ref.name, ref.segment->rows(), ref.deleted_count});
  }
  return ChooseMerge(stats, policy, busy);
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ChooseMergeInCurrent(const std::string& root,
                                                              const MergePolicy& policy,
                                                              const std::set<std::string>& busy,
                                                              VersionCache* versions) {
  ASSIGN_OR_RETURN(const uint64_t current, ReadCurrentVersion(root));
  ASSIGN_OR_RETURN(auto opened, OpenVersion(root, current, versions));
  return ChooseMergeIn(*opened, policy, busy);
}

absl::StatusOr<MergeResult> MergeSegments(const std::string& root, const MergeRequest& request,
                                          const PublishOptions& options) {
  ASSIGN_OR_RETURN(const uint64_t start_version, ReadCurrentVersion(root));
  ASSIGN_OR_RETURN(auto opened, OpenVersion(root, start_version, options.versions));
  const Snapshot& base = *opened;
  MergeResult result;
  std::vector<std::string> names = request.segments;
  if (names.empty()) {
    names = ChooseMergeIn(base, request.policy, {});
    if (names.empty()) return result;
  }
  std::set<std::string> chosen(names.begin(), names.end());
  for (const std::string& name : chosen) {
    bool found = false;
    for (const SegmentRef& ref : base.segments())
      found = found || (!name.empty() && ref.name == name);
    if (!found) {
      return absl::NotFoundError(absl::StrCat("segment '", name, "' is not in ",
                                              VersionDirName(start_version), " (CURRENT)"));
    }
  }
  if (chosen.size() == 1) {
    for (const SegmentRef& ref : base.segments()) {
      if (ref.name == *chosen.begin() && ref.deleted_count == 0) {
        return result;  // One segment without deletes: merging changes nothing.
      }
    }
  }
  // Extend the biggest chosen segment's graph when it holds at least as many
  // rows as the others' live rows together (inserting those costs less than
  // building over all of them), unless the merge is for its deletes or would
  // change its graph's parameters.
  const SegmentRef* biggest = nullptr;
  uint64_t others_live = 0;
  for (const SegmentRef& ref : base.segments()) {
    if (!chosen.count(ref.name)) continue;
    others_live += ref.segment->rows() - ref.deleted_count;
    if (biggest == nullptr || ref.segment->rows() > biggest->segment->rows()) biggest = &ref;
  }
  // Unless the request sets them, the merged graph takes the biggest merged
  // segment's parameters (a bulk load's, typically), not those of whatever
  // update came last: the small segments never lower the big graph's M.
  const Manifest& biggest_m = biggest != nullptr ? biggest->segment->manifest() : base.manifest();
  const int m = request.m > 0 ? request.m : biggest_m.hnsw_m;
  const int ef_construction =
      request.ef_construction > 0 ? request.ef_construction : biggest_m.hnsw_ef_construction;
  std::string extended;
  if (request.extend && chosen.size() >= 2 && biggest != nullptr) {
    const uint64_t rows_b = biggest->segment->rows();
    others_live -= rows_b - biggest->deleted_count;
    const Manifest& bm = biggest->segment->manifest();
    const bool for_deletes = 100.0 * static_cast<double>(biggest->deleted_count) >
                             request.policy.deletes_pct_allowed * static_cast<double>(rows_b);
    if (rows_b >= others_live && !for_deletes && bm.hnsw_m == m &&
        bm.hnsw_ef_construction == ef_construction) {
      extended = biggest->name;
    }
  }
  ASSIGN_OR_RETURN(MergeRows rows, CollectMergeRows(base, chosen, extended));
  SnapshotInput& in = rows.input;
  in.hnsw.m = m;
  in.hnsw.ef_construction = ef_construction;
  in.hnsw.threads = request.threads;
  const absl::Time link_start = absl::Now();
  const absl::Duration link_cpu_start = ThisThreadCpu();
  const uint64_t linked = LinkToBigSegment(base, chosen, rows.row_map, request.threads, &in);
  const absl::Duration link_time = absl::Now() - link_start;
  const absl::Duration link_cpu =
      request.threads == 1 ? ThisThreadCpu() - link_cpu_start : absl::ZeroDuration();
  if (!extended.empty()) {
    // Tails linked to the extended segment (or to those it extends) are
    // linked to this one too: its first rows are theirs.
    const Manifest& bm = biggest->segment->manifest();
    in.extends.push_back({biggest->name, bm.manifest_xxh3, biggest->segment->rows()});
    for (const ExtendedSegment& e : bm.extends) {
      if (in.extends.size() == kMaxExtendedSegments) break;
      in.extends.push_back(e);
    }
  }
  const std::string name = absl::StrCat("m", NewSegmentName(start_version).substr(1));
  const std::string building =
      absl::StrCat(root, "/", kSegmentsDir, "/.merging-", name, "-", ::getpid());
  WrittenSegment written;
  if (in.count > 0) {
    if (extended.empty()) {
      in.graph = index::HnswGraphWriter(rows.vectors.data(), in.count, static_cast<size_t>(in.dim),
                                        in.metric, in.hnsw);
    } else {
      const size_t kept = static_cast<size_t>(biggest->segment->rows());
      in.graph = index::HnswExtendGraphWriter(
          absl::StrCat(biggest->segment->dir(), "/", kGraphFile), kept, rows.vectors.data(),
          in.count - kept, static_cast<size_t>(in.dim), in.metric, in.hnsw);
    }
    RETURN_IF_ERROR(EnsureDir(absl::StrCat(root, "/", kSegmentsDir)));
    auto w = WriteSegmentFiles(building, start_version, in);
    if (!w.ok()) {
      RemoveDir(building);
      return w.status();
    }
    written = *std::move(w);
    written.entry.name = name;
  }
  rows.vectors = std::vector<float>();
  if (request.before_publish) request.before_publish();

  auto lock = RootLock::Acquire(root);
  if (!lock.ok()) {
    RemoveDir(building);
    return lock.status();
  }
  auto publish = [&]() -> absl::StatusOr<MergeResult> {
    ASSIGN_OR_RETURN(const uint64_t latest_version, ReadCurrentVersion(root));
    ASSIGN_OR_RETURN(auto latest_snap, OpenVersion(root, latest_version, options.versions));
    const Snapshot& latest = *latest_snap;
    const Manifest& lm = latest.manifest();
    // Every merged segment must still be listed, as the same segment the
    // merge read (same name, same manifest checksum).
    for (const std::string& n : chosen) {
      std::string read_xxh3;
      for (const SegmentRef& ref : base.segments()) {
        if (ref.name == n) read_xxh3 = ref.segment->manifest().manifest_xxh3;
      }
      bool same = false;
      for (const SegmentEntry& e : lm.segments) {
        same = same || (e.name == n && e.manifest_xxh3 == read_xxh3);
      }
      if (!same) {
        return absl::AbortedError(absl::StrCat("segment '", n, "' is no longer in CURRENT (",
                                               VersionDirName(latest_version),
                                               "); nothing was published, merge again"));
      }
    }
    // Rows deleted since the merge read them: deleted in the merged segment,
    // as are the tombstones of an extended segment.
    index::RowFilter carried(in.count);
    for (uint32_t row : rows.tombstones) carried.Allow(row);
    for (const SegmentRef& ref : latest.segments()) {
      if (!chosen.count(ref.name) || ref.deleted == nullptr) continue;
      const std::vector<int64_t>& map = rows.row_map[ref.name];
      ref.deleted->ForEach([&](uint32_t r) {
        if (r < map.size() && map[r] >= 0) carried.Allow(static_cast<uint32_t>(map[r]));
      });
    }
    ASSIGN_OR_RETURN(const uint64_t version, NextVersion(root));
    const std::string tmp = absl::StrCat(root, "/.tmp-", VersionDirName(version), "-", ::getpid());
    RETURN_IF_ERROR(EnsureDir(tmp));
    Manifest m = NextVersionManifest(lm, version);
    MergeResult r;
    r.version = version;
    r.merged.assign(chosen.begin(), chosen.end());
    r.dropped = rows.dropped;
    r.extended = extended;
    r.kept_deleted = rows.tombstones.size();
    r.linked = linked;
    r.link_time = link_time;
    r.link_cpu = link_cpu;
    const uint64_t deleted_rows = carried.Count();  // Tombstones included.
    if (in.count > 0 && deleted_rows < in.count) {  // A merged segment is placed: its graph's.
      m.hnsw_m = in.hnsw.m;
      m.hnsw_ef_construction = in.hnsw.ef_construction;
    }
    r.carried_deletes = deleted_rows - rows.tombstones.size();
    r.rows = in.count;
    bool placed = false;
    bool renamed = false;
    auto status = [&]() -> absl::Status {
      for (size_t i = 0; i < latest.segments().size(); ++i) {
        const SegmentEntry& e = lm.segments[i];
        if (chosen.count(e.name)) {
          if (placed || in.count == 0 || deleted_rows == in.count) continue;
          placed = true;
          SegmentEntry merged = written.entry;
          merged.deleted = deleted_rows;
          if (merged.deleted > 0) {
            merged.deletes_file = DeletesFileName(merged.name);
            RETURN_IF_ERROR(
                WriteFileDurably(tmp + "/" + merged.deletes_file, EncodeDeletes(carried)));
          }
          m.count += merged.rows - merged.deleted;
          m.segments.push_back(merged);
          continue;
        }
        if (e.deleted > 0) {
          RETURN_IF_ERROR(
              LinkOrCopy(latest.dir() + "/" + e.deletes_file, tmp + "/" + e.deletes_file));
        }
        m.count += e.rows - e.deleted;
        m.segments.push_back(e);
      }
      if (m.segments.empty()) {
        return absl::FailedPreconditionError("the merge would leave no live row");
      }
      if (!lm.model.name.empty()) {
        RETURN_IF_ERROR(LinkOrCopy(latest.model_path(), tmp + "/" + lm.model.file));
      }
      if (placed) {
        RETURN_IF_ERROR(RenameSegmentIntoPlace(root, building, name));
        renamed = true;
      }
      return FinishVersion(root, tmp, version, &m, options, nullptr);
    }();
    if (!status.ok()) {
      RemoveDir(tmp);
      struct stat st;
      if (renamed && ::stat(VersionDir(root, version).c_str(), &st) != 0) {
        RemoveDir(absl::StrCat(root, "/", kSegmentsDir, "/", name));
      }
      return status;
    }
    if (placed) r.segment = name;
    return r;
  }();
  RemoveDir(building);  // Gone if it was renamed into place.
  return publish;
}

absl::Status ExportVersion(const std::string& root, uint64_t version, const std::string& out_dir) {
  ASSIGN_OR_RETURN(auto snap, Snapshot::Open(root, version, VerifyMode::kSizes));
  struct stat st;
  if (::stat(out_dir.c_str(), &st) == 0) {
    return absl::AlreadyExistsError(absl::StrCat(out_dir, " already exists"));
  }
  const std::string tmp = absl::StrCat(out_dir, ".tmp-", ::getpid());
  auto status = [&]() -> absl::Status {
    RETURN_IF_ERROR(EnsureDir(tmp));
    for (const auto& [name, entry] : snap->manifest().files) {
      RETURN_IF_ERROR(LinkOrCopy(snap->dir() + "/" + name, tmp + "/" + name));
    }
    RETURN_IF_ERROR(LinkOrCopy(snap->dir() + "/" + kManifestFile, tmp + "/" + kManifestFile));
    for (const SegmentRef& ref : snap->segments()) {
      if (ref.name.empty()) {  // A format-1 version: its files are the segment's, copied above.
        for (const auto& [name, entry] : ref.segment->manifest().files) {
          if (!snap->manifest().files.count(name)) {
            RETURN_IF_ERROR(LinkOrCopy(ref.segment->dir() + "/" + name, tmp + "/" + name));
          }
        }
        continue;
      }
      const std::string seg = absl::StrCat(tmp, "/", kSegmentsDir, "/", ref.name);
      RETURN_IF_ERROR(EnsureDir(seg));
      for (const auto& [name, entry] : ref.segment->manifest().files) {
        RETURN_IF_ERROR(LinkOrCopy(ref.segment->dir() + "/" + name, seg + "/" + name));
      }
      RETURN_IF_ERROR(
          LinkOrCopy(ref.segment->dir() + "/" + kManifestFile, seg + "/" + kManifestFile));
      RETURN_IF_ERROR(SyncPath(seg));
    }
    RETURN_IF_ERROR(SyncPath(tmp));
    if (::rename(tmp.c_str(), out_dir.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("rename ", tmp, " -> ", out_dir));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) RemoveDir(tmp);
  return status;
}

absl::Status SetCurrentVersion(const std::string& root, uint64_t version) {
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  const std::string dir = VersionDir(root, version);
  struct stat st;
  if (::stat((dir + "/" + kManifestFile).c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("version ", VersionDirName(version), " does not exist under ", root));
  }
  // What a replica would refuse (a copy whose manifest names another
  // version, a missing or truncated file) never becomes CURRENT.
  auto snap = Snapshot::Open(root, version, VerifyMode::kSizes);
  if (!snap.ok()) {
    return absl::Status(snap.status().code(),
                        absl::StrCat("refusing to make ", VersionDirName(version),
                                     " CURRENT: ", snap.status().message()));
  }
  return MakeCurrent(root, version);
}

absl::StatusOr<uint64_t> RollBack(const std::string& root) {
  ASSIGN_OR_RETURN(uint64_t current, ReadCurrentVersion(root));
  ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(root));
  uint64_t previous = 0;
  for (uint64_t v : versions) {
    if (v < current) previous = v;
  }
  if (previous == 0) {
    return absl::FailedPreconditionError(absl::StrCat("CURRENT is ", VersionDirName(current),
                                                      " and no older version is left under ", root,
                                                      " to roll back to"));
  }
  RETURN_IF_ERROR(SetCurrentVersion(root, previous));
  return previous;
}

namespace {

// When each version in `log` last stopped being CURRENT: the time of the line
// that followed its last line. Unset where that line has no time, or where
// its last line is the log's last (HISTORY missed the replacement since).
std::map<uint64_t, std::optional<absl::Time>> RetirementTimes(const std::vector<Promotion>& log) {
  std::map<uint64_t, std::optional<absl::Time>> retired;
  for (size_t i = 0; i < log.size(); ++i) {
    if (i + 1 == log.size()) {
      retired[log[i].version] = std::nullopt;
    } else if (log[i + 1].version != log[i].version) {
      retired[log[i].version] = log[i + 1].at;
    }
  }
  return retired;
}

}  // namespace

namespace {

// Removes the segments under root/segments that no version names. A version
// whose manifest does not read might name any of them: then none is removed.
// REQUIRES: the root lock is held (no segment is being written).
absl::Status RemoveUnreferencedSegments(const std::string& root, absl::Time now,
                                        absl::Duration grace, GcReport* report) {
  const std::string segments = absl::StrCat(root, "/", kSegmentsDir);
  struct stat st;
  if (::stat(segments.c_str(), &st) != 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(root));
  std::set<std::string> named;
  for (uint64_t v : versions) {
    const std::string path = absl::StrCat(VersionDir(root, v), "/", kManifestFile);
    auto text = ReadFileToString(path);
    auto m = text.ok() ? ParseManifest(*text) : absl::StatusOr<Manifest>(text.status());
    if (!m.ok()) {
      LogError("gc keeps every segment: ", path, " does not read (", m.status().ToString(), ")");
      return absl::OkStatus();
    }
    for (const SegmentEntry& e : m->segments) named.insert(e.name);
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(segments, ec)) {
    const std::string name = entry.path().filename().string();
    if (named.count(name) || name.rfind(".tmp-", 0) == 0) continue;
    if (name.rfind(".merging-", 0) == 0) {
      // A merge's segment being built: removed once its process is gone and
      // it has not changed for the grace (the merge may run on another host,
      // whose processes this one cannot see).
      long pid = 0;
      if (absl::SimpleAtoi(name.substr(name.rfind('-') + 1), &pid) && ProcessAlive(pid)) continue;
      struct stat st;
      if (::stat(entry.path().c_str(), &st) != 0 ||
          absl::TimeFromTimespec(st.st_mtim) + grace > now) {
        continue;
      }
    }
    fs::remove_all(entry.path(), ec);
    if (ec)
      return absl::InternalError(
          absl::StrCat("remove ", entry.path().string(), ": ", ec.message()));
    report->removed_segments.push_back(name);
  }
  std::sort(report->removed_segments.begin(), report->removed_segments.end());
  if (!report->removed_segments.empty()) RETURN_IF_ERROR(SyncPath(segments));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GcReport> GarbageCollect(const std::string& root, const GcOptions& options) {
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  RemoveStaleTempDirs(root);
  ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(root));
  auto current = ReadCurrentVersion(root);
  // A CURRENT that exists but cannot be read names no version to keep: GC
  // would take the live version for an old one. Only a root that has none yet
  // is collected without one.
  if (!current.ok() && !absl::IsNotFound(current.status())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gc refuses to run while CURRENT cannot be read (", current.status().message(),
        "); point it at a version first: imagesearch-snapshot set-current --root=", root,
        " --version=vN"));
  }
  ASSIGN_OR_RETURN(std::vector<Promotion> log, ReadPromotionLog(root));
  const std::map<uint64_t, std::optional<absl::Time>> retired = RetirementTimes(log);
  const absl::Time now = options.now.value_or(absl::Now());
  // The latest any version but the live one can have stopped being CURRENT.
  // Without a CURRENT to stat, no time is known: nothing is past the grace.
  absl::Time last_replaced = now;
  struct stat st;
  if (::stat((root + "/" + kCurrentFile).c_str(), &st) == 0) {
    last_replaced = absl::TimeFromTimespec(st.st_mtim);
  }
  GcReport report;
  const size_t n = versions.size();
  for (size_t i = 0; i + options.keep < n; ++i) {
    const uint64_t v = versions[i];
    if (current.ok() && *current == v) continue;  // Never remove the live version.
    auto it = retired.find(v);
    const absl::Time since =
        it != retired.end() && it->second.has_value() ? *it->second : last_replaced;
    if (now < since + options.grace) {
      report.held[v] = since + options.grace;
      continue;
    }
    std::error_code ec;
    fs::remove_all(VersionDir(root, v), ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("remove ", VersionDir(root, v), ": ", ec.message()));
    }
    report.removed.push_back(v);
  }
  if (!report.removed.empty()) RETURN_IF_ERROR(SyncPath(root));
  RETURN_IF_ERROR(RemoveUnreferencedSegments(root, now, options.grace, &report));
  return report;
}

}  // namespace imagesearch::snapshot
