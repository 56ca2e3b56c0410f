"""Parity of the mnemo engine with Hugging Face Transformer-XL; converter too.

Small random HF `TransfoXLLMHeadModel`s, plain and with the adaptive embedding
and softmax of the published wt103 layout (cutoffs, div_val, d_embed, tied
weights and projections; one with wt103's whole vocabulary), are converted
with tools/convert_hf_transfo_xl.py and run through `$MNEMO_BIN logits` (see
README.md); the engine's log_softmax(logits) must match HF's
`prediction_scores` (log-probabilities) within
max|ours - hf| <= 1e-4 * max|hf| plus an elementwise allclose. Segment mode
feeds HF segments of N tokens, passing the returned `mems`; decode mode feeds
HF one token at a time (T = 1, generation semantics).

Oracle: HF 4.27 in eval mode, weights re-initialised with a seeded normal so
the outputs are far from uniform. The reference is HF run in float64: HF 4.27
cannot run TransfoXL in float64 unmodified (it masks the scores with
`finfo(float64).min` after casting them to float32, which overflows), so the
float64 run patches `torch.finfo` to return float32's limits for float64 --
the mask constant HF uses in float32 anyway; HF still rounds the masked
attention scores to float32 there. Every comparison also checks the unmodified
float32 HF run against the float64 one (<= 1e-5 * max|hf|), so the oracle's
own error is bounded in each test, far below the tolerance.

Tests that need the engine fail (never skip) when MNEMO_BIN is unset/missing.
Run: MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
         tests/reference/test_hf_parity.py
"""

import collections
import contextlib
import copy
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import mnemo_checkpoint

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

from transformers import TransfoXLConfig, TransfoXLLMHeadModel

ROOT = Path(__file__).resolve().parents[2]
CONVERTER = ROOT / "tools" / "convert_hf_transfo_xl.py"

from tools import convert_hf_transfo_xl as cv  # noqa: E402  (after the warning filters)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

RTOL = 1e-4            # max|ours - hf| <= RTOL * max|hf|
ORACLE_RTOL = 1e-5     # float32 HF vs float64 HF
INIT_STD = 0.1

# All without adaptive softmax; d_head 16. Together they cover same_length
# on/off, clamp_len < mem_len and 0, pre/post-LN, untie_r on/off, tied and
# untied head, H*d_head != d_model, and a non-default LayerNorm epsilon.
_BASE = dict(cutoffs=[], div_val=1, d_head=16, dropout=0.0, dropatt=0.0)
CASES = {
    "post-nosame-clamp5-untier-tied": dict(
        vocab_size=128, d_model=32, n_head=2, d_inner=64, n_layer=2,
        mem_len=12, clamp_len=5, same_length=False, pre_lnorm=False,
        untie_r=True, tie_word_embeddings=True),
    "post-same-clamp9-sharedr-untied": dict(
        vocab_size=200, d_model=64, n_head=4, d_inner=128, n_layer=3,
        mem_len=16, clamp_len=9, same_length=True, pre_lnorm=False,
        untie_r=False, tie_word_embeddings=False),
    "pre-same-clamp0-untier-tied": dict(
        vocab_size=256, d_model=48, n_head=3, d_inner=96, n_layer=2,
        mem_len=14, clamp_len=0, same_length=True, pre_lnorm=True,
        untie_r=True, tie_word_embeddings=True),
    "pre-nosame-clamp7-sharedr-untied-hdh32": dict(
        vocab_size=160, d_model=64, n_head=2, d_inner=128, n_layer=3,
        mem_len=12, clamp_len=7, same_length=False, pre_lnorm=True,
        untie_r=False, tie_word_embeddings=False),
    "post-same-clamp3-hdh64-eps1e-3": dict(
        vocab_size=300, d_model=32, n_head=4, d_inner=80, n_layer=2,
        mem_len=16, clamp_len=3, same_length=True, pre_lnorm=False,
        untie_r=True, tie_word_embeddings=True, layer_norm_epsilon=1e-3),
    "post-nosame-clamp0-sharedr": dict(
        vocab_size=100, d_model=32, n_head=2, d_inner=64, n_layer=2,
        mem_len=12, clamp_len=0, same_length=False, pre_lnorm=False,
        untie_r=False, tie_word_embeddings=True),
}

