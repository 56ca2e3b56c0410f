#!/usr/bin/env python3
"""Convert a Hugging Face BigBirdModel (or the encoder of BigBirdForMaskedLM and the other BigBird
heads) to a mnemo encoder checkpoint.

Architecture "bigbird" (docs/checkpoint-format.md "Encoders"): the BERT layout of
tools/convert_hf_longformer.bert_tensors (prefix "bert." dropped; embeddings, qkv, o, LayerNorms,
feed-forward; zero query/key/value biases when use_bias is false), and for BigBirdForMaskedLM

    HF                                                   mnemo
    cls.predictions.transform.dense                      mlm.dense
    cls.predictions.transform.LayerNorm                  mlm.ln
    cls.predictions.bias (= cls.predictions.decoder.bias) mlm.decoder.bias

config.json gets the common encoder fields (hidden_size → d_model, num_attention_heads → n_head,
intermediate_size → d_inner, hidden_act → activation (and mlm_activation), layer_norm_eps,
max_position_embeddings → position_rows, pad_token_id, type_vocab_size) and attention_type
("original_full" or "block_sparse"), block_size, num_random_blocks, rescale_embeddings. The random
blocks are not stored: the engine draws them per layer and pass length exactly as Hugging Face
does. The pooler and the other task heads are not converted.

Refused (ConversionError naming the field): a model_type other than big_bird, a
position_embedding_type other than absolute, a decoder (is_decoder, add_cross_attention),
block_sparse with num_random_blocks < 1, hidden_size not a multiple of num_attention_heads, a
hidden_act the engine lacks, an MLM output matrix not tied to the word embeddings.
"""

import sys
import warnings

import torch

from tools.convert_hf_longformer import (ConversionError, bert_tensors, encoder_fields,
                                         random_encoder, read_encoder)
from tools.convert_hf_mistral import convert_dir_with
from tools.convert_hf_mistral import main as converter_main

__all__ = ["ConversionError", "convert", "convert_dir", "random_hf_model", "hf_last_hidden",
           "hf_mlm_logprobs", "main"]


def our_config(cfg, dtype_name):
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise ConversionError("is_decoder / add_cross_attention: only BigBird's encoder converts")
    fields = encoder_fields(cfg, dtype_name, "big_bird", "bigbird", "gelu_new", 1e-12, 0, 2)
    kind = cfg.get("attention_type", "block_sparse")
    if kind not in ("original_full", "block_sparse"):
        raise ConversionError(f"attention_type {kind!r}: original_full or block_sparse")
    random_blocks = cfg.get("num_random_blocks", 3)
    if kind == "block_sparse" and random_blocks < 1:
        raise ConversionError(f"num_random_blocks {random_blocks}: block_sparse attention draws at "
                              f"least one random block per row")
    return dict(fields, attention_type=kind, block_size=cfg.get("block_size", 64),
                num_random_blocks=random_blocks,
                rescale_embeddings=bool(cfg.get("rescale_embeddings", False)))


def convert(hf_model_or_state_dict, hf_config=None, dtype=None):
    """Return (our config dict, {name: tensor}) for a BigBird module or a state dict with its
    config."""
    sd, config, read = read_encoder(hf_model_or_state_dict, hf_config, dtype, "bert.", our_config)

    def get(key):  # without use_bias, the query/key/value biases are zero
        if key.endswith(("query.bias", "key.bias", "value.bias")) and key not in sd:
            return torch.zeros_like(read(key[:-len("bias")] + "weight")[:, 0])
        return read(key)

    out = bert_tensors(get, config["n_layer"])
    if "cls.predictions.transform.dense.weight" in sd:
        decoder = sd.get("cls.predictions.decoder.weight")
        if decoder is not None and not torch.equal(decoder,
                                                   sd["embeddings.word_embeddings.weight"]):
            raise ConversionError("cls.predictions.decoder.weight differs from the word "
                                  "embeddings: only a masked-LM head tied to them (Hugging "
                                  "Face's default) runs")
        config["mlm_head"] = True
        config["mlm_activation"] = config["activation"]
        for leaf in ("weight", "bias"):
            out[f"mlm.dense.{leaf}"] = get(f"cls.predictions.transform.dense.{leaf}")
            out[f"mlm.ln.{leaf}"] = get(f"cls.predictions.transform.LayerNorm.{leaf}")
        out["mlm.decoder.bias"] = get("cls.predictions.bias")
    return config, out


def convert_dir(hf_dir, out_dir, dtype=None):
    """Convert an HF BigBird directory; returns our config dict. BigBird's sentencepiece model
    (spiece.model) becomes the checkpoint's tokenizer.model."""
    return convert_dir_with(convert, hf_dir, out_dir, dtype, tokenizer="spiece.model")


def random_hf_model(overrides, seed=0, std=None, masked_lm=False):
    """A seeded random BigBirdModel (BigBirdForMaskedLM with `masked_lm`) without a pooler
    (tools/convert_hf_longformer.random_encoder)."""
    from transformers import BigBirdConfig, BigBirdForMaskedLM, BigBirdModel

    return random_encoder(BigBirdConfig, BigBirdForMaskedLM if masked_lm else (
        lambda cfg: BigBirdModel(cfg, add_pooling_layer=False)), overrides, seed, std)


def _hf_forward(model, ids):
    # Hugging Face switches a block_sparse model to original_full for good after a short input;
    # each pass starts from the configured kind, as the engine decides per window.
    bert = model.bert if hasattr(model, "bert") else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bert.set_attention_type(model.config.attention_type)
        with torch.no_grad():
            return model(torch.tensor([list(ids)]))


def hf_last_hidden(model, ids):
    """The reference of one engine pass: Hugging Face's last_hidden_state [len(ids), D] (a
    block-sparse pass padded to whole blocks by Hugging Face itself)."""
    return _hf_forward(model, ids).last_hidden_state[0].numpy()


def hf_mlm_logprobs(model, ids):
    """A BigBirdForMaskedLM's log-softmax over the vocabulary at every position [len(ids), V] of
    one pass."""
    return torch.log_softmax(_hf_forward(model, ids).logits[0], dim=-1).numpy()


def main(argv=None):
    return converter_main(
        argv, "convert_hf_bigbird", "BigBird encoder (BigBirdModel)", sys.modules[__name__],
        summary=lambda c: (f"{c['n_layer']} layers, d_model {c['d_model']}, {c['n_head']} heads, "
                           f"{c['attention_type']} (blocks of {c['block_size']}, "
                           f"{c['num_random_blocks']} random), {c['torch_dtype']}"))


if __name__ == "__main__":
    sys.exit(main())
