#include "libs/snapshot/snapshot.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/deletes.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::snapshot {
namespace {

// A segment manifest's XXH3 (16 hex digits) as a number: what names a
// segment's rows and links to JointGraph::Join. 0 if it does not parse.
uint64_t ChecksumKey(const std::string& xxh3_hex) {
  uint64_t key = 0;
  return absl::SimpleHexAtoi(xxh3_hex, &key) ? key : 0;
}

// Whether `a` and `b` are the same file (a hard link shared by two versions).
bool SameInode(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// The version files to verify: with kChecksums, a file `reuse` already
// verified (same name, same recorded checksum, same inode: a hard link) is
// checked for its size only.
absl::Status VerifyVersionFiles(const std::string& dir, const Manifest& m, VerifyMode mode,
                                const Snapshot* reuse) {
  if (mode == VerifyMode::kSizes || reuse == nullptr) return VerifyFiles(dir, m.files, mode);
  std::map<std::string, FileEntry> full, sizes;
  for (const auto& [name, entry] : m.files) {
    auto old = reuse->manifest().files.find(name);
    const bool known = old != reuse->manifest().files.end() && old->second.xxh3 == entry.xxh3 &&
                       old->second.size == entry.size &&
                       SameInode(dir + "/" + name, reuse->dir() + "/" + name);
    (known ? sizes : full)[name] = entry;
  }
  RETURN_IF_ERROR(VerifyFiles(dir, sizes, VerifyMode::kSizes));
  return VerifyFiles(dir, full, mode);
}

// <dir>/../segments, spelled without "..": the root's segments directory.
std::string RootSegmentsDir(const std::string& version_dir) {
  std::filesystem::path p = std::filesystem::path(version_dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // A trailing slash.
  return (p.parent_path() / kSegmentsDir).string();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Snapshot>> Snapshot::Open(const std::string& root,
                                                               uint64_t version, VerifyMode mode,
                                                               const Snapshot* reuse) {
  return OpenDir(VersionDir(root, version), mode, version, reuse);
}

absl::StatusOr<std::shared_ptr<const Snapshot>> Snapshot::OpenDir(const std::string& dir,
                                                                  VerifyMode mode,
                                                                  std::optional<uint64_t> version,
                                                                  const Snapshot* reuse) {
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
  if (m.format == kSingleGraphFormat) {
    // The whole directory is one segment (a version written before segments).
    auto segment = Segment::OpenWithManifest(dir, m, mode);
    if (!segment.ok()) return fail(segment.status());
    SegmentRef ref;
    ref.segment = std::move(*segment);
    ref.opened_here = true;
    s->segments_.push_back(std::move(ref));
  } else {
    if (!m.model.name.empty() && !m.files.count(m.model.file)) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("manifest names model file '", m.model.file, "' but does not list it")));
    }
    if (absl::Status st = VerifyVersionFiles(dir, m, mode, reuse); !st.ok()) return fail(st);
    // Segments are in the root's segments/ (<dir>/../segments), or inside
    // the version dir for an exported, self-contained version.
    struct stat st;
    const std::string inside = dir + "/" + kSegmentsDir;
    const std::string segments_dir =
        ::stat(inside.c_str(), &st) == 0 ? inside : RootSegmentsDir(dir);
    for (const SegmentEntry& e : m.segments) {
      SegmentRef ref;
      ref.name = e.name;
      const std::string seg_dir = segments_dir + "/" + e.name;
      if (reuse != nullptr) {
        for (const SegmentRef& old : reuse->segments()) {
          if (old.name == e.name && old.segment->manifest().manifest_xxh3 == e.manifest_xxh3) {
            ref.segment = old.segment;
          }
        }
      }
      if (ref.segment == nullptr) {
        auto segment = Segment::Open(seg_dir, mode);
        if (!segment.ok()) {
          return fail(
              absl::Status(segment.status().code(),
                           absl::StrCat("segment ", e.name, ": ", segment.status().message())));
        }
        ref.segment = std::move(*segment);
        ref.opened_here = true;
      }
      const Manifest& sm = ref.segment->manifest();
      if (sm.manifest_xxh3 != e.manifest_xxh3) {
        return fail(absl::DataLossError(absl::StrCat("segment '", e.name,
                                                     "' has manifest checksum ", sm.manifest_xxh3,
                                                     " but the version says ", e.manifest_xxh3)));
      }
      if (sm.count != e.rows || sm.dim != m.dim || sm.metric != m.metric) {
        return fail(absl::DataLossError(
            absl::StrCat("segment '", e.name, "' holds ", sm.count, " rows of dim ", sm.dim, " (",
                         index::MetricName(sm.metric), "); the version says ", e.rows,
                         " rows of dim ", m.dim, " (", index::MetricName(m.metric), ")")));
      }
      if (e.deleted > 0) {
        auto bytes = ReadFileToString(dir + "/" + e.deletes_file);
        if (!bytes.ok()) return fail(bytes.status());
        auto deleted = DecodeDeletes(*bytes, e.rows);
        if (!deleted.ok()) {
          return fail(absl::Status(deleted.status().code(),
                                   absl::StrCat(e.deletes_file, ": ", deleted.status().message())));
        }
        if (deleted->Count() != e.deleted) {
          return fail(
              absl::DataLossError(absl::StrCat(e.deletes_file, " deletes ", deleted->Count(),
                                               " rows; the manifest says ", e.deleted)));
        }
        ref.deleted = std::make_shared<const index::RowFilter>(std::move(*deleted));
        ref.deleted_count = e.deleted;
      }
      s->segments_.push_back(std::move(ref));
    }
  }
  uint64_t rows = 0;
  bool any_deleted = false;
  for (SegmentRef& ref : s->segments_) {
    ref.base = static_cast<uint32_t>(rows);
    rows += ref.segment->rows();
    any_deleted = any_deleted || ref.deleted != nullptr;
    s->has_thumbnails_ = s->has_thumbnails_ || ref.segment->thumbs() != nullptr;
    if (ref.segment->attributes() != nullptr) s->schema_table_ = ref.segment->attributes();
  }
  if (rows > UINT32_MAX) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("the segments hold ", rows, " rows; one version holds at most ", UINT32_MAX)));
  }
  s->rows_ = rows;
  s->JoinLinkedTails(reuse);
  if (any_deleted) {
    auto live = std::make_shared<index::RowFilter>(rows, /*all=*/true);
    for (const SegmentRef& ref : s->segments_) {
      if (ref.deleted != nullptr) {
        ref.deleted->ForEach([&](uint32_t r) { live->Disallow(ref.base + r); });
      }
    }
    s->live_ = std::move(live);
  }
  return std::shared_ptr<const Snapshot>(std::move(s));
}

