#!/usr/bin/env python3
"""The attention kinds on one GPU: mnemo's CUDA kernels against PyTorch's
scaled_dot_product_attention (FlashAttention backend), in one run.

For every length of --lengths (default 4096 16384 65536 262144) and every kind
of --kinds (dense window strided fixed bigbird linear lsh), one process of
build/<build>/backend_attention_bench --device cuda runs one prefill of L new
positions (batch 1, --heads 16, --head-dim 64, float32) through the CUDA backend
and prints its time and the device memory pool's peak. The peer, in the same
run, times torch.nn.functional.scaled_dot_product_attention(q, k, v,
is_causal=True) on [1, H, L, d_h] bfloat16 tensors with only the FlashAttention
backend enabled (torch.backends.cuda.sdp_kernel / sdpa_kernel), and reports
torch.cuda.max_memory_allocated. A point that fails, runs out of memory or times
out is recorded with an "error" field and the run goes on.

Derived per length: each kind's speedup over mnemo's dense kernel and over the
peer; ns per attended (query, key) pair, and that figure relative to dense's
(the "sparsity turned into speed" ratio: ≤ 2 means a nonzero costs at most
twice what it costs in the dense kernel).

Then one session streams a --stream-tokens document (default 1,048,576 tokens) through
--stream-model (default models/teacher) on the GPU in segments of --stream-segment
(mnemo_bench --figure stream --device cuda): tokens/s per tenth of the stream, last tenth over
first (the target is >= 0.95; last over second too, the first tenth holding the warm-up) and
the session's state bytes after the first segment and at the
end (constant per session). --stream-tokens 0 skips it.

Output: JSON lines (a run_info line first) to <out-dir>/gpu_attention-<UTC time>-<commit>.jsonl
(default bench/results/), a table on stderr.

  python3 -m bench.runners.run_gpu_attention_bench [--build build/engine-gpu]
      [--lengths 4096 16384] [--kinds dense window] [--runs 5] [--timeout 300]
"""

import argparse
import json
import os
import subprocess
import sys

from bench.benchlib import ROOT
from bench.benchlib.machine import Log, machine_info
from bench.benchlib.results import ResultWriter, result_path

PEER = r"""
import json, sys, time, torch
import torch.nn.functional as F
L, H, D, runs = (int(a) for a in sys.argv[1:5])
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(1)
q, k, v = (torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16, generator=g)
           for _ in range(3))
try:
    ctx = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
    api = "torch.nn.attention.sdpa_kernel(FLASH_ATTENTION)"
except AttributeError:
    ctx = torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False,
                                         enable_mem_efficient=False)
    api = "torch.backends.cuda.sdp_kernel(enable_flash=True)"
with ctx:
    F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t0) * 1e3)
ms.sort()
print(json.dumps({"impl": "torch_sdpa", "figure": "attention", "kind": "sdpa_flash_causal",
                  "dtype": "bfloat16", "api": api, "torch": torch.__version__,
                  "device_name": torch.cuda.get_device_name(), "len": L, "heads": H,
                  "head_dim": D, "runs": runs,
                  "ms": {"min": ms[0], "median": ms[len(ms) // 2], "max": ms[-1]},
                  "device_peak_bytes": torch.cuda.max_memory_allocated()}))
"""


log = Log("run_gpu_attention_bench")


