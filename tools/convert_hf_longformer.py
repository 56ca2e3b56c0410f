#!/usr/bin/env python3
"""Convert a Hugging Face LongformerModel (or the encoder of LongformerForMaskedLM and the other
Longformer heads) to a mnemo encoder checkpoint.

Architecture "longformer" (docs/checkpoint-format.md "Encoders"):

    HF (prefix "longformer." dropped)                    mnemo
    embeddings.word_embeddings.weight                    embeddings.word.weight
    embeddings.position_embeddings.weight                embeddings.position.weight
    embeddings.token_type_embeddings.weight              embeddings.token_type.weight
    embeddings.LayerNorm.{weight,bias}                   embeddings.ln.{weight,bias}
    encoder.layer.N.attention.self.{query,key,value}     layers.N.attn.qkv       (rows q | k | v)
    encoder.layer.N.attention.self.{query,key,value}_global
                                                         layers.N.attn.global_qkv
    encoder.layer.N.attention.output.dense               layers.N.attn.o
    encoder.layer.N.attention.output.LayerNorm           layers.N.attn.ln
    encoder.layer.N.intermediate.dense                   layers.N.ff.fc1
    encoder.layer.N.output.dense                         layers.N.ff.fc2
    encoder.layer.N.output.LayerNorm                     layers.N.ff.ln

(weights and biases alike). config.json gets hidden_size → d_model, num_attention_heads →
n_head, intermediate_size → d_inner, hidden_act → activation, layer_norm_eps,
max_position_embeddings → position_rows, pad_token_id, type_vocab_size and attention_window (one
even entry per layer). The pooler and any task head (lm_head, classifier) are not converted: the
engine returns the final hidden states, pooled by mean or first token on request.

Refused (ConversionError naming the field): a model_type other than longformer, a
position_embedding_type other than absolute, an odd attention window, hidden_size not a multiple
of num_attention_heads, a hidden_act the engine lacks (it has gelu, gelu_new /
gelu_pytorch_tanh, relu, silu).
"""

import argparse
import math
import sys
import warnings

import torch

from mnemo_checkpoint import write_checkpoint
from tools.convert_hf_transfo_xl import load_hf_checkpoint
from tools.converter_cli import random_fields

__all__ = ["ConversionError", "convert", "convert_dir", "random_hf_model", "main"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "relu": "relu", "silu": "silu"}


class ConversionError(ValueError):
    """The checkpoint uses something the engine does not run."""


def _as_dict(hf_config):
    return hf_config if isinstance(hf_config, dict) else hf_config.to_dict()


