"""Hugging Face Gemma2ForCausalLM (transformers 4.44.2, eager attention) converted by
tools/convert_hf_gemma2.py: the engine's logits over a stream fed in one call, in segments
around the sliding window and token by token equal Hugging Face's in float64 (sliding layers
interleaved with global ones, scores scaled by query_pre_attn_scalar and soft-capped, soft-capped
logits, the sandwich norms' 1 + w, the scaled embedding), 16-bit checkpoints, the position
limit, the directory conversion and the converter's refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import test_hf_mistral_parity as mistral_tests
from mnemo_checkpoint import write_checkpoint
from parity_common import assert_logits_close, engine_logits
from test_hf_mistral_parity import hf_logits, round_parameters, stream
from tools import convert_hf_gemma2
from tools.convert_hf_gemma2 import ConversionError, convert, random_hf_model

BASE = dict(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, head_dim=8, sliding_window=7,
            max_position_embeddings=64, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0, rms_norm_eps=1e-6, rope_theta=10000.0)

# name: Gemma2Config fields over BASE.
LAYOUTS = {
    "capped_gqa": {},
    "uncapped_untied": dict(attn_logit_softcapping=None, final_logit_softcapping=None,
                            tie_word_embeddings=False, num_key_value_heads=6),
    "mqa_wide_heads": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                           query_pre_attn_scalar=16, sliding_window=4, num_hidden_layers=4),
    "window_1": dict(sliding_window=1, num_hidden_layers=2),
}


def converted(tmp_path, fields, seed=3, dtype=None):
    return mistral_tests.converted(tmp_path, fields, seed, dtype, convert_hf_gemma2)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_segments_and_decode_match_hf(tmp_path, mnemo_bin, layout):
    fields = {**BASE, **LAYOUTS[layout]}
    model, config, out = converted(tmp_path, fields)
    windows = [layer["window"] for layer in config["layers"]]
    assert windows[0::2] == [fields["sliding_window"]] * len(windows[0::2])
    assert windows[1::2] == [64] * len(windows[1::2]) and config["max_positions"] == 64
    ids = stream(fields["vocab_size"], 60)
    want = hf_logits(model, ids)
    w = fields["sliding_window"]
    for seg in sorted({60, max(1, w - 1), w, w + 1, 13}):
        got = engine_logits(mnemo_bin, tmp_path, out, ids, segment_len=seg)
        assert_logits_close(got, want, what=f"{layout}, segments of {seg}")
    got = engine_logits(mnemo_bin, tmp_path, out, ids, decode=True)
    assert_logits_close(got, want, what=f"{layout}, token by token")
    if fields["final_logit_softcapping"]:
        assert np.abs(got).max() < fields["final_logit_softcapping"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_checkpoints_match_hf_on_their_weights(tmp_path, mnemo_bin, dtype):
    """16-bit matrices, float32 norms (1 + w of the rounded w, as Hugging Face adds it in
    float32) and frequencies: Hugging Face in float64 on the same rounded weights."""
    model = round_parameters(random_hf_model(BASE, seed=7), getattr(torch, dtype))
    config, tensors = convert(model, dtype=dtype)
    assert config["torch_dtype"] == dtype
    assert tensors["layers.0.attn.post_norm.weight"].dtype == torch.float32
    out = tmp_path / "ours"
    write_checkpoint(str(out), config, tensors)
    ids = stream(BASE["vocab_size"], 30)
    got = engine_logits(mnemo_bin, tmp_path, out, ids, segment_len=9)
    assert_logits_close(got, hf_logits(model, ids), what=dtype)


def test_refuses_past_its_context(tmp_path, mnemo_bin):
    _, _, out = converted(tmp_path, BASE)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(" ".join(map(str, stream(BASE["vocab_size"], 65))))
    proc = subprocess.run([mnemo_bin, "logits", "--model", str(out), "--ids", str(ids_file),
                           "--segment-len", "16", "--output", str(tmp_path / "x.f32")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "position limit of 64" in proc.stderr


def test_directory_conversion_from_save_pretrained(tmp_path, mnemo_bin):
    model = random_hf_model(BASE, seed=9)
    hf_dir, out = tmp_path / "hf", tmp_path / "ours"
    model.save_pretrained(str(hf_dir))
    proc = subprocess.run([sys.executable, "-m", "tools.convert_hf_gemma2", str(hf_dir),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "6/2 heads, window 7/64" in proc.stdout
    with open(out / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    assert (config["architecture"], config["activation"]) == ("gemma2", "gelu_tanh")
    ids = stream(BASE["vocab_size"], 20)
    got = engine_logits(mnemo_bin, tmp_path, out, ids, segment_len=6)
    assert_logits_close(got, hf_logits(model, ids), what="directory")


@pytest.mark.parametrize("field,value,message", [
    ("hidden_activation", "gelu", "hidden_activation"),
    ("attention_bias", True, "attention_bias"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
    ("model_type", "gemma", "model_type"),
    ("query_pre_attn_scalar", 0, "query_pre_attn_scalar"),
    ("sliding_window", None, "sliding_window"),
])
def test_converter_refuses_what_it_cannot_express(field, value, message):
    model = random_hf_model(BASE)
    cfg = model.config.to_dict()
    cfg[field] = value
    with pytest.raises(ConversionError, match=message):
        convert(model.state_dict(), cfg)
