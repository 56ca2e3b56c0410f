"""Sparse patterns (strided, fixed, bigbird, global attention): oracle checks
and engine parity.

``{"attention": "sparse", "pattern": ...}`` (docs/checkpoint-format.md "Sparse
patterns"): the query at stream position p of head h sees a set
``Allowed_h(p)`` of keys j <= p (itself included), cut to ``p - j <= span``,
plus ``K(p)``, the last ``max_global`` global positions before p; a global
query (its position in ``global_positions`` or its token in
``global_tokens``) sees every j <= p within the span. Scores are
``q.k / sqrt(d_head)``, no position encoding; the tensors are those of a
sliding-window layer.

* ``test_reference_only_pattern_*`` check the oracle on its own: patterns
  that cover everything reduce to causal attention, each pattern equals
  attention under a mask enumerated independently here (bigbird's random
  blocks included, with splitmix64 re-implemented in numpy), the span cut
  and ``max_global``, split independence, validation.
* ``test_engine_pattern_*`` run ``$MNEMO_BIN logits`` on random checkpoints
  and compare with the float64 oracle (1e-4 relative) over segments, token
  by token and one call. They fail (never skip) without ``MNEMO_BIN``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnemo_reference import (
    PatternState,
    TransfoXLReference,
    bigbird_mix,
    bigbird_random_blocks,
    layer_specs,
    splitmix64_finalise,
    stream_logits,
    validate_config,
)

from parity_common import (
    run_splits,
    oracle_model,
    base_config as _config,
    check_engine_parity,
    max_rel as _max_rel,
    MODES,
)


def _pat(pattern: str, **fields) -> dict:
    return dict({"attention": "sparse", "pattern": pattern}, **fields)


DENSE = {"attention": "dense"}
STREAM_LEN = 41
SEGMENT_LENS = [3, 8]

CONFIGS = {
    "strided_heads": _config(layers=[
        _pat("strided", stride=4, span=20),
        _pat("strided", stride=3, span=9, components=["strided", "local"])]),
    "strided_union_globalpos": _config(pre_lnorm=True, layers=[
        _pat("strided", stride=5, span=12, split="union",
             global_positions=[0, 3, 17, 30]),
        _pat("strided", stride=2, span=40, components=["strided"],
             global_positions=[1, 2, 6, 7, 8], max_global=2)]),
    "fixed_heads": _config(layers=[
        _pat("fixed", block=6, summary=2, span=30),
        _pat("fixed", block=4, summary=1, span=11,
             components=["summary", "block"])]),
    "fixed_union_globaltok": _config(pre_lnorm=True, activation="gelu",
                                     tie_word_embeddings=False, layers=[
        _pat("fixed", block=5, summary=2, span=14, split="union",
             global_tokens=[3, 7, 11], max_global=3),
        _pat("fixed", block=8, summary=3, span=64, components=["block"],
             global_tokens=[5], global_positions=[2], max_global=1)]),
    "bigbird": _config(layers=[
        _pat("bigbird", block=3, span=24, seed=7),
        _pat("bigbird", block=2, span=17, window_blocks=2, random_blocks=3,
             seed=1234567890123456789)]),
    "bigbird_globaltok_pre": _config(pre_lnorm=True, layers=[
        _pat("bigbird", block=4, span=40, window_blocks=1, random_blocks=1,
             global_tokens=[1, 2, 3, 4, 5, 6], max_global=4),
        _pat("bigbird", block=3, span=12, random_blocks=0,
             global_positions=[0, 1])]),
    "window_globals": _config(layers=[
        {"attention": "sparse", "window": 3, "dilation": [1, 2, 1, 3],
         "global_positions": [0, 10, 11, 25]},
        {"attention": "sparse", "window": 4, "global_tokens": [0, 9],
         "max_global": 2}]),
    "mixed_dense": _config(n_layer=3, mem_len=6, layers=[
        DENSE, _pat("strided", stride=3, span=10, global_positions=[4]),
        _pat("bigbird", block=4, span=20, random_blocks=1, seed=3)]),
}


def _seed(name: str) -> int:
    return sorted(CONFIGS).index(name) + 501


def _document(cfg: dict, length: int = STREAM_LEN, seed: int = 77) -> list:
    """Stream with a few small token ids so global_tokens occur often."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg["vocab_size"], size=length)
    small = rng.random(length) < 0.3
    ids[small] = rng.integers(0, 12, size=int(small.sum()))
    return ids.tolist()


