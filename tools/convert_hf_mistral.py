#!/usr/bin/env python3
"""Convert a Hugging Face MistralForCausalLM to a mnemo checkpoint.

The output is a directory in the layout of docs/checkpoint-format.md
("Sliding-window decoders"): `config.json` in our schema (architecture
"mistral": the transfo_xl fields with mem_len 0, pre_lnorm true, memory_init
"empty", activation "silu", layer_norm_epsilon = rms_norm_eps, plus
`n_kv_head`, a `layers` list of sliding windows and, for a model with
full-attention layers, `max_positions`) and `model.safetensors` with our
tensor names:

    HF                                              mnemo
    model.embed_tokens.weight                       word_emb.weight
    model.layers.N.input_layernorm.weight           layers.N.attn.norm.weight
    cat(self_attn.q_proj, .k_proj, .v_proj)         layers.N.attn.qkv.weight
                                                      [(H + 2 H_kv) dh, D]
    model.layers.N.self_attn.o_proj.weight          layers.N.attn.o.weight
    model.layers.N.post_attention_layernorm.weight  layers.N.ff.norm.weight
    cat(mlp.gate_proj, mlp.up_proj)                 layers.N.ff.fc1.weight [2 F, D]
    model.layers.N.mlp.down_proj.weight             layers.N.ff.fc2.weight
    model.norm.weight                               final_norm.weight
    lm_head.weight (unless tied)                    lm_head.weight
    the rotary frequencies (float32)                rotary.inv_freq [dh / 2]

The RMSNorm weights and the frequencies are stored as float32 whatever --dtype.

Attention: every layer becomes {"attention": "sparse", "pattern": "window",
"window": W}, the W keys up to and including the query (Hugging Face masks
key j for query i when j <= i - sliding_window). With `sliding_window` null
(full causal attention) W is max_position_embeddings and config.json gets
"max_positions": max_position_embeddings: a session then refuses positions
beyond the model's maximum context (OUT_OF_RANGE) instead of silently
forgetting. A sliding-window model streams without limit at constant state.

Rotary frequencies: Hugging Face computes
`1 / rope_theta ** (arange(0, dh, 2).float() / dh)` in float32 and the angle
position * inv_freq as a float32 product; the converter stores those float32
frequencies, so the engine turns queries and keys by the same angles (the
formula evaluated elsewhere differs from torch's float32 pow in the last bit
for some pairs, enough to show at long positions).

Tokenizer: HF_DIR/tokenizer.model (sentencepiece) is copied. The engine
encodes text without the BOS id Hugging Face's Llama tokenizer prepends;
clients that want it send ids.

Refused (ConversionError naming the field): a model_type other than
"mistral", hidden_act other than "silu", rope_scaling, head_dim odd,
num_attention_heads not a multiple of num_key_value_heads.
"""

import argparse
import math
import os
import sys
import warnings

import torch

from mnemo_checkpoint import write_checkpoint
from tools.convert_hf_transfo_xl import load_hf_checkpoint
from tools.converter_cli import random_fields

