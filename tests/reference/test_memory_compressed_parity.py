"""Memory-compressed layers: oracle checks and engine parity.

A ``layers`` entry ``{"attention": "memory_compressed", "compression_rate":
c, "cmem_len": S}`` (mnemo_reference, docs/checkpoint-format.md) is Liu et
al.'s memory-compressed attention in causal form: blocks of c positions are
compressed by a strided convolution over the keys and one over the values
(``attn.compress_k`` / ``attn.compress_v``, Conv1d(H d_h, H d_h, c,
stride=c)); the query at position i (block b = i // c) sees the compressed
blocks max(0, b - S) .. b - 1 and the keys of positions b c .. i, ``score =
q.k / sqrt(d_h)``. The engine keeps S compressed rows and the open block's
c - 1 rows; the oracle keeps every key and recomputes the convolutions.

* ``test_reference_only_memory_compressed_*`` check the oracle itself: it
  equals a loop that sums each block's convolution tap by tap and lists each
  query's keys, one block is plain causal attention, outputs and state do
  not depend on how a stream is split, checkpoint I/O and validation.
* ``test_engine_memory_compressed_*`` run ``$MNEMO_BIN logits`` on random
  checkpoints and compare with the float64 oracle (1e-4 relative): segments
  of several lengths, token by token, one call, 16-bit checkpoints, and
  models mixing the kind with dense, sparse and linear layers.
"""

from __future__ import annotations

import math

import pytest
import torch

from mnemo_reference import (
    MEMORY_COMPRESSED_MAX_RATE,
    MemoryCompressedAttention,
    MemoryCompressedState,
    load_checkpoint,
    random_checkpoint,
    validate_config,
)

from parity_common import (
    MODES,
    assert_split_independent,
    base_config as _config,
    check_engine_parity,
    document,
    engine_logits,
    max_rel as _max_rel,
    oracle_logits,
    oracle_model,
    assert_logits_close,
)
from test_linear_parity import _linear


def _mc(rate: int, cmem_len: int) -> dict:
    return {"attention": "memory_compressed", "compression_rate": rate,
            "cmem_len": cmem_len}


DENSE = {"attention": "dense"}

CONFIGS = {
    "rate3_pre": _config(pre_lnorm=True, layers=[_mc(3, 4), _mc(3, 4)]),
    "rate2_post": _config(pre_lnorm=False, layers=[_mc(2, 2), _mc(5, 3)],
                          activation="gelu", tie_word_embeddings=False),
    # S covers every block of the streams below: nothing is ever dropped.
    "wide_span": _config(pre_lnorm=True, n_head=3, d_head=6, d_model=24,
                         layers=[_mc(4, 64), _mc(2, 64)]),
    "mixed": _config(pre_lnorm=False, n_layer=4, mem_len=6,
                     layers=[DENSE, _mc(3, 2),
                             {"attention": "sparse", "window": 4},
                             _linear("elu")]),
}


def _layer(cfg: dict, n: int = 0) -> MemoryCompressedAttention:
    return oracle_model(cfg, seed=5).stack[n].attn


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