# Adaptive embedding and projected adaptive log-softmax (HF's
# AdaptiveEmbedding / ProjectedAdaptiveLogSoftmax). Together: div_val 1 with
# and without an embedding projection, div_val 2, 3 and 4, no cutoffs (one
# projected band), tied and untied weights, tied and untied projections
# (proj_share_all_but_first), pre- and post-LN, d_embed above and below
# d_model, and wt103's own vocabulary, cutoffs, div_val and tie_projs.
ADAPTIVE_CASES = {
    "adaptive-div1-tied": dict(
        vocab_size=200, d_model=32, d_embed=32, cutoffs=[50, 120], div_val=1,
        n_head=2, d_inner=64, n_layer=2, mem_len=12, clamp_len=5,
        tie_word_embeddings=True),
    "adaptive-div1-embed16-untied": dict(
        vocab_size=160, d_model=32, d_embed=16, cutoffs=[40], div_val=1,
        n_head=2, d_inner=64, n_layer=2, mem_len=12, clamp_len=0,
        same_length=True, tie_word_embeddings=False,
        proj_share_all_but_first=False),
    "adaptive-div2-tiedprojs": dict(
        vocab_size=300, d_model=32, d_embed=32, cutoffs=[60, 120, 200],
        div_val=2, n_head=2, d_inner=64, n_layer=2, mem_len=12, clamp_len=5,
        tie_word_embeddings=True, proj_share_all_but_first=True),
    "adaptive-div4-embed64-pre-untied": dict(
        vocab_size=256, d_model=48, d_embed=64, cutoffs=[64, 128], div_val=4,
        n_head=3, d_inner=96, n_layer=2, mem_len=10, clamp_len=0,
        pre_lnorm=True, untie_r=False, tie_word_embeddings=False,
        proj_share_all_but_first=False),
    "adaptive-div3-nocutoffs": dict(
        vocab_size=128, d_model=32, d_embed=24, cutoffs=[], div_val=3,
        n_head=2, d_inner=64, n_layer=2, mem_len=8, clamp_len=0,
        tie_word_embeddings=True, init_std=0.25),
    # wt103's vocabulary, cutoffs, div_val and projection sharing; fewer and
    # narrower layers.
    "wt103-shaped": dict(
        vocab_size=267735, d_model=64, d_embed=64,
        cutoffs=[20000, 40000, 200000], div_val=4, n_head=2, d_inner=128,
        n_layer=2, mem_len=8, clamp_len=0, tie_word_embeddings=True,
        proj_share_all_but_first=True),
}
ALL_CASES = {**CASES, **ADAPTIVE_CASES}


# --------------------------------------------------------------------------
# HF side


def make_hf_model(fields, seed):
    fields = dict(fields)
    # A case's own std where INIT_STD's outputs would be near uniform.
    std = fields.pop("init_std", INIT_STD)
    model = cv.random_hf_model({**_BASE, **fields}, seed=seed, std=std)
    assert not model.training
    return model


_real_finfo = torch.finfo


def _finfo_float64_as_float32(dtype=None):
    if dtype == torch.float64:
        return _real_finfo(torch.float32)
    return _real_finfo(dtype) if dtype is not None else _real_finfo()


def hf_logprobs(model, ids, seg_len):
    """HF prediction_scores [n, V], ids fed in segments, mems carried."""
    rows, mems = [], None
    mem_len = model.config.mem_len
    patch = (mock.patch("torch.finfo", _finfo_float64_as_float32)
             if next(model.parameters()).dtype == torch.float64
             else contextlib.nullcontext())
    with torch.no_grad(), patch:
        for start in range(0, len(ids), seg_len):
            seg = torch.tensor([ids[start:start + seg_len]], dtype=torch.long)
            out = model(input_ids=seg, mems=mems, return_dict=True)
            mems = out.mems
            # HF always keeps exactly mem_len rows (zero-initialised).
            assert all(m.shape[0] == mem_len for m in mems)
            rows.append(out.prediction_scores[0])
    return torch.cat(rows).double().numpy()


