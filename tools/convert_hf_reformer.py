#!/usr/bin/env python3
"""Convert a Hugging Face ReformerModelWithLMHead to a mnemo checkpoint.

The output is a directory in the layout of docs/checkpoint-format.md
("Architecture `reformer`"): `config.json` in our schema (architecture
"reformer", the transfo_xl fields with mem_len 0, pre_lnorm true, memory_init
"empty", tie_word_embeddings false, plus `axial_pos_shape`,
`axial_pos_embds_dim` and a `layers` list) and `model.safetensors` (float32)
with our tensor names:

    HF                                                  mnemo
    reformer.embeddings.word_embeddings.weight          word_emb.weight
    reformer.embeddings.position_embeddings.weights.i   pos_emb.weights.i
    reformer.encoder.layers.N.attention.layer_norm.*    layers.N.attn.ln.*
      LSH:   cat(self_attention.query_key, .value)      layers.N.attn.qkv.weight [2 H dh, D]
             rotations HF draws with hash_seed          layers.N.attn.rotations [H, dh, R, nb/2]
      local: cat(self_attention.query, .key, .value)    layers.N.attn.qkv.weight [3 H dh, D]
    ...attention.output.dense.weight                    layers.N.attn.o.weight
    ...feed_forward.dense.dense.*                       layers.N.ff.fc1.*
    ...feed_forward.output.dense.*                      layers.N.ff.fc2.*
    ...feed_forward.layer_norm.*                        layers.N.ff.ln.*
    reformer.encoder.layer_norm.*                       final_ln.*
    lm_head.decoder.weight / .bias                      lm_head.weight / .bias

Layers: an "lsh" layer becomes {"attention": "lsh", "sort": "call", n_hashes,
n_buckets (an integer, or HF's list of factors), chunk_len =
lsh_attn_chunk_length, history = min(max(4096, n0*n1), 1048576) or
--lsh-history} (Hugging Face's per-call sort); a "local" layer with chunk c
and n chunks before becomes {"attention": "sparse", "pattern": "bigbird",
"block": c, "window_blocks": n + 1, "random_blocks": 0, "span": (n+1)*c - 1}.

Rotations: Hugging Face draws the LSH rotations at every call; with
`hash_seed` set it calls `torch.manual_seed(hash_seed)` right before
`torch.randn((H, dh, num_hashes, rotation_size // 2), dtype=float32)`
(rotation_size: num_buckets, or the sum of its factors), so every layer and
every call hashes with that same tensor. The converter stores it (drawn in
float32, the dtype of a float32 model). Without `hash_seed` (both published
models, google/reformer-crime-and-punishment and google/reformer-enwik8)
Hugging Face hashes with fresh random rotations at every call, which nothing
can reproduce; the converter then draws them with --hash-seed S (default 0),
and Hugging Face given hash_seed=S computes what the checkpoint does.

Tokenizer (--tokenizer, default auto): HF_DIR/spiece.model (ReformerTokenizer,
crime-and-punishment) is copied to tokenizer.model; a model of 258 ids with
no spiece.model (enwik8: byte b is id b + 2, and HF ships no tokenizer) gets
"tokenizer": "bytes" in config.json, the engine's byte tokenizer; otherwise
the checkpoint takes ids only.

Parity: the converted model reproduces HF's `model(input_ids).logits` when
the whole sequence is one `mnemo logits` call (the "sort": "call" LSH layers
sort per call, as HF does) of N <= n0*n1 tokens with N <= every chunk length
or N a multiple of lcm(chunk lengths) (HF pads other lengths, which moves
its LSH chunks), and, with local layers, N <= local_attn_chunk_length or
N > local_num_chunks_before * local_attn_chunk_length (with fewer chunks
HF's cyclic look-back counts some keys twice). HF float32 also rounds the
output of a position that sees only itself in every LSH round (n_hashes >= 2)
by up to ~0.5%; the engine, like HF in float64, returns v_p there.
See tests/reference/test_hf_reformer_parity.py.

Refused (ConversionError naming the field): is_decoder false, num_buckets None
(HF picks it from its first call's length), odd or more than 65536 buckets
(or 8 factors), lsh_num_chunks_before != 1, lsh_num_chunks_after != 0,
local_num_chunks_after != 0, axial_pos_embds false, tie_word_embeddings
true, hidden_act other than relu/gelu, attention layer types other than
lsh/local, axial_pos_shape of other than two factors, a --hash-seed other
than the config's hash_seed.

Usage:
    convert_hf_reformer.py HF_DIR OUT_DIR [--hash-seed S]
        [--tokenizer auto|sentencepiece|bytes|none] [--lsh-history N]
    convert_hf_reformer.py --random-config [JSON] [--seed S] [--save-hf HF_DIR]
        OUT_DIR
    convert_hf_reformer.py OUT_DIR --random-config     (default config)

`--random-config` builds a small random ReformerModelWithLMHead instead of
reading HF_DIR: JSON (optional) holds ReformerConfig overrides on top of
RANDOM_DEFAULTS below (is_decoder, hash_seed, integer num_buckets, ...); the
weights are re-initialised from a normal seeded with --seed (default 0), so
the same seed always gives the same model. --save-hf also writes the HF model
(`save_pretrained`), e.g. to compare with Hugging Face later.

Library use (tests):
    config = convert(model, out_dir)            # in-memory HF model
    config, tensors = convert_tensors(model)    # without writing
    config = convert_dir(hf_dir, out_dir)
    model = random_hf_model(overrides, seed)
"""

