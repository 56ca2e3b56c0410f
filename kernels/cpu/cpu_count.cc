// The CPU kernels' thread count from the affinity mask, the cgroup CPU quota and
// MNEMO_CPU_THREADS (cpu_count.h).
#include "kernels/cpu/cpu_count.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace mnemo::kernels {
namespace {

constexpr int kMaxThreads = 1024;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

// A whole decimal number (optionally negative) and nothing else.
bool ParseInt(std::string_view s, int64_t* out) {
  s = Trim(s);
  if (s.empty()) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

int LimitFrom(int64_t quota, int64_t period) {
  if (quota <= 0 || period <= 0) return 0;
  const int64_t cpus = (quota + period - 1) / period;
  return static_cast<int>(std::clamp<int64_t>(cpus, 1, kMaxThreads));
}

// The file's text, or "" when it cannot be read.
std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int MinLimit(int a, int b) {
  if (a == 0) return b;
  if (b == 0) return a;
  return std::min(a, b);
}

// The smallest cgroup v2 quota from this process's cgroup up to the root of /sys/fs/cgroup (a
// container without its own cgroup namespace sees its host path there, which does not exist: the
// walk then reaches the container's own cpu.max at the mount's root).
int CgroupV2Limit() {
  const std::string root = "/sys/fs/cgroup";
  std::string path = CgroupV2Path(ReadText("/proc/self/cgroup"));
  int limit = 0;
  for (;;) {
    limit = MinLimit(limit, CpuLimitFromCgroupV2(ReadText(root + path + "/cpu.max")));
    if (path.empty() || path == "/") break;
    path = path.substr(0, path.rfind('/'));
  }
  return limit;
}

int CgroupV1Limit() {
  for (const char* dir : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {
    const std::string d = dir;
    const int limit =
        CpuLimitFromCgroupV1(ReadText(d + "/cpu.cfs_quota_us"), ReadText(d + "/cpu.cfs_period_us"));
    if (limit > 0) return limit;
  }
  return 0;
}

}  // namespace

int CpuLimitFromCgroupV2(std::string_view cpu_max) {
  cpu_max = Trim(cpu_max);
  const size_t space = cpu_max.find(' ');
  if (space == std::string_view::npos) return 0;
  const std::string_view quota = cpu_max.substr(0, space);
  int64_t q = 0, period = 0;
  if (quota == "max" || !ParseInt(quota, &q) || !ParseInt(cpu_max.substr(space + 1), &period)) {
    return 0;
  }
  return LimitFrom(q, period);
}

int CpuLimitFromCgroupV1(std::string_view quota_us, std::string_view period_us) {
  int64_t quota = 0, period = 0;
  if (!ParseInt(quota_us, &quota) || !ParseInt(period_us, &period)) return 0;
  return LimitFrom(quota, period);
}

std::string CgroupV2Path(std::string_view proc_self_cgroup) {
  while (!proc_self_cgroup.empty()) {
    const size_t eol = proc_self_cgroup.find('\n');
    const std::string_view line = proc_self_cgroup.substr(0, eol);
    if (line.substr(0, 3) == "0::") return std::string(Trim(line.substr(3)));
    if (eol == std::string_view::npos) break;
    proc_self_cgroup.remove_prefix(eol + 1);
  }
  return "";
}

int ChooseThreadCount(int affinity_cpus, int quota_cpus, const char* env_threads) {
  int64_t wanted = 0;
  if (env_threads != nullptr && ParseInt(env_threads, &wanted) && wanted >= 1 &&
      wanted <= kMaxThreads) {
    return static_cast<int>(wanted);
  }
  int threads = std::clamp(affinity_cpus, 1, kMaxThreads);
  if (quota_cpus > 0) threads = std::min(threads, quota_cpus);
  return std::max(threads, 1);
}

int DefaultThreadCount() {
  int affinity = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) affinity = CPU_COUNT(&set);
  if (affinity <= 0) affinity = static_cast<int>(std::thread::hardware_concurrency());
  int quota = CgroupV2Limit();
  if (quota == 0) quota = CgroupV1Limit();
  return ChooseThreadCount(affinity, quota, std::getenv("MNEMO_CPU_THREADS"));
}

}  // namespace mnemo::kernels
