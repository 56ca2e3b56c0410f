"""Compressive memory (Compressive Transformer) on dense layers: oracle checks
and engine parity.

``{"attention": "dense", "memory": "compressive", "compression": f,
"compression_rate": c, "cmem_len": n, ["compression_kernel": K]}``
(docs/checkpoint-format.md): rows leaving the XL memory (hidden form: the
LayerNorm'd input under pre_lnorm), oldest first, collect in a buffer; each
full group of c becomes one row (max_pool, mean_pool, conv1d, dilated_conv
or most_used), projected by the key/value weights into a FIFO of n rows.
Queries see ``[compressed | XL memory | segment]`` with relative distances
continuing through the compressed memory, which is taken as it was when the
call started.

* ``test_reference_only_compressive_*``: the compression functions against
  naive loops and ``torch.nn.functional.conv1d``, the whole layer against a
  loop-by-loop simulation written here (attention per query, head and key;
  eviction; usage counters), equality with plain XL before any eviction,
  zero initial rows compressed, state invariants, validation, tensors.
* ``test_engine_compressive_*``: ``$MNEMO_BIN logits`` against the float64
  oracle (1e-4 relative) for every compression function, over segments,
  token by token and one call. Like XL memory, the result depends on the
  call boundaries, so the engine and the oracle are fed the same calls.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mnemo_reference import (
    CompressiveAttention,
    CompressiveState,
    TransfoXLReference,
    compress_rows,
    layer_specs,
    load_checkpoint,
    random_checkpoint,
    stream_logits,
    validate_config,
)

from parity_common import (
    run_splits,
    oracle_model,
    base_config as _config,
    check_engine_parity,
    document,
    max_rel as _max_rel,
    mode_args,
    MODES,
)


def _comp(f: str, c: int, n: int, **fields) -> dict:
    return dict({"attention": "dense", "memory": "compressive",
                 "compression": f, "compression_rate": c, "cmem_len": n},
                **fields)


DENSE = {"attention": "dense"}
STREAM_LEN = 41

CONFIGS = {
    "max_pool": _config(mem_len=6, layers=[_comp("max_pool", 2, 4),
                                           _comp("max_pool", 3, 2)]),
    "mean_pool_pre": _config(mem_len=6, pre_lnorm=True, layers=[
        _comp("mean_pool", 3, 3), DENSE]),
    "conv1d": _config(mem_len=6, layers=[_comp("conv1d", 2, 3),
                                         _comp("conv1d", 6, 2)],
                      activation="gelu", tie_word_embeddings=False),
    "dilated_conv_pre": _config(mem_len=8, pre_lnorm=True, layers=[
        _comp("dilated_conv", 4, 3), _comp("dilated_conv", 6, 2,
                                           compression_kernel=3)]),
    "most_used": _config(mem_len=6, layers=[_comp("most_used", 2, 4),
                                            _comp("most_used", 3, 3)]),
    "most_used_pre_empty": _config(mem_len=5, pre_lnorm=True,
                                   memory_init="empty", layers=[
        _comp("most_used", 5, 2), _comp("max_pool", 1, 3)]),
    "clamp_shared_r": _config(mem_len=6, clamp_len=4, untie_r=False,
                              memory_init="empty", layers=[
        DENSE, _comp("mean_pool", 2, 5)]),
}


def _document(cfg: dict, length: int = STREAM_LEN, seed: int = 4) -> list:
    return document(cfg, length, seed)


def _model(cfg: dict, seed: int = 5) -> TransfoXLReference:
    return oracle_model(cfg, seed)


_SEEDS: dict = {}


def _seed(name: str) -> int:
    """First seed whose most_used choices are not near-ties (all modes)."""
    if name in _SEEDS:
        return _SEEDS[name]
    base = 900 + 50 * sorted(CONFIGS).index(name)
    ids = _document(CONFIGS[name])
    for seed in range(base, base + 50):
        model = _model(CONFIGS[name], seed)
        model.reset_margin_stats()
        for mode in MODES:
            stream_logits(model, ids, *mode_args(mode, len(ids)))
        if model.min_usage_margin() >= 1e-4:
            _SEEDS[name] = seed
            return seed
    raise AssertionError(f"{name}: no well-conditioned seed found")


# --------------------------------------------------------------------------
# Naive versions
# --------------------------------------------------------------------------


def _naive_compress(kind, rows, usage, weight=None, bias=None, K=1):
    """rows: list of c vectors [D]; one vector, loop by loop."""
    c, D = len(rows), rows[0].shape[0]
    if kind == "max_pool":
        return torch.stack([max(r[d] for r in rows) for d in range(D)])
    if kind == "mean_pool":
        return torch.stack([sum(r[d] for r in rows) / c for d in range(D)])
    if kind in ("conv1d", "dilated_conv"):
        taps = range(c) if kind == "conv1d" else range(K)
        step = 1 if kind == "conv1d" else c // K
        out = bias.clone()
        for k in taps:
            out = out + weight[:, :, k] @ rows[k * step]
        return out
    best = 0
    for i in range(1, c):
        if usage[i] > usage[best]:
            best = i
    return rows[best]


def _sinusoid(p: int, D: int) -> torch.Tensor:
    half = D // 2
    f = [10000.0 ** (-2.0 * i / D) for i in range(half)]
    return torch.tensor([math.sin(p * x) for x in f]
                        + [math.cos(p * x) for x in f], dtype=torch.float64)


class _NaiveCompressive:
    """The layer as a loop-by-loop simulation of a session (batch 1)."""

    def __init__(self, attn: CompressiveAttention, u, v, zeros_init: bool):
        self.a, self.u, self.v = attn, u, v
        D = attn.d_model
        n0 = attn.mem_len if zeros_init else 0
        self.mem = [torch.zeros(D, dtype=torch.float64)] * n0
        self.usage = [0.0] * n0
        self.buf, self.buf_usage, self.cmem = [], [], []

    def hidden(self, row):
        a = self.a
        return a.ln(row[None])[0] if a.pre_lnorm else row

    @torch.no_grad()
    def call(self, X: torch.Tensor) -> torch.Tensor:
        a = self.a
        H, dh, D = a.n_head, a.d_head, a.d_model
        wq, wk, wv = a.qkv.weight.split(H * dh)
        rows = list(self.mem) + [X[t] for t in range(X.shape[0])]
        hid = [self.hidden(r) for r in rows]
        keys = list(self.cmem) + hid           # hidden rows, in key order
        C, M = len(self.cmem), len(self.mem)
        outs = []
        for i in range(X.shape[0]):
            heads = []
            for h in range(H):
                sl = slice(h * dh, (h + 1) * dh)
                q = wq[sl] @ hid[M + i]
                scores, vals = [], []
                for j in range(C + M + i + 1):
                    dist = C + M + i - j
                    if a.clamp_len > 0:
                        dist = min(dist, a.clamp_len)
                    r = a.r.weight[sl] @ _sinusoid(dist, D)
                    k = wk[sl] @ keys[j]
                    scores.append(((q + self.u[h]) @ k
                                   + (q + self.v[h]) @ r) / math.sqrt(dh))
                    vals.append(wv[sl] @ keys[j])
                p = torch.softmax(torch.stack(scores), dim=0)
                for j in range(M):
                    self.usage[j] += float(p[C + j])
                heads.append(sum(p[j] * vals[j] for j in range(len(vals))))
            out = X[i] + a.o.weight @ torch.cat(heads)
            outs.append(out if a.pre_lnorm else a.ln(out[None])[0])
        usage = self.usage + [0.0] * X.shape[0]
        gone = max(0, len(rows) - a.mem_len)
        self.mem, self.usage = rows[gone:], usage[gone:]
        self.buf += hid[:gone]
        self.buf_usage += usage[:gone]
        c = a.rate
        while len(self.buf) >= c:
            w = b = None
            if a.compression in ("conv1d", "dilated_conv"):
                w, b = a.compress.weight, a.compress.bias
            self.cmem.append(_naive_compress(
                a.compression, self.buf[:c], self.buf_usage[:c], w, b,
                a.kernel or 1))
            self.buf, self.buf_usage = self.buf[c:], self.buf_usage[c:]
        self.cmem = self.cmem[-a.cmem_len:]
        return torch.stack(outs)


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind,c,K", [
    ("max_pool", 3, 1), ("mean_pool", 4, 1), ("conv1d", 3, 1),
    ("conv1d", 1, 1), ("dilated_conv", 6, 3), ("dilated_conv", 4, 2),
    ("dilated_conv", 4, 4), ("dilated_conv", 5, 1), ("most_used", 4, 1)])
def test_reference_only_compressive_functions(kind, c, K):
    gen = torch.Generator().manual_seed(c * 10 + K)
    B, D = 3, 6
    group = torch.randn(B, c, D, generator=gen, dtype=torch.float64)
    usage = torch.rand(B, c, generator=gen, dtype=torch.float64)
    taps = c if kind == "conv1d" else K
    w = torch.randn(D, D, taps, generator=gen, dtype=torch.float64)
    bias = torch.randn(D, generator=gen, dtype=torch.float64)
    got = compress_rows(kind, group, usage, w, bias, K)
    for b in range(B):
        want = _naive_compress(kind, list(group[b]), usage[b].tolist(), w,
                               bias, K)
        assert _max_rel(got[b], want) <= 1e-13
    if kind == "conv1d":
        ref = F.conv1d(group.transpose(1, 2), w, bias, stride=c)[..., 0]
        assert _max_rel(got, ref) <= 1e-13
    if kind == "dilated_conv":
        ref = F.conv1d(group.transpose(1, 2), w, bias, stride=c,
                       dilation=c // K)
        assert ref.shape[-1] == 1
        assert _max_rel(got, ref[..., 0]) <= 1e-13
    if kind == "dilated_conv" and K == c:      # dilation 1: plain conv1d
        assert _max_rel(got, compress_rows("conv1d", group, usage, w,
                                           bias)) <= 1e-13


def test_reference_only_compressive_most_used_ties_take_oldest():
    group = torch.arange(12, dtype=torch.float64).reshape(1, 4, 3)
    for usage, pick in [([0.0, 0.0, 0.0, 0.0], 0), ([0.1, 0.5, 0.5, 0.2], 1),
                        ([0.3, 0.1, 0.2, 0.3], 0), ([0, 0, 0, 1e-9], 3)]:
        got = compress_rows("most_used", group, torch.tensor([usage],
                                                             dtype=torch.float64))
        assert torch.equal(got[0], group[0, pick])


NAIVE = [
    ("max_pool", dict(mem_len=6), 2, 4, None, [5, 1, 1, 9, 3, 2]),
    ("mean_pool", dict(mem_len=5, pre_lnorm=True), 3, 2, None, [4, 7, 1, 8]),
    ("conv1d", dict(mem_len=4, clamp_len=3), 2, 3, None, [3, 3, 6, 1, 7]),
    ("dilated_conv", dict(mem_len=6, pre_lnorm=True), 6, 2, 3, [10, 2, 9]),
    ("most_used", dict(mem_len=6), 3, 3, None, [2, 5, 1, 1, 8, 4]),
    ("most_used", dict(mem_len=4, memory_init="empty", pre_lnorm=True), 2,
     5, None, [3, 1, 1, 6, 2, 7]),
]


@pytest.mark.parametrize("kind,over,c,n,K,calls", NAIVE,
                         ids=[f"{k}{i}" for i, (k, *_ ) in enumerate(NAIVE)])
def test_reference_only_compressive_equals_naive_simulation(kind, over, c, n,
                                                            K, calls):
    extra = {} if K is None else {"compression_kernel": K}
    cfg = _config(layers=[_comp(kind, c, n, **extra), DENSE], **over)
    model = _model(cfg, seed=sum(calls))
    attn = model.layers[0].attn
    gen = torch.Generator().manual_seed(len(calls))
    x = torch.randn(1, sum(calls), 32, generator=gen, dtype=torch.float64)
    naive = _NaiveCompressive(attn, attn.r_w_bias, attn.r_r_bias,
                              model.config["memory_init"] == "zeros")
    state = model.init_mems(1)[0]
    start = 0
    for T in calls:
        got, state = attn(x[:, start:start + T], state, attn.r_w_bias,
                          attn.r_r_bias)
        want = naive.call(x[0, start:start + T])
        assert _max_rel(got[0], want) <= 1e-12, (start, T)
        assert state.cmem.shape[1] == len(naive.cmem) <= n
        assert state.buf.shape[1] == len(naive.buf) < c
        if naive.cmem:
            assert _max_rel(state.cmem[0], torch.stack(naive.cmem)) <= 1e-12
        if naive.usage and max(naive.usage) > 0:
            assert _max_rel(state.usage[0], torch.tensor(
                naive.usage, dtype=torch.float64)) <= 1e-12
        start += T
    assert len(naive.cmem) > 0  # compression really happened


def test_reference_only_compressive_is_xl_before_any_eviction():
    """memory_init empty and the stream within mem_len: nothing is ever
    compressed, so the layer is a plain Transformer-XL layer."""
    for f in ("max_pool", "conv1d", "most_used"):
        cfg = _config(mem_len=16, memory_init="empty",
                      layers=[_comp(f, 4, 2), _comp("mean_pool", 2, 2)])
        model = _model(cfg, seed=8)
        plain = TransfoXLReference(dict(cfg, layers=[DENSE, DENSE]))
        plain.load_state_dict({k: v for k, v in model.state_dict().items()
                               if "compress" not in k})
        plain = plain.double()
        ids = _document(cfg, 16)
        for seg in (3, 16):
            assert _max_rel(stream_logits(model, ids, seg),
                            stream_logits(plain, ids, seg)) <= 1e-12
        # Past mem_len the compressed memory is seen: results differ.
        ids = _document(cfg, 30)
        assert _max_rel(stream_logits(model, ids, 5),
                        stream_logits(plain, ids, 5)) > 1e-4


@pytest.mark.parametrize("pre_lnorm", [False, True])
def test_reference_only_compressive_zero_rows_are_compressed(pre_lnorm):
    """memory_init zeros: the first call evicts zero rows; their hidden
    form (0, or LayerNorm(0) = ln.bias under pre_lnorm) is compressed."""
    cfg = _config(mem_len=4, pre_lnorm=pre_lnorm,
                  layers=[_comp("max_pool", 2, 3), DENSE])
    model = _model(cfg)
    attn = model.layers[0].attn
    _, mems = model(torch.tensor([[1, 2, 3]]))
    st = mems[0]
    assert isinstance(st, CompressiveState)
    assert st.cmem.shape[1] == 1 and st.buf.shape[1] == 1
    zero_row = attn.ln.bias if pre_lnorm else torch.zeros(32)
    assert torch.allclose(st.cmem[0, 0], zero_row.double(), atol=1e-12)
    assert torch.allclose(st.buf[0, 0], zero_row.double(), atol=1e-12)
    assert st.mem.shape[1] == 4


def test_reference_only_compressive_state_invariants():
    model = _model(CONFIGS["max_pool"])
    ids = _document(model.config, 60)
    t = torch.tensor([ids])
    mems = None
    start = 0
    for T in (1, 4, 7, 2, 13, 1, 1, 9, 22):
        _, mems = model(t[:, start:start + T], mems)
        start += T
        for n, (spec, st) in enumerate(zip(model.specs, mems)):
            c, cap = spec["compression_rate"], spec["cmem_len"]
            total = start  # zeros init: every new token evicts one row
            assert st.mem.shape[1] == 6
            assert st.buf.shape[1] == total % c
            assert st.cmem.shape[1] == min(cap, total // c)
            assert st.usage.shape == (1, 6)


def test_reference_only_compressive_depends_on_call_boundaries_like_xl():
    """Same calls give identical results; the oracle is deterministic and
    calls of a segment length reproduce stream_logits."""
    model = _model(CONFIGS["most_used"])
    ids = _document(model.config)
    a = stream_logits(model, ids, 8)
    b, _ = run_splits(model, ids, [8] * 5 + [1])
    assert torch.equal(a, b)
    assert _max_rel(stream_logits(model, ids, 3), a) > 1e-4


def test_reference_only_compressive_tensors():
    cfg = _config(mem_len=8, untie_r=False, layers=[
        _comp("conv1d", 4, 2), _comp("dilated_conv", 6, 2,
                                     compression_kernel=3)] + [
        _comp("max_pool", 2, 2), _comp("most_used", 8, 1)], n_layer=4)
    state = TransfoXLReference(cfg).state_dict()
    assert tuple(state["layers.0.attn.compress.weight"].shape) == (32, 32, 4)
    assert tuple(state["layers.1.attn.compress.weight"].shape) == (32, 32, 3)
    assert tuple(state["layers.1.attn.compress.bias"].shape) == (32,)
    assert not any(k.startswith("layers.2.attn.compress") for k in state)
    assert "layers.3.attn.r.weight" in state and "r_w_bias" in state
    specs = layer_specs(validate_config(cfg))
    assert specs[1]["compression_kernel"] == 3
    assert specs[2]["compression_kernel"] is None
    assert layer_specs(validate_config(_config(mem_len=4, layers=[
        _comp("dilated_conv", 4, 1), DENSE])))[0]["compression_kernel"] == 2


_BAD = [
    (_comp("max_pool", 2, 2), dict(same_length=True), "'same_length'"),
    (_comp("max_pool", 1, 2), dict(mem_len=0), "'mem_len'"),
    (_comp("max_pool", 9, 2), dict(mem_len=8), "'compression_rate'"),
    (_comp("max_pool", 0, 2), {}, "'compression_rate'"),
    (_comp("max_pool", 2, 0), {}, "'cmem_len'"),
    (_comp("max_pool", 2.0, 2), {}, "'compression_rate'"),
    (_comp("avg_pool", 2, 2), {}, "'compression'"),
    ({"attention": "dense", "memory": "compressive", "compression_rate": 2,
      "cmem_len": 2}, {}, "'compression'"),
    ({"attention": "dense", "memory": "compressive", "compression":
      "max_pool", "cmem_len": 2}, {}, "'compression_rate'"),
    ({"attention": "dense", "memory": "compressive", "compression":
      "max_pool", "compression_rate": 2}, {}, "'cmem_len'"),
    (_comp("dilated_conv", 3, 2), {}, "'compression_kernel'"),
    (_comp("dilated_conv", 4, 2, compression_kernel=3), {},
     "'compression_kernel'"),
    (_comp("dilated_conv", 4, 2, compression_kernel=0), {},
     "'compression_kernel'"),
    (_comp("conv1d", 4, 2, compression_kernel=2), {},
     "'compression_kernel'"),
    ({"attention": "dense", "memory": "lru"}, {}, "'memory'"),
    ({"attention": "dense", "compression": "max_pool"}, {}, "'compression'"),
    ({"attention": "dense", "memory": "xl", "cmem_len": 3}, {}, "'cmem_len'"),
    (_comp("max_pool", 2, 2, window=3), {}, "'window'"),
]


@pytest.mark.parametrize("entry,over,fragment", _BAD,
                         ids=[str(i) for i in range(len(_BAD))])
def test_reference_only_compressive_validation_errors(entry, over, fragment):
    cfg = _config(layers=[DENSE, entry], **over)
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    assert "layers[1]" in str(info.value) and fragment in str(info.value), \
        str(info.value)


def test_reference_only_compressive_checkpoint_roundtrip(tmp_path):
    made = random_checkpoint(CONFIGS["dilated_conv_pre"], tmp_path, seed=3)
    loaded = load_checkpoint(tmp_path, dtype=torch.float64)
    for key, value in made.state_dict().items():
        assert torch.equal(loaded.state_dict()[key].float(), value), key
    logits = stream_logits(loaded, _document(loaded.config), 8)
    assert torch.isfinite(logits).all() and logits.std() > 0.1


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_compressive(mnemo_bin, tmp_path, name, mode):
    ids = _document(CONFIGS[name])
    check_engine_parity(mnemo_bin, tmp_path, CONFIGS[name], _seed(name), ids, mode,
                        f"{name} {mode}")
