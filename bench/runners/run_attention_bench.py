#!/usr/bin/env python3
"""Attention-only CPU benchmark: every mnemo attention kind × sequence length, and PyTorch's
scaled-dot-product attention (causal) at the same shapes, in one run on one machine.

Each point is its own subprocess (peak RSS belongs to that point alone):
  * mnemo: build/release/attention_bench --kind K --len L (one prefill call of L new positions
    on an empty memory, batch 1; see bench/programs/attention_bench.cc for each kind's parameters);
  * torch: Debian's torch on /usr/bin/python3, CPU, scaled_dot_product_attention(q, k, v,
    is_causal=True) on [1, H, L, d_h] (torch ≥ 2.0's public function, else 1.13's
    torch._C._nn._scaled_dot_product_attention, which materialises the [H, L, L] scores);
  * the machine's physical limits (build/release/physical_limits --quick), when built.

A point is recorded as {"skipped": reason} when it timed out, would need more than --max-gib of
memory (estimated beforehand), or is predicted from the previous length to take longer than the
timeout. Lines go to bench/results/attention-<UTC time>-<commit>.jsonl; a markdown summary is
printed.

  cmake --build build/release --target attention_bench physical_limits
  python3 -m bench.runners.run_attention_bench [--quick] [--lengths 1024,4096] [--kinds dense,lsh]
"""

import argparse
import json
import math
import os
import subprocess
import time

from bench.benchlib import ROOT
from bench.benchlib.machine import Log, QuietWait, bench_env, cpu_jiffies, machine_info
from bench.benchlib.results import ResultWriter, result_path

KINDS = ["dense", "window", "strided", "fixed", "bigbird", "lsh", "linear"]
LENGTHS = [1024, 4096, 16384, 65536]
GIB = 1 << 30

TORCH_PEER = r"""
import json, resource, statistics, sys, time
import torch
import torch.nn.functional as F
L, H, D, runs, warmup, threads = (int(x) for x in sys.argv[1:7])
torch.set_num_threads(threads)
torch.manual_seed(0)
q, k, v = (torch.randn(1, H, L, D) for _ in range(3))
if hasattr(F, "scaled_dot_product_attention"):
    api = "torch.nn.functional.scaled_dot_product_attention"
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
else:
    api = "torch._C._nn._scaled_dot_product_attention"
    sdpa = lambda: torch._C._nn._scaled_dot_product_attention(q, k, v, None, 0.0, False, True)[0]
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ms = []
with torch.no_grad():
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        out = sdpa()
        t1 = time.perf_counter()
        if i >= warmup:
            ms.append((t1 - t0) * 1e3)
        del out
nz = L * (L + 1) // 2 * H
print(json.dumps({
    "bench": "attention", "impl": "torch_sdpa", "kind": "sdpa_causal", "len": L, "heads": H,
    "head_dim": D, "batch": 1, "runs": runs, "warmup": warmup,
    "ms_min": min(ms), "ms_median": statistics.median(ms), "ms_max": max(ms),
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "rss_before_call_bytes": rss_before, "input_bytes": 3 * L * H * D * 4,
    "nonzeros": nz, "nonzeros_estimated": False,
    "ns_per_nonzero": statistics.median(ms) * 1e6 / nz, "threads": torch.get_num_threads(),
    "torch": torch.__version__, "api": api}))
"""


log = Log("run_attention_bench")
quiet = QuietWait(budget_s=60.0, poll_s=1.0)


def run_point(cmd, env, timeout):
    """Runs one point; returns (JSON line or None, error text). The line gets wall_s and
    foreign_cpu_frac (the share of the machine's CPU time other processes used meanwhile)."""
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    busy = quiet(10.0)
    r0, (b0, _), t0 = os.times(), cpu_jiffies(), time.time()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    wall = time.time() - t0
    (b1, _), r1 = cpu_jiffies(), os.times()
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    ours = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    foreign = max(0.0, (b1 - b0) / hz - ours) / (wall * ncpu)
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return None, "no JSON output"
    line = lines[-1]
    line["wall_s"] = round(wall, 2)
    line["foreign_cpu_frac"] = round(foreign, 3)
    line["cpu_busy_before"] = round(busy, 3)
    return line, ""


