#include "libs/serving/process_stats.h"

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <thread>

namespace imagesearch::serving {
namespace {

ProcessStats Read() {
  auto s = ReadProcessStats();
  REQUIRE(s.ok());
  return *s;
}

TEST_CASE("ReadProcessStats sees memory allocated, touched and freed") {
  const ProcessStats before = Read();
  constexpr size_t kBytes = 64 << 20;
  std::unique_ptr<char[]> block(new char[kBytes]);
  std::memset(block.get(), 1, kBytes);  // Touched: resident.
  const ProcessStats held = Read();
  CHECK(held.malloc_in_use_bytes >= before.malloc_in_use_bytes + kBytes);
  CHECK(held.malloc_system_bytes >= held.malloc_in_use_bytes);
  CHECK(held.resident_bytes >= before.resident_bytes + kBytes - (4 << 20));
  CHECK(held.virtual_bytes >= held.resident_bytes);
  block.reset();
  const ProcessStats freed = Read();
  CHECK(freed.malloc_in_use_bytes + kBytes <= held.malloc_in_use_bytes);
}

TEST_CASE("ReadProcessStats counts descriptors and threads") {
  const ProcessStats before = Read();
  CHECK(before.open_fds >= 3);  // stdin, stdout, stderr.
  CHECK(before.max_fds >= before.open_fds);
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  CHECK(Read().open_fds == before.open_fds + 1);
  ::close(fd);
  CHECK(Read().open_fds == before.open_fds);

  // Two parked threads; the count is compared between them (a sanitizer
  // runtime may start a thread of its own with the first one).
  bool stop = false;
  std::mutex mu;
  std::condition_variable cv;
  auto park = [&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stop; });
  };
  std::thread first(park);
  const uint64_t with_one = Read().threads;
  CHECK(with_one >= before.threads + 1);
  std::thread second(park);
  CHECK(Read().threads == with_one + 1);
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_all();
  first.join();
  second.join();
}

TEST_CASE("ReadProcessStats reports CPU time spent and a start time in the past") {
  const ProcessStats before = Read();
  // Burn 0.2 s of this process's CPU, whatever else the machine runs (the
  // /proc figures count in clock ticks of 10 ms).
  auto cpu_now = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  };
  const double end = cpu_now() + 0.2;
  volatile uint64_t x = 0;
  while (cpu_now() < end) x = x + 1;
  const ProcessStats after = Read();
  CHECK(after.cpu_seconds >= before.cpu_seconds + 0.1);
  const double now = static_cast<double>(std::time(nullptr));
  CHECK(after.start_time_seconds <= now + 1);
  CHECK(after.start_time_seconds > now - 3600);  // This test started minutes ago at most.
}

}  // namespace
}  // namespace imagesearch::serving
