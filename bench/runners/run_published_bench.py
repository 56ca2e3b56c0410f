#!/usr/bin/env python3
"""Published layouts at their real size: wt103 and Mistral-7B decode, mnemo and Hugging Face.

wt103 is the one public Transformer-XL checkpoint: 18 layers of d_model 1024 (16 heads of 64,
d_inner 4096), memory 1600, clamp_len 1000, same_length, and the adaptive embedding and softmax
over 267,735 words (cutoffs 20000/40000/200000, div_val 4, tied tables and projections 1-3).
The checkpoint itself cannot be fetched here, so the figure runs on random weights in exactly
that config (cached under build/bench-models/wt103/: the Hugging Face directory and its mnemo
conversion); decode time depends on the shapes, not the values. One run on one machine:

  physical_limits   read bandwidth (the best of a pass before and one after the figures);
  mnemo             mnemo_bench --figure decode: memory primed to 1600 tokens, one token per
                    Forward (greedy: argmax of the log-probabilities, which the adaptive head
                    computes for the whole vocabulary), median tokens/s, and the bytes a step
                    reads (weights, memory, distance rows, every band of the head);
  hf_transfo_xl     bench/peers/peer_pytorch.py on the same weights: TransfoXLLMHeadModel with a
                    full 1600-row memory, one token per call (its prediction_scores are the same
                    full log-probabilities);
  derived           mnemo / Hugging Face, and each as a fraction of the bandwidth limit.

--layout mistral: Mistral 7B v0.1's exact layer (d_model 4096, 32 query heads and 8 key/value
heads of 128, SwiGLU of 14336, a sliding window of 4096, rotary positions, vocabulary 32000),
with --mistral-layers of its 32 layers (default 2: the machine's memory holds a float32 copy on
each side, and a decode step's time is per layer), window primed full (4095 tokens) on both
sides; Hugging Face's MistralForCausalLM runs from .venv-modern (transformers 4.44.2).
--mistral-dtypes adds mnemo figures of the same model converted with 16-bit weights (default
bfloat16; cached beside the float32 conversion as ours-<dtype>), each with its own bytes per step
and fraction of the limit; Hugging Face runs the float32 weights only.

JSON lines go to bench/results/published-<UTC time>-<commit>.jsonl; RESULTS.md records runs.

  cmake --build build/release --target mnemo_bench physical_limits
  PYTHONPATH=python:. .venv/bin/python -m bench.runners.run_published_bench [--runs 5]
      [--layout wt103|mistral]
"""

import argparse
import json
import os
import subprocess
import sys

from bench.benchlib import ROOT
from bench.benchlib.machine import Log, QuietWait, bench_env, machine_info
from bench.benchlib.process import python_env, require_built, run_clean, run_json
from bench.benchlib.results import ResultWriter, result_path
from bench.runners.run_cpu_bench import limits_from

# Hugging Face's transfo-xl-wt103 config.json, the fields that shape the computation
# (proj_share_all_but_first gives its tie_projs [False, True, True, True]).
WT103 = dict(vocab_size=267735, cutoffs=[20000, 40000, 200000], div_val=4, d_model=1024,
             d_embed=1024, n_head=16, d_head=64, d_inner=4096, n_layer=18, mem_len=1600,
             clamp_len=1000, same_length=True, untie_r=True, pre_lnorm=False, attn_type=0,
             tie_word_embeddings=True, proj_share_all_but_first=True, eos_token_id=0, dropout=0.0, dropatt=0.0)

# Mistral 7B v0.1's config.json, the fields that shape the computation (num_hidden_layers: 32).
MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                  sliding_window=4096, max_position_embeddings=32768, rope_theta=10000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)

log = Log("run_published_bench")


def cached_model(models_dir, name, fields, build):
    """(HF directory, mnemo checkpoint) under models_dir/name: made by build(fields, hf_dir,
    ours) unless the directory already holds them for these fields."""
    base = os.path.join(models_dir, name)
    hf_dir, ours = os.path.join(base, "hf"), os.path.join(base, "ours")
    stamp = os.path.join(base, "config.stamp.json")
    want = json.dumps(fields, sort_keys=True)
    if os.path.isfile(stamp) and open(stamp, encoding="utf-8").read() == want and \
            os.path.isfile(os.path.join(ours, "model.safetensors")):
        return hf_dir, ours
    build(fields, hf_dir, ours)
    with open(stamp, "w", encoding="utf-8") as f:
        f.write(want)
    return hf_dir, ours


