"""Hugging Face MistralForCausalLM (transformers 4.44.2, eager attention) converted by
tools/convert_hf_mistral.py and run by the engine: logits over a stream fed in one call, in
segments around the window's length and token by token equal Hugging Face's over the whole
stream in float64 (rotary positions, RMSNorm, the gated MLP, grouped-query attention, sliding
windows and the full-attention layout with its position limit), 16-bit checkpoints, the
converter's directory form and its refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mnemo_checkpoint import write_checkpoint
from parity_common import assert_logits_close, engine_logits
from tools import convert_hf_mistral
from tools.convert_hf_mistral import ConversionError, convert, inv_freq, random_hf_model

BASE = dict(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, sliding_window=7,
            max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=False)

# name: MistralConfig fields over BASE.
LAYOUTS = {
    "gqa": {},
    "mha_tied": dict(num_key_value_heads=6, sliding_window=16, rope_theta=1e6,
                     tie_word_embeddings=True),
    "mqa_head_dim": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                         sliding_window=5, num_hidden_layers=3),
    "window_1": dict(sliding_window=1),
    "full_attention": dict(sliding_window=None, max_position_embeddings=64),
}


def hf_logits(model, ids):
    """Hugging Face's logits over the whole stream, in float64."""
    with torch.no_grad():
        return model.double()(torch.tensor([ids]), use_cache=False).logits[0].numpy()


def converted(tmp_path, fields, seed=3, dtype=None, converter=convert_hf_mistral):
    """(the random Hugging Face model, our config, our checkpoint's directory)."""
    model = converter.random_hf_model(fields, seed=seed)
    config, tensors = converter.convert(model, dtype=dtype)
    out = tmp_path / "ours"
    write_checkpoint(str(out), config, tensors)
    return model, config, out


def round_parameters(model, dtype):
    """The model's parameters rounded to `dtype` (kept in their own type): a 16-bit checkpoint's
    values. Not model.to(dtype), which would round the rotary frequencies too, which Hugging
    Face keeps float32 in a model loaded as 16-bit."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(p.dtype))
    return model


def stream(vocab, n, seed=11):
    return np.random.default_rng(seed).integers(0, vocab, size=n).tolist()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_segments_and_decode_match_hf(tmp_path, mnemo_bin, layout):
    fields = {**BASE, **LAYOUTS[layout]}
    model, config, out = converted(tmp_path, fields)
    window = config["layers"][0]["window"]
    n = 40 if fields["sliding_window"] is None else 3 * window + 13
    ids = stream(fields["vocab_size"], n)
    want = hf_logits(model, ids)
    # One call, segments around the window's length (a segment's keys reach into the ring by
    # up to W − 1 positions), and token by token.
    for seg in sorted({n, max(1, window - 1), window, window + 1, 3}):
        got = engine_logits(mnemo_bin, tmp_path, out, ids, segment_len=seg)
        assert_logits_close(got, want, what=f"{layout}, segments of {seg}")
    got = engine_logits(mnemo_bin, tmp_path, out, ids, decode=True)
    assert_logits_close(got, want, what=f"{layout}, token by token")


def test_long_stream_turns_by_far_positions(tmp_path, mnemo_bin):
    """1500 positions through a window of 8 (the ring wraps ~190 times): the rotary angles at
    far positions are Hugging Face's float32 angles."""
    fields = {**BASE, "sliding_window": 8, "rope_theta": 500.0}
    model, _, out = converted(tmp_path, fields, seed=5)
    ids = stream(fields["vocab_size"], 1500, seed=2)
    want = hf_logits(model, ids)
    got = engine_logits(mnemo_bin, tmp_path, out, ids, segment_len=256)
    assert_logits_close(got, want, what="1500 tokens in segments of 256")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_checkpoints_match_hf_on_their_weights(tmp_path, mnemo_bin, dtype):
    """A 16-bit checkpoint keeps its weights 16-bit and computes in float32: it matches Hugging
    Face run in float64 on the same rounded weights; the rotary frequencies stay float32."""
    model = round_parameters(random_hf_model(BASE, seed=7), getattr(torch, dtype))
    config, tensors = convert(model, dtype=dtype)
    assert config["torch_dtype"] == dtype
    assert tensors["rotary.inv_freq"].dtype == torch.float32
    assert tensors["layers.0.attn.norm.weight"].dtype == torch.float32
    assert tensors["word_emb.weight"].dtype == getattr(torch, dtype)
    out = tmp_path / "ours"
    write_checkpoint(str(out), config, tensors)
    ids = stream(BASE["vocab_size"], 30)
    got = engine_logits(mnemo_bin, tmp_path, out, ids, segment_len=9)
    assert_logits_close(got, hf_logits(model, ids), what=dtype)


@pytest.mark.parametrize("theta,dim", [(10000.0, 8), (10000.0, 128), (1e6, 64), (5e5, 256)])
def test_stored_frequencies_are_hf_buffers(theta, dim):
    fields = {**BASE, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": dim,
              "rope_theta": theta, "num_hidden_layers": 1}
    model = random_hf_model(fields)
    buffer = model.model.layers[0].self_attn.rotary_emb.inv_freq.float()
    assert torch.equal(inv_freq(model.config.to_dict()), buffer)


def test_full_attention_layout_refuses_past_its_context(tmp_path, mnemo_bin):
    fields = {**BASE, "sliding_window": None, "max_position_embeddings": 32}
    _, config, out = converted(tmp_path, fields)
    assert config["max_positions"] == 32 and config["layers"][0]["window"] == 32
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(" ".join(map(str, stream(BASE["vocab_size"], 33))))
    proc = subprocess.run([mnemo_bin, "logits", "--model", str(out), "--ids", str(ids_file),
                           "--segment-len", "8", "--output", str(tmp_path / "x.f32")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "position limit of 32" in proc.stderr and "max_positions" in proc.stderr


def test_directory_conversion_from_save_pretrained(tmp_path, mnemo_bin):
    """The CLI converts a save_pretrained directory (safetensors, lm_head tied or not) to the
    same checkpoint as the in-memory conversion."""
    for tied in (False, True):
        model = random_hf_model({**BASE, "tie_word_embeddings": tied}, seed=9)
        hf_dir, out = tmp_path / f"hf{tied}", tmp_path / f"ours{tied}"
        model.save_pretrained(str(hf_dir))
        proc = subprocess.run([sys.executable, "-m", "tools.convert_hf_mistral", str(hf_dir),
                               str(out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "6/2 heads, window 7" in proc.stdout
        with open(out / "config.json", encoding="utf-8") as f:
            assert json.load(f)["tie_word_embeddings"] is tied
        ids = stream(BASE["vocab_size"], 20)
        got = engine_logits(mnemo_bin, tmp_path, out, ids, segment_len=6)
        assert_logits_close(got, hf_logits(model, ids), what=f"tied={tied}")


@pytest.mark.parametrize("field,value,message", [
    ("hidden_act", "gelu", "hidden_act"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
    ("model_type", "llama", "model_type"),
    ("num_key_value_heads", 4, "num_key_value_heads"),
    ("sliding_window", 0, "sliding_window"),
])
def test_converter_refuses_what_it_cannot_express(field, value, message):
    model = random_hf_model(BASE)
    cfg = model.config.to_dict()
    cfg[field] = value
    with pytest.raises(ConversionError, match=message):
        convert(model.state_dict(), cfg)


def test_converter_refuses_unknown_tensors():
    model = random_hf_model(BASE)
    sd = dict(model.state_dict())
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(48)
    with pytest.raises(ConversionError, match="unexpected tensors"):
        convert(sd, model.config)
