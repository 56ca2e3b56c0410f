"""Sparse (sliding-window, dilated) layers: oracle checks and engine parity.

A ``layers`` entry ``{"attention": "sparse", "window": W, "dilation": D}``
(mnemo_reference) makes a layer causal softmax attention in which the query
at stream position p of head h sees the keys at ``p - r * d_h`` for
``r = 0 .. W-1`` (>= 0; itself included), ``score = q.k / sqrt(d_head)``,
no position encodings. ``dilation`` is one int for every head or a list of
n_head ints (default 1). The layer has the tensors of an elu linear layer;
its session state is the projected K/V of the last ``(W-1) * max(D)``
positions (``SparseState``).

Two groups of tests, named like test_linear_parity.py's:

* ``test_reference_only_sparse_*`` check the oracle itself and need no
  engine: a window covering the stream is plain causal softmax attention, a
  real window equals attention under a mask enumerated here, results and
  state do not depend on how a stream is split into calls, tensor names,
  checkpoint I/O and ``layers`` validation.
* ``test_engine_sparse_*`` run ``$MNEMO_BIN logits ...`` (README.md) on
  random checkpoints with sparse layers and compare with the float64
  oracle (1e-4 relative). They fail (never skip) when ``MNEMO_BIN`` is
  unset or is not an executable.

Run::

    MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
        tests/reference/test_sparse_parity.py
    .venv/bin/python -m pytest tests/reference -k reference_only_sparse
"""

from __future__ import annotations

import json
import math
import tempfile

import pytest
import torch

import mnemo_checkpoint
from mnemo_reference import (
    DTYPES,
    SPARSE_MAX_SPAN,
    LinearState,
    SparseAttention,
    SparseState,
    TransfoXLReference,
    layer_specs,
    load_checkpoint,
    random_checkpoint,
    stream_logits,
    validate_config,
)

from parity_common import (
    run_splits,
    assert_logits_close,
    base_config as _config,
    document,
    engine_logits,
    max_rel as _max_rel,
    oracle_logits,
)
from test_linear_parity import _linear

# --------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------


def _sparse(window: int, dilation=None, **fields) -> dict:
    entry = {"attention": "sparse", "window": window}
    if dilation is not None:
        entry["dilation"] = dilation
    entry.update(fields)
    return entry


DENSE = {"attention": "dense"}
ELU = _linear("elu")

#: length of the engine-test streams (> every window span used below, so
#: the rolling K/V cache wraps; 41 is not a multiple of any segment length).
STREAM_LEN = 41
#: segment lengths of the engine tests: >= 3 segments each, the last short.
SEGMENT_LENS = [3, 8, 13]

CONFIGS = {
    # W = 1: every token sees itself only (the dilation is irrelevant).
    "w1_pre": _config(pre_lnorm=True, layers=[_sparse(1), _sparse(1, 3)]),
    "w4_post": _config(pre_lnorm=False, layers=[_sparse(4), _sparse(4, 1)],
                       activation="gelu", tie_word_embeddings=False),
    "w3_dil2_pre": _config(pre_lnorm=True,
                           layers=[_sparse(3, 2), _sparse(3, 2)],
                           untie_r=False),  # no dense layer: no r biases
    # Per-head dilation with 2 heads (d_model 24 != H * d_head = 24 too).
    "perhead_post": _config(pre_lnorm=False, n_head=2, d_head=12,
                            d_model=24,
                            layers=[_sparse(3, [1, 3]), _sparse(5, [1, 3])]),
    # Windows longer than the whole stream: causal full softmax attention.
    "wide_pre": _config(pre_lnorm=True,
                        layers=[_sparse(64), _sparse(STREAM_LEN + 1, 1)]),
    # Mixed stack (mem_len applies to the dense layer only).
    "mixed_pre": _config(
        pre_lnorm=True, n_layer=4,
        layers=[DENSE, _sparse(4, 2), ELU, _sparse(3, [1, 2, 3, 1])],
        mem_len=8, clamp_len=5, same_length=True, untie_r=False,
        activation="gelu", tie_word_embeddings=False),
    "mixed_post": _config(
        pre_lnorm=False, n_layer=4,
        layers=[DENSE, _sparse(4, 2), ELU, _sparse(3, [1, 2, 3, 1])],
        mem_len=8, untie_r=True, memory_init="empty"),
}


