"""Independent PyTorch reference ("oracle") for mnemo's Transformer-XL.

Written from Dai et al. 2019 and MODEL-SPEC.md section 1; it shares no code
with the C++ engine and does not use Hugging Face. Parameter names equal the
tensor names of engine/CHECKPOINT-FORMAT.md, so ``state_dict()`` can be saved
as, or loaded from, ``model.safetensors`` directly.

Deliberate choices (they make this an oracle, not a fast implementation):

* the positional term is computed by direct indexing with the distance
  ``delta = (M + i) - j`` (no pad/reshape "rel-shift" trick);
* masked scores are ``-inf`` and the softmax runs in the module dtype, so
  ``model.double()`` gives a float64 oracle;
* memory holds layer *inputs* (hidden-state form), updated to the last
  ``mem_len`` rows of ``cat(mem, X)`` after every call.

Library use::

    model = random_checkpoint(config, "ckpt_dir", seed=1)
    model = load_checkpoint("ckpt_dir").double()
    logits = stream_logits(model, ids, segment_len=16)          # [N, V]

Command line::

    python txl_reference.py make-checkpoint --config-json '{...}' \
        --out DIR --seed S
    python txl_reference.py logits --model DIR --ids FILE --segment-len N \
        [--decode] --output OUT

``logits`` mirrors ``mnemo logits``: float64 internally, raw little-endian
float32 ``[num_tokens, vocab_size]`` written to OUT.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

#: field name -> accepted Python type(s), as in CHECKPOINT-FORMAT.md.
_REQUIRED_FIELDS = {
    "architecture": str,
    "vocab_size": int,
    "d_model": int,
    "n_layer": int,
    "n_head": int,
    "d_head": int,
    "d_inner": int,
    "mem_len": int,
    "clamp_len": int,
    "same_length": bool,
    "pre_lnorm": bool,
    "untie_r": bool,
    "activation": str,
    "layer_norm_epsilon": (float, int),
    "memory_init": str,
    "tie_word_embeddings": bool,
    "torch_dtype": str,
}
_OPTIONAL_FIELDS = {"eos_token_id": int}

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """Return the ``torch_dtype`` config string of a storage dtype."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported storage dtype {dtype}")


