"""LSH (Reformer) attention layers: oracle checks and engine parity.

``{"attention": "lsh", "n_hashes": R, "n_buckets": nb, "chunk_len": c,
"history": Hh}`` (docs/checkpoint-format.md): shared query/key vectors
``x_p`` (``attn.qkv.weight`` [2 H d_h, D]), buckets
``argmax([x.rot, -x.rot])`` per round (``attn.rotations`` [H, d_h, R,
nb/2]), normalised keys, and per query p the window
``U(p) = {p - Hh < j <= p}`` sorted by (bucket, j) in each round; the
candidates are p's chunk and the one before; the output is the softmax over
the union of candidates minus p, or ``v_p`` when p is alone.

* ``test_reference_only_lsh_*``: one bucket / a chunk covering the window
  is causal attention without self, the oracle equals a numpy enumeration
  of the definition, causality, more hashes approach dense attention, split
  independence (prefix semantics), state size, tensors, validation.
* ``test_engine_lsh_*``: ``$MNEMO_BIN logits`` against the float64 oracle
  (1e-4 relative) for several R / nb / chunk_len / history (history shorter
  than the stream included) and a mixed model (sparse window, lsh, linear
  elu, dense + compressive memory). Hashing is discontinuous, so the seeds
  are chosen (deterministically) so that no hash of the oracle is within
  ``LSH_MARGIN`` of a tie: float32 then picks the same buckets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnemo_reference import (
    LSHAttention,
    LSHState,
    TransfoXLReference,
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


def _lsh(R: int, nb: int, c: int, history=None) -> dict:
    entry = {"attention": "lsh", "n_hashes": R, "n_buckets": nb,
             "chunk_len": c}
    if history is not None:
        entry["history"] = history
    return entry


DENSE = {"attention": "dense"}
ELU = {"attention": "linear", "feature_map": "elu"}
STREAM_LEN = 41
#: smallest top-1 / top-2 gap of any hash in the engine tests' oracle runs.
LSH_MARGIN = 2e-3

CONFIGS = {
    "r2_nb4_c4": _config(layers=[_lsh(2, 4, 4), _lsh(2, 4, 4)]),
    "r4_nb8_c2_h17_pre": _config(pre_lnorm=True, layers=[
        _lsh(4, 8, 2, 17), _lsh(3, 6, 3, 12)]),
    "r1_nb2_c1_h5": _config(layers=[_lsh(1, 2, 1, 5), _lsh(1, 16, 5, 9)],
                            activation="gelu", tie_word_embeddings=False),
    "r8_nb4_c8_h64_pre": _config(pre_lnorm=True, n_head=2, d_head=12,
                                 d_model=24, layers=[_lsh(8, 4, 8, 64),
                                                     _lsh(2, 32, 4, 30)]),
    "mixed": _config(n_layer=4, mem_len=6, layers=[
        {"attention": "sparse", "window": 4, "dilation": 2},
        _lsh(2, 4, 3, 20), ELU,
        {"attention": "dense", "memory": "compressive",
         "compression": "mean_pool", "compression_rate": 2, "cmem_len": 3}]),
    "mixed_pre": _config(n_layer=4, mem_len=5, pre_lnorm=True,
                         untie_r=False, layers=[
        {"attention": "sparse", "pattern": "strided", "stride": 3,
         "span": 12},
        _lsh(3, 8, 2, 9), ELU,
        {"attention": "dense", "memory": "compressive",
         "compression": "conv1d", "compression_rate": 3, "cmem_len": 2}]),
}


def _document(cfg: dict, length: int = STREAM_LEN, seed: int = 99) -> list:
    return document(cfg, length, seed)


def _model(cfg: dict, seed: int = 5) -> TransfoXLReference:
    return oracle_model(cfg, seed)


_SEEDS: dict = {}


def _seed(name: str) -> int:
    """First seed >= base whose oracle runs (every mode) hash with margin."""
    if name in _SEEDS:
        return _SEEDS[name]
    base = 700 + 50 * sorted(CONFIGS).index(name)
    cfg = CONFIGS[name]
    ids = _document(cfg)
    for seed in range(base, base + 50):
        model = _model(cfg, seed)
        model.reset_margin_stats()
        for mode in MODES:
            stream_logits(model, ids, *mode_args(mode, len(ids)))
        if (model.min_lsh_margin() >= LSH_MARGIN
                and model.min_usage_margin() >= 1e-4):
            _SEEDS[name] = seed
            return seed
    raise AssertionError(f"{name}: no well-conditioned seed found")


def _module(entry: dict, pre_lnorm: bool, seed: int = 7, **over
            ) -> LSHAttention:
    cfg = _config(pre_lnorm=pre_lnorm, layers=[entry, DENSE], **over)
    attn = _model(cfg, seed).layers[0].attn
    assert isinstance(attn, LSHAttention)
    return attn


@torch.no_grad()
def _run_module(attn, x, splits):
    state = attn.init_state(x.shape[0], x)
    outs, start = [], 0
    for size in splits:
        y, state = attn(x[:, start:start + size], state)
        outs.append(y)
        start += size
    return torch.cat(outs, dim=1), state


def _finish(attn, x, heads):
    """Residual, o, LayerNorm around per-head outputs [B, N, H*dh]."""
    out = x + heads @ attn.o.weight.t()
    return out if attn.pre_lnorm else attn.ln(out)


def _projections(attn, x):
    H, dh = attn.n_head, attn.d_head
    h_in = attn.ln(x) if attn.pre_lnorm else x
    w = attn.qkv.weight
    xs = (h_in @ w[:H * dh].t()).reshape(*x.shape[:2], H, dh)
    v = (h_in @ w[H * dh:].t()).reshape(*x.shape[:2], H, dh)
    return xs, v


def _normalised(xv: torch.Tensor, dh: int) -> torch.Tensor:
    return xv / torch.sqrt((xv * xv).mean() + 1e-6) / math.sqrt(dh)


@torch.no_grad()
def _naive_lsh(attn, x: torch.Tensor) -> torch.Tensor:
    """The definition over a whole stream, numpy sorting, loop by loop."""
    B, N, _ = x.shape
    H, dh = attn.n_head, attn.d_head
    R, c, Hh = attn.n_hashes, attn.chunk_len, attn.history
    xs, v = _projections(attn, x)
    rot = attn.rotations.detach().double().numpy()
    heads = torch.zeros(B, N, H * dh, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            X = xs[b, :, h].numpy()
            y = np.einsum("nd,drk->rnk", X, rot[h])
            bucket = np.argmax(np.concatenate([y, -y], axis=-1), axis=-1)
            for p in range(N):
                js = np.arange(max(0, p - Hh + 1), p + 1)
                cand = set()
                for r in range(R):
                    order = js[np.lexsort((js, bucket[r, js]))]
                    s = int(np.nonzero(order == p)[0][0])
                    first = s // c * c - c
                    for rank in range(first, first + 2 * c):
                        if 0 <= rank < len(order):
                            cand.add(int(order[rank]))
                cand.discard(p)
                if not cand:
                    heads[b, p, h * dh:(h + 1) * dh] = v[b, p, h]
                    continue
                ks = sorted(cand)
                logits = torch.stack([xs[b, p, h] @ _normalised(
                    xs[b, j, h], dh) for j in ks])
                w = torch.softmax(logits, dim=0)
                heads[b, p, h * dh:(h + 1) * dh] = sum(
                    w[n] * v[b, j, h] for n, j in enumerate(ks))
    return _finish(attn, x, heads)


@torch.no_grad()
def _dense_without_self(attn, x: torch.Tensor, history: int
                        ) -> torch.Tensor:
    """Softmax over every j in (p - history, p) (v_p at p = 0)."""
    B, N, _ = x.shape
    H, dh = attn.n_head, attn.d_head
    xs, v = _projections(attn, x)
    k = xs / torch.sqrt((xs * xs).mean(dim=-1, keepdim=True) + 1e-6) \
        / math.sqrt(dh)
    scores = torch.einsum("bphd,bjhd->bhpj", xs, k)
    p = torch.arange(N)[:, None]
    j = torch.arange(N)[None, :]
    allowed = (j < p) & (j > p - history)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhpj,bjhd->bphd", probs, v)
    alone = ~allowed.any(dim=-1)                              # p = 0 etc.
    out[:, alone] = v[:, alone]
    return _finish(attn, x, out.reshape(B, N, H * dh))


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------

SPLITS = ([30], [1] * 30, [7, 1, 22], [4] * 7 + [2])


@pytest.mark.parametrize("pre_lnorm", [True, False], ids=["pre", "post"])
@pytest.mark.parametrize("history", [4096, 30, 9])
def test_reference_only_lsh_one_bucket_is_causal_without_self(history,
                                                              pre_lnorm):
    """Zero rotations put every position in bucket 0 (first max of
    [0, -0]); a chunk covering the window: softmax over U(p) minus p."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 30, 32, generator=gen, dtype=torch.float64)
    for entry, zero in [(_lsh(2, 2, 30, history), True),
                        (_lsh(3, 8, 16, history), False)]:
        if entry["chunk_len"] < min(history, 30):
            entry = dict(entry, chunk_len=min(history, 30))
        attn = _module(entry, pre_lnorm)
        if zero:
            with torch.no_grad():
                attn.rotations.zero_()
            assert (attn.buckets(torch.randn(1, 4, 5, 8,
                                             dtype=torch.float64)) == 0).all()
        want = _dense_without_self(attn, x, history)
        for splits in SPLITS:
            got, state = _run_module(attn, x, splits)
            assert _max_rel(got, want) <= 1e-12, (entry, splits)
            assert state.x.shape[2] == min(history - 1, 30)


