#include "libs/snapshot/segment.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::snapshot {

absl::Status VerifyFiles(const std::string& dir, const std::map<std::string, FileEntry>& files,
                         VerifyMode mode) {
  for (const auto& [name, entry] : files) {
    const std::string path = dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      return absl::DataLossError(absl::StrCat(name, " is listed in the manifest but missing"));
    }
    if (static_cast<uint64_t>(st.st_size) != entry.size) {
      return absl::DataLossError(
          absl::StrCat(name, " is ", st.st_size, " bytes but the manifest says ", entry.size,
                       static_cast<uint64_t>(st.st_size) < entry.size ? " (truncated)" : ""));
    }
    if (mode == VerifyMode::kChecksums) {
      ASSIGN_OR_RETURN(std::string sum, Xxh3HexOfFile(path));
      if (sum != entry.xxh3) {
        return absl::DataLossError(absl::StrCat(
            name, " checksum is ", sum, " but the manifest says ", entry.xxh3, " (corrupt)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Segment>> Segment::Open(const std::string& dir,
                                                             VerifyMode mode) {
  auto text = ReadFileToString(dir + "/" + kManifestFile);
  if (!text.ok()) return absl::NotFoundError(text.status().message());
  auto manifest = ParseManifest(*text);
  if (!manifest.ok()) return absl::InvalidArgumentError(manifest.status().message());
  if (manifest->format != kSingleGraphFormat) {
    return absl::InvalidArgumentError(absl::StrCat(
        "manifest format ", manifest->format, " is not a segment's (", kSingleGraphFormat, ")"));
  }
  return OpenWithManifest(dir, std::move(*manifest), mode);
}

absl::StatusOr<std::shared_ptr<const Segment>> Segment::OpenWithManifest(const std::string& dir,
                                                                         Manifest manifest,
                                                                         VerifyMode mode) {
  std::shared_ptr<Segment> s(new Segment());
  s->dir_ = dir;
  s->manifest_ = std::move(manifest);
  const Manifest& m = s->manifest_;
  auto fail = [](absl::Status st) { return st; };
  for (const char* required : {kGraphFile, kOffsetsFile, kIdsFile}) {
    if (!m.files.count(required)) {
      return fail(absl::InvalidArgumentError(absl::StrCat("manifest does not list ", required)));
    }
  }
  if (!m.model.name.empty() && !m.files.count(m.model.file)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("manifest names model file '", m.model.file, "' but does not list it")));
  }
  if (absl::Status st = VerifyFiles(dir, m.files, mode); !st.ok()) return fail(st);
  auto searcher = index::MmapHnswSearcher::Open(
      dir + "/" + kGraphFile, dir + "/" + kOffsetsFile, m.dim, m.metric, m.count,
      m.files.count(kHalfVectorsFile) ? dir + "/" + kHalfVectorsFile : "");
  if (!searcher.ok()) return fail(searcher.status());
  s->searcher_ = std::move(*searcher);
  auto ids = IdsTable::Open(dir + "/" + kIdsFile, m.count);
  if (!ids.ok()) return fail(ids.status());
  s->ids_ = std::move(*ids);
  if (m.files.count(kThumbsFile)) {
    auto thumbs = ThumbsTable::Open(dir + "/" + kThumbsFile, m.count);
    if (!thumbs.ok()) return fail(thumbs.status());
    s->thumbs_ = std::move(*thumbs);
  }
  if (m.files.count(kAttributesFile)) {
    auto attributes = AttributeTable::Open(dir + "/" + kAttributesFile, m.count);
    if (!attributes.ok()) return fail(attributes.status());
    s->attributes_ = std::move(*attributes);
  }
  if (m.links.per_row > 0) {
    const auto it = m.files.find(kLinksFile);
    if (it == m.files.end()) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "manifest links to segment '", m.links.segment, "' but lists no ", kLinksFile)));
    }
    const uint64_t want = m.count * m.links.per_row * sizeof(uint32_t);
    if (it->second.size != want) {
      return fail(
          absl::DataLossError(absl::StrCat(kLinksFile, " is ", it->second.size, " bytes; ", m.count,
                                           " rows x ", m.links.per_row, " links need ", want)));
    }
    if (want > 0) {
      auto links = MappedFile::Open(dir + "/" + kLinksFile);
      if (!links.ok()) return fail(links.status());
      if ((*links)->size() != want) {
        return fail(absl::DataLossError(
            absl::StrCat(kLinksFile, " is ", (*links)->size(), " bytes, expected ", want)));
      }
      s->links_ = std::move(*links);
    }
  }
  return std::shared_ptr<const Segment>(std::move(s));
}

}  // namespace imagesearch::snapshot
