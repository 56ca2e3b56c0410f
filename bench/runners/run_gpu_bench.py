#!/usr/bin/env python3
"""mnemo GPU benchmark: mnemo's CUDA backend vs the PyTorch reference, one GPU.

Run on the GPU machine from the repository root, after building mnemo into
build/engine-gpu/ (mnemo_bench and physical_limits). Steps, each its own
subprocess whose JSON stdout lines are recorded:

  1. model: bench/benchlib/make_bench_model.py writes (once; cached) a random-weight
     f32 checkpoint sized like transfo-xl-wt103 (18 layers, d_model 1024,
     16 heads x 64, d_inner 4096, dense vocabulary 32000, mem_len 1600) under
     build/bench-models/gpu-wt103size/. Every implementation uses it.
  2. physical_limits --cuda: the device's copy bandwidth (d2d_copy_gb_s).
  3. mnemo_bench --device cuda: decode (64 steps per run), prefill S=512 and
     S=128 on a full memory (logits of the last position), batched-decode
     B=1, 8, 64, 256.
  4. bench/peers/peer_pytorch_gpu.py (mnemo_reference on CUDA,
     f32, TF32 off): prefill S=512 and S=128 and decode, eager; then prefill
     S=512 under torch.compile (last: it is the slowest and least
     predictable step; skipped with --quick).
  5. a derived line (ratios), then a summary table on stderr.

Every line goes, as soon as it arrives, to <out-dir>/gpu-<UTC time>-<commit>.jsonl
(default out dir bench/results/). A step that fails, times out or is skipped
for lack of time is recorded as one line with its impl/figure fields and an
"error" field; the run goes on, and the summary prints n/a for what is
missing.

Time: every step has its own timeout, clipped to what is left of --budget-s
(default 420 s, so the whole run stays under 8 minutes on an H100); a step
that would get less than 15 s is skipped.

Summary figures:
  prefill   mnemo tokens/s / peer tokens/s (S=512: vs eager and vs compile;
            S=128: vs eager).
  decode    ms/token of each, and peer ms / mnemo ms.
  roofline  mnemo's measured ms/token / (bytes_per_token / copy bandwidth):
            1.0 = as fast as copying the bytes a decode step must read and
            write. bytes_per_token comes from mnemo_bench's decode line,
            d2d_copy_gb_s (bytes read + written per second / 1e9) from
            physical_limits --cuda.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

from bench.benchlib import ROOT
from bench.benchlib.machine import Log, machine_info
from bench.benchlib.process import json_lines, python_env
from bench.benchlib.results import ResultWriter, result_path

BATCHES = (1, 8, 64, 256)
MIN_STEP_S = 15  # skip a step rather than give it less than this


log = Log("run_gpu_bench")


class Runner:
    """Runs steps within the time budget and records their JSON lines."""

    def __init__(self, out_path, budget_s):
        self.deadline = time.monotonic() + budget_s
        self.out = ResultWriter(out_path, echo=True)
        self.lines = self.out.lines
        self.env = python_env()

    def record(self, line):
        self.out.record(line)

    def step(self, name, tag, cmd, timeout):
        """Runs cmd; returns its JSON stdout lines (each with "step" and
        "wall_s"), or [] after recording tag + "error" on failure."""
        left = self.deadline - time.monotonic()
        if left < MIN_STEP_S:
            log(f"{name}: skipped ({max(left, 0):.0f} s of the budget left)")
            self.record(dict(tag, step=name, error="skipped: time budget"))
            return []
        timeout = min(timeout, left)
        log(f"{name} (timeout {timeout:.0f} s)")
        t0 = time.monotonic()
        error, out, err = None, "", ""
        try:
            # Own process group: a timeout also ends the step's children
            # (inductor's compile workers).
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        except OSError as e:
            error = f"cannot run: {e}"
        else:
            try:
                out, err = proc.communicate(timeout=timeout)
                if proc.returncode != 0:
                    error = f"exit status {proc.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                error = f"timeout after {timeout:.0f} s"
        wall = round(time.monotonic() - t0, 2)
        lines = json_lines(out)
        if error is None and not lines:
            error = "no JSON line on stdout"
        if error is not None:
            log(f"{name}: {error}" + (f"; stderr tail:\n{err[-1500:]}"
                                      if err.strip() else ""))
            self.record(dict(tag, step=name, error=error, wall_s=wall,
                             cmd=" ".join(cmd), stderr_tail=err[-1500:]))
            return []
        for line in lines:
            line["step"] = name
            line.setdefault("wall_s", wall)
            self.record(line)
        log(f"{name}: ok, {wall} s")
        return lines


# --------------------------------------------------------------------------
# Summary


def num(v):
    """v as a float when it is a number (bools are not), else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def median(v):
    """A figure's value: a number, or the median of a {min, median, max}
    summary (mnemo_bench's form)."""
    return num(v.get("median")) if isinstance(v, dict) else num(v)