class Case:
    """A random HF model, its conversion on disk, and cached HF outputs."""

    def __init__(self, name, fields, seed, model_dir):
        self.name = name
        self.model32 = make_hf_model(fields, seed)
        self.model64 = copy.deepcopy(self.model32).double()
        self.config = self.model32.config
        self.model_dir = model_dir
        our_config, tensors = cv.convert(self.model32, self.config)
        cv.write_checkpoint(model_dir, our_config, tensors)
        self.our_config = our_config
        self._cache = {}

    def reference(self, ids, seg_len):
        key = (tuple(ids), seg_len)
        if key not in self._cache:
            self._cache[key] = (hf_logprobs(self.model64, ids, seg_len),
                                hf_logprobs(self.model32, ids, seg_len))
        return self._cache[key]


@pytest.fixture(scope="module")
def case_factory(tmp_path_factory):
    cases = {}

    def get(name):
        if name not in cases:
            seed = 1000 + list(ALL_CASES).index(name)
            cases[name] = Case(name, ALL_CASES[name], seed,
                               tmp_path_factory.mktemp(name.replace("-", "_")))
        return cases[name]

    return get


def token_ids(vocab_size, n, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (n,), generator=gen).tolist()
    ids[0], ids[1] = vocab_size - 1, 0  # both ends of the vocabulary
    return ids


# --------------------------------------------------------------------------
# Engine side


