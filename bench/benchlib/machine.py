"""The machine a benchmark runs on: logging, the BLAS environment every subprocess gets, how busy
the CPUs are, waiting for a quiet machine, and the run_info line that opens every result file."""

import datetime
import os
import platform
import sys
import time

from bench.benchlib import ROOT
from bench.benchlib.process import sh


class Log:
    """``log("text")`` prints ``[name] text`` to stderr (stdout carries JSON lines)."""

    def __init__(self, name):
        self.name = name

    def __call__(self, msg):
        print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)


def bench_env(openblas_coretype=None):
    """The environment of every measured subprocess: OPENBLAS_CORETYPE as given ('auto' unsets
    it; default: inherited, else Haswell, the project's machines' setting),
    OPENBLAS_NUM_THREADS inherited or the CPU count, OMP_WAIT_POLICY=PASSIVE, and no
    OMP_NUM_THREADS (the peers set torch's threads themselves)."""
    env = dict(os.environ)
    if openblas_coretype == "auto":
        env.pop("OPENBLAS_CORETYPE", None)
    elif openblas_coretype:
        env["OPENBLAS_CORETYPE"] = openblas_coretype
    elif not env.get("OPENBLAS_CORETYPE"):
        env["OPENBLAS_CORETYPE"] = "Haswell"
    env.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.pop("OMP_NUM_THREADS", None)
    return env


def cpu_jiffies():
    """(busy, total) jiffies of all CPUs since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def cpu_busy_fraction(seconds=0.5):
    """Fraction of all CPUs busy over the next `seconds`."""
    b0, t0 = cpu_jiffies()
    time.sleep(seconds)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / max(1, t1 - t0)


class QuietWait:
    """Waits for other processes to leave the CPUs idle before a measurement, within a budget
    of waiting for the whole run (a busy shared machine must not stall a run forever)."""

    def __init__(self, budget_s=120.0, threshold=0.10, poll_s=2.0):
        self.budget_s = budget_s
        self.threshold = threshold
        self.poll_s = poll_s

    def __call__(self, max_wait):
        """Waits up to `max_wait` s (and what is left of the budget) until at most `threshold`
        of the CPUs are busy; returns the last busy fraction seen."""
        t0 = time.time()
        deadline = t0 + min(max_wait, self.budget_s)
        busy = cpu_busy_fraction(0.5)
        while busy > self.threshold and time.time() < deadline:
            time.sleep(self.poll_s)
            busy = cpu_busy_fraction(0.5)
        self.budget_s = max(0.0, self.budget_s - (time.time() - t0))
        return busy


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def git_commit():
    """The short commit of the checkout, '' outside git."""
    return sh("git rev-parse --short HEAD")


def git_dirty():
    return bool(sh("git status --porcelain --untracked-files=no"))


def _cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def machine_info(env=None, gpu=False, when=None, **extra):
    """The run_info line: date, commit, CPU (and with `gpu`, the GPUs of nvidia-smi), memory,
    kernel, load, the BLAS settings of `env`, and `extra` fields."""
    env = os.environ if env is None else env
    flags = sh("grep -m1 '^flags' /proc/cpuinfo")
    info = {
        "impl": "machine", "figure": "run_info",
        "date": (when or utc_now()).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "cpu_model": _cpu_model(), "cpus": os.cpu_count(),
        "avx512f": " avx512f" in flags, "amx_tile": " amx_tile" in flags,
        "l3": sh("lscpu | grep -i 'L3 cache' | sed 's/.*: *//'"),
        "mem_total": sh("grep MemTotal /proc/meminfo | sed 's/.*: *//'"),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg": os.getloadavg(),
        "OPENBLAS_CORETYPE": env.get("OPENBLAS_CORETYPE", "(unset: auto)"),
        "OPENBLAS_NUM_THREADS": env.get("OPENBLAS_NUM_THREADS"),
        "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY"),
    }
    if gpu:
        info["gpu"] = sh("nvidia-smi --query-gpu=name,driver_version,memory.total,"
                         "clocks.max.sm,clocks.max.mem --format=csv,noheader")
    info.update(extra)
    return info


__all__ = ["ROOT", "Log", "bench_env", "cpu_jiffies", "cpu_busy_fraction", "QuietWait",
           "utc_now", "git_commit", "git_dirty", "machine_info"]
