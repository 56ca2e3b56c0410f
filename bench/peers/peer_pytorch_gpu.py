#!/usr/bin/env python3
"""GPU peer of mnemo_bench: the PyTorch reference, f32, eager or compiled.

Runs mnemo_reference (python/mnemo_reference, the independent oracle, loaded from a
mnemo checkpoint, so the weights are mnemo's) on CUDA in float32 with TF32
off in cuBLAS and cuDNN (mnemo's GPU engine computes in f32). One figure per
process, one JSON line on stdout.

Memory: before timing, random ids are fed in segments (``--segment`` tokens,
for decode at most ``--mem``) until ``mem`` positions have gone through, so
every layer's memory holds ``mem`` rows of real hidden states. The fill runs
the eager model (its values do not depend on the mode), so compile mode
compiles only the timed shape.

Figures:
* prefill: one call per run on a fresh ``segment``-token segment with the
  full memory, logits of the last position only (``last_only=True``: mnemo's
  LogitsMode::kLast), the returned memory carried to the next call; tokens/s
  of each run; median reported.
* decode: runs of ``--decode-steps`` single-token calls, each feeding the
  previous step's argmax and the returned memory (greedy decoding; the memory
  stays full at ``mem``); tokens/s of each run, median ms/token reported.

Timing: the device is synchronised before and after each run and the wall
clock (time.perf_counter) taken, so host-side work the model does between
kernels (the reference builds its sinusoid table on the CPU and reads
``delta.max()`` every layer) counts, as it would for a user.

Warm-up: ``--warmup`` calls (segments for prefill, steps for decode) before
timing. ``--mode compile`` wraps the model in ``torch.compile`` (default
mode); its first call compiles, and that call's wall time is reported as
``compile_s``. The reference reads ``int(delta.max())`` in every layer, a
graph break: dynamo then runs the layer loop eagerly and compiles each
layer's pieces (one compiled code shared by all layers, no recompilation);
``dynamo_graph_breaks`` counts the breaks. That is the reference as written,
compiled; it is not rewritten for the compiler.

JSON line fields: impl, device, mode, figure, segment, mem, tokens_per_s
(median), ms_per_token (decode: median over runs), runs (tokens/s of each
run), tokens_per_run, warmup, peak_mem_mib (torch.cuda.max_memory_allocated
from the end of the memory fill to the end of timing; null on CPU), torch,
tf32, compile_s and dynamo_graph_breaks (compile only), load_s, model.

Usage (from the repository root, with the import roots of python/README.md):
    python -m bench.peers.peer_pytorch_gpu --ckpt-dir DIR --figure prefill|decode [--segment 512]
        [--mem M] [--mode eager|compile] [--runs N] [--warmup N]
        [--decode-steps K] [--device cuda|cpu]
"""

import argparse
import json
import statistics
import sys
import time

import torch



