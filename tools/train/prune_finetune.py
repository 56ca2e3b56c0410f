"""Prunes a mnemo checkpoint gradually while fine-tuning it: magnitude or movement pruning.

One-shot pruning (``tools/prune_checkpoint.py``) zeroes weights of a trained model and leaves
the rest as they were; the model then loses more than it has to. Here the whole model keeps
training on the training streams while the sparsity of every pruned matrix rises, so the kept
weights learn to make up for the removed ones:

* pruned matrices: the 2-D tensors named by ``prune_checkpoint.PRUNED_SUFFIXES`` (attention
  qkv/o, FFN fc1/fc2, an untied output head, an embedding projection); embeddings, positional
  projections, LayerNorms, biases and compressors stay dense;
* schedule (Zhu & Gupta 2017): dense for the first ``--prune-start`` (10%) of the steps, then
  ``s(t) = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3)`` up to ``--prune-end`` (70%), ``s_f``
  after; a matrix of n entries has exactly ``round(s(t) * n)`` zeros at step t. With
  ``--two-four`` the mask is dense before t0 and 2:4 from t0 on (2 of every 4 consecutive
  inputs of a row kept, MODEL-SPEC section 8);
* ``--method magnitude`` (gradual magnitude pruning): every step keeps the largest ``|w|``, the
  choice ``prune_checkpoint.py`` makes for the current weights;
* ``--method movement`` (Sanh, Wolf & Rush 2020): a learned score S per pruned weight (0 at
  the start, its own AdamW group with ``--score-lr``, no weight decay, the weights' warmup and
  decay); every step keeps the entries of highest S, and the forward uses ``W * mask`` with a
  straight-through estimator: W receives ``grad * mask`` and S receives ``grad * W``, so S
  accumulates ``-sum(grad * W)``, how much the loss wants the weight to move away from zero.
  Entries of equal S are ranked by ``|w|``, then by position, so equal scores (all 0 at the
  start, and always with ``--score-lr 0``) give the magnitude masks;
* training as ``train_teacher.py``: its ``train_forward`` (LM cross-entropy +
  ``--recon-weight`` x the attention-reconstruction loss, memories carried and detached
  between steps, the compressor trained by the reconstruction loss only), AdamW (beta
  0.9/0.98, weight decay on matrices), linear warmup and cosine decay to 0.1x, gradient-norm
  clipping (LM parameters, compressor and scores separately, so the scores never change the
  weights' updates). The masked weights enter the forward through ``functional_call``: the
  model's parameters stay dense, the mask is recomputed every step and may give back a weight
  it took (more often in movement pruning, where the scores keep moving).

The written ``model.safetensors`` holds the fine-tuned weights with the final mask (chosen
from the final weights or scores) applied, zeros stored densely in the source dtype as pruning
tools write them; the zeros and the exact sparsity of every matrix are checked on the rounded
tensors before writing. The final validation is of those stored weights, the number
``mnemo score`` reproduces. ``training.json`` records the command, the method, the target,
the source checkpoint and its validation, the final sparsity of every matrix, the loss history
and the final validation. Deterministic for a given seed and thread count. Usage::

    .venv/bin/python tools/train/prune_finetune.py DATA_DIR SRC_DIR OUT_DIR \\
        --method movement --sparsity 0.8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

try:
    from torch.func import functional_call
except ImportError:  # torch < 2.0
    from torch.nn.utils.stateless import functional_call

from tools.prune_checkpoint import PRUNED_SUFFIXES, prune_two_four, prune_unstructured
from tools.train import train_teacher as tt

ref = tt.ref
ROOT = tt.ROOT

# Ranks are handed to prune_checkpoint's functions, which work in float32: exact up to 2^24.
MAX_RANKED_ENTRIES = 1 << 24

# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


def sparsity_at(step: int, final: float, start: int, end: int) -> float:
    """Cubic sparsity schedule of Zhu & Gupta 2017: 0 before ``start``, ``final`` from
    ``end``."""
    if step < start:
        return 0.0
    if step >= end:
        return final
    return final * (1.0 - (1.0 - (step - start) / (end - start)) ** 3)


def ranks_of(key: torch.Tensor, tiebreak: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ranks 1..n (float32) of the entries of ``key`` in ascending order, equal keys ranked by
    ascending ``tiebreak``, then by position. Positive and distinct, so prune_checkpoint's
    functions applied to them zero exactly the entries of lowest rank."""
    flat = key.detach().flatten().float()
    n = flat.numel()
    if n > MAX_RANKED_ENTRIES:
        raise ValueError(f"a pruned matrix of {n} entries is too large to rank exactly in "
                         f"float32 (at most {MAX_RANKED_ENTRIES})")
    values, order = torch.sort(flat, stable=True)
    if tiebreak is not None and bool((values[1:] == values[:-1]).any()):
        # Two stable sorts: by the tiebreak, then by the key; the second keeps the first's
        # order among equal keys.
        by_tie = torch.argsort(tiebreak.detach().flatten().float(), stable=True)
        order = by_tie[torch.argsort(flat[by_tie], stable=True)]
    ranks = torch.empty(n, dtype=torch.float32)
    ranks[order] = torch.arange(1, n + 1, dtype=torch.float32)
    return ranks.reshape(key.shape)