def test_reference_only_lsh_one_bucket_small_chunks():
    """One bucket, chunk_len 3: the ranks are positions; p sees its chunk
    of the window and the one before."""
    attn = _module(_lsh(1, 2, 3), pre_lnorm=False)
    with torch.no_grad():
        attn.rotations.zero_()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 20, 32, generator=gen, dtype=torch.float64)
    got, _ = _run_module(attn, x, [20])
    assert _max_rel(got, _naive_lsh(attn, x)) <= 1e-12
    assert attn.candidates([[0] * 20], 7) == [3, 4, 5, 6, 7]
    assert attn.candidates([[0] * 20], 6) == [3, 4, 5, 6]
    assert attn.candidates([[0] * 20], 2) == [0, 1, 2]


CASES = [
    # (entry, n_head, d_head)
    (_lsh(1, 2, 1), 4, 8),
    (_lsh(2, 4, 4), 4, 8),
    (_lsh(4, 8, 2, 17), 4, 8),
    (_lsh(3, 6, 5, 7), 2, 12),
    (_lsh(8, 16, 1, 3), 4, 8),
    (_lsh(2, 4, 3, 1), 4, 8),
]


@pytest.mark.parametrize("pre_lnorm", [True, False], ids=["pre", "post"])
@pytest.mark.parametrize("entry,n_head,d_head", CASES,
                         ids=[str(i) for i in range(len(CASES))])