def disable_tf32():
    """IEEE f32 matmuls and convolutions, like the f32 engine.

    The legacy flags, not torch >= 2.9's ``fp32_precision``: inductor still
    reads the legacy ones, and mixing the two APIs can raise there.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class IdStream:
    """Seeded random token ids, made on the CPU and moved to the device
    before any timing starts."""

    def __init__(self, vocab, device, seed=1):
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab, self.device = vocab, device

    def take(self, n):
        ids = torch.randint(0, self.vocab, (1, n), generator=self.gen)
        return ids.to(self.device)


@torch.no_grad()
def fill_memory(model, ids, mem, chunk):
    """Feeds random segments of `chunk` ids until `mem` positions went
    through; returns the per-layer memory ([1, mem, d_model] each)."""
    mems = None
    fed = 0
    while fed < mem:
        _, mems = model(ids.take(chunk), mems, last_only=True)
        fed += chunk
    return mems


@torch.no_grad()
def time_prefill(model, ids, mems, segment, runs, warmup, device):
    """Returns (tokens/s per run, wall seconds of the first call)."""
    segments = [ids.take(segment) for _ in range(warmup + runs)]
    rates, first = [], None
    for n, seg in enumerate(segments):
        synchronize(device)
        t0 = time.perf_counter()
        _, mems = model(seg, mems, last_only=True)
        synchronize(device)
        dt = time.perf_counter() - t0
        first = dt if first is None else first
        if n >= warmup:
            rates.append(segment / dt)
    return rates, first


@torch.no_grad()
def time_decode(model, ids, mems, steps, runs, warmup, device):
    """Returns (tokens/s per run, wall seconds of the first call)."""
    token = ids.take(1)

    def step(token, mems):
        logits, mems = model(token, mems, last_only=True)
        return logits[:, -1].argmax(dim=-1, keepdim=True), mems

    synchronize(device)
    t0 = time.perf_counter()
    token, mems = step(token, mems)
    synchronize(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        token, mems = step(token, mems)
    rates = []
    for _ in range(runs):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            token, mems = step(token, mems)
        synchronize(device)
        rates.append(steps / (time.perf_counter() - t0))
    return rates, first


def graph_breaks():
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values())


def run(args):
    device = torch.device(args.device)
    disable_tf32()
    import mnemo_reference  # needs safetensors: imported only when running

    t0 = time.perf_counter()
    eager = mnemo_reference.load_checkpoint(args.ckpt_dir).to(device)
    load_s = time.perf_counter() - t0
    cfg = eager.config
    mem = cfg["mem_len"] if args.mem is None else args.mem
    if mem != cfg["mem_len"]:
        raise SystemExit(f"{args.ckpt_dir}: mem_len {cfg['mem_len']} != "
                         f"--mem {mem}")
    segment = args.segment if args.figure == "prefill" else 1
    warmup = args.warmup
    if warmup is None:
        warmup = 2 if args.figure == "prefill" else 16
    # Compile mode's first call compiles; time_decode times its first step
    # apart: either needs one warm-up call.
    if args.mode == "compile" or args.figure == "decode":
        warmup = max(warmup, 1)

    ids = IdStream(cfg["vocab_size"], device)
    chunk = args.segment if args.figure == "prefill" else min(args.segment,
                                                               mem)
    mems = fill_memory(eager, ids, mem, chunk)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    if args.mode == "compile":
        model = torch.compile(eager)
    else:
        model = eager

    if args.figure == "prefill":
        rates, first_s = time_prefill(model, ids, mems, segment, args.runs,
                                      warmup, device)
    else:
        rates, first_s = time_decode(model, ids, mems, args.decode_steps,
                                     args.runs, warmup, device)

    line = {
        "impl": "pytorch_reference",
        "device": (torch.cuda.get_device_name(device)
                   if device.type == "cuda" else "cpu"),
        "mode": args.mode, "figure": args.figure, "segment": segment,
        "mem": mem, "tokens_per_s": statistics.median(rates),
    }
    if args.figure == "decode":
        line["ms_per_token"] = statistics.median(1e3 / r for r in rates)
    line.update({
        "runs": rates,
        "tokens_per_run": segment if args.figure == "prefill"
        else args.decode_steps,
        "warmup": warmup,
        "peak_mem_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                         if device.type == "cuda" else None),
        "torch": torch.__version__,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn": torch.backends.cudnn.allow_tf32},
    })
    if args.mode == "compile":
        line["compile_s"] = first_s
        line["dynamo_graph_breaks"] = graph_breaks()
    line["load_s"] = load_s
    line["model"] = {k: cfg[k] for k in ("n_layer", "d_model", "n_head",
                                         "d_head", "d_inner", "vocab_size",
                                         "clamp_len", "same_length")}
    print(json.dumps(line), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt-dir", required=True, help="mnemo checkpoint")
    ap.add_argument("--figure", required=True, choices=("prefill", "decode"))
    ap.add_argument("--segment", type=int, default=512,
                    help="prefill segment; also the memory fill's chunk")
    ap.add_argument("--mem", type=int,
                    help="memory length; must equal the checkpoint's mem_len"
                         " (default: that)")
    ap.add_argument("--mode", choices=("eager", "compile"), default="eager")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int,
                    help="warm-up calls: segments for prefill (default 2), "
                         "steps for decode (default 16); at least 1 for "
                         "decode and with --mode compile")
    ap.add_argument("--decode-steps", type=int, default=32,
                    help="decode steps per run")
    ap.add_argument("--device", default="cuda",
                    help="torch device (cpu: to check the code paths)")
    args = ap.parse_args(argv)
    if args.segment < 1 or args.runs < 1 or args.decode_steps < 1:
        ap.error("--segment, --runs and --decode-steps must be >= 1")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
