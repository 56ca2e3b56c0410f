#!/usr/bin/env python3
"""Convert a Hugging Face TransfoXLLMHeadModel checkpoint to a mnemo one.

The input is a directory as `save_pretrained` writes it (HF `config.json` plus
`pytorch_model.bin` or `model.safetensors`, possibly sharded); the output is a
directory in the layout of docs/checkpoint-format.md (`config.json` in our
schema plus `model.safetensors` with our tensor names).

Every `TransfoXLLMHeadModel` with `attn_type` 0 and no sampled softmax
converts, the published wt103 layout included: a plain embedding and softmax
(`cutoffs` empty, `div_val` 1, `d_embed` == `d_model`) becomes `word_emb` /
`lm_head`; anything else (cutoffs, div_val > 1, d_embed != d_model) becomes
our adaptive embedding and projected adaptive log-softmax (`adaptive.*`,
with `cutoffs` / `div_val` / `d_embed` in config.json), tied weights and
projections resolved as HF ties them on load. Anything else is rejected with
an error naming the offending config field.

Usage:
    convert_hf_transfo_xl.py HF_DIR OUT_DIR [--dtype float32|float16|bfloat16]
    convert_hf_transfo_xl.py --random-init '{"n_layer": 12, ...}' [--seed S]
        [--init-std STD] [--save-hf HF_DIR] [--dtype ...] OUT_DIR

Library use (tests, benchmarks):
    config, tensors = convert(hf_model_or_state_dict, hf_config, dtype=None)
    write_checkpoint(out_dir, config, tensors)
"""

import argparse
import collections
import math
import os
import pickle
import sys
import warnings

import torch

from mnemo_checkpoint import read_json, write_checkpoint
from tools.converter_cli import random_fields

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# HF tensors that carry nothing our format needs (the sinusoid frequencies are
# recomputed by the engine).
_IGNORED = ("transformer.pos_emb.inv_freq",)

# Per-layer name mapping: HF suffix after `transformer.layers.N.` -> ours
# after `layers.N.`.
_LAYER_MAP = {
    "dec_attn.qkv_net.weight": "attn.qkv.weight",
    "dec_attn.r_net.weight": "attn.r.weight",
    "dec_attn.o_net.weight": "attn.o.weight",
    "dec_attn.layer_norm.weight": "attn.ln.weight",
    "dec_attn.layer_norm.bias": "attn.ln.bias",
    "pos_ff.CoreNet.0.weight": "ff.fc1.weight",
    "pos_ff.CoreNet.0.bias": "ff.fc1.bias",
    "pos_ff.CoreNet.3.weight": "ff.fc2.weight",
    "pos_ff.CoreNet.3.bias": "ff.fc2.bias",
    "pos_ff.layer_norm.weight": "ff.ln.weight",
    "pos_ff.layer_norm.bias": "ff.ln.bias",
}


class ConversionError(ValueError):
    """The HF checkpoint cannot be expressed in the mnemo format."""


# --------------------------------------------------------------------------
# HF config handling


def _as_hf_config(hf_config):
    """Return a TransfoXLConfig for a config object, a dict or a JSON path."""
    from transformers import TransfoXLConfig

    if isinstance(hf_config, TransfoXLConfig):
        return hf_config
    if isinstance(hf_config, (str, os.PathLike)):
        hf_config = read_json(hf_config)
    if isinstance(hf_config, dict):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TransfoXLConfig.from_dict(dict(hf_config))
    raise TypeError(f"unsupported hf_config type {type(hf_config).__name__}")