def run_point(cmd, timeout):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip() or proc.stdout.strip())[-500:] or
                f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build", "engine-gpu"))
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536, 262144])
    p.add_argument("--kinds", nargs="+",
                   default=["dense", "window", "strided", "fixed", "bigbird", "linear", "lsh"])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--timeout", type=int, default=300, help="seconds per point")
    p.add_argument("--python", default=sys.executable, help="the peer's interpreter (torch+CUDA)")
    p.add_argument("--out-dir", default=None, help="result directory (default bench/results)")
    p.add_argument("--stream-model", default=os.path.join(ROOT, "models", "teacher"))
    p.add_argument("--stream-tokens", type=int, default=1 << 20)
    p.add_argument("--stream-segment", type=int, default=512)
    p.add_argument("--stream-timeout", type=int, default=900)
    args = p.parse_args()
    binary = os.path.join(args.build, "backend_attention_bench")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} is missing: build the engine with CUDA first")
    path = result_path("gpu_attention", args.out_dir)
    points = {}
    with ResultWriter(path) as out:
        out.record(machine_info(gpu=True, heads=args.heads, head_dim=args.head_dim,
                                lengths=args.lengths, kinds=args.kinds))

        def record(key, line):
            line.setdefault("len", key[2])
            line.setdefault("kind", key[1])
            line.setdefault("impl", key[0])
            points[key] = line
            out.record(line)
            log(json.dumps(line)[:240])

        for L in args.lengths:
            record(("torch_sdpa", "sdpa_flash_causal", L),
                   run_point([args.python, "-c", PEER, str(L), str(args.heads),
                              str(args.head_dim), str(args.runs)], args.timeout))
            for kind in args.kinds:
                record(("mnemo", kind, L),
                       run_point([binary, "--device", "cuda", "--kind", kind, "--len", str(L),
                                  "--heads", str(args.heads), "--head-dim", str(args.head_dim),
                                  "--runs", str(args.runs)], args.timeout))
        # Derived: speedups over dense and the peer, cost per nonzero against dense's.
        for L in args.lengths:
            dense = points.get(("mnemo", "dense", L), {})
            peer = points.get(("torch_sdpa", "sdpa_flash_causal", L), {})
            derived = {"figure": "derived", "len": L, "kinds": {}}
            for kind in args.kinds:
                pt = points.get(("mnemo", kind, L), {})
                if "ms" not in pt:
                    continue
                ms = pt["ms"]["median"]
                d = {"ms": ms}
                if "ms" in dense:
                    d["speedup_vs_mnemo_dense"] = dense["ms"]["median"] / ms
                if "ms" in peer:
                    d["speedup_vs_sdpa_flash"] = peer["ms"]["median"] / ms
                if pt.get("ns_per_nonzero") and dense.get("ns_per_nonzero"):
                    d["ns_per_nonzero_vs_dense"] = pt["ns_per_nonzero"] / dense["ns_per_nonzero"]
                derived["kinds"][kind] = d
            out.record(derived)
        if args.stream_tokens > 0:
            line = run_point([os.path.join(args.build, "mnemo_bench"), "--model",
                              args.stream_model, "--device", "cuda", "--figure", "stream",
                              "--tokens", str(args.stream_tokens), "--segment",
                              str(args.stream_segment)], args.stream_timeout)
            line.setdefault("impl", "mnemo")
            line.setdefault("figure", "stream")
            line["model"] = os.path.relpath(args.stream_model, ROOT)
            if "last_over_first" in line:
                line["flat"] = line["last_over_first"] >= 0.95
                # The first tenth includes warm-up (allocations, first launches): the second
                # tenth is the stricter comparison.
                tenths = line["tokens_per_s_by_tenth"]
                line["last_over_second"] = tenths[-1] / tenths[1]
                line["state_constant"] = (line["state_bytes_end"] ==
                                          line["state_bytes_after_first_segment"])
            out.record(line)
            log(json.dumps(line)[:300])
    log(f"wrote {path}")
    print(f"{'len':>8} {'kind':>18} {'ms':>10} {'peak MiB':>9}", file=sys.stderr)
    for (impl, kind, L), pt in sorted(points.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        ms = f"{pt['ms']['median']:.3f}" if "ms" in pt else "n/a"
        peak = pt.get("device_peak_bytes")
        mib = f"{peak / 2**20:.0f}" if peak is not None else "n/a"
        print(f"{L:>8} {kind:>18} {ms:>10} {mib:>9}", file=sys.stderr)


if __name__ == "__main__":
    main()
