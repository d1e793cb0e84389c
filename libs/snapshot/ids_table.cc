#include "libs/snapshot/ids_table.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "libs/common/client_text.h"
#include "libs/common/status_macros.h"
#include "libs/snapshot/byte_io.h"

namespace imagesearch::snapshot {
namespace {

using internal::LoadLE;
using internal::PutLE;

constexpr char kMagic[8] = {'I', 'S', 'I', 'D', 'S', '\0', '\0', '\1'};
constexpr size_t kHeaderSize = 32;
constexpr size_t kEntrySize = 24;

}  // namespace

absl::StatusOr<JsonlRecord> ParseJsonlRecord(absl::string_view line) {
  const nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  JsonlRecord r;
  const std::pair<const char*, std::optional<std::string>*> strings[] = {
      {"id", &r.id}, {"path", &r.path}, {"uri", &r.uri}};
  for (const auto& [name, out] : strings) {
    auto field = j.find(name);
    if (field == j.end()) continue;
    if (!field->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", name, "\" must be a string"));
    }
    *out = field->get<std::string>();
  }
  auto attrs = j.find("attributes");
  if (attrs != j.end() && !attrs->is_null()) {
    if (!attrs->is_object()) return absl::InvalidArgumentError("\"attributes\" must be an object");
    r.attributes_json = attrs->dump();
  }
  return r;
}

absl::StatusOr<std::string> EncodeIdsTable(const std::vector<IdRecord>& records) {
  const size_t n = records.size();
  for (size_t i = 0; i < n; ++i) {
    const auto& id = records[i].id;
    if (id.empty()) return absl::InvalidArgumentError(absl::StrCat("row ", i, " has an empty id"));
    if (id.size() > kMaxIdBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", i, " id is ", id.size(), " bytes; the limit is ", kMaxIdBytes));
    }
    // The API's ids and URIs are protobuf strings: clients refuse other bytes.
    if (!IsValidUtf8(id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", i, " id ", QuoteClientText(id), " is not valid UTF-8"));
    }
    if (!IsValidUtf8(records[i].uri)) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", i, " uri ", QuoteClientText(records[i].uri), " is not valid UTF-8"));
    }
  }
  std::vector<uint32_t> sorted(n);
  std::iota(sorted.begin(), sorted.end(), 0u);
  std::sort(sorted.begin(), sorted.end(),
            [&](uint32_t a, uint32_t b) { return records[a].id < records[b].id; });
  for (size_t i = 1; i < n; ++i) {
    if (records[sorted[i]].id == records[sorted[i - 1]].id) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate id ", QuoteClientText(records[sorted[i]].id), " at rows ",
                       sorted[i - 1], " and ", sorted[i]));
    }
  }
  uint64_t blob = 0;
  for (const auto& r : records) blob += r.id.size() + r.uri.size() + r.attributes_json.size();
  const size_t blob_begin = kHeaderSize + n * kEntrySize + n * 4;
  std::string out(blob_begin + blob, '\0');
  std::memcpy(&out[0], kMagic, 8);
  PutLE<uint32_t>(&out, 8, 1);
  PutLE<uint64_t>(&out, 16, n);
  PutLE<uint64_t>(&out, 24, blob);
  uint64_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& r = records[i];
    const size_t e = kHeaderSize + i * kEntrySize;
    PutLE<uint64_t>(&out, e, off);
    PutLE<uint32_t>(&out, e + 8, static_cast<uint32_t>(r.id.size()));
    PutLE<uint32_t>(&out, e + 12, static_cast<uint32_t>(r.uri.size()));
    PutLE<uint32_t>(&out, e + 16, static_cast<uint32_t>(r.attributes_json.size()));
    for (const std::string* s : {&r.id, &r.uri, &r.attributes_json}) {
      std::memcpy(&out[blob_begin + off], s->data(), s->size());
      off += s->size();
    }
  }
  for (size_t i = 0; i < n; ++i)
    PutLE<uint32_t>(&out, kHeaderSize + n * kEntrySize + i * 4, sorted[i]);
  return out;
}

absl::StatusOr<std::unique_ptr<IdsTable>> IdsTable::Open(const std::string& path,
                                                         uint64_t expected_count) {
  std::unique_ptr<IdsTable> t(new IdsTable());
  ASSIGN_OR_RETURN(t->file_, MappedFile::Open(path));
  const char* d = t->file_->data();
  const uint64_t size = t->file_->size();
  if (size < kHeaderSize) {
    return absl::DataLossError(
        absl::StrCat("ids table ", path, " is ", size, " bytes, shorter than its 32-byte header"));
  }
  if (std::memcmp(d, kMagic, 8) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ids table ", path, " has a bad magic number"));
  }
  if (LoadLE<uint32_t>(d + 8) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ids table format ", LoadLE<uint32_t>(d + 8), " is not supported"));
  }
  t->count_ = LoadLE<uint64_t>(d + 16);
  t->blob_size_ = LoadLE<uint64_t>(d + 24);
  if (t->count_ != expected_count) {
    return absl::InvalidArgumentError(absl::StrCat("ids table holds ", t->count_,
                                                   " rows but the manifest says ", expected_count));
  }
  const uint64_t want = kHeaderSize + t->count_ * (kEntrySize + 4) + t->blob_size_;
  if (size != want) {
    return absl::DataLossError(absl::StrCat("ids table ", path, " is ", size,
                                            " bytes; its header implies ", want,
                                            size < want ? " (truncated)" : ""));
  }
  t->entries_ = d + kHeaderSize;
  t->sorted_ = t->entries_ + t->count_ * kEntrySize;
  t->blob_ = t->sorted_ + t->count_ * 4;
  return t;
}

absl::StatusOr<IdView> IdsTable::Get(uint64_t row) const {
  if (row >= count_) {
    return absl::OutOfRangeError(absl::StrCat("row ", row, " is out of range (", count_, " rows)"));
  }
  const char* e = entries_ + row * kEntrySize;
  const uint64_t off = LoadLE<uint64_t>(e);
  const uint64_t id_len = LoadLE<uint32_t>(e + 8);
  const uint64_t uri_len = LoadLE<uint32_t>(e + 12);
  const uint64_t attrs_len = LoadLE<uint32_t>(e + 16);
  if (off > blob_size_ || id_len + uri_len + attrs_len > blob_size_ - off) {
    return absl::DataLossError(absl::StrCat("ids table entry ", row, " points outside the blob"));
  }
  const char* p = blob_ + off;
  return IdView{absl::string_view(p, id_len), absl::string_view(p + id_len, uri_len),
                absl::string_view(p + id_len + uri_len, attrs_len)};
}

void IdsTable::PrefetchEntry(uint64_t row) const {
  if (row < count_) __builtin_prefetch(entries_ + row * kEntrySize);
}

void IdsTable::PrefetchText(uint64_t row) const {
  if (row >= count_) return;
  const uint64_t off = LoadLE<uint64_t>(entries_ + row * kEntrySize);
  if (off < blob_size_) __builtin_prefetch(blob_ + off);
}

std::optional<uint32_t> IdsTable::Find(absl::string_view id) const {
  uint64_t lo = 0, hi = count_;
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    const uint32_t row = LoadLE<uint32_t>(sorted_ + mid * 4);
    auto view = Get(row);
    if (!view.ok()) return std::nullopt;
    const int c = view->id.compare(id);
    if (c == 0) return row;
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return std::nullopt;
}

}  // namespace imagesearch::snapshot
