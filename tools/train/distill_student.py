"""Distils the default student: half of the teacher's layers, trained to imitate the teacher.

The recipe is DistilBERT's (Sanh et al. 2019) applied to this causal Transformer-XL LM:

* the student has the teacher's config with every other layer (``--layers``, default the teacher
  layers 0, 2, 4, ...), and starts from the teacher's weights: each student layer is a copy of
  its picked teacher layer (attention, feed-forward, compressor, untied r biases), the
  embeddings, output bias and any other non-layer tensors are copied unchanged. Starting from
  the teacher's own layers gives the smaller model a head start over a random init;
* the loss is ``alpha_ce * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (the soft
  targets, averaged over tokens) ``+ alpha_clm * CE(student, next token)`` (the usual LM loss)
  ``+ alpha_cos * (1 - cos(student hidden, teacher hidden))`` (DistilBERT's cosine embedding
  loss, on the last hidden states before the output head, averaged over tokens). The ``T^2``
  keeps the soft-target gradients at the scale of the hard ones (Hinton et al. 2015);
* the student's compressors go on training with the attention-reconstruction loss
  (``--recon-weight``), exactly as in the teacher trainer, and only they do.

Everything else is the teacher trainer's (``train_teacher.py``, imported as a module, whose
functions are reused): the same data streams (``B`` parallel streams of ``S``-token segments,
memories carried and detached between steps; teacher and student each carry their own), AdamW
with warmup and cosine decay, parameter groups and gradient clipping, determinism, progress
lines, periodic validation and the final validation of the weights rounded to the storage dtype
(the number ``mnemo score --segment-len S`` reproduces), and the checkpoint layout. The teacher
is loaded as float32 from its stored weights, frozen and run without gradients.

Writes a mnemo checkpoint directory (``config.json``, ``model.safetensors``, the teacher's
``tokenizer.model``) and ``training.json``, which adds to the teacher trainer's record the
teacher (directory, weights hash, config, parameter count), the picked layers, the temperature
and loss weights, and the final windows of the KL, CE and cosine losses. Usage::

    .venv/bin/python tools/train/distill_student.py DATA_DIR TEACHER_DIR OUT_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from tools.train import train_teacher as tt

ref = tt.ref
ROOT = tt.ROOT
TEACHER_FILES = ("config.json", "model.safetensors", "tokenizer.model")


def fail(message: str) -> SystemExit:
    return SystemExit(f"distill_student: {message}")


# --------------------------------------------------------------------------
# Teacher and student
# --------------------------------------------------------------------------


def read_teacher_config(teacher_dir: str) -> dict:
    """The teacher's validated config; refuses what the student recipe cannot handle."""
    if not os.path.isdir(teacher_dir):
        raise fail(f"teacher directory {teacher_dir!r} does not exist")
    missing = [n for n in TEACHER_FILES if not os.path.isfile(os.path.join(teacher_dir, n))]
    if missing:
        raise fail(f"teacher directory {teacher_dir!r} lacks {', '.join(missing)} "
                   f"(expected a checkpoint written by train_teacher.py)")
    try:
        with open(os.path.join(teacher_dir, "config.json")) as f:
            cfg = ref.validate_config(json.load(f))
    except (ValueError, json.JSONDecodeError) as e:
        raise fail(f"teacher config.json: {e}")
    # train_forward_hidden runs dense and compressive layers only, without residual attention;
    # shared layer parameters (layer_groups) have no per-layer weights to pick from.
    if "layer_groups" in cfg:
        raise fail("the teacher shares layer parameters (layer_groups); the student needs "
                   "one set of weights per teacher layer")
    for n, spec in enumerate(ref.layer_specs(cfg)):
        if spec["attention"] != "dense":
            raise fail(f"teacher layer {n} is {spec['attention']!r}; the student is distilled "
                       f"from transfo_xl teachers of dense layers (XL or compressive memory)")
        if spec.get(ref.RESIDUAL_FIELD):
            raise fail(f"teacher layer {n} has residual attention, which the trainer's "
                       f"forward does not run")
    return cfg


def parse_layers(text: Optional[str], n_teacher: int) -> List[int]:
    """The picked teacher layer indices: ``text`` as comma-separated indices, or by default
    every other layer from 0 (DistilBERT's choice)."""
    if text is None:
        return list(range(0, n_teacher, 2))
    try:
        picked = [int(s) for s in text.split(",")]
    except ValueError:
        raise fail(f"--layers {text!r}: expected comma-separated teacher layer indices")
    bad = [i for i in picked if not 0 <= i < n_teacher]
    if bad:
        raise fail(f"--layers {text!r}: layer index {bad[0]} is out of range; the teacher has "
                   f"{n_teacher} layers (0 ... {n_teacher - 1})")
    dups = sorted({i for i in picked if picked.count(i) > 1})
    if dups:
        raise fail(f"--layers {text!r}: layer {dups[0]} is picked twice")
    return picked


