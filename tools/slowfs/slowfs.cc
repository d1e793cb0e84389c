// imagesearch-slowfs: a slow volume for tests. A FUSE passthrough of one
// directory that waits before each read, write and fsync it serves, so a test
// can put a snapshot root on storage that answers the way a busy network
// volume does (EBS, NFS, a cloud disk at its IOPS limit), on a machine whose
// kernel has no dm-delay or netem.
//
// Usage:
//   imagesearch-slowfs --backing=DIR --mountpoint=MNT [--read_ms=N]
//       [--write_ms=N] [--fsync_ms=N] [--control=FILE] [--log_reads]
// Runs in the foreground until SIGTERM or SIGINT, then unmounts. The delays
// apply to every request the kernel sends: a read of up to 128 KiB (page
// faults of a mapped file and readahead included), a write, an fsync of a
// file or directory. Requests run on several threads, so the delay is
// latency, not a bandwidth cap. With --control, FILE holds "READ WRITE FSYNC"
// in milliseconds and is read again every 50 ms: a test slows the volume
// down, or speeds it up, while the services run. --log_reads logs every read
// (path, offset, size) on stderr: which pages a process had to fetch.
//
// Pages read through the mount stay in its page cache across opens (as NFS
// keeps those of a file whose mtime has not changed), so what is slow is the
// first read of each page. Files written straight into the backing directory
// model another host's writes: the mount has none of their pages cached and
// sends no inotify event for them.
#define FUSE_USE_VERSION 35
#include <dirent.h>
#include <fcntl.h>
#include <fuse3/fuse.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

int g_backing = -1;  // The backing directory: every path is opened relative to it.
std::atomic<int> g_read_ms{0};
std::atomic<int> g_write_ms{0};
std::atomic<int> g_fsync_ms{0};
std::atomic<bool> g_stop{false};
bool g_log_reads = false;

void Wait(const std::atomic<int>& ms) {
  const int v = ms.load(std::memory_order_relaxed);
  if (v > 0) std::this_thread::sleep_for(std::chrono::milliseconds(v));
}

// "/a/b" -> "a/b"; "/" -> ".".
const char* Rel(const char* path) {
  while (*path == '/') ++path;
  return *path == '\0' ? "." : path;
}

int Err(int rc) { return rc < 0 ? -errno : rc; }

int GetAttr(const char* path, struct stat* st, fuse_file_info* fi) {
  if (fi != nullptr) return Err(fstat(static_cast<int>(fi->fh), st));
  return Err(fstatat(g_backing, Rel(path), st, AT_SYMLINK_NOFOLLOW));
}

int ReadLink(const char* path, char* buf, size_t size) {
  const ssize_t n = readlinkat(g_backing, Rel(path), buf, size - 1);
  if (n < 0) return -errno;
  buf[n] = '\0';
  return 0;
}

int MkDir(const char* path, mode_t mode) { return Err(mkdirat(g_backing, Rel(path), mode)); }
int Unlink(const char* path) { return Err(unlinkat(g_backing, Rel(path), 0)); }
int RmDir(const char* path) { return Err(unlinkat(g_backing, Rel(path), AT_REMOVEDIR)); }
int SymLink(const char* to, const char* path) { return Err(symlinkat(to, g_backing, Rel(path))); }

int Rename(const char* from, const char* to, unsigned int flags) {
  return Err(renameat2(g_backing, Rel(from), g_backing, Rel(to), flags));
}

int Link(const char* from, const char* to) {
  return Err(linkat(g_backing, Rel(from), g_backing, Rel(to), 0));
}

int ChMod(const char* path, mode_t mode, fuse_file_info* fi) {
  if (fi != nullptr) return Err(fchmod(static_cast<int>(fi->fh), mode));
  return Err(fchmodat(g_backing, Rel(path), mode, 0));
}