DTYPES = {"float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class ConversionError(ValueError):
    """The HF checkpoint cannot be expressed in the mnemo format."""


def _as_hf_config(hf_config):
    if isinstance(hf_config, dict):
        return dict(hf_config)
    return hf_config.to_dict()


def head_dim_of(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def check_layout(cfg):
    """What every decoder of this family must have: heads that group, an even head width, no
    rope_scaling."""
    if cfg.get("rope_scaling") is not None:
        raise ConversionError("rope_scaling is not supported")
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    if heads % kv_heads != 0:
        raise ConversionError(
            f"num_attention_heads {heads} is not a multiple of "
            f"num_key_value_heads {kv_heads}")
    if head_dim_of(cfg) % 2 != 0:
        raise ConversionError(f"head_dim {head_dim_of(cfg)} must be even")


def check_supported(cfg):
    if cfg.get("model_type", "mistral") != "mistral":
        raise ConversionError(
            f"model_type {cfg.get('model_type')!r}: only \"mistral\" is supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(
            f"hidden_act {cfg.get('hidden_act')!r}: only \"silu\" is supported")
    check_layout(cfg)
    window = cfg.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ConversionError(f"sliding_window {window!r} must be a positive integer")


def inv_freq(cfg):
    """The rotary frequencies exactly as Hugging Face computes them (float32)."""
    dim = head_dim_of(cfg)
    base = float(cfg.get("rope_theta", 10000.0))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def decoder_config(cfg, dtype, architecture, activation, windows, tied_default):
    """config.json of a decoder of this family: the fields every architecture shares, one
    sliding-window layer per entry of `windows`."""
    config = {
        "architecture": architecture,
        "vocab_size": cfg["vocab_size"],
        "d_model": cfg["hidden_size"],
        "n_layer": cfg["num_hidden_layers"],
        "n_head": cfg["num_attention_heads"],
        "n_kv_head": cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        "d_head": head_dim_of(cfg),
        "d_inner": cfg["intermediate_size"],
        "mem_len": 0,
        "clamp_len": 0,
        "same_length": False,
        "pre_lnorm": True,
        "untie_r": True,
        "activation": activation,
        "layer_norm_epsilon": cfg.get("rms_norm_eps", 1e-6),
        "memory_init": "empty",
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", tied_default)),
        "torch_dtype": DTYPE_NAMES[dtype],
        "layers": [{"attention": "sparse", "pattern": "window", "window": w} for w in windows],
    }
    eos = cfg.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is not None and 0 <= eos < cfg["vocab_size"]:
        config["eos_token_id"] = eos
    return config


def our_config(cfg, dtype):
    window = cfg.get("sliding_window")
    max_pos = cfg.get("max_position_embeddings", 4096 * 32)
    windows = [window if window is not None else max_pos] * cfg["num_hidden_layers"]
    config = decoder_config(cfg, dtype, "mistral", "silu", windows, tied_default=False)
    if window is None:
        config["max_positions"] = max_pos
    return config


# Mistral's norms: (our name, Hugging Face's) per layer.
MISTRAL_NORMS = (("attn.norm.weight", "input_layernorm.weight"),
                 ("ff.norm.weight", "post_attention_layernorm.weight"))


def convert_decoder(hf_model_or_state_dict, hf_config, dtype, check, config_of, norms,
                    norm_value):
    """Return (our config dict, {name: tensor}) for a decoder of this family (module, or state
    dict with its config): `check(cfg)` refuses what the format cannot express,
    `config_of(cfg, dtype)` writes config.json, `norms` pairs each layer's norm names (ours,
    Hugging Face's), and `norm_value(w)` is the float32 factor a norm weight stands for."""
    if isinstance(hf_model_or_state_dict, torch.nn.Module):
        sd = hf_model_or_state_dict.state_dict()
        hf_config = hf_config or hf_model_or_state_dict.config
    else:
        sd = dict(hf_model_or_state_dict)
    if hf_config is None:
        raise ConversionError("a state dict needs its HF config")
    cfg = _as_hf_config(hf_config)
    check(cfg)
    if dtype is None:
        dtype = sd["model.embed_tokens.weight"].dtype
    elif isinstance(dtype, str):
        dtype = DTYPES[dtype]
    if dtype not in DTYPE_NAMES:
        raise ConversionError(f"weights are {dtype}; pass --dtype float32|float16|bfloat16")
    config = config_of(cfg, dtype)
    used = set()

    def take(name):
        if name not in sd:
            raise ConversionError(f"missing tensor {name}")
        used.add(name)
        return sd[name]

    def weight(name):
        return take(name).to(dtype).contiguous()

    def norm(name):  # RMSNorm weights are float32 in every checkpoint of this family
        return norm_value(take(name).float()).contiguous()

    out = {"word_emb.weight": weight("model.embed_tokens.weight")}
    for n in range(cfg["num_hidden_layers"]):
        p, q = f"model.layers.{n}.", f"layers.{n}."
        for ours, theirs in norms:
            out[q + ours] = norm(p + theirs)
        out[q + "attn.qkv.weight"] = torch.cat(
            [weight(p + f"self_attn.{x}_proj.weight") for x in "qkv"]).contiguous()
        out[q + "attn.o.weight"] = weight(p + "self_attn.o_proj.weight")
        out[q + "ff.fc1.weight"] = torch.cat(
            [weight(p + "mlp.gate_proj.weight"), weight(p + "mlp.up_proj.weight")]).contiguous()
        out[q + "ff.fc2.weight"] = weight(p + "mlp.down_proj.weight")
    out["final_norm.weight"] = norm("model.norm.weight")
    if config["tie_word_embeddings"]:
        used.add("lm_head.weight")  # (a tied model's state dict may list it)
    else:
        out["lm_head.weight"] = weight("lm_head.weight")
    out["rotary.inv_freq"] = inv_freq(cfg).contiguous()
    extra = sorted(k for k in sd if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if extra:
        raise ConversionError(f"unexpected tensors: {', '.join(extra[:8])}")
    return config, out


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Return (our config dict, {name: tensor}) for a MistralForCausalLM
    (module or state dict with its config)."""
    return convert_decoder(hf_model_or_state_dict, hf_config, dtype, check_supported,
                           our_config, MISTRAL_NORMS, lambda w: w)


def convert_dir_with(convert_fn, hf_dir, out_dir, dtype=None, tokenizer="tokenizer.model"):
    """Convert an HF checkpoint directory with `convert_fn` (and copy its sentencepiece model,
    named `tokenizer` there, as tokenizer.model, when it has one); returns our config dict."""
    sd, hf_config = load_hf_checkpoint(hf_dir)
    config, tensors = convert_fn(sd, hf_config, dtype=dtype)
    tokenizer = os.path.join(hf_dir, tokenizer)
    write_checkpoint(out_dir, config, tensors,
                     tokenizer=tokenizer if os.path.isfile(tokenizer) else None)
    return config


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF MistralForCausalLM directory; returns our config dict."""
    return convert_dir_with(convert, hf_dir, out_dir, dtype)


def random_model(config_cls, model_cls, overrides, seed=0, std=None):
    """A seeded random Hugging Face decoder in eval mode (eager attention), by
    randomize_weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = config_cls(**overrides)
        cfg._attn_implementation = "eager"
        torch.manual_seed(int(seed))
        model = model_cls(cfg)
    return randomize_weights(model, cfg.hidden_size, seed, std)


def randomize_weights(model, hidden_size, seed=0, std=None, is_norm=lambda name: "norm" in name):
    """`model` in eval mode with seeded random weights: N(0, std^2) (default
    0.5/sqrt(hidden_size)), norm weights (is_norm(parameter name)) N(1, std^2), so the outputs
    depend on every tensor."""
    if std is None:
        std = 0.5 / math.sqrt(hidden_size)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
            p.copy_((1.0 + noise if is_norm(name) else noise).to(p.dtype))
    return model.eval()


def random_hf_model(overrides, seed=0, std=None):
    """A seeded random MistralForCausalLM (random_model)."""
    from transformers import MistralConfig, MistralForCausalLM

    return random_model(MistralConfig, MistralForCausalLM, overrides, seed, std)


def decoder_summary(config):
    """What the command line prints about a converted decoder."""
    windows = sorted({layer["window"] for layer in config["layers"]})
    return (f"{config['n_layer']} layers, d_model {config['d_model']}, "
            f"{config['n_head']}/{config['n_kv_head']} heads, "
            f"window {'/'.join(map(str, windows))}, {config['torch_dtype']}")


def main(argv=None, name="convert_hf_mistral", what="Mistral checkpoint (MistralForCausalLM)",
         converter=None, summary=decoder_summary):
    """The command line of a Hugging Face converter; `converter` is its module (this one by
    default): convert, convert_dir, random_hf_model and ConversionError; `summary` says what
    was written."""
    converter = converter or sys.modules[__name__]
    ap = argparse.ArgumentParser(
        description=f"Convert a Hugging Face {what} into a mnemo checkpoint.")
    ap.add_argument("paths", nargs="+", metavar="DIR",
                    help="HF_DIR OUT_DIR, or only OUT_DIR with --random-init")
    ap.add_argument("--dtype", choices=sorted(DTYPES),
                    help="cast the weights (default: keep their dtype)")
    ap.add_argument("--random-init", metavar="JSON",
                    help="create a random HF model from these config fields "
                         "instead of reading HF_DIR")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed for --random-init (default 0)")
    ap.add_argument("--save-hf", metavar="HF_DIR",
                    help="with --random-init: also save the HF model here")
    args = ap.parse_args(argv)
    try:
        if args.random_init is not None:
            fields = random_fields(ap, "--random-init", args.random_init, args.paths)
            model = converter.random_hf_model(fields, args.seed)
            config, tensors = converter.convert(model, dtype=args.dtype)
            if args.save_hf:
                model.save_pretrained(args.save_hf)
            out_dir = args.paths[0]
            write_checkpoint(out_dir, config, tensors)
        else:
            if args.save_hf:
                ap.error("--save-hf needs --random-init")
            if len(args.paths) != 2:
                ap.error("expected HF_DIR OUT_DIR")
            out_dir = args.paths[1]
            config = converter.convert_dir(args.paths[0], out_dir, dtype=args.dtype)
    except converter.ConversionError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir} ({summary(config)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
