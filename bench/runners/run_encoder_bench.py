#!/usr/bin/env python3
"""Encoder benchmark: a Longformer, Nyströmformer, BigBird or Funnel encoder through mnemo and
through Hugging Face at the same shape and document lengths, in one run on one machine.

--arch longformer (default): a random LongformerModel (tools/convert_hf_longformer.random_hf_model,
seeded) of the shape --d-model / --layers / --heads / --window, with a position table for the
longest length, converted once with tools/convert_hf_longformer.py; the whole document is one pass.
--arch nystromformer: a random NystromformerModel of the same width and depth with the published
model's attention (passes of --segment 512 positions, 64 landmarks, a convolution of 35 taps); a
document runs in the documented overlapping windows of a pass each (every token computed twice),
on both sides. --arch bigbird: a random BigBirdModel of the same width and depth with the
published model's attention (block_sparse, blocks of 64, 3 random blocks, passes of up to
--bigbird-positions 4096 positions), windows as for Nyströmformer. --arch funnel: a random
FunnelModel of the same width (heads of d_model / heads) with the published model's layout
scaled to the depth (three blocks, --layers − 2 layers in the first and one in each of the
others, two decoder layers; passes of up to 512 tokens), windows as for Nyströmformer. Each point is its own
subprocess (peak RSS belongs to that point alone):
  * mnemo: build/release/encoder_bench --model DIR --len L [--global-first] (api::Encoder::Encode,
    every token's vector; Nyströmformer windows share passes of up to 8192 rows);
  * hf: LongformerModel(input_ids, global_attention_mask with the first token global), or
    NystromformerModel / BigBirdModel / FunnelModel over the same windows in batches of 8192 rows,
    in float32,
    torch.no_grad, on .venv's python (its transformers has both), threads = the machine's CPUs;
    last_hidden_state;
  * the machine's physical limits (build/release/physical_limits --quick): the sgemm peak the
    encoder's products are bound by.
Every point reports ms (min / median / max over --runs after --warmup; one run past 16k tokens),
tokens/s, peak RSS, and the sgemm-bound time (the pass's multiply-adds at the measured peak) as a
fraction. Lines go to bench/results/encoder-<UTC time>-<commit>.jsonl; a markdown summary is
printed.

  cmake --build build/release --target encoder_bench physical_limits
  python3 -m bench.runners.run_encoder_bench [--lengths 4096,16384,65536]

(the model is drawn, converted and run by Hugging Face in --hf-python, .venv's by default: its
transformers has Longformer.)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from bench.benchlib import ROOT
from bench.benchlib.machine import Log, bench_env, machine_info
from bench.benchlib.process import python_env, run_json
from bench.benchlib.results import ResultWriter, result_path

HF_PEER = r"""
import json, resource, statistics, sys, time, warnings
import torch
warnings.simplefilter("ignore")
from transformers import LongformerModel
hf_dir, L, runs, warmup, threads = sys.argv[1], *(int(x) for x in sys.argv[2:6])
torch.set_num_threads(threads)
model = LongformerModel.from_pretrained(hf_dir, add_pooling_layer=False).eval()
gen = torch.Generator().manual_seed(1)
ids = torch.randint(3, model.config.vocab_size, (1, L), generator=gen)
mask = torch.zeros(1, L, dtype=torch.long)
mask[0, 0] = 1
ms = []
with torch.no_grad():
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        out = model(ids, global_attention_mask=mask).last_hidden_state
        t1 = time.perf_counter()
        if i >= warmup:
            ms.append((t1 - t0) * 1e3)
        del out
med = statistics.median(ms)
print(json.dumps({"bench": "encoder", "impl": "hf", "len": L, "runs": runs, "warmup": warmup,
                  "ms_min": min(ms), "ms_median": med, "ms_max": max(ms),
                  "tokens_per_s": L / (med / 1e3), "threads": torch.get_num_threads(),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "torch": torch.__version__}))