int ChOwn(const char* path, uid_t uid, gid_t gid, fuse_file_info* fi) {
  if (fi != nullptr) return Err(fchown(static_cast<int>(fi->fh), uid, gid));
  return Err(fchownat(g_backing, Rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

int Truncate(const char* path, off_t size, fuse_file_info* fi) {
  if (fi != nullptr) return Err(ftruncate(static_cast<int>(fi->fh), size));
  const int fd = openat(g_backing, Rel(path), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  const int rc = Err(ftruncate(fd, size));
  close(fd);
  return rc;
}

int UTimens(const char* path, const struct timespec tv[2], fuse_file_info* fi) {
  if (fi != nullptr) return Err(futimens(static_cast<int>(fi->fh), tv));
  return Err(utimensat(g_backing, Rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

int Open(const char* path, fuse_file_info* fi) {
  const int fd = openat(g_backing, Rel(path), (fi->flags & ~O_NOFOLLOW) | O_CLOEXEC);
  if (fd < 0) return -errno;
  fi->fh = static_cast<uint64_t>(fd);
  fi->keep_cache = 1;  // Pages read once stay cached, as NFS keeps those of an unchanged file.
  return 0;
}

int Create(const char* path, mode_t mode, fuse_file_info* fi) {
  const int fd = openat(g_backing, Rel(path), fi->flags | O_CREAT | O_CLOEXEC, mode);
  if (fd < 0) return -errno;
  fi->fh = static_cast<uint64_t>(fd);
  return 0;
}

int Read(const char* path, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  if (g_log_reads) {
    std::fprintf(stderr, "slowfs: read %s at %lld, %zu bytes (delay %d ms)\n", path,
                 static_cast<long long>(off), size, g_read_ms.load());
  }
  Wait(g_read_ms);
  const ssize_t n = pread(static_cast<int>(fi->fh), buf, size, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int Write(const char*, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Wait(g_write_ms);
  const ssize_t n = pwrite(static_cast<int>(fi->fh), buf, size, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int StatFs(const char*, struct statvfs* st) { return Err(fstatvfs(g_backing, st)); }

int Flush(const char*, fuse_file_info*) { return 0; }

int Release(const char*, fuse_file_info* fi) {
  close(static_cast<int>(fi->fh));
  return 0;
}

int FSync(const char*, int datasync, fuse_file_info* fi) {
  Wait(g_fsync_ms);
  const int fd = static_cast<int>(fi->fh);
  return Err(datasync ? fdatasync(fd) : fsync(fd));
}

int OpenDir(const char* path, fuse_file_info* fi) {
  const int fd = openat(g_backing, Rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  DIR* dir = fdopendir(fd);
  if (dir == nullptr) {
    const int e = errno;
    close(fd);
    return -e;
  }
  fi->fh = reinterpret_cast<uint64_t>(dir);
  return 0;
}

int ReadDir(const char*, void* buf, fuse_fill_dir_t fill, off_t, fuse_file_info* fi,
            fuse_readdir_flags) {
  DIR* dir = reinterpret_cast<DIR*>(fi->fh);
  rewinddir(dir);
  errno = 0;
  while (dirent* e = readdir(dir)) {
    struct stat st {};
    st.st_ino = e->d_ino;
    st.st_mode = static_cast<mode_t>(DTTOIF(e->d_type));
    if (fill(buf, e->d_name, &st, 0, static_cast<fuse_fill_dir_flags>(0)) != 0) break;
  }
  return -errno;
}

int ReleaseDir(const char*, fuse_file_info* fi) {
  closedir(reinterpret_cast<DIR*>(fi->fh));
  return 0;
}

int FSyncDir(const char*, int datasync, fuse_file_info* fi) {
  Wait(g_fsync_ms);
  const int fd = dirfd(reinterpret_cast<DIR*>(fi->fh));
  return Err(datasync ? fdatasync(fd) : fsync(fd));
}

int Access(const char* path, int mask) { return Err(faccessat(g_backing, Rel(path), mask, 0)); }

void* Init(fuse_conn_info*, fuse_config* cfg) {
  cfg->use_ino = 1;  // The backing inode numbers: hard links stay recognisable.
  // Names and attributes cached for a second, as NFS caches them (acregmin
  // is 3 s); a new name in the backing directory is seen at once.
  cfg->entry_timeout = 1;
  cfg->attr_timeout = 1;
  cfg->negative_timeout = 0;
  return nullptr;
}

// The control file: "READ WRITE FSYNC" (milliseconds). A missing or partial
// file keeps the current delays.
void WatchControl(const std::string& path) {
  while (!g_stop.load()) {
    std::ifstream in(path);
    int r = 0, w = 0, f = 0;
    if (in >> r >> w >> f) {
      g_read_ms = r;
      g_write_ms = w;
      g_fsync_ms = f;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

bool Flag(const std::string& arg, const char* name, std::string* value) {
  const std::string prefix = std::string("--") + name + "=";
  if (arg.rfind(prefix, 0) != 0) return false;
  *value = arg.substr(prefix.size());
  return true;
}

int Usage(const char* why) {
  std::fprintf(stderr,
               "imagesearch-slowfs: %s\nusage: imagesearch-slowfs --backing=DIR --mountpoint=MNT "
               "[--read_ms=N] [--write_ms=N] [--fsync_ms=N] [--control=FILE] [--log_reads]\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string backing, mountpoint, control, v;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (Flag(a, "backing", &backing) || Flag(a, "mountpoint", &mountpoint) ||
        Flag(a, "control", &control)) {
      continue;
    }
    if (a == "--log_reads") {
      g_log_reads = true;
    } else if (Flag(a, "read_ms", &v)) {
      g_read_ms = std::atoi(v.c_str());
    } else if (Flag(a, "write_ms", &v)) {
      g_write_ms = std::atoi(v.c_str());
    } else if (Flag(a, "fsync_ms", &v)) {
      g_fsync_ms = std::atoi(v.c_str());
    } else {
      return Usage(("unknown argument " + a).c_str());
    }
  }
  if (backing.empty() || mountpoint.empty())
    return Usage("--backing and --mountpoint are required");
  g_backing = open(backing.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (g_backing < 0) {
    std::fprintf(stderr, "imagesearch-slowfs: cannot open %s: %s\n", backing.c_str(),
                 std::strerror(errno));
    return 1;
  }
  fuse_operations ops{};
  ops.getattr = GetAttr;
  ops.readlink = ReadLink;
  ops.mkdir = MkDir;
  ops.unlink = Unlink;
  ops.rmdir = RmDir;
  ops.symlink = SymLink;
  ops.rename = Rename;
  ops.link = Link;
  ops.chmod = ChMod;
  ops.chown = ChOwn;
  ops.truncate = Truncate;
  ops.open = Open;
  ops.read = Read;
  ops.write = Write;
  ops.statfs = StatFs;
  ops.flush = Flush;
  ops.release = Release;
  ops.fsync = FSync;
  ops.opendir = OpenDir;
  ops.readdir = ReadDir;
  ops.releasedir = ReleaseDir;
  ops.fsyncdir = FSyncDir;
  ops.init = Init;
  ops.access = Access;
  ops.utimens = UTimens;
  ops.create = Create;
  std::thread watcher;
  if (!control.empty()) watcher = std::thread(WatchControl, control);
  // Foreground, multithreaded (fuse_main's default); as root, other users'
  // processes may use the mount too, and the kernel checks permissions.
  std::vector<std::string> args = {argv[0], mountpoint, "-f", "-o",
                                   "fsname=imagesearch-slowfs,allow_other,default_permissions"};
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  const int rc = fuse_main(static_cast<int>(cargs.size()), cargs.data(), &ops, nullptr);
  g_stop = true;
  if (watcher.joinable()) watcher.join();
  return rc;
}