def _seed(name: str) -> int:
    return sorted(CONFIGS).index(name) + 301


def _document(cfg: dict, length: int = STREAM_LEN, seed: int = 2024) -> list:
    return document(cfg, length, seed)


def _model(name_or_cfg, seed=None, **overrides) -> TransfoXLReference:
    """float64 oracle with the random_checkpoint init (not written)."""
    if isinstance(name_or_cfg, str):
        cfg = dict(CONFIGS[name_or_cfg], **overrides)
        seed = _seed(name_or_cfg) if seed is None else seed
    else:
        cfg = dict(name_or_cfg, **overrides)
    with tempfile.TemporaryDirectory() as d:
        model = random_checkpoint(cfg, d, seed=seed)
    return model.double().eval()


def _naive_attention(attn, x: torch.Tensor, visible) -> torch.Tensor:
    """Attention sub-layer over a whole stream, loop by loop.

    ``x``: [B, N, D] the layer input of every stream position; ``visible``:
    boolean [H, N, N], visible[h, i, j] = query i of head h sees key j.
    Returns the sub-layer output (residual and LayerNorm included).
    """
    B, N, _ = x.shape
    H, dh = attn.n_head, attn.d_head
    h_in = attn.ln(x) if attn.pre_lnorm else x
    w = attn.qkv.weight
    wq, wk, wv = w[:H * dh], w[H * dh:2 * H * dh], w[2 * H * dh:]
    heads = torch.zeros(B, N, H * dh, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            rows = slice(h * dh, (h + 1) * dh)
            q = h_in[b] @ wq[rows].t()                          # [N, dh]
            k = h_in[b] @ wk[rows].t()
            v = h_in[b] @ wv[rows].t()
            for i in range(N):
                js = [j for j in range(N) if visible[h, i, j]]
                assert js and js[-1] == i, "a query must see itself"
                s = torch.stack([q[i] @ k[j] for j in js]) / math.sqrt(dh)
                p = torch.exp(s - s.max())
                p = p / p.sum()
                heads[b, i, rows] = sum(p[n] * v[j] for n, j in enumerate(js))
    out = x + heads @ attn.o.weight.t()
    return out if attn.pre_lnorm else attn.ln(out)


def _causal_mask(H: int, N: int) -> torch.Tensor:
    return torch.ones(N, N, dtype=torch.bool).tril().expand(H, N, N)


def _window_mask(window: int, dilation: list, N: int) -> torch.Tensor:
    """Enumerate {i - r*d : r = 0..W-1, >= 0} per head and query."""
    mask = torch.zeros(len(dilation), N, N, dtype=torch.bool)
    for h, d in enumerate(dilation):
        for i in range(N):
            for r in range(window):
                if i - r * d >= 0:
                    mask[h, i, i - r * d] = True
    return mask


def _attention_module(layers, pre_lnorm: bool, n: int = 0,
                      seed: int = 7, **overrides) -> SparseAttention:
    cfg = _config(pre_lnorm=pre_lnorm, n_layer=len(layers), layers=layers,
                  **overrides)
    attn = _model(cfg, seed=seed).layers[n].attn
    assert isinstance(attn, SparseAttention)
    return attn


def _run_module_splits(attn, x, splits):
    """Feed [B, N, D] in calls of the given sizes, state carried."""
    state = attn.init_state(x.shape[0], x)
    outs, start = [], 0
    for size in splits:
        y, state = attn(x[:, start:start + size], state)
        outs.append(y)
        start += size
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), state


