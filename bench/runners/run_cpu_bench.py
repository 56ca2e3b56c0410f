#!/usr/bin/env python3
"""mnemo CPU benchmark: mnemo vs Hugging Face TransfoXL vs the PyTorch reference.

One run on one machine, one checkpoint (random weights, f32):
  12 layers, d_model 512, 8 heads x 64, d_inner 2048, vocabulary 32000
  (clamp_len 1000, same_length true: Hugging Face's Transformer-XL defaults).

Steps (each measuring step is its own subprocess, so peak RSS is per figure):
  1. checkpoints (cached under build/bench-models/): a seeded random-init HF
     TransfoXLLMHeadModel saved with save_pretrained (tools/
     convert_hf_transfo_xl.py --random-init --save-hf), the mnemo checkpoint
     converted from it (mem_len 512), and a second mnemo checkpoint with
     mem_len 1600 and the same weights file (hard link).
  2. parity: log-probabilities of mnemo, HF and the reference on the same ids.
  3. physical_limits: memory bandwidth and OpenBLAS sgemm peak.
  4. figures, for mnemo (mnemo_bench), HF and the reference
     (bench/peers/peer_pytorch.py): prefill segment 128 and 512 on a full memory of
     512 (logits of the last position: LogitsMode::kLast); decode with memory
     512 and 1600. Extra, informational: prefill 512 with every position's
     logits (mnemo LogitsMode::kAll vs HF's LM head forward), the scoring
     use case. physical_limits runs again at the end; the best pass counts.
  5. ratios (mnemo / peer) and fractions of the physical limits; summary;
     every JSON line goes to bench/results/cpu-<UTC time>-<commit>.jsonl.

BLAS settings are identical for every subprocess: OPENBLAS_CORETYPE as
inherited (the project's machines set Haswell; when it is unset this script
sets Haswell unless --openblas-coretype auto), OPENBLAS_NUM_THREADS as
inherited or the number of CPUs, OMP_WAIT_POLICY=PASSIVE.

Physical limits (explicit definitions):
  decode  bytes read per token = every weight a decode step reads (per layer
          qkv, o, fc1 + bias, fc2 + bias, LayerNorms, r_w/r_r biases; the
          output layer [vocab, d_model] + bias; one embedding row; W_r is not
          read: the positional table is precomputed) + the session state read
          (K and V of M positions per layer) + the new K/V row written.
          limit tokens/s = best all-threads STREAM-like read bandwidth over a
          1 GiB array / those bytes. A second fraction also counts the rows of
          the precomputed positional table a step reads (min(M, clamp)+1 rows
          of H*d_h per layer).
  prefill FLOPs per token = GEMM FLOPs only (2*m*n*k): qkv, o, fc1, fc2
          projections; attention content (q+u).k, positional (q+v).R per
          distinct distance, and probs.V over the keys each query may see
          (causal, same_length, memory M = mem_len full); the output layer for
          the segment's last position only (LogitsMode::kLast), divided by S.
          LayerNorm, softmax, bias/ReLU and embedding are not counted.
          limit tokens/s = OpenBLAS sgemm peak (best 2048^3, any thread count)
          / FLOPs per token. A second fraction uses the best rate OpenBLAS
          reached on the prefill's own projection shapes ([S,512]x[512,1536]
          etc.).
"""

import argparse
import os
import subprocess
import sys
import time

from bench.benchlib import ROOT
from bench.benchlib.checkpoints import (DECODE_MEMS, MODEL, PREFILL_MEM,
                                        ensure_checkpoints)
from bench.benchlib.machine import Log, QuietWait, bench_env, machine_info
from bench.benchlib.process import python_env, require_built, run_clean, run_json
from bench.benchlib.results import ResultWriter, result_path

PREFILL_SEGMENTS = (128, 512)

TARGETS = {"decode": {"vs_hf": 10.0, "fraction": 0.5},
           "prefill": {"vs_hf": 3.0, "fraction": 0.5}}

log = Log("run_cpu_bench")


def figure_key(line):
    return (line["figure"], line["segment"], line["mem"],
            line.get("logits", "last"))


