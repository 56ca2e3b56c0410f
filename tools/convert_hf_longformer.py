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

    lm_head.dense                                        mlm.dense
    lm_head.layer_norm                                   mlm.ln
    lm_head.bias (= lm_head.decoder.bias)                mlm.decoder.bias

(weights and biases alike). config.json gets hidden_size → d_model, num_attention_heads →
n_head, intermediate_size → d_inner, hidden_act → activation, layer_norm_eps,
max_position_embeddings → position_rows, pad_token_id, type_vocab_size and attention_window (one
even entry per layer). The masked-LM head of LongformerForMaskedLM is converted when present
(config mlm_head: true); its output matrix must be tied to the word embeddings, as Hugging Face
ties it. The pooler and the other task heads (classifier, QA) are not converted: the engine
returns the final hidden states, pooled by mean or first token on request.

Refused (ConversionError naming the field): a model_type other than longformer, a
position_embedding_type other than absolute, an odd attention window, hidden_size not a multiple
of num_attention_heads, a hidden_act the engine lacks (it has gelu, gelu_new /
gelu_pytorch_tanh, relu, silu).
"""

import sys
import warnings

import torch

from tools.convert_hf_mistral import convert_dir_with, randomize_weights
from tools.convert_hf_mistral import main as converter_main

__all__ = ["ConversionError", "convert", "convert_dir", "random_hf_model", "hf_last_hidden",
           "hf_mlm_logprobs", "bert_tensors", "encoder_fields", "read_encoder", "random_encoder",
           "main"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "relu": "relu", "silu": "silu"}


class ConversionError(ValueError):
    """The checkpoint uses something the engine does not run."""


def _as_dict(hf_config):
    return hf_config if isinstance(hf_config, dict) else hf_config.to_dict()


def encoder_fields(cfg, dtype_name, model_type, architecture, hidden_act, layer_norm_eps,
                   pad_token_id, type_vocab_size, extra_positions=0):
    """The config.json fields every BERT-layout encoder shares, after the checks they share
    (model_type, absolute positions, an activation the engine has, heads dividing hidden_size).
    hidden_act … type_vocab_size are the model's Hugging Face defaults; the position table has
    extra_positions rows past max_position_embeddings."""
    if cfg.get("model_type", model_type) != model_type:
        raise ConversionError(f"model_type {cfg.get('model_type')!r}: only \"{model_type}\"")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"position_embedding_type {cfg['position_embedding_type']!r}: "
                              f"only \"absolute\" is supported")
    act = cfg.get("hidden_act", hidden_act)
    if act not in ACTIVATIONS:
        raise ConversionError(f"hidden_act {act!r}: supported are {sorted(ACTIVATIONS)}")
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if d % heads:
        raise ConversionError(f"hidden_size {d} is not a multiple of num_attention_heads {heads}")
    return {
        "architecture": architecture,
        "vocab_size": cfg["vocab_size"],
        "d_model": d,
        "n_layer": cfg["num_hidden_layers"],
        "n_head": heads,
        "d_head": d // heads,
        "d_inner": cfg["intermediate_size"],
        "activation": ACTIVATIONS[act],
        "layer_norm_epsilon": cfg.get("layer_norm_eps", layer_norm_eps),
        "pad_token_id": cfg.get("pad_token_id", pad_token_id),
        "position_rows": cfg["max_position_embeddings"] + extra_positions,
        "type_vocab_size": cfg.get("type_vocab_size", type_vocab_size),
        "torch_dtype": dtype_name,
    }


def our_config(cfg, dtype_name):
    fields = encoder_fields(cfg, dtype_name, "longformer", "longformer", "gelu", 1e-5, 1, 1)
    layers, window = fields["n_layer"], cfg["attention_window"]
    windows = [window] * layers if isinstance(window, int) else list(window)
    if len(windows) != layers or any(w < 2 or w % 2 for w in windows):
        raise ConversionError(f"attention_window {window!r}: one even window >= 2 per layer")
    return dict(fields, attention_window=windows)


def read_encoder(hf_model_or_state_dict, hf_config, dtype, prefix, make_config):
    """What an encoder converter starts from: the state dict with the encoder's `prefix` ("name.")
    dropped, our config (make_config(hf config dict, dtype name)) and get(hf_name), one tensor
    cast to the target dtype (the stored one by default), ConversionError when missing."""
    if isinstance(hf_model_or_state_dict, dict):
        sd, cfg = hf_model_or_state_dict, _as_dict(hf_config)
    else:
        sd, cfg = hf_model_or_state_dict.state_dict(), hf_model_or_state_dict.config.to_dict()
    sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    stored = next(v for v in sd.values() if v.is_floating_point()).dtype
    target = DTYPES[dtype] if dtype else stored
    config = make_config(cfg, {v: k for k, v in DTYPES.items()}[target])

    def get(key):
        if key not in sd:
            raise ConversionError(f"missing tensor {key!r}")
        return sd[key].detach().to(target).contiguous()

    return sd, config, get


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Return (our config dict, {name: tensor}) for a Longformer module or a state dict with its
    config."""
    sd, config, get = read_encoder(hf_model_or_state_dict, hf_config, dtype, "longformer.",
                                   our_config)

    out = bert_tensors(get, config["n_layer"])
    for n in range(config["n_layer"]):
        att = f"encoder.layer.{n}.attention.self."
        for leaf in ("weight", "bias"):
            out[f"layers.{n}.attn.global_qkv.{leaf}"] = torch.cat(
                [get(f"{att}{p}_global.{leaf}") for p in ("query", "key", "value")])
    if "lm_head.dense.weight" in sd:
        decoder = sd.get("lm_head.decoder.weight")
        if decoder is not None and not torch.equal(decoder,
                                                   sd["embeddings.word_embeddings.weight"]):
            raise ConversionError("lm_head.decoder.weight differs from the word embeddings: only "
                                  "a masked-LM head tied to them (Hugging Face's default) runs")
        config["mlm_head"] = True
        for leaf in ("weight", "bias"):
            out[f"mlm.dense.{leaf}"] = get(f"lm_head.dense.{leaf}")
            out[f"mlm.ln.{leaf}"] = get(f"lm_head.layer_norm.{leaf}")
        out["mlm.decoder.bias"] = get("lm_head.bias")
    return config, out