import argparse
import math
import os
import shutil
import sys
import warnings

import torch

from mnemo_checkpoint import read_json, write_checkpoint
from tools.converter_cli import random_fields

HISTORY_MIN = 4096
HISTORY_MAX = 1048576
MAX_BUCKETS = 65536
MAX_BUCKET_FACTORS = 8
# The rotations of a model whose config has no hash_seed (both published
# Reformers): Hugging Face then draws new ones at every call; the converter
# fixes them with this seed unless --hash-seed names another.
DEFAULT_HASH_SEED = 0
# The byte vocabulary of the enwik8 layout: byte b is id b + 2.
BYTE_VOCAB_SIZE = 258

# A small model for --random-config (and tests): every field the converter
# needs is set to something it accepts.
RANDOM_DEFAULTS = dict(
    is_decoder=True,
    vocab_size=40,
    hidden_size=32,
    num_attention_heads=2,
    attention_head_size=16,
    feed_forward_size=64,
    num_hidden_layers=4,
    attn_layers=["local", "lsh", "local", "lsh"],
    num_hashes=2,
    num_buckets=4,
    hash_seed=7,
    lsh_attn_chunk_length=8,
    local_attn_chunk_length=4,
    lsh_num_chunks_before=1,
    lsh_num_chunks_after=0,
    local_num_chunks_before=1,
    local_num_chunks_after=0,
    axial_pos_embds=True,
    axial_pos_shape=[8, 16],
    axial_pos_embds_dim=[16, 16],
    max_position_embeddings=128,
    hidden_act="relu",
    hidden_dropout_prob=0.0,
    lsh_attention_probs_dropout_prob=0.0,
    local_attention_probs_dropout_prob=0.0,
    tie_word_embeddings=False,
    pad_token_id=0,
    eos_token_id=2,
)


class ConversionError(ValueError):
    """The HF model cannot be expressed in the mnemo format."""


# --------------------------------------------------------------------------
# HF config handling


