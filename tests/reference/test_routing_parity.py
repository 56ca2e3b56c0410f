"""Routing layers: oracle checks and engine parity.

A ``layers`` entry ``{"attention": "routing", "n_clusters": K, "history":
W}`` (mnemo_reference, docs/checkpoint-format.md) is Roy et al.'s routing
attention in causal form with the centroids of the checkpoint
(``attn.centroids`` [H, K, d_h]): each head's queries and keys go to the
nearest centroid on the unit sphere, and the query at position p sees the
keys of its cluster among positions p - W < j <= p, itself always. The
engine keeps the last W - 1 keys and values with their clusters; the oracle
keeps every key and routes it again each call.

* ``test_reference_only_routing_*`` check the oracle itself: it equals a
  loop that routes each vector and lists each query's keys, one cluster is a
  sliding window, outputs do not depend on how a stream is split,
  checkpoint I/O and validation.
* ``test_engine_routing_*`` run ``$MNEMO_BIN logits`` on random checkpoints
  and compare with the float64 oracle (1e-4 relative), after checking that
  no routed vector sits within 1e-5 of a tie (float32 may then pick the
  other centroid, which is not a bug).
"""

from __future__ import annotations

import math

import pytest
import torch

from mnemo_reference import (
    ROUTING_HISTORY_DEFAULT,
    ROUTING_MAX_CLUSTERS,
    RoutingAttention,
    RoutingState,
    layer_specs,
    load_checkpoint,
    random_checkpoint,
    stream_logits,
    validate_config,
)

from parity_common import (
    MODES,
    assert_split_independent,
    assert_logits_close,
    base_config as _config,
    document,
    engine_logits,
    max_rel as _max_rel,
    mode_args,
    oracle_logits,
    oracle_model,
)
from test_linear_parity import _linear


def _routing(n_clusters: int, history=None) -> dict:
    entry = {"attention": "routing", "n_clusters": n_clusters}
    if history is not None:
        entry["history"] = history
    return entry


DENSE = {"attention": "dense"}

CONFIGS = {
    "k3_pre": _config(pre_lnorm=True, layers=[_routing(3, 9), _routing(3, 9)]),
    "k2_post": _config(pre_lnorm=False, layers=[_routing(2, 6), _routing(4, 30)],
                       activation="gelu", tie_word_embeddings=False),
    "wide": _config(pre_lnorm=True, n_head=3, d_head=6, d_model=24,
                    layers=[_routing(5), _routing(2, 64)]),
    "mixed": _config(pre_lnorm=False, n_layer=4, mem_len=6,
                     layers=[DENSE, _routing(3, 12),
                             {"attention": "sparse", "window": 4},
                             _linear("elu")]),
}

#: the smallest best/second-best centroid gap (relative to the vector's
#: norm) the engine tests accept in their data: below it float32 may route
#: differently.
MIN_MARGIN = 1e-5


def _layer(cfg: dict, n: int = 0) -> RoutingAttention:
    return oracle_model(cfg, seed=5).stack[n].attn


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