def bert_tensors(get, n_layer):
    """The tensors every BERT-layout encoder shares (embeddings, qkv, o, the LayerNorms and the
    feed-forward), by mnemo name; `get(hf_name)` reads one Hugging Face tensor."""
    out = {
        "embeddings.word.weight": get("embeddings.word_embeddings.weight"),
        "embeddings.position.weight": get("embeddings.position_embeddings.weight"),
        "embeddings.token_type.weight": get("embeddings.token_type_embeddings.weight"),
        "embeddings.ln.weight": get("embeddings.LayerNorm.weight"),
        "embeddings.ln.bias": get("embeddings.LayerNorm.bias"),
    }
    for n in range(n_layer):
        hf, ours = f"encoder.layer.{n}.", f"layers.{n}."
        for leaf in ("weight", "bias"):
            att = hf + "attention.self."
            out[f"{ours}attn.qkv.{leaf}"] = torch.cat(
                [get(f"{att}{p}.{leaf}") for p in ("query", "key", "value")])
            out[f"{ours}attn.o.{leaf}"] = get(f"{hf}attention.output.dense.{leaf}")
            out[f"{ours}attn.ln.{leaf}"] = get(f"{hf}attention.output.LayerNorm.{leaf}")
            out[f"{ours}ff.fc1.{leaf}"] = get(f"{hf}intermediate.dense.{leaf}")
            out[f"{ours}ff.fc2.{leaf}"] = get(f"{hf}output.dense.{leaf}")
            out[f"{ours}ff.ln.{leaf}"] = get(f"{hf}output.LayerNorm.{leaf}")
    return out


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF Longformer directory; returns our config dict."""
    return convert_dir_with(convert, hf_dir, out_dir, dtype)


def random_encoder(config_cls, make_model, overrides, seed=0, std=None):
    """A seeded random Hugging Face encoder (make_model(config_cls(**overrides))) in eval mode:
    weights N(0, std^2) (default 0.5/sqrt(hidden_size)), LayerNorm weights N(1, std^2), so the
    output depends on every tensor (a tied MLM decoder stays tied)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = config_cls(**overrides)
        torch.manual_seed(int(seed))
        model = make_model(cfg)
    return randomize_weights(model, cfg.hidden_size, seed, std, is_norm=lambda name: (
        "LayerNorm.weight" in name or "layer_norm.weight" in name))


def random_hf_model(overrides, seed=0, std=None, masked_lm=False):
    """A seeded random LongformerModel (LongformerForMaskedLM with `masked_lm`) without a pooler
    (random_encoder)."""
    from transformers import LongformerConfig, LongformerForMaskedLM, LongformerModel

    return random_encoder(LongformerConfig, LongformerForMaskedLM if masked_lm else (
        lambda cfg: LongformerModel(cfg, add_pooling_layer=False)), overrides, seed, std)


def _hf_forward(model, ids, global_positions):
    mask = torch.zeros(1, len(ids), dtype=torch.long)
    for g in global_positions:
        mask[0, g] = 1
    with torch.no_grad():
        return model(torch.tensor([ids]), global_attention_mask=mask)


def hf_last_hidden(model, ids, global_positions=()):
    """The reference of the engine's vectors: Hugging Face's last_hidden_state [len(ids), D] of
    one pass with `global_positions` attending globally."""
    return _hf_forward(model, ids, global_positions).last_hidden_state[0].numpy()


def hf_mlm_logprobs(model, ids, global_positions=()):
    """A LongformerForMaskedLM's log-softmax over the vocabulary at every position [len(ids), V]
    of one pass."""
    return torch.log_softmax(_hf_forward(model, ids, global_positions).logits[0], dim=-1).numpy()


def main(argv=None):
    return converter_main(
        argv, "convert_hf_longformer", "Longformer encoder (LongformerModel)",
        sys.modules[__name__],
        summary=lambda c: (f"{c['n_layer']} layers, d_model {c['d_model']}, {c['n_head']} heads, "
                           f"windows {c['attention_window']}, {c['torch_dtype']}"))


if __name__ == "__main__":
    sys.exit(main())
