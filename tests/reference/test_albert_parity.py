"""Weight sharing (``layer_groups``) and factorised embeddings (``d_embed``),
ALBERT style: oracle checks and engine parity.

``layer_groups`` G: layer l uses the parameters of group ``l * G // n_layer``,
stored once as ``layers.g.*``; session state stays per layer. ``d_embed`` E:
``word_emb.weight`` [V, E], ``emb_proj`` [D, E] + [D] applied to the
embedding times sqrt(d_model). ``d_embed == d_model`` is the default (a
plain embedding, no ``emb_proj``).

* ``test_reference_only_albert_*``: a shared model equals an unshared one
  whose layers are copies; a factorised embedding equals a plain one with
  the projected table; tensors; validation.
* ``test_engine_albert_*``: ``$MNEMO_BIN logits`` against the float64 oracle
  (1e-4 relative) over segments, token by token and one call.
"""

from __future__ import annotations

import math

import pytest
import torch

from mnemo_reference import (
    TransfoXLReference,
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
    MODES,
)

DENSE = {"attention": "dense"}
ELU = {"attention": "linear", "feature_map": "elu"}
WIN = {"attention": "sparse", "window": 3, "dilation": 2}
COMP = {"attention": "dense", "memory": "compressive",
        "compression": "mean_pool", "compression_rate": 2, "cmem_len": 2}
STREAM_LEN = 41

CONFIGS = {
    "groups2_dense": _config(n_layer=4, layer_groups=2),
    "groups1_pre": _config(n_layer=3, layer_groups=1, pre_lnorm=True,
                           untie_r=False, mem_len=5),
    "groups2_mixed": _config(n_layer=4, layer_groups=2, layers=[
        ELU, ELU, WIN, WIN]),
    "groups3_compressive": _config(
        n_layer=6, layer_groups=3, mem_len=5,
        layers=[DENSE, DENSE] + [COMP] * 2 + [ELU, ELU]),
    "d_embed12": _config(d_embed=12, tie_word_embeddings=False),
    "d_embed48_pre_groups": _config(n_layer=4, layer_groups=2, d_embed=48,
                                    pre_lnorm=True,
                                    tie_word_embeddings=False),
    "d_embed_eq_tied": _config(d_embed=32, tie_word_embeddings=True),
}


def _seed(name: str) -> int:
    return sorted(CONFIGS).index(name) + 1301


def _document(cfg: dict, length: int = STREAM_LEN) -> list:
    return document(cfg, length, 31)


def _model(cfg: dict, seed: int = 5) -> TransfoXLReference:
    return oracle_model(cfg, seed)


def _unshared(model: TransfoXLReference) -> TransfoXLReference:
    """The same model with every layer's parameters copied out."""
    cfg = dict(model.config)
    cfg.pop("layer_groups")
    plain = TransfoXLReference(cfg).double()
    src = model.state_dict()
    dst = {}
    for key in plain.state_dict():
        if key.startswith("layers."):
            _, n, rest = key.split(".", 2)
            key_src = f"layers.{model.group_of[int(n)]}.{rest}"
            dst[key] = src[key_src]
        else:
            dst[key] = src[key]
    plain.load_state_dict(dst)
    return plain.eval()


# --------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["groups2_dense", "groups1_pre",
                                  "groups2_mixed", "groups3_compressive",
                                  "d_embed48_pre_groups"])
def test_reference_only_albert_shared_equals_copied_layers(name):
    model = _model(CONFIGS[name], seed=_seed(name))
    plain = _unshared(model)
    ids = _document(model.config)
    for seg in (3, 8, len(ids)):
        assert torch.equal(stream_logits(model, ids, seg),
                           stream_logits(plain, ids, seg)), seg
    assert torch.equal(stream_logits(model, ids, decode=True),
                       stream_logits(plain, ids, decode=True))
    # Session state stays per layer.
    _, mems = run_splits(model, ids[:18], [9, 9])
    assert len(mems) == model.config["n_layer"]
    # Sharing matters: a model with independent layers differs.
    other = _model(dict(model.config, layer_groups=model.config["n_layer"]),
                   seed=_seed(name))
    assert _max_rel(stream_logits(other, ids, 8),
                    stream_logits(model, ids, 8)) > 1e-3


