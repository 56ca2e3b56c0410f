#!/usr/bin/env python3
"""16-bit weights on the CPU: decode and prefill of f32, bf16 and f16 checkpoints, as fractions
of the machine's limits measured in the same run.

The figure behind "16-bit weights on the CPU" (issue 20). One run on one machine, the 12-layer
d512 benchmark model of run_cpu_bench.py (same seed, same draws) stored three ways: float32, and
converted from the same Hugging Face weights with `tools/convert_hf_transfo_xl.py --dtype`
bfloat16 and float16 (cached under build/bench-models/). For each weight form:
  f32            the float32 checkpoint (the oracle's weights);
  bf16-widened   the bf16 checkpoint with `--cpu-weights float32` (what every earlier build did:
                 widened to float32 at load, same bytes as f32);
  bf16, f16      the 16-bit checkpoints with `--cpu-weights stored` (the default): weights stay
                 16-bit, decode widens in registers, prefill widens tiles for sgemm;
  <w>+<m>mem     the same weights with `--session-memory bfloat16|float16`: the K/V memory
                 16-bit too (half the memory bytes a step reads);
  bf16p          the bf16 checkpoint with `--cpu-weights bf16-products`: decode products round
                 their activations to bf16 for AVX-512 BF16 dot products (opt-in, within 2^-9
                 of sum |x*w| of bf16's; the same as bf16 on CPUs without them);
measure with mnemo_bench:
  decode    memory 512, 64 steps per run, median tokens/s; the bytes a step reads (mnemo_bench's
            bytes_per_token: weights at their stored width + K/V memory + distance-table rows)
            and the fraction of the bandwidth limit: tokens/s x bytes per token / the best read
            bandwidth physical_limits measured in this run;
  prefill   512 tokens on a full 512-token memory (logits of the last position), median
            tokens/s, and the fraction of the sgemm limit: FLOPs per token (run_cpu_bench's
            definition) x tokens/s / the best OpenBLAS sgemm rate measured in this run;
  batched   decode of --batches sessions at once (mnemo_bench --figure batched-decode: one
            Forward per step for the whole batch, memory 512 each), total tokens/s and the
            ratio to the same form's single-session decode (target >= 4x at B = 32);
  weights   resident bytes after load (rss_after_load_mib) of each form.
physical_limits runs before and after the figures; the best of the two passes counts (a pass
slowed by other load would flatter mnemo). Some VMs' memory bandwidth moves between levels from
minute to minute (the AMD EPYC VM of 2026-12-06: 26-31 GB/s in some passes, 40-44 in others), so
a quick pass (`physical_limits --quick`) also runs right before each form's decode figure and
once after the last: each decode figure is also given as a fraction of the better of the two
read bandwidths measured beside it (fraction_of_adjacent_limit; --no-adjacent-limits skips
these passes). Ratios are against f32 in the same run (targets,
never assertions: decode >= 0.85 of the bandwidth limit with 16-bit weights, prefill >= 0.70 of
the sgemm peak, f32 weights with 16-bit memory >= 0.90). There is no llama.cpp on these machines (not in Debian bookworm): its figures
on the same shapes are in ../shared/PLATFORM-NOTES.md and bench/RESULTS.md.

JSON lines (bench/results/cpu_weights-<UTC time>-<commit>.jsonl): run_info, the machine lines,
each mnemo_bench line (tagged with `weights`), and one `derived` line per weight form and
figure.

  cmake --build build/release --target mnemo_bench physical_limits
  PYTHONPATH=python:. .venv/bin/python -m bench.runners.run_cpu_weights_bench [--runs 7]
"""

import argparse
import os
import subprocess
import sys

from bench.benchlib import ROOT
from bench.benchlib.checkpoints import MODEL, PREFILL_MEM, ensure_checkpoints
from bench.benchlib.machine import Log, QuietWait, bench_env, machine_info
from bench.benchlib.process import python_env, require_built, run_clean
from bench.benchlib.results import ResultWriter, result_path
from bench.runners.run_cpu_bench import flops_per_prefill_token, limits_from


# (label, checkpoint dtype, --cpu-weights, --session-memory)
FORMS = (("f32", "float32", "stored", "float32"),
         ("bf16-widened", "bfloat16", "float32", "float32"),
         ("bf16", "bfloat16", "stored", "float32"), ("f16", "float16", "stored", "float32"),
         ("f32+bf16mem", "float32", "stored", "bfloat16"),
         ("bf16+bf16mem", "bfloat16", "stored", "bfloat16"),
         ("f16+f16mem", "float16", "stored", "float16"),
         ("bf16p", "bfloat16", "bf16-products", "float32"),
         ("bf16p+bf16mem", "bfloat16", "bf16-products", "bfloat16"))
