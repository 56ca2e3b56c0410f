"""Parity tests: mnemo's Transformer-XL against the float64 PyTorch oracle.

Two groups of tests:

* ``test_reference_only_*`` check the oracle itself (mnemo_reference) and
  need no engine: segment/token/whole-document consistency, checkpoint I/O,
  the CLI, and agreement with Hugging Face's TransfoXLLMHeadModel.
* ``test_engine_*`` run ``$MNEMO_BIN logits ...`` (see README.md) on random
  float32/float16/bfloat16 checkpoints and compare with the oracle run in
  float64 on the same stored weights. They fail (never skip) when
  ``MNEMO_BIN`` is unset or does not point at an executable.

Run::

    MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest tests/reference
    .venv/bin/python -m pytest tests/reference -k reference_only
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mnemo_checkpoint
from mnemo_reference import (
    DTYPES,
    TransfoXLReference,
    load_checkpoint,
    random_checkpoint,
    stream_logits,
)

from parity_common import (
    assert_logits_close,
    base_config as _config,
    decode_document as _decode_document,
    document as _document,
    engine_logits,
    oracle_logits,
    segment_document as _segment_document,
    segment_len as _segment_len,
    write_ids,
)

# --------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------


CONFIGS = {
    # Hugging Face defaults: post-LN, relu, zero-initialised memory.
    "post_relu_zeros": _config(),
    # Original-PyTorch style start, pre-LN, gelu, same_length, clamp < mem,
    # shared r biases, untied head, H*d_h != D.
    "pre_gelu_empty_samelen": _config(
        vocab_size=150, d_model=48, n_layer=3, n_head=3, d_head=12,
        d_inner=96, mem_len=12, clamp_len=5, same_length=True,
        pre_lnorm=True, untie_r=False, activation="gelu",
        memory_init="empty", tie_word_embeddings=False),
    "post_gelu_zeros_samelen": _config(
        vocab_size=200, d_model=64, n_layer=2, n_head=2, d_head=20,
        d_inner=128, mem_len=10, clamp_len=6, same_length=True,
        activation="gelu", layer_norm_epsilon=1e-6,
        tie_word_embeddings=False),
    "pre_relu_empty_shared": _config(
        vocab_size=97, d_model=40, n_layer=4, n_head=5, d_head=8,
        d_inner=80, mem_len=16, pre_lnorm=True, untie_r=False,
        memory_init="empty"),
    "post_relu_zeros_samelen_shared": _config(
        vocab_size=50, n_layer=3, n_head=4, d_head=6, d_inner=48,
        mem_len=8, clamp_len=3, same_length=True, untie_r=False),
    "pre_relu_zeros_samelen": _config(
        vocab_size=120, d_model=48, n_head=6, d_head=8, d_inner=96,
        mem_len=9, clamp_len=7, same_length=True, pre_lnorm=True,
        tie_word_embeddings=False, eos_token_id=0),
}

# Configurations Hugging Face's TransfoXLLMHeadModel can express (relu FFN).
HF_CONFIGS = [name for name, cfg in CONFIGS.items()
              if cfg["activation"] == "relu"]

SEGMENT_KINDS = ["short", "equal", "long"]


def _seed(name: str) -> int:
    return sorted(CONFIGS).index(name) + 17


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _long_memory_model(name: str, mem_len: int = 64) -> TransfoXLReference:
    """Empty-start model; by default memory never drops a row of 40 tokens."""
    cfg = dict(CONFIGS[name], memory_init="empty", mem_len=mem_len,
               same_length=False)
    model = TransfoXLReference(cfg)
    gen = torch.Generator().manual_seed(_seed(name))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.double().eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_segments_equal_single_pass(name):
    model = _long_memory_model(name)
    ids = _document(model.config, 40)
    whole = model(torch.tensor([ids]))[0][0]
    for seg in (1, 3, 7, 40):
        chunked = stream_logits(model, ids, seg)
        err = (chunked - whole).abs().max().item()
        assert err <= 1e-10 * whole.abs().max().item(), (seg, err)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_tokens_equal_segments(name):
    model = _long_memory_model(name)
    ids = _document(model.config, 40)
    by_token = stream_logits(model, ids, decode=True)
    by_segment = stream_logits(model, ids, 9)
    err = (by_token - by_segment).abs().max().item()
    assert err <= 1e-10 * by_segment.abs().max().item(), err


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_memory_update(name):
    """new_mems = last mem_len rows of cat(mem, layer input)."""
    model = _long_memory_model(name, mem_len=5)
    ids = torch.tensor([_document(model.config, 7)])
    _, mems = model(ids[:, :3])
    assert [m.shape[1] for m in mems] == [3] * len(model.layers)
    _, mems = model(ids[:, 3:], mems)
    assert [m.shape[1] for m in mems] == [5] * len(model.layers)
    # Layer 0's memory is the scaled embedding of the last 5 tokens.
    emb = model.word_emb(ids[0, 2:]) * model.config["d_model"] ** 0.5
    torch.testing.assert_close(mems[0][0], emb, rtol=0, atol=0)


def test_reference_only_same_length_mask():
    model = TransfoXLReference(CONFIGS["pre_gelu_empty_samelen"])
    attn = model.layers[0].attn
    mem_len = attn.mem_len
    for M, T in [(0, 5), (4, 3), (mem_len, 1), (mem_len, 7), (mem_len - 2, 6),
                 (mem_len, mem_len + 4)]:
        allowed = ~attn.attention_mask(T, M)
        for i in range(T):
            cols = torch.nonzero(allowed[i]).flatten().tolist()
            # Keys up to M + i; when K > mem_len at most mem_len of them.
            first = max(0, M + i + 1 - mem_len) if M + T > mem_len else 0
            want = list(range(first, M + i + 1))
            assert cols == want, (M, T, i)


@pytest.mark.parametrize("tie,untie_r", [(True, True), (False, False)])
def test_reference_only_tensor_names(tie, untie_r):
    cfg = _config(n_layer=2, tie_word_embeddings=tie, untie_r=untie_r)
    names = set(TransfoXLReference(cfg).state_dict())
    want = {"word_emb.weight", "lm_head.bias"}
    if not tie:
        want.add("lm_head.weight")
    if not untie_r:
        want |= {"r_w_bias", "r_r_bias"}
    for n in range(2):
        p = f"layers.{n}."
        want |= {p + s for s in (
            "attn.qkv.weight", "attn.r.weight", "attn.o.weight",
            "attn.ln.weight", "attn.ln.bias", "ff.fc1.weight", "ff.fc1.bias",
            "ff.fc2.weight", "ff.fc2.bias", "ff.ln.weight", "ff.ln.bias")}
        if untie_r:
            want |= {p + "attn.r_w_bias", p + "attn.r_r_bias"}
    assert names == want


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_reference_only_checkpoint_roundtrip(tmp_path, dtype):

    cfg = CONFIGS["pre_gelu_empty_samelen"]
    made = random_checkpoint(cfg, tmp_path, seed=3, dtype=DTYPES[dtype])
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["torch_dtype"] == dtype
    stored = mnemo_checkpoint.load_tensors(tmp_path)
    assert set(stored) == set(made.state_dict())
    assert all(t.dtype == DTYPES[dtype] for t in stored.values())
    loaded = load_checkpoint(tmp_path)
    for name, value in made.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    # Weights must be non-trivial and rounded to the storage dtype.
    ids = _document(cfg, 20)
    logits = stream_logits(loaded.double(), ids, 6)
    assert logits.std(dim=-1).min() > 0.1


def test_reference_only_cli(tmp_path):
    script = ["-m", "mnemo_reference"]
    cfg = CONFIGS["post_gelu_zeros_samelen"]
    ckpt = tmp_path / "ckpt"
    subprocess.run([sys.executable, *script, "make-checkpoint",
                    "--config-json", json.dumps(cfg), "--out", str(ckpt),
                    "--seed", "5"], check=True)
    ids = _decode_document(cfg)
    write_ids(tmp_path / "ids.txt", ids)
    for extra in ([], ["--decode"]):
        out = tmp_path / "out.f32"
        subprocess.run([sys.executable, *script, "logits", "--model",
                        str(ckpt), "--ids", str(tmp_path / "ids.txt"),
                        "--segment-len", "7", "--output", str(out)] + extra,
                       check=True)
        got = np.fromfile(out, dtype="<f4").reshape(len(ids), -1)
        want = oracle_logits(ckpt, ids, 7, decode=bool(extra))
        np.testing.assert_array_equal(got, want.astype(np.float32))


def _hf_model(model: TransfoXLReference):
    """Hugging Face TransfoXLLMHeadModel (float64) with the same weights."""
    import transformers

    cfg = model.config
    hf_cfg = transformers.TransfoXLConfig(
        vocab_size=cfg["vocab_size"], cutoffs=[], d_model=cfg["d_model"],
        d_embed=cfg["d_model"], n_head=cfg["n_head"], d_head=cfg["d_head"],
        d_inner=cfg["d_inner"], div_val=1, pre_lnorm=cfg["pre_lnorm"],
        n_layer=cfg["n_layer"], mem_len=cfg["mem_len"],
        clamp_len=cfg["clamp_len"], same_length=cfg["same_length"],
        proj_share_all_but_first=False, adaptive=True, dropout=0.0,
        dropatt=0.0, untie_r=cfg["untie_r"],
        layer_norm_epsilon=cfg["layer_norm_epsilon"],
        tie_word_embeddings=cfg["tie_word_embeddings"])
    hf = transformers.TransfoXLLMHeadModel(hf_cfg).double().eval()
    ours = {k: v.double() for k, v in model.state_dict().items()}
    mapped = {
        "transformer.word_emb.emb_layers.0.weight": ours["word_emb.weight"],
        "crit.out_layers.0.weight": model.output_weight().double(),
        "crit.out_layers.0.bias": ours["lm_head.bias"],
    }
    if not cfg["untie_r"]:  # HF also lists the shared pair under each layer
        for b in ("r_w_bias", "r_r_bias"):
            mapped["transformer." + b] = ours[b]
            for n in range(cfg["n_layer"]):
                mapped[f"transformer.layers.{n}.dec_attn.{b}"] = ours[b]
    names = {"attn.qkv": "dec_attn.qkv_net", "attn.r": "dec_attn.r_net",
             "attn.o": "dec_attn.o_net", "attn.ln": "dec_attn.layer_norm",
             "attn": "dec_attn", "ff.fc1": "pos_ff.CoreNet.0",
             "ff.fc2": "pos_ff.CoreNet.3", "ff.ln": "pos_ff.layer_norm"}
    for key, value in ours.items():
        if not key.startswith("layers."):
            continue
        _, n, rest = key.split(".", 2)
        module, leaf = rest.rsplit(".", 1)
        mapped[f"transformer.layers.{n}.{names[module]}.{leaf}"] = value
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"transformer.pos_emb.inv_freq",
                            "crit.out_layers.0.weight"}, missing
    # HF keeps inv_freq as a float32-rounded buffer; use exact values.
    d = cfg["d_model"]
    exact = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    hf.transformer.pos_emb.inv_freq.copy_(exact)
    return hf


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("decode", [False, True], ids=["segment", "decode"])
@pytest.mark.parametrize("name", HF_CONFIGS)
def test_reference_only_matches_hugging_face(monkeypatch, name, decode):
    """Log-probs and memories equal HF's in float64 (independent check).

    HF 4.27 rounds masked attention scores through float32 (``.float()``
    before ``masked_fill``), so agreement is ~1e-8, not 1e-12; any
    semantic difference (mask, memory, rel-shift) is orders larger.
    """
    # That .float() also makes finfo(float64).min overflow in masked_fill;
    # give it float32's min instead (exp() of either is exactly 0).
    finfo = torch.finfo
    monkeypatch.setattr(
        torch, "finfo",
        lambda dt=None: finfo(torch.float32 if dt == torch.float64 else dt))
    cfg = CONFIGS[name]
    model = TransfoXLReference(cfg)
    _init = torch.Generator().manual_seed(_seed(name))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=_init))
    model = model.double().eval()
    hf = _hf_model(model)

    seg = 1 if decode else _segment_len(cfg, "long")
    ids = torch.tensor([_segment_document(cfg, seg)])
    B, D, L = 1, cfg["d_model"], cfg["n_layer"]
    hf_mems = None
    if cfg["memory_init"] == "empty":
        hf_mems = [torch.zeros(0, B, D, dtype=torch.float64)] * L
    mems = None
    for start in range(0, ids.shape[1], seg):
        chunk = ids[:, start:start + seg]
        logits, mems = model(chunk, mems)
        with torch.no_grad():
            out = hf(input_ids=chunk, mems=hf_mems)
        hf_mems = out.mems
        ours_lp = torch.log_softmax(logits, dim=-1)
        torch.testing.assert_close(ours_lp, out.prediction_scores,
                                   rtol=1e-6, atol=1e-6)
        for mine, theirs in zip(mems, hf_mems):
            torch.testing.assert_close(mine, theirs.transpose(0, 1),
                                       rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SEGMENT_KINDS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_segments(mnemo_bin, tmp_path, name, kind):
    cfg = CONFIGS[name]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=_seed(name))
    seg = _segment_len(cfg, kind)
    ids = _segment_document(cfg, seg)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg)
    want = oracle_logits(ckpt, ids, seg)
    assert_logits_close(got, want, what=f"{name} segment_len={seg}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_decode(mnemo_bin, tmp_path, name):
    cfg = CONFIGS[name]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=_seed(name))
    ids = _decode_document(cfg)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, decode=True)
    want = oracle_logits(ckpt, ids, decode=True)
    assert_logits_close(got, want, what=f"{name} decode")


@pytest.mark.parametrize("decode", [False, True], ids=["segment", "decode"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["post_gelu_zeros_samelen",
                                  "pre_gelu_empty_samelen",
                                  "post_relu_zeros_samelen_shared"])
def test_engine_low_precision_checkpoint(mnemo_bin, tmp_path, name, dtype,
                                         decode):
    """fp16/bf16 storage: both sides use the same rounded weights."""
    cfg = CONFIGS[name]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=_seed(name), dtype=DTYPES[dtype])
    seg = _segment_len(cfg, "long")
    ids = _decode_document(cfg) if decode else _segment_document(cfg, seg)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg, decode=decode)
    want = oracle_logits(ckpt, ids, seg, decode=decode)
    assert_logits_close(got, want, what=f"{name} {dtype} decode={decode}")
