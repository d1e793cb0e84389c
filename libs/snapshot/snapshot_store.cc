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

// Points CURRENT at `version`, then records it in HISTORY. The caller holds
// the root lock. In this order a failure can only leave a version out of
// HISTORY (a fallback then picks an older one), never list one that was not
// made live. A failed append is logged, not returned: CURRENT has moved.
absl::Status MakeCurrent(const std::string& root, uint64_t version) {
  RETURN_IF_ERROR(ReplaceFileAtomically(root + "/" + kCurrentFile, VersionDirName(version) + "\n"));
  if (absl::Status s =
          AppendFileDurably(root + "/" + kHistoryFile, VersionDirName(version) + "\n");
      !s.ok()) {
    LogError("CURRENT is ", VersionDirName(version), " but ", root, "/HISTORY was not updated: ",
             s.ToString());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<uint64_t>> PromotionHistory(const std::string& root) {
  auto text = ReadFileToString(root + "/" + kHistoryFile);
  if (absl::IsNotFound(text.status())) return std::vector<uint64_t>();
  if (!text.ok()) return text.status();
  std::vector<absl::string_view> lines = absl::StrSplit(*text, '\n');
  lines.pop_back();  // What follows the last newline: empty, or a torn append.
  std::vector<uint64_t> history;  // Newest first: walk the log backwards.
  for (auto line = lines.rbegin(); line != lines.rend(); ++line) {
    auto v = ParseVersionName(absl::StripAsciiWhitespace(*line));
    if (v.ok() && std::find(history.begin(), history.end(), *v) == history.end()) {
      history.push_back(*v);
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
  auto manifest_text = ReadFileToString(dir + "/" + kManifestFile);
  if (!manifest_text.ok()) {
    return absl::NotFoundError(absl::StrCat("version ", VersionDirName(version),
                                            " does not exist under ", root));
  }
  auto manifest = ParseManifest(*manifest_text);
  if (!manifest.ok()) return manifest.status();
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

absl::StatusOr<std::vector<uint64_t>> GarbageCollect(const std::string& root, size_t keep) {
  ASSIGN_OR_RETURN(auto lock, RootLock::Acquire(root));
  RemoveStaleTempDirs(root);
  ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(root));
  auto current = ReadCurrentVersion(root);
  std::vector<uint64_t> removed;
  const size_t n = versions.size();
  for (size_t i = 0; i + keep < n; ++i) {
    const uint64_t v = versions[i];
    if (current.ok() && *current == v) continue;  // Never remove the live version.
    std::error_code ec;
    fs::remove_all(VersionDir(root, v), ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("remove ", VersionDir(root, v), ": ", ec.message()));
    }
    removed.push_back(v);
  }
  if (!removed.empty()) RETURN_IF_ERROR(SyncPath(root));
  return removed;
}

}  // namespace imagesearch::snapshot
