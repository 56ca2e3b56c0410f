// kernels/cpu/cpu_count: the thread count from the affinity mask, cgroup CPU quotas (v2 cpu.max,
// v1 cfs quota and period, as the files read) and MNEMO_CPU_THREADS.
#include "kernels/cpu/cpu_count.h"

#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

TEST(CpuCountTest, CgroupV2CpuMax) {
  EXPECT_EQ(CpuLimitFromCgroupV2("max 100000\n"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("max"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("200000 100000\n"), 2);
  EXPECT_EQ(CpuLimitFromCgroupV2("100000 100000"), 1);
  EXPECT_EQ(CpuLimitFromCgroupV2("150000 100000\n"), 2);  // 1.5 CPUs: ceil
  EXPECT_EQ(CpuLimitFromCgroupV2("50000 100000\n"), 1);   // half a CPU: still one thread
  EXPECT_EQ(CpuLimitFromCgroupV2("1000 1000"), 1);
  EXPECT_EQ(CpuLimitFromCgroupV2("1600000 100000"), 16);
  EXPECT_EQ(CpuLimitFromCgroupV2(""), 0);  // no file (the root cgroup has none)
  EXPECT_EQ(CpuLimitFromCgroupV2("garbage"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("200000 abc"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("200000 0"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("-1 100000"), 0);
}

TEST(CpuCountTest, CgroupV1Quota) {
  EXPECT_EQ(CpuLimitFromCgroupV1("-1\n", "100000\n"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV1("200000\n", "100000\n"), 2);
  EXPECT_EQ(CpuLimitFromCgroupV1("250000", "100000"), 3);
  EXPECT_EQ(CpuLimitFromCgroupV1("", "100000"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV1("200000", ""), 0);
}

TEST(CpuCountTest, CgroupV2PathFromProcSelfCgroup) {
  EXPECT_EQ(CgroupV2Path("0::/\n"), "/");
  EXPECT_EQ(CgroupV2Path("0::/kubepods.slice/pod1/cri-abc\n"), "/kubepods.slice/pod1/cri-abc");
  EXPECT_EQ(CgroupV2Path("12:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n0::/docker/x\n"),
            "/docker/x");
  EXPECT_EQ(CgroupV2Path("12:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n"), "");
  EXPECT_EQ(CgroupV2Path(""), "");
}

TEST(CpuCountTest, ChooseThreadCount) {
  EXPECT_EQ(ChooseThreadCount(8, 0, nullptr), 8);   // no quota: the affinity mask
  EXPECT_EQ(ChooseThreadCount(8, 2, nullptr), 2);   // a Kubernetes limit of 2 CPUs
  EXPECT_EQ(ChooseThreadCount(2, 16, nullptr), 2);  // a quota above the mask
  EXPECT_EQ(ChooseThreadCount(0, 0, nullptr), 1);   // never below one
  EXPECT_EQ(ChooseThreadCount(8, 2, ""), 2);        // set but empty: ignored
  EXPECT_EQ(ChooseThreadCount(8, 2, "3"), 3);       // the override wins
  EXPECT_EQ(ChooseThreadCount(2, 0, "16"), 16);
  EXPECT_EQ(ChooseThreadCount(8, 2, "0"), 2);  // not a valid count: ignored
  EXPECT_EQ(ChooseThreadCount(8, 2, "-4"), 2);
  EXPECT_EQ(ChooseThreadCount(8, 2, "two"), 2);
  EXPECT_EQ(ChooseThreadCount(8, 2, "4x"), 2);
  EXPECT_EQ(ChooseThreadCount(8, 2, "100000"), 2);
}

TEST(CpuCountTest, DefaultThreadCountIsPositive) {
  const int threads = DefaultThreadCount();
  EXPECT_GE(threads, 1);
  EXPECT_LE(threads, 1024);
}

}  // namespace
}  // namespace mnemo::kernels