def _as_hf_config(hf_config):
    from transformers import ReformerConfig

    if isinstance(hf_config, ReformerConfig):
        return hf_config
    if isinstance(hf_config, (str, os.PathLike)):
        hf_config = read_json(hf_config)
    if isinstance(hf_config, dict):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ReformerConfig.from_dict(dict(hf_config))
    raise TypeError(f"unsupported hf_config type {type(hf_config).__name__}")


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def check_supported(cfg):
    """Raise ConversionError listing every HF config field we cannot hold."""
    problems = []
    layers = list(cfg.attn_layers)
    unknown = sorted({t for t in layers if t not in ("lsh", "local")})
    if unknown or not layers:
        problems.append(
            f"attn_layers={layers}: only 'lsh' and 'local' layers convert")
    if len(layers) != cfg.num_hidden_layers:
        problems.append(
            f"attn_layers has {len(layers)} entries but num_hidden_layers="
            f"{cfg.num_hidden_layers}")
    has_lsh = "lsh" in layers
    has_local = "local" in layers
    if not cfg.is_decoder:
        problems.append(
            "is_decoder=False: only causal (is_decoder=True) models convert")
    if not cfg.axial_pos_embds:
        problems.append(
            "axial_pos_embds=False: only axial position embeddings convert")
    elif len(tuple(cfg.axial_pos_shape)) != 2 or \
            len(tuple(cfg.axial_pos_embds_dim)) != 2:
        problems.append(
            f"axial_pos_shape={list(cfg.axial_pos_shape)}, axial_pos_embds_dim="
            f"{list(cfg.axial_pos_embds_dim)}: exactly two axes are supported")
    elif sum(cfg.axial_pos_embds_dim) != cfg.hidden_size:
        problems.append(
            f"axial_pos_embds_dim={list(cfg.axial_pos_embds_dim)} does not "
            f"sum to hidden_size={cfg.hidden_size}")
    if cfg.tie_word_embeddings:
        problems.append(
            "tie_word_embeddings=True: the Reformer head reads 2*hidden_size "
            "features and cannot be tied; only tie_word_embeddings=False "
            "converts")
    if cfg.hidden_act not in ("relu", "gelu"):
        problems.append(
            f"hidden_act={cfg.hidden_act!r}: only 'relu' and 'gelu' convert")
    if cfg.hidden_size % 2:
        problems.append(f"hidden_size={cfg.hidden_size}: must be even")
    if has_lsh:
        nb = cfg.num_buckets
        if nb is None:
            problems.append(
                "num_buckets=None: Hugging Face picks the bucket count from "
                "the sequence length of its first call; set num_buckets (an "
                "integer or a list of factors)")
        elif _is_int(nb):
            if nb < 2 or nb % 2 or nb > MAX_BUCKETS:
                problems.append(
                    f"num_buckets={nb}: must be even, 2 ... {MAX_BUCKETS}")
        elif isinstance(nb, (list, tuple)):
            factors = list(nb)
            if not factors or len(factors) > MAX_BUCKET_FACTORS or not all(
                    _is_int(f) and f >= 2 and f % 2 == 0 for f in factors):
                problems.append(
                    f"num_buckets={factors}: a list must hold 1 ... "
                    f"{MAX_BUCKET_FACTORS} even integers >= 2")
            elif math.prod(factors) > MAX_BUCKETS:
                problems.append(
                    f"num_buckets={factors}: the factors multiply to "
                    f"{math.prod(factors)} buckets, more than {MAX_BUCKETS}")
        else:
            problems.append(
                f"num_buckets={nb!r}: must be an integer or a list of integers")
        if cfg.lsh_num_chunks_before != 1:
            problems.append(
                f"lsh_num_chunks_before={cfg.lsh_num_chunks_before}: only 1 "
                "(a chunk and the one before it) is supported")
        if cfg.lsh_num_chunks_after != 0:
            problems.append(
                f"lsh_num_chunks_after={cfg.lsh_num_chunks_after}: must be 0 "
                "(causal)")
        if not _is_int(cfg.lsh_attn_chunk_length) or \
                cfg.lsh_attn_chunk_length < 1:
            problems.append(
                f"lsh_attn_chunk_length={cfg.lsh_attn_chunk_length}: must be "
                "an int >= 1")
        if not _is_int(cfg.num_hashes) or not 1 <= cfg.num_hashes <= 64:
            problems.append(f"num_hashes={cfg.num_hashes}: must be 1 ... 64")
        if cfg.hash_seed is not None and (not _is_int(cfg.hash_seed)
                                          or cfg.hash_seed < 0):
            problems.append(
                f"hash_seed={cfg.hash_seed!r}: must be a non-negative integer")
    if has_local:
        if cfg.local_num_chunks_after != 0:
            problems.append(
                f"local_num_chunks_after={cfg.local_num_chunks_after}: must "
                "be 0 (causal)")
        if not _is_int(cfg.local_attn_chunk_length) or \
                cfg.local_attn_chunk_length < 1:
            problems.append(
                f"local_attn_chunk_length={cfg.local_attn_chunk_length}: must "
                "be an int >= 1")
        if not _is_int(cfg.local_num_chunks_before) or \
                cfg.local_num_chunks_before < 0:
            problems.append(
                f"local_num_chunks_before={cfg.local_num_chunks_before}: must "
                "be an int >= 0")
    if problems:
        raise ConversionError(
            "cannot convert this Reformer model to the mnemo format:\n  "
            + "\n  ".join(problems))