def first(lines):
    return lines[0] if lines else {}


def ms_per_token(line):
    ms = median(line.get("ms_per_token"))
    if ms is None:
        rate = median(line.get("tokens_per_s"))
        ms = 1e3 / rate if rate else None
    return ms


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def derive(res, limits):
    """The derived line: every ratio the summary shows (None = n/a)."""
    tps = {k: median(first(v).get("tokens_per_s")) for k, v in res.items()}
    copy = [num(l.get("d2d_copy_gb_s")) for l in limits]
    copy_gb_s = max((c for c in copy if c is not None), default=None)
    mnemo_ms = ms_per_token(first(res["mnemo_decode"]))
    peer_ms = ms_per_token(first(res["peer_decode"]))
    bytes_per_token = num(first(res["mnemo_decode"]).get("bytes_per_token"))
    ideal_ms = (bytes_per_token / (copy_gb_s * 1e9) * 1e3
                if bytes_per_token is not None and copy_gb_s else None)
    return {
        "impl": "derived", "figure": "gpu_summary",
        "prefill512_mnemo_over_eager": ratio(tps["mnemo_prefill512"],
                                             tps["peer_prefill512"]),
        "prefill512_mnemo_over_compile": ratio(tps["mnemo_prefill512"],
                                               tps["peer_prefill512_compile"]),
        "prefill128_mnemo_over_eager": ratio(tps["mnemo_prefill128"],
                                             tps["peer_prefill128"]),
        "decode_mnemo_ms_per_token": mnemo_ms,
        "decode_peer_ms_per_token": peer_ms,
        "decode_peer_ms_over_mnemo_ms": ratio(peer_ms, mnemo_ms),
        "d2d_copy_gb_s": copy_gb_s,
        "decode_bytes_per_token": bytes_per_token,
        "decode_ideal_ms_per_token": ideal_ms,
        "decode_roofline_ratio": ratio(mnemo_ms, ideal_ms),
    }