def engine_logits(mnemo_bin, model_dir, ids, seg_len, decode, work_dir):
    """Run `mnemo logits`; returns float32 logits [len(ids), vocab]."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ids_file = work_dir / "ids.txt"
    out_file = work_dir / "logits.f32"
    ids_file.write_text(" ".join(str(i) for i in ids) + "\n")
    if out_file.exists():
        out_file.unlink()
    cmd = [mnemo_bin, "logits", "--model", str(model_dir),
           "--ids", str(ids_file), "--segment-len", str(seg_len),
           "--output", str(out_file)]
    if decode:
        cmd.append("--decode")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"engine failed (exit {proc.returncode}): {' '.join(cmd)}"
                    f"\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    with open(model_dir / "config.json", encoding="utf-8") as f:
        vocab = json.load(f)["vocab_size"]
    data = np.fromfile(out_file, dtype="<f4")
    if data.size != len(ids) * vocab:
        pytest.fail(f"engine wrote {data.size} floats, expected "
                    f"{len(ids)} x {vocab}")
    return data.reshape(len(ids), vocab)


def assert_matches_hf(logits, ref64, ref32, seg_len, label):
    """Compare log_softmax(engine logits) with HF log-probabilities."""
    scale = float(np.abs(ref64).max())
    oracle_err = float(np.abs(ref32 - ref64).max())
    assert oracle_err <= ORACLE_RTOL * scale, (
        f"{label}: HF float32 vs float64 differ by {oracle_err:.3g}; the "
        "oracle is not trustworthy for this case")
    # Guard against a degenerate oracle (near-uniform outputs test nothing).
    spread = float((ref64.max(-1) - ref64.min(-1)).min())
    assert spread > 1.0, f"{label}: HF log-probs nearly uniform ({spread:.3g})"

    assert np.isfinite(logits).all(), f"{label}: engine logits not finite"
    ours = torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()
    err = np.abs(ours - ref64)
    pos_err = err.max(-1)
    if pos_err.max() > RTOL * scale:
        worst = int(pos_err.argmax())
        bad = np.nonzero(pos_err > RTOL * scale)[0]
        seg_errs = [float(pos_err[s:s + seg_len].max())
                    for s in range(0, len(pos_err), seg_len)]
        pytest.fail(
            f"{label}: max|ours - hf| = {pos_err.max():.3g} > "
            f"{RTOL:g} * {scale:.3g}; worst position {worst} "
            f"(segment {worst // seg_len}); {len(bad)}/{len(pos_err)} "
            f"positions out of tolerance, first {bad[:10].tolist()}; "
            f"max error per segment: "
            + ", ".join(f"{e:.2g}" for e in seg_errs[:12])
            + f"; float32-HF error {np.abs(ours - ref32).max():.3g}")
    np.testing.assert_allclose(ours, ref64, rtol=RTOL, atol=0.1 * RTOL * scale,
                               err_msg=label)


# --------------------------------------------------------------------------
# Parity tests (need MNEMO_BIN)


def _segment_lengths(mem_len):
    return (5, mem_len, mem_len + 7)


@pytest.mark.parametrize("name", list(ALL_CASES))
@pytest.mark.parametrize("seg_choice", [0, 1, 2],
                         ids=["seg5", "seg=mem_len", "seg>mem_len"])
def test_segments_match_hf(name, seg_choice, case_factory, mnemo_bin,
                           tmp_path):
    case = case_factory(name)
    mem_len = case.config.mem_len
    seg_len = _segment_lengths(mem_len)[seg_choice]
    # >= 3 full segments plus a short one, and long enough for real tokens
    # (not only the initial zero rows) to leave the memory.
    n = max(3 * seg_len + 2, 2 * mem_len + 3)
    ids = token_ids(case.config.vocab_size, n, seed=seg_len)
    ref64, ref32 = case.reference(ids, seg_len)
    logits = engine_logits(mnemo_bin, case.model_dir, ids, seg_len, False,
                           tmp_path)
    assert_matches_hf(logits, ref64, ref32, seg_len,
                      f"{name} segment_len={seg_len} n={n}")


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_decode_matches_hf(name, case_factory, mnemo_bin, tmp_path):
    case = case_factory(name)
    n = max(60, 3 * case.config.mem_len + 5)
    ids = token_ids(case.config.vocab_size, n, seed=7)
    ref64, ref32 = case.reference(ids, 1)
    logits = engine_logits(mnemo_bin, case.model_dir, ids, 1, True, tmp_path)
    assert_matches_hf(logits, ref64, ref32, 1, f"{name} decode n={n}")


# --------------------------------------------------------------------------
# Oracle sanity (no engine needed)


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_hf_oracle_is_stable(name, case_factory):
    case = case_factory(name)
    ids = token_ids(case.config.vocab_size, 40, seed=3)
    ref64, ref32 = case.reference(ids, 7)
    scale = np.abs(ref64).max()
    assert np.abs(ref32 - ref64).max() <= ORACLE_RTOL * scale
    assert (ref64.max(-1) - ref64.min(-1)).min() > 1.0
    other64, _ = case.reference(ids, 40)
    if case.config.same_length:
        # With same_length and HF's zero-initialised (always full) memory,
        # every query sees exactly itself plus its mem_len - 1 predecessors
        # (zero rows before the start), whatever the segmentation: HF is a
        # sliding window there, so segment and decode modes coincide.
        assert np.abs(other64 - ref64).max() <= 1e-9 * scale
    else:
        # Otherwise the segmentation changes the visible keys.
        assert np.abs(other64 - ref64).max() > 100 * RTOL * scale


# --------------------------------------------------------------------------
# Converter tests (no engine needed)


def expected_names(cfg, tied):
    names = {"word_emb.weight", "lm_head.bias"}
    if not tied:
        names.add("lm_head.weight")
    per_layer = ["attn.qkv.weight", "attn.r.weight", "attn.o.weight",
                 "attn.ln.weight", "attn.ln.bias", "ff.fc1.weight",
                 "ff.fc1.bias", "ff.fc2.weight", "ff.fc2.bias",
                 "ff.ln.weight", "ff.ln.bias"]
    if cfg.untie_r:
        per_layer += ["attn.r_w_bias", "attn.r_r_bias"]
    else:
        names |= {"r_w_bias", "r_r_bias"}
    for n in range(cfg.n_layer):
        names |= {f"layers.{n}.{p}" for p in per_layer}
    return names


def to_hf_state_dict(model, tensors):
    """Inverse mapping, written independently of the converter."""
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if key == "transformer.pos_emb.inv_freq":
            ours = None
        elif key == "transformer.word_emb.emb_layers.0.weight":
            ours = "word_emb.weight"
        elif key == "crit.out_layers.0.weight":
            ours = ("lm_head.weight" if "lm_head.weight" in tensors
                    else "word_emb.weight")
        elif key == "crit.out_layers.0.bias":
            ours = "lm_head.bias"
        elif key in ("transformer.r_w_bias", "transformer.r_r_bias"):
            ours = parts[1]
        elif parts[:2] == ["transformer", "layers"]:
            n, module, rest = parts[2], parts[3], parts[4:]
            if module == "dec_attn" and rest[0] in ("r_w_bias", "r_r_bias"):
                ours = (f"layers.{n}.attn.{rest[0]}"
                        if model.config.untie_r else rest[0])
            elif module == "dec_attn":
                sub = {"qkv_net": "qkv", "r_net": "r", "o_net": "o",
                       "layer_norm": "ln"}[rest[0]]
                ours = f"layers.{n}.attn.{sub}.{rest[1]}"
            else:
                sub = {"CoreNet": None, "layer_norm": "ln"}[rest[0]]
                if sub is None:
                    sub = {"0": "fc1", "3": "fc2"}[rest[1]]
                    rest = rest[1:]
                ours = f"layers.{n}.ff.{sub}.{rest[1]}"
        else:
            raise AssertionError(f"unmapped HF tensor {key}")
        out[key] = value.clone() if ours is None else tensors[ours].clone()
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_convert_names_shapes_and_round_trip(name):
    fields = CASES[name]
    model = make_hf_model(fields, seed=5)
    cfg = model.config
    config, tensors = cv.convert(model, cfg)

    tied = fields["tie_word_embeddings"]
    assert set(tensors) == expected_names(cfg, tied)
    H, dh, D = cfg.n_head, cfg.d_head, cfg.d_model
    assert tensors["word_emb.weight"].shape == (cfg.vocab_size, D)
    assert tensors["layers.0.attn.qkv.weight"].shape == (3 * H * dh, D)
    assert tensors["layers.0.attn.o.weight"].shape == (D, H * dh)
    assert tensors["layers.0.ff.fc1.weight"].shape == (cfg.d_inner, D)
    assert all(t.dtype == torch.float32 and t.is_contiguous()
               for t in tensors.values())

    assert config == {
        "architecture": "transfo_xl", "vocab_size": cfg.vocab_size,
        "d_model": D, "n_layer": cfg.n_layer, "n_head": H, "d_head": dh,
        "d_inner": cfg.d_inner, "mem_len": cfg.mem_len,
        "clamp_len": cfg.clamp_len, "same_length": cfg.same_length,
        "pre_lnorm": cfg.pre_lnorm, "untie_r": cfg.untie_r,
        "activation": "relu", "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "memory_init": "zeros", "tie_word_embeddings": tied,
        "torch_dtype": "float32", "eos_token_id": 0}

    # Mapping the tensors back onto a fresh HF model reproduces the outputs
    # bit for bit, so the conversion loses and permutes nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = TransfoXLLMHeadModel(TransfoXLConfig.from_dict(cfg.to_dict()))
    fresh.load_state_dict(to_hf_state_dict(fresh, tensors), strict=True)
    fresh.eval()
    ids = token_ids(cfg.vocab_size, 30, seed=1)
    assert np.array_equal(hf_logprobs(fresh, ids, 8),
                          hf_logprobs(model, ids, 8))


def _read_checkpoint(path):
    return mnemo_checkpoint.read_config(path), mnemo_checkpoint.load_tensors(path)


def _assert_same(a, b):
    assert a[0] == b[0]
    assert set(a[1]) == set(b[1])
    for k in a[1]:
        assert a[1][k].dtype == b[1][k].dtype, k
        assert torch.equal(a[1][k], b[1][k]), k


def test_convert_dirs_bin_and_safetensors_without_tied_tensors(tmp_path):
    # Tied head and shared r-biases: HF registers both under several names.
    model = make_hf_model(CASES["post-nosame-clamp0-sharedr"], seed=9)
    expected = cv.convert(model, model.config)

    model.save_pretrained(tmp_path / "hf_bin")  # pytorch_model.bin
    assert (tmp_path / "hf_bin" / "pytorch_model.bin").is_file()
    cv.convert_dir(tmp_path / "hf_bin", tmp_path / "ours_bin")
    _assert_same(_read_checkpoint(tmp_path / "ours_bin"), expected)

    # HF 4.27's safe_serialization refuses shared tensors, so write the
    # safetensors checkpoint by hand with every tied alias dropped.
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in model.state_dict().items()
          if k != "crit.out_layers.0.weight"
          and not k.endswith(("dec_attn.r_w_bias", "dec_attn.r_r_bias"))
          and k != "transformer.pos_emb.inv_freq"}
    hf_st = tmp_path / "hf_st"
    hf_st.mkdir()
    save_file(sd, str(hf_st / "model.safetensors"), metadata={"format": "pt"})
    (hf_st / "config.json").write_text(model.config.to_json_string())
    rc = cv.main([str(hf_st), str(tmp_path / "ours_st")])
    assert rc == 0
    _assert_same(_read_checkpoint(tmp_path / "ours_st"), expected)


def test_untied_head_identical_to_embedding_is_tied():
    fields = dict(CASES["post-same-clamp9-sharedr-untied"])
    model = make_hf_model(fields, seed=2)
    with torch.no_grad():
        model.crit.out_layers[0].weight.copy_(
            model.transformer.word_emb.emb_layers[0].weight)
    config, tensors = cv.convert(model, model.config)
    assert config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in tensors


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_dtype_cast_cli(dtype, tmp_path):
    model = make_hf_model(CASES["pre-same-clamp0-untier-tied"], seed=4)
    model.save_pretrained(tmp_path / "hf")
    proc = subprocess.run(
        [sys.executable, str(CONVERTER), str(tmp_path / "hf"),
         str(tmp_path / "ours"), "--dtype", dtype],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config, tensors = _read_checkpoint(tmp_path / "ours")
    assert config["torch_dtype"] == dtype
    want = cv.DTYPES[dtype]
    assert all(t.dtype == want for t in tensors.values())
    ref = model.state_dict()["transformer.word_emb.emb_layers.0.weight"]
    assert torch.equal(tensors["word_emb.weight"], ref.to(want))


def test_random_init_cli(tmp_path):
    fields = {"n_layer": 2, "d_model": 32, "n_head": 2, "d_head": 16,
              "d_inner": 64, "vocab_size": 90, "mem_len": 8, "clamp_len": 4,
              "tie_word_embeddings": False}
    proc = subprocess.run(
        [sys.executable, str(CONVERTER), "--random-init", json.dumps(fields),
         "--seed", "11", "--save-hf", str(tmp_path / "hf"),
         str(tmp_path / "ours")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = _read_checkpoint(tmp_path / "ours")
    assert ours[0]["vocab_size"] == 90 and ours[0]["mem_len"] == 8
    assert ours[0]["tie_word_embeddings"] is False

    # The saved HF model is the one that was converted.
    cv.convert_dir(tmp_path / "hf", tmp_path / "again")
    _assert_same(_read_checkpoint(tmp_path / "again"), ours)
    # Seeded: the same seed gives the same weights, another seed does not.
    same = cv.convert(cv.random_hf_model(fields, seed=11), None)
    other = cv.convert(cv.random_hf_model(fields, seed=12), None)
    _assert_same(same, ours)
    assert not torch.equal(other[1]["word_emb.weight"],
                           ours[1]["word_emb.weight"])


# Rejected configurations: (config.json overrides, field names the error must
# mention), on a small valid model's state dict (HF cannot build some of them).
_SMALL = dict(vocab_size=120, d_model=32, d_embed=32, n_head=2, d_head=16,
              d_inner=64, n_layer=2, mem_len=8, clamp_len=4, cutoffs=[],
              div_val=1)
REJECTED = {
    "cutoff-at-vocab": (dict(cutoffs=[120]), ["cutoffs"]),
    "cutoffs-descending": (dict(cutoffs=[80, 40]), ["cutoffs"]),
    "cutoffs-repeated": (dict(cutoffs=[40, 40]), ["cutoffs"]),
    "band-without-columns": (dict(cutoffs=[40, 80], div_val=8),
                             ["div_val"]),
    "attn-type": (dict(attn_type=1), ["attn_type"]),
    "sampled-softmax": (dict(sample_softmax=16), ["sample_softmax"]),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_rejects_inexpressible_models(name):
    overrides, fields = REJECTED[name]
    model = cv.random_hf_model(_SMALL, seed=0)
    config = {**model.config.to_dict(), **overrides}
    with pytest.raises(cv.ConversionError) as err:
        cv.convert(model.state_dict(), config)
    for field in fields:
        assert field in str(err.value)


def expected_adaptive_names(cfg):
    """Our adaptive.* names for an HF config, written from
    docs/checkpoint-format.md independently of the converter."""
    bands = len(cfg.cutoffs) + 1
    tables = bands if cfg.div_val > 1 else 1
    projected = cfg.div_val > 1 or cfg.d_embed != cfg.d_model
    names = set()
    for i in range(tables):
        names |= {f"adaptive.emb.{i}.weight", f"adaptive.head.{i}.bias"}
        if projected:
            names.add(f"adaptive.emb.{i}.proj")
        if not cfg.tie_word_embeddings:
            names.add(f"adaptive.head.{i}.weight")
    if projected:
        names |= {f"adaptive.head.{i}.proj" for i in range(bands)}
    if cfg.cutoffs:
        names |= {"adaptive.head.cluster.weight", "adaptive.head.cluster.bias"}
    return names


def adaptive_to_hf(model, tensors):
    """HF's adaptive tensors from ours (the inverse mapping), tied ones
    through what they are tied to."""
    out = {}
    for key in model.state_dict():
        parts = key.split(".")
        if key.startswith("transformer.word_emb.emb_layers."):
            out[key] = tensors[f"adaptive.emb.{parts[3]}.weight"]
        elif key.startswith("transformer.word_emb.emb_projs."):
            out[key] = tensors[f"adaptive.emb.{parts[3]}.proj"]
        elif key.startswith("crit.out_layers.") and parts[3] == "weight":
            name = f"adaptive.head.{parts[2]}.weight"
            out[key] = tensors.get(name,
                                   tensors[f"adaptive.emb.{parts[2]}.weight"])
        elif key.startswith("crit.out_layers."):
            out[key] = tensors[f"adaptive.head.{parts[2]}.bias"]
        elif key.startswith("crit.out_projs."):
            out[key] = tensors[f"adaptive.head.{parts[2]}.proj"].t()
        elif key in ("crit.cluster_weight", "crit.cluster_bias"):
            part = key.rsplit("_", 1)[1]  # weight / bias
            out[key] = tensors[f"adaptive.head.cluster.{part}"]
    return out


@pytest.mark.parametrize("name", [n for n in ADAPTIVE_CASES
                                  if n != "wt103-shaped"])
def test_convert_adaptive_names_and_round_trip(name):
    model = make_hf_model(ADAPTIVE_CASES[name], seed=5)
    cfg = model.config
    config, tensors = cv.convert(model, cfg)
    plain = expected_names(cfg, True) - {"word_emb.weight", "lm_head.bias"}
    assert set(tensors) == plain | expected_adaptive_names(cfg)
    assert config["cutoffs"] == list(cfg.cutoffs)
    assert config["div_val"] == cfg.div_val
    assert config["d_embed"] == cfg.d_embed
    assert config["tie_word_embeddings"] == cfg.tie_word_embeddings
    widths = [cfg.d_embed // cfg.div_val ** i
              for i in range(len(cfg.cutoffs) + 1)]
    if "adaptive.head.0.proj" in tensors:
        for i, w in enumerate(widths):
            assert tensors[f"adaptive.head.{i}.proj"].shape == (w, cfg.d_model)

    # Mapping ours back onto a fresh HF model reproduces the outputs bit for
    # bit: nothing lost, permuted or transposed the wrong way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = TransfoXLLMHeadModel(TransfoXLConfig.from_dict(cfg.to_dict()))
    sd = dict(fresh.state_dict())
    sd.update(adaptive_to_hf(fresh, tensors))
    layer_keys = [k for k in sd if k.startswith("transformer.layers")
                  or k in ("transformer.r_w_bias", "transformer.r_r_bias")]
    own = model.state_dict()
    for k in layer_keys:  # (the layers' mapping is tested above)
        sd[k] = own[k].clone()
    fresh.load_state_dict(sd, strict=True)
    fresh.eval()
    ids = token_ids(cfg.vocab_size, 30, seed=1)
    assert np.array_equal(hf_logprobs(fresh, ids, 8),
                          hf_logprobs(model, ids, 8))


def test_tied_projections_follow_tie_projs():
    # wt103's sharing: head projection 0 is its own, 1.. are the embedding's.
    model = make_hf_model(ADAPTIVE_CASES["adaptive-div2-tiedprojs"], seed=6)
    assert list(model.config.tie_projs) == [False, True, True, True]
    _, tensors = cv.convert(model, model.config)
    emb = model.transformer.word_emb.emb_projs
    assert not torch.equal(tensors["adaptive.head.0.proj"], emb[0].t())
    for i in (1, 2, 3):
        assert torch.equal(tensors[f"adaptive.head.{i}.proj"], emb[i].t())
    # A file whose tied copies disagree converts as HF loads it: tied.
    sd = dict(model.state_dict())
    sd["crit.out_projs.2"] = torch.zeros_like(sd["crit.out_projs.2"])
    sd["crit.out_layers.1.weight"] = torch.zeros_like(
        sd["crit.out_layers.1.weight"])
    _, again = cv.convert(sd, model.config)
    assert set(again) == set(tensors)
    for k in tensors:
        assert torch.equal(again[k], tensors[k]), k


def test_cli_converts_a_saved_adaptive_checkpoint(tmp_path):
    model = make_hf_model(ADAPTIVE_CASES["adaptive-div4-embed64-pre-untied"],
                          seed=8)
    model.save_pretrained(tmp_path / "hf")
    proc = subprocess.run(
        [sys.executable, str(CONVERTER), str(tmp_path / "hf"),
         str(tmp_path / "ours"), "--dtype", "bfloat16"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config, tensors = _read_checkpoint(tmp_path / "ours")
    want = cv.convert(model, model.config, dtype="bfloat16")
    _assert_same((config, tensors), want)
    assert config["torch_dtype"] == "bfloat16"


def _vocab_pkl(tmp_path, state):
    hf = tmp_path / "hf"
    hf.mkdir(exist_ok=True)
    with open(hf / "vocab.pkl", "wb") as f:
        pickle.dump(state, f)
    return hf


class _Hostile:
    """Unpickling this runs a shell command, unless the unpickler refuses
    to call what the file names."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_vocabulary_reading_runs_nothing_from_the_pickle(tmp_path):
    marker = tmp_path / "ran"
    symbols = ["<eos>", "<unk>", "the", "'s"]
    hf = _vocab_pkl(tmp_path, {"idx2sym": symbols, "lower_case": False,
                               "delimiter": None, "hook": _Hostile(marker),
                               "sym2idx": collections.OrderedDict(
                                   (s, i) for i, s in enumerate(symbols))})
    assert cv.read_hf_vocabulary(hf) == symbols
    assert not marker.exists()
    # Without idx2sym the order comes from sym2idx.
    hf = _vocab_pkl(tmp_path, {"sym2idx": {"b": 1, "a": 0}, "x": _Hostile(marker)})
    assert cv.read_hf_vocabulary(hf) == ["a", "b"]
    assert not marker.exists()