def test_reference_only_lsh_equals_naive_definition(entry, n_head, d_head,
                                                    pre_lnorm):
    attn = _module(entry, pre_lnorm, n_head=n_head, d_head=d_head)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 30, 32, generator=gen, dtype=torch.float64)
    want = _naive_lsh(attn, x)
    for splits in SPLITS:
        got, _ = _run_module(attn, x, splits)
        assert _max_rel(got, want) <= 1e-12, splits
    if attn.history > 1 and attn.chunk_len < 15:
        # Not dense attention: hashing and chunking matter.
        dense = _dense_without_self(attn, x, attn.history)
        assert _max_rel(dense, want) > 1e-3


def test_reference_only_lsh_history_one_returns_value():
    """history 1: U(p) = {p}, the output is v_p."""
    attn = _module(_lsh(2, 4, 2, 1), pre_lnorm=True)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 9, 32, generator=gen, dtype=torch.float64)
    _, v = _projections(attn, x)
    heads = v.reshape(1, 9, -1)
    got, state = _run_module(attn, x, [4, 5])
    assert _max_rel(got, _finish(attn, x, heads)) <= 1e-12
    assert state.x.shape[2] == 0


def test_reference_only_lsh_causal():
    """Changing future tokens never changes earlier logits."""
    cfg = CONFIGS["r4_nb8_c2_h17_pre"]
    model = _model(cfg)
    ids = _document(cfg, 30)
    base = stream_logits(model, ids, 30)
    for cut in (1, 10, 29):
        other = ids[:cut] + [(t * 7 + 3) % cfg["vocab_size"]
                             for t in ids[cut:]]
        got = stream_logits(model, other, 30)
        assert _max_rel(got[:cut], base[:cut]) <= 1e-13, cut
        assert _max_rel(got[cut:], base[cut:]) > 1e-3, cut


def test_reference_only_lsh_more_hashes_approach_dense():
    """Rounds are nested (the first R of 64), so the candidate sets grow
    with R and the output approaches attention over all of U(p)."""
    big = _module(_lsh(64, 8, 2), pre_lnorm=False, seed=11)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 40, 32, generator=gen, dtype=torch.float64)
    dense = _dense_without_self(big, x, 4096)
    xs, _ = _projections(big, x)
    errors, coverage = [], []
    for R in (1, 2, 4, 16, 64):
        attn = _module(_lsh(R, 8, 2), pre_lnorm=False, seed=11)
        attn.load_state_dict({k: (v[:, :, :R] if k == "rotations" else v)
                              for k, v in big.state_dict().items()})
        got, _ = _run_module(attn, x, [40])
        errors.append(_max_rel(got, dense))
        bucket = attn.buckets(xs.transpose(1, 2)).tolist()
        seen = sum(len(attn.candidates(bucket[0][h], p))
                   for h in range(4) for p in range(40))
        coverage.append(seen / (4 * 40 * 41 / 2))
    assert coverage == sorted(coverage) and coverage[0] < 0.5
    assert coverage[-1] > 0.95
    assert errors[-1] < 0.2 * errors[0], errors
    assert errors[-1] < errors[2] < errors[0], errors


