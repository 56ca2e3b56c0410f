#!/usr/bin/env python3
"""Where a CPU decode step's time goes: the math against everything around it.

The figure behind "per-step time outside the math <= 20% of a decode step" (issue 20). Runs
`mnemo_bench --figure decode` on a model (default: the shipped teacher, models/teacher) under
`perf record` (cpu-clock samples of every thread of the process, user and kernel), then sorts
every sampled symbol into one class:
  math        the products, attention, LayerNorm, activations, softmax, compression: mnemo's
              kernels (kernels/cpu), OpenBLAS and libm;
  handoff     handing work to the pool's threads and back: ThreadPool (spinning, yielding,
              sleeping), the scheduler and futex/yield system calls;
  allocation  malloc/free/new/delete, zero-fill, page faults and the kernel's memory paths;
  copies      memcpy/memmove;
  engine      the rest of mnemo (model orchestration, session state bookkeeping, the bench's
              own argmax);
  other       everything else (other kernel paths, unresolved addresses);
and reports each class's share of the samples, for the thread that runs the steps (the
process's first: its on-CPU time, including waiting for the pool by spinning; time it sleeps is
not sampled) and for all threads together (CPU time the pool's workers burn included);
`outside_math` = 1 - math. Target (never an assertion): the stepping thread's outside_math <=
0.20. The decode figure of the same run (tokens/s) comes with it.
perf must be allowed to profile the user's own processes (kernel.perf_event_paranoid <= 2).

JSON lines (bench/results/decode_profile-<UTC time>-<commit>.jsonl): run_info, the mnemo_bench
decode line, one `decode_profile` line (`main_thread` and `all_threads`: shares by class,
`outside_math`, the top symbols with their class; `threads`: each thread's share).

  cmake --build build/release --target mnemo_bench
  PYTHONPATH=python:. .venv/bin/python -m bench.runners.run_decode_profile [--model DIR]
"""

import argparse
import json
import os
import signal
import re
import subprocess
import sys
import tempfile

from bench.benchlib import ROOT
from bench.benchlib.machine import Log, bench_env, machine_info
from bench.benchlib.process import json_lines, python_env, require_built
from bench.benchlib.results import ResultWriter, result_path

log = Log("run_decode_profile")

# First match wins; patterns are searched in "<dso> <symbol>". A kernel's lambda run by the pool
# (std::_Function_handler<..., mnemo::kernels::X(...)::{lambda}>) is math, whatever it names.
CLASSES = (
    ("math", r"_Function_handler<.*mnemo::kernels::(?!ThreadPool::)"),
    ("handoff", r"ThreadPool::|sched_yield|__schedule|schedule\b|futex|pick_next|finish_task_switch"
                r"|update_curr|nanosleep|hrtimer|clock_nanosleep|pthread_(mutex|cond)|"
                r"syscall|entry_SYSCALL|exit_to_user|__x64_sys|do_sched_yield|yield_task|"
                r"_raw_spin|try_to_wake_up|dequeue|enqueue|psi_"),
    ("allocation", r"malloc|_int_free|\bfree\b|cfree|calloc|realloc|operator new|operator delete"
                   r"|tcache|unlink_chunk|malloc_consolidate|memset|clear_page|page_fault|"
                   r"handle_mm_fault|do_anonymous_page|alloc_pages|__mmap|munmap|\bbrk\b|"
                   r"mem_cgroup|lru_|folio|rmqueue|zap_"),
    ("copies", r"memcpy|memmove"),
    ("math", r"mnemo::kernels::|libopenblas|libm\.so|libm-|sgemm|sgemv|saxpy|sdot|"
             r"\bexpf|erff|tanhf|GemvAvx|GemvScalar|WidenAvx|HalfLinear|RelativeAttention|"
             r"SoftmaxRow|LayerNorm|BiasGelu|BiasRelu|Compress"),
    ("engine", r"mnemo::|mnemo_bench|std::"),
)
COMPILED = [(name, re.compile(pattern)) for name, pattern in CLASSES]


def classify(dso, symbol):
    text = f"{dso} {symbol}"
    for name, pattern in COMPILED:
        if pattern.search(text):
            return name
    return "other"