# --------------------------------------------------------------------------
# Physical limits


def bytes_per_decode_token(cfg, mem):
    d, h, dh, f, v = (cfg["d_model"], cfg["n_head"], cfg["d_head"],
                      cfg["d_inner"], cfg["vocab_size"])
    hd = h * dh
    layer_weights = (3 * hd * d + d * hd + f * d + f + d * f + d
                     + 4 * d + 2 * hd)
    weights = cfg["n_layer"] * layer_weights + v * d + v + d
    state = cfg["n_layer"] * (2 * mem * hd + 2 * hd)
    clamp = cfg["clamp_len"] if cfg["clamp_len"] > 0 else mem
    pos_table = cfg["n_layer"] * (min(mem, clamp) + 1) * hd
    return {"weights": 4 * weights, "state": 4 * state,
            "pos_table": 4 * pos_table}


def first_visible_key(i, s, m, mem_len, same_length):
    if not same_length:
        return 0
    k = m + s
    shift = mem_len - m if k > mem_len else s
    return max(0, i - shift + 1)


def flops_per_prefill_token(cfg, s, m, logits="last"):
    d, h, dh, f, v = (cfg["d_model"], cfg["n_head"], cfg["d_head"],
                      cfg["d_inner"], cfg["vocab_size"])
    hd = h * dh
    proj = 2 * s * (d * 3 * hd + hd * d + 2 * d * f)
    clamp = cfg["clamp_len"] if cfg["clamp_len"] > 0 else 1 << 60
    attn = 0
    for i in range(s):
        first = first_visible_key(i, s, m, cfg["mem_len"], cfg["same_length"])
        keys = m + i - first + 1
        distances = min(keys, clamp + 1)
        attn += 4 * hd * keys + 2 * hd * distances
    head = 2 * d * v * (s if logits == "all" else 1)
    total = cfg["n_layer"] * (proj + attn) + head
    return {"total": total / s, "projections": cfg["n_layer"] * proj / s,
            "attention": cfg["n_layer"] * attn / s, "output_head": head / s}


def limits_from(machine_lines):
    read = [l for l in machine_lines if l["figure"] == "bandwidth"
            and l["kernel"] == "read" and l["array"] == "large"]
    bw = max(read, key=lambda l: l["best_gbps"])
    square = [l for l in machine_lines if l["figure"] == "sgemm"
              and l["shape"] == "square"]
    peak = max(square, key=lambda l: l["best_gflops"])
    shaped = {}
    for l in machine_lines:
        if l["figure"] == "sgemm" and l["shape"].startswith("prefill_"):
            key = (l["m"], l["shape"])
            shaped[key] = max(shaped.get(key, 0.0), l["best_gflops"])
    return {"bandwidth_gbps": bw["best_gbps"], "bandwidth_threads":
            bw["threads"], "sgemm_peak_gflops": peak["best_gflops"],
            "sgemm_peak_threads": peak["threads"], "sgemm_shaped": shaped}


def prefill_shaped_gflops(limits, s, cfg):
    """FLOP-weighted harmonic mean of the best OpenBLAS rates on this S's
    projection shapes: the rate the projections could run at."""
    d, hd, f = cfg["d_model"], cfg["n_head"] * cfg["d_head"], cfg["d_inner"]
    parts = {"prefill_qkv": d * 3 * hd, "prefill_fc1": d * f,
             "prefill_fc2": f * d}
    num = sum(parts.values())
    den = 0.0
    for shape, w in parts.items():
        rate = limits["sgemm_shaped"].get((s, shape))
        if not rate:
            return None
        den += w / rate
    return num / den