def check_supported(cfg):
    """Raise ConversionError listing every HF config field we cannot hold."""
    problems = []
    cutoffs = list(cfg.cutoffs)
    if cutoffs != sorted(set(cutoffs)) or any(
            not 0 < c < cfg.vocab_size for c in cutoffs):
        problems.append(
            f"cutoffs={cutoffs}: must ascend strictly within (0, "
            f"vocab_size={cfg.vocab_size})")
    if cfg.div_val < 1 or any(
            cfg.d_embed // cfg.div_val ** i < 1
            for i in range(len(cutoffs) + 1)):
        problems.append(
            f"div_val={cfg.div_val}: leaves a vocabulary band of "
            f"d_embed={cfg.d_embed} no columns")
    if cfg.attn_type != 0:
        problems.append(
            f"attn_type={cfg.attn_type}: only attn_type=0 (relative "
            "positional attention) is supported")
    if cfg.sample_softmax is not None and cfg.sample_softmax > 0:
        problems.append(
            f"sample_softmax={cfg.sample_softmax}: sampled softmax is not "
            "supported")
    if cfg.d_model % 2:
        problems.append(f"d_model={cfg.d_model}: must be even")
    if cfg.mem_len < 0:
        problems.append(f"mem_len={cfg.mem_len}: must be >= 0")
    if problems:
        raise ConversionError(
            "cannot convert this Transformer-XL checkpoint to the mnemo "
            "format:\n  " + "\n  ".join(problems))


def is_adaptive(cfg):
    """Whether the checkpoint needs our adaptive embedding and softmax: any
    cutoffs, div_val > 1 or d_embed != d_model (HF then projects the
    embedding and the head)."""
    return (bool(list(cfg.cutoffs)) or cfg.div_val != 1
            or cfg.d_embed != cfg.d_model)


