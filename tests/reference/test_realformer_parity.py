"""Residual attention (RealFormer): oracle checks and engine parity.

``"residual_attention": true`` on a ``dense`` (XL or compressive memory) or
``sparse`` entry (docs/checkpoint-format.md "Residual attention (RealFormer)"):
the layer adds the previous layer's pre-softmax scores to its own before
its mask and softmax, ``S^l = score^l + S^(l-1)``, and passes the sum on.
Scores are the full unmasked logits of the kind (dense:
``((q + u).k + (q + v).R) / sqrt(d_h)``, sparse: ``q.k / sqrt(d_h)``). Layer
0 cannot be residual; layer ``l - 1`` must have the same entry apart from the
flag (sparse: no global fields). The scores live within one call.

* ``test_reference_only_*`` check the oracle on its own: zero previous
  scores (or a per-row constant) change nothing, the flag changes the
  output, a one-call naive re-implementation written here from the section
  agrees, sparse chains do not depend on how the stream is split, the state
  holds no scores, validation.
* ``test_engine_*`` run ``$MNEMO_BIN logits`` on random checkpoints and
  compare with the float64 oracle (1e-4 relative) over segments, token by
  token and one call. They fail (never skip) without ``MNEMO_BIN``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnemo_reference import (
    TransfoXLReference,
    layer_specs,
    random_checkpoint,
    stream_logits,
    validate_config,
)

from parity_common import (
    run_splits,
    oracle_model,
    assert_logits_close,
    base_config,
    check_engine_parity,
    document,
    engine_logits,
    max_rel as _max_rel,
    MODES,
    oracle_logits,
)

RES = "residual_attention"


def _config(**overrides) -> dict:
    """parity_common's base config; ``n_layer`` follows ``layers``."""
    if "layers" in overrides:
        overrides.setdefault("n_layer", len(overrides["layers"]))
    return base_config(**overrides)
DENSE = {"attention": "dense"}


def _res(entry: dict) -> dict:
    return dict(entry, residual_attention=True)


def _plain(cfg: dict) -> dict:
    """The same config without any residual flag."""
    return dict(cfg, layers=[{k: v for k, v in e.items() if k != RES}
                             for e in cfg["layers"]])


def _win(window: int, **fields) -> dict:
    return dict({"attention": "sparse", "window": window}, **fields)


def _strided(**fields) -> dict:
    return dict({"attention": "sparse", "pattern": "strided", "stride": 3,
                 "span": 10}, **fields)


def _comp(**fields) -> dict:
    return dict({"attention": "dense", "memory": "compressive",
                 "compression": "mean_pool", "compression_rate": 2,
                 "cmem_len": 3}, **fields)


def _model(cfg: dict, seed: int = 3) -> TransfoXLReference:
    return oracle_model(cfg, seed)


def _same_weights(model: TransfoXLReference, cfg: dict) -> TransfoXLReference:
    other = TransfoXLReference(cfg).double().eval()
    other.load_state_dict(model.state_dict())
    return other


# --------------------------------------------------------------------------
# A naive one-call forward, written here from the section
# --------------------------------------------------------------------------


def _sinusoid(dist: torch.Tensor, D: int) -> torch.Tensor:
    f = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    a = dist.to(torch.float64)[:, None] * f[None]
    return torch.cat([a.sin(), a.cos()], dim=-1)


