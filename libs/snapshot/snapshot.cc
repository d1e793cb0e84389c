#include "libs/snapshot/snapshot.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::snapshot {

absl::StatusOr<std::shared_ptr<const Snapshot>> Snapshot::Open(const std::string& root,
                                                               uint64_t version,
                                                               VerifyMode mode) {
  return OpenDir(VersionDir(root, version), mode, version);
}

absl::StatusOr<std::shared_ptr<const Snapshot>> Snapshot::OpenDir(
    const std::string& dir, VerifyMode mode, std::optional<uint64_t> version) {
  std::shared_ptr<Snapshot> s(new Snapshot());
  s->dir_ = dir;
  auto text = ReadFileToString(s->dir_ + "/" + kManifestFile);
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat("snapshot ", s->dir_, ": ", text.status().message()));
  }
  auto manifest = ParseManifest(*text);
  if (!manifest.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot ", s->dir_, ": ", manifest.status().message()));
  }
  s->manifest_ = std::move(*manifest);
  const Manifest& m = s->manifest_;
  auto fail = [&](absl::Status st) {
    return absl::Status(st.code(), absl::StrCat("snapshot ", s->dir_, ": ", st.message()));
  };
  if (version.has_value() && m.version != *version) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("manifest says version ", m.version, ", directory is ", *version)));
  }
  for (const char* required : {kGraphFile, kOffsetsFile, kIdsFile}) {
    if (!m.files.count(required)) {
      return fail(absl::InvalidArgumentError(absl::StrCat("manifest does not list ", required)));
    }
  }
  if (!m.model.name.empty() && !m.files.count(m.model.file)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("manifest names model file '", m.model.file, "' but does not list it")));
  }
  for (const auto& [name, entry] : m.files) {
    const std::string path = s->dir_ + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      return fail(absl::DataLossError(absl::StrCat(name, " is listed in the manifest but missing")));
    }
    if (static_cast<uint64_t>(st.st_size) != entry.size) {
      return fail(absl::DataLossError(absl::StrCat(name, " is ", st.st_size,
                                                   " bytes but the manifest says ", entry.size,
                                                   static_cast<uint64_t>(st.st_size) < entry.size
                                                       ? " (truncated)"
                                                       : "")));
    }
    if (mode == VerifyMode::kChecksums) {
      auto sum = Xxh3HexOfFile(path);
      if (!sum.ok()) return fail(sum.status());
      if (*sum != entry.xxh3) {
        return fail(absl::DataLossError(absl::StrCat(name, " checksum is ", *sum,
                                                     " but the manifest says ", entry.xxh3,
                                                     " (corrupt)")));
      }
    }
  }
  auto searcher = index::MmapHnswSearcher::Open(
      s->dir_ + "/" + kGraphFile, s->dir_ + "/" + kOffsetsFile, m.dim, m.metric, m.count,
      m.files.count(kHalfVectorsFile) ? s->dir_ + "/" + kHalfVectorsFile : "");
  if (!searcher.ok()) return fail(searcher.status());
  s->searcher_ = std::move(*searcher);
  auto ids = IdsTable::Open(s->dir_ + "/" + kIdsFile, m.count);
  if (!ids.ok()) return fail(ids.status());
  s->ids_ = std::move(*ids);
  if (m.files.count(kThumbsFile)) {
    auto thumbs = ThumbsTable::Open(s->dir_ + "/" + kThumbsFile, m.count);
    if (!thumbs.ok()) return fail(thumbs.status());
    s->thumbs_ = std::move(*thumbs);
  }
  if (m.files.count(kAttributesFile)) {
    auto attributes = AttributeTable::Open(s->dir_ + "/" + kAttributesFile, m.count);
    if (!attributes.ok()) return fail(attributes.status());
    s->attributes_ = std::move(*attributes);
  }
  return std::shared_ptr<const Snapshot>(std::move(s));
}

std::string Snapshot::model_path() const {
  if (manifest_.model.name.empty()) return "";
  return dir_ + "/" + manifest_.model.file;
}

}  // namespace imagesearch::snapshot