def _eos_token_id(cfg):
    eos = getattr(cfg, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise ConversionError(
                f"eos_token_id={eos}: only a single end-of-sequence id is "
                "supported")
        eos = eos[0]
    return None if eos is None else int(eos)


def our_config(cfg, dtype):
    """Build our config.json dict from a (supported) TransfoXLConfig."""
    config = {
        "architecture": "transfo_xl",
        "vocab_size": int(cfg.vocab_size),
        "d_model": int(cfg.d_model),
        "n_layer": int(cfg.n_layer),
        "n_head": int(cfg.n_head),
        "d_head": int(cfg.d_head),
        "d_inner": int(cfg.d_inner),
        "mem_len": int(cfg.mem_len),
        # HF clamps only when clamp_len > 0; our 0 means "no clamp".
        "clamp_len": max(0, int(cfg.clamp_len)),
        "same_length": bool(cfg.same_length),
        "pre_lnorm": bool(cfg.pre_lnorm),
        "untie_r": bool(cfg.untie_r),
        "activation": "relu",
        "layer_norm_epsilon": float(cfg.layer_norm_epsilon),
        # HF starts from mem_len zero rows (init_mems), not an empty memory.
        "memory_init": "zeros",
        "tie_word_embeddings": True,  # fixed up by convert()
        "torch_dtype": DTYPE_NAMES[dtype],
    }
    eos = _eos_token_id(cfg)
    if eos is not None:
        config["eos_token_id"] = eos
    return config


# --------------------------------------------------------------------------
# Conversion


def _state_dict_of(hf_model_or_state_dict):
    if isinstance(hf_model_or_state_dict, torch.nn.Module):
        return hf_model_or_state_dict.state_dict()
    return dict(hf_model_or_state_dict)


def _pick_dtype(tensors, dtype):
    if dtype is not None:
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ConversionError(
                    f"--dtype {dtype}: expected one of {sorted(DTYPES)}")
            dtype = DTYPES[dtype]
        if dtype not in DTYPE_NAMES:
            raise ConversionError(f"unsupported dtype {dtype}")
        return dtype
    found = {t.dtype for t in tensors}
    if len(found) != 1:
        names = sorted(str(d) for d in found)
        raise ConversionError(
            f"the checkpoint mixes dtypes {names}; pass --dtype to choose one")
    (dtype,) = found
    if dtype not in DTYPE_NAMES:
        raise ConversionError(
            f"weights are {dtype}; pass --dtype float32|float16|bfloat16")
    return dtype


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Convert an HF TransfoXLLMHeadModel (or its state dict) to our format.

    hf_config: TransfoXLConfig, dict or config.json path; may be omitted when
    a model is passed. dtype: None (keep the weights' dtype), a torch dtype or
    one of "float32", "float16", "bfloat16".
    Returns (config_dict, tensors_dict) with contiguous, unshared tensors.
    """
    if hf_config is None:
        if not isinstance(hf_model_or_state_dict, torch.nn.Module):
            raise TypeError("hf_config is required with a state dict")
        hf_config = hf_model_or_state_dict.config
    cfg = _as_hf_config(hf_config)
    check_supported(cfg)
    sd = _state_dict_of(hf_model_or_state_dict)

    used = set()
    L, H, dh = cfg.n_layer, cfg.n_head, cfg.d_head
    D, V, F = cfg.d_model, cfg.vocab_size, cfg.d_inner

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
    adaptive = is_adaptive(cfg)
    if adaptive:
        out.update(_adaptive_tensors(cfg, sd, take, used))
    else:
        emb = take("transformer.word_emb.emb_layers.0.weight", (V, D))
        out["word_emb.weight"] = emb
    layer_shapes = {
        "dec_attn.qkv_net.weight": (3 * H * dh, D),
        "dec_attn.r_net.weight": (H * dh, D),
        "dec_attn.o_net.weight": (D, H * dh),
        "dec_attn.layer_norm.weight": (D,),
        "dec_attn.layer_norm.bias": (D,),
        "pos_ff.CoreNet.0.weight": (F, D),
        "pos_ff.CoreNet.0.bias": (F,),
        "pos_ff.CoreNet.3.weight": (D, F),
        "pos_ff.CoreNet.3.bias": (D,),
        "pos_ff.layer_norm.weight": (D,),
        "pos_ff.layer_norm.bias": (D,),
    }
    for n in range(L):
        for hf_suffix, ours in _LAYER_MAP.items():
            out[f"layers.{n}.{ours}"] = take(
                f"transformer.layers.{n}.{hf_suffix}", layer_shapes[hf_suffix])

    for bias in ("r_w_bias", "r_r_bias"):
        if cfg.untie_r:
            for n in range(L):
                out[f"layers.{n}.attn.{bias}"] = take(
                    f"transformer.layers.{n}.dec_attn.{bias}", (H, dh))
        else:
            # One shared pair; HF also registers it under every layer.
            aliases = [f"transformer.layers.{n}.dec_attn.{bias}"
                       for n in range(L)]
            shared = f"transformer.{bias}"
            if shared not in sd:
                shared = next((a for a in aliases if a in sd), shared)
            value = take(shared, (H, dh))
            for a in aliases:
                if a in sd and a != shared:
                    if not torch.equal(sd[a], value):
                        raise ConversionError(
                            f"untie_r is false but {a} differs from {shared}")
                    used.add(a)
            out[bias] = value

    if adaptive:
        tied = bool(cfg.tie_word_embeddings)
    else:
        tied = _plain_head(cfg, sd, take, emb, out)

    used.update(k for k in _IGNORED if k in sd)
    extra = sorted(set(sd) - used)
    if extra:
        raise ConversionError(
            "unexpected tensors the mnemo format cannot hold: "
            + ", ".join(extra))

    dtype = _pick_dtype(list(out.values()), dtype)
    config = our_config(cfg, dtype)
    config["tie_word_embeddings"] = tied
    if adaptive:
        config["d_embed"] = int(cfg.d_embed)
        config["cutoffs"] = [int(c) for c in cfg.cutoffs]
        config["div_val"] = int(cfg.div_val)
    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone()
               for k, v in out.items()}
    return config, tensors


def _plain_head(cfg, sd, take, emb, out):
    """The plain softmax head: lm_head (unless tied) and its bias."""
    V, D = cfg.vocab_size, cfg.d_model
    out_w = sd.get("crit.out_layers.0.weight")
    if cfg.tie_word_embeddings:
        # HF ties on load, whatever the file holds.
        tied = True
    elif out_w is None:
        raise ConversionError(
            "missing tensor crit.out_layers.0.weight while "
            "tie_word_embeddings is false")
    else:
        tied = out_w.shape == emb.shape and torch.equal(out_w, emb)
    if out_w is not None:
        take("crit.out_layers.0.weight", (V, D))
    if not tied:
        out["lm_head.weight"] = out_w
    out["lm_head.bias"] = take("crit.out_layers.0.bias", (V,))
    return tied


def _adaptive_tensors(cfg, sd, take, used):
    """Our adaptive.* tensors (docs/checkpoint-format.md "Adaptive embedding
    and softmax") from HF's AdaptiveEmbedding and ProjectedAdaptiveLogSoftmax.

    HF ties on load whatever the file holds: the head's weights are the
    embedding tables when tie_word_embeddings, and head projection i is
    embedding projection i (0 with div_val 1) when tie_projs[i]. Our head
    projections are stored transposed, [E_i, D], so that the engine's
    x @ W^T product gives hidden @ proj as HF computes it.
    """
    V, D, E, div = cfg.vocab_size, cfg.d_model, cfg.d_embed, cfg.div_val
    cutoffs = [int(c) for c in cfg.cutoffs]
    ends = [0] + cutoffs + [V]
    widths = [E // div ** i for i in range(len(ends) - 1)]
    projected = div > 1 or E != D
    tie_projs = list(getattr(cfg, "tie_projs", []) or [])
    out = {}

    def replaced_on_load(name):
        # A tied tensor's own copy in the file (if any) is what HF replaces
        # on load: consumed, not used.
        if name in sd:
            used.add(name)

    tables = range(len(widths)) if div > 1 else [0]
    for i in tables:
        rows = ends[i + 1] - ends[i] if div > 1 else V
        w = widths[i]
        emb = take(f"transformer.word_emb.emb_layers.{i}.weight", (rows, w))
        out[f"adaptive.emb.{i}.weight"] = emb
        if projected:
            out[f"adaptive.emb.{i}.proj"] = take(
                f"transformer.word_emb.emb_projs.{i}", (D, w))
        if cfg.tie_word_embeddings:
            replaced_on_load(f"crit.out_layers.{i}.weight")
        else:
            out[f"adaptive.head.{i}.weight"] = take(
                f"crit.out_layers.{i}.weight", (rows, w))
        out[f"adaptive.head.{i}.bias"] = take(
            f"crit.out_layers.{i}.bias", (rows,))
    if projected:
        for i, w in enumerate(widths):
            name = f"crit.out_projs.{i}"
            if i < len(tie_projs) and tie_projs[i]:
                replaced_on_load(name)
                proj = out[f"adaptive.emb.{0 if div == 1 else i}.proj"]
            else:
                proj = take(name, (D, w))
            out[f"adaptive.head.{i}.proj"] = proj.t()
    if cutoffs:
        K = len(cutoffs)
        out["adaptive.head.cluster.weight"] = take("crit.cluster_weight", (K, E))
        out["adaptive.head.cluster.bias"] = take("crit.cluster_bias", (K,))
    return out



# --------------------------------------------------------------------------
# HF checkpoint directories


def load_hf_checkpoint(hf_dir):
    """Return (state_dict, hf_config_dict) from a save_pretrained directory."""
    cfg_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ConversionError(f"{cfg_path} not found")
    hf_config = read_json(cfg_path)

    def load_one(path):
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu")

    for index, single in (("model.safetensors.index.json",
                           "model.safetensors"),
                          ("pytorch_model.bin.index.json",
                           "pytorch_model.bin")):
        if os.path.isfile(os.path.join(hf_dir, single)):
            return load_one(os.path.join(hf_dir, single)), hf_config
        index_path = os.path.join(hf_dir, index)
        if os.path.isfile(index_path):
            shards = sorted(set(read_json(index_path)["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(load_one(os.path.join(hf_dir, shard)))
            return sd, hf_config
    raise ConversionError(
        f"{hf_dir}: no model.safetensors or pytorch_model.bin found")


# --------------------------------------------------------------------------
# Word vocabularies (TransfoXLTokenizer's vocab.pkl -> our vocab.words)

VOCAB_FILE = "vocab.words"


class _Inert:
    """Stands in for every class a vocab.pkl names but the vocabulary does
    not need (Moses tokenizers, compiled patterns, tries): built without
    running any of their code."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _VocabUnpickler(pickle.Unpickler):
    """Reads HF's vocab.pkl (a pickled TransfoXLTokenizer.__dict__) without
    executing anything from the file: only collections' containers are
    real, every other global is _Inert."""

    _REAL = {("collections", "OrderedDict"): collections.OrderedDict,
             ("collections", "Counter"): collections.Counter}

    def find_class(self, module, name):
        return self._REAL.get((module, name), _Inert)


def read_hf_vocabulary(hf_dir):
    """The symbols of a TransfoXLTokenizer directory's vocab.pkl, by id, or
    None when the directory has none. ConversionError when the tokenizer is
    one our word tokenizer cannot reproduce (lower_case, a delimiter other
    than whitespace) or the vocabulary cannot be a vocab.words."""
    path = os.path.join(hf_dir, "vocab.pkl")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            state = _VocabUnpickler(f).load()
    except Exception as e:  # a malformed pickle raises many kinds
        raise ConversionError(f"{path}: not a TransfoXLTokenizer vocab.pkl: {e}")
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: not a TransfoXLTokenizer vocab.pkl")
    if state.get("lower_case"):
        raise ConversionError(
            f"{path}: lower_case is true; mnemo's word tokenizer does not "
            "lower-case text")
    if state.get("delimiter") not in (None, " "):
        raise ConversionError(
            f"{path}: delimiter {state.get('delimiter')!r}; mnemo's word "
            "tokenizer splits at whitespace")
    symbols = state.get("idx2sym")
    if symbols is None and isinstance(state.get("sym2idx"), dict):
        by_id = sorted(state["sym2idx"].items(), key=lambda kv: kv[1])
        symbols = [sym for sym, _ in by_id]
    if not isinstance(symbols, list):
        raise ConversionError(f"{path}: holds no idx2sym list")
    check_vocabulary(symbols, path)
    return symbols


def check_vocabulary(symbols, where):
    """ConversionError unless `symbols` can be a vocab.words: non-empty
    strings without whitespace, each once."""
    seen = set()
    for i, sym in enumerate(symbols):
        if not isinstance(sym, str) or not sym or any(
                c in sym for c in " \t\n\r\v\f"):
            raise ConversionError(
                f"{where}: symbol {i} ({sym!r}) is not a non-empty word "
                "without whitespace")
        if sym in seen:
            raise ConversionError(f"{where}: symbol {i} ({sym!r}) repeats")
        seen.add(sym)


def write_vocabulary(out_dir, symbols):
    """Writes vocab.words: one symbol per line, its line its id (the text
    vocabulary format of the original Transformer-XL code)."""
    check_vocabulary(symbols, VOCAB_FILE)
    with open(os.path.join(out_dir, VOCAB_FILE), "w", encoding="utf-8",
              newline="\n") as f:
        f.write("".join(sym + "\n" for sym in symbols))


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF checkpoint directory (and its TransfoXLTokenizer
    vocab.pkl, when it has one); returns our config dict."""
    sd, hf_config = load_hf_checkpoint(hf_dir)
    config, tensors = convert(sd, hf_config, dtype=dtype)
    symbols = read_hf_vocabulary(hf_dir)
    if symbols is not None and len(symbols) > config["vocab_size"]:
        raise ConversionError(
            f"{hf_dir}/vocab.pkl has {len(symbols)} symbols but the model "
            f"only {config['vocab_size']} ids")
    write_checkpoint(out_dir, config, tensors)
    if symbols is not None:
        write_vocabulary(out_dir, symbols)
    return config


# --------------------------------------------------------------------------
# Random models (tests, benchmarks)


def reinit_parameters(model, seed, std=None, r_bias_std=0.5):
    """Re-initialise every parameter of an HF TransfoXL with a seeded normal.

    HF's own init leaves r_w_bias/r_r_bias and most weights tiny, which gives
    near-uniform outputs; this gives a model whose logits actually depend on
    every tensor. Weights/biases: N(0, std^2) with std defaulting to
    0.5/sqrt(d_model); LayerNorm weights N(1, std^2); r_w_bias/r_r_bias
    N(0, r_bias_std^2) (comparable to the query entries).
    """
    d_model = model.config.d_model
    if std is None:
        std = 0.5 / math.sqrt(d_model)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():  # shared params once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name.endswith(("r_w_bias", "r_r_bias")):
                value = noise * r_bias_std
            elif "layer_norm.weight" in name:
                value = 1.0 + noise * std
            else:
                value = noise * std
            p.copy_(value.to(p.dtype))
    return model


def random_hf_model(overrides, seed=0, std=None):
    """Create a seeded random HF TransfoXLLMHeadModel in eval mode.

    overrides: TransfoXLConfig fields. Unlike HF's (wt103) defaults, the
    defaults here give a plain embedding and softmax: cutoffs=[],
    div_val=1, d_embed=d_model.
    """
    from transformers import TransfoXLConfig, TransfoXLLMHeadModel

    fields = dict(overrides)
    fields.setdefault("cutoffs", [])
    fields.setdefault("div_val", 1)
    fields.setdefault("d_embed", fields.get("d_model", 1024))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = TransfoXLConfig(**fields)
        torch.manual_seed(int(seed))
        model = TransfoXLLMHeadModel(cfg)
    reinit_parameters(model, seed, std)
    return model.eval()


# --------------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Convert a Hugging Face Transformer-XL checkpoint "
                    "(TransfoXLLMHeadModel) into a mnemo checkpoint.")
    ap.add_argument("paths", nargs="+", metavar="DIR",
                    help="HF_DIR OUT_DIR, or only OUT_DIR with --random-init")
    ap.add_argument("--dtype", choices=sorted(DTYPES),
                    help="cast the weights (default: keep their dtype)")
    ap.add_argument("--random-init", metavar="JSON",
                    help="create a random HF model from these "
                         "TransfoXLConfig fields instead of reading HF_DIR")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed for --random-init (default 0)")
    ap.add_argument("--init-std", type=float, default=None,
                    help="std of --random-init weights "
                         "(default 0.5/sqrt(d_model))")
    ap.add_argument("--save-hf", metavar="HF_DIR",
                    help="with --random-init: also save the HF model "
                         "(save_pretrained) here")
    args = ap.parse_args(argv)

    try:
        if args.random_init is not None:
            fields = random_fields(ap, "--random-init", args.random_init, args.paths)
            model = random_hf_model(fields, args.seed, args.init_std)
            config, tensors = convert(model, model.config, dtype=args.dtype)
            if args.save_hf:
                model.save_pretrained(args.save_hf)
            out_dir = args.paths[0]
            write_checkpoint(out_dir, config, tensors)
        else:
            if args.save_hf or args.init_std is not None:
                ap.error("--save-hf/--init-std need --random-init")
            if len(args.paths) != 2:
                ap.error("expected HF_DIR OUT_DIR")
            out_dir = args.paths[1]
            config = convert_dir(args.paths[0], out_dir, dtype=args.dtype)
    except ConversionError as e:
        print(f"convert_hf_transfo_xl: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir} ({config['n_layer']} layers, d_model "
          f"{config['d_model']}, vocab {config['vocab_size']}, "
          f"{config['torch_dtype']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