def _loop_attention(attn: RoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for one fresh stream x [1, N, D], written out."""
    H, dh, W = attn.n_head, attn.d_head, attn.history
    h = attn.ln(x) if attn.pre_lnorm else x
    q, k, v = attn.qkv(h)[0].split(H * dh, dim=-1)
    N = x.shape[1]

    def route(head: int, vec: torch.Tensor) -> int:
        best, best_sim = 0, -math.inf
        for c, mu in enumerate(attn.centroids[head]):
            sim = float(mu @ vec) / float(mu.norm())
            if sim > best_sim:
                best, best_sim = c, sim
        return best

    out = torch.zeros(N, H * dh, dtype=x.dtype)
    for hh in range(H):
        sl = slice(hh * dh, (hh + 1) * dh)
        kc = [route(hh, k[j, sl]) for j in range(N)]
        for i in range(N):
            qc = route(hh, q[i, sl])
            keys = [j for j in range(max(0, i - W + 1), i + 1)
                    if j == i or kc[j] == qc]
            s = torch.stack([q[i, sl] @ k[j, sl] for j in keys]) / math.sqrt(dh)
            p = torch.softmax(s, dim=0)
            out[i, sl] = sum(pj * v[j, sl] for pj, j in zip(p, keys))
    y = attn.o(out)[None]
    return x + y if attn.pre_lnorm else attn.ln(x + y)


@pytest.mark.parametrize("name", ["k3_pre", "k2_post", "wide"])
def test_reference_only_routing_equals_loop(name):
    cfg = CONFIGS[name]
    attn = _layer(cfg)
    x = torch.randn(1, 23, cfg["d_model"], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    got, state = attn(x, attn.init_state(1, x))
    assert _max_rel(got, _loop_attention(attn, x)) <= 1e-12
    assert isinstance(state, RoutingState) and state.k.shape[2] == 23


def test_reference_only_routing_one_cluster_centroid_is_a_window():
    """Every centroid the same direction: every vector routes to cluster 0,
    so the layer is a causal sliding window of `history` keys."""
    cfg = _config(layers=[_routing(2, 5), DENSE])
    attn = _layer(cfg)
    with torch.no_grad():
        attn.centroids[:, 1] = 2.0 * attn.centroids[:, 0]   # a tie: the first wins
    x = torch.randn(1, 14, cfg["d_model"], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(4))
    got, _ = attn(x, attn.init_state(1, x))
    H, dh = attn.n_head, attn.d_head
    q, k, v = (t.reshape(14, H, dh).transpose(0, 1)
               for t in attn.qkv(x)[0].split(H * dh, dim=-1))
    i = torch.arange(14)[:, None]
    j = torch.arange(14)[None, :]
    s = (q @ k.transpose(1, 2) / math.sqrt(dh)).masked_fill(
        (j > i) | (j <= i - 5), -math.inf)
    o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(1, 14, H * dh)
    assert _max_rel(got, attn.ln(x + attn.o(o))) <= 1e-12


# (not "mixed": its dense layer's segment recurrence depends on the split)
@pytest.mark.parametrize("name", ["k3_pre", "k2_post", "wide"])
def test_reference_only_routing_split_independent(name):
    assert_split_independent(oracle_model(CONFIGS[name], seed=8),
                             document(CONFIGS[name], 29, seed=2),
                             ([1] * 29, [3, 5, 7, 1, 13], [10, 19]))


def test_reference_only_routing_checkpoint_roundtrip(tmp_path):
    cfg = CONFIGS["k2_post"]
    written = random_checkpoint(cfg, tmp_path, seed=3, dtype=torch.bfloat16)
    loaded = load_checkpoint(tmp_path)
    assert loaded.state_dict()["layers.1.attn.centroids"].shape == (4, 4, 8)
    for key, value in written.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert layer_specs(validate_config(_config(layers=[_routing(3), DENSE])))[0] == {
        "attention": "routing", "n_clusters": 3, "history": ROUTING_HISTORY_DEFAULT}


@pytest.mark.parametrize("entry, fragment", [
    ({"attention": "routing"}, "n_clusters"),
    (_routing(1), "n_clusters"),
    (_routing(ROUTING_MAX_CLUSTERS + 1), "n_clusters"),
    (_routing(3, 0), "history"),
    (dict(_routing(3), residual_attention=True), "residual_attention"),
    (dict(_routing(3), chunk_len=4), "chunk_len"),
])
def test_reference_only_routing_validation_errors(entry, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate_config(_config(layers=[entry, DENSE]))


# --------------------------------------------------------------------------
# The engine against the oracle
# --------------------------------------------------------------------------


def _checked_oracle(ckpt, ids, seg, decode):
    model = load_checkpoint(ckpt, dtype=torch.float64)
    model.reset_margin_stats()
    want = stream_logits(model, ids, seg, decode).numpy()
    assert model.min_routing_margin() > MIN_MARGIN, (
        "the test data routes a vector within float32 rounding of a tie: "
        "change the seed")
    return want


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_routing_parity(mnemo_bin, tmp_path, name, mode):
    # 41 tokens: windows of 6 to 64 fill, turn over and reach the start.
    cfg = CONFIGS[name]
    ids = document(cfg, 41, seed=11)
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=21)
    seg, decode = mode_args(mode, len(ids))
    want = _checked_oracle(ckpt, ids, seg, decode)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg, decode)
    assert_logits_close(got, want, what=f"{name} {mode}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_engine_routing_16_bit_checkpoint(mnemo_bin, tmp_path, dtype):
    cfg = CONFIGS["k3_pre"]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=4, dtype=dtype)
    ids = document(cfg, 26, seed=6)
    for seg, decode in ((4, False), (1, True)):
        want = _checked_oracle(ckpt, ids, seg, decode)
        got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg, decode)
        assert_logits_close(got, want, what=f"{dtype} seg {seg}")