def _naive_logits(model: TransfoXLReference, ids) -> torch.Tensor:
    """One call from a fresh session, ``memory_init`` "empty", dense (XL)
    and plain-window sparse layers only, every score spelled out."""
    cfg = model.config
    assert cfg["memory_init"] == "empty" and cfg.get("layer_groups") is None
    H, dh, D = cfg["n_head"], cfg["d_head"], cfg["d_model"]
    T = len(ids)
    x = model.word_emb.weight[torch.tensor(ids)] * math.sqrt(D)
    prev = None
    for n, spec in enumerate(layer_specs(cfg)):
        layer = model.layers[n]
        attn = layer.attn
        h = attn.ln(x) if cfg["pre_lnorm"] else x
        q, k, v = (t.reshape(T, H, dh)
                   for t in (h @ attn.qkv.weight.t()).split(H * dh, -1))
        scores = torch.zeros(H, T, T, dtype=torch.float64)
        visible = torch.zeros(H, T, T, dtype=torch.bool)
        for hh in range(H):
            for a in range(T):
                for b in range(T):
                    if spec["attention"] == "dense":
                        u = (attn.r_w_bias if cfg["untie_r"]
                             else model.r_w_bias)[hh]
                        w = (attn.r_r_bias if cfg["untie_r"]
                             else model.r_r_bias)[hh]
                        d = max(a - b, 0)
                        if cfg["clamp_len"]:
                            d = min(d, cfg["clamp_len"])
                        r = (_sinusoid(torch.tensor([d]), D)
                             @ attn.r.weight.t())[0].reshape(H, dh)[hh]
                        s = (q[a, hh] + u) @ k[b, hh] + (q[a, hh] + w) @ r
                        ok = b <= a
                    else:
                        s = q[a, hh] @ k[b, hh]
                        dil = spec["dilation"][hh]
                        ok = (b <= a and (a - b) % dil == 0
                              and (a - b) // dil < spec["window"])
                    scores[hh, a, b] = s / math.sqrt(dh)
                    visible[hh, a, b] = ok
        if spec.get(RES):
            scores = scores + prev
        prev = scores
        probs = torch.softmax(scores.masked_fill(~visible, -math.inf), -1)
        out = torch.einsum("hab,bhd->ahd", probs, v).reshape(T, H * dh)
        y = x + out @ attn.o.weight.t()
        y = y if cfg["pre_lnorm"] else attn.ln(y)
        ff = layer.ff
        act = F.relu if cfg["activation"] == "relu" else F.gelu
        if cfg["pre_lnorm"]:
            x = y + ff.fc2(act(ff.fc1(ff.ln(y))))
        else:
            x = ff.ln(y + ff.fc2(act(ff.fc1(y))))
    return x @ model.output_weight().t() + model.lm_head.bias


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


@pytest.mark.parametrize("first", [DENSE, _win(3, dilation=[1, 2, 1, 3]),
                                   _strided(), _comp()],
                         ids=["dense", "window", "strided", "compressive"])
def test_reference_only_zero_previous_scores_equal_plain_layer(first):
    """Layer 0 with zero query weights (and zero r biases) has all-zero
    scores S^0, so the residual layer 1 equals the plain layer 1."""
    cfg = _config(mem_len=6, layers=[first, _res(first)])
    model = _model(cfg)
    H, dh = cfg["n_head"], cfg["d_head"]
    with torch.no_grad():
        model.layers[0].attn.qkv.weight[:H * dh] = 0.0
        for name in ("r_w_bias", "r_r_bias"):
            if hasattr(model.layers[0].attn, name):
                getattr(model.layers[0].attn, name).zero_()
    plain = _same_weights(model, _plain(cfg))
    ids = document(cfg, 23)
    for seg in (1, 5, 23):
        assert _max_rel(stream_logits(model, ids, seg),
                        stream_logits(plain, ids, seg)) <= 1e-12, seg


@pytest.mark.parametrize("pre_lnorm", [False, True])
def test_reference_only_row_constant_previous_scores_change_nothing(
        pre_lnorm):
    """Softmax is shift-invariant per row: prev scores that are constant
    along the keys (any value per head and query) leave a dense or sparse
    layer unchanged; random ones do not."""
    cfg = _config(pre_lnorm=pre_lnorm, mem_len=5,
                  layers=[DENSE, _win(3), _strided()])
    model = _model(cfg)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 7, cfg["d_model"], generator=gen,
                    dtype=torch.float64)
    mem = torch.randn(1, 5, cfg["d_model"], generator=gen,
                      dtype=torch.float64)
    dense, window, strided = (layer.attn for layer in model.layers)
    u, v = dense.r_w_bias, dense.r_r_bias
    row = torch.randn(1, 4, 7, 1, generator=gen, dtype=torch.float64) * 30
    noise = torch.randn(1, 4, 7, 12, generator=gen, dtype=torch.float64)
    base = dense(x, mem, u, v)
    assert _max_rel(dense(x, mem, u, v, prev_scores=row.expand(1, 4, 7, 12)),
                    base) <= 1e-12
    assert _max_rel(dense(x, mem, u, v, prev_scores=noise), base) > 1e-3
    ids = torch.zeros(1, 7, dtype=torch.long)
    for attn, extra in ((window, ()), (strided, (ids,))):
        args = (x, attn.init_state(1, x)) + extra
        base, _ = attn(*args)
        got, _ = attn(*args, prev_scores=row.expand(1, 4, 7, 7))
        assert _max_rel(got, base) <= 1e-12
        got, _ = attn(*args, prev_scores=noise[..., :7])
        assert _max_rel(got, base) > 1e-3


