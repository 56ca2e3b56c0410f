"""Linear-attention layers (config ``layers``): oracle checks and parity.

Per-layer attention kinds are described in mnemo_reference (``layers``
config field, MODEL-SPEC section 5): ``dense`` is the Transformer-XL
attention, ``linear`` is causal linear attention with feature map ``elu``,
``favor`` or ``rfa`` (optionally gated) and a carried (S, z) state.

Two groups of tests, named like test_reference_parity.py's:

* ``test_reference_only_linear_*`` check the oracle itself and need no
  engine: recurrent and parallel forms agree, the carried state does not
  depend on how a stream is split into calls, tensor names, checkpoint I/O,
  feature initialisation and ``layers`` validation.
* ``test_engine_linear_*`` run ``$MNEMO_BIN logits ...`` (README.md) on
  random checkpoints with linear layers and compare with the float64
  oracle. They fail (never skip) when ``MNEMO_BIN`` is unset or is not an
  executable.

Run::

    MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
        tests/reference/test_linear_parity.py
    .venv/bin/python -m pytest tests/reference -k reference_only_linear
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import mnemo_checkpoint
from mnemo_reference import (
    DTYPES,
    LinearAttention,
    LinearState,
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
    decode_document as _decode_document,
    document as _document,
    engine_logits,
    max_rel as _max_rel,
    segment_document as _segment_document,
    segment_len as _segment_len,
    write_ids,
)

# --------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------


def _linear(feature_map: str, **fields) -> dict:
    return dict({"attention": "linear", "feature_map": feature_map}, **fields)


DENSE = {"attention": "dense"}
ELU = _linear("elu")
# 20 = two full orthogonal blocks of d_head = 8 rows plus a partial one.
FAVOR = _linear("favor", num_features=20)
# m = 64 keeps the sin/cos denominators well away from 0 (see
# _check_conditioning); with m = 16 random checkpoints can go negative.
RFA = _linear("rfa", num_features=64)
RFA_GATED = _linear("rfa", num_features=64, gated=True)


def _variants(name: str, layers: list, **overrides) -> dict:
    """Pre-LN and post-LN variants of one layer layout."""
    return {
        f"{name}_pre": _config(pre_lnorm=True, layers=layers, **overrides),
        f"{name}_post": _config(pre_lnorm=False, layers=layers, **overrides),
    }


CONFIGS = {}
CONFIGS.update(_variants("elu", [ELU, _linear("elu", eps=1e-5)],
                         activation="gelu", tie_word_embeddings=False))
CONFIGS.update(_variants("favor", [FAVOR, FAVOR], n_head=3, d_head=8,
                         untie_r=False))  # no dense layer: no r biases
CONFIGS.update(_variants("rfa_gated", [RFA_GATED, RFA_GATED],
                         vocab_size=70, d_model=40, n_head=5, d_head=6))
CONFIGS.update(_variants("rfa", [RFA, _linear("rfa", num_features=64,
                                              gated=False, eps=1e-6)],
                         memory_init="empty"))
# Mixed stack; mem_len 8 applies to the two dense layers only.
CONFIGS.update({
    "mixed_pre": _config(
        pre_lnorm=True, n_layer=4, layers=[DENSE, ELU, FAVOR, DENSE],
        mem_len=8, clamp_len=5, same_length=True, untie_r=False,
        activation="gelu", tie_word_embeddings=False),
    "mixed_post": _config(
        pre_lnorm=False, n_layer=4, layers=[DENSE, ELU, FAVOR, DENSE],
        mem_len=8, untie_r=True, memory_init="empty"),
})

LINEAR_ONLY = [name for name, cfg in CONFIGS.items()
               if all(e["attention"] == "linear" for e in cfg["layers"])]

SEGMENT_KINDS = ["short", "equal", "long"]

#: smallest linear denominator phi(q).z the engine tests accept in the
#: float64 oracle for an rfa layer. sin/cos features can cancel; a
#: denominator near 0 turns float32 rounding into large output errors, which
#: is a property of the test data, not an engine bug. elu and favor features
#: are positive (no cancellation); there the denominator only has to stay
#: far above the eps clamp (100 * eps; the query stabiliser makes favor
#: denominators scale like exp(-|q^|^2/2), so they are legitimately small).
MIN_RFA_DENOMINATOR = 1e-2


def _seed(name: str) -> int:
    return sorted(CONFIGS).index(name) + 101


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _check_conditioning(model: TransfoXLReference, what: str) -> None:
    for n, layer in enumerate(model.layers):
        if layer.kind != "linear":
            continue
        attn = layer.attn
        floor = (MIN_RFA_DENOMINATOR if attn.feature_map == "rfa"
                 else 100 * attn.eps)
        assert attn.min_denominator >= floor, (
            f"{what}: test data ill-conditioned: layer {n} "
            f"({attn.feature_map}) smallest denominator "
            f"{attn.min_denominator:.3e} < {floor:g} in the oracle; change "
            f"the seed or num_features")


def oracle_logits(ckpt_dir, ids, segment_len=0, decode=False) -> np.ndarray:
    """As parity_common.oracle_logits, plus the conditioning check."""
    model = load_checkpoint(ckpt_dir, dtype=torch.float64)
    logits = stream_logits(model, ids, segment_len, decode)
    _check_conditioning(model, str(ckpt_dir))
    return logits.numpy()


def _model(name: str, **overrides) -> TransfoXLReference:
    """float64 oracle with the random_checkpoint init (not written)."""
    import tempfile

    cfg = dict(CONFIGS[name], **overrides)
    with tempfile.TemporaryDirectory() as d:
        model = random_checkpoint(cfg, d, seed=_seed(name))
    return model.double().eval()


def _long_memory() -> dict:
    """Overrides that make the dense layers never drop a row of a stream."""
    return {"mem_len": 64, "memory_init": "empty", "same_length": False}


def _assert_states_close(a, b, rel: float, what: str) -> None:
    assert len(a) == len(b)
    for n, (x, y) in enumerate(zip(a, b)):
        if isinstance(y, LinearState):
            assert isinstance(x, LinearState), (what, n)
            for part, u, w in (("S", x.S, y.S), ("z", x.z, y.z)):
                assert u.shape == w.shape, (what, n, part)
                err = _max_rel(u, w)
                assert err <= rel, f"{what}: layer {n} {part} rel err {err}"
        else:
            assert x.shape == y.shape, (what, n)
            err = _max_rel(x, y)
            assert err <= rel, f"{what}: layer {n} memory rel err {err}"


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


def _linear_module(feature_map: str, gated: bool, pre_lnorm: bool,
                   seed: int = 7) -> LinearAttention:
    m = {"elu": None, "favor": 20, "rfa": 64}[feature_map]
    spec = {"attention": "linear", "feature_map": feature_map,
            "num_features": m, "eps": 1e-6, "gated": gated}
    cfg = _config(pre_lnorm=pre_lnorm, d_model=24, n_head=3, d_head=8)
    layers = [_linear(feature_map, **({} if m is None else
                                       {"num_features": m}),
                      **({"gated": True} if gated else {}))] * 2
    model = TransfoXLReference(dict(cfg, layers=layers))
    from mnemo_reference.model import _init_weights

    _init_weights(model, torch.Generator().manual_seed(seed))
    attn = model.layers[0].attn.double()
    assert layer_specs(model.config)[0] == spec
    return attn


MAPS = [("elu", False), ("favor", False), ("rfa", False), ("rfa", True)]


@pytest.mark.parametrize("pre_lnorm", [True, False], ids=["pre", "post"])
@pytest.mark.parametrize("fmap,gated", MAPS,
                         ids=["elu", "favor", "rfa", "rfa_gated"])
def test_reference_only_linear_recurrent_equals_parallel(fmap, gated,
                                                         pre_lnorm):
    """Both forms: same outputs and states, from zero and carried state."""
    attn = _linear_module(fmap, gated, pre_lnorm)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 30, attn.d_model, generator=gen, dtype=torch.float64)
    state0 = attn.init_state(2, x)
    results = {}
    for mode in ("recurrent", "parallel"):
        attn.mode = mode
        y1, s1 = attn(x[:, :11], state0)       # from the zero state
        y2, s2 = attn(x[:, 11:], s1)           # from a carried state
        results[mode] = (torch.cat([y1, y2], dim=1), s1, s2)
    (ya, s1a, s2a), (yb, s1b, s2b) = results["recurrent"], results["parallel"]
    assert _max_rel(yb, ya) <= 1e-10
    for sa, sb in ((s1a, s1b), (s2a, s2b)):
        assert _max_rel(sb.S, sa.S) <= 1e-10
        assert _max_rel(sb.z, sa.z) <= 1e-10
    assert attn.min_denominator > 1e-3  # the comparison is well-conditioned


@pytest.mark.parametrize("fmap,gated", MAPS,
                         ids=["elu", "favor", "rfa", "rfa_gated"])
def test_reference_only_linear_first_token_returns_value(fmap, gated):
    """From a zero state, out_1 = v_1 for every map (gated or not)."""
    attn = _linear_module(fmap, gated, pre_lnorm=True)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, attn.d_model, generator=gen, dtype=torch.float64)
    captured = {}
    attn.o.register_forward_hook(
        lambda mod, inp, out: captured.setdefault("in", inp[0]))
    attn(x, attn.init_state(1, x))
    H, dh = attn.n_head, attn.d_head
    v = attn.qkv(attn.ln(x)).split(H * dh, dim=-1)[2]
    torch.testing.assert_close(captured["in"], v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_linear_split_independent(name, mode):
    """Logits and the state after N tokens do not depend on the calls."""
    model = _model(name, **_long_memory())
    model.set_linear_mode(mode)
    ids = _document(model.config, 37)
    whole, whole_mems = run_splits(model, ids, [37])
    for splits in ([1] * 37, [5, 11, 1, 20], [36, 1], [9, 9, 9, 9, 1]):
        logits, mems = run_splits(model, ids, splits)
        assert _max_rel(logits, whole) <= 1e-10, (splits,)
        _assert_states_close(mems, whole_mems, 1e-10, f"{splits}")
    # Dense layers keep the [B, M, D] memory; linear layers (S, z).
    for spec, mem in zip(layer_specs(model.config), whole_mems):
        if spec["attention"] == "dense":
            assert isinstance(mem, torch.Tensor) and mem.shape[1] == 37
        else:
            m = {"elu": model.config["d_head"],
                 "favor": spec["num_features"],
                 "rfa": 2 * (spec["num_features"] or 0)}[spec["feature_map"]]
            H, dh = model.config["n_head"], model.config["d_head"]
            assert mem.S.shape == (1, H, m, dh)
            assert mem.z.shape == (1, H, m)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_linear_forms_agree_in_model(name):
    """Whole model, engine-test streams: recurrent == parallel (float64)."""
    model = _model(name)
    for seg, decode in ((_segment_len(model.config, "long"), False),
                        (0, True)):
        ids = (_decode_document(model.config) if decode
               else _segment_document(model.config, seg))
        model.set_linear_mode("recurrent")
        a = stream_logits(model, ids, seg, decode)
        model.set_linear_mode("parallel")
        b = stream_logits(model, ids, seg, decode)
        assert _max_rel(b, a) <= 1e-10, (seg, decode)
        assert a.std(dim=-1).min() > 0.1  # non-trivial logits


def test_reference_only_linear_state_is_session_state():
    """A linear-only model: memory length settings do not matter."""
    name = "rfa_gated_pre"
    ids = _document(CONFIGS[name], 25)
    ref = stream_logits(_model(name), ids, 4)
    for overrides in ({"mem_len": 0}, {"mem_len": 3, "same_length": True,
                                        "clamp_len": 1,
                                        "memory_init": "empty"}):
        got = stream_logits(_model(name, **overrides), ids, 7)
        assert _max_rel(got, ref) <= 1e-10, overrides


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_linear_tensor_names(name):
    cfg = CONFIGS[name]
    names = set(TransfoXLReference(cfg).state_dict())
    want = {"word_emb.weight", "lm_head.bias"}
    if not cfg["tie_word_embeddings"]:
        want.add("lm_head.weight")
    any_dense = any(e["attention"] == "dense" for e in cfg["layers"])
    if not cfg["untie_r"] and any_dense:
        want |= {"r_w_bias", "r_r_bias"}
    shapes = {}
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
            continue
        if entry["feature_map"] != "elu":
            want.add(p + "attn.features")
            shapes[p + "attn.features"] = (entry["num_features"], dh)
        if entry.get("gated", False):
            want |= {p + "attn.gate.weight", p + "attn.gate.bias"}
            shapes[p + "attn.gate.weight"] = (H, D)
            shapes[p + "attn.gate.bias"] = (H,)
        shapes[p + "attn.qkv.weight"] = (3 * H * dh, D)
        shapes[p + "attn.o.weight"] = (D, H * dh)
    assert names == want
    state = TransfoXLReference(cfg).state_dict()
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


def test_reference_only_linear_shared_r_bias_needs_a_dense_layer():
    base = dict(untie_r=False, n_layer=2)
    all_linear = TransfoXLReference(_config(layers=[ELU, FAVOR], **base))
    assert "r_w_bias" not in all_linear.state_dict()
    one_dense = TransfoXLReference(_config(layers=[ELU, DENSE], **base))
    assert {"r_w_bias", "r_r_bias"} <= set(one_dense.state_dict())
    assert "layers.1.attn.r.weight" in one_dense.state_dict()
    assert "layers.0.attn.r.weight" not in one_dense.state_dict()


def test_reference_only_linear_all_dense_layers_field():
    """``layers`` all dense == no ``layers`` field (same names, logits)."""
    cfg = _config(pre_lnorm=True)
    explicit = dict(cfg, layers=[DENSE, DENSE])
    a = TransfoXLReference(cfg)
    b = TransfoXLReference(explicit)
    assert set(a.state_dict()) == set(b.state_dict())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    b.load_state_dict(a.state_dict())
    ids = _document(cfg, 20)
    torch.testing.assert_close(stream_logits(b.double(), ids, 6),
                               stream_logits(a.double(), ids, 6),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name", ["mixed_pre", "rfa_gated_post"])
def test_reference_only_linear_checkpoint_roundtrip(tmp_path, name, dtype):

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
    # Same seed, same tensors.
    again = random_checkpoint(cfg, tmp_path / "again", seed=_seed(name),
                              dtype=DTYPES[dtype])
    for key, value in made.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    logits = stream_logits(loaded.double(), _document(cfg, 20), 6)
    assert torch.isfinite(logits).all()
    assert logits.std(dim=-1).min() > 0.1


def test_reference_only_linear_feature_init():
    cfg = _config(n_layer=3, d_head=8, layers=[
        FAVOR, RFA_GATED, _linear("favor", num_features=5)])
    from mnemo_reference.model import _init_weights

    model = TransfoXLReference(cfg)
    _init_weights(model, torch.Generator().manual_seed(4))
    dh = cfg["d_head"]
    for n, m in ((0, 20), (2, 5)):
        omega = model.layers[n].attn.features.detach().double()
        assert omega.shape == (m, dh)
        torch.testing.assert_close(omega.norm(dim=1),
                                   torch.full((m,), math.sqrt(dh),
                                              dtype=torch.float64),
                                   rtol=1e-6, atol=1e-6)
        for start in range(0, m, dh):  # rows orthogonal within a block
            block = omega[start:start + dh]
            gram = block @ block.t()
            off = gram - torch.diag(torch.diagonal(gram))
            assert off.abs().max() < 1e-5, (n, start)
    w = model.layers[1].attn.features.detach().double()
    assert w.shape == (64, dh)
    assert 0.8 < w.std().item() < 1.2  # N(0, 1) entries
    assert torch.count_nonzero(model.layers[1].attn.gate.bias) == 0
    gw = model.layers[1].attn.gate.weight.detach()
    assert gw.shape == (cfg["n_head"], cfg["d_model"])
    assert 0 < gw.abs().max() < 1.0


def test_reference_only_linear_cli(tmp_path):
    script = ["-m", "mnemo_reference"]
    cfg = CONFIGS["mixed_post"]
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


_BAD_LAYERS = [
    # (layers, n_layer, substrings the message must contain)
    ([DENSE], 2, ["'layers' has 1 entries", "n_layer is 2"]),
    ("dense", 2, ["'layers'", "bad type"]),
    ([DENSE, "linear"], 2, ["layers[1]", "object"]),
    ([DENSE, {}], 2, ["layers[1]", "'attention'"]),
    ([{"attention": "sparse"}, DENSE], 2, ["layers[0]", "'attention'"]),
    ([DENSE, {"attention": "dense", "mem_len": 4}], 2,
     ["layers[1]", "'mem_len'"]),
    ([{"attention": "dense", "feature_map": "elu"}, DENSE], 2,
     ["layers[0]", "'feature_map'"]),
    ([DENSE, {"attention": "linear"}], 2, ["layers[1]", "'feature_map'"]),
    ([DENSE, _linear("softmax")], 2, ["layers[1]", "'feature_map'"]),
    ([_linear("elu", num_features=8), DENSE], 2,
     ["layers[0]", "'num_features'"]),
    ([_linear("favor"), DENSE], 2, ["layers[0]", "'num_features'"]),
    ([DENSE, _linear("rfa")], 2, ["layers[1]", "'num_features'"]),
    ([_linear("rfa", num_features=0), DENSE], 2,
     ["layers[0]", "'num_features'"]),
    ([_linear("rfa", num_features=4.0), DENSE], 2,
     ["layers[0]", "'num_features'"]),
    ([_linear("rfa", num_features=True), DENSE], 2,
     ["layers[0]", "'num_features'"]),
    ([_linear("elu", eps=0.0), DENSE], 2, ["layers[0]", "'eps'"]),
    ([_linear("elu", eps=-1e-6), DENSE], 2, ["layers[0]", "'eps'"]),
    ([_linear("elu", eps="1e-6"), DENSE], 2, ["layers[0]", "'eps'"]),
    ([_linear("elu", eps=True), DENSE], 2, ["layers[0]", "'eps'"]),
    ([DENSE, _linear("elu", gated=True)], 2, ["layers[1]", "'gated'"]),
    ([DENSE, _linear("favor", num_features=8, gated=True)], 2,
     ["layers[1]", "'gated'"]),
    ([DENSE, _linear("rfa", num_features=8, gated=1)], 2,
     ["layers[1]", "'gated'"]),
    ([DENSE, _linear("elu", num_feature=8)], 2, ["layers[1]",
                                                 "'num_feature'"]),
    ([DENSE, _linear("rfa", num_features=8, sigma=1.0)], 2,
     ["layers[1]", "'sigma'"]),
]


@pytest.mark.parametrize("layers,n_layer,fragments", _BAD_LAYERS,
                         ids=[str(i) for i in range(len(_BAD_LAYERS))])
def test_reference_only_linear_validation_errors(layers, n_layer, fragments):
    cfg = _config(n_layer=n_layer, layers=layers)
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    with pytest.raises(ValueError):
        TransfoXLReference(cfg)


def test_reference_only_linear_favor_d_head_limit():
    ok = _config(n_head=1, d_head=128, d_model=32,
                 layers=[_linear("favor", num_features=4), DENSE])
    validate_config(ok)
    bad = dict(ok, d_head=129)
    with pytest.raises(ValueError, match=r"layers\[0\].*d_head"):
        validate_config(bad)
    # elu and rfa have no such limit.
    validate_config(dict(bad, layers=[ELU, RFA]))


def test_reference_only_linear_valid_layers_accepted():
    cfg = validate_config(_config(n_layer=4, layers=[
        DENSE, ELU, _linear("favor", num_features=3, eps=1, gated=False),
        _linear("rfa", num_features=2, gated=True, eps=1e-3)]))
    specs = layer_specs(cfg)
    assert specs[0] == {"attention": "dense"}
    assert specs[1] == {"attention": "linear", "feature_map": "elu",
                        "num_features": None, "eps": 1e-6, "gated": False}
    assert specs[2]["eps"] == 1.0 and specs[2]["gated"] is False
    assert specs[3]["gated"] is True and specs[3]["num_features"] == 2
    # No ``layers``: every layer dense.
    assert layer_specs(validate_config(_config())) == [
        {"attention": "dense"}] * 2


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SEGMENT_KINDS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_linear_segments(mnemo_bin, tmp_path, name, kind):
    cfg = CONFIGS[name]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=_seed(name))
    seg = _segment_len(cfg, kind)
    ids = _segment_document(cfg, seg)
    assert math.ceil(len(ids) / seg) >= 3
    want = oracle_logits(ckpt, ids, seg)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg)
    assert_logits_close(got, want, what=f"{name} segment_len={seg}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_linear_decode(mnemo_bin, tmp_path, name):
    cfg = CONFIGS[name]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=_seed(name))
    ids = _decode_document(cfg)
    want = oracle_logits(ckpt, ids, decode=True)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, decode=True)
    assert_logits_close(got, want, what=f"{name} decode")


@pytest.mark.parametrize("name", sorted(LINEAR_ONLY))
def test_engine_linear_whole_stream_one_call(mnemo_bin, tmp_path, name):
    """Linear-only: one call of the whole stream == the split streams."""
    cfg = CONFIGS[name]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=_seed(name))
    ids = _decode_document(cfg)
    want = oracle_logits(ckpt, ids, decode=True)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, len(ids))
    assert_logits_close(got, want, what=f"{name} one call vs decode oracle")


@pytest.mark.parametrize("decode", [False, True], ids=["segment", "decode"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["mixed_pre", "rfa_gated_post",
                                  "favor_pre"])
def test_engine_linear_low_precision_checkpoint(mnemo_bin, tmp_path, name,
                                                dtype, decode):
    """fp16/bf16 storage (features included): same rounded weights."""
    cfg = CONFIGS[name]
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=_seed(name), dtype=DTYPES[dtype])
    seg = _segment_len(cfg, "long")
    ids = _decode_document(cfg) if decode else _segment_document(cfg, seg)
    want = oracle_logits(ckpt, ids, seg, decode=decode)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg, decode=decode)
    assert_logits_close(got, want, what=f"{name} {dtype} decode={decode}")