def student_config(teacher_cfg: dict, picked: List[int], dtype: str) -> dict:
    """The teacher's config with the picked layers (their ``layers`` entries, in order)."""
    cfg = dict(teacher_cfg)
    cfg["n_layer"] = len(picked)
    cfg["torch_dtype"] = dtype
    if "layers" in teacher_cfg:
        cfg["layers"] = [dict(teacher_cfg["layers"][i]) for i in picked]
    return ref.validate_config(cfg)


def teacher_tensor_name(name: str, picked: List[int]) -> str:
    """The teacher tensor a student tensor starts from: ``layers.N.*`` comes from
    ``layers.picked[N].*``, every other tensor from the tensor of the same name."""
    if name.startswith("layers."):
        _, n, rest = name.split(".", 2)
        return f"layers.{picked[int(n)]}.{rest}"
    return name


def student_state(teacher_state: Dict[str, torch.Tensor],
                  student: ref.TransfoXLReference, picked: List[int]) -> Dict[str, torch.Tensor]:
    """The student's initial state_dict, copied from the teacher's."""
    state = {}
    for name, want in student.state_dict().items():
        src = teacher_state[teacher_tensor_name(name, picked)]
        if src.shape != want.shape:
            raise fail(f"{name}: teacher shape {tuple(src.shape)}, student "
                       f"{tuple(want.shape)}")
        state[name] = src.detach().clone().to(torch.float32)
    return state


def make_student(teacher: ref.TransfoXLReference, picked: List[int],
                 dtype: str) -> ref.TransfoXLReference:
    student = ref.TransfoXLReference(student_config(teacher.config, picked, dtype))
    student.load_state_dict(student_state(teacher.state_dict(), student, picked), strict=True)
    return student


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------