void Snapshot::JoinLinkedTails(const Snapshot* reuse) {
  std::map<size_t, std::vector<size_t>> tails_of;  // Big segment -> the tails linked to it.
  for (size_t t = 0; t < segments_.size(); ++t) {
    const Segment& tail = *segments_[t].segment;
    const SegmentLinks& links = tail.manifest().links;
    if (tail.link_rows() == nullptr) continue;
    for (size_t b = 0; b < segments_.size(); ++b) {
      if (b != t && LinksReach(links, segments_[b].name, segments_[b].segment->manifest())) {
        tails_of[b].push_back(t);
      }
    }
  }
  if (tails_of.empty()) return;
  size_t big = tails_of.begin()->first;
  for (const auto& [b, tails] : tails_of) {
    if (segments_[b].segment->rows() > segments_[big].segment->rows()) big = b;
  }
  joint_.big = big;
  joint_.tails = tails_of[big];
  // The previous version's graph, if it built one over the same segments
  // (read without building it: only once it is built is it immutable).
  const JointSegments* old = reuse != nullptr && reuse->joint_built_.load(std::memory_order_acquire)
                                 ? &reuse->joint_
                                 : nullptr;
  bool same = old != nullptr && old->graph != nullptr &&
              reuse->segments()[old->big].segment == segments_[big].segment &&
              old->tails.size() == joint_.tails.size();
  for (size_t i = 0; same && i < joint_.tails.size(); ++i) {
    same = reuse->segments()[old->tails[i]].segment == segments_[joint_.tails[i]].segment;
  }
  if (same) {
    joint_.graph = old->graph;
    joint_built_.store(true, std::memory_order_release);
  } else if (old != nullptr) {
    joint_previous_ = old->graph;
  }
}