@torch.no_grad()
def _naive_model_logits(model: TransfoXLReference, ids) -> torch.Tensor:
    """Whole model with every (sparse) layer as full causal attention."""
    cfg = model.config
    x = model.word_emb.weight[torch.tensor(ids)][None] * math.sqrt(
        cfg["d_model"])
    N = len(ids)
    for layer in model.layers:
        assert layer.kind == "sparse"
        x = layer.ff(_naive_attention(layer.attn, x,
                                      _causal_mask(cfg["n_head"], N)))
    return (x @ model.output_weight().t() + model.lm_head.bias)[0]


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


SPLITS = ([30], [1] * 30, [7, 1, 22], [4, 4, 4, 4, 4, 4, 4, 2])


@pytest.mark.parametrize("pre_lnorm", [True, False], ids=["pre", "post"])
@pytest.mark.parametrize("window", [30, 31, 1000])
def test_reference_only_sparse_wide_window_is_causal_attention(window,
                                                               pre_lnorm):
    """W >= stream length, dilation 1: plain causal softmax attention."""
    attn = _attention_module([_sparse(window), DENSE], pre_lnorm)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 30, attn.d_model, generator=gen, dtype=torch.float64)
    want = _naive_attention(attn, x, _causal_mask(attn.n_head, 30))
    for splits in SPLITS:
        got, state = _run_module_splits(attn, x, splits)
        assert _max_rel(got, want) <= 1e-12, splits
        assert state.k.shape == (2, attn.n_head, min(window - 1, 30),
                                 attn.d_head)


def test_reference_only_sparse_wide_window_model_is_causal_attention():
    """Whole ``wide_pre`` model (the engine config) == naive causal model."""
    model = _model("wide_pre")
    ids = _document(model.config)
    want = _naive_model_logits(model, ids)
    for seg in SEGMENT_LENS:
        got = stream_logits(model, ids, seg)
        assert _max_rel(got, want) <= 1e-12, seg
    assert _max_rel(stream_logits(model, ids, decode=True), want) <= 1e-12
    assert want.std(dim=-1).min() > 0.1  # non-trivial logits


WINDOWS = [
    # (window, dilation entry, n_head, d_head)
    (1, None, 4, 8),
    (1, 5, 4, 8),
    (4, None, 4, 8),
    (4, 1, 4, 8),
    (3, 2, 4, 8),
    (3, [1, 3], 2, 12),
    (5, [1, 2, 3, 7], 4, 8),
    (2, [4, 1, 1, 2], 4, 8),
]


@pytest.mark.parametrize("pre_lnorm", [True, False], ids=["pre", "post"])
@pytest.mark.parametrize("window,dilation,n_head,d_head", WINDOWS,
                         ids=[f"w{w}_d{d}" for w, d, _, _ in WINDOWS])
def test_reference_only_sparse_window_equals_explicit_mask(
        window, dilation, n_head, d_head, pre_lnorm):
    """A real window: attention under a mask enumerated in this test."""
    attn = _attention_module([DENSE, _sparse(window, dilation)], pre_lnorm,
                             n=1, n_head=n_head, d_head=d_head)
    dil = dilation if isinstance(dilation, list) else [dilation or 1] * n_head
    assert attn.dilation == dil and attn.window == window
    N = 30
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, N, attn.d_model, generator=gen, dtype=torch.float64)
    want = _naive_attention(attn, x, _window_mask(window, dil, N))
    span = (window - 1) * max(dil)
    for splits in SPLITS + ([span + 1, N - span - 1] if 0 < span < N - 1
                            else [N],):
        got, state = _run_module_splits(attn, x, splits)
        assert _max_rel(got, want) <= 1e-12, splits
        assert state.k.shape == (2, n_head, min(span, N), d_head), splits
    # The window matters: full causal attention differs unless W covers N.
    if window > 1:
        full = _naive_attention(attn, x, _causal_mask(n_head, N))
        assert _max_rel(full, want) > 1e-3