def test_reference_only_albert_group_of_layers():
    model = TransfoXLReference(_config(n_layer=6, layer_groups=3))
    assert model.group_of == [0, 0, 1, 1, 2, 2]
    assert len(model.layers) == 3
    assert [id(m) for m in model.stack] == [id(model.layers[g])
                                           for g in (0, 0, 1, 1, 2, 2)]
    names = set(model.state_dict())
    assert "layers.2.attn.qkv.weight" in names
    assert not any(k.startswith("layers.3.") for k in names)
    model = TransfoXLReference(_config(n_layer=4, layer_groups=4))
    assert model.group_of == [0, 1, 2, 3]


def test_reference_only_albert_d_embed_equal_d_model_is_plain():
    a = TransfoXLReference(_config(d_embed=32)).state_dict()
    b = TransfoXLReference(_config()).state_dict()
    assert list(a) == list(b) and "emb_proj.weight" not in a


@pytest.mark.parametrize("name", ["d_embed12", "d_embed48_pre_groups"])
def test_reference_only_albert_factorised_embedding(name):
    """emb_proj(word_emb * sqrt(D)) == a plain table holding the projected
    rows divided by sqrt(D) (an untied head keeps its own weight)."""
    model = _model(CONFIGS[name], seed=_seed(name))
    cfg = dict(model.config)
    E, D = cfg.pop("d_embed"), cfg["d_model"]
    state = model.state_dict()
    assert tuple(state["word_emb.weight"].shape) == (60, E)
    assert tuple(state["emb_proj.weight"].shape) == (D, E)
    assert tuple(state["emb_proj.bias"].shape) == (D,)
    table = (state["word_emb.weight"] * math.sqrt(D)
             @ state["emb_proj.weight"].t() + state["emb_proj.bias"]) \
        / math.sqrt(D)
    plain = TransfoXLReference(cfg).double()
    new = {k: v for k, v in state.items() if not k.startswith("emb_proj")}
    new["word_emb.weight"] = table
    plain.load_state_dict(new)
    ids = _document(model.config)
    for seg in (8, len(ids)):
        assert _max_rel(stream_logits(model, ids, seg),
                        stream_logits(plain, ids, seg)) <= 1e-12


_BAD = [
    (dict(n_layer=4, layer_groups=3), "'layer_groups'"),
    (dict(n_layer=4, layer_groups=0), "'layer_groups'"),
    (dict(n_layer=4, layer_groups=5), "'layer_groups'"),
    (dict(n_layer=4, layer_groups=2.0), "'layer_groups'"),
    (dict(n_layer=4, layer_groups=True), "'layer_groups'"),
    (dict(n_layer=4, layer_groups=2, layers=[DENSE, ELU, WIN, WIN]),
     "'layer_groups'"),
    (dict(n_layer=2, layer_groups=1, layers=[
        WIN, dict(WIN, dilation=1)]), "'layer_groups'"),
    (dict(d_embed=0, tie_word_embeddings=False), "'d_embed'"),
    (dict(d_embed=16), "'d_embed'"),
    (dict(d_embed=16.0, tie_word_embeddings=False), "'d_embed'"),
    (dict(d_embeds=16), "d_embeds"),
]


@pytest.mark.parametrize("over,fragment", _BAD,
                         ids=[str(i) for i in range(len(_BAD))])
def test_reference_only_albert_validation_errors(over, fragment):
    with pytest.raises(ValueError) as info:
        validate_config(_config(**over))
    assert fragment in str(info.value), str(info.value)


def test_reference_only_albert_equivalent_entries_share():
    """Entries that mean the same (default dilation spelled out) may share."""
    validate_config(_config(n_layer=2, layer_groups=1, layers=[
        {"attention": "sparse", "window": 3},
        {"attention": "sparse", "window": 3, "dilation": 1}]))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_only_albert_checkpoint_roundtrip(tmp_path, name):
    made = random_checkpoint(CONFIGS[name], tmp_path, seed=_seed(name))
    loaded = load_checkpoint(tmp_path)
    assert set(loaded.state_dict()) == set(made.state_dict())
    for key, value in made.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    logits = stream_logits(loaded.double(), _document(loaded.config, 12), 5)
    assert torch.isfinite(logits).all() and logits.std() > 0.1


# --------------------------------------------------------------------------
# Engine against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_albert(mnemo_bin, tmp_path, name, mode):
    ids = _document(CONFIGS[name])
    check_engine_parity(mnemo_bin, tmp_path, CONFIGS[name], _seed(name), ids, mode,
                        f"{name} {mode}")
