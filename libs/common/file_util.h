// Small POSIX file helpers used by the snapshot writer and reader: whole-file
// reads, durable (fsync'd) atomic replacement, read-only memory maps, and
// content checksums. All functions are thread-safe; a MappedFile is immutable
// once opened and may be read from any number of threads.
#ifndef IMAGESEARCH_LIBS_COMMON_FILE_UTIL_H_
#define IMAGESEARCH_LIBS_COMMON_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace imagesearch {

// Reads a whole file. NOT_FOUND if it does not exist.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);
// Reads a whole regular file of at most `max_bytes` bytes, checked before
// anything is read: INVALID_ARGUMENT for a directory, device or FIFO, or a
// file over the limit. NOT_FOUND / PERMISSION_DENIED as ErrnoStatus says.
absl::StatusOr<std::string> ReadFileToString(const std::string& path, int64_t max_bytes);

// Writes `contents` to `path` and fsyncs the file (not its directory).
absl::Status WriteFileDurably(const std::string& path, absl::string_view contents);

// Writes to `path` what `produce` hands to the append function it is given
// (buffered, so small pieces cost no syscall each), then fsyncs the file: a
// file too big to build in memory first. An error from `produce` or from
// the writes is returned, and the file is then incomplete.
using AppendFn = std::function<absl::Status(absl::string_view)>;
absl::Status WriteFileDurablyStreamed(const std::string& path,
                                      const std::function<absl::Status(const AppendFn&)>& produce);

// Replaces `path` atomically: writes a temp file beside it, fsyncs it, renames
// it over `path`, then fsyncs the directory. A crash leaves either the old or
// the new contents, never a mix.
absl::Status ReplaceFileAtomically(const std::string& path, absl::string_view contents);

// A --port_file: its directory made first where missing (as `mkdir -p`;
// /run/imagesearch on a fresh machine), then ReplaceFileAtomically.
absl::Status WritePortFile(const std::string& path, absl::string_view contents);

// Copies `from` to `to` (replacing it) and fsyncs `to`. Errors carry errno's
// own text and code (ENOSPC: RESOURCE_EXHAUSTED "No space left on device").
absl::Status CopyFileDurably(const std::string& from, const std::string& to);

// Appends `contents` to `path` (created if missing) and fsyncs it.
absl::Status AppendFileDurably(const std::string& path, absl::string_view contents);

// fsyncs a file or directory by path.
absl::Status SyncPath(const std::string& path);

// A read-only, shared memory map of a whole file.
class MappedFile {
 public:
  enum class Access {
    kDefault,
    // Walked at random, all of it, for as long as it is mapped (a graph's
    // vectors): the mapping is advised MADV_HUGEPAGE. Where the page cache
    // holds the file in 2 MiB folios (on Linux 6.18 with ext4, measured
    // here: a file written or read in whole, or faulted in under this
    // advice), they are mapped with 2 MiB pages, so a search misses the TLB
    // once per 2 MiB rather than at nearly every vector: at 1M x 512 the
    // ingest service's link searches cost a fifth of their CPU on 4 KiB
    // pages, and a replica serves 1.13-1.18x the QPS (tools/bench/results/
    // LOG.md, "Huge pages for the graph"). The price: a fault on a cold
    // file reads the 2 MiB blocks around it (up to 4 MiB, also where the
    // file system cannot cache large folios), which a replica under a tight
    // memory limit pays for in page cache.
    kRandomWhole,
  };
  // Maps `path`. An empty file maps to size() == 0 and data() == nullptr.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path,
                                                          Access access = Access::kDefault);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const char* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const char* data_;
  size_t size_;
};

// XXH3-64 of `data`, as 16 lowercase hex digits. Fast (memory bandwidth), used
// for snapshot file integrity; not a cryptographic hash.
std::string Xxh3Hex(absl::string_view data);
// XXH3-64 of a file's contents, streamed.
absl::StatusOr<std::string> Xxh3HexOfFile(const std::string& path);
// SHA-256 of a file's contents, as 64 lowercase hex digits (model identity).
absl::StatusOr<std::string> Sha256HexOfFile(const std::string& path);

// Errno as an absl::Status with `what` prepended, e.g. "open /x: No such file":
// NOT_FOUND (ENOENT, ENOTDIR), PERMISSION_DENIED (EACCES, EPERM),
// RESOURCE_EXHAUSTED (ENOSPC, EDQUOT), INTERNAL otherwise.
absl::Status ErrnoStatus(int err, absl::string_view what);

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_COMMON_FILE_UTIL_H_