def _loop_attention(attn: MemoryCompressedAttention, x: torch.Tensor
                    ) -> torch.Tensor:
    """The layer's output for one fresh stream x [1, N, D], written out: each
    block's compressed row summed tap by tap, each query's keys listed."""
    H, dh, c, S = attn.n_head, attn.d_head, attn.rate, attn.cmem_len
    h = attn.ln(x) if attn.pre_lnorm else x
    q, k, v = attn.qkv(h)[0].split(H * dh, dim=-1)
    N = x.shape[1]
    wk, bk = attn.compress_k.weight, attn.compress_k.bias   # [HD, HD, c]
    wv, bv = attn.compress_v.weight, attn.compress_v.bias
    ck = [bk + sum(wk[:, :, t] @ k[j * c + t] for t in range(c))
          for j in range(N // c)]
    cv = [bv + sum(wv[:, :, t] @ v[j * c + t] for t in range(c))
          for j in range(N // c)]
    out = torch.zeros(N, H * dh, dtype=x.dtype)
    for i in range(N):
        b = i // c
        keys = [(ck[j], cv[j]) for j in range(max(0, b - S), b)]
        keys += [(k[m], v[m]) for m in range(b * c, i + 1)]
        for hh in range(H):
            sl = slice(hh * dh, (hh + 1) * dh)
            s = torch.stack([q[i, sl] @ kk[sl] for kk, _ in keys])
            p = torch.softmax(s / math.sqrt(dh), dim=0)
            out[i, sl] = sum(pj * vv[sl] for pj, (_, vv) in zip(p, keys))
    y = attn.o(out)[None]
    return x + y if attn.pre_lnorm else attn.ln(x + y)


@pytest.mark.parametrize("name", ["rate3_pre", "rate2_post", "wide_span"])
def test_reference_only_memory_compressed_equals_loop(name):
    cfg = CONFIGS[name]
    attn = _layer(cfg)
    x = torch.randn(1, 23, cfg["d_model"], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    got, state = attn(x, attn.init_state(1, x))
    want = _loop_attention(attn, x)
    assert _max_rel(got, want) <= 1e-12
    assert isinstance(state, MemoryCompressedState)
    assert state.k.shape == (1, 23, cfg["n_head"] * cfg["d_head"])


def test_reference_only_memory_compressed_one_block_is_causal_attention():
    """c beyond the stream: every query sees its keys uncompressed."""
    cfg = _config(layers=[_mc(64, 3), _mc(64, 1)])
    attn = _layer(cfg)
    x = torch.randn(1, 17, cfg["d_model"], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(4))
    got, _ = attn(x, attn.init_state(1, x))
    H, dh = attn.n_head, attn.d_head
    q, k, v = (t.reshape(17, H, dh).transpose(0, 1)
               for t in attn.qkv(x)[0].split(H * dh, dim=-1))
    s = q @ k.transpose(1, 2) / math.sqrt(dh)
    s = s.masked_fill(torch.ones(17, 17, dtype=torch.bool).triu(1), -math.inf)
    o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(1, 17, H * dh)
    assert _max_rel(got, attn.ln(x + attn.o(o))) <= 1e-12


# (not "mixed": its dense layer's segment recurrence depends on the split)
@pytest.mark.parametrize("name", ["rate3_pre", "rate2_post", "wide_span"])
def test_reference_only_memory_compressed_split_independent(name):
    assert_split_independent(oracle_model(CONFIGS[name], seed=8),
                             document(CONFIGS[name], 29, seed=2),
                             ([1] * 29, [3, 5, 7, 1, 13], [10, 19]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_only_memory_compressed_checkpoint_roundtrip(tmp_path, dtype):
    cfg = CONFIGS["rate2_post"]
    written = random_checkpoint(cfg, tmp_path, seed=3, dtype=dtype)
    loaded = load_checkpoint(tmp_path)
    names = set(loaded.state_dict())
    assert {"layers.0.attn.compress_k.weight", "layers.0.attn.compress_k.bias",
            "layers.1.attn.compress_v.weight"} <= names
    assert loaded.state_dict()["layers.1.attn.compress_v.weight"].shape == (
        32, 32, 5)
    for key, value in written.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("entry, fragment", [
    ({"attention": "memory_compressed", "cmem_len": 2}, "compression_rate"),
    (_mc(1, 2), "compression_rate"),
    (_mc(MEMORY_COMPRESSED_MAX_RATE + 1, 2), "compression_rate"),
    ({"attention": "memory_compressed", "compression_rate": 2}, "cmem_len"),
    (_mc(2, 0), "cmem_len"),
    (dict(_mc(2, 2), residual_attention=True), "residual_attention"),
    (dict(_mc(2, 2), window=3), "window"),
])
def test_reference_only_memory_compressed_validation_errors(entry, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate_config(_config(layers=[entry, DENSE]))


# --------------------------------------------------------------------------
# The engine against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_memory_compressed_parity(mnemo_bin, tmp_path, name, mode):
    # 41 tokens: blocks complete inside segments and across them, the S
    # kept blocks turn over several times (rates 2 and 3, S 2 to 4).
    ids = document(CONFIGS[name], 41, seed=11)
    check_engine_parity(mnemo_bin, tmp_path, CONFIGS[name], 21, ids, mode,
                        f"{name} {mode}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_engine_memory_compressed_16_bit_checkpoint(mnemo_bin, tmp_path,
                                                     dtype):
    cfg = CONFIGS["rate3_pre"]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=4, dtype=dtype)
    ids = document(cfg, 26, seed=6)
    for seg, decode in ((4, False), (1, True)):
        want = oracle_logits(ckpt, ids, seg, decode)
        got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg, decode)
        assert_logits_close(got, want, what=f"{dtype} seg {seg}")