"""

HF_WINDOWED_PEER = r"""
import json, resource, statistics, sys, time, warnings
import torch
warnings.simplefilter("ignore")
import transformers
hf_dir, L, runs, warmup, threads = sys.argv[1], *(int(x) for x in sys.argv[2:6])
torch.set_num_threads(threads)
model = getattr(transformers, sys.argv[6]).from_pretrained(hf_dir).eval()
W = int(sys.argv[7])
batch = max(1, 8192 // W)
gen = torch.Generator().manual_seed(1)
ids = torch.randint(3, model.config.vocab_size, (L,), generator=gen)
# The windows mnemo runs: every W // 2 tokens, the last ending at the end (all full when L >= W).
starts = [0] if L <= W else list(range(0, L - W, W // 2)) + [L - W]
windows = torch.stack([ids[b:b + W] for b in starts]) if L >= W else ids[None]
ms = []
with torch.no_grad():
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        for b in range(0, len(windows), batch):
            out = model(windows[b:b + batch]).last_hidden_state
            del out
        t1 = time.perf_counter()
        if i >= warmup:
            ms.append((t1 - t0) * 1e3)
med = statistics.median(ms)
print(json.dumps({"bench": "encoder", "impl": "hf", "len": L, "runs": runs, "warmup": warmup,
                  "windows": len(starts), "ms_min": min(ms), "ms_median": med,
                  "ms_max": max(ms), "tokens_per_s": L / (med / 1e3),
                  "threads": torch.get_num_threads(),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "torch": torch.__version__}))
"""

MAKE_MODEL = r"""
import importlib, json, sys
from mnemo_checkpoint import write_checkpoint
arch, fields, hf_dir, ours = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
converter = importlib.import_module(f"tools.convert_hf_{arch}")
convert, random_hf_model = converter.convert, converter.random_hf_model
model = random_hf_model(fields, seed=1)
model.save_pretrained(hf_dir)
config, tensors = convert(model, dtype="float32")
write_checkpoint(ours, config, tensors)
"""

log = Log("run_encoder_bench")

HF_CLASSES = {"nystromformer": "NystromformerModel", "bigbird": "BigBirdModel",
              "funnel": "FunnelModel"}


def windows_of(cfg, length):
    """Passes a document of `length` tokens runs in (the documented windows)."""
    window = window_tokens(cfg)
    return 1 if length <= window else len(range(0, length - window, window // 2)) + 1


def funnel_window_flops(cfg, t):
    """Multiply-adds of one Funnel pass of t tokens: at each layer run, the projections of its
    queries (q, o) and keys (k, v), the sinusoids' projection, the content and positional scores
    and the sums, the feed-forward; the decoder at full length."""
    d, f, w = cfg["d_model"], cfg["d_inner"], cfg["n_head"] * cfg["d_head"]
    sep, trunc = cfg["separate_cls"], cfg["truncate_seq"]

    def layer(tq, tk, stride):
        m = stride * (tq - 1) + tk
        return tq * 2 * d * w + tk * 2 * d * w + m * d * w + tq * m * w + 2 * tq * tk * w + \
            tq * 2 * d * f

    total, prev = 0, t
    for b, (size, repeats) in enumerate(zip(cfg["block_sizes"], cfg["block_repeats"])):
        cur = prev if b == 0 else (prev + (1 if sep and not trunc else 0) + 1) // 2
        for run in range(size * repeats):
            pooling = b > 0 and run == 0
            keys = prev if pooling and cfg["pool_q_only"] else cur
            total += layer(cur, keys, 2 if pooling and cfg["pool_q_only"] else 1)
        prev = cur
    return total + cfg["decoder_layers"] * layer(t, t, 1)


def window_tokens(cfg):
    """The most tokens one pass of the converted encoder holds (EncoderConfig::max_tokens)."""
    if cfg["architecture"] == "bigbird":
        return cfg["position_rows"] // cfg["block_size"] * cfg["block_size"]
    if cfg["architecture"] == "longformer":
        return cfg["position_rows"] - cfg["pad_token_id"] - 1
    return cfg["segment_len"]


def pass_flops(cfg, length):
    """Multiply-adds × 2 of a document's passes. Longformer, one pass: the projections (local
    and global q, k, v; output; FFN), the band's scores and sums, the global row's scores and
    sums. Nyströmformer, every window of a pass: the projections (q, k, v; output; FFN), the
    landmark products (four of L·m·d and one of L·m² per head) and the convolution. BigBird,
    every window: the projections and each query's scores and sums over the keys it sees."""
    d, f, n_layer = cfg["d_model"], cfg["d_inner"], cfg["n_layer"]
    if cfg["architecture"] == "nystromformer":
        seg, m, taps, heads = (window_tokens(cfg), cfg["num_landmarks"],
                               cfg["conv_kernel_size"], cfg["n_head"])
        windows = windows_of(cfg, length)
        attention = seg * (4 * m * d + heads * m * m) if m < seg else 2 * seg * seg * d
        per_window = seg * (4 * d * d + 2 * d * f + taps * d) + attention
        return 2.0 * n_layer * windows * per_window
    if cfg["architecture"] == "funnel":
        return 2.0 * funnel_window_flops(cfg, min(length, window_tokens(cfg))) * windows_of(
            cfg, length)
    if cfg["architecture"] == "bigbird":
        window = min(length, window_tokens(cfg))
        windows = windows_of(cfg, length)
        b, r = cfg["block_size"], cfg["num_random_blocks"]
        # the global blocks' queries see every key; the others 5 + r blocks (4 + r next to them)
        keys = 2 * b * window + (window - 2 * b) * (5 + r) * b
        per_window = window * (4 * d * d + 2 * d * f) + 2 * d * keys
        return 2.0 * n_layer * windows * per_window
    w = cfg["attention_window"][0] // 2
    per_token = 6 * d * d + d * d + 2 * d * f + 2 * d * min(2 * w + 2, length)
    return 2.0 * n_layer * (length * per_token + 2 * length * d)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["longformer", "nystromformer", "bigbird", "funnel"],
                    default="longformer")
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--segment", type=int, default=512,
                    help="nystromformer: positions per pass (segment_means_seq_len)")
    ap.add_argument("--bigbird-positions", type=int, default=4096,
                    help="bigbird: the position table (max_position_embeddings), a pass's most")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--window", type=int, default=256, help="attention_window (both sides)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs up to 16384 tokens")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-hf", action="store_true", help="leave out Hugging Face")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per point")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--hf-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--output", default=None, help="JSONL path (default bench/results/...)")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x]
    binary = os.path.join(args.build_dir, "encoder_bench")
    if not os.path.exists(binary):
        raise SystemExit(f"{binary} missing: cmake --build build/release --target encoder_bench")
    env = bench_env()
    threads = os.cpu_count() or 1

    work = tempfile.mkdtemp(prefix="encoder-bench-")
    try:
        fields = dict(vocab_size=1000, hidden_size=args.d_model, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, intermediate_size=4 * args.d_model,
                      pad_token_id=1)
        if args.arch == "longformer":
            fields.update(attention_window=args.window, max_position_embeddings=max(lengths) + 2)
        elif args.arch == "funnel":
            fields = dict(vocab_size=1000, d_model=args.d_model, n_head=args.heads,
                          d_head=args.d_model // args.heads, d_inner=4 * args.d_model,
                          block_sizes=[args.layers - 2, 1, 1], num_decoder_layers=2)
        elif args.arch == "bigbird":
            fields.update(attention_type="block_sparse", block_size=64, num_random_blocks=3,
                          max_position_embeddings=args.bigbird_positions, pad_token_id=0)
        else:
            fields.update(segment_means_seq_len=args.segment, num_landmarks=64,
                          conv_kernel_size=35, max_position_embeddings=args.segment + 2)
        log(f"random {args.arch} {fields}")
        # In a child process: a point's peak RSS (getrusage, kept across exec) then starts from
        # this light process, not from one that held torch and the model.
        ours = os.path.join(work, "mnemo")
        subprocess.run([args.hf_python, "-c", MAKE_MODEL, args.arch, json.dumps(fields),
                        os.path.join(work, "hf"), ours], env=python_env(env), cwd=ROOT,
                       check=True, timeout=600)
        with open(os.path.join(ours, "config.json")) as f:
            config = json.load(f)

        out = ResultWriter(args.output or result_path("encoder"))
        record = out.record
        record(machine_info(env, bench="encoder", arch=args.arch, lengths=lengths, model=config))
        peak = None
        limits = os.path.join(args.build_dir, "physical_limits")
        if os.path.exists(limits):
            log("physical limits (physical_limits --quick)")
            for line in run_json([limits, "--quick"], env, 300):
                line["bench"] = "encoder"
                record(line)
                if line.get("figure") == "sgemm" and line.get("shape") == "square":
                    peak = max(peak or 0.0, line["best_gflops"])  # best over thread counts
        points = {}
        for length in lengths:
            runs, warmup = (args.runs, args.warmup) if length <= 16384 else (1, 0)
            longformer = args.arch == "longformer"
            jobs = [("mnemo", [binary, "--model", ours, "--len", str(length), "--runs",
                               str(runs), "--warmup", str(warmup)] +
                     (["--global-first"] if longformer else []))]
            if not args.no_hf:
                hf = [args.hf_python, "-c", HF_PEER if longformer else HF_WINDOWED_PEER,
                      os.path.join(work, "hf"), str(length), str(runs), str(warmup), str(threads)]
                if not longformer:  # the class and the window both sides run
                    hf += [HF_CLASSES[args.arch], str(window_tokens(config))]
                jobs.append(("hf", hf))
            for impl, cmd in jobs:
                log(f"{impl} L={length}")
                try:
                    lines = run_json(cmd, env, args.timeout)
                except (SystemExit, subprocess.TimeoutExpired) as e:
                    record({"bench": "encoder", "impl": impl, "len": length,
                            "skipped": str(e)[:300]})
                    continue
                line = lines[-1]
                line["gflop"] = round(pass_flops(config, length) / 1e9, 2)
                if peak:
                    bound_ms = pass_flops(config, length) / (peak * 1e9) * 1e3
                    line["sgemm_bound_fraction"] = round(bound_ms / line["ms_median"], 3)
                points[(impl, length)] = record(line)
        out.close()
        print(f"\nresults: {out.path}\n")
        print("| tokens | mnemo tok/s | mnemo peak RSS | HF tok/s | HF peak RSS | mnemo / HF |"
              " mnemo fraction of sgemm peak |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for length in lengths:
            m, h = points.get(("mnemo", length)), points.get(("hf", length))
            def tok(p):
                return f"{p['tokens_per_s']:.0f}" if p else "—"
            def rss(p):
                return f"{p['peak_rss_bytes'] / 2**20:.0f} MiB" if p else "—"
            ratio = f"{m['tokens_per_s'] / h['tokens_per_s']:.2f}×" if m and h else "—"
            frac = f"{m['sgemm_bound_fraction']:.2f}" if m and "sgemm_bound_fraction" in m else "—"
            print(f"| {length} | {tok(m)} | {rss(m)} | {tok(h)} | {rss(h)} | {ratio} | {frac} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