def estimate_bytes(impl, kind, L, H, D, threads):
    """Peak memory a point needs, roughly (to skip points that would not fit)."""
    w = H * D
    if impl == "torch_sdpa":
        # 1.13's math path: scores, softmax and the causal mask, [H, L, L] each (measured ≈ 2.4×
        # the float scores at 4k), + inputs/output + the interpreter (~250 MB).
        return int(2.5 * H * L * L * 4 + 4 * L * w * 4 + 300e6)
    base = 4 * L * w * 4 + 20e6  # qkv + out + the process
    if kind == "dense":
        base += L * w * 4 + threads * 2 * 64 * L * 4  # distance table + per-thread score blocks
    if kind == "lsh":
        base += 2 * L * w * 4 + L * H * 4 * 4 + threads * L * 8 * 20  # keys, values, buckets, sort
    return int(base)


def fmt_ms(x):
    if x is None:
        return "—"
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def fmt_mib(b):
    return "—" if b is None else f"{b / 2**20:,.0f}"


def summary(points, lengths, kinds):
    """Markdown table: per length, each kind's median ms, peak RSS, speedups and ns/nonzero."""
    out = ["| L | kind | ms median (min) | peak RSS MiB | × vs mnemo dense | × vs torch SDPA | "
           "ns / nonzero | nonzeros |",
           "|---|---|---|---|---|---|---|---|"]
    for L in lengths:
        dense = points.get(("mnemo", "dense", L))
        torch_ = points.get(("torch_sdpa", "sdpa_causal", L))
        dense_ms = dense.get("ms_median") if dense and "skipped" not in dense else None
        torch_ms = torch_.get("ms_median") if torch_ and "skipped" not in torch_ else None
        rows = [("mnemo", k) for k in kinds] + [("torch_sdpa", "sdpa_causal")]
        for impl, kind in rows:
            p = points.get((impl, kind, L))
            if p is None:
                continue
            name = kind if impl == "mnemo" else "torch SDPA (causal)"
            if "skipped" in p:
                out.append(f"| {L} | {name} | skipped: {p['skipped']} | | | | | |")
                continue
            ms = p["ms_median"]
            sd = f"{dense_ms / ms:.2f}" if dense_ms else "—"
            st = f"{torch_ms / ms:.2f}" if torch_ms else "—"
            nz = p.get("nonzeros")
            ns = p.get("ns_per_nonzero")
            est = "≤ " if p.get("nonzeros_estimated") else ""
            nzs = "—" if nz is None else f"{est}{nz:.3g}"
            nss = "—" if ns is None else f"{'≥ ' if est else ''}{ns:.3g}"
            flag = " ⚠" if p.get("foreign_cpu_frac", 0) > 0.10 else ""
            out.append(f"| {L} | {name} | {fmt_ms(ms)} ({fmt_ms(p['ms_min'])}){flag} | {fmt_mib(p['peak_rss_bytes'])} | "
                       f"{sd} | {st} | {nss} | {nzs} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--kinds", default=",".join(KINDS), help="mnemo kinds, comma-separated")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch SDPA peer")
    ap.add_argument("--runs", type=int, default=5,
                    help="timed runs for L < 16384 (longer: 1, or 3 when a call is cheap)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="warm-up runs for L < 16384 (longer: 0, or 1 when a call is cheap)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="lengths 1024,4096 only")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per point")
    ap.add_argument("--max-gib", type=float, default=12.0, help="skip points estimated above")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--torch-python", default="/usr/bin/python3")
    ap.add_argument("--output", default=None, help="JSONL path (default bench/results/...)")
    args = ap.parse_args(argv)

    lengths = [1024, 4096] if args.quick else [int(x) for x in args.lengths.split(",") if x]
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            raise SystemExit(f"unknown kind {k} (one of {','.join(KINDS)})")
    binary = os.path.join(args.build_dir, "attention_bench")
    if not os.path.exists(binary):
        raise SystemExit(f"{binary} missing: cmake --build build/release --target attention_bench")
    env = bench_env()
    threads = os.cpu_count() or 1
    H, D = args.heads, args.head_dim
    out = ResultWriter(args.output or result_path("attention"))
    out_path = out.path
    record = out.record
    info = record(machine_info(env, bench="attention", heads=H, head_dim=D, lengths=lengths,
                               kinds=kinds))
    model_name = info["cpu_model"]

    limits = os.path.join(args.build_dir, "physical_limits")
    if os.path.exists(limits):
        log("physical limits (physical_limits --quick)")
        proc = subprocess.run([limits, "--quick"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        for l in proc.stdout.splitlines():
            if l.startswith("{"):
                line = json.loads(l)
                line["bench"] = "attention"
                record(line)
    else:
        log(f"{limits} not built: no physical limits in this run")

    points = {}
    history = {}  # (impl, kind) → [(L, wall_s)] of measured points, for the time prediction
    jobs = []
    for L in lengths:
        for k in kinds:
            jobs.append(("mnemo", k, L))
        if not args.no_torch:
            jobs.append(("torch_sdpa", "sdpa_causal", L))
    for impl, kind, L in jobs:
        runs, warmup = args.runs, args.warmup
        past = history.get((impl, kind), [])  # [(L, wall s per call)]
        if past:
            # Predicted wall time per call from the previous length: L² for the dense kinds, else
            # the exponent of the last two points (between 1 and 2).
            (l1, w1) = past[-1]
            if impl == "torch_sdpa" or kind == "dense":
                p = 2.0
            elif len(past) >= 2 and past[-2][1] > 0.05:
                (l0, w0) = past[-2]
                p = min(2.0, max(1.0, math.log(w1 / w0) / math.log(l1 / l0)))
            else:
                p = 1.0
            per_call = w1 * (L / l1) ** p
        else:
            per_call = 0.0
        if L >= 16384:
            # Long points: 1 run, no warm-up, unless a call is predicted to be cheap (< 3 s):
            # then 3 runs after 1 warm-up (a cold first call pays page faults and thread-local
            # scratch growth, up to 2× for the linear kernel at 64k).
            runs, warmup = (3, 1) if 0 < per_call < 3.0 else (1, 0)
        base = {"bench": "attention", "impl": impl, "kind": kind, "len": L, "heads": H,
                "head_dim": D}
        need = estimate_bytes(impl, kind, L, H, D, threads)
        if need > args.max_gib * GIB:
            reason = f"needs ≈ {need / GIB:.1f} GiB > {args.max_gib:g} GiB"
            log(f"{impl} {kind} L={L}: skipped ({reason})")
            points[(impl, kind, L)] = dict(base, skipped=reason, estimated_bytes=need)
            record(points[(impl, kind, L)])
            continue
        if past:
            predicted = per_call * (runs + warmup)
            if predicted > args.timeout:
                reason = f"predicted ≈ {predicted:.0f} s > timeout {args.timeout} s"
                log(f"{impl} {kind} L={L}: skipped ({reason})")
                points[(impl, kind, L)] = dict(base, skipped=reason)
                record(points[(impl, kind, L)])
                continue
        if impl == "mnemo":
            cmd = [binary, "--kind", kind, "--len", str(L), "--heads", str(H), "--head-dim",
                   str(D), "--runs", str(runs), "--warmup", str(warmup)]
        else:
            cmd = [args.torch_python, "-c", TORCH_PEER, str(L), str(H), str(D), str(runs),
                   str(warmup), str(threads)]
        log(f"{impl} {kind} L={L} (runs {runs}, warm-up {warmup})")
        line, err = run_point(cmd, env, args.timeout)
        if line is None:
            log(f"  skipped: {err}")
            points[(impl, kind, L)] = dict(base, skipped=err)
            record(points[(impl, kind, L)])
            continue
        # Time per call, for the prediction (the process's start-up and set-up included).
        history.setdefault((impl, kind), []).append((L, line["wall_s"] / (runs + warmup)))
        log(f"  {line['ms_median']:.1f} ms, peak RSS {line['peak_rss_bytes'] / 2**20:.0f} MiB"
            + (f", {line['foreign_cpu_frac']:.0%} foreign CPU" if line["foreign_cpu_frac"] > 0.1
               else ""))
        points[(impl, kind, L)] = line
        record(line)

    out.close()
    table = summary(points, lengths, kinds)
    print(f"\nAttention only, CPU, batch 1, H = {H}, d_h = {D}, {threads} threads "
          f"({model_name}); one prefill call of L positions on an empty memory.\n")
    print(table)
    print("\n× = time of the reference ÷ time of the row (> 1: faster). ns / nonzero: median ms "
          "per (query, key) pair attended (lsh: an upper bound on pairs, so a lower bound on ns). "
          "⚠: other processes used > 10% of the CPUs meanwhile.")
    print(f"\nJSON lines: {out_path}")


if __name__ == "__main__":
    main()
