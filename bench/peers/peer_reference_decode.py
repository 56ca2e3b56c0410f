#!/usr/bin/env python3
"""PyTorch peer for the shipped default models: decode or prefill of the
reference model (mnemo_reference) on a mnemo checkpoint,
one figure per process, one JSON line.

Why a separate peer from peer_pytorch.py: the default models use compressive
memory, whose state (XL memory, compression buffer, compressed rows) is not a
plain list of hidden-state tensors, so it cannot be filled with random rows.
This peer runs real token ids from an ids file through the reference's own
``forward(ids, mems)`` so that every state part is exactly what the model
would hold.

The schedule mirrors ``mnemo_bench`` so that both sides see the same memory
sizes at every timed step:

* decode: prime until the memory is full, ``mem_len`` real tokens plus
  ``compression_rate * cmem_len`` for compressive layers, in segments of
  ``mem_len`` (mnemo_bench primes the same), then ``--warmup-steps`` untimed steps, then
  ``--runs`` x ``--decode-steps`` timed T = 1 calls, next token = argmax of
  the logits. The XL memory is full from the first step; evicted rows fill
  the compression buffer and the compressed memory as decoding goes on,
  exactly as in mnemo's run.
* prefill: prime with max(mem_len, S) tokens in segments of S, then
  ``--warmup-segments`` untimed segments, then ``--runs`` timed runs of
  ``--segments-per-run`` segments of S with the logits of the last position
  only (``last_only=True``: the work of mnemo's LogitsMode::kLast).

Weights are loaded as float32 (``load_checkpoint``), as mnemo's CPU backend
computes. Threads: ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported; each
``--threads`` value (``torch.set_num_threads``) is probed briefly and the best
is measured (reported with the probe results).

Usage (from the repository root, with the import roots of python/README.md):
    python -m bench.peers.peer_reference_decode --ckpt-dir DIR --ids-file IDS --figure decode|prefill
        [--segment 64] [--runs 5] [--decode-steps 64] [--warmup-steps 16]
        [--segments-per-run 16] [--warmup-segments 2] [--threads 1,2]
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import mnemo_reference  # noqa: E402
from bench.peers.peer_pytorch import peak_rss_mib, runtime_fields, summary  # noqa: E402


class IdStream:
    """Consecutive ids of the file, wrapping around at its end."""

    def __init__(self, ids):
        self.ids = ids
        self.pos = 0

    def take(self, n):
        out = []
        while len(out) < n:
            chunk = self.ids[self.pos:self.pos + n - len(out)]
            out.extend(chunk)
            self.pos = (self.pos + len(chunk)) % len(self.ids)
        return torch.tensor([out], dtype=torch.long)


def state_rows(mems):
    """Rows held by the first layer's state: XL memory and, for compressive
    memory, the compression buffer and the compressed rows."""
    first = mems[0]
    if isinstance(first, mnemo_reference.CompressiveState):
        return {"mem": first.mem.shape[1], "buffer": first.buf.shape[1],
                "compressed": first.cmem.shape[1]}
    if torch.is_tensor(first):
        return {"mem": first.shape[1]}
    return {}


def full_memory_tokens(cfg):
    """Tokens that fill a fresh memory: mem_len, plus compression_rate *
    cmem_len for compressive layers (as mnemo_bench's FullMemoryTokens)."""
    extra = 0
    for layer in cfg.get("layers") or []:
        if layer.get("memory") == "compressive":
            extra = max(extra, layer["compression_rate"] * layer["cmem_len"])
    return cfg["mem_len"] + extra


@torch.no_grad()
def primed(model, stream, tokens, segment):
    """A fresh state that has seen `tokens` ids, fed in segments."""
    mems = model.init_mems(1)
    while tokens > 0:
        n = min(tokens, segment)
        _, mems = model(stream.take(n), mems, last_only=True)
        tokens -= n
    return mems


@torch.no_grad()
def measure_decode(model, ids, runs, steps, warmup):
    """tokens/s of each run and the final state."""
    stream = IdStream(ids)
    mem_len = model.config["mem_len"]
    mems = primed(model, stream, full_memory_tokens(model.config), max(1, mem_len))
    token = stream.take(1)
    for _ in range(warmup):
        logits, mems = model(token, mems, last_only=True)
        token = logits[0, -1].argmax().view(1, 1)
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(steps):
            logits, mems = model(token, mems, last_only=True)
            token = logits[0, -1].argmax().view(1, 1)
        rates.append(steps / (time.perf_counter() - t0))
    return rates, mems


@torch.no_grad()
def measure_prefill(model, ids, runs, segment, per_run, warmup):
    stream = IdStream(ids)
    mems = primed(model, stream, max(model.config["mem_len"], segment),
                  segment)
    for _ in range(warmup):
        _, mems = model(stream.take(segment), mems, last_only=True)
    rates = []
    for _ in range(runs):
        batches = [stream.take(segment) for _ in range(per_run)]
        t0 = time.perf_counter()
        for seg in batches:
            _, mems = model(seg, mems, last_only=True)
        rates.append(segment * per_run / (time.perf_counter() - t0))
    return rates, mems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--ids-file", required=True)
    ap.add_argument("--figure", choices=("decode", "prefill"), required=True)
    ap.add_argument("--segment", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--warmup-steps", type=int, default=16)
    ap.add_argument("--segments-per-run", type=int, default=0,
                    help="0: enough for 1024 tokens per run (mnemo_bench's)")
    ap.add_argument("--warmup-segments", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--probe-steps", type=int, default=8)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = mnemo_reference.load_checkpoint(args.ckpt_dir, torch.float32)
    cfg = model.config
    with open(args.ids_file) as f:
        ids = [int(t) for t in f.read().split()]
    if not ids:
        raise SystemExit(f"{args.ids_file}: no ids")
    if max(ids) >= cfg["vocab_size"] or min(ids) < 0:
        raise SystemExit(f"{args.ids_file}: ids outside [0, "
                         f"{cfg['vocab_size']}) of {args.ckpt_dir}")
    per_run = args.segments_per_run or max(1, 1024 // args.segment)

    def run(runs, short):
        if args.figure == "decode":
            return measure_decode(model, ids, runs,
                                  args.probe_steps if short
                                  else args.decode_steps,
                                  2 if short else args.warmup_steps)
        return measure_prefill(model, ids, runs, args.segment,
                               1 if short else per_run,
                               1 if short else args.warmup_segments)

    threads = [int(t) for t in args.threads.split(",") if t]
    probes = {}
    for t in threads if len(threads) > 1 else []:
        torch.set_num_threads(t)
        probes[str(t)] = run(1, True)[0][0]
    best = max(threads, key=lambda t: probes.get(str(t), 0.0))
    torch.set_num_threads(best)
    rates, mems = run(args.runs, False)

    segment = 1 if args.figure == "decode" else args.segment
    line = {
        "impl": "pytorch_reference", "figure": args.figure,
        "segment": segment, "mem": cfg["mem_len"],
        "logits": "last", "tokens_per_s": summary(rates), "runs": args.runs,
        "tokens_per_run": (args.decode_steps if args.figure == "decode"
                           else args.segment * per_run),
        "warmup": (args.warmup_steps if args.figure == "decode"
                   else args.warmup_segments),
        "state_rows_end": state_rows(mems),
        "weights_dtype": "float32", "stored_dtype": cfg["torch_dtype"],
        "peak_rss_mib": peak_rss_mib(),
        **runtime_fields(best, probes),
        "model_dir": args.ckpt_dir,
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