def distill_losses(s_logits: torch.Tensor, t_logits: torch.Tensor, s_hidden: torch.Tensor,
                   t_hidden: torch.Tensor, targets: torch.Tensor,
                   temperature: float) -> Dict[str, torch.Tensor]:
    """DistilBERT's three losses, each a mean over tokens: ``kl`` (T^2-scaled KL of the
    temperature-softened teacher and student distributions), ``ce`` (next-token cross-entropy)
    and ``cos`` (1 - cosine similarity of the last hidden states)."""
    V = s_logits.shape[-1]
    T = temperature
    log_p_student = F.log_softmax(s_logits.reshape(-1, V) / T, dim=-1)
    log_p_teacher = F.log_softmax(t_logits.reshape(-1, V) / T, dim=-1)
    # batchmean over the [tokens, V] rows: the per-token KL, averaged over tokens.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * T * T
    ce = F.cross_entropy(s_logits.reshape(-1, V), targets.reshape(-1))
    cos = (1.0 - F.cosine_similarity(s_hidden, t_hidden, dim=-1)).mean()
    return {"kl": kl, "ce": ce, "cos": cos}


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", help="directory with train.txt and valid.txt (export_kjv.py)")
    ap.add_argument("teacher_dir", help="teacher checkpoint directory (train_teacher.py)")
    ap.add_argument("out_dir", help="student checkpoint directory to write")
    ap.add_argument("--cache-dir", default=None,
                    help="token id cache (default OUT_DIR/../.train_teacher_cache, shared with "
                         "the teacher trainer)")
    g = ap.add_argument_group("student")
    g.add_argument("--layers", default=None,
                   help="comma-separated teacher layer indices the student layers start from "
                        "(default every other layer: 0,2,4,...)")
    g.add_argument("--dtype", default=None, choices=tuple(ref.DTYPES),
                   help="storage dtype of the written weights (default the teacher's)")
    g = ap.add_argument_group("distillation")
    g.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T")
    g.add_argument("--alpha-ce", type=float, default=5.0, help="weight of the soft-target KL")
    g.add_argument("--alpha-clm", type=float, default=2.0, help="weight of the LM cross-entropy")
    g.add_argument("--alpha-cos", type=float, default=1.0,
                   help="weight of the hidden-state cosine loss")
    g.add_argument("--recon-weight", type=float, default=1.0,
                   help="weight of the attention-reconstruction loss (compressor only)")
    g = ap.add_argument_group("training")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--batch-size", type=int, default=16, help="parallel streams B")
    g.add_argument("--segment-len", type=int, default=64, help="tokens per step and stream S")
    g.add_argument("--steps", type=int, default=1500, help="length of the LR schedule")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after N steps (schedule of --steps unchanged; 0 writes the "
                        "initial student)")
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (LM params)")
    g = ap.add_argument_group("progress")
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--eval-every", type=int, default=500, help="0: only the final evaluation")
    g.add_argument("--eval-tokens", type=int, default=16384,
                   help="validation tokens for periodic evaluations (0: all)")
    g.add_argument("--final-eval-tokens", type=int, default=0,
                   help="validation tokens of the final evaluation (0: all; timing runs only)")
    g.add_argument("--eval-segment-len", type=int, default=None,
                   help="segment length of the evaluations (default --segment-len)")
    args = ap.parse_args(argv)
    if args.temperature <= 0:
        ap.error("--temperature must be > 0")
    for name in ("alpha_ce", "alpha_clm", "alpha_cos", "recon_weight"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.alpha_ce == args.alpha_clm == args.alpha_cos == 0:
        ap.error("--alpha-ce, --alpha-clm and --alpha-cos are all 0: nothing to train")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    # Everything the arguments can get wrong is checked before the data and weights are read.
    teacher_cfg = read_teacher_config(args.teacher_dir)
    picked = parse_layers(args.layers, teacher_cfg["n_layer"])
    args.dtype = args.dtype or teacher_cfg["torch_dtype"]
    if not os.path.isdir(args.data_dir):
        raise fail(f"data directory {args.data_dir!r} does not exist")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    eval_seg = args.eval_segment_len or args.segment_len
    last_step = args.steps if args.max_steps is None else min(args.steps, args.max_steps)
    cache = args.cache_dir or os.path.join(
        os.path.dirname(os.path.abspath(args.out_dir)), ".train_teacher_cache")
    tokenizer = os.path.join(args.teacher_dir, "tokenizer.model")

    train_ids = tt.cached_ids(tokenizer, os.path.join(args.data_dir, "train.txt"), cache)
    valid_ids = tt.cached_ids(tokenizer, os.path.join(args.data_dir, "valid.txt"), cache)
    valid_bytes = tt.decoded_bytes(tokenizer, valid_ids[1:])
    vocab = tt.vocab_size_of(tokenizer)
    if vocab != teacher_cfg["vocab_size"]:
        raise fail(f"the teacher's tokenizer has {vocab} pieces, its config vocab_size "
                   f"{teacher_cfg['vocab_size']}")

    # Both models in float32 from the stored (bf16/f16) teacher weights.
    try:
        teacher = ref.load_checkpoint(args.teacher_dir)
    except ValueError as e:
        raise fail(f"teacher model.safetensors: {e}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = make_student(teacher, picked, args.dtype)
    student.train()
    cfg = student.config
    n_params = sum(p.numel() for p in student.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    teacher_record = {"dir": args.teacher_dir,
                      "model_sha256": file_sha256(os.path.join(args.teacher_dir,
                                                               "model.safetensors")),
                      "config": teacher_cfg, "parameters": n_teacher}
    teacher_json = os.path.join(args.teacher_dir, "training.json")
    if os.path.isfile(teacher_json):  # the teacher's own final validation, for comparison
        with open(teacher_json) as f:
            teacher_record["valid"] = json.load(f).get("valid")
    print(f"distill_student: teacher {teacher_cfg['n_layer']} layers ({n_teacher} parameters), "
          f"student layers {','.join(map(str, picked))} ({n_params} parameters); "
          f"{len(train_ids)} train tokens, {len(valid_ids)} valid tokens ({valid_bytes} bytes), "
          f"{args.threads} threads", flush=True)

    # Parameter groups and clipping as train_teacher.py: decay on LM matrices only, the
    # compressors (trained by the reconstruction loss alone) clipped separately.
    groups, lm_params, comp_params = tt.param_groups(student, args.weight_decay)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    streams = tt.Streams(train_ids, args.batch_size, args.segment_len)
    s_mems = t_mems = None
    history = []
    evals = []
    tokens = 0
    parts = ("loss", "kl", "ce", "cos", "recon")
    window = dict.fromkeys(parts, 0.0)
    win_n, win_t = 0, time.time()
    first_loss = last_loss = None

    def run_eval(step: int, limit: int) -> dict:
        ids = valid_ids if limit <= 0 else valid_ids[:limit]
        t0 = time.time()
        res = tt.evaluate(student, ids, eval_seg)
        nbytes = valid_bytes if len(ids) == len(valid_ids) else tt.decoded_bytes(
            tokenizer, ids[1:])
        res.update(step=step, bytes=nbytes, bits_per_byte=res["total_bits"] / nbytes,
                   seconds=round(time.time() - t0, 2))
        print(f"valid step {step}: bits/token {res['bits_per_token']:.4f}  bits/byte "
              f"{res['bits_per_byte']:.4f}  ({res['scored_tokens']} tokens, "
              f"{res['seconds']:.1f}s)", flush=True)
        return res

    for step in range(last_step):
        x, y, fresh = streams.next()
        if fresh:
            s_mems = student.init_mems(args.batch_size)
            t_mems = teacher.init_mems(args.batch_size)
        lr = tt.lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.no_grad():
            t_hidden, t_mems, _ = tt.train_forward_hidden(teacher, x, t_mems, with_recon=False)
            t_logits = tt.output_logits(teacher, t_hidden)
        s_hidden, s_mems, recon = tt.train_forward_hidden(student, x, s_mems)
        s_logits = tt.output_logits(student, s_hidden)
        losses = distill_losses(s_logits, t_logits, s_hidden, t_hidden, y, args.temperature)
        loss = (args.alpha_ce * losses["kl"] + args.alpha_clm * losses["ce"]
                + args.alpha_cos * losses["cos"])
        opt.zero_grad(set_to_none=True)
        (loss + args.recon_weight * recon).backward()
        torch.nn.utils.clip_grad_norm_(lm_params, args.clip)
        if comp_params:
            torch.nn.utils.clip_grad_norm_(comp_params, args.clip)
        opt.step()
        tokens += x.numel()
        lv = float(loss)
        first_loss = lv if first_loss is None else first_loss
        last_loss = lv
        for name, value in (("loss", loss), ("recon", recon), *losses.items()):
            window[name] += float(value)
        win_n += 1
        if (step + 1) % args.log_every == 0 or step + 1 == last_step:
            now = time.time()
            rate = win_n * x.numel() / max(1e-9, now - win_t)
            entry = {"step": step + 1, "tokens": tokens,
                     **{name: window[name] / win_n for name in parts},
                     "lr": lr, "tokens_per_s": rate, "elapsed": now - t_start,
                     "epoch": streams.epoch}
            history.append(entry)
            print(f"step {step + 1}/{last_step}  tokens {tokens}  loss {entry['loss']:.4f}  "
                  f"kl {entry['kl']:.4f}  ce {entry['ce']:.4f}  cos {entry['cos']:.4f}  "
                  f"recon {entry['recon']:.3e}  lr {lr:.2e}  {rate:.0f} tok/s  "
                  f"elapsed {entry['elapsed']:.0f}s  epoch {streams.epoch}", flush=True)
            window = dict.fromkeys(parts, 0.0)
            win_n, win_t = 0, time.time()
        if args.eval_every > 0 and (step + 1) % args.eval_every == 0 and step + 1 < last_step:
            evals.append(run_eval(step + 1, args.eval_tokens))
            win_t = time.time()

    train_seconds = time.time() - t_start
    dtype = ref.DTYPES[args.dtype]
    tt.save_checkpoint(student, args.out_dir, tokenizer, dtype)
    # The final evaluation is of the stored (rounded) weights, computed in float32: what
    # `mnemo score --segment-len EVAL_SEG` on valid.txt reproduces.
    stored = tt.rounded_copy(student, dtype)
    t0 = time.time()
    final_ids = valid_ids if args.final_eval_tokens <= 0 else valid_ids[:args.final_eval_tokens]
    final_bytes = valid_bytes if len(final_ids) == len(valid_ids) else tt.decoded_bytes(
        tokenizer, final_ids[1:])
    final = tt.evaluate(stored, final_ids, eval_seg)
    final.update(bytes=final_bytes, bits_per_byte=final["total_bits"] / final_bytes,
                 segment_len=eval_seg, seconds=round(time.time() - t0, 2))
    print(f"final valid ({args.dtype} weights): bits/token {final['bits_per_token']:.4f}  "
          f"bits/byte {final['bits_per_byte']:.4f}  ({final['scored_tokens']} tokens)",
          flush=True)
    last = history[-1] if history else {}
    record = {
        "command": " ".join([os.path.relpath(sys.executable, ROOT)
                             if sys.executable.startswith(ROOT) else sys.executable]
                            + [os.path.relpath(os.path.abspath(__file__), ROOT)]
                            + list(sys.argv[1:] if argv is None else argv)),
        "seed": args.seed,
        "threads": args.threads,
        "arguments": vars(args),
        "config": cfg,
        "parameters": n_params,
        "teacher": teacher_record,
        "layers": picked,
        "temperature": args.temperature,
        "alpha_ce": args.alpha_ce,
        "alpha_clm": args.alpha_clm,
        "alpha_cos": args.alpha_cos,
        "recon_weight": args.recon_weight,
        "train_tokens_available": int(len(train_ids)),
        "steps": last_step,
        "tokens_seen": tokens,
        "first_train_loss": first_loss,
        "final_train_loss": last_loss,
        "final_train_loss_window": last.get("loss"),
        "final_kl_window": last.get("kl"),
        "final_ce_window": last.get("ce"),
        "final_cos_window": last.get("cos"),
        "valid": final,
        "evals": evals,
        "history": history,
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