def print_summary(info, res, d, runner, out_path, t_start):
    out = sys.stderr
    peer = first(res["peer_prefill512"]) or first(res["peer_decode"])
    print("\n== mnemo GPU benchmark ==", file=out)
    print(f"{info['date']}  commit {info['commit'] or '?'}"
          f"{' (dirty)' if info['dirty'] else ''}  GPU "
          f"{info['gpu'] or peer.get('device', '?')}  torch "
          f"{peer.get('torch', '?')}", file=out)
    mem = (first(res["mnemo_decode"]) or peer).get("mem", "?")
    print(f"{f'figure (memory {mem})':<24}{'mnemo':>11}{'peer eager':>12}"
          f"{'peer compile':>14}{'x eager':>9}{'x compile':>11}", file=out)
    for seg in (512, 128):
        m = median(first(res[f"mnemo_prefill{seg}"]).get("tokens_per_s"))
        e = median(first(res[f"peer_prefill{seg}"]).get("tokens_per_s"))
        if seg == 512:  # the only compiled peer figure
            c = fmt(median(first(res["peer_prefill512_compile"]).get(
                "tokens_per_s")))
            xc = fmt(d["prefill512_mnemo_over_compile"], ".2f")
        else:
            c = xc = "-"
        xe = fmt(d[f"prefill{seg}_mnemo_over_eager"], ".2f")
        print(f"{f'prefill S={seg} tok/s':<24}{fmt(m):>11}{fmt(e):>12}"
              f"{c:>14}{xe:>9}{xc:>11}", file=out)
    print(f"{'decode ms/token':<24}"
          f"{fmt(d['decode_mnemo_ms_per_token'], '.3f'):>11}"
          f"{fmt(d['decode_peer_ms_per_token'], '.3f'):>12}{'-':>14}"
          f"{fmt(d['decode_peer_ms_over_mnemo_ms'], '.2f'):>9}{'-':>11}",
          file=out)
    print("(x = mnemo's speedup: mnemo tok/s / peer tok/s; decode: peer ms / "
          "mnemo ms)", file=out)
    compile_s = num(first(res["peer_prefill512_compile"]).get("compile_s"))
    if compile_s is not None:
        print(f"torch.compile: first call {compile_s:.1f} s", file=out)
    bpt = d["decode_bytes_per_token"]
    print(f"decode roofline: {fmt(bpt / 1e6 if bpt else None)} MB/token, "
          f"copy bandwidth {fmt(d['d2d_copy_gb_s'])} GB/s, ideal "
          f"{fmt(d['decode_ideal_ms_per_token'], '.3f')} ms/token; measured/"
          f"ideal = {fmt(d['decode_roofline_ratio'], '.2f')}", file=out)
    parts = []
    for b in BATCHES:
        line = first(res[f"mnemo_batched{b}"])
        parts.append(f"B={b} {fmt(median(line.get('tokens_per_s')), '.0f')}")
    print("mnemo batched decode, tok/s: " + ", ".join(parts), file=out)
    dec16 = first(res.get("mnemo_bf16_decode", []))
    pre16 = first(res.get("mnemo_bf16_prefill512", []))
    ms16 = ms_per_token(dec16)
    bpt16 = num(dec16.get("bytes_per_token"))
    ideal16 = (bpt16 / (d["d2d_copy_gb_s"] * 1e9) * 1e3
               if bpt16 and d.get("d2d_copy_gb_s") else None)
    print(f"mnemo bf16 weights: decode {fmt(ms16, '.3f')} ms/token "
          f"({fmt(bpt16 / 1e6 if bpt16 else None)} MB/token, measured/ideal = "
          f"{fmt(ms16 / ideal16 if ms16 and ideal16 else None, '.2f')}), prefill S=512 "
          f"{fmt(median(pre16.get('tokens_per_s')), '.0f')} tok/s", file=out)
    errors = [l for l in runner.lines if "error" in l]
    for l in errors:
        print(f"ERROR {l['step']}: {l['error']}", file=out)
    print(f"total {time.monotonic() - t_start:.0f} s; wrote {out_path}",
          file=out)


