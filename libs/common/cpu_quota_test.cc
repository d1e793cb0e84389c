#include "libs/common/cpu_quota.h"

#include <sched.h>

#include <catch2/catch.hpp>
#include <thread>

namespace imagesearch {
namespace {

TEST_CASE("cgroup v2 cpu.max: a quota, or none") {
  CHECK(CpuLimitFromCgroupV2("150000 100000\n") == Approx(1.5));
  CHECK(CpuLimitFromCgroupV2("50000 100000") == Approx(0.5));
  CHECK_FALSE(CpuLimitFromCgroupV2("max 100000\n"));
  CHECK_FALSE(CpuLimitFromCgroupV2(""));
  CHECK_FALSE(CpuLimitFromCgroupV2("garbage"));
  CHECK_FALSE(CpuLimitFromCgroupV2("0 100000"));
}

TEST_CASE("cgroup v1 cfs quota and period") {
  CHECK(CpuLimitFromCgroupV1("200000\n", "100000\n") == Approx(2.0));
  CHECK_FALSE(CpuLimitFromCgroupV1("-1\n", "100000\n"));
  CHECK_FALSE(CpuLimitFromCgroupV1("x", "100000"));
}

TEST_CASE("the cgroup path of a controller in /proc/self/cgroup") {
  const char* hybrid =
      "9:name=systemd:/\n4:memory:/pod/a\n2:cpu,cpuacct:/kubepods/pod1/c1\n0::/unified/x\n";
  CHECK(CgroupPath(hybrid, "cpu").value() == "/kubepods/pod1/c1");
  CHECK(CgroupPath(hybrid, "cpuacct").value() == "/kubepods/pod1/c1");
  CHECK(CgroupPath(hybrid, "").value() == "/unified/x");
  CHECK_FALSE(CgroupPath("0::/\n", "cpu"));
  CHECK(CgroupPath("0::/\n", "").value() == "/");
}

TEST_CASE("the count is the smaller of cores and the quota rounded up") {
  CHECK(CombineCpuCount(8, std::nullopt) == 8);
  CHECK(CombineCpuCount(8, 2.0) == 2);
  CHECK(CombineCpuCount(8, 1.5) == 2);
  CHECK(CombineCpuCount(8, 0.25) == 1);
  CHECK(CombineCpuCount(2, 4.0) == 2);
  CHECK(CombineCpuCount(0, std::nullopt) == 1);
}

TEST_CASE("the process's own count follows its CPU affinity") {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof(set), &set) == 0);
  const int n = EffectiveCpuCount();
  CHECK(n >= 1);
  CHECK(n <= CPU_COUNT(&set));
}

}  // namespace
}  // namespace imagesearch