@pytest.mark.parametrize("name", ["r2_nb4_c4", "r4_nb8_c2_h17_pre",
                                  "r1_nb2_c1_h5"])
def test_reference_only_lsh_split_independent(name):
    """Per-query windows: any split gives the same logits and state."""
    model = _model(CONFIGS[name])
    ids = _document(model.config)
    N = len(ids)
    whole, whole_mems = run_splits(model, ids, [N])
    for splits in ([1] * N, [5, 11, 1, N - 17], [N - 1, 1], [8] * 5 + [1]):
        logits, mems = run_splits(model, ids, splits)
        assert _max_rel(logits, whole) <= 1e-10, splits
        for a, b in zip(mems, whole_mems):
            assert isinstance(a, LSHState)
            assert torch.equal(a.x, b.x) or _max_rel(a.x, b.x) <= 1e-10
    for spec, mem in zip(layer_specs(model.config), whole_mems):
        assert mem.x.shape[2] == min(N, spec["history"] - 1)
    assert whole.std(dim=-1).min() > 0.1


def test_reference_only_lsh_mixed_engine_streams():
    for name in ("mixed", "mixed_pre"):
        model = _model(CONFIGS[name])
        ids = _document(model.config)
        for mode in MODES:
            got = stream_logits(model, ids, *mode_args(mode, len(ids)))
            assert torch.isfinite(got).all() and got.std() > 0.1


def test_reference_only_lsh_tensors():
    cfg = _config(n_head=3, d_head=5, layers=[_lsh(4, 6, 2), ELU])
    state = TransfoXLReference(cfg).state_dict()
    p = "layers.0.attn."
    assert set(k for k in state if k.startswith(p)) == {
        p + "qkv.weight", p + "rotations", p + "o.weight", p + "ln.weight",
        p + "ln.bias"}
    assert tuple(state[p + "qkv.weight"].shape) == (2 * 3 * 5, 32)
    assert tuple(state[p + "rotations"].shape) == (3, 5, 4, 3)
    assert "r_w_bias" not in state     # no dense layer: no shared r biases
    big = _model(_config(layers=[_lsh(64, 64, 2), ELU]), seed=1)
    rot = big.layers[0].attn.rotations
    assert abs(float(rot.mean())) < 0.05 and abs(float(rot.std()) - 1) < 0.05


def test_reference_only_lsh_defaults():
    spec = layer_specs(validate_config(_config(layers=[_lsh(1, 2, 1),
                                                       DENSE])))[0]
    assert spec == {"attention": "lsh", "n_hashes": 1, "n_buckets": 2,
                    "chunk_len": 1, "history": 4096}
    validate_config(_config(layers=[_lsh(64, 65536, 10**6, 1 << 20), DENSE]))


_BAD = [
    ({"attention": "lsh", "n_buckets": 4, "chunk_len": 2}, "'n_hashes'"),
    ({"attention": "lsh", "n_hashes": 1, "chunk_len": 2}, "'n_buckets'"),
    ({"attention": "lsh", "n_hashes": 1, "n_buckets": 4}, "'chunk_len'"),
    (_lsh(0, 4, 2), "'n_hashes'"),
    (_lsh(65, 4, 2), "'n_hashes'"),
    (_lsh(2.0, 4, 2), "'n_hashes'"),
    (_lsh(1, 3, 2), "'n_buckets'"),
    (_lsh(1, 0, 2), "'n_buckets'"),
    (_lsh(1, 65538, 2), "'n_buckets'"),
    (_lsh(1, True, 2), "'n_buckets'"),
    (_lsh(1, 4, 0), "'chunk_len'"),
    (_lsh(1, 4, 2, 0), "'history'"),
    (_lsh(1, 4, 2, (1 << 20) + 1), "'history'"),
    (_lsh(1, 4, 2, "64"), "'history'"),
    (dict(_lsh(1, 4, 2), window=3), "'window'"),
    (dict(_lsh(1, 4, 2), n_hash=3), "'n_hash'"),
]


@pytest.mark.parametrize("entry,fragment", _BAD,
                         ids=[str(i) for i in range(len(_BAD))])
def test_reference_only_lsh_validation_errors(entry, fragment):
    cfg = _config(layers=[DENSE, entry])
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    assert "layers[1]" in str(info.value) and fragment in str(info.value), \
        str(info.value)


def test_reference_only_lsh_checkpoint_roundtrip(tmp_path):
    made = random_checkpoint(CONFIGS["mixed_pre"], tmp_path, seed=3)
    loaded = load_checkpoint(tmp_path)
    for key, value in made.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_lsh(mnemo_bin, tmp_path, name, mode):
    ids = _document(CONFIGS[name])
    check_engine_parity(mnemo_bin, tmp_path, CONFIGS[name], _seed(name), ids, mode,
                        f"{name} {mode}")