def test_reference_only_sparse_window_one_returns_value():
    """W = 1: the attention output (before o) is v_t, whatever dilation."""
    attn = _attention_module([_sparse(1, [2, 9, 1, 4]), DENSE],
                             pre_lnorm=True)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 6, attn.d_model, generator=gen, dtype=torch.float64)
    captured = []
    attn.o.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    _, state = _run_module_splits(attn, x, [2, 1, 3])
    H, dh = attn.n_head, attn.d_head
    v = attn.qkv(attn.ln(x)).split(H * dh, dim=-1)[2]
    torch.testing.assert_close(torch.cat(captured, dim=1), v, rtol=1e-12,
                               atol=1e-12)
    assert state.k.shape[2] == 0 and attn.cache_len == 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_sparse_split_independent(name):
    """Logits and state after N tokens do not depend on the calls."""
    # mem_len 64: dense layers keep every row, so their result is exact too.
    model = _model(name, mem_len=64, memory_init="empty", same_length=False)
    ids = _document(model.config)
    N = len(ids)
    whole, whole_mems = run_splits(model, ids, [N])
    for splits in ([1] * N, [5, 11, 1, N - 17], [N - 1, 1], [3] * 13 + [2],
                   [8] * 5 + [1]):
        logits, mems = run_splits(model, ids, splits)
        assert _max_rel(logits, whole) <= 1e-10, (splits,)
        for n, (a, b) in enumerate(zip(mems, whole_mems)):
            pairs = (zip(a, b) if isinstance(b, tuple) else [(a, b)])
            for u, w in pairs:
                assert u.shape == w.shape, (splits, n)
                if w.numel():
                    assert _max_rel(u, w) <= 1e-10, (splits, n)
    for spec, layer, mem in zip(layer_specs(model.config), model.layers,
                                whole_mems):
        if spec["attention"] != "sparse":
            continue
        assert isinstance(mem, SparseState)
        span = (spec["window"] - 1) * max(spec["dilation"])
        H, dh = model.config["n_head"], model.config["d_head"]
        assert mem.k.shape == mem.v.shape == (1, H, min(span, N), dh)
        assert layer.attn.cache_len == span
    # The model is non-trivial.
    assert whole.std(dim=-1).min() > 0.1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_sparse_engine_streams(name):
    """The engine-test modes agree in the oracle (dense mem_len included)."""
    model = _model(name)
    ids = _document(model.config)
    want = stream_logits(model, ids, decode=True)
    for seg in SEGMENT_LENS + [len(ids)]:
        got = stream_logits(model, ids, seg)
        if all(s["attention"] != "dense" for s in model.specs):
            assert _max_rel(got, want) <= 1e-10, seg
        assert torch.isfinite(got).all()


