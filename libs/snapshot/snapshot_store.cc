#include "libs/snapshot/snapshot_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
#include "libs/index/half_vectors.h"
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
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".tmp-", 0) == 0) fs::remove_all(entry.path(), ec);
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
    LogError("CURRENT is ", VersionDirName(version), " but ", root, "/HISTORY was not updated: ",
             s.ToString());
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
  auto text = ReadFileToString(root + "/" + kCurrentFile);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(absl::StrCat("no snapshot published under ", root,
                                              " yet (", root, "/CURRENT does not exist)"));
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

absl::StatusOr<uint64_t> PublishSnapshot(const std::string& root, const SnapshotInput& input,
                                         const PublishOptions& options) {
  auto hook = [&](absl::string_view step) {
    if (options.fault_hook) options.fault_hook(step);
  };
  if (input.dim <= 0) return absl::InvalidArgumentError("dim must be positive");
  if (input.ids.size() != input.count) {
    return absl::InvalidArgumentError(absl::StrCat("got ", input.count, " vectors but ",
                                                   input.ids.size(), " ids"));
  }
  if (input.count == 0) return absl::InvalidArgumentError("refusing to publish an empty snapshot");
  if (!input.graph) return absl::InvalidArgumentError("no graph writer: SnapshotInput.graph is unset");
  if (!input.schema.empty() && input.attributes.size() != input.count) {
    return absl::InvalidArgumentError(absl::StrCat("got ", input.count, " vectors but ",
                                                   input.attributes.size(), " attribute rows"));
  }
  if (!input.thumbnails.empty() && input.thumbnails.size() != input.count) {
    return absl::InvalidArgumentError(absl::StrCat("got ", input.count, " vectors but ",
                                                   input.thumbnails.size(), " thumbnails"));
  }
  RETURN_IF_ERROR(EnsureDir(root));
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  RemoveStaleTempDirs(root);
  ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(root));
  const uint64_t version = versions.empty() ? 1 : versions.back() + 1;
  const std::string tmp = absl::StrCat(root, "/.tmp-", VersionDirName(version), "-", ::getpid());
  RETURN_IF_ERROR(EnsureDir(tmp));

  Manifest m;
  m.version = version;
  m.base_version = input.base_version;
  m.created_at = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  m.dim = input.dim;
  m.metric = input.metric;
  m.count = input.count;
  m.hnsw_m = input.hnsw.m;
  m.hnsw_ef_construction = input.hnsw.ef_construction;
  m.default_ef = input.default_ef;

  auto status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::string ids, EncodeIdsTable(input.ids));
    RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + kIdsFile, ids));
    if (!input.schema.empty()) {
      RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + kAttributesFile,
                                       EncodeAttributeTable(input.schema, input.attributes)));
    }
    if (!input.thumbnails.empty()) {
      RETURN_IF_ERROR(
          WriteFileDurably(tmp + "/" + kThumbsFile, EncodeThumbsTable(input.thumbnails)));
    }
    RETURN_IF_ERROR(input.graph(tmp + "/" + kGraphFile, tmp + "/" + kOffsetsFile));
    if (input.half_vectors.value_or(input.dim >= kHalfVectorsMinDim)) {
      RETURN_IF_ERROR(index::WriteHalfVectors(tmp + "/" + kGraphFile, input.dim, input.metric,
                                              tmp + "/" + kHalfVectorsFile));
    }
    if (!input.model_path.empty()) {
      m.model = input.model;
      m.model.file = kModelFile;
      ASSIGN_OR_RETURN(m.model.sha256, Sha256HexOfFile(input.model_path));
      RETURN_IF_ERROR(CopyFileDurably(input.model_path, tmp + "/" + kModelFile));
    }
    for (const auto& [name, contents] : input.extra_files) {
      // Every name the store writes itself is reserved, whether or not this
      // version has that file: an extra file must never stand in for one.
      static const char* const kReserved[] = {kManifestFile, kGraphFile,  kOffsetsFile,
                                              kHalfVectorsFile, kIdsFile, kModelFile,
                                              kThumbsFile,   kAttributesFile};
      bool reserved = false;
      for (const char* r : kReserved) reserved = reserved || name == r;
      if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' || reserved) {
        return absl::InvalidArgumentError(absl::StrCat("bad extra file name '", name, "'"));
      }
      RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + name, contents));
    }
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(tmp, ec)) {
      const std::string name = entry.path().filename().string();
      FileEntry fe;
      fe.size = entry.file_size();
      ASSIGN_OR_RETURN(fe.xxh3, Xxh3HexOfFile(entry.path().string()));
      m.files[name] = fe;
    }
    if (ec) return absl::InternalError(absl::StrCat("list ", tmp, ": ", ec.message()));
    hook("built");
    RETURN_IF_ERROR(WriteFileDurably(tmp + "/" + kManifestFile, ManifestToJson(m)));
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
  }();
  if (!status.ok()) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    return status;
  }
  return version;
}

absl::Status SetCurrentVersion(const std::string& root, uint64_t version) {
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  const std::string dir = VersionDir(root, version);
  struct stat st;
  if (::stat((dir + "/" + kManifestFile).c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("version ", VersionDirName(version),
                                            " does not exist under ", root));
  }
  // What a replica would refuse (a copy whose manifest names another
  // version, a missing or truncated file) never becomes CURRENT.
  auto snap = Snapshot::Open(root, version, VerifyMode::kSizes);
  if (!snap.ok()) {
    return absl::Status(snap.status().code(),
                        absl::StrCat("refusing to make ", VersionDirName(version), " CURRENT: ",
                                     snap.status().message()));
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
    return absl::FailedPreconditionError(absl::StrCat(
        "CURRENT is ", VersionDirName(current), " and no older version is left under ", root,
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

absl::StatusOr<GcReport> GarbageCollect(const std::string& root, const GcOptions& options) {
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  RemoveStaleTempDirs(root);
  ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(root));
  auto current = ReadCurrentVersion(root);
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
      return absl::InternalError(
          absl::StrCat("remove ", VersionDir(root, v), ": ", ec.message()));
    }
    report.removed.push_back(v);
  }
  if (!report.removed.empty()) RETURN_IF_ERROR(SyncPath(root));
  return report;
}

}  // namespace imagesearch::snapshot