def _eos_token_id(cfg):
    eos = getattr(cfg, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise ConversionError(
                f"eos_token_id={eos}: only a single end-of-sequence id is "
                "supported")
        eos = eos[0]
    return None if eos is None else int(eos)


def lsh_history_of(cfg, history=None):
    """The LSH layers' `history`: positions kept for the keys of later
    calls. By default every position the axial embeddings allow (so one
    call over a whole document is Hugging Face's computation), at least
    HISTORY_MIN and at most HISTORY_MAX; `history` (--lsh-history) bounds
    a session's state instead."""
    if history is not None:
        if not _is_int(history) or not 2 <= history <= HISTORY_MAX:
            raise ConversionError(
                f"--lsh-history {history}: must be 2 ... {HISTORY_MAX}")
        return int(history)
    n0, n1 = (int(x) for x in cfg.axial_pos_shape)
    return min(max(HISTORY_MIN, n0 * n1), HISTORY_MAX)


def _buckets_entry(nb):
    """config.json's n_buckets: an integer, or the list of factors."""
    return int(nb) if _is_int(nb) else [int(f) for f in nb]


def rotation_columns(nb):
    """Rotation columns per round: nb / 2, or the sum of the factors' halves
    (Hugging Face's rotation_size // 2)."""
    return int(nb) // 2 if _is_int(nb) else sum(int(f) for f in nb) // 2


def layer_entries(cfg, history=None):
    """The `layers` list of our config.json."""
    entries = []
    for kind in cfg.attn_layers:
        if kind == "lsh":
            entries.append({
                "attention": "lsh",
                "sort": "call",
                "n_hashes": int(cfg.num_hashes),
                "n_buckets": _buckets_entry(cfg.num_buckets),
                "chunk_len": int(cfg.lsh_attn_chunk_length),
                "history": lsh_history_of(cfg, history),
            })
        else:
            c = int(cfg.local_attn_chunk_length)
            n = int(cfg.local_num_chunks_before)
            entries.append({
                "attention": "sparse",
                "pattern": "bigbird",
                "block": c,
                "window_blocks": n + 1,
                "random_blocks": 0,
                "span": (n + 1) * c - 1,
            })
    return entries


def our_config(cfg, history=None):
    """Build our config.json dict from a (supported) ReformerConfig."""
    config = {
        "architecture": "reformer",
        "vocab_size": int(cfg.vocab_size),
        "d_model": int(cfg.hidden_size),
        "n_layer": int(cfg.num_hidden_layers),
        "n_head": int(cfg.num_attention_heads),
        "d_head": int(cfg.attention_head_size),
        "d_inner": int(cfg.feed_forward_size),
        "mem_len": 0,
        "clamp_len": 0,
        "same_length": False,
        "pre_lnorm": True,
        "untie_r": True,
        "activation": cfg.hidden_act,
        "layer_norm_epsilon": float(cfg.layer_norm_eps),
        "memory_init": "empty",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    eos = _eos_token_id(cfg)
    if eos is not None:
        config["eos_token_id"] = eos
    config["layers"] = layer_entries(cfg, history)
    config["axial_pos_shape"] = [int(x) for x in cfg.axial_pos_shape]
    config["axial_pos_embds_dim"] = [int(x) for x in cfg.axial_pos_embds_dim]
    return config


def resolve_hash_seed(cfg, hash_seed=None):
    """The seed the rotations are drawn with: the config's hash_seed, else
    `hash_seed`, else DEFAULT_HASH_SEED. A different `hash_seed` than the
    config's is refused: the config fixes what Hugging Face computes."""
    if cfg.hash_seed is not None:
        if hash_seed is not None and int(hash_seed) != int(cfg.hash_seed):
            raise ConversionError(
                f"--hash-seed {hash_seed}: the config fixes hash_seed="
                f"{cfg.hash_seed}")
        return int(cfg.hash_seed)
    seed = DEFAULT_HASH_SEED if hash_seed is None else hash_seed
    if not _is_int(seed) or seed < 0:
        raise ConversionError(f"hash seed {seed!r}: must be an integer >= 0")
    return int(seed)


def hf_rotations(cfg, hash_seed=None):
    """The rotations HF's LSHSelfAttention._hash_vectors draws (float32)
    with hash_seed = resolve_hash_seed(cfg, hash_seed).

    HF: torch.manual_seed(hash_seed); torch.randn((H, dh, num_hashes,
    rotation_size // 2), dtype=vectors.dtype), rotation_size the bucket
    count or the sum of its factors. A fresh CPU generator seeded alike gives
    the same stream without touching the global RNG.
    """
    shape = (int(cfg.num_attention_heads), int(cfg.attention_head_size),
             int(cfg.num_hashes), rotation_columns(cfg.num_buckets))
    gen = torch.Generator().manual_seed(resolve_hash_seed(cfg, hash_seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


# --------------------------------------------------------------------------
# Conversion


# HF buffers that carry nothing our format needs (the mask constants).
_IGNORED_SUFFIXES = (
    "self_mask_value_float16", "self_mask_value_float32",
    "mask_value_float16", "mask_value_float32",
)


def convert_tensors(hf_model_or_state_dict, hf_config=None, hash_seed=None,
                    byte_tokenizer=False, lsh_history=None):
    """Convert an HF ReformerModelWithLMHead (or its state dict).

    hash_seed: the rotations' seed when the config has none (default
    DEFAULT_HASH_SEED). byte_tokenizer: mark the checkpoint as byte-level
    ("tokenizer": "bytes", the enwik8 layout). lsh_history: the LSH layers'
    history (default lsh_history_of(cfg)). Returns (config_dict,
    tensors_dict): float32, contiguous, unshared.
    """
    if hf_config is None:
        if not isinstance(hf_model_or_state_dict, torch.nn.Module):
            raise TypeError("hf_config is required with a state dict")
        hf_config = hf_model_or_state_dict.config
    cfg = _as_hf_config(hf_config)
    check_supported(cfg)
    if isinstance(hf_model_or_state_dict, torch.nn.Module):
        sd = hf_model_or_state_dict.state_dict()
    else:
        sd = dict(hf_model_or_state_dict)

    L, H, dh = cfg.num_hidden_layers, cfg.num_attention_heads, \
        cfg.attention_head_size
    D, V, F = cfg.hidden_size, cfg.vocab_size, cfg.feed_forward_size
    n0, n1 = cfg.axial_pos_shape
    e0, e1 = cfg.axial_pos_embds_dim
    used = set()

    def take(name, shape):
        if name not in sd:
            raise ConversionError(f"missing tensor {name}")
        t = sd[name]
        if tuple(t.shape) != tuple(shape):
            raise ConversionError(
                f"tensor {name} has shape {list(t.shape)}, expected "
                f"{list(shape)} from the config")
        used.add(name)
        return t

    out = {}
    out["word_emb.weight"] = take(
        "reformer.embeddings.word_embeddings.weight", (V, D))
    out["pos_emb.weights.0"] = take(
        "reformer.embeddings.position_embeddings.weights.0", (n0, 1, e0))
    out["pos_emb.weights.1"] = take(
        "reformer.embeddings.position_embeddings.weights.1", (1, n1, e1))

    rotations = hf_rotations(cfg, hash_seed) \
        if "lsh" in cfg.attn_layers else None
    for n, kind in enumerate(cfg.attn_layers):
        p = f"reformer.encoder.layers.{n}."
        q = f"layers.{n}."
        sa = p + "attention.self_attention."
        if kind == "lsh":
            out[q + "attn.qkv.weight"] = torch.cat([
                take(sa + "query_key.weight", (H * dh, D)),
                take(sa + "value.weight", (H * dh, D))])
            out[q + "attn.rotations"] = rotations
        else:
            out[q + "attn.qkv.weight"] = torch.cat([
                take(sa + "query.weight", (H * dh, D)),
                take(sa + "key.weight", (H * dh, D)),
                take(sa + "value.weight", (H * dh, D))])
        for name in _IGNORED_SUFFIXES:
            if sa + name in sd:
                used.add(sa + name)
        out[q + "attn.o.weight"] = take(
            p + "attention.output.dense.weight", (D, H * dh))
        out[q + "attn.ln.weight"] = take(p + "attention.layer_norm.weight",
                                         (D,))
        out[q + "attn.ln.bias"] = take(p + "attention.layer_norm.bias", (D,))
        out[q + "ff.fc1.weight"] = take(
            p + "feed_forward.dense.dense.weight", (F, D))
        out[q + "ff.fc1.bias"] = take(p + "feed_forward.dense.dense.bias",
                                      (F,))
        out[q + "ff.fc2.weight"] = take(
            p + "feed_forward.output.dense.weight", (D, F))
        out[q + "ff.fc2.bias"] = take(p + "feed_forward.output.dense.bias",
                                      (D,))
        out[q + "ff.ln.weight"] = take(p + "feed_forward.layer_norm.weight",
                                       (D,))
        out[q + "ff.ln.bias"] = take(p + "feed_forward.layer_norm.bias",
                                     (D,))
    out["final_ln.weight"] = take("reformer.encoder.layer_norm.weight",
                                  (2 * D,))
    out["final_ln.bias"] = take("reformer.encoder.layer_norm.bias", (2 * D,))
    out["lm_head.weight"] = take("lm_head.decoder.weight", (V, 2 * D))
    # HF registers the head bias twice (lm_head.bias is lm_head.decoder.bias).
    bias = sd.get("lm_head.decoder.bias", sd.get("lm_head.bias"))
    if bias is None:
        raise ConversionError("missing tensor lm_head.decoder.bias")
    if tuple(bias.shape) != (V,):
        raise ConversionError(
            f"tensor lm_head.decoder.bias has shape {list(bias.shape)}, "
            f"expected [{V}]")
    for alias in ("lm_head.decoder.bias", "lm_head.bias"):
        if alias in sd:
            if not torch.equal(sd[alias], bias):
                raise ConversionError(
                    "lm_head.bias and lm_head.decoder.bias differ")
            used.add(alias)
    out["lm_head.bias"] = bias

    extra = sorted(set(sd) - used)
    if extra:
        raise ConversionError(
            "unexpected tensors the mnemo format cannot hold: "
            + ", ".join(extra))

    config = our_config(cfg, lsh_history)
    if byte_tokenizer:
        if V < BYTE_VOCAB_SIZE:
            raise ConversionError(
                f"vocab_size={V}: a byte vocabulary needs {BYTE_VOCAB_SIZE} "
                "ids (byte b is id b + 2)")
        config["tokenizer"] = "bytes"
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
               for k, v in out.items()}
    return config, tensors



def convert(model, out_dir, hf_config=None, hash_seed=None,
            byte_tokenizer=False, lsh_history=None):
    """Convert an in-memory HF model (or state dict + hf_config) into
    out_dir; returns our config dict. Nothing is written on refusal."""
    config, tensors = convert_tensors(model, hf_config, hash_seed,
                                      byte_tokenizer, lsh_history)
    write_checkpoint(out_dir, config, tensors)
    return config


SPIECE_FILE = "spiece.model"  # ReformerTokenizer's sentencepiece model
TOKENIZERS = ("auto", "sentencepiece", "bytes", "none")


def choose_tokenizer(hf_dir, cfg, tokenizer="auto"):
    """Which tokenizer the converted checkpoint gets: "sentencepiece"
    (HF_DIR/spiece.model, copied to tokenizer.model), "bytes" (no file,
    "tokenizer": "bytes" in config.json) or "none" (ids only). "auto" takes
    spiece.model when the directory has one, else bytes for the enwik8
    layout's 258-id vocabulary, else none."""
    if tokenizer not in TOKENIZERS:
        raise ConversionError(
            f"tokenizer {tokenizer!r}: one of {', '.join(TOKENIZERS)}")
    spiece = os.path.join(hf_dir, SPIECE_FILE)
    if tokenizer == "auto":
        if os.path.isfile(spiece):
            return "sentencepiece"
        return "bytes" if cfg.vocab_size == BYTE_VOCAB_SIZE else "none"
    if tokenizer == "sentencepiece" and not os.path.isfile(spiece):
        raise ConversionError(f"{spiece} not found")
    return tokenizer


def convert_dir(hf_dir, out_dir, hash_seed=None, tokenizer="auto",
                lsh_history=None):
    """Convert a `save_pretrained` directory (with its ReformerTokenizer's
    spiece.model, when it has one); returns our config dict."""
    from transformers import ReformerConfig, ReformerModelWithLMHead

    cfg_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ConversionError(f"{cfg_path} not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = ReformerConfig.from_pretrained(hf_dir)
    # Refuse before loading: HF itself asserts on some of these.
    check_supported(cfg)
    resolve_hash_seed(cfg, hash_seed)
    lsh_history_of(cfg, lsh_history)
    kind = choose_tokenizer(hf_dir, cfg, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ReformerModelWithLMHead.from_pretrained(
            hf_dir, torch_dtype=torch.float32)
    config = convert(model.eval(), out_dir, hash_seed=hash_seed,
                     byte_tokenizer=kind == "bytes", lsh_history=lsh_history)
    if kind == "sentencepiece":
        shutil.copyfile(os.path.join(hf_dir, SPIECE_FILE),
                        os.path.join(out_dir, "tokenizer.model"))
    return config


# --------------------------------------------------------------------------
# Random models (tests, demos)


def reinit_parameters(model, seed, std=None):
    """Re-initialise every parameter with a seeded normal.

    HF's own init (std 0.02, axial embeddings ~1) gives nearly uniform
    outputs; here weights are N(0, std^2) with std 1/sqrt(hidden_size),
    LayerNorm weights N(1, 0.1^2), biases and position embeddings
    N(0, 0.1^2) / N(0, std^2).
    """
    d = model.config.hidden_size
    if std is None:
        std = 1.0 / math.sqrt(d)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "layer_norm.weight" in name:
                value = 1.0 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            else:
                value = std * noise
            p.copy_(value.to(p.dtype))
    return model


def random_hf_model(overrides=None, seed=0, std=None):
    """A seeded random ReformerModelWithLMHead (eval mode, float32)."""
    from transformers import ReformerConfig, ReformerModelWithLMHead

    fields = dict(RANDOM_DEFAULTS)
    fields.update(overrides or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = ReformerConfig(**fields)
        torch.manual_seed(int(seed))
        model = ReformerModelWithLMHead(cfg)
    reinit_parameters(model, seed, std)
    return model.float().eval()


# --------------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Convert a Hugging Face Reformer (ReformerModelWithLMHead)"
                    " into a mnemo checkpoint.")
    ap.add_argument("paths", nargs="+", metavar="DIR",
                    help="HF_DIR OUT_DIR, or only OUT_DIR with "
                         "--random-config")
    ap.add_argument("--random-config", nargs="?", const="{}", default=None,
                    metavar="JSON",
                    help="create a small random HF model (ReformerConfig "
                         "overrides as JSON, optional) instead of reading "
                         "HF_DIR")
    ap.add_argument("--seed", type=int, default=0,
                    help="weight seed for --random-config (default 0)")
    ap.add_argument("--save-hf", metavar="HF_DIR",
                    help="with --random-config: also save the HF model here")
    ap.add_argument("--hash-seed", type=int, default=None, metavar="S",
                    help="seed of the LSH rotations when the config has no "
                         "hash_seed (the published models; default "
                         f"{DEFAULT_HASH_SEED}): Hugging Face with "
                         "hash_seed=S computes what the converted model does")
    ap.add_argument("--lsh-history", type=int, default=None, metavar="N",
                    help="positions the LSH layers keep for later calls "
                         "(default: every position the axial embeddings "
                         "allow, at most 2^20): bounds a session's state, "
                         "(N - 1) * (2*H*d_h + H*R) * 4 bytes per LSH layer; "
                         "Hugging Face parity then holds for documents of "
                         "at most N tokens")
    ap.add_argument("--tokenizer", choices=TOKENIZERS, default="auto",
                    help="auto (default): HF_DIR/spiece.model when present, "
                         "else the byte vocabulary for a 258-id model, else "
                         "none")
    args = ap.parse_args(argv)

    try:
        if args.random_config is not None:
            fields = random_fields(ap, "--random-config", args.random_config, args.paths)
            base = {**RANDOM_DEFAULTS, **fields}
            check_supported(_as_hf_config(base))
            model = random_hf_model(fields, args.seed)
            hf_cfg = model.config
            out_dir = args.paths[0]
            if args.tokenizer == "sentencepiece":
                ap.error("--tokenizer sentencepiece needs HF_DIR")
            config = convert(
                model, out_dir, hash_seed=args.hash_seed,
                lsh_history=args.lsh_history,
                byte_tokenizer=args.tokenizer == "bytes" or (
                    args.tokenizer == "auto"
                    and model.config.vocab_size == BYTE_VOCAB_SIZE))
            if args.save_hf:
                model.save_pretrained(args.save_hf)
        else:
            if args.save_hf:
                ap.error("--save-hf needs --random-config")
            if len(args.paths) != 2:
                ap.error("expected HF_DIR OUT_DIR")
            out_dir = args.paths[1]
            config = convert_dir(args.paths[0], out_dir,
                                 hash_seed=args.hash_seed,
                                 tokenizer=args.tokenizer,
                                 lsh_history=args.lsh_history)
            hf_cfg = _as_hf_config(
                os.path.join(args.paths[0], "config.json"))
    except ConversionError as e:
        print(f"convert_hf_reformer: error: {e}", file=sys.stderr)
        return 1
    kinds = [e["attention"] for e in config["layers"]]
    print(f"wrote {out_dir} ({config['n_layer']} layers {kinds}, d_model "
          f"{config['d_model']}, vocab {config['vocab_size']}, float32)")
    if os.path.isfile(os.path.join(out_dir, "tokenizer.model")):
        print("tokenizer: tokenizer.model (the HF spiece.model)")
    elif config.get("tokenizer") == "bytes":
        print("tokenizer: bytes (byte b is id b + 2)")
    if "lsh" in kinds:
        seed = resolve_hash_seed(hf_cfg, args.hash_seed)
        if hf_cfg.hash_seed is None:
            print(f"LSH rotations drawn with seed {seed}: the config has no "
                  "hash_seed, so Hugging Face hashes with new random "
                  f"rotations at every call; with hash_seed={seed} it "
                  "computes what this checkpoint does")
    return 0


if __name__ == "__main__":
    sys.exit(main())