PREFILL_SEGMENT = 512
TARGETS = {"decode": 0.85, "decode-f32-weights": 0.90, "prefill": 0.70}

log = Log("run_cpu_weights_bench")


def ensure_16bit(hf_dir, f32_dir, dtype, python, env):
    """The benchmark model's mnemo checkpoint stored as `dtype`, converted from its HF weights
    (whose config has the prefill memory, PREFILL_MEM)."""
    out = f32_dir.rstrip("/") + f"-{dtype}"
    if os.path.isfile(os.path.join(out, "model.safetensors")):
        return out
    log(f"converting {hf_dir} to {dtype}")
    subprocess.run([python, os.path.join(ROOT, "tools", "convert_hf_transfo_xl.py"), hf_dir,
                    out, "--dtype", dtype],
                   check=True, cwd=ROOT, env=env)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "build", "bench-models"))
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--out", help="JSON lines file (default bench/results/cpu_weights-...)")
    ap.add_argument("--openblas-coretype", help="as run_cpu_bench.py")
    ap.add_argument("--runs", type=int, default=7, help="mnemo_bench runs per figure")
    ap.add_argument("--batches", default="8,32",
                    help="batched-decode sizes (comma-separated; empty: none)")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-runs of a figure while other processes took over 10%% of the CPUs")
    ap.add_argument("--forms", default=",".join(f[0] for f in FORMS),
                    help="weight/memory forms to run (comma-separated labels; f32 always runs)")
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    ap.add_argument("--quiet-budget", type=float, default=120.0)
    ap.add_argument("--no-adjacent-limits", dest="adjacent_limits", action="store_false",
                    help="skip the quick bandwidth passes beside each decode figure")
    args = ap.parse_args(argv)

    batches = [int(b) for b in args.batches.split(",") if b]
    wanted = set(args.forms.split(",")) | {"f32"}
    unknown = wanted - {f[0] for f in FORMS}
    if unknown:
        ap.error(f"unknown forms {sorted(unknown)}")
    forms = [f for f in FORMS if f[0] in wanted]
    quiet = QuietWait(args.quiet_budget)
    env = python_env(bench_env(args.openblas_coretype))
    python = args.python if os.path.exists(args.python) else sys.executable
    mnemo_bench, physical = require_built(args.build_dir, ("mnemo_bench", "physical_limits"))
    hf_dir, ckpt = ensure_checkpoints(args.models_dir, python, log)
    dirs = {"float32": ckpt[PREFILL_MEM]}
    for dtype in ("bfloat16", "float16"):
        dirs[dtype] = ensure_16bit(hf_dir, ckpt[PREFILL_MEM], dtype, python, env)

    out = ResultWriter(args.out or result_path("cpu_weights"), echo=True)
    out.record(machine_info(env, label="16-bit CPU weights"))

    def clean(cmd):
        return run_clean(cmd, env, 300, quiet, args.quiet_wait, args.retries, log=log)

    log("physical limits (1/2)")
    machine = out.extend(clean([physical]))
    results = {}
    adjacent = []  # the quick passes' read bandwidth, in run order

    def adjacent_pass(tag):
        lines = clean([physical, "--quick"])
        for line in lines:
            line["adjacent_pass"] = tag
        out.extend(lines)
        adjacent.append(limits_from(lines)["bandwidth_gbps"])  # as the run's limit is read

    for label, dtype, cpu_weights, memory in forms:
        form = ["--cpu-weights", cpu_weights, "--session-memory", memory]
        if args.adjacent_limits:
            log(f"quick bandwidth pass before decode {label}")
            adjacent_pass(label)
        for fig in ("decode", "prefill"):
            log(f"mnemo {fig} {label}")
            cmd = [mnemo_bench, "--model", dirs[dtype], *form, "--figure", fig, "--runs",
                   str(args.runs)]
            cmd += (["--segment", str(PREFILL_SEGMENT), "--logits", "last"] if fig == "prefill"
                    else ["--decode-steps", "64"])
            lines = clean(cmd)
            for line in lines:
                line["weights"] = label
            out.extend(lines)
            results[(label, fig)] = next(l for l in lines if l.get("figure") == fig)
        for b in batches:
            log(f"mnemo batched-decode B={b} {label}")
            lines = clean([mnemo_bench, "--model", dirs[dtype], *form, "--figure",
                           "batched-decode", "--batch", str(b), "--runs", str(args.runs)])
            for line in lines:
                line["weights"] = label
            out.extend(lines)
            results[(label, f"batched{b}")] = next(
                l for l in lines if l.get("figure") == "batched-decode")
    if args.adjacent_limits:
        log("quick bandwidth pass after the last form")
        adjacent_pass("end")
    log("physical limits (2/2)")
    machine += out.extend(clean([physical]))

    limits = limits_from(machine)
    cfg = dict(MODEL, mem_len=PREFILL_MEM)
    flops = flops_per_prefill_token(cfg, PREFILL_SEGMENT, PREFILL_MEM)["total"]
    base = {fig: results[("f32", fig)]["tokens_per_s"]["median"] for fig in ("decode", "prefill")}
    rows = []
    for index, (label, dtype, cpu_weights, memory) in enumerate(forms):
        for fig in ("decode", "prefill"):
            m = results[(label, fig)]
            med = m["tokens_per_s"]["median"]
            d = {"impl": "derived", "figure": fig, "weights": label, "checkpoint_dtype": dtype,
                 "cpu_weights": cpu_weights, "session_memory": memory, "tokens_per_s": med,
                 "over_f32": med / base[fig], "rss_after_load_mib": m.get("rss_after_load_mib")}
            if fig == "decode":
                per_token = m["bytes_per_token"]
                d.update({"bytes_per_token": per_token,
                          "weight_bytes_per_token": m["weight_bytes_per_token"],
                          "bandwidth_gbps": limits["bandwidth_gbps"],
                          "limit_tokens_per_s": limits["bandwidth_gbps"] * 1e9 / per_token,
                          "fraction_of_limit": med * per_token / (limits["bandwidth_gbps"] * 1e9),
                          "memory_bytes_per_token": m["memory_bytes_per_token"],
                          "adjacent_bandwidth_gbps": None, "fraction_of_adjacent_limit": None,
                          "target": (TARGETS["decode"] if dtype != "float32" else
                                     TARGETS["decode-f32-weights"] if memory != "float32"
                                     else None)})
                if args.adjacent_limits:  # the passes before this form and after it
                    near = max(adjacent[index], adjacent[index + 1])
                    d.update({"adjacent_bandwidth_gbps": near,
                              "fraction_of_adjacent_limit": med * per_token / (near * 1e9)})
            else:
                d.update({"flops_per_token": flops,
                          "sgemm_peak_gflops": limits["sgemm_peak_gflops"],
                          "fraction_of_limit": med * flops / (limits["sgemm_peak_gflops"] * 1e9),
                          "target": TARGETS["prefill"]})
            out.record(d)
            rows.append(d)
        for b in batches:
            m = results[(label, f"batched{b}")]
            med = m["tokens_per_s"]["median"]
            single = results[(label, "decode")]["tokens_per_s"]["median"]
            d = {"impl": "derived", "figure": f"batched-decode-{b}", "weights": label,
                 "checkpoint_dtype": dtype, "cpu_weights": cpu_weights,
                 "session_memory": memory, "batch": b,
                 "tokens_per_s": med, "over_f32": med / results[("f32", f"batched{b}")][
                     "tokens_per_s"]["median"],
                 "over_single_session": med / single, "target_over_single": 4.0 if b == 32 else None,
                 "rss_after_load_mib": m.get("rss_after_load_mib"), "fraction_of_limit": None}
            out.record(d)
            rows.append(d)
    out.close()

    print(f"\nlimits: read bandwidth {limits['bandwidth_gbps']:.1f} GB/s, "
          f"sgemm peak {limits['sgemm_peak_gflops']:.1f} GFLOP/s")
    if args.adjacent_limits:
        print("read bandwidth beside each form's decode: " +
              ", ".join(f"{g:.1f}" for g in adjacent) + " GB/s")
    print(f"{'weights':<15}{'figure':<19}{'tok/s':>9}{'x f32':>8}{'MB/token':>10}"
          f"{'of limit':>10}{'of adj':>8}{'x single':>10}{'RSS MiB':>9}")
    for d in rows:
        mb = f"{d['bytes_per_token'] / 1e6:.1f}" if "bytes_per_token" in d else "-"
        frac = d["fraction_of_limit"]
        single = d.get("over_single_session")
        rss = d["rss_after_load_mib"]
        adj = d.get("fraction_of_adjacent_limit")
        print(f"{d['weights']:<15}{d['figure']:<19}{d['tokens_per_s']:>9.1f}{d['over_f32']:>8.2f}"
              f"{mb:>10}{(f'{frac:.2f}' if frac is not None else '-'):>10}"
              f"{(f'{adj:.2f}' if adj is not None else '-'):>8}"
              f"{(f'{single:.2f}' if single is not None else '-'):>10}"
              f"{(f'{rss:.0f}' if rss is not None else '-'):>9}")
    print(f"results: {out.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
