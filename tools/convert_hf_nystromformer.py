#!/usr/bin/env python3
"""Convert a Hugging Face NystromformerModel (or the encoder of its task heads) to a mnemo encoder
checkpoint.

Architecture "nystromformer" (docs/checkpoint-format.md "Encoders"): the BERT layout of
tools/convert_hf_longformer.bert_tensors (prefix "nystromformer." dropped; embeddings, qkv, o,
LayerNorms, feed-forward), plus

    HF                                                   mnemo
    encoder.layer.N.attention.self.conv.weight [H,1,k,1] layers.N.attn.conv.weight [H, k]

config.json gets the common encoder fields (hidden_size → d_model, num_attention_heads → n_head,
intermediate_size → d_inner, hidden_act → activation, layer_norm_eps, max_position_embeddings + 2
→ position_rows, pad_token_id, type_vocab_size) and segment_means_seq_len → segment_len,
num_landmarks, conv_kernel_size (0 for none). Task heads are not converted.

Refused (ConversionError naming the field): a model_type other than nystromformer, a
position_embedding_type other than absolute, inv_coeff_init_option (only the "original"
pseudo-inverse initialisation runs), num_landmarks not dividing segment_means_seq_len, an even
conv_kernel_size, hidden_size not a multiple of num_attention_heads, a hidden_act the engine
lacks.
"""

import sys

import torch

from tools.convert_hf_longformer import (ConversionError, bert_tensors, encoder_fields,
                                         random_encoder, read_encoder)
from tools.convert_hf_mistral import convert_dir_with
from tools.convert_hf_mistral import main as converter_main

__all__ = ["ConversionError", "convert", "convert_dir", "random_hf_model", "hf_last_hidden",
           "main"]


def our_config(cfg, dtype_name):
    if cfg.get("inv_coeff_init_option"):
        raise ConversionError("inv_coeff_init_option: only the original pseudo-inverse "
                              "initialisation is supported")
    fields = encoder_fields(cfg, dtype_name, "nystromformer", "nystromformer", "gelu_new", 1e-5,
                            1, 2, extra_positions=2)
    seg, landmarks = cfg["segment_means_seq_len"], cfg["num_landmarks"]
    if seg % landmarks:
        raise ConversionError(f"num_landmarks {landmarks} does not divide "
                              f"segment_means_seq_len {seg}")
    conv = cfg.get("conv_kernel_size") or 0
    if conv % 2 == 0 and conv:
        raise ConversionError(f"conv_kernel_size {conv}: only odd kernels keep the length")
    return dict(fields, segment_len=seg, num_landmarks=landmarks, conv_kernel_size=conv)


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Return (our config dict, {name: tensor}) for a Nyströmformer module or a state dict with
    its config."""
    _, config, get = read_encoder(hf_model_or_state_dict, hf_config, dtype, "nystromformer.",
                                  our_config)

    out = bert_tensors(get, config["n_layer"])
    if config["conv_kernel_size"]:
        for n in range(config["n_layer"]):
            w = get(f"encoder.layer.{n}.attention.self.conv.weight")  # [H, 1, k, 1]
            out[f"layers.{n}.attn.conv.weight"] = w.reshape(w.shape[0], w.shape[2]).contiguous()
    return config, out


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF Nyströmformer directory; returns our config dict."""
    return convert_dir_with(convert, hf_dir, out_dir, dtype)


def random_hf_model(overrides, seed=0, std=None):
    """A seeded random NystromformerModel (tools/convert_hf_longformer.random_encoder)."""
    from transformers import NystromformerConfig, NystromformerModel

    return random_encoder(NystromformerConfig, NystromformerModel, overrides, seed, std)


def hf_last_hidden(model, ids):
    """The reference of one engine pass: Hugging Face's last_hidden_state of `ids` padded to
    segment_means_seq_len with pad_token_id (masked), the padding's rows dropped."""
    seg, pad = model.config.segment_means_seq_len, model.config.pad_token_id
    padded = list(ids) + [pad] * (seg - len(ids))
    mask = torch.tensor([[1] * len(ids) + [0] * (seg - len(ids))])
    with torch.no_grad():
        out = model(torch.tensor([padded]), attention_mask=mask).last_hidden_state[0]
    return out[:len(ids)].numpy()


def main(argv=None):
    return converter_main(
        argv, "convert_hf_nystromformer", "Nyströmformer encoder (NystromformerModel)",
        sys.modules[__name__],
        summary=lambda c: (f"{c['n_layer']} layers, d_model {c['d_model']}, {c['n_head']} heads, "
                           f"{c['num_landmarks']} landmarks over {c['segment_len']}, "
                           f"conv {c['conv_kernel_size']}, {c['torch_dtype']}"))


if __name__ == "__main__":
    sys.exit(main())