void Snapshot::BuildJoint() const {
  absl::MutexLock lock(&joint_mu_);
  if (joint_built_.load(std::memory_order_relaxed)) return;
  std::vector<index::JointGraph::Tail> tails;
  for (size_t t : joint_.tails) {
    const Segment& tail = *segments_[t].segment;
    const Manifest& m = tail.manifest();
    index::JointGraph::Tail j{&tail.searcher(), tail.link_rows(), m.links.per_row};
    j.key = ChecksumKey(m.manifest_xxh3);
    if (!m.extends.empty()) {
      j.extends_key = ChecksumKey(m.extends.front().manifest_xxh3);
      j.extends_rows = m.extends.front().rows;
    }
    tails.push_back(j);
  }
  const Segment& big = *segments_[joint_.big].segment;
  joint_.graph = index::JointGraph::Join(
      big.searcher(), tails, ChecksumKey(big.manifest().manifest_xxh3), joint_previous_.get());
  joint_previous_.reset();
  joint_built_.store(true, std::memory_order_release);
}

std::pair<const SegmentRef*, uint32_t> Snapshot::Locate(uint32_t row) const {
  // The last segment whose base is <= row.
  auto it = std::upper_bound(segments_.begin(), segments_.end(), row,
                             [](uint32_t r, const SegmentRef& s) { return r < s.base; });
  const SegmentRef* ref = &*(it - 1);
  return {ref, row - ref->base};
}

std::optional<uint32_t> Snapshot::Find(absl::string_view id) const {
  // Newest first: an id re-added lives in a newer segment than its old row.
  for (auto it = segments_.rbegin(); it != segments_.rend(); ++it) {
    auto row = it->segment->ids().Find(id);
    if (row.has_value() && (it->deleted == nullptr || !it->deleted->Allows(*row))) {
      return it->base + *row;
    }
  }
  return std::nullopt;
}

const float* Snapshot::Vector(uint32_t row) const {
  auto [ref, local] = Locate(row);
  return ref->segment->searcher().Vector(local);
}

absl::StatusOr<IdView> Snapshot::Id(uint32_t row) const {
  if (row >= rows_) {
    return absl::OutOfRangeError(absl::StrCat("row ", row, " of ", rows_));
  }
  auto [ref, local] = Locate(row);
  return ref->segment->ids().Get(local);
}

void Snapshot::PrefetchEntry(uint32_t row) const {
  if (row >= rows_) return;
  auto [ref, local] = Locate(row);
  ref->segment->ids().PrefetchEntry(local);
}

void Snapshot::PrefetchText(uint32_t row) const {
  if (row >= rows_) return;
  auto [ref, local] = Locate(row);
  ref->segment->ids().PrefetchText(local);
}

absl::StatusOr<absl::string_view> Snapshot::Thumbnail(uint32_t row) const {
  if (row >= rows_) {
    return absl::OutOfRangeError(absl::StrCat("row ", row, " of ", rows_));
  }
  auto [ref, local] = Locate(row);
  if (ref->segment->thumbs() == nullptr) return absl::string_view();
  return ref->segment->thumbs()->Get(local);
}

std::string Snapshot::model_path() const {
  if (manifest_.model.name.empty()) return "";
  return dir_ + "/" + manifest_.model.file;
}

}  // namespace imagesearch::snapshot