def test_reference_only_sparse_state_holds_last_positions():
    """The state is the projected K/V of the last (W-1)*max(d) positions."""
    model = _model("w3_dil2_pre")
    ids = _document(model.config, 20)
    inputs = []
    hook = model.layers[1].attn.register_forward_pre_hook(
        lambda mod, args: inputs.append(args[0]))
    _, mems = run_splits(model, ids, [6, 14])
    hook.remove()
    attn = model.layers[1].attn
    x = torch.cat(inputs, dim=1)
    H, dh = attn.n_head, attn.d_head
    _, k, v = attn.qkv(attn.ln(x)).split(H * dh, dim=-1)
    span = attn.cache_len
    assert span == 4
    for got, full in ((mems[1].k, k), (mems[1].v, v)):
        want = full[:, -span:].reshape(1, span, H, dh).transpose(1, 2)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_reference_only_sparse_state_is_session_state():
    """Sparse-only model: mem_len / memory_init / XL settings do not matter."""
    name = "perhead_post"
    ids = _document(CONFIGS[name], 25)
    ref = stream_logits(_model(name), ids, 4)
    for overrides in ({"mem_len": 0}, {"mem_len": 3, "same_length": True,
                                        "clamp_len": 1,
                                        "memory_init": "empty"},
                      {"memory_init": "zeros", "mem_len": 17}):
        got = stream_logits(_model(name, **overrides), ids, 7)
        assert _max_rel(got, ref) <= 1e-10, overrides


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_sparse_tensor_names(name):
    cfg = CONFIGS[name]
    state = TransfoXLReference(cfg).state_dict()
    want = {"word_emb.weight", "lm_head.bias"}
    if not cfg["tie_word_embeddings"]:
        want.add("lm_head.weight")
    any_dense = any(e["attention"] == "dense" for e in cfg["layers"])
    if not cfg["untie_r"] and any_dense:
        want |= {"r_w_bias", "r_r_bias"}
    H, dh, D = cfg["n_head"], cfg["d_head"], cfg["d_model"]
    for n, entry in enumerate(cfg["layers"]):
        p = f"layers.{n}."
        want |= {p + s for s in (
            "attn.qkv.weight", "attn.o.weight", "attn.ln.weight",
            "attn.ln.bias", "ff.fc1.weight", "ff.fc1.bias", "ff.fc2.weight",
            "ff.fc2.bias", "ff.ln.weight", "ff.ln.bias")}
        if entry["attention"] == "dense":
            want.add(p + "attn.r.weight")
            if cfg["untie_r"]:
                want |= {p + "attn.r_w_bias", p + "attn.r_r_bias"}
        if entry["attention"] == "sparse":
            assert tuple(state[p + "attn.qkv.weight"].shape) == (3 * H * dh, D)
            assert tuple(state[p + "attn.o.weight"].shape) == (D, H * dh)
    assert set(state) == want


def test_reference_only_sparse_shared_r_bias_needs_a_dense_layer():
    base = dict(untie_r=False, n_layer=2)
    no_dense = TransfoXLReference(_config(layers=[_sparse(3), ELU], **base))
    assert "r_w_bias" not in no_dense.state_dict()
    one_dense = TransfoXLReference(_config(layers=[_sparse(3), DENSE],
                                           **base))
    assert {"r_w_bias", "r_r_bias"} <= set(one_dense.state_dict())
    assert "layers.0.attn.r.weight" not in one_dense.state_dict()


def test_reference_only_sparse_draw_order_is_that_of_elu():
    """Sparse draws qkv, o, ln, then FFN: the tensors of an elu layer."""
    layers_a = [DENSE, _sparse(3, 2), _sparse(1)]
    layers_b = [DENSE, ELU, ELU]
    with tempfile.TemporaryDirectory() as d:
        a = random_checkpoint(_config(n_layer=3, layers=layers_a), d + "/a",
                              seed=9)
        b = random_checkpoint(_config(n_layer=3, layers=layers_b), d + "/b",
                              seed=9)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name", ["mixed_pre", "perhead_post"])
def test_reference_only_sparse_checkpoint_roundtrip(tmp_path, name, dtype):

    cfg = CONFIGS[name]
    made = random_checkpoint(cfg, tmp_path, seed=_seed(name),
                             dtype=DTYPES[dtype])
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    assert written["layers"] == cfg["layers"]  # written as given
    stored = mnemo_checkpoint.load_tensors(tmp_path)
    assert set(stored) == set(made.state_dict())
    assert all(t.dtype == DTYPES[dtype] for t in stored.values())
    loaded = load_checkpoint(tmp_path)
    for key, value in made.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    again = random_checkpoint(cfg, tmp_path / "again", seed=_seed(name),
                              dtype=DTYPES[dtype])
    for key, value in made.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    logits = stream_logits(loaded.double(), _document(cfg, 20), 6)
    assert torch.isfinite(logits).all()
    assert logits.std(dim=-1).min() > 0.1