def validate_config(config: dict) -> dict:
    """Check a config dict against the checkpoint format; return a copy.

    Unknown fields are rejected, like the engine's loader does.
    """
    cfg = dict(config)
    unknown = set(cfg) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"unknown config fields: {sorted(unknown)}")
    missing = set(_REQUIRED_FIELDS) - set(cfg)
    if missing:
        raise ValueError(f"missing config fields: {sorted(missing)}")
    for name, value in cfg.items():
        kind = _REQUIRED_FIELDS.get(name) or _OPTIONAL_FIELDS[name]
        # bool is a subclass of int; never accept it for numeric fields.
        bad_bool = isinstance(value, bool) and kind is not bool
        if bad_bool or not isinstance(value, kind):
            raise ValueError(f"config field {name!r} has bad type: {value!r}")

    def check(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"invalid config: {what}")

    check(cfg["architecture"] == "transfo_xl",
          "architecture must be transfo_xl")
    for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_head",
                 "d_inner"):
        check(cfg[name] > 0, f"{name} must be > 0")
    check(cfg["d_model"] % 2 == 0, "d_model must be even")
    check(cfg["mem_len"] >= 0, "mem_len must be >= 0")
    check(cfg["clamp_len"] >= 0, "clamp_len must be >= 0")
    check(cfg["activation"] in ("relu", "gelu"), "activation")
    check(cfg["layer_norm_epsilon"] > 0, "layer_norm_epsilon must be > 0")
    check(cfg["memory_init"] in ("zeros", "empty"), "memory_init")
    check(cfg["torch_dtype"] in DTYPES, "torch_dtype")
    cfg["layer_norm_epsilon"] = float(cfg["layer_norm_epsilon"])
    return cfg


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def sinusoid_table(distances: torch.Tensor, d_model: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Relative position embeddings ``R[p]`` for the given distances.

    ``R[p] = [sin(p f_0) .. sin(p f_{D/2-1}), cos(p f_0) .. cos(p f_{D/2-1})]``
    with ``f_i = 10000^(-2i/D)`` (all sines first, then all cosines).
    Evaluated in float64 and cast to ``dtype``.
    """
    exponent = torch.arange(0, d_model, 2, dtype=torch.float64) / d_model
    inv_freq = 1.0 / (10000.0 ** exponent)
    angles = distances.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


class RelMultiHeadAttention(nn.Module):
    """Transformer-XL relative multi-head attention (MODEL-SPEC 1.1, 1-9)."""

    def __init__(self, cfg: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.d_model, self.n_head, self.d_head = d_model, n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.clamp_len = cfg["clamp_len"]
        self.same_length = cfg["same_length"]
        self.mem_len = cfg["mem_len"]
        self.qkv = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.r = nn.Linear(d_model, n_head * d_head, bias=False)
        self.o = nn.Linear(n_head * d_head, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])
        if cfg["untie_r"]:
            self.r_w_bias = nn.Parameter(torch.zeros(n_head, d_head))
            self.r_r_bias = nn.Parameter(torch.zeros(n_head, d_head))

    def attention_mask(self, T: int, M: int, device=None) -> torch.Tensor:
        """Boolean ``[T, K]`` mask, True = forbidden (MODEL-SPEC 1.1, 6)."""
        K = M + T
        i = torch.arange(T, device=device)[:, None]
        j = torch.arange(K, device=device)[None, :]
        mask = j > M + i
        if self.same_length:
            overflow = K - self.mem_len
            shift = T - overflow if overflow > 0 else T
            mask = mask | (j <= i - shift)
        return mask

    def forward(self, x: torch.Tensor, mem: torch.Tensor,
                r_w_bias: torch.Tensor, r_r_bias: torch.Tensor
                ) -> torch.Tensor:
        """``x``: [B, T, D] new rows; ``mem``: [B, M, D]; returns [B, T, D]."""
        B, T, _ = x.shape
        M = mem.shape[1]
        K = M + T
        H, dh = self.n_head, self.d_head

        c = torch.cat([mem, x], dim=1)                           # [B, K, D]
        if self.pre_lnorm:
            c = self.ln(c)
        q, k, v = self.qkv(c).split(H * dh, dim=-1)
        q = q[:, M:].reshape(B, T, H, dh)
        k = k.reshape(B, K, H, dh)
        v = v.reshape(B, K, H, dh)

        # Distance of key j from query i, delta = (M + i) - j.  Entries with
        # delta < 0 are masked; clamp them to 0 only so the lookup is valid.
        i = torch.arange(T, device=x.device)[:, None]
        j = torch.arange(K, device=x.device)[None, :]
        delta = (M + i - j).clamp(min=0)
        if self.clamp_len > 0:
            delta = delta.clamp(max=self.clamp_len)
        max_dist = int(delta.max()) if delta.numel() else 0
        table = sinusoid_table(torch.arange(max_dist + 1), self.d_model,
                               x.dtype).to(x.device)
        rk = self.r(table).reshape(max_dist + 1, H, dh)[delta]  # [T,K,H,dh]

        content = torch.einsum("bthd,bkhd->bhtk", q + r_w_bias, k)
        position = torch.einsum("bthd,tkhd->bhtk", q + r_r_bias, rk)
        scores = (content + position) / math.sqrt(dh)

        mask = self.attention_mask(T, M, x.device)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        # A row whose every key is masked produces zeros, not NaN (spec 0.2).
        probs = probs.masked_fill(mask.all(dim=-1, keepdim=True), 0.0)

        out = torch.einsum("bhtk,bkhd->bthd", probs, v).reshape(B, T, H * dh)
        out = self.o(out)
        if self.pre_lnorm:
            return x + out
        return self.ln(x + out)


class PositionwiseFF(nn.Module):
    """Position-wise feed-forward block with its residual and LayerNorm."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.pre_lnorm = cfg["pre_lnorm"]
        self.fc1 = nn.Linear(cfg["d_model"], cfg["d_inner"])
        self.fc2 = nn.Linear(cfg["d_inner"], cfg["d_model"])
        self.ln = nn.LayerNorm(cfg["d_model"], eps=cfg["layer_norm_epsilon"])
        # F.gelu defaults to the exact erf form.
        self.act = F.relu if cfg["activation"] == "relu" else F.gelu

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.pre_lnorm:
            return y + self.fc2(self.act(self.fc1(self.ln(y))))
        return self.ln(y + self.fc2(self.act(self.fc1(y))))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.attn = RelMultiHeadAttention(cfg)
        self.ff = PositionwiseFF(cfg)

    def forward(self, x, mem, r_w_bias, r_r_bias):
        return self.ff(self.attn(x, mem, r_w_bias, r_r_bias))


class LMHead(nn.Module):
    """Output projection; owns ``weight`` only when it is not tied."""

    def __init__(self, cfg: dict):
        super().__init__()
        if not cfg["tie_word_embeddings"]:
            self.weight = nn.Parameter(
                torch.zeros(cfg["vocab_size"], cfg["d_model"]))
        self.bias = nn.Parameter(torch.zeros(cfg["vocab_size"]))


class TransfoXLReference(nn.Module):
    """Transformer-XL LM with plain embedding and plain softmax head."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = validate_config(config)
        self.config = cfg
        n_head, d_head = cfg["n_head"], cfg["d_head"]
        self.word_emb = nn.Embedding(cfg["vocab_size"], cfg["d_model"])
        self.layers = nn.ModuleList(
            DecoderLayer(cfg) for _ in range(cfg["n_layer"]))
        if not cfg["untie_r"]:
            self.r_w_bias = nn.Parameter(torch.zeros(n_head, d_head))
            self.r_r_bias = nn.Parameter(torch.zeros(n_head, d_head))
        self.lm_head = LMHead(cfg)

    @property
    def mem_len(self) -> int:
        return self.config["mem_len"]

    def output_weight(self) -> torch.Tensor:
        if self.config["tie_word_embeddings"]:
            return self.word_emb.weight
        return self.lm_head.weight

    def init_mems(self, batch: int) -> List[torch.Tensor]:
        """First-call memory: ``mem_len`` zero rows or empty (memory_init)."""
        rows = self.mem_len if self.config["memory_init"] == "zeros" else 0
        ref = self.word_emb.weight
        return [ref.new_zeros(batch, rows, self.config["d_model"])
                for _ in self.layers]

    @torch.no_grad()
    def forward(self, ids: torch.Tensor,
                mems: Optional[Sequence[torch.Tensor]] = None,
                last_only: bool = False
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run one call of ``T`` new tokens.

        ``ids``: LongTensor [B, T]; ``mems``: per-layer [B, M, D] or None.
        Returns ``(logits [B, T, V], new_mems)`` where ``new_mems[l]`` is the
        last ``mem_len`` rows of ``cat(mems[l], input of layer l)``; with
        ``last_only`` the logits are those of the last position, [B, 1, V].
        """
        B, T = ids.shape
        if mems is None:
            mems = self.init_mems(B)
        if len(mems) != len(self.layers):
            raise ValueError("need one memory tensor per layer")

        x = self.word_emb(ids) * math.sqrt(self.config["d_model"])
        new_mems = []
        for n, layer in enumerate(self.layers):
            mem = mems[n].to(x.dtype)
            both = torch.cat([mem, x], dim=1)
            keep = min(self.mem_len, both.shape[1])
            new_mems.append(both[:, both.shape[1] - keep:].detach().clone())
            if self.config["untie_r"]:
                u, v = layer.attn.r_w_bias, layer.attn.r_r_bias
            else:
                u, v = self.r_w_bias, self.r_r_bias
            x = layer(x, mem, u, v)

        if last_only:
            x = x[:, -1:]
        logits = x @ self.output_weight().t() + self.lm_head.bias
        return logits, new_mems


# --------------------------------------------------------------------------
# Streaming (mirrors `mnemo logits`)
# --------------------------------------------------------------------------


def stream_logits(model: TransfoXLReference, ids: Sequence[int],
                  segment_len: int = 0, decode: bool = False
                  ) -> torch.Tensor:
    """Logits ``[len(ids), V]`` for one fresh session, memory carried.

    Segment mode feeds consecutive segments of ``segment_len`` tokens (the
    last may be shorter); ``decode`` feeds one token at a time.
    """
    step = 1 if decode else segment_len
    if step <= 0:
        raise ValueError("segment_len must be > 0 unless decode")
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    mems = None
    out = []
    for start in range(0, ids_t.numel(), step):
        logits, mems = model(ids_t[None, start:start + step], mems)
        out.append(logits[0])
    if not out:
        return model.word_emb.weight.new_zeros(0, model.config["vocab_size"])
    return torch.cat(out, dim=0)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def _init_weights(model: TransfoXLReference, gen: torch.Generator) -> None:
    """Seeded init that gives non-trivial attention patterns and logits."""

    def normal(p: torch.Tensor, mean: float, std: float) -> None:
        p.copy_(mean + std * torch.randn(p.shape, generator=gen,
                                         dtype=torch.float64))

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("ln.weight"):
                normal(p, 1.0, 0.1)
            elif leaf in ("r_w_bias", "r_r_bias"):
                normal(p, 0.0, 0.2)
            elif leaf == "bias":
                normal(p, 0.0, 0.05)
            elif name == "word_emb.weight":
                normal(p, 0.0, 0.15)
            else:  # linear weights: std 1/sqrt(fan_in) keeps scales O(1)
                normal(p, 0.0, 1.0 / math.sqrt(p.shape[1]))


def random_checkpoint(config: dict, directory, seed: int,
                      dtype: Optional[torch.dtype] = None
                      ) -> TransfoXLReference:
    """Write ``config.json`` + ``model.safetensors`` with random weights.

    ``dtype`` is the storage dtype; None takes ``config['torch_dtype']``
    (default float32). The config written has ``torch_dtype`` set to it.
    Returns the model (float32 module) holding exactly the stored values,
    i.e. already rounded to the storage dtype.
    """
    cfg = dict(config)
    if dtype is None:
        dtype = DTYPES[cfg.get("torch_dtype", "float32")]
    cfg["torch_dtype"] = dtype_name(dtype)
    cfg = validate_config(cfg)

    model = TransfoXLReference(cfg)
    gen = torch.Generator().manual_seed(seed)
    _init_weights(model, gen)

    tensors = {name: t.detach().to(dtype).contiguous()
               for name, t in model.state_dict().items()}
    with torch.no_grad():  # round the returned model to the stored values
        for name, p in model.named_parameters():
            p.copy_(tensors[name].to(p.dtype))

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    return model


def load_checkpoint(directory, dtype: torch.dtype = torch.float32
                    ) -> TransfoXLReference:
    """Load a checkpoint directory; the module is built in ``dtype``.

    Stored tensors must match the format exactly (names, shapes, dtype).
    """
    with open(os.path.join(directory, "config.json")) as f:
        cfg = validate_config(json.load(f))
    model = TransfoXLReference(cfg)
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    expected = model.state_dict()
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        raise ValueError(f"tensor names differ: missing {missing}, "
                         f"unexpected {unexpected}")
    stored = DTYPES[cfg["torch_dtype"]]
    for name, t in tensors.items():
        if t.dtype != stored:
            raise ValueError(f"{name}: dtype {t.dtype}, config says {stored}")
        if t.shape != expected[name].shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)}, expected "
                             f"{tuple(expected[name].shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()},
                          strict=True)
    return model.to(dtype).eval()


def read_ids(path) -> List[int]:
    """Whitespace-separated decimal token ids."""
    with open(path) as f:
        return [int(tok) for tok in f.read().split()]


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-checkpoint", help="write a random checkpoint")
    make.add_argument("--config-json", required=True,
                      help="config.json contents as a JSON string")
    make.add_argument("--out", required=True, help="output directory")
    make.add_argument("--seed", type=int, default=0)

    logits = sub.add_parser("logits", help="float64 oracle logits")
    logits.add_argument("--model", required=True)
    logits.add_argument("--ids", required=True)
    logits.add_argument("--segment-len", type=int, default=0)
    logits.add_argument("--decode", action="store_true")
    logits.add_argument("--output", required=True)

    args = parser.parse_args(argv)
    if args.command == "make-checkpoint":
        random_checkpoint(json.loads(args.config_json), args.out, args.seed)
        return 0

    model = load_checkpoint(args.model, dtype=torch.float64)
    result = stream_logits(model, read_ids(args.ids), args.segment_len,
                           args.decode)
    result.numpy().astype("<f4").tofile(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