def our_config(cfg, dtype_name):
    if cfg.get("model_type", "longformer") != "longformer":
        raise ConversionError(f"model_type {cfg.get('model_type')!r}: only \"longformer\"")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"position_embedding_type {cfg['position_embedding_type']!r}: "
                              f"only \"absolute\" is supported")
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConversionError(f"hidden_act {act!r}: supported are {sorted(ACTIVATIONS)}")
    d, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    if d % heads:
        raise ConversionError(f"hidden_size {d} is not a multiple of num_attention_heads {heads}")
    window = cfg["attention_window"]
    windows = [window] * layers if isinstance(window, int) else list(window)
    if len(windows) != layers or any(w < 2 or w % 2 for w in windows):
        raise ConversionError(f"attention_window {window!r}: one even window >= 2 per layer")
    return {
        "architecture": "longformer",
        "vocab_size": cfg["vocab_size"],
        "d_model": d,
        "n_layer": layers,
        "n_head": heads,
        "d_head": d // heads,
        "d_inner": cfg["intermediate_size"],
        "activation": ACTIVATIONS[act],
        "layer_norm_epsilon": cfg.get("layer_norm_eps", 1e-5),
        "pad_token_id": cfg.get("pad_token_id", 1),
        "position_rows": cfg["max_position_embeddings"],
        "type_vocab_size": cfg.get("type_vocab_size", 1),
        "attention_window": windows,
        "torch_dtype": dtype_name,
    }


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Return (our config dict, {name: tensor}) for a Longformer module or a state dict with its
    config."""
    if isinstance(hf_model_or_state_dict, dict):
        sd, cfg = hf_model_or_state_dict, _as_dict(hf_config)
    else:
        sd, cfg = hf_model_or_state_dict.state_dict(), hf_model_or_state_dict.config.to_dict()
    sd = {(k[len("longformer."):] if k.startswith("longformer.") else k): v
          for k, v in sd.items()}
    stored = next(iter(sd.values())).dtype
    target = DTYPES[dtype] if dtype else stored
    name = {v: k for k, v in DTYPES.items()}[target]
    config = our_config(cfg, name)

    def get(key):
        if key not in sd:
            raise ConversionError(f"missing tensor {key!r}")
        return sd[key].detach().to(target).contiguous()

    out = {
        "embeddings.word.weight": get("embeddings.word_embeddings.weight"),
        "embeddings.position.weight": get("embeddings.position_embeddings.weight"),
        "embeddings.token_type.weight": get("embeddings.token_type_embeddings.weight"),
        "embeddings.ln.weight": get("embeddings.LayerNorm.weight"),
        "embeddings.ln.bias": get("embeddings.LayerNorm.bias"),
    }
    for n in range(config["n_layer"]):
        hf, ours = f"encoder.layer.{n}.", f"layers.{n}."
        for leaf in ("weight", "bias"):
            att = hf + "attention.self."
            out[f"{ours}attn.qkv.{leaf}"] = torch.cat(
                [get(f"{att}{p}.{leaf}") for p in ("query", "key", "value")])
            out[f"{ours}attn.global_qkv.{leaf}"] = torch.cat(
                [get(f"{att}{p}_global.{leaf}") for p in ("query", "key", "value")])
            out[f"{ours}attn.o.{leaf}"] = get(f"{hf}attention.output.dense.{leaf}")
            out[f"{ours}attn.ln.{leaf}"] = get(f"{hf}attention.output.LayerNorm.{leaf}")
            out[f"{ours}ff.fc1.{leaf}"] = get(f"{hf}intermediate.dense.{leaf}")
            out[f"{ours}ff.fc2.{leaf}"] = get(f"{hf}output.dense.{leaf}")
            out[f"{ours}ff.ln.{leaf}"] = get(f"{hf}output.LayerNorm.{leaf}")
    return config, out


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF Longformer directory; returns our config dict."""
    sd, hf_config = load_hf_checkpoint(hf_dir)
    config, tensors = convert(sd, hf_config, dtype=dtype)
    write_checkpoint(out_dir, config, tensors)
    return config


def random_hf_model(overrides, seed=0, std=None):
    """A seeded random LongformerModel in eval mode, without its pooler: weights N(0, std^2)
    (default 0.5/sqrt(hidden_size)), LayerNorm weights N(1, std^2), so the output depends on
    every tensor."""
    from transformers import LongformerConfig, LongformerModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = LongformerConfig(**overrides)
        torch.manual_seed(int(seed))
        model = LongformerModel(cfg, add_pooling_layer=False)
    std = std if std is not None else 0.5 / math.sqrt(cfg.hidden_size)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
            p.copy_((1.0 + noise if "LayerNorm.weight" in name else noise).to(p.dtype))
    return model.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Convert a Hugging Face Longformer encoder into a mnemo checkpoint.")
    ap.add_argument("paths", nargs="+", metavar="DIR",
                    help="HF_DIR OUT_DIR, or only OUT_DIR with --random-init")
    ap.add_argument("--dtype", choices=sorted(DTYPES),
                    help="cast the weights (default: keep their dtype)")
    ap.add_argument("--random-init", metavar="JSON",
                    help="create a random HF LongformerModel from these config fields instead "
                         "of reading HF_DIR")
    ap.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    ap.add_argument("--save-hf", metavar="HF_DIR",
                    help="with --random-init: also save the HF model here")
    args = ap.parse_args(argv)
    try:
        if args.random_init is not None:
            fields = random_fields(ap, "--random-init", args.random_init, args.paths)
            model = random_hf_model(fields, args.seed)
            config, tensors = convert(model, dtype=args.dtype)
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
            config = convert_dir(args.paths[0], out_dir, dtype=args.dtype)
    except ConversionError as e:
        print(f"convert_hf_longformer: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir} ({config['n_layer']} layers, d_model {config['d_model']}, "
          f"{config['n_head']} heads, windows {config['attention_window']}, "
          f"{config['torch_dtype']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
