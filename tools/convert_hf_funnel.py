#!/usr/bin/env python3
"""Convert a Hugging Face FunnelModel or FunnelBaseModel (or the encoder of the Funnel heads) to a
mnemo encoder checkpoint.

Architecture "funnel" (docs/checkpoint-format.md "Encoders"); prefix "funnel." dropped:

    HF                                                   mnemo
    embeddings.word_embeddings.weight                    embeddings.word.weight
    embeddings.layer_norm.{weight,bias}                  embeddings.ln.{weight,bias}
    encoder.blocks.B.I.attention.{q,k,v}_head            layers.N.attn.qkv (rows q | k | v; q has
                                                         no bias: zeros), N = I + Σ block_sizes[<B]
    encoder.blocks.B.I.attention.r_kernel [D, H, d_h]    layers.N.attn.r.weight [H·d_h, D]
    encoder.blocks.B.I.attention.r_{w,r,s}_bias [H, d_h] layers.N.attn.r_{w,r,s}_bias [H·d_h]
    encoder.blocks.B.I.attention.seg_embed [2, H, d_h]   layers.N.attn.seg_embed [2, H·d_h]
    encoder.blocks.B.I.attention.post_proj               layers.N.attn.o
    encoder.blocks.B.I.attention.layer_norm              layers.N.attn.ln
    encoder.blocks.B.I.ffn.linear_1, linear_2, layer_norm layers.N.ff.fc1, fc2, ln
    decoder.layers.I.…                                   decoder.I.… (FunnelModel only)

config.json: d_model, n_head, d_head, d_inner, hidden_act → activation, layer_norm_eps,
block_sizes (n_layer their sum), block_repeats, num_decoder_layers → decoder_layers (0 for a
FunnelBaseModel: no decoder tensors), separate_cls, truncate_seq, pool_q_only, pooling_type →
pooling, and the most tokens a pass holds, segment_len (max_position_embeddings when the config
has one, else 512, the length the published models were trained at). attention_type is not
stored: "relative_shift" and "factorized" are two ways of computing the same scores, and the
engine computes them one way. FunnelForMaskedLM's head converts (mlm_head: lm_head.bias →
mlm.decoder.bias; its weight must be tied to the word embeddings); the other task heads do not.

Refused (ConversionError naming the field): a model_type other than funnel, a hidden_act the
engine lacks, an odd d_model, a pooling_type other than mean / max, an untied lm_head.
"""

import sys

import torch

from tools.convert_hf_longformer import (ACTIVATIONS, ConversionError, random_encoder,
                                         read_encoder)
from tools.convert_hf_mistral import convert_dir_with
from tools.convert_hf_mistral import main as converter_main

__all__ = ["ConversionError", "convert", "convert_dir", "random_hf_model", "hf_last_hidden",
           "hf_mlm_logprobs", "main"]