def keep_mask(importance: torch.Tensor, sparsity: float, two_four: bool) -> torch.Tensor:
    """Boolean mask of the entries prune_checkpoint keeps when pruning ``importance`` (which
    must have no zeros): round(sparsity * n) lowest unstructured, or 2 of every 4 inputs."""
    pruned = prune_two_four(importance) if two_four else prune_unstructured(importance,
                                                                             sparsity)
    return pruned != 0


def magnitude_importance(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``; exact zeros (a source that was pruned before) would read as pruned entries
    whatever the mask, so such a matrix is ranked instead (zeros first, by position)."""
    mag = weight.detach().abs()
    return mag if bool((mag > 0).all()) else ranks_of(mag)


class MaskedWeight(torch.autograd.Function):
    """``W * mask`` with the straight-through estimator of movement pruning: the mask (TopK of
    the scores S) is treated as the identity of S in the backward, so ``dL/dW = g * mask`` and
    ``dL/dS = g * W`` for the gradient g of the masked weight."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        return grad * mask, grad * weight, None


class PrunedMatrices:
    """The pruned matrices of a model, their current masks and (movement) their scores."""

    def __init__(self, model: ref.TransfoXLReference, method: str, two_four: bool):
        self.method, self.two_four = method, two_four
        self.weights = {name: p for name, p in model.named_parameters()
                        if p.dim() == 2 and name.endswith(PRUNED_SUFFIXES)}
        self.scores = {}
        if method == "movement":
            self.scores = {name: torch.nn.Parameter(torch.zeros_like(w))
                           for name, w in self.weights.items()}
        self.masks: Dict[str, Optional[torch.Tensor]] = {name: None for name in self.weights}

    def importance(self, name: str) -> torch.Tensor:
        w = self.weights[name]
        if self.method == "movement":
            return ranks_of(self.scores[name], w.abs())
        return magnitude_importance(w)

    @torch.no_grad()
    def update(self, sparsity: float, pruning: bool) -> None:
        """New masks: dense (None) until pruning starts, then ``sparsity`` or 2:4."""
        for name in self.weights:
            self.masks[name] = (keep_mask(self.importance(name), sparsity, self.two_four)
                                if pruning else None)

    def masked(self) -> Dict[str, torch.Tensor]:
        """The weights the forward uses, by parameter name (gradients to W, and to S)."""
        out = {}
        for name, w in self.weights.items():
            mask = self.masks[name]
            if self.method == "movement":
                # Before pruning starts the mask is all ones, but S already learns from W.
                m = torch.ones_like(w) if mask is None else mask.to(w.dtype)
                out[name] = MaskedWeight.apply(w, self.scores[name], m)
            elif mask is not None:
                out[name] = w * mask.to(w.dtype)
        return out

    def fraction_masked(self) -> float:
        total = sum(w.numel() for w in self.weights.values())
        zeros = sum(int((~m).sum()) for m in self.masks.values() if m is not None)
        return zeros / max(1, total)


class _TrainStep(torch.nn.Module):
    """``train_forward`` as a module call, so functional_call can swap in masked weights."""

    def __init__(self, model: ref.TransfoXLReference):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mems: list):
        return tt.train_forward(self.model, ids, mems)


