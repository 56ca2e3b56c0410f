// How many threads the CPU kernels use (ThreadPool::Default): the CPUs this process may run on
// (sched_getaffinity), capped by its cgroup's CPU quota (cgroup v2 cpu.max, v1 cpu.cfs_quota_us /
// cpu.cfs_period_us), so that a container's CPU limit does not turn into CFS throttling of threads
// that wait for each other; MNEMO_CPU_THREADS overrides both. The parsers are pure functions of the
// files' text so that they are tested without a cgroup.
#pragma once

#include <string>
#include <string_view>

namespace mnemo::kernels {

// The CPUs a cgroup v2 `cpu.max` text allows ("QUOTA PERIOD", e.g. "200000 100000" → 2,
// "150000 100000" → 2: ceil(quota / period)), or 0 for no limit ("max 100000") or text that does
// not parse.
int CpuLimitFromCgroupV2(std::string_view cpu_max);

// The same from cgroup v1's cpu.cfs_quota_us and cpu.cfs_period_us texts; 0 for no limit (quota
// -1) or text that does not parse.
int CpuLimitFromCgroupV1(std::string_view quota_us, std::string_view period_us);

// The cgroup v2 path of this process from the text of /proc/self/cgroup (its "0::PATH" line), or
// "" when there is none (cgroup v1 only).
std::string CgroupV2Path(std::string_view proc_self_cgroup);

// The thread count: `env_threads` (MNEMO_CPU_THREADS; null or empty when unset) when it is a whole
// number in [1, 1024]; otherwise min(affinity_cpus, quota_cpus) with quota_cpus 0 meaning no
// quota; at least 1.
int ChooseThreadCount(int affinity_cpus, int quota_cpus, const char* env_threads);

// ChooseThreadCount on this process: sched_getaffinity's CPU count (hardware_concurrency when it
// fails), the smallest quota of its cgroup v2 and the cgroups above it (v1's cpu controller when
// there is no v2 limit), and MNEMO_CPU_THREADS.
int DefaultThreadCount();

}  // namespace mnemo::kernels