def our_config(cfg, dtype_name):
    if cfg.get("model_type", "funnel") != "funnel":
        raise ConversionError(f"model_type {cfg.get('model_type')!r}: only \"funnel\"")
    act = cfg.get("hidden_act", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConversionError(f"hidden_act {act!r}: supported are {sorted(ACTIVATIONS)}")
    if cfg["d_model"] % 2:
        raise ConversionError(f"d_model {cfg['d_model']}: the sinusoid needs an even width")
    if cfg.get("pooling_type", "mean") not in ("mean", "max"):
        raise ConversionError(f"pooling_type {cfg['pooling_type']!r}: mean or max")
    blocks = list(cfg["block_sizes"])
    longest = cfg.get("max_position_embeddings", 512)
    return {
        "architecture": "funnel",
        "vocab_size": cfg["vocab_size"],
        "d_model": cfg["d_model"],
        "n_layer": sum(blocks),
        "n_head": cfg["n_head"],
        "d_head": cfg["d_head"],
        "d_inner": cfg["d_inner"],
        "activation": ACTIVATIONS[act],
        "layer_norm_epsilon": cfg.get("layer_norm_eps", 1e-9),
        "pad_token_id": cfg.get("pad_token_id") or 0,
        "position_rows": longest,
        "type_vocab_size": cfg.get("type_vocab_size", 3),
        "block_sizes": blocks,
        "block_repeats": list(cfg.get("block_repeats") or [1] * len(blocks)),
        "decoder_layers": cfg.get("num_decoder_layers", 2),
        "separate_cls": bool(cfg.get("separate_cls", True)),
        "truncate_seq": bool(cfg.get("truncate_seq", True)),
        "pool_q_only": bool(cfg.get("pool_q_only", True)),
        "pooling": cfg.get("pooling_type", "mean"),
        "segment_len": longest,
        "torch_dtype": dtype_name,
    }


def _layer(get, hf, ours, width):
    """One Funnel layer's tensors, by mnemo name."""
    att, out = hf + "attention.", {}
    q = get(att + "q_head.weight")
    out[ours + "attn.qkv.weight"] = torch.cat([q, get(att + "k_head.weight"),
                                               get(att + "v_head.weight")])
    out[ours + "attn.qkv.bias"] = torch.cat([torch.zeros_like(q[:, 0]), get(att + "k_head.bias"),
                                             get(att + "v_head.bias")])
    r_kernel = get(att + "r_kernel")  # [D, H, d_h]
    out[ours + "attn.r.weight"] = r_kernel.reshape(r_kernel.shape[0], width).t().contiguous()
    for bias in ("r_w_bias", "r_r_bias", "r_s_bias"):
        out[ours + f"attn.{bias}"] = get(att + bias).reshape(width).contiguous()
    out[ours + "attn.seg_embed"] = get(att + "seg_embed").reshape(2, width).contiguous()
    for leaf in ("weight", "bias"):
        out[ours + f"attn.o.{leaf}"] = get(f"{att}post_proj.{leaf}")
        out[ours + f"attn.ln.{leaf}"] = get(f"{att}layer_norm.{leaf}")
        out[ours + f"ff.fc1.{leaf}"] = get(f"{hf}ffn.linear_1.{leaf}")
        out[ours + f"ff.fc2.{leaf}"] = get(f"{hf}ffn.linear_2.{leaf}")
        out[ours + f"ff.ln.{leaf}"] = get(f"{hf}ffn.layer_norm.{leaf}")
    return out


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Return (our config dict, {name: tensor}) for a Funnel module or a state dict with its
    config; a state dict without decoder tensors (FunnelBaseModel) gets decoder_layers 0."""
    sd, config, get = read_encoder(hf_model_or_state_dict, hf_config, dtype, "funnel.",
                                   our_config)
    if not any(k.startswith("decoder.") for k in sd):
        config["decoder_layers"] = 0
    width = config["n_head"] * config["d_head"]
    out = {"embeddings.word.weight": get("embeddings.word_embeddings.weight"),
           "embeddings.ln.weight": get("embeddings.layer_norm.weight"),
           "embeddings.ln.bias": get("embeddings.layer_norm.bias")}
    n = 0
    for b, size in enumerate(config["block_sizes"]):
        for i in range(size):
            out.update(_layer(get, f"encoder.blocks.{b}.{i}.", f"layers.{n}.", width))
            n += 1
    for i in range(config["decoder_layers"]):
        out.update(_layer(get, f"decoder.layers.{i}.", f"decoder.{i}.", width))
    if "lm_head.bias" in sd:  # FunnelForMaskedLM: the word embeddings as output matrix, a bias
        if not torch.equal(sd.get("lm_head.weight", sd["embeddings.word_embeddings.weight"]),
                           sd["embeddings.word_embeddings.weight"]):
            raise ConversionError("lm_head.weight differs from the word embeddings: only a "
                                  "masked-LM head tied to them (Hugging Face's default) runs")
        config["mlm_head"] = True
        out["mlm.decoder.bias"] = get("lm_head.bias")
    return config, out


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF Funnel directory; returns our config dict. Its sentencepiece or WordPiece
    vocabulary is not read (send ids)."""
    return convert_dir_with(convert, hf_dir, out_dir, dtype)


def random_hf_model(overrides, seed=0, std=None, base=False, masked_lm=False):
    """A seeded random FunnelModel (FunnelBaseModel with `base`, FunnelForMaskedLM with
    `masked_lm`) (random_encoder)."""
    from transformers import FunnelBaseModel, FunnelConfig, FunnelForMaskedLM, FunnelModel

    cls = FunnelForMaskedLM if masked_lm else FunnelBaseModel if base else FunnelModel
    return random_encoder(FunnelConfig, cls, overrides, seed, std)


def hf_last_hidden(model, ids):
    """Hugging Face's last_hidden_state of one pass: every token's vector (FunnelModel), or the
    pooled sequence (FunnelBaseModel)."""
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).last_hidden_state[0].numpy()


def hf_mlm_logprobs(model, ids):
    """A FunnelForMaskedLM's log-softmax over the vocabulary at every position [len(ids), V]."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([list(ids)])).logits[0], dim=-1).numpy()


def main(argv=None):
    return converter_main(
        argv, "convert_hf_funnel", "Funnel-Transformer encoder (FunnelModel, FunnelBaseModel)",
        sys.modules[__name__],
        summary=lambda c: (f"blocks {c['block_sizes']}, d_model {c['d_model']}, "
                           f"{c['n_head']} heads, {c['decoder_layers']} decoder layers, "
                           f"{c['pooling']} pooling, {c['torch_dtype']}"))


if __name__ == "__main__":
    sys.exit(main())
