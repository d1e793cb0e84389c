#include "libs/common/file_util.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "libs/common/status_macros.h"

namespace imagesearch {
namespace {

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string HexOf(const unsigned char* bytes, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

// Streams a file through `consume` in 1 MiB chunks.
template <typename Consume>
absl::Status StreamFile(const std::string& path, Consume consume) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  // Sized to the file (one read, and one more to see its end), at most
  // 1 MiB, and not zeroed: CURRENT, a few bytes, is read several times a
  // second by every replica and the ingest service.
  struct stat st;
  const size_t size = ::fstat(fd.get(), &st) == 0 && st.st_size > 0
                          ? static_cast<size_t>(st.st_size) + 1
                          : size_t{64} << 10;  // /proc and pipes say 0.
  const size_t cap = std::min<size_t>(size, size_t{1} << 20);
  std::unique_ptr<char[]> buf(new char[cap]);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.get(), cap);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("read ", path));
    }
    if (n == 0) return absl::OkStatus();
    consume(buf.get(), static_cast<size_t>(n));
  }
}

}  // namespace

absl::Status ErrnoStatus(int err, absl::string_view what) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::string out;
  absl::Status s = StreamFile(path, [&](const char* p, size_t n) { out.append(p, n); });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path, int64_t max_bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (st.st_size > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": file is ", st.st_size, " bytes, over the limit of ", max_bytes, " bytes"));
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("read ", path));
    }
    if (n == 0) break;  // the file shrank while we read it
    done += static_cast<size_t>(n);
  }
  data.resize(done);
  return data;
}

namespace {

// Writes all of [p, p + n) to `fd`; errors name `path`.
absl::Status WriteAll(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("write ", path));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// fsyncs and closes `fd` (which `path` names), reporting either failure.
absl::Status SyncAndClose(Fd& fd, const std::string& path) {
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, absl::StrCat("fsync ", path));
  if (::close(fd.Release()) != 0) return ErrnoStatus(errno, absl::StrCat("close ", path));
  return absl::OkStatus();
}

// Opens `path` for writing with `flags` (O_TRUNC or O_APPEND), writes what
// `write` writes into it, then fsyncs it.
template <typename Write>
absl::Status WriteDurably(const std::string& path, int flags, Write write) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644));
  if (fd.get() < 0) return ErrnoStatus(errno, absl::StrCat("open ", path, " for writing"));
  absl::Status s = write(fd.get());
  if (!s.ok()) return s;
  return SyncAndClose(fd, path);
}

}  // namespace

absl::Status WriteFileDurably(const std::string& path, absl::string_view contents) {
  return WriteDurably(path, O_TRUNC,
                      [&](int fd) { return WriteAll(fd, contents.data(), contents.size(), path); });
}

absl::Status WriteFileDurablyStreamed(const std::string& path,
                                      const std::function<absl::Status(const AppendFn&)>& produce) {
  constexpr size_t kBuffer = 1 << 20;
  return WriteDurably(path, O_TRUNC, [&](int fd) {
    std::string buffer;
    buffer.reserve(kBuffer);
    RETURN_IF_ERROR(produce([&](absl::string_view piece) -> absl::Status {
      if (buffer.size() + piece.size() > kBuffer) {
        RETURN_IF_ERROR(WriteAll(fd, buffer.data(), buffer.size(), path));
        buffer.clear();
        if (piece.size() > kBuffer) return WriteAll(fd, piece.data(), piece.size(), path);
      }
      buffer.append(piece.data(), piece.size());
      return absl::OkStatus();
    }));
    return WriteAll(fd, buffer.data(), buffer.size(), path);
  });
}

absl::Status AppendFileDurably(const std::string& path, absl::string_view contents) {
  return WriteDurably(path, O_APPEND,
                      [&](int fd) { return WriteAll(fd, contents.data(), contents.size(), path); });
}

absl::Status CopyFileDurably(const std::string& from, const std::string& to) {
  return WriteDurably(to, O_TRUNC, [&](int fd) {
    absl::Status write_status;
    absl::Status read_status = StreamFile(from, [&](const char* p, size_t n) {
      if (write_status.ok()) write_status = WriteAll(fd, p, n, to);
    });
    return read_status.ok() ? write_status : read_status;
  });
}

absl::Status SyncPath(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, absl::StrCat("fsync ", path));
  return absl::OkStatus();
}

absl::Status WritePortFile(const std::string& path, absl::string_view contents) {
  const std::string dir = DirName(path);
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return ErrnoStatus(error.value(), absl::StrCat("create the directory ", dir));
  }
  return ReplaceFileAtomically(path, contents);
}

absl::Status ReplaceFileAtomically(const std::string& path, absl::string_view contents) {
  static std::atomic<uint64_t> counter{0};
  std::string tmp = absl::StrFormat("%s.tmp.%d.%d", path, ::getpid(), counter.fetch_add(1));
  absl::Status s = WriteFileDurably(tmp, contents);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    s = ErrnoStatus(errno, absl::StrCat("rename ", tmp, " -> ", path));
  }
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return SyncPath(DirName(path));
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path,
                                                             Access access) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) return std::unique_ptr<MappedFile>(new MappedFile(path, nullptr, 0));
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat("mmap ", path));
  if (access == Access::kRandomWhole) {
    // Advice only: a kernel without transparent huge pages refuses it.
    ::madvise(p, size, MADV_HUGEPAGE);
  }
  return std::unique_ptr<MappedFile>(new MappedFile(path, static_cast<const char*>(p), size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
}

std::string Xxh3Hex(absl::string_view data) {
  return absl::StrFormat("%016x", XXH3_64bits(data.data(), data.size()));
}

absl::StatusOr<std::string> Xxh3HexOfFile(const std::string& path) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  absl::Status s =
      StreamFile(path, [&](const char* p, size_t n) { XXH3_64bits_update(state, p, n); });
  uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  if (!s.ok()) return s;
  return absl::StrFormat("%016x", h);
}

absl::StatusOr<std::string> Sha256HexOfFile(const std::string& path) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  absl::Status s = StreamFile(path, [&](const char* p, size_t n) { EVP_DigestUpdate(ctx, p, n); });
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  if (!s.ok()) return s;
  return HexOf(md, len);
}

}  // namespace imagesearch
