#!/usr/bin/env python3
"""Convert a Hugging Face Gemma2ForCausalLM to a mnemo checkpoint.

Architecture "gemma2" (docs/checkpoint-format.md "Sliding-window decoders"):
the Mistral layout of tools/convert_hf_mistral.py plus

    HF                                                mnemo
    model.layers.N.input_layernorm.weight             layers.N.attn.norm.weight       1 + w
    model.layers.N.post_attention_layernorm.weight    layers.N.attn.post_norm.weight  1 + w
    model.layers.N.pre_feedforward_layernorm.weight   layers.N.ff.norm.weight         1 + w
    model.layers.N.post_feedforward_layernorm.weight  layers.N.ff.post_norm.weight    1 + w
    model.norm.weight                                 final_norm.weight               1 + w

Gemma's RMSNorm multiplies by (1 + w) in float32; the converter stores that
sum as float32, so the engine's x / rms · gamma is Hugging Face's to the bit.
config.json gets "activation": "gelu_tanh" (hidden_activation
gelu_pytorch_tanh), query_pre_attn_scalar (scores scaled by its inverse square
root), attn_logit_softcapping and final_logit_softcapping (cap · tanh(x / cap)
on the scores and on the logits; null: none) and "max_positions":
max_position_embeddings. Layers alternate as Hugging Face's do: even layers
see the last `sliding_window` positions, odd (global) layers a window of the
whole context, so a session holds at most max_position_embeddings positions
(past that is OUT_OF_RANGE) and its state is that bound's keys and values on
the global layers. The embedding is scaled by sqrt(hidden_size); the head is
tied to it unless tie_word_embeddings is false.

Refused (ConversionError naming the field): hidden_activation other than
gelu_pytorch_tanh, attention_bias, rope_scaling, an odd head_dim,
num_attention_heads not a multiple of num_key_value_heads. Gemma-3 (a 5:1
local/global pattern, its own rope bases and q/k norms) needs transformers
4.50, which needs torch 2: not supported.
"""

import sys

from tools.convert_hf_mistral import (ConversionError, check_layout, convert_decoder,
                                      convert_dir_with, decoder_config, main as decoder_main,
                                      random_model)

__all__ = ["ConversionError", "convert", "convert_dir", "random_hf_model", "main"]


def check_supported(cfg):
    if cfg.get("model_type", "gemma2") != "gemma2":
        raise ConversionError(
            f"model_type {cfg.get('model_type')!r}: only \"gemma2\" is supported")
    act = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    if act != "gelu_pytorch_tanh":
        raise ConversionError(
            f"hidden_activation {act!r}: only \"gelu_pytorch_tanh\" is supported")
    if cfg.get("attention_bias"):
        raise ConversionError("attention_bias true is not supported")
    check_layout(cfg)
    window = cfg.get("sliding_window")
    if not isinstance(window, int) or window < 1:
        raise ConversionError(f"sliding_window {window!r} must be a positive integer")
    scalar = cfg.get("query_pre_attn_scalar")
    if not isinstance(scalar, (int, float)) or scalar <= 0:
        raise ConversionError(f"query_pre_attn_scalar {scalar!r} must be positive")


def our_config(cfg, dtype):
    context = cfg.get("max_position_embeddings", 8192)
    window = min(cfg["sliding_window"], context)
    # Hugging Face: layer i slides when i is even, attends globally when odd.
    windows = [window if i % 2 == 0 else context for i in range(cfg["num_hidden_layers"])]
    config = decoder_config(cfg, dtype, "gemma2", "gelu_tanh", windows, tied_default=True)
    config["max_positions"] = context
    config["query_pre_attn_scalar"] = cfg["query_pre_attn_scalar"]
    config["attn_logit_softcapping"] = cfg.get("attn_logit_softcapping")
    config["final_logit_softcapping"] = cfg.get("final_logit_softcapping")
    return config


# Gemma-2's norms: (our name, Hugging Face's) per layer.
GEMMA2_NORMS = (("attn.norm.weight", "input_layernorm.weight"),
                ("attn.post_norm.weight", "post_attention_layernorm.weight"),
                ("ff.norm.weight", "pre_feedforward_layernorm.weight"),
                ("ff.post_norm.weight", "post_feedforward_layernorm.weight"))


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Return (our config dict, {name: tensor}) for a Gemma2ForCausalLM
    (module or state dict with its config)."""
    # Gemma's RMSNorm scales by 1 + w, in float32.
    return convert_decoder(hf_model_or_state_dict, hf_config, dtype, check_supported,
                           our_config, GEMMA2_NORMS, lambda w: 1.0 + w)


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF Gemma2ForCausalLM directory; returns our config dict."""
    return convert_dir_with(convert, hf_dir, out_dir, dtype)


def random_hf_model(overrides, seed=0, std=None):
    """A seeded random Gemma2ForCausalLM (tools/convert_hf_mistral.random_model)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return random_model(Gemma2Config, Gemma2ForCausalLM, overrides, seed, std)


def main(argv=None):
    return decoder_main(argv, "convert_hf_gemma2", "Gemma-2 checkpoint (Gemma2ForCausalLM)",
                        sys.modules[__name__])


if __name__ == "__main__":
    sys.exit(main())
