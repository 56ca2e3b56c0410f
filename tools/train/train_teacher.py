"""Trains the default teacher: a Transformer-XL with XL and compressive memory on the KJV.

The model is the independent PyTorch reference (``python/mnemo_reference``,
``TransfoXLReference``), so the written checkpoint is exactly what the engine loads
(``docs/checkpoint-format.md``, including "Compressive memory"). Training:

* the tokenized training split as ``B`` parallel streams (the token sequence cut into ``B``
  contiguous parts), read in segments of ``S`` tokens; every stream carries its memory (XL
  memory, compression buffer and compressed memory) from step to step, detached between steps
  (truncated back-propagation over one segment); after a pass over the data the memories
  restart empty and the segment grid shifts by ``S/2``;
* next-token cross-entropy, AdamW with linear warmup and cosine decay, gradient clipping;
* the Compressive Transformer's attention-reconstruction loss (Rae et al. 2019, Algorithm 2):
  for every compressive layer, whenever rows leave the XL memory and are compressed,
  ``|| attn(h, old_mem) - attn(h, compress(old_mem)) ||^2`` with ``h`` the segment's hidden
  states, ``old_mem`` the evicted rows and the layer's query/key/value weights all held
  constant (stop-gradient), so this loss trains only the compression network and the language
  model loss never reaches it (a compressed row is first attended to one step later, after the
  memories are detached);
* periodic validation: the validation split streamed through the model in one session,
  segment by segment with memory, as ``mnemo score --segment-len S`` does, reported in bits per
  token and bits per byte (bytes of the decoded scored tokens, as ``mnemo score`` counts).

Deterministic for a given seed and thread count (seeded init, fixed data order,
``torch.use_deterministic_algorithms``). Writes a mnemo checkpoint directory: ``config.json``,
``model.safetensors`` (the reference's state_dict in bfloat16 or float16), ``tokenizer.model``
and ``training.json`` (command, seed, config, losses, validation, wall time).

Tokenization uses Debian's ``spm_encode`` / ``spm_decode`` (or the Python ``sentencepiece``
module when importable); token ids are cached as ``.npy`` under ``--cache-dir``. Usage (the
venv is needed for safetensors)::

    .venv/bin/python tools/train/train_teacher.py DATA_DIR OUT_DIR --tokenizer TOKENIZER.model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import mnemo_checkpoint
from mnemo_reference import model as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LN2 = math.log(2.0)

# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def _spm_module():
    try:
        import sentencepiece  # type: ignore
        return sentencepiece
    except ImportError:
        return None


def encode_lines(model_path: str, path: str) -> np.ndarray:
    """Token ids of a text file, one sentencepiece call per line, concatenated.

    With the default normalisation a newline is whitespace, so this equals encoding the whole
    file as one string (what ``mnemo score --text-file`` does); the test checks it.
    """
    spm = _spm_module()
    if spm is not None:
        sp = spm.SentencePieceProcessor(model_file=model_path)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        ids = [i for line in lines for i in sp.encode(line)]
        return np.asarray(ids, dtype=np.int32)
    if shutil.which("spm_encode") is None:
        raise SystemExit("train_teacher: need the Python sentencepiece module or Debian's "
                         "spm_encode (apt-get install sentencepiece)")
    with open(path, "rb") as f:
        out = subprocess.run(["spm_encode", f"--model={model_path}", "--output_format=id"],
                             stdin=f, check=True, capture_output=True).stdout
    return np.asarray(out.split(), dtype=np.int32)


def decoded_bytes(model_path: str, ids: Sequence[int]) -> int:
    """UTF-8 byte length of the decoded text of ``ids`` (``mnemo score``'s byte count)."""
    spm = _spm_module()
    if spm is not None:
        sp = spm.SentencePieceProcessor(model_file=model_path)
        return len(sp.decode([int(i) for i in ids]).encode("utf-8"))
    line = " ".join(str(int(i)) for i in ids) + "\n"
    out = subprocess.run(["spm_decode", f"--model={model_path}", "--input_format=id"],
                         input=line.encode(), check=True, capture_output=True).stdout
    return len(out[:-1] if out.endswith(b"\n") else out)


def vocab_size_of(model_path: str) -> int:
    spm = _spm_module()
    if spm is not None:
        return spm.SentencePieceProcessor(model_file=model_path).get_piece_size()
    out = subprocess.run(["spm_export_vocab", f"--model={model_path}"], check=True,
                         capture_output=True).stdout
    return len(out.splitlines())


def cached_ids(model_path: str, text_path: str, cache_dir: str) -> np.ndarray:
    """Token ids of ``text_path``, cached under a name keyed by the tokenizer and the text."""
    h = hashlib.sha256()
    for p in (model_path, text_path):
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    name = f"{os.path.splitext(os.path.basename(text_path))[0]}-{h.hexdigest()[:16]}.npy"
    path = os.path.join(cache_dir, name)
    if os.path.exists(path):
        return np.load(path)
    ids = encode_lines(model_path, text_path)
    os.makedirs(cache_dir, exist_ok=True)
    np.save(path + ".tmp.npy", ids)
    os.replace(path + ".tmp.npy", path)
    return ids


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def make_config(args, vocab_size: int) -> dict:
    if args.compressive_layers == "all":
        comp = set(range(args.n_layer))
    elif args.compressive_layers == "none":
        comp = set()
    else:
        comp = {int(s) for s in args.compressive_layers.split(",")}
    layers = []
    for n in range(args.n_layer):
        if n in comp:
            layers.append({"attention": "dense", "memory": "compressive",
                           "compression": args.compression,
                           "compression_rate": args.compression_rate,
                           "cmem_len": args.cmem_len})
        else:
            layers.append({"attention": "dense"})
    cfg = {
        "architecture": "transfo_xl",
        "vocab_size": vocab_size,
        "d_model": args.d_model,
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "d_head": args.d_head,
        "d_inner": args.d_inner,
        "mem_len": args.mem_len,
        "clamp_len": 0,
        "same_length": False,
        "pre_lnorm": args.pre_lnorm,
        "untie_r": True,
        "activation": args.activation,
        "layer_norm_epsilon": 1e-5,
        "memory_init": "empty",
        "tie_word_embeddings": True,
        "torch_dtype": args.dtype,
        "eos_token_id": 2,
        "layers": layers,
    }
    return ref.validate_config(cfg)


def init_weights(model: ref.TransfoXLReference, seed: int, std: float = 0.02) -> None:
    """Transformer-XL style init (normal(0, std) matrices and embeddings, zero biases, unit
    LayerNorms); a conv1d / dilated_conv compressor starts as mean pooling."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("attn.compress.weight"):       # [D, D, taps]
                p.zero_()
                taps = p.shape[2]
                eye = torch.eye(p.shape[0], dtype=p.dtype)
                for i in range(taps):
                    p[:, :, i] = eye / taps
            elif name.endswith("ln.weight"):
                p.fill_(1.0)
            elif leaf == "bias":
                p.zero_()
            else:  # embeddings, linear weights, r_w_bias / r_r_bias
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)


def _biases(model: ref.TransfoXLReference, layer) -> Tuple[torch.Tensor, torch.Tensor]:
    if model.config["untie_r"]:
        return layer.attn.r_w_bias, layer.attn.r_r_bias
    return model.r_w_bias, model.r_r_bias


def recon_loss(attn: ref.CompressiveAttention, state: ref.CompressiveState,
               x: torch.Tensor) -> Optional[torch.Tensor]:
    """Attention-reconstruction loss of one compressive layer for one call (Rae et al. 2019).

    Recomputes which hidden rows the reference's ``CompressiveAttention.forward`` compresses
    in this call (the buffer plus the rows leaving the XL memory, in full groups of ``c``) and
    compares content attention from the segment's hidden states over those rows with the same
    attention over their compressed rows. Everything but the compression network is held
    constant. None when nothing is compressed in this call.
    """
    B, T, _ = x.shape
    M = state.mem.shape[1]
    keep = min(attn.mem_len, M + T)
    gone = M + T - keep
    c = attn.rate
    with torch.no_grad():
        both = torch.cat([state.mem, x], dim=1)
        hid = attn.ln(both) if attn.pre_lnorm else both
        buf = torch.cat([state.buf, hid[:, :gone]], dim=1)
        n = buf.shape[1] // c
        if n == 0:
            return None
        old = buf[:, :n * c]                                         # [B, n*c, D]
        h = hid[:, M:]                                                # [B, T, D]
        H, dh = attn.n_head, attn.d_head
        w = attn.qkv.weight.detach()
        wq, wk, wv = w.split(H * dh, dim=0)
    groups = old.reshape(B * n, c, -1)
    usage = old.new_zeros(B * n, c)
    new_cm = attn.compress_group(groups, usage).reshape(B, n, -1)    # grad: compressor only

    def content_attn(m: torch.Tensor) -> torch.Tensor:
        q = (h @ wq.t()).reshape(B, T, H, dh)
        k = (m @ wk.t()).reshape(B, m.shape[1], H, dh)
        v = (m @ wv.t()).reshape(B, m.shape[1], H, dh)
        p = torch.softmax(torch.einsum("bthd,bkhd->bhtk", q, k) / math.sqrt(dh), dim=-1)
        return torch.einsum("bhtk,bkhd->bthd", p, v)

    with torch.no_grad():
        target = content_attn(old)
    return F.mse_loss(content_attn(new_cm), target)


def train_forward_hidden(model: ref.TransfoXLReference, ids: torch.Tensor, mems: list,
                         with_recon: bool = True) -> Tuple[torch.Tensor, list, torch.Tensor]:
    """``TransfoXLReference.forward`` with gradients (that method runs under no_grad), for
    models of dense and compressive layers: the reference's own layer modules, called as its
    forward calls them. Returns (last hidden state [B, T, D], before the output head; detached
    new states; summed reconstruction loss). The student distiller compares hidden states."""
    x = model.embed(ids)
    new_mems = []
    recon = x.new_zeros(())
    for n, layer in enumerate(model.stack):
        u, v = _biases(model, layer)
        if layer.kind == "compressive":
            state = mems[n]
            if with_recon and layer.attn.compression in ("conv1d", "dilated_conv"):
                r = recon_loss(layer.attn, state, x)
                if r is not None:
                    recon = recon + r
            y, new_state = layer.attn(x, state, u, v)
            x = layer.ff(y)
            new_mems.append(ref.CompressiveState(*(t.detach() for t in new_state)))
        elif layer.kind == "dense":
            mem = mems[n]
            both = torch.cat([mem, x], dim=1)
            keep = min(model.mem_len, both.shape[1])
            new_mems.append(both[:, both.shape[1] - keep:].detach())
            x = layer(x, mem, u, v)
        else:
            raise ValueError(f"train_teacher trains dense and compressive layers, not "
                             f"{layer.kind}")
    return x, new_mems, recon


def output_logits(model: ref.TransfoXLReference, hidden: torch.Tensor) -> torch.Tensor:
    """The output head: logits [B, T, V] of the last hidden state (as the reference's forward)."""
    return hidden @ model.output_weight().t() + model.lm_head.bias


def train_forward(model: ref.TransfoXLReference, ids: torch.Tensor, mems: list,
                  with_recon: bool = True) -> Tuple[torch.Tensor, list, torch.Tensor]:
    """:func:`train_forward_hidden` followed by the output head. Returns (logits [B, T, V],
    detached new states, summed reconstruction loss)."""
    hidden, new_mems, recon = train_forward_hidden(model, ids, mems, with_recon)
    return output_logits(model, hidden), new_mems, recon


@torch.no_grad()
def evaluate(model: ref.TransfoXLReference, ids: np.ndarray, segment_len: int) -> dict:
    """One fresh session over ``ids`` in segments of ``segment_len`` (the reference's own
    forward, as ``mnemo score`` feeds the engine); token 0 is not scored."""
    was_training = model.training
    model.eval()
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    mems = None
    nats = 0.0
    for start in range(0, t.numel(), segment_len):
        seg = t[None, start:start + segment_len]
        logits, mems = model(seg, mems)
        target = t[start + 1:start + 1 + seg.shape[1]]
        lp = torch.log_softmax(logits[0, :target.numel()].double(), dim=-1)
        nats -= float(lp.gather(1, target[:, None]).sum())
    model.train(was_training)
    scored = t.numel() - 1
    return {"tokens": int(t.numel()), "scored_tokens": scored, "total_bits": nats / LN2,
            "bits_per_token": nats / LN2 / scored}


def rounded_copy(model: ref.TransfoXLReference, dtype: torch.dtype) -> ref.TransfoXLReference:
    """A float32 model holding the weights rounded to the storage dtype (what the engine
    loads)."""
    copy = ref.TransfoXLReference(model.config)
    copy.load_state_dict({k: v.detach().to(dtype).to(torch.float32)
                          for k, v in model.state_dict().items()})
    return copy.eval()


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def param_groups(model: ref.TransfoXLReference, weight_decay: float
                 ) -> Tuple[list, list, list]:
    """AdamW groups (weight decay on the LM's matrices only; the compressors, trained by the
    reconstruction loss alone, in a group of their own) and the two parameter lists clipped
    separately: (groups, LM parameters, compressor parameters)."""
    comp_params = [p for n, p in model.named_parameters() if ".attn.compress." in n]
    lm_named = [(n, p) for n, p in model.named_parameters() if ".attn.compress." not in n]
    groups = [
        {"params": [p for n, p in lm_named if p.dim() >= 2 and not n.endswith("_bias")],
         "weight_decay": weight_decay},
        {"params": [p for n, p in lm_named if p.dim() < 2 or n.endswith("_bias")],
         "weight_decay": 0.0},
    ]
    if comp_params:
        groups.append({"params": comp_params, "weight_decay": 0.0})
    return groups, [p for _, p in lm_named], comp_params


def lr_at(step: int, args) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, cosine decay to ``lr * min_lr_ratio`` at
    ``steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


class Streams:
    """The training ids as ``B`` contiguous streams read ``S`` tokens at a time; a new pass
    shifts the grid by ``S/2`` and restarts the memories."""

    def __init__(self, ids: np.ndarray, batch: int, seg: int):
        self.ids = torch.as_tensor(ids.astype(np.int64))
        self.B, self.S = batch, seg
        self.epoch, self.pos = -1, 0
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch += 1
        off = (self.epoch * (self.S // 2)) % self.S
        n = (self.ids.numel() - off) // self.B
        if n < self.S + 1:
            raise SystemExit(f"train_teacher: {self.ids.numel()} training tokens are too few "
                             f"for {self.B} streams of segments of {self.S}")
        self.data = self.ids[off:off + n * self.B].reshape(self.B, n)
        self.pos = 0
        self.fresh = True

    def next(self) -> Tuple[torch.Tensor, torch.Tensor, bool]:
        """(inputs [B, S], targets [B, S], True when the memories must restart)."""
        if self.pos + self.S + 1 > self.data.shape[1]:
            self._new_epoch()
        x = self.data[:, self.pos:self.pos + self.S]
        y = self.data[:, self.pos + 1:self.pos + self.S + 1]
        self.pos += self.S
        fresh, self.fresh = self.fresh, False
        return x, y, fresh


def save_checkpoint(model: ref.TransfoXLReference, out_dir: str, tokenizer: str,
                    dtype: torch.dtype) -> None:
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    mnemo_checkpoint.write_checkpoint(out_dir, model.config, tensors, tokenizer=tokenizer)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", help="directory with train.txt and valid.txt (export_kjv.py)")
    ap.add_argument("out_dir", help="checkpoint directory to write")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece tokenizer.model")
    ap.add_argument("--cache-dir", default=None,
                    help="token id cache (default OUT_DIR/../.train_teacher_cache)")
    g = ap.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--d-model", type=int, default=256)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--d-head", type=int, default=64)
    g.add_argument("--d-inner", type=int, default=1024)
    g.add_argument("--mem-len", type=int, default=128)
    g.add_argument("--cmem-len", type=int, default=64)
    g.add_argument("--compression", default="conv1d", choices=ref.COMPRESSIONS)
    g.add_argument("--compression-rate", type=int, default=4)
    g.add_argument("--compressive-layers", default="all",
                   help="'all', 'none' or comma-separated layer indices")
    g.add_argument("--activation", default="gelu", choices=("gelu", "relu"))
    g.add_argument("--pre-lnorm", action="store_true", help="pre-LayerNorm blocks")
    g.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"),
                   help="storage dtype of the written weights")
    g = ap.add_argument_group("training")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--batch-size", type=int, default=16, help="parallel streams B")
    g.add_argument("--segment-len", type=int, default=64, help="tokens per step and stream S")
    g.add_argument("--steps", type=int, default=3000, help="length of the LR schedule")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after N steps (schedule of --steps unchanged; smoke/timing runs)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--warmup", type=int, default=200)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (LM params)")
    g.add_argument("--recon-weight", type=float, default=1.0,
                   help="weight of the attention-reconstruction loss (compressor only)")
    g.add_argument("--init-std", type=float, default=0.02)
    g = ap.add_argument_group("progress")
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--eval-every", type=int, default=500, help="0: only the final evaluation")
    g.add_argument("--eval-tokens", type=int, default=16384,
                   help="validation tokens for periodic evaluations (0: all)")
    g.add_argument("--final-eval-tokens", type=int, default=0,
                   help="validation tokens of the final evaluation (0: all; timing runs only)")
    g.add_argument("--eval-segment-len", type=int, default=None,
                   help="segment length of the evaluations (default --segment-len)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    eval_seg = args.eval_segment_len or args.segment_len
    last_step = args.steps if args.max_steps is None else min(args.steps, args.max_steps)
    cache = args.cache_dir or os.path.join(
        os.path.dirname(os.path.abspath(args.out_dir)), ".train_teacher_cache")

    train_ids = cached_ids(args.tokenizer, os.path.join(args.data_dir, "train.txt"), cache)
    valid_ids = cached_ids(args.tokenizer, os.path.join(args.data_dir, "valid.txt"), cache)
    vocab = vocab_size_of(args.tokenizer)
    valid_bytes = decoded_bytes(args.tokenizer, valid_ids[1:])
    cfg = make_config(args, vocab)
    model = ref.TransfoXLReference(cfg)
    init_weights(model, args.seed, args.init_std)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train_teacher: {len(train_ids)} train tokens, {len(valid_ids)} valid tokens "
          f"({valid_bytes} bytes), vocab {vocab}, {n_params} parameters, "
          f"{args.threads} threads", flush=True)

    groups, lm_params, comp_params = param_groups(model, args.weight_decay)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    streams = Streams(train_ids, args.batch_size, args.segment_len)
    mems = None
    history = []
    evals = []
    tokens = 0
    win_loss, win_recon, win_n, win_t = 0.0, 0.0, 0, time.time()
    first_loss = last_loss = None

    def run_eval(step: int, limit: int) -> dict:
        ids = valid_ids if limit <= 0 else valid_ids[:limit]
        t0 = time.time()
        res = evaluate(model, ids, eval_seg)
        nbytes = valid_bytes if len(ids) == len(valid_ids) else decoded_bytes(
            args.tokenizer, ids[1:])
        res.update(step=step, bytes=nbytes, bits_per_byte=res["total_bits"] / nbytes,
                   seconds=round(time.time() - t0, 2))
        print(f"valid step {step}: bits/token {res['bits_per_token']:.4f}  bits/byte "
              f"{res['bits_per_byte']:.4f}  ({res['scored_tokens']} tokens, "
              f"{res['seconds']:.1f}s)", flush=True)
        return res

    for step in range(last_step):
        x, y, fresh = streams.next()
        if fresh:
            mems = model.init_mems(args.batch_size)
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        logits, mems, recon = train_forward(model, x, mems)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
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
        win_loss += lv
        win_recon += float(recon)
        win_n += 1
        if (step + 1) % args.log_every == 0 or step + 1 == last_step:
            now = time.time()
            rate = win_n * x.numel() / max(1e-9, now - win_t)
            entry = {"step": step + 1, "tokens": tokens, "loss": win_loss / win_n,
                     "recon": win_recon / win_n, "lr": lr, "tokens_per_s": rate,
                     "elapsed": now - t_start, "epoch": streams.epoch}
            history.append(entry)
            print(f"step {step + 1}/{last_step}  tokens {tokens}  loss {entry['loss']:.4f}  "
                  f"recon {entry['recon']:.3e}  lr {lr:.2e}  {rate:.0f} tok/s  "
                  f"elapsed {entry['elapsed']:.0f}s  epoch {streams.epoch}", flush=True)
            win_loss, win_recon, win_n, win_t = 0.0, 0.0, 0, time.time()
        if args.eval_every > 0 and (step + 1) % args.eval_every == 0 and step + 1 < last_step:
            evals.append(run_eval(step + 1, args.eval_tokens))
            win_t = time.time()

    train_seconds = time.time() - t_start
    dtype = ref.DTYPES[args.dtype]
    save_checkpoint(model, args.out_dir, args.tokenizer, dtype)
    # The final evaluation is of the stored (rounded) weights, computed in float32: what
    # `mnemo score --segment-len EVAL_SEG` on valid.txt reproduces.
    stored = rounded_copy(model, dtype)
    t0 = time.time()
    final_ids = valid_ids if args.final_eval_tokens <= 0 else valid_ids[:args.final_eval_tokens]
    final_bytes = valid_bytes if len(final_ids) == len(valid_ids) else decoded_bytes(
        args.tokenizer, final_ids[1:])
    final = evaluate(stored, final_ids, eval_seg)
    final.update(bytes=final_bytes, bits_per_byte=final["total_bits"] / final_bytes,
                 segment_len=eval_seg, seconds=round(time.time() - t0, 2))
    print(f"final valid ({args.dtype} weights): bits/token {final['bits_per_token']:.4f}  "
          f"bits/byte {final['bits_per_byte']:.4f}  ({final['scored_tokens']} tokens)",
          flush=True)
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
        "train_tokens_available": int(len(train_ids)),
        "steps": last_step,
        "tokens_seen": tokens,
        "first_train_loss": first_loss,
        "final_train_loss": last_loss,
        "final_train_loss_window": history[-1]["loss"] if history else None,
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
