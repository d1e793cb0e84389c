#include "libs/common/file_util.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "libs/common/test_smaps.h"
#include "libs/common/test_temp_dir.h"

namespace imagesearch {
namespace {

std::string MakeTempDir() {
  const std::string dir = testing::NewTempDir("common_test");
  REQUIRE(!dir.empty());
  return dir;
}

TEST_CASE("ReplaceFileAtomically replaces contents and leaves no temp file") {
  std::string dir = MakeTempDir();
  std::string path = dir + "/CURRENT";
  REQUIRE(ReplaceFileAtomically(path, "v1\n").ok());
  REQUIRE(ReplaceFileAtomically(path, "v2\n").ok());
  auto contents = ReadFileToString(path);
  REQUIRE(contents.ok());
  CHECK(*contents == "v2\n");
  // Only CURRENT remains in the directory: temp files are named
  // CURRENT.tmp.<pid>.<n>, so list the directory rather than guess a name.
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  CHECK(names == std::vector<std::string>{"CURRENT"});
}

TEST_CASE("WritePortFile makes the directories a port file needs, and says which it cannot") {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/run/imagesearch/ports.json";
  REQUIRE(WritePortFile(path, "{\"grpc\": 50051}\n").ok());
  auto contents = ReadFileToString(path);
  REQUIRE(contents.ok());
  CHECK(*contents == "{\"grpc\": 50051}\n");
  // A file where a directory should be.
  REQUIRE(WritePortFile(dir + "/plain", "x").ok());
  const absl::Status s = WritePortFile(dir + "/plain/ports.json", "x");
  CHECK_FALSE(s.ok());
  CHECK(std::string(s.message()).find(dir + "/plain") != std::string::npos);
}

TEST_CASE("ReadFileToString reads files bigger than its buffer, and files whose size is 0") {
  std::string dir = MakeTempDir();
  std::string big;
  for (int i = 0; big.size() < (size_t{3} << 20) + 7; ++i) big += std::to_string(i) + ",";
  REQUIRE(ReplaceFileAtomically(dir + "/big", big).ok());
  auto read_big = ReadFileToString(dir + "/big");
  REQUIRE(read_big.ok());
  CHECK(*read_big == big);
  REQUIRE(ReplaceFileAtomically(dir + "/empty", "").ok());
  auto empty = ReadFileToString(dir + "/empty");
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  // /proc files say 0 bytes, and have more.
  auto status = ReadFileToString("/proc/self/status");
  REQUIRE(status.ok());
  CHECK(absl::StrContains(*status, "Name:"));
}

TEST_CASE("ReadFileToString with a limit refuses big files, directories and missing files") {
  std::string dir = MakeTempDir();
  std::string path = dir + "/f";
  REQUIRE(WriteFileDurably(path, "0123456789").ok());
  auto at_limit = ReadFileToString(path, 10);
  REQUIRE(at_limit.ok());
  CHECK(*at_limit == "0123456789");
  auto over = ReadFileToString(path, 9);
  REQUIRE_FALSE(over.ok());
  CHECK(absl::IsInvalidArgument(over.status()));
  CHECK(over.status().message() == path + ": file is 10 bytes, over the limit of 9 bytes");
  auto directory = ReadFileToString(dir, 100);
  CHECK(absl::IsInvalidArgument(directory.status()));
  CHECK(directory.status().message() == dir + ": not a regular file");
  CHECK(absl::IsNotFound(ReadFileToString(dir + "/missing", 100).status()));
  CHECK(absl::IsNotFound(ReadFileToString(path + "/below_a_file", 100).status()));  // ENOTDIR
}

TEST_CASE("ReadFileToString on a missing file is NOT_FOUND with the path") {
  auto r = ReadFileToString("/nonexistent/imagesearch/file");
  REQUIRE_FALSE(r.ok());
  CHECK(absl::IsNotFound(r.status()));
  CHECK(r.status().message().find("/nonexistent/imagesearch/file") != std::string::npos);
}

TEST_CASE("MappedFile maps contents and SHA-256 matches its known value") {
  std::string dir = MakeTempDir();
  std::string path = dir + "/f";
  REQUIRE(WriteFileDurably(path, "abc").ok());
  auto m = MappedFile::Open(path);
  REQUIRE(m.ok());
  REQUIRE((*m)->size() == 3);
  CHECK(std::string((*m)->data(), 3) == "abc");
  // SHA-256("abc") from FIPS 180-2.
  auto sha = Sha256HexOfFile(path);
  REQUIRE(sha.ok());
  CHECK(*sha == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("MappedFile advises huge pages for files walked at random, and only for them") {
  if (!std::filesystem::exists("/sys/kernel/mm/transparent_hugepage/enabled")) {
    WARN("this kernel has no transparent huge pages; skipped");
    return;
  }
  std::string dir = MakeTempDir();
  REQUIRE(WriteFileDurably(dir + "/random", std::string(size_t{4} << 20, 'x')).ok());
  REQUIRE(WriteFileDurably(dir + "/plain", std::string(size_t{4} << 20, 'x')).ok());
  auto random = MappedFile::Open(dir + "/random", MappedFile::Access::kRandomWhole);
  auto plain = MappedFile::Open(dir + "/plain");
  REQUIRE(random.ok());
  REQUIRE(plain.ok());
  CHECK(std::string((*random)->data() + 5, 2) == "xx");
  const auto random_flags = testing::VmFlagsOfFile(dir + "/random");
  const auto plain_flags = testing::VmFlagsOfFile(dir + "/plain");
  REQUIRE(random_flags.size() == 1);
  REQUIRE(plain_flags.size() == 1);
  CHECK(absl::StrContains(random_flags[0], " hg "));  // VM_HUGEPAGE, set by MADV_HUGEPAGE.
  CHECK(!absl::StrContains(plain_flags[0], " hg "));
}

// `n` bytes of the pattern 0, 1, ..., 250, 0, 1, ...
std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i % 251);
  return s;
}

// Known answers for XXH3-64 (seed 0). The empty input's is the one xxHash's
// documentation gives; every value was computed by Debian's xxhsum 0.8.1
// (package xxhash), e.g. `printf abc | xxhsum -H3`, and for the patterns
// `python3 -c 'import sys; sys.stdout.buffer.write(bytes(i % 251 for i in
// range(N)))' | xxhsum -H3`. The lengths reach each of XXH3's input-size
// paths (0, 1-3, 4-8, 9-16, 17-128, 129-240, longer) and, for files, more
// than one read of the streaming loop (1 MiB).
struct KnownXxh3 {
  std::string input;
  const char* hex;
};
const KnownXxh3 kKnownXxh3[] = {
    {"", "2d06800538d394c2"},
    {"a", "e6c632b61e964e1f"},
    {"abc", "78af5f94892f3950"},
    {"message digest", "160d8e9329be94f9"},
    {"abcdefghijklmnopqrstuvwxyz", "810f9ca067fbb90c"},
    {Pattern(200), "f42a8864feaf0703"},
    {Pattern(1000), "33ef703fb2b20ed1"},
    {Pattern(1048699), "3606bf49d1e90de6"},
    {Pattern(3145728), "1be8144cb05aac1c"},
};

TEST_CASE("Xxh3Hex gives XXH3-64's known answers") {
  for (const KnownXxh3& k : kKnownXxh3) {
    INFO("input of " << k.input.size() << " bytes");
    CHECK(Xxh3Hex(k.input) == k.hex);
  }
}

TEST_CASE("Xxh3HexOfFile gives XXH3-64's known answers, also across stream reads") {
  const std::string path = MakeTempDir() + "/f";
  for (const KnownXxh3& k : kKnownXxh3) {
    INFO("file of " << k.input.size() << " bytes");
    REQUIRE(WriteFileDurably(path, k.input).ok());
    auto xx = Xxh3HexOfFile(path);
    REQUIRE(xx.ok());
    CHECK(*xx == k.hex);
  }
  CHECK(absl::IsNotFound(Xxh3HexOfFile(path + ".missing").status()));
}

TEST_CASE("NewTempDir makes fresh directories that the process which made them removes at exit") {
  const std::string a = testing::NewTempDir("common_test");
  const std::string b = testing::NewTempDir("common_test");
  REQUIRE(!a.empty());
  CHECK(a != b);
  CHECK(std::filesystem::is_directory(a));
  CHECK(std::filesystem::is_empty(a));
  // A child makes one (with a file in it) and exits normally: the child's
  // directory is gone, and the parent's are untouched.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::cout.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    const std::string c = testing::NewTempDir("common_test");
    const bool ok = !c.empty() && WriteFileDurably(c + "/f", "x").ok();
    (void)!::write(fds[1], c.data(), c.size());
    ::close(fds[1]);
    std::exit(ok ? 0 : 1);
  }
  ::close(fds[1]);
  std::string child;
  char buf[256];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) child.append(buf, n);
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  REQUIRE(!child.empty());
  CHECK_FALSE(std::filesystem::exists(child));
  CHECK(std::filesystem::is_directory(a));
  CHECK(std::filesystem::is_directory(b));
}

}  // namespace
}  // namespace imagesearch