def _model(cfg: dict, seed: int = 3) -> TransfoXLReference:
    return oracle_model(cfg, seed)


# --------------------------------------------------------------------------
# The patterns, enumerated independently (from the format's tables)
# --------------------------------------------------------------------------


def _np_f(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser in numpy uint64 (wrapping) arithmetic."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _np_mix(s, h, q, t) -> int:
    u = lambda v: np.array([v], dtype=np.uint64)  # noqa: E731
    return int(_np_f(_np_f(_np_f(u(s) ^ u(h)) ^ u(q)) ^ u(t))[0])


def _random_blocks(seed, h, q, span, b, w, r) -> set:
    lo, hi = max(0, q - span // b), q - w
    cand = [blk for blk in range(lo, hi + 1)]
    if len(cand) <= r:
        return set(cand)
    for t in range(r):
        i = t + _np_mix(seed, h, q, t) % (len(cand) - t)
        cand[t], cand[i] = cand[i], cand[t]
    return set(cand[:r])


def _base_set(entry: dict, h: int, p: int, n_head: int) -> set:
    """Allowed_h(p) before the span cut, literally (j <= p)."""
    pattern = entry.get("pattern", "window")
    if pattern == "window":
        dil = entry.get("dilation", 1)
        d = dil[h] if isinstance(dil, list) else dil
        out = {p - r * d for r in range(entry["window"])}
    elif pattern in ("strided", "fixed"):
        names = {"strided": ["local", "strided"],
                 "fixed": ["block", "summary"]}[pattern]
        comps = entry.get("components", names)
        if entry.get("split", "heads") == "heads":
            comps = [comps[h % len(comps)]]
        out = set()
        for comp in comps:
            if comp == "local":
                l = entry["stride"]
                out |= set(range(p - l + 1, p + 1))
            elif comp == "strided":
                out |= set(range(p, -1, -entry["stride"]))
            elif comp == "block":
                l = entry["block"]
                out |= set(range(p // l * l, p + 1))
            else:
                l, c = entry["block"], entry["summary"]
                out |= {j for j in range(p + 1) if j % l >= l - c}
    else:
        b = entry["block"]
        w = entry.get("window_blocks", 3)
        q = p // b
        blocks = set(range(q - w + 1, q + 1)) | _random_blocks(
            entry.get("seed", 0), h, q, entry["span"], b, w,
            entry.get("random_blocks", 2))
        out = {j for j in range(p + 1) if j // b in blocks}
    return {j for j in out if 0 <= j <= p}


def _visible(entry: dict, n_head: int, ids: list) -> torch.Tensor:
    """Boolean [H, N, N] of a sparse layers entry over the stream ``ids``."""
    N = len(ids)
    if entry.get("pattern", "window") == "window":
        dil = entry.get("dilation", 1)
        span = (entry["window"] - 1) * (max(dil) if isinstance(dil, list)
                                        else dil)
    else:
        span = entry["span"]
    gpos = set(entry.get("global_positions", []))
    gtok = set(entry.get("global_tokens", []))
    max_global = entry.get("max_global", len(entry.get("global_positions",
                                                       [])))
    is_global = [p in gpos or ids[p] in gtok for p in range(N)]
    mask = torch.zeros(n_head, N, N, dtype=torch.bool)
    for h in range(n_head):
        for p in range(N):
            seen = (set(range(p + 1)) if is_global[p]
                    else _base_set(entry, h, p, n_head))
            seen = {j for j in seen if p - j <= span}
            before = [j for j in range(p) if is_global[j]]
            if max_global:
                seen |= set(before[-max_global:])
            for j in seen:
                mask[h, p, j] = True
    return mask


def _naive_attention(attn, x: torch.Tensor, visible) -> torch.Tensor:
    """Attention sub-layer, loop by loop; a head seeing nothing gives 0."""
    B, N, _ = x.shape
    H, dh = attn.n_head, attn.d_head
    h_in = attn.ln(x) if attn.pre_lnorm else x
    wq, wk, wv = attn.qkv.weight.split(H * dh)
    heads = torch.zeros(B, N, H * dh, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            rows = slice(h * dh, (h + 1) * dh)
            q, k, v = (h_in[b] @ w[rows].t() for w in (wq, wk, wv))
            for i in range(N):
                js = [j for j in range(N) if visible[h, i, j]]
                assert all(j <= i for j in js)
                if not js:
                    continue
                s = torch.stack([q[i] @ k[j] for j in js]) / math.sqrt(dh)
                p = torch.softmax(s, dim=0)
                heads[b, i, rows] = sum(p[n] * v[j] for n, j in enumerate(js))
    out = x + heads @ attn.o.weight.t()
    return out if attn.pre_lnorm else attn.ln(out)


@torch.no_grad()
def _naive_logits(model: TransfoXLReference, ids: list) -> torch.Tensor:
    """Whole sparse-only model, every layer under its enumerated mask."""
    cfg = model.config
    x = model.word_emb.weight[torch.tensor(ids)][None] * math.sqrt(
        cfg["d_model"])
    for entry, layer in zip(cfg["layers"], model.stack):
        vis = _visible(entry, cfg["n_head"], ids)
        x = layer.ff(_naive_attention(layer.attn, x, vis))
    return (x @ model.output_weight().t() + model.lm_head.bias)[0]


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


def test_reference_only_pattern_splitmix64_known_values():
    # splitmix64 seeded with 0: its outputs are f(0) and f(golden ratio).
    assert splitmix64_finalise(0) == 0xE220A8397B1DCDAF
    assert splitmix64_finalise(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    for s, h, q, t in [(0, 0, 0, 0), (7, 3, 100, 1), (2**64 - 1, 5, 9, 2),
                       (12345678901234567890, 1, 77, 0)]:
        assert bigbird_mix(s, h, q, t) == _np_mix(s, h, q, t)


def test_reference_only_pattern_bigbird_random_blocks():
    """Deterministic, distinct, within the candidates, of size min(r, |C|)."""
    for seed in (0, 1, 99, 2**63 + 5):
        for h in range(3):
            for q in range(0, 40):
                for span, b, w, r in [(24, 3, 3, 2), (17, 2, 2, 3),
                                      (100, 4, 1, 5), (8, 4, 1, 1)]:
                    got = bigbird_random_blocks(seed, h, q, span, b, w, r)
                    again = bigbird_random_blocks(seed, h, q, span, b, w, r)
                    assert got == again
                    cand = set(range(max(0, q - span // b), q - w + 1))
                    assert len(set(got)) == len(got) == min(r, len(cand))
                    assert set(got) <= cand
                    assert set(got) == _random_blocks(seed, h, q, span, b,
                                                      w, r)
    # Heads and seeds differ (not one fixed choice); mix starts from
    # seed XOR head, so seeds 0..3 with heads 0..3 repeat by design.
    picks = {tuple(bigbird_random_blocks(s, h, 30, 100, 2, 1, 3))
             for s in (0, 64, 128, 192) for h in range(4)}
    assert len(picks) > 8
    assert bigbird_random_blocks(1, 2, 30, 100, 2, 1, 3) == \
        bigbird_random_blocks(3, 0, 30, 100, 2, 1, 3)


FULL = [
    # Patterns that cover every j <= p for a stream of 30 (span 64).
    _pat("strided", stride=1, span=64, split="union"),
    _pat("strided", stride=1, span=64, components=["strided"]),
    _pat("strided", stride=31, span=64, components=["local"]),
    _pat("strided", stride=31, span=30, split="union"),
    _pat("fixed", block=32, summary=1, span=64, components=["block"]),
    _pat("fixed", block=5, summary=5, span=64, components=["summary"]),
    _pat("fixed", block=4, summary=4, span=30, split="union"),
    _pat("bigbird", block=1, span=64, window_blocks=30, random_blocks=0),
    _pat("bigbird", block=40, span=64),
    _pat("bigbird", block=2, span=64, window_blocks=1, random_blocks=30),
    _pat("window", window=2, global_tokens=list(range(60)), max_global=30),
    {"attention": "sparse", "window": 1,
     "global_positions": list(range(30))},
]


@pytest.mark.parametrize("entry", FULL, ids=[str(i) for i in range(len(FULL))])
def test_reference_only_pattern_covering_everything_is_causal(entry):
    """A pattern that covers every earlier key equals a window wider than
    the stream (itself equal to causal attention, test_sparse_parity)."""
    wide = {"attention": "sparse", "window": 64}
    cfg = _config(pre_lnorm=True, layers=[entry, entry])
    model = _model(cfg, seed=21)
    causal = TransfoXLReference(_config(pre_lnorm=True, layers=[wide, wide]))
    causal.load_state_dict(model.state_dict())
    causal = causal.double()
    ids = _document(cfg, 30)
    want = stream_logits(causal, ids, 30)
    for seg in (30, 7):
        assert _max_rel(stream_logits(model, ids, seg), want) <= 1e-12
    assert _max_rel(stream_logits(model, ids, decode=True), want) <= 1e-12


@pytest.mark.parametrize("name", sorted(n for n in CONFIGS
                                        if n != "mixed_dense"))
def test_reference_only_pattern_equals_enumerated_mask(name):
    """Each pattern (with its span cut and globals) equals attention under
    the mask enumerated in this file, fed in any split."""
    model = _model(CONFIGS[name], seed=_seed(name))
    ids = _document(model.config)
    want = _naive_logits(model, ids)
    N = len(ids)
    for splits in ([N], [1] * N, [5, 11, 1, N - 17], [8] * 5 + [1]):
        got, mems = run_splits(model, ids, splits)
        assert _max_rel(got, want) <= 1e-10, splits
        assert all(isinstance(m, PatternState) for m in mems)
    assert want.std(dim=-1).min() > 0.1
    # The pattern matters: full causal attention gives other logits.
    wide = {"attention": "sparse", "window": 64}
    causal = TransfoXLReference(dict(model.config, layers=[wide, wide]))
    causal.load_state_dict(model.state_dict())
    assert _max_rel(stream_logits(causal.double(), ids, N), want) > 1e-3


def test_reference_only_pattern_enumerated_masks_are_sparse():
    """The test's masks really cut: spans, heads and globals all bite."""
    ids = _document(CONFIGS["fixed_union_globaltok"])
    cfg = CONFIGS["strided_heads"]
    vis = _visible(cfg["layers"][0], 4, ids)
    assert not torch.equal(vis[0], vis[1])           # local vs strided head
    assert torch.equal(vis[0], vis[2])
    assert not vis[1, 40, 0] and vis[1, 40, 20] and not vis[1, 40, 16]
    g = CONFIGS["strided_union_globalpos"]["layers"][1]    # max_global 2
    vis = _visible(g, 4, ids)
    assert vis[:, 40, 7].all() and vis[:, 40, 8].all()
    assert not vis[:, 39, 6].any() and not vis[:, 40, 1].any()
    assert vis[:, 7, 6].all() and vis[:, 7, 2].all()    # global query
    assert vis[:, 8, :9].all()


def test_reference_only_pattern_fixed_summary_head_is_literal():
    """A summary-only head sees the summary positions only: not itself, and
    nothing at all before the first one (its output is then zero)."""
    entry = _pat("fixed", block=4, summary=1, span=30,
                 components=["summary"])
    spec = layer_specs(_config(layers=[entry, DENSE]))[0]
    assert spec["head_components"] == [["summary"]] * 4
    vis = _visible(entry, 4, list(range(12)))
    assert vis[0, 0].nonzero().flatten().tolist() == []
    assert vis[0, 9].nonzero().flatten().tolist() == [3, 7]
    assert vis[0, 11].nonzero().flatten().tolist() == [3, 7, 11]
    cfg = _config(layers=[entry, entry])
    model = _model(cfg)
    attn = model.layers[0].attn
    captured = []
    attn.o.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    model(torch.tensor([[1, 2, 3, 4, 5]]))
    heads = captured[0][0].reshape(5, 4, 8)
    assert heads[:3].abs().max() == 0       # positions 0..2: nothing seen
    assert heads[3:].abs().min() > 0
    ids = _document(cfg, 20)
    assert _max_rel(stream_logits(model, ids, 7),
                    _naive_logits(model, ids)) <= 1e-10


def test_reference_only_pattern_span_cut_and_globals_are_kept():
    """Keys beyond the span vanish, except the kept global positions."""
    entry = _pat("strided", stride=1, span=5, components=["strided"],
                 global_positions=[0, 2, 4], max_global=2)
    cfg = _config(layers=[entry, entry])
    model = _model(cfg)
    ids = _document(cfg, 20)
    vis = _visible(entry, 4, ids)
    assert vis[0, 19].nonzero().flatten().tolist() == [2, 4, 14, 15, 16, 17,
                                                       18, 19]
    assert _max_rel(stream_logits(model, ids, 20),
                    _naive_logits(model, ids)) <= 1e-10
    no_globals = TransfoXLReference(dict(cfg, layers=[
        _pat("strided", stride=1, span=5, components=["strided"])] * 2))
    no_globals.load_state_dict(model.state_dict())
    assert _max_rel(stream_logits(no_globals.double(), ids, 20),
                    stream_logits(model, ids, 20)) > 1e-3


def test_reference_only_pattern_global_token_depends_on_ids():
    """global_tokens: the same stream with the token replaced differs only
    from the replaced position on (causal)."""
    entry = _pat("window", window=2, global_tokens=[5], max_global=3)
    cfg = _config(layers=[entry, entry])
    model = _model(cfg)
    ids = [9, 8, 5, 7, 6, 9, 9, 8, 10, 11, 12, 13]
    other = list(ids)
    other[2] = 4
    a, b = stream_logits(model, ids, 4), stream_logits(model, other, 4)
    assert _max_rel(a[:2], b[:2]) <= 1e-12
    assert _max_rel(a[3:], b[3:]) > 1e-3


def test_reference_only_pattern_tensors_are_those_of_a_window():
    for name, cfg in CONFIGS.items():
        plain = [DENSE if e["attention"] == "dense"
                 else {"attention": "sparse", "window": 2}
                 for e in cfg["layers"]]
        a = TransfoXLReference(cfg).state_dict()
        b = TransfoXLReference(dict(cfg, layers=plain)).state_dict()
        assert list(a) == list(b), name
        assert all(a[k].shape == b[k].shape for k in a), name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_pattern_engine_streams(name):
    model = _model(CONFIGS[name], seed=_seed(name))
    ids = _document(model.config)
    want = stream_logits(model, ids, decode=True)
    for seg in SEGMENT_LENS + [len(ids)]:
        got = stream_logits(model, ids, seg)
        if name != "mixed_dense":
            assert _max_rel(got, want) <= 1e-10, seg
        assert torch.isfinite(got).all()


def test_reference_only_pattern_valid_and_defaults():
    cfg = validate_config(_config(n_layer=4, layers=[
        _pat("strided", stride=3, span=10),
        _pat("fixed", block=4, summary=4, span=1, split="union"),
        _pat("bigbird", block=2, span=1048576),
        _pat("window", window=5, global_tokens=[0], max_global=65536)]))
    s = layer_specs(cfg)
    assert s[0]["components"] == ["local", "strided"]
    assert s[0]["head_components"] == [["local"], ["strided"]] * 2
    assert s[1]["head_components"] == [["block", "summary"]] * 4
    assert (s[2]["window_blocks"], s[2]["random_blocks"], s[2]["seed"]) == \
        (3, 2, 0)
    assert s[0]["max_global"] == 0 and s[0]["global_positions"] == []
    assert s[3]["span"] == 4 and s[3]["pattern"] == "window"
    assert layer_specs(validate_config(_config(layers=[
        _pat("strided", stride=2, span=4, global_positions=[1, 5]),
        DENSE])))[0]["max_global"] == 2


def _bad(entry, *fragments):
    return (entry, fragments)


_BAD = [
    _bad(_pat("diagonal", span=3), "'pattern'"),
    _bad(_pat(3, span=3), "'pattern'"),
    _bad(_pat("strided", span=4), "'stride'"),
    _bad(_pat("strided", stride=2), "'span'"),
    _bad(_pat("strided", stride=0, span=4), "'stride'"),
    _bad(_pat("strided", stride=2, span=0), "'span'"),
    _bad(_pat("strided", stride=2, span=1048577), "'span'"),
    _bad(_pat("strided", stride=2, span=4.0), "'span'"),
    _bad(_pat("strided", stride=2, span=4, components=[]), "'components'"),
    _bad(_pat("strided", stride=2, span=4, components=["block"]),
         "'components'"),
    _bad(_pat("strided", stride=2, span=4, components=["local", "local"]),
         "'components'"),
    _bad(_pat("strided", stride=2, span=4, components="local"),
         "'components'"),
    _bad(_pat("strided", stride=2, span=4, split="layers"), "'split'"),
    _bad(_pat("strided", stride=2, span=4, window=3), "'window'"),
    _bad(_pat("strided", stride=2, span=4, block=3), "'block'"),
    _bad(_pat("fixed", block=4, span=8), "'summary'"),
    _bad(_pat("fixed", block=4, summary=5, span=8), "'summary'"),
    _bad(_pat("fixed", block=4, summary=0, span=8), "'summary'"),
    _bad(_pat("fixed", summary=1, span=8), "'block'"),
    _bad(_pat("fixed", block=4, summary=1, span=8, components=["local"]),
         "'components'"),
    _bad(_pat("fixed", block=4, summary=1, span=8, stride=2), "'stride'"),
    _bad(_pat("bigbird", block=4), "'span'"),
    _bad(_pat("bigbird", span=4), "'block'"),
    _bad(_pat("bigbird", block=0, span=4), "'block'"),
    _bad(_pat("bigbird", block=2, span=4, window_blocks=0),
         "'window_blocks'"),
    _bad(_pat("bigbird", block=2, span=4, random_blocks=-1),
         "'random_blocks'"),
    _bad(_pat("bigbird", block=2, span=4, seed=-1), "'seed'"),
    _bad(_pat("bigbird", block=2, span=4, seed=2**64), "'seed'"),
    _bad(_pat("bigbird", block=2, span=4, split="union"), "'split'"),
    _bad(_pat("bigbird", block=2, span=4, components=["block"]),
         "'components'"),
    _bad(_pat("window", window=3, span=4), "'span'"),
    _bad(_pat("window", dilation=2), "'window'"),
    _bad(_pat("window", window=3, global_positions=[3, 1]),
         "'global_positions'"),
    _bad(_pat("window", window=3, global_positions=[1, 1]),
         "'global_positions'"),
    _bad(_pat("window", window=3, global_positions=[-1]),
         "'global_positions'"),
    _bad(_pat("window", window=3, global_positions=[1.0]),
         "'global_positions'"),
    _bad(_pat("window", window=3, global_positions=5),
         "'global_positions'"),
    _bad(_pat("window", window=3, global_tokens=[1]), "'max_global'"),
    _bad(_pat("window", window=3, global_tokens=[1], max_global=0),
         "'max_global'"),
    _bad(_pat("window", window=3, global_tokens=[60], max_global=1),
         "'global_tokens'"),
    _bad(_pat("window", window=3, global_tokens=[True], max_global=1),
         "'global_tokens'"),
    _bad(_pat("window", window=3, global_tokens=3, max_global=1),
         "'global_tokens'"),
    _bad(_pat("window", window=3, max_global=65537), "'max_global'"),
    _bad(_pat("window", window=3, max_global=-1), "'max_global'"),
    _bad(_pat("window", window=3, global_position=[1]),
         "'global_position'"),
]


@pytest.mark.parametrize("entry,fragments", _BAD,
                         ids=[str(i) for i in range(len(_BAD))])
def test_reference_only_pattern_validation_errors(entry, fragments):
    cfg = _config(layers=[DENSE, entry])
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    for fragment in ("layers[1]",) + tuple(fragments):
        assert fragment in str(info.value), (fragment, str(info.value))


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_pattern(mnemo_bin, tmp_path, name, mode):
    ids = _document(CONFIGS[name])
    check_engine_parity(mnemo_bin, tmp_path, CONFIGS[name], _seed(name), ids, mode,
                        f"{name} {mode}")