def check_stored(name: str, weight: torch.Tensor, mask: torch.Tensor, sparsity: float,
                 two_four: bool, dtype: torch.dtype) -> int:
    """Zeros of the weight as stored: exactly the pruned entries, hence exactly the target.
    Returns the number of zeros."""
    zero = weight.detach().to(dtype) == 0
    if two_four:
        per_group = zero.reshape(zero.shape[0], -1, 4).sum(dim=-1)
        if not bool((per_group == 2).all()):
            raise AssertionError(f"{name}: a group of 4 does not hold exactly 2 zeros")
    elif int(zero.sum()) != int(round(sparsity * zero.numel())):
        raise AssertionError(f"{name}: {int(zero.sum())} zeros, expected "
                             f"{int(round(sparsity * zero.numel()))}")
    if not torch.equal(zero, ~mask):
        raise AssertionError(f"{name}: a kept weight rounds to zero in the storage dtype")
    return int(zero.sum())


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", help="directory with train.txt and valid.txt (export_kjv.py)")
    ap.add_argument("src_dir", help="checkpoint to prune (train_teacher.py or a student)")
    ap.add_argument("out_dir", help="checkpoint directory to write")
    ap.add_argument("--method", required=True, choices=("magnitude", "movement"))
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--sparsity", type=float,
                        help="final fraction of zeros of every pruned matrix, in [0, 1)")
    target.add_argument("--two-four", action="store_true", help="2:4 structured sparsity")
    ap.add_argument("--cache-dir", default=None,
                    help="token id cache (default OUT_DIR/../.train_teacher_cache)")
    g = ap.add_argument_group("pruning")
    g.add_argument("--prune-start", type=float, default=0.1,
                   help="fraction of the steps after which pruning starts (t0)")
    g.add_argument("--prune-end", type=float, default=0.7,
                   help="fraction of the steps at which the final sparsity is reached (t1)")
    g.add_argument("--score-lr", type=float, default=None,
                   help="movement: peak learning rate of the scores (default 1e-2)")
    g = ap.add_argument_group("training")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--batch-size", type=int, default=16, help="parallel streams B")
    g.add_argument("--segment-len", type=int, default=64, help="tokens per step and stream S")
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--warmup", type=int, default=20)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    g.add_argument("--recon-weight", type=float, default=1.0,
                   help="weight of the attention-reconstruction loss (compressor only)")
    g = ap.add_argument_group("progress")
    g.add_argument("--log-every", type=int, default=25)
    g.add_argument("--final-eval-tokens", type=int, default=0,
                   help="validation tokens of the final evaluation (0: all; timing runs only)")
    g.add_argument("--eval-segment-len", type=int, default=None,
                   help="segment length of the final evaluation (default --segment-len)")
    args = ap.parse_args(argv)

    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        ap.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.score_lr is not None and args.method != "movement":
        ap.error("--score-lr applies to --method movement only")
    if args.score_lr is None:
        args.score_lr = 1e-2
    if args.score_lr < 0:
        ap.error("--score-lr must be >= 0")
    if not 0.0 <= args.prune_start < args.prune_end <= 1.0:
        ap.error("need 0 <= --prune-start < --prune-end <= 1")
    for name in ("steps", "batch_size", "segment_len", "threads", "log_every"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.warmup < 0:
        ap.error("need --lr > 0 and --warmup >= 0")
    for d, files in ((args.data_dir, ("train.txt", "valid.txt")),
                     (args.src_dir, ("config.json", "model.safetensors", "tokenizer.model"))):
        for f in files:
            if not os.path.isfile(os.path.join(d, f)):
                ap.error(f"{os.path.join(d, f)} is missing")
    if os.path.realpath(args.out_dir) == os.path.realpath(args.src_dir):
        ap.error("OUT_DIR must differ from SRC_DIR")
    return args


def source_record(src_dir: str) -> dict:
    """The source checkpoint and, from its training.json when present, how it was made and
    its validation result."""
    rec = {"dir": src_dir}
    path = os.path.join(src_dir, "training.json")
    if os.path.isfile(path):
        with open(path) as f:
            src = json.load(f)
        rec.update(command=src.get("command"), valid=src.get("valid"))
    return rec


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    eval_seg = args.eval_segment_len or args.segment_len
    cache = args.cache_dir or os.path.join(
        os.path.dirname(os.path.abspath(args.out_dir)), ".train_teacher_cache")
    tokenizer = os.path.join(args.src_dir, "tokenizer.model")

    model = ref.load_checkpoint(args.src_dir)  # float32, checks names, shapes and dtype
    cfg = model.config
    dtype = ref.DTYPES[cfg["torch_dtype"]]
    kinds = sorted({layer.kind for layer in model.stack} - {"dense", "compressive"})
    if kinds:
        raise SystemExit(f"prune_finetune: trains dense and compressive layers, the source has "
                         f"{', '.join(kinds)}")
    if any(spec.get(ref.RESIDUAL_FIELD) for spec in ref.layer_specs(cfg)):
        raise SystemExit("prune_finetune: the source has residual attention, which the "
                         "trainer's forward does not run")
    vocab = tt.vocab_size_of(tokenizer)
    if vocab != cfg["vocab_size"]:
        raise SystemExit(f"prune_finetune: tokenizer has {vocab} pieces, config.json says "
                         f"vocab_size {cfg['vocab_size']}")
    pruned = PrunedMatrices(model, args.method, args.two_four)
    if not pruned.weights:
        raise SystemExit("prune_finetune: no prunable matrix in the source checkpoint")
    if args.two_four:
        odd = [n for n, w in pruned.weights.items() if w.shape[1] % 4]
        if odd:
            raise SystemExit(f"prune_finetune: 2:4 needs a multiple of 4 inputs: {odd}")
    model.train()

    train_ids = tt.cached_ids(tokenizer, os.path.join(args.data_dir, "train.txt"), cache)
    valid_ids = tt.cached_ids(tokenizer, os.path.join(args.data_dir, "valid.txt"), cache)
    target = "2:4" if args.two_four else args.sparsity
    final_sparsity = 0.5 if args.two_four else args.sparsity
    t0 = int(round(args.prune_start * args.steps))
    t1 = max(t0 + 1, int(round(args.prune_end * args.steps)))
    print(f"prune_finetune: {args.method} to {target}, {len(pruned.weights)} matrices "
          f"({sum(w.numel() for w in pruned.weights.values())} weights), pruning steps "
          f"{t0}..{t1} of {args.steps}, {len(train_ids)} train tokens, {args.threads} threads",
          flush=True)

    # Parameter groups as train_teacher's; the scores get their own, without weight decay.
    groups, lm_params, comp_params = tt.param_groups(model, args.weight_decay)
    score_params = list(pruned.scores.values())
    if score_params:
        groups.append({"params": score_params, "weight_decay": 0.0, "is_scores": True})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    step_module = _TrainStep(model)

    streams = tt.Streams(train_ids, args.batch_size, args.segment_len)
    mems = None
    history = []
    tokens = 0
    win_loss, win_recon, win_n, win_t = 0.0, 0.0, 0, time.time()
    for step in range(args.steps):
        x, y, fresh = streams.next()
        if fresh:
            mems = model.init_mems(args.batch_size)
        lr = tt.lr_at(step, args)
        for g in opt.param_groups:
            # The scores follow the weights' warmup and decay, scaled to their own peak.
            g["lr"] = args.score_lr * lr / args.lr if g.get("is_scores") else lr
        sparsity = sparsity_at(step, final_sparsity, t0, t1)
        pruned.update(sparsity, pruning=step >= t0)
        logits, mems, recon = functional_call(
            step_module, {f"model.{n}": w for n, w in pruned.masked().items()}, (x, mems))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        (loss + args.recon_weight * recon).backward()
        torch.nn.utils.clip_grad_norm_(lm_params, args.clip)
        if comp_params:
            torch.nn.utils.clip_grad_norm_(comp_params, args.clip)
        if score_params:
            torch.nn.utils.clip_grad_norm_(score_params, args.clip)
        opt.step()
        tokens += x.numel()
        win_loss += float(loss)
        win_recon += float(recon)
        win_n += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            now = time.time()
            rate = win_n * x.numel() / max(1e-9, now - win_t)
            entry = {"step": step + 1, "tokens": tokens, "loss": win_loss / win_n,
                     "recon": win_recon / win_n, "sparsity": pruned.fraction_masked(),
                     "lr": lr, "tokens_per_s": rate, "elapsed": now - t_start}
            history.append(entry)
            print(f"step {step + 1}/{args.steps}  tokens {tokens}  loss {entry['loss']:.4f}  "
                  f"recon {entry['recon']:.3e}  sparsity {entry['sparsity']:.4f}  "
                  f"lr {lr:.2e}  {rate:.0f} tok/s  elapsed {entry['elapsed']:.0f}s", flush=True)
            win_loss, win_recon, win_n, win_t = 0.0, 0.0, 0, time.time()
    train_seconds = time.time() - t_start

    # The final mask, from the final weights (scores), applied to the weights themselves.
    pruned.update(final_sparsity, pruning=True)
    matrices = {}
    with torch.no_grad():
        for name, w in pruned.weights.items():
            mask = pruned.masks[name]
            w.mul_(mask.to(w.dtype))
            zeros = check_stored(name, w, mask, final_sparsity, args.two_four, dtype)
            matrices[name] = {"shape": list(w.shape), "zeros": zeros,
                              "sparsity": zeros / w.numel()}
    tt.save_checkpoint(model, args.out_dir, tokenizer, dtype)

    # The final evaluation is of the stored (rounded) weights, computed in float32: what
    # `mnemo score --segment-len EVAL_SEG` on valid.txt reproduces.
    final_ids = valid_ids if args.final_eval_tokens <= 0 else valid_ids[:args.final_eval_tokens]
    t_eval = time.time()
    final = tt.evaluate(tt.rounded_copy(model, dtype), final_ids, eval_seg)
    final_bytes = tt.decoded_bytes(tokenizer, final_ids[1:])
    final.update(bytes=final_bytes, bits_per_byte=final["total_bits"] / final_bytes,
                 segment_len=eval_seg, seconds=round(time.time() - t_eval, 2))
    src = source_record(args.src_dir)
    src_valid = src.get("valid") or {}
    print(f"final valid ({cfg['torch_dtype']} weights, {args.method} {target}): bits/token "
          f"{final['bits_per_token']:.4f}  bits/byte {final['bits_per_byte']:.4f}  "
          f"({final['scored_tokens']} tokens)"
          + (f"; source {src_valid['bits_per_token']:.4f} bits/token"
             if "bits_per_token" in src_valid else ""), flush=True)
    record = {
        "command": " ".join([os.path.relpath(sys.executable, ROOT)
                             if sys.executable.startswith(ROOT) else sys.executable]
                            + [os.path.relpath(os.path.abspath(__file__), ROOT)]
                            + list(sys.argv[1:] if argv is None else argv)),
        "method": args.method,
        "target": target,
        "seed": args.seed,
        "threads": args.threads,
        "arguments": vars(args),
        "steps": args.steps,
        "schedule": {"prune_start_step": t0, "prune_end_step": t1,
                     "final_sparsity": final_sparsity},
        "source": src,
        "matrices": matrices,
        "mean_sparsity": (sum(m["zeros"] for m in matrices.values())
                          / sum(math.prod(m["shape"]) for m in matrices.values())),
        "tokens_seen": tokens,
        "history": history,
        "valid": final,
        "torch_version": torch.__version__,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    with open(os.path.join(args.out_dir, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out_dir} in {record['wall_seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
