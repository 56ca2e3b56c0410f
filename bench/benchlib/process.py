"""Running measurement subprocesses: their JSON stdout lines, how much of the machine other
processes took meanwhile, re-runs of contaminated measurements, and the environment of the
Python children (the import roots of python/README.md)."""

import json
import os
import subprocess
import time

from bench.benchlib import ROOT


def sh(cmd):
    """stdout of a shell command run in the repository root, '' when it cannot run."""
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def python_env(env=None, build_dir=None):
    """`env` (default os.environ) with PYTHONPATH starting with the project's import roots:
    python/, the repository root, clients/python and, with `build_dir`, its generated stubs.
    Python children (peers, converters, clients) get it, whatever interpreter runs them."""
    env = dict(os.environ if env is None else env)
    roots = [os.path.join(ROOT, "python"), ROOT, os.path.join(ROOT, "clients", "python")]
    if build_dir:
        roots.append(os.path.join(build_dir, "python"))
    if env.get("PYTHONPATH"):
        roots.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(roots)
    return env


def require_built(build_dir, names):
    """The paths of the programs `names` in build_dir; exits naming the build command when one
    is missing."""
    paths = [os.path.join(build_dir, name) for name in names]
    for exe in paths:
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe} not built: cmake --build {build_dir} "
                             f"--target {' '.join(names)}")
    return paths


def json_lines(text):
    """The JSON objects among the lines of `text` (lines starting with '{')."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def run_json(cmd, env, timeout, keep_failed=False):
    """Runs cmd in the repository root; returns its JSON stdout lines (stderr passes through).

    Each line gets wall_s and foreign_cpu_frac: the share of the machine's CPU time used by
    processes other than this measurement while it ran (other people's builds on a shared
    machine), a contamination flag. A non-zero exit ends the run, unless `keep_failed`: then
    the lines come back with their exit_code (a program that reports a failed check as a JSON
    line, e.g. mnemo_bench --figure speculative when greedy outputs differ), and only a failure
    without any line ends the run.
    """
    from bench.benchlib.machine import cpu_jiffies
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    r0 = os.times()
    b0, _ = cpu_jiffies()
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                          timeout=timeout)
    wall = time.time() - t0
    b1, _ = cpu_jiffies()
    r1 = os.times()
    if proc.returncode != 0 and not keep_failed:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    ours = ((r1.children_user - r0.children_user)
            + (r1.children_system - r0.children_system)
            + (r1.user - r0.user) + (r1.system - r0.system))
    foreign = max(0.0, (b1 - b0) / hz - ours) / (wall * ncpu)
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    if keep_failed and not lines:
        raise SystemExit(f"no JSON line (exit code {proc.returncode}): {' '.join(cmd)}")
    for line in lines:
        line.setdefault("wall_s", round(wall, 2))
        line["foreign_cpu_frac"] = round(foreign, 3)
        if keep_failed:
            line["exit_code"] = proc.returncode
    return lines


def run_clean(cmd, env, timeout, quiet, quiet_wait, retries, keep_failed=False, log=None):
    """run_json after waiting (``quiet``, a QuietWait, up to `quiet_wait` s) for idle CPUs;
    re-runs (up to `retries` times) while other processes took over 10% of the CPUs, keeping
    the cleanest (a failed run, with `keep_failed`, is kept as it is)."""
    best = None
    for attempt in range(retries + 1):
        busy = quiet(quiet_wait)
        lines = run_json(cmd, env, timeout, keep_failed)
        for line in lines:
            line["cpu_busy_before"] = round(busy, 3)
            line["attempt"] = attempt
        foreign = lines[0]["foreign_cpu_frac"] if lines else 0.0
        if best is None or foreign < best[0]:
            best = (foreign, lines)
        if foreign <= 0.10 or (lines and lines[0].get("exit_code", 0) != 0):
            break
        if log:
            log(f"  {foreign:.0%} of the CPUs were busy with other processes; "
                + ("re-running" if attempt < retries else "keeping the cleanest"))
    return best[1]