def test_reference_only_sparse_wrong_state_kind_rejected():
    model = _model("mixed_pre")
    t = torch.tensor([[1, 2, 3]])
    _, mems = model(t)
    swapped = list(mems)
    swapped[1], swapped[2] = mems[2], mems[1]    # sparse <-> linear state
    with pytest.raises(ValueError, match="layer 1 is sparse"):
        model(t, swapped)
    assert isinstance(mems[2], LinearState)


_BAD_LAYERS = [
    # (layers, n_head, substrings the message must contain)
    ([DENSE, {"attention": "sparse"}], 4,
     ["layers[1]", "'window'", "'attention'"]),
    ([_sparse(0), DENSE], 4, ["layers[0]", "'window'"]),
    ([_sparse(-2), DENSE], 4, ["layers[0]", "'window'"]),
    ([_sparse(3.0), DENSE], 4, ["layers[0]", "'window'"]),
    ([_sparse("3"), DENSE], 4, ["layers[0]", "'window'"]),
    ([_sparse(True), DENSE], 4, ["layers[0]", "'window'"]),
    ([DENSE, _sparse(3, 0)], 4, ["layers[1]", "'dilation'"]),
    ([DENSE, _sparse(3, -1)], 4, ["layers[1]", "'dilation'"]),
    ([DENSE, _sparse(3, 2.0)], 4, ["layers[1]", "'dilation'"]),
    ([DENSE, _sparse(3, True)], 4, ["layers[1]", "'dilation'"]),
    ([DENSE, _sparse(3, "2")], 4, ["layers[1]", "'dilation'"]),
    ([DENSE, _sparse(3, [1, 2])], 4, ["layers[1]", "'dilation'", "n_head"]),
    ([DENSE, _sparse(3, [])], 4, ["layers[1]", "'dilation'", "n_head"]),
    ([DENSE, _sparse(3, [1, 2, 3, 4, 5])], 4,
     ["layers[1]", "'dilation'", "n_head"]),
    ([_sparse(3, [1, 0, 1, 1]), DENSE], 4, ["layers[0]", "'dilation'"]),
    ([_sparse(3, [1, 2.0, 1, 1]), DENSE], 4, ["layers[0]", "'dilation'"]),
    ([_sparse(3, [1, False, 1, 1]), DENSE], 4, ["layers[0]", "'dilation'"]),
    ([_sparse(3, (1, 1, 1, 1)), DENSE], 4, ["layers[0]", "'dilation'"]),
    ([_sparse(SPARSE_MAX_SPAN + 1), DENSE], 4, ["layers[0]", "'window'"]),
    ([DENSE, _sparse(1025, 1024)], 4,
     ["layers[1]", "'window'", "'dilation'"]),
    ([DENSE, _sparse(2, [1, 1, SPARSE_MAX_SPAN // 2 + 1, 1])], 4,
     ["layers[1]", "'window'", "'dilation'"]),
    ([_sparse(3, window_size=3), DENSE], 4, ["layers[0]", "'window_size'"]),
    ([DENSE, _sparse(3, feature_map="elu")], 4,
     ["layers[1]", "'feature_map'"]),
    ([DENSE, _sparse(3, 1, dilations=[1, 1, 1, 1])], 4,
     ["layers[1]", "'dilations'"]),
    ([{"attention": "dense", "window": 4}, DENSE], 4,
     ["layers[0]", "'window'"]),
    ([DENSE, _linear("elu", window=4)], 4, ["layers[1]", "'window'"]),
    ([DENSE, {"attention": "Sparse", "window": 4}], 4,
     ["layers[1]", "'attention'"]),
    ([DENSE, {"attention": "local", "window": 4}], 4,
     ["layers[1]", "'attention'"]),
]


@pytest.mark.parametrize("layers,n_head,fragments", _BAD_LAYERS,
                         ids=[str(i) for i in range(len(_BAD_LAYERS))])
def test_reference_only_sparse_validation_errors(layers, n_head, fragments):
    cfg = _config(n_layer=len(layers), n_head=n_head, layers=layers)
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    with pytest.raises(ValueError):
        TransfoXLReference(cfg)


def test_reference_only_sparse_valid_layers_accepted():
    cfg = validate_config(_config(n_layer=5, layers=[
        _sparse(1), _sparse(7, 3), _sparse(2, [1, 5, 1, 2]),
        _sparse(SPARSE_MAX_SPAN), _sparse(2, SPARSE_MAX_SPAN // 2)]))
    specs = layer_specs(cfg)
    assert specs[0] == {"attention": "sparse", "window": 1,
                        "dilation": [1, 1, 1, 1]}
    assert specs[1] == {"attention": "sparse", "window": 7,
                        "dilation": [3, 3, 3, 3]}
    assert specs[2]["dilation"] == [1, 5, 1, 2]
    assert specs[3]["window"] == SPARSE_MAX_SPAN
    # The config keeps the entries as written (dilation not expanded).
    assert cfg["layers"][1] == {"attention": "sparse", "window": 7,
                                "dilation": 3}
    # A huge window costs nothing until the stream is long.
    model = _model(_config(n_layer=2, layers=[_sparse(SPARSE_MAX_SPAN),
                                              _sparse(3, 2)]), seed=3)
    ids = _document(model.config, 12)
    assert _max_rel(stream_logits(model, ids, 5),
                    stream_logits(model, ids, decode=True)) <= 1e-10


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------


def _checkpoint(tmp_path, name, dtype=None):
    ckpt = tmp_path / "ckpt"
    random_checkpoint(CONFIGS[name], ckpt, seed=_seed(name),
                      dtype=None if dtype is None else DTYPES[dtype])
    return ckpt


@pytest.mark.parametrize("seg", SEGMENT_LENS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_sparse_segments(mnemo_bin, tmp_path, name, seg):
    ckpt = _checkpoint(tmp_path, name)
    ids = _document(CONFIGS[name])
    assert math.ceil(len(ids) / seg) >= 3 and len(ids) % seg != 0
    want = oracle_logits(ckpt, ids, seg)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg)
    assert_logits_close(got, want, what=f"{name} segment_len={seg}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_sparse_decode(mnemo_bin, tmp_path, name):
    ckpt = _checkpoint(tmp_path, name)
    ids = _document(CONFIGS[name])
    want = oracle_logits(ckpt, ids, decode=True)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, decode=True)
    assert_logits_close(got, want, what=f"{name} decode")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_sparse_whole_stream_one_call(mnemo_bin, tmp_path, name):
    ckpt = _checkpoint(tmp_path, name)
    ids = _document(CONFIGS[name])
    want = oracle_logits(ckpt, ids, len(ids))
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, len(ids))
    assert_logits_close(got, want, what=f"{name} one call")


@pytest.mark.parametrize("decode", [False, True], ids=["segment", "decode"])
def test_engine_sparse_wide_window_is_full_attention(mnemo_bin, tmp_path,
                                                     decode):
    """Windows longer than the stream: the naive causal model of this test."""
    name = "wide_pre"
    ckpt = _checkpoint(tmp_path, name)
    ids = _document(CONFIGS[name])
    model = load_checkpoint(ckpt, dtype=torch.float64)
    want = _naive_model_logits(model, ids).numpy()
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, 8, decode=decode)
    assert_logits_close(got, want, what=f"{name} vs full causal attention")


@pytest.mark.parametrize("decode", [False, True], ids=["segment", "decode"])
def test_engine_sparse_float16_checkpoint(mnemo_bin, tmp_path, decode):
    """fp16 storage: the oracle runs on the same rounded weights."""
    name = "mixed_pre"
    ckpt = _checkpoint(tmp_path, name, dtype="float16")
    ids = _document(CONFIGS[name])
    want = oracle_logits(ckpt, ids, 8, decode=decode)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, 8, decode=decode)
    assert_logits_close(got, want, what=f"{name} float16 decode={decode}")