@pytest.mark.parametrize("state,message", [
    ({"idx2sym": ["a"], "lower_case": True}, "lower_case"),
    ({"idx2sym": ["a"], "delimiter": ""}, "delimiter"),
    ({"idx2sym": ["a", "b c"]}, "whitespace"),
    ({"idx2sym": ["a", "a"]}, "repeats"),
    ({"idx2sym": ["a", ""]}, "whitespace"),
    ({"counter": {}}, "idx2sym"),
    ([1, 2], "vocab.pkl"),
])
def test_vocabulary_our_tokenizer_cannot_reproduce_is_refused(tmp_path, state,
                                                              message):
    with pytest.raises(cv.ConversionError, match=message):
        cv.read_hf_vocabulary(_vocab_pkl(tmp_path, state))


def test_a_truncated_vocab_pkl_is_refused(tmp_path):
    hf = _vocab_pkl(tmp_path, {"idx2sym": ["a", "b"]})
    data = (hf / "vocab.pkl").read_bytes()
    (hf / "vocab.pkl").write_bytes(data[:len(data) // 2])
    with pytest.raises(cv.ConversionError, match="not a TransfoXLTokenizer"):
        cv.read_hf_vocabulary(hf)


def test_rejects_broken_state_dicts():
    model = cv.random_hf_model(_SMALL, seed=0)
    cfg = model.config

    sd = dict(model.state_dict())
    del sd["transformer.layers.1.pos_ff.CoreNet.3.bias"]
    with pytest.raises(cv.ConversionError,
                       match=r"transformer\.layers\.1\.pos_ff\.CoreNet\.3"):
        cv.convert(sd, cfg)

    sd = dict(model.state_dict())
    sd["crit.cluster_weight"] = torch.zeros(1, 32)
    with pytest.raises(cv.ConversionError, match="crit.cluster_weight"):
        cv.convert(sd, cfg)

    sd = dict(model.state_dict())
    sd["transformer.layers.0.dec_attn.qkv_net.weight"] = torch.zeros(90, 32)
    with pytest.raises(cv.ConversionError, match="shape"):
        cv.convert(sd, cfg)

    untied = {**cfg.to_dict(), "tie_word_embeddings": False}
    sd = dict(model.state_dict())
    del sd["crit.out_layers.0.weight"]
    with pytest.raises(cv.ConversionError, match="tie_word_embeddings"):
        cv.convert(sd, untied)