def ensure_wt103(models_dir):
    """(HF directory, mnemo checkpoint) of a random model in wt103's config."""
    def build(fields, hf_dir, ours):
        from tools import convert_hf_transfo_xl as cv
        log("building a random wt103-config model (about 1.1 GB) and converting it")
        model = cv.random_hf_model(dict(fields), seed=0)
        model.save_pretrained(hf_dir)
        del model
        cv.convert_dir(hf_dir, ours)
    return cached_model(models_dir, "wt103", WT103, build)


def ensure_mistral(models_dir, layers, modern_python, env):
    """(HF directory, mnemo checkpoint) of a random model with Mistral 7B's layers (`layers` of
    them), made and converted by .venv-modern's Python (its transformers has Mistral)."""
    def build(fields, hf_dir, ours):
        log(f"building a random Mistral-7B-layer model ({layers} layers) and converting it")
        subprocess.run([modern_python, "-m", "tools.convert_hf_mistral", "--random-init",
                        json.dumps(fields, sort_keys=True), "--save-hf", hf_dir, ours],
                       env=env, cwd=ROOT, check=True, timeout=3600)
    return cached_model(models_dir, f"mistral7b-{layers}l",
                        dict(MISTRAL_7B, num_hidden_layers=layers), build)


def ensure_converted(hf_dir, ours, dtype, modern_python, env):
    """The Hugging Face directory converted with `dtype` weights beside `ours` (ours-<dtype>),
    made unless already there for the same float32 conversion."""
    target = f"{ours}-{dtype}"
    stamp = os.path.join(target, "source.stamp")
    source = str(os.path.getmtime(os.path.join(ours, "model.safetensors")))
    if os.path.isfile(stamp) and open(stamp, encoding="utf-8").read() == source:
        return target
    log(f"converting {hf_dir} with {dtype} weights")
    subprocess.run([modern_python, "-m", "tools.convert_hf_mistral", "--dtype", dtype, hf_dir,
                    target], env=env, cwd=ROOT, check=True, timeout=3600)
    with open(stamp, "w", encoding="utf-8") as f:
        f.write(source)
    return target


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "build", "bench-models"))
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--modern-python",
                    default=os.path.join(ROOT, ".venv-modern", "bin", "python"))
    ap.add_argument("--layout", choices=("wt103", "mistral"), default="wt103")
    ap.add_argument("--mistral-layers", type=int, default=2)
    ap.add_argument("--mistral-dtypes", default="bfloat16",
                    help="comma-separated 16-bit weight types also converted and decoded by "
                         "mnemo (--layout mistral; empty: none)")
    ap.add_argument("--out", help="JSON lines file (default bench/results/published-...)")
    ap.add_argument("--openblas-coretype", help="as run_cpu_bench.py")
    ap.add_argument("--runs", type=int, default=5, help="mnemo_bench runs")
    ap.add_argument("--decode-steps", type=int, default=16, help="mnemo steps per run")
    ap.add_argument("--peer-runs", type=int, default=3)
    ap.add_argument("--peer-decode-steps", type=int, default=4)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    ap.add_argument("--quiet-budget", type=float, default=120.0)
    args = ap.parse_args(argv)

    quiet = QuietWait(args.quiet_budget)
    env = python_env(bench_env(args.openblas_coretype))
    python = args.python if os.path.exists(args.python) else sys.executable
    mnemo_bench, physical = require_built(args.build_dir, ("mnemo_bench", "physical_limits"))
    layout = args.layout
    if layout == "wt103":
        hf_dir, ours = ensure_wt103(args.models_dir)
        peer_python, impl, mem = python, "hf_transfo_xl", WT103["mem_len"]
    else:
        peer_python, impl = args.modern_python, "hf_decoder"
        hf_dir, ours = ensure_mistral(args.models_dir, args.mistral_layers, peer_python, env)
        layout = f"mistral7b-{args.mistral_layers}l"
        mem = MISTRAL_7B["sliding_window"] - 1  # a full window, as mnemo_bench primes it
    dtypes = [d for d in args.mistral_dtypes.split(",") if d] if args.layout == "mistral" else []
    conversions = [("float32", ours)] + [
        (d, ensure_converted(hf_dir, ours, d, args.modern_python, env)) for d in dtypes]

    out = ResultWriter(args.out or result_path("published"), echo=True)
    out.record(machine_info(env, label="published layouts at real size"))

    def clean(cmd, timeout=900):
        return run_clean(cmd, env, timeout, quiet, args.quiet_wait, args.retries, log=log)

    log("physical limits (1/2)")
    machine = out.extend(clean([physical]))
    figures = {}  # weight type → mnemo's decode line
    for dtype, model in conversions:
        log(f"mnemo decode, {layout}, {dtype} weights")
        lines = clean([mnemo_bench, "--model", model, "--figure", "decode", "--runs",
                       str(args.runs), "--decode-steps", str(args.decode_steps)], timeout=1800)
        for line in lines:
            line["layout"] = layout
        out.extend(lines)
        figures[dtype] = next(l for l in lines if l.get("figure") == "decode")
    mnemo = figures["float32"]
    log(f"Hugging Face decode, {layout}")
    peer_lines = run_json([peer_python, "-m", "bench.peers.peer_pytorch", "--impl", impl,
                           "--figure", "decode", "--hf-dir", hf_dir, "--ckpt-dir", ours,
                           "--mem", str(mem), "--runs", str(args.peer_runs),
                           "--decode-steps", str(args.peer_decode_steps)], env, 3600)
    for line in peer_lines:
        line["layout"] = layout
    out.extend(peer_lines)
    peer = next(l for l in peer_lines if l.get("figure") == "decode")
    log("physical limits (2/2)")
    machine += out.extend(clean([physical]))

    limits = limits_from(machine)
    bw = limits["bandwidth_gbps"] * 1e9
    ours_tps = mnemo["tokens_per_s"]["median"]
    hf_tps = peer["tokens_per_s"]["median"]
    per_token = mnemo["bytes_per_token"]
    derived = {"impl": "derived", "figure": "decode", "layout": layout,
               "mnemo_tokens_per_s": ours_tps, "hf_tokens_per_s": hf_tps,
               "mnemo_over_hf": ours_tps / hf_tps, "bytes_per_token": per_token,
               "weight_bytes_per_token": mnemo["weight_bytes_per_token"],
               "bandwidth_gbps": limits["bandwidth_gbps"],
               "limit_tokens_per_s": bw / per_token,
               "mnemo_fraction_of_limit": ours_tps * per_token / bw,
               "hf_fraction_of_limit": hf_tps * per_token / bw,
               "rss_after_load_mib": mnemo.get("rss_after_load_mib"),
               "hf_peak_rss_mib": peer.get("peak_rss_mib")}
    out.record(derived)
    for dtype in dtypes:
        line = figures[dtype]
        tps, step = line["tokens_per_s"]["median"], line["bytes_per_token"]
        out.record({"impl": "derived", "figure": "decode", "layout": layout, "weights": dtype,
                    "mnemo_tokens_per_s": tps, "over_float32": tps / ours_tps,
                    "bytes_per_token": step,
                    "weight_bytes_per_token": line["weight_bytes_per_token"],
                    "bandwidth_gbps": limits["bandwidth_gbps"], "limit_tokens_per_s": bw / step,
                    "mnemo_fraction_of_limit": tps * step / bw})
        print(f"{layout} decode with {dtype} weights: mnemo {tps:.2f} tok/s, "
              f"{step / 1e6:.0f} MB per step, {tps * step / bw:.2f} of the bandwidth limit")
    out.close()
    print(f"\n{layout} decode: mnemo {ours_tps:.2f} tok/s, Hugging Face {hf_tps:.2f} tok/s "
          f"({ours_tps / hf_tps:.2f}x); {per_token / 1e6:.0f} MB per step; bandwidth limit "
          f"{bw / per_token:.1f} tok/s ({limits['bandwidth_gbps']:.1f} GB/s): mnemo at "
          f"{derived['mnemo_fraction_of_limit']:.2f}, Hugging Face at "
          f"{derived['hf_fraction_of_limit']:.2f} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