# --------------------------------------------------------------------------
# Main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build",
                                                        "release"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "build",
                                                         "bench-models"))
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin",
                                                     "python"))
    ap.add_argument("--out", help="JSON lines file (default bench/results/"
                    "cpu-<UTC time>-<commit>.jsonl)")
    ap.add_argument("--openblas-coretype",
                    help="set OPENBLAS_CORETYPE for every subprocess "
                         "('auto': unset it)")
    ap.add_argument("--runs", type=int, default=7, help="mnemo runs")
    ap.add_argument("--peer-runs", type=int, default=3)
    ap.add_argument("--hf-decode-steps", type=int, default=8,
                    help="decode steps per peer run (x --peer-runs)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time mnemo's Forward kernel by kernel "
                         "(mnemo_bench --figure breakdown)")
    ap.add_argument("--no-all-logits", action="store_true",
                    help="skip the extra all-logits prefill figure")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-runs of a figure during which other processes "
                         "used over 10%% of the CPUs")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="max seconds to wait for idle CPUs before each "
                         "measurement")
    ap.add_argument("--quiet-budget", type=float, default=120.0,
                    help="max seconds of such waiting in the whole run")
    args = ap.parse_args(argv)

    t_start = time.time()
    quiet = QuietWait(args.quiet_budget)
    env = python_env(bench_env(args.openblas_coretype))
    python = args.python if os.path.exists(args.python) else sys.executable
    mnemo_bench, physical = require_built(args.build_dir,
                                          ("mnemo_bench", "physical_limits"))
    hf_dir, ckpt = ensure_checkpoints(args.models_dir, python, log)
    out = ResultWriter(args.out or result_path("cpu"), echo=True)
    lines = out.lines
    out.record(machine_info(env))
    emit = out.extend

    def clean(cmd, timeout, retries):
        return run_clean(cmd, env, timeout, quiet, args.quiet_wait, retries, log=log)

    # Parity: same weights in all three.
    ids_file = os.path.join(args.models_dir, "parity-ids.txt")
    logits_file = os.path.join(args.models_dir, "parity-mnemo-logits.f32")
    with open(ids_file, "w") as f:
        f.write(" ".join(str((i * 7919 + 13) % MODEL["vocab_size"])
                         for i in range(24)) + "\n")
    subprocess.run([mnemo_bench, "--model", ckpt[PREFILL_MEM], "--figure",
                    "logits", "--ids-file", ids_file, "--output",
                    logits_file], env=env, cwd=ROOT, check=True)
    parity = emit(run_json([python, "-m", "bench.peers.peer_pytorch", "--check-parity",
                   "--hf-dir", hf_dir, "--ckpt-dir", ckpt[PREFILL_MEM],
                   "--ids-file", ids_file, "--mnemo-logits", logits_file],
                  env, 300))

    log("physical limits (1/2)")
    machine = emit(clean([physical], 300, args.retries))

    figures = [("prefill", s, PREFILL_MEM, "last")
               for s in PREFILL_SEGMENTS] + [
        ("decode", 1, m, "last") for m in DECODE_MEMS]
    # Extra (not a target figure): prefill with every position's logits, the
    # scoring use case (mnemo LogitsMode::kAll vs HF's LM head forward).
    extra = [] if args.no_all_logits else [("prefill", 512, PREFILL_MEM,
                                            "all")]
    results = {}
    for fig, seg, mem, logits in figures + extra:
        log(f"mnemo {fig} segment {seg} mem {mem} logits {logits}")
        cmd = [mnemo_bench, "--model", ckpt[mem], "--figure", fig,
               "--runs", str(args.runs)]
        if fig == "prefill":
            cmd += ["--segment", str(seg), "--logits", logits]
        else:
            cmd += ["--decode-steps", "64"]
        for line in emit(clean(cmd, 300, args.retries)):
            results[("mnemo",) + figure_key(line)] = line

    peers = ["hf_transfo_xl"] + ([] if args.skip_reference
                                 else ["pytorch_reference"])
    for impl in peers:
        for fig, seg, mem, logits in figures + (
                extra if impl == "hf_transfo_xl" else []):
            log(f"{impl} {fig} segment {seg} mem {mem} logits {logits}")
            cmd = [python, "-m", "bench.peers.peer_pytorch", "--impl", impl,
                   "--figure", fig, "--hf-dir", hf_dir, "--ckpt-dir",
                   ckpt[mem], "--mem", str(mem), "--runs",
                   str(args.peer_runs), "--decode-steps",
                   str(args.hf_decode_steps)]
            if fig == "prefill":
                cmd += ["--segment", str(seg), "--logits", logits]
            if impl == "pytorch_reference" and fig == "prefill" and seg >= 512:
                # The oracle materialises [T, K, H, d_h] distance embeddings:
                # ~15 s and ~2.7 GB per 512-token segment. Keep it short.
                cmd[cmd.index("--runs") + 1] = "2"
                cmd += ["--threads", "2", "--warmup", "0"]
            # Re-run only the cheap peer figures when contaminated.
            cheap = not (impl == "pytorch_reference" and fig == "prefill")
            for line in emit(clean(cmd, 600, args.retries if cheap else 0)):
                results[(impl,) + figure_key(line)] = line

    if args.breakdown:
        # Diagnostic: time per kernel inside mnemo's Forward (not a figure).
        for seg, mem in ((1, 512), (1, 1600), (128, 512), (512, 512)):
            log(f"mnemo breakdown segment {seg} mem {mem}")
            emit(clean([mnemo_bench, "--model", ckpt[mem], "--figure",
                        "breakdown", "--segment", str(seg)], 300, args.retries))

    # Limits again at the end: a limit is a best case, so the best of the two
    # passes is used (a pass slowed by other load would flatter mnemo).
    log("physical limits (2/2)")
    machine += emit(clean([physical], 300, args.retries))

    # Derived figures.
    limits = limits_from(machine)
    cfg = dict(MODEL)
    summary_rows = []
    for fig, seg, mem, logits in figures + extra:
        key = (fig, seg, mem, logits)
        m = results[("mnemo",) + key]
        med = m["tokens_per_s"]["median"]
        c = dict(cfg, mem_len=mem)
        derived = {"impl": "derived", "figure": fig, "segment": seg,
                   "mem": mem, "logits": logits,
                   "mnemo_tokens_per_s": m["tokens_per_s"]}
        for impl in peers:
            if (impl,) + key not in results:
                continue
            p = results[(impl,) + key]["tokens_per_s"]
            derived[f"mnemo_over_{impl}"] = {
                "median": med / p["median"],
                "min": m["tokens_per_s"]["min"] / p["max"],
                "max": m["tokens_per_s"]["max"] / p["min"]}
        if fig == "decode":
            b = bytes_per_decode_token(c, mem)
            per_token = b["weights"] + b["state"]
            limit = limits["bandwidth_gbps"] * 1e9 / per_token
            limit_pos = (limits["bandwidth_gbps"] * 1e9
                         / (per_token + b["pos_table"]))
            derived.update({
                "bytes_per_token": b, "bandwidth_gbps":
                limits["bandwidth_gbps"], "limit_tokens_per_s": limit,
                "fraction_of_limit": med / limit,
                "fraction_of_limit_incl_pos_table": med / limit_pos,
                "effective_gbps": med * per_token / 1e9})
        else:
            fl = flops_per_prefill_token(c, seg, mem, logits)
            limit = limits["sgemm_peak_gflops"] * 1e9 / fl["total"]
            shaped = prefill_shaped_gflops(limits, seg, c)
            derived.update({
                "flops_per_token": fl,
                "sgemm_peak_gflops": limits["sgemm_peak_gflops"],
                "limit_tokens_per_s": limit,
                "fraction_of_limit": med / limit,
                "effective_gflops": med * fl["total"] / 1e9})
            if shaped:
                derived["sgemm_prefill_shapes_gflops"] = shaped
                derived["fraction_of_prefill_shapes_rate"] = (
                    med * fl["total"] / 1e9 / shaped)
        t = TARGETS[fig]
        derived["targets"] = None if logits != "last" else {
            "vs_hf": t["vs_hf"], "fraction": t["fraction"],
            "vs_hf_met": derived["mnemo_over_hf_transfo_xl"]["median"]
            >= t["vs_hf"],
            "fraction_met": derived["fraction_of_limit"] >= t["fraction"]}
        emit([derived])
        summary_rows.append(derived)

    done = {"impl": "machine", "figure": "run_end",
            "loadavg": os.getloadavg(),
            "total_wall_s": round(time.time() - t_start, 1)}
    emit([done])
    out.close()
    out_path = out.path

    # Human summary.
    info = lines[0]
    out = sys.stderr
    print("\n== mnemo CPU benchmark ==", file=out)
    print(f"{info['date']}  commit {info['commit']}"
          f"{' (dirty)' if info['dirty'] else ''}  {info['cpu_model']} x"
          f"{info['cpus']}  OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']}  "
          f"OPENBLAS_NUM_THREADS={info['OPENBLAS_NUM_THREADS']}", file=out)
    print(f"limits: read bandwidth {limits['bandwidth_gbps']:.1f} GB/s "
          f"({limits['bandwidth_threads']} threads), sgemm peak "
          f"{limits['sgemm_peak_gflops']:.0f} GFLOP/s "
          f"({limits['sgemm_peak_threads']} threads)", file=out)
    hdr = (f"{'figure':<33}{'mnemo tok/s (min/med/max)':<30}"
           f"{'HF med':>9}{'ref med':>9}{'x HF':>7}{'x ref':>8}"
           f"{'limit':>9}{'frac':>7}  targets")
    print(hdr, file=out)
    for d in summary_rows:
        fig, seg, mem, logits = (d["figure"], d["segment"], d["mem"],
                                 d["logits"])
        name = (f"prefill S={seg} M={mem}" if fig == "prefill"
                else f"decode M={mem}")
        if logits == "all":
            name += " all-logits"
        mt = d["mnemo_tokens_per_s"]
        hf = results[("hf_transfo_xl", fig, seg, mem, logits)][
            "tokens_per_s"]
        ref = results.get(("pytorch_reference", fig, seg, mem, logits))
        ref_med = ref["tokens_per_s"]["median"] if ref else float("nan")
        x_ref = d.get("mnemo_over_pytorch_reference", {}).get(
            "median", float("nan"))
        t = d["targets"]
        verdict = "(informational)" if t is None else (
            f"x{t['vs_hf']:g} HF {'met' if t['vs_hf_met'] else 'NOT met'}"
            f", {t['fraction']:.0%} limit "
            f"{'met' if t['fraction_met'] else 'NOT met'}")
        print(f"{name:<33}"
              f"{mt['min']:>8.1f}/{mt['median']:>8.1f}/{mt['max']:>8.1f}    "
              f"{hf['median']:>9.1f}{ref_med:>9.1f}"
              f"{d['mnemo_over_hf_transfo_xl']['median']:>7.2f}"
              f"{x_ref:>8.1f}{d['limit_tokens_per_s']:>9.0f}"
              f"{d['fraction_of_limit']:>7.2f}  {verdict}", file=out)
    for impl in ["mnemo"] + peers:
        rss = [results[(impl,) + k]["peak_rss_mib"] for k in figures]
        print(f"peak RSS {impl:<18}: " + ", ".join(
            f"{r:.0f}" for r in rss) + " MiB (figures in the order above)",
            file=out)
    print("parity (max |log-prob| difference, same ids): " + ", ".join(
        f"{k} {v:.1e}" for k, v in parity[0]["max_abs_logprob_diff"].items())
        + ("" if parity[0]["ok"] else "  <-- NOT THE SAME MODEL"), file=out)
    dirty = {}
    for l in lines:
        if l.get("foreign_cpu_frac", 0) > 0.10:
            name = ("physical_limits" if l["impl"] == "machine" else
                    f"{l['impl']} {l['figure']} S={l.get('segment')} "
                    f"M={l.get('mem')} {l.get('logits', '')}".strip())
            dirty[name] = max(dirty.get(name, 0), l["foreign_cpu_frac"])
    if dirty:
        print("WARNING: other processes used >10% of the CPUs during: "
              + "; ".join(f"{k} ({v:.0%})" for k, v in dirty.items()),
              file=out)
    print(f"total {done['total_wall_s']} s; wrote {out_path}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