CHAINS = {
    "dense2": _config(layers=[DENSE, _res(DENSE)]),
    "dense3_pre": _config(n_layer=3, pre_lnorm=True, clamp_len=3,
                          layers=[DENSE, _res(DENSE), _res(DENSE)]),
    "window": _config(layers=[_win(4), _res(_win(4))]),
    "strided": _config(layers=[_strided(), _res(_strided())]),
    "compressive": _config(mem_len=6, layers=[_comp(), _res(_comp())]),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_reference_only_residual_changes_output(name):
    cfg = CHAINS[name]
    model = _model(cfg)
    plain = _same_weights(model, _plain(cfg))
    ids = document(cfg, 20)
    a, b = stream_logits(model, ids, 6), stream_logits(plain, ids, 6)
    assert torch.isfinite(a).all()
    assert _max_rel(a, b) > 1e-3


@pytest.mark.parametrize("name,cfg", [
    ("dense_post", _config(memory_init="empty",
                           layers=[DENSE, _res(DENSE)])),
    ("dense3_pre_clamp_shared_r", _config(
        n_layer=3, memory_init="empty", pre_lnorm=True, clamp_len=4,
        untie_r=False, layers=[DENSE, _res(DENSE), _res(DENSE)])),
    ("window_chain3", _config(n_layer=3, memory_init="empty", layers=[
        _win(3, dilation=[1, 2, 1, 3]), _res(_win(3, dilation=[1, 2, 1, 3])),
        _res(_win(3, dilation=[1, 2, 1, 3]))])),
    ("two_chains", _config(n_layer=4, memory_init="empty", pre_lnorm=True,
                           layers=[DENSE, _res(DENSE), _win(4),
                                   _res(_win(4))])),
])
def test_reference_only_naive_one_call(name, cfg):
    """The oracle equals a score-by-score re-implementation (one call)."""
    model = _model(cfg)
    ids = document(cfg, 9, seed=11)
    assert _max_rel(stream_logits(model, ids, len(ids)),
                    _naive_logits(model, ids)) <= 1e-10


@pytest.mark.parametrize("layers", [
    [_win(3, dilation=[1, 2, 1, 3]), _res(_win(3, dilation=[1, 2, 1, 3])),
     _res(_win(3, dilation=[1, 2, 1, 3]))],
    [_strided(), _res(_strided())],
    [_strided(split="union", span=7), _res(_strided(split="union", span=7))],
    [{"attention": "sparse", "pattern": "fixed", "block": 4, "summary": 1,
      "span": 12}] + [_res({"attention": "sparse", "pattern": "fixed",
                            "block": 4, "summary": 1, "span": 12})] * 2,
    [{"attention": "sparse", "pattern": "bigbird", "block": 2, "span": 14,
      "seed": 9}, _res({"attention": "sparse", "pattern": "bigbird",
                        "block": 2, "span": 14, "seed": 9})],
], ids=["window3", "strided", "strided_union", "fixed3", "bigbird"])
def test_reference_only_sparse_chain_split_independent(layers):
    """Sparse-only residual chains give the same logits however the
    stream is split (the carried scores are per call, the keys are not)."""
    cfg = _config(n_layer=len(layers), layers=layers)
    model = _model(cfg)
    ids = document(cfg, 29, seed=8)
    want = stream_logits(model, ids, decode=True)
    for splits in ([29], [5] * 5 + [4], [1, 7, 2, 11, 8], [13, 1, 15]):
        got, _ = run_splits(model, ids, splits)
        assert _max_rel(got, want) <= 1e-10, splits


def test_reference_only_state_holds_no_scores():
    """Residual and plain models carry states of the same kinds and
    shapes; the states differ only through the hidden rows."""
    cfg = _config(n_layer=5, mem_len=6, layers=[
        DENSE, _res(DENSE), {"attention": "linear", "feature_map": "elu"},
        _win(3), _res(_win(3))])
    model = _model(cfg)
    plain = _same_weights(model, _plain(cfg))
    ids = document(cfg, 17)
    _, a = run_splits(model, ids, [10, 7])
    _, b = run_splits(plain, ids, [10, 7])
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        assert type(x) is type(y)
        xs = x if isinstance(x, tuple) else (x,)
        ys = y if isinstance(y, tuple) else (y,)
        assert [t.shape for t in xs] == [t.shape for t in ys]
    assert all(getattr(layer.attn, "carried_scores", None) is None
               for layer in model.layers)


def test_reference_only_valid_configs_and_specs():
    s = layer_specs(validate_config(_config(n_layer=3, layers=[
        dict(DENSE, residual_attention=False), _res(DENSE), _res(DENSE)])))
    assert s == [DENSE, _res(DENSE), _res(DENSE)]
    # compared after defaults: dilation 1 == [1, 1, 1, 1], default kernel
    validate_config(_config(layers=[_win(3), _res(_win(3, dilation=[1] * 4))]))
    validate_config(_config(layers=[
        _comp(compression="dilated_conv", compression_rate=4),
        _res(_comp(compression="dilated_conv", compression_rate=4,
                   compression_kernel=2))], mem_len=8))
    validate_config(_config(layers=[
        _strided(), _res(_strided(components=["local", "strided"],
                                  split="heads"))]))
    # a chain after a linear layer starts again from a plain layer
    validate_config(_config(n_layer=4, layers=[
        DENSE, {"attention": "linear", "feature_map": "elu"}, DENSE,
        _res(DENSE)]))
    # layer groups whose layers agree on the flag
    validate_config(_config(n_layer=4, layer_groups=2, layers=[
        DENSE, DENSE, _res(DENSE), _res(DENSE)]))
    # residual layers have the tensors of the plain ones
    cfg = CHAINS["window"]
    a = TransfoXLReference(cfg).state_dict()
    b = TransfoXLReference(_plain(cfg)).state_dict()
    assert {k: v.shape for k, v in a.items()} == \
        {k: v.shape for k, v in b.items()}


_LSH = {"attention": "lsh", "n_hashes": 1, "n_buckets": 4, "chunk_len": 2}
_ELU = {"attention": "linear", "feature_map": "elu"}

_BAD = [
    ([_res(DENSE), DENSE], 0, ["first layer"]),
    ([_res(_win(3)), _win(3)], 0, ["first layer"]),
    ([DENSE, _res(_win(3))], 1, ["layers[0]", "same entry"]),
    ([_win(3), _res(DENSE)], 1, ["same entry"]),
    ([_win(3), _res(_win(4))], 1, ["same entry"]),
    ([_win(3), _res(_win(3, dilation=2))], 1, ["same entry"]),
    ([_comp(), _res(DENSE)], 1, ["same entry"]),
    ([DENSE, _res(_comp())], 1, ["same entry"]),
    ([_comp(), _res(_comp(cmem_len=4))], 1, ["same entry"]),
    ([_strided(), _res(_strided(split="union"))], 1, ["same entry"]),
    ([_strided(), _res(_strided(stride=2))], 1, ["same entry"]),
    ([_win(3), _res(_strided())], 1, ["same entry"]),
    ([_win(3, global_positions=[0]), _res(_win(3, global_positions=[0]))],
     1, ["global", "'global_positions'"]),
    ([_win(3), _res(_win(3, global_tokens=[1], max_global=1))], 1,
     ["global", "'global_tokens'"]),
    ([_win(3, max_global=0), _res(_win(3, max_global=0))], 1,
     ["global", "'max_global'"]),
    ([_strided(global_positions=[2]), _res(_strided())], 1,
     ["global", "layers[0]"]),
    ([_ELU, _res(_ELU)], 1, ["only for"]),
    ([DENSE, _res(_ELU)], 1, ["only for"]),
    ([_LSH, _res(_LSH)], 1, ["only for"]),
    ([DENSE, dict(DENSE, residual_attention=1)], 1, ["bool"]),
    ([_win(3), dict(_win(3), residual_attention="true")], 1, ["bool"]),
    ([DENSE, _ELU, _res(DENSE)], 2, ["same entry"]),
]


@pytest.mark.parametrize("layers,n,fragments", _BAD,
                         ids=[str(i) for i in range(len(_BAD))])
def test_reference_only_validation_errors(layers, n, fragments):
    cfg = _config(n_layer=len(layers), layers=layers)
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    for fragment in [f"layers[{n}]", f"'{RES}'"] + fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_reference_only_validation_layer_groups_disagree():
    """A group's layers share one entry, flag included."""
    with pytest.raises(ValueError, match="layer_groups"):
        validate_config(_config(n_layer=2, layer_groups=1,
                                layers=[DENSE, _res(DENSE)]))


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------

ENGINE_CONFIGS = {
    "dense_post": _config(layers=[DENSE, _res(DENSE)]),
    "dense_post_samelen_clamp": _config(same_length=True, clamp_len=5,
                                        layers=[DENSE, _res(DENSE)]),
    "dense_pre_clamp": _config(pre_lnorm=True, clamp_len=4, activation="gelu",
                               layers=[DENSE, _res(DENSE)]),
    "dense_pre_samelen_empty": _config(pre_lnorm=True, same_length=True,
                                       memory_init="empty", untie_r=False,
                                       layers=[DENSE, _res(DENSE)]),
    "compressive": _config(mem_len=6, layers=[
        _comp(compression="conv1d"), _res(_comp(compression="conv1d"))]),
    "compressive_most_used_pre": _config(mem_len=6, pre_lnorm=True, layers=[
        _comp(compression="most_used", compression_rate=3, cmem_len=2),
        _res(_comp(compression="most_used", compression_rate=3,
                   cmem_len=2))]),
    "sparse_window": _config(layers=[
        _win(4, dilation=[1, 2, 1, 3]), _res(_win(4, dilation=[1, 2, 1, 3]))]),
    "sparse_strided_pre": _config(pre_lnorm=True, layers=[
        _strided(span=12), _res(_strided(span=12))]),
    "dense_chain3": _config(n_layer=4, clamp_len=6, layers=[
        DENSE, _res(DENSE), _res(DENSE), _res(DENSE)]),
    "mixed_linear": _config(n_layer=5, layers=[
        DENSE, _res(DENSE), _ELU, _win(3), _res(_win(3))]),
}

STREAM_LEN = 3 * 8 + 7   # > 3 segments of mem_len 8: the memory wraps


def _seed(name: str) -> int:
    return sorted(ENGINE_CONFIGS).index(name) + 701



@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ENGINE_CONFIGS))
def test_engine_realformer(mnemo_bin, tmp_path, name, mode):
    cfg = ENGINE_CONFIGS[name]
    ids = document(cfg, STREAM_LEN, seed=99)
    check_engine_parity(mnemo_bin, tmp_path, cfg, _seed(name), ids, mode,
                        f"{name} {mode}")


def test_engine_realformer_flag_matters(mnemo_bin, tmp_path):
    """The engine's logits follow the flag: the same weights without it
    give the plain oracle, with it the residual one (which differ)."""
    cfg = ENGINE_CONFIGS["dense_chain3"]
    ids = document(cfg, STREAM_LEN, seed=99)
    for c, tag in ((cfg, "res"), (_plain(cfg), "plain")):
        ckpt = tmp_path / tag
        random_checkpoint(c, ckpt, seed=_seed("dense_chain3"))
        want = oracle_logits(ckpt, ids, 5)
        got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, 5)
        assert_logits_close(got, want, what=tag)
    a = oracle_logits(tmp_path / "res", ids, 5)
    b = oracle_logits(tmp_path / "plain", ids, 5)
    assert np.abs(a - b).max() > 1e-3 * np.abs(b).max()