# --------------------------------------------------------------------------
# Main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=None,
                    help="result directory (default bench/results)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build",
                                                        "engine-gpu"))
    ap.add_argument("--model-dir", default=os.path.join(
        ROOT, "build", "bench-models", "gpu-wt103size"))
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="wall-clock budget of the whole run")
    ap.add_argument("--quick", action="store_true",
                    help="fewer runs; no torch.compile figure")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    out_path = result_path("gpu", args.out_dir)
    runner = Runner(out_path, args.budget_s)
    info = machine_info(gpu=True)
    runner.record(info)

    py = sys.executable
    mnemo_bench = os.path.join(args.build_dir, "mnemo_bench")
    physical = os.path.join(args.build_dir, "physical_limits")
    mnemo_runs = ["--runs", "3"] if args.quick else []
    peer_runs = ["--runs", "3" if args.quick else "5"]
    peer_steps = ["--decode-steps", "16" if args.quick else "32"]

    runner.step("model", {"impl": "model", "figure": "checkpoint"},
                [py, "-m", "bench.benchlib.make_bench_model", "--out", args.model_dir],
                240)
    limits = runner.step("physical_limits --cuda",
                         {"impl": "machine", "figure": "limits"},
                         [physical, "--cuda"], 120)

    res = {}
    mnemo = [mnemo_bench, "--model", args.model_dir, "--device", "cuda"]
    res["mnemo_decode"] = runner.step(
        "mnemo decode", {"impl": "mnemo", "figure": "decode"},
        mnemo + ["--figure", "decode", "--decode-steps", "64"] + mnemo_runs,
        120)
    for seg in (512, 128):
        res[f"mnemo_prefill{seg}"] = runner.step(
            f"mnemo prefill S={seg}",
            {"impl": "mnemo", "figure": "prefill", "segment": seg},
            mnemo + ["--figure", "prefill", "--segment", str(seg)]
            + mnemo_runs, 120)
    for b in BATCHES:
        res[f"mnemo_batched{b}"] = runner.step(
            f"mnemo batched-decode B={b}",
            {"impl": "mnemo", "figure": "batched-decode", "batch": b},
            mnemo + ["--figure", "batched-decode", "--batch", str(b)]
            + mnemo_runs, 120)

    # The same draws stored as bfloat16: mnemo keeps 16-bit weights on the GPU (decode reads
    # half the bytes; prefill runs on the tensor cores with activations rounded to bf16).
    bf16_dir = args.model_dir.rstrip("/") + "-bf16"
    runner.step("model bf16", {"impl": "model", "figure": "checkpoint", "dtype": "bfloat16"},
                [py, "-m", "bench.benchlib.make_bench_model", "--out", bf16_dir,
                 "--dtype", "bfloat16"],
                240)
    mnemo16 = [mnemo_bench, "--model", bf16_dir, "--device", "cuda"]
    res["mnemo_bf16_decode"] = runner.step(
        "mnemo bf16 decode", {"impl": "mnemo", "figure": "decode", "dtype": "bfloat16"},
        mnemo16 + ["--figure", "decode", "--decode-steps", "64"] + mnemo_runs, 120)
    res["mnemo_bf16_prefill512"] = runner.step(
        "mnemo bf16 prefill S=512",
        {"impl": "mnemo", "figure": "prefill", "segment": 512, "dtype": "bfloat16"},
        mnemo16 + ["--figure", "prefill", "--segment", "512"] + mnemo_runs, 120)

    peer = [py, "-m", "bench.peers.peer_pytorch_gpu", "--ckpt-dir", args.model_dir]
    peer_tag = {"impl": "pytorch_reference"}
    for seg in (512, 128):
        res[f"peer_prefill{seg}"] = runner.step(
            f"peer prefill S={seg} eager",
            dict(peer_tag, figure="prefill", segment=seg, mode="eager"),
            peer + ["--figure", "prefill", "--segment", str(seg)] + peer_runs,
            150)
    res["peer_decode"] = runner.step(
        "peer decode eager", dict(peer_tag, figure="decode", mode="eager"),
        peer + ["--figure", "decode"] + peer_runs + peer_steps, 150)
    res["peer_prefill512_compile"] = [] if args.quick else runner.step(
        "peer prefill S=512 compile",
        dict(peer_tag, figure="prefill", segment=512, mode="compile"),
        peer + ["--figure", "prefill", "--segment", "512", "--mode",
                "compile"] + peer_runs, 330)

    derived = derive(res, limits)
    runner.record(derived)
    runner.record({"impl": "machine", "figure": "run_end",
                   "total_wall_s": round(time.monotonic() - t_start, 1)})
    runner.out.close()
    print_summary(info, res, derived, runner, out_path, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