def threads(perf_data):
    """{tid: share of the samples} of every sampled thread ("pid" sorts by thread)."""
    out = subprocess.run(["perf", "report", "-i", perf_data, "--no-children", "--sort", "pid",
                          "--stdio", "-g",
                          "none"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+):", line)
        if m:
            found[int(m.group(2))] = float(m.group(1)) / 100.0
    return found


def profile(perf_data, tid=None):
    """[(share, dso, symbol)] of every sampled symbol (of thread `tid` alone when given), self
    time only."""
    cmd = ["perf", "report", "-i", perf_data, "--no-children", "--sort", "dso,symbol", "--stdio",
           "-g", "none", "--percent-limit", "0"]
    if tid is not None:
        cmd += ["--tid", str(tid)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*?)\s*$", line)
        if m:
            rows.append((float(m.group(1)) / 100.0, m.group(2), m.group(3)))
    return rows


def by_class(rows, top_n):
    """Shares of the samples by class, and the top symbols with their class."""
    shares = {name: 0.0 for name, _ in CLASSES}  # duplicate names ("math") collapse
    shares["other"] = 0.0
    total = sum(share for share, _, _ in rows) or 1.0
    top = []
    for share, dso, symbol in sorted(rows, reverse=True):
        cls = classify(dso, symbol)
        shares[cls] += share
        if len(top) < top_n:
            top.append({"share": round(share / total, 4), "class": cls, "dso": dso,
                        "symbol": symbol.strip()[:160]})
    return {"samples_share_by_class": {k: round(v / total, 4) for k, v in shares.items()},
            "outside_math": round(1.0 - shares["math"] / total, 4), "top_symbols": top}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "teacher"))
    ap.add_argument("--cpu-weights", default="stored",
                    choices=("stored", "float32", "bf16-products"))
    ap.add_argument("--decode-steps", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--frequency", type=int, default=4000, help="perf samples per second")
    ap.add_argument("--out", help="JSON lines file (default bench/results/decode_profile-...)")
    ap.add_argument("--top", type=int, default=25, help="symbols listed in the result")
    args = ap.parse_args(argv)

    env = python_env(bench_env(None))
    (mnemo_bench,) = require_built(args.build_dir, ("mnemo_bench",))
    out = ResultWriter(args.out or result_path("decode_profile"), echo=True)
    out.record(machine_info(env, model=os.path.relpath(args.model, ROOT)))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.frequency), "-o", data,
               "--", mnemo_bench, "--model", args.model, "--cpu-weights", args.cpu_weights,
               "--figure", "decode", "--decode-steps", str(args.decode_steps), "--runs",
               str(args.runs)]
        log(" ".join(cmd))
        # Its own process group: on a timeout perf and the mnemo_bench it runs both go.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=ROOT, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            sys.exit("perf record ran over 600 s (a large model wants fewer --decode-steps)")
        proc = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        if proc.returncode != 0:
            sys.exit(f"perf record failed ({proc.returncode}): {proc.stderr[-2000:]}")
        decode = [l for l in json_lines(proc.stdout) if l.get("figure") == "decode"]
        out.extend(decode)
        by_thread = threads(data)
        main_tid = min(by_thread)  # the process's first thread runs the steps
        everything = by_class(profile(data), args.top)
        main = by_class(profile(data, main_tid), args.top)
    line = {"impl": "mnemo", "figure": "decode_profile",
            "model": os.path.relpath(args.model, ROOT), "cpu_weights": args.cpu_weights,
            "threads": {str(t): round(v, 4) for t, v in sorted(by_thread.items())},
            "main_thread": main, "all_threads": everything, "target_outside_math": 0.20,
            "tokens_per_s": decode[0]["tokens_per_s"] if decode else None}
    out.record(line)
    out.close()
    for name, part in (("the thread running the steps", main), ("all threads", everything)):
        print(f"{name}: {json.dumps(part['samples_share_by_class'])}")
        print(f"  outside the math: {part['outside_math']:.1%} of its samples (target <= 20%)")
    print(f"results: {out.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
