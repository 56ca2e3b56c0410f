"""Magnitude-prunes a mnemo checkpoint's weight matrices (MODEL-SPEC section 8).

Writes a new checkpoint whose multiplied weight matrices (attention qkv/o, FFN fc1/fc2, the
output head and an embedding projection; not embeddings, not positional projections) keep
only their largest-magnitude entries, stored densely with zeros as pruning tools write them:

* ``--sparsity S``: unstructured, the fraction S of each matrix's entries with the smallest
  |w| set to zero (ties at the cut broken by position, so exactly round(S * n) are zero);
* ``--two-four``: 2:4 structured, the two largest |w| of every group of four consecutive
  inputs kept.

The engine detects the zeros at load and runs such matrices from CSR or 2:4 forms where that
moves fewer bytes (``--sparse-weights``). Usage::

    .venv/bin/python tools/prune_checkpoint.py SRC DST --sparsity 0.9
    .venv/bin/python tools/prune_checkpoint.py SRC DST --two-four
"""

from __future__ import annotations

import argparse
import sys

import torch

import mnemo_checkpoint

PRUNED_SUFFIXES = ("attn.qkv.weight", "attn.o.weight", "ff.fc1.weight", "ff.fc2.weight",
                   "lm_head.weight", "emb_proj.weight")


def prune_unstructured(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    flat = w.float().flatten()
    zeros = int(round(sparsity * flat.numel()))
    if zeros == 0:
        return w.clone()
    order = torch.argsort(flat.abs(), stable=True)  # smallest first, ties by position
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[order[:zeros]] = False
    return (flat * mask).reshape(w.shape).to(w.dtype)


def prune_two_four(w: torch.Tensor) -> torch.Tensor:
    rows, cols = w.shape
    if cols % 4 != 0:
        raise ValueError(f"2:4 needs a multiple of 4 inputs, got {cols}")
    groups = w.float().reshape(rows, cols // 4, 4)
    keep = torch.topk(groups.abs(), 2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(rows, cols).to(w.dtype)


def prune(src: str, dst: str, sparsity: float | None, two_four: bool) -> dict:
    tensors = mnemo_checkpoint.load_tensors(src)
    out, report = {}, {}
    for name, t in tensors.items():
        if t.dim() == 2 and name.endswith(PRUNED_SUFFIXES):
            p = prune_two_four(t) if two_four else prune_unstructured(t, sparsity)
            report[name] = float((p == 0).float().mean())
            out[name] = p.contiguous()
        else:
            out[name] = t
    mnemo_checkpoint.copy_extra_files(src, dst)
    mnemo_checkpoint.save_tensors(dst, out)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--sparsity", type=float, help="fraction of entries set to zero")
    group.add_argument("--two-four", action="store_true", help="2:4 structured pruning")
    args = ap.parse_args(argv)
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        ap.error("--sparsity must be in [0, 1)")
    report = prune(args.src, args.dst, args.sparsity, args.two_four)
    if not report:
        print("no prunable matrix found", file=sys.stderr)
        return 1
    mean = sum(report.values()) / len(report)
    print(f"pruned {len(report)} matrices, mean sparsity {mean:.4f} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
