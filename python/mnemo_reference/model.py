"""Independent PyTorch reference ("oracle") for mnemo's Transformer-XL.

Written from Dai et al. 2019 and MODEL-SPEC.md section 1; it shares no code
with the C++ engine and does not use Hugging Face. Parameter names equal the
tensor names of docs/checkpoint-format.md, so ``state_dict()`` can be saved
as, or loaded from, ``model.safetensors`` directly.

Deliberate choices (they make this an oracle, not a fast implementation):

* the positional term is computed by direct indexing with the distance
  ``delta = (M + i) - j`` (no pad/reshape "rel-shift" trick);
* masked scores are ``-inf`` and the softmax runs in the module dtype, so
  ``model.double()`` gives a float64 oracle;
* memory holds layer *inputs* (hidden-state form), updated to the last
  ``mem_len`` rows of ``cat(mem, X)`` after every call.

Per-layer attention kinds (config field ``layers``, MODEL-SPEC 5): a layer
is ``dense`` (the Transformer-XL attention above) or ``linear`` (causal
linear attention with feature map ``elu``, ``favor`` or ``rfa``, optionally
gated for rfa) or ``sparse`` (causal softmax attention over a sliding
window of ``window`` keys, itself included, spaced ``dilation`` apart, per
head; no position encodings). A linear layer keeps the qkv/o/ln/ff tensors,
has no ``attn.r.weight`` and no r biases, adds ``attn.features`` [m, d_h] for
favor/rfa and ``attn.gate.weight`` [H, D] / ``attn.gate.bias`` [H] when
gated. Its per-session state is a :class:`LinearState` (S [B, H, m', d_h],
z [B, H, m']) instead of a memory tensor. It is computed token by token
(the recurrence, default) or in the masked parallel form
(``model.set_linear_mode("parallel")``); both carry the state exactly.
A sparse layer has exactly the tensors of an elu linear layer; its state
is a :class:`SparseState`: the projected keys and values (k, v
[B, H, P, d_h]) of the last P = min(seen, (window-1) * max(dilation))
stream positions, empty for a new session (``memory_init`` does not apply).

Further kinds (docs/checkpoint-format.md, written from its definitions):

* sparse ``pattern`` "strided" / "fixed" / "bigbird" and global positions
  or tokens on any pattern (:class:`PatternSparseAttention`): an explicit
  allowed set per query (the sets of the format's table taken literally; a
  head that sees nothing outputs zeros), cut to ``p - j <= span``, plus
  ``K(p)``, the last ``max_global`` global positions before p. The oracle
  keeps the whole history (:class:`PatternState`), the cut is in the mask.
  A plain window without global fields keeps the ring above.
* ``"lsh"`` (:class:`LSHAttention`): Reformer attention by the per-query
  definition (every query sorts its own window ``U(p)`` per round); state
  :class:`LSHState`, the last ``history - 1`` positions.
* ``"memory_compressed"`` (:class:`MemoryCompressedAttention`): Liu et
  al.'s memory-compressed attention in causal form: blocks of
  ``compression_rate`` positions compressed by a strided Conv1d over the
  keys and one over the values; a query sees the last ``cmem_len``
  compressed blocks before its own block and its own block up to itself.
  The oracle keeps every key and value seen (:class:`MemoryCompressedState`)
  and recomputes the convolutions over the whole history each call.
* ``"routing"`` (:class:`RoutingAttention`): Routing Transformer attention
  in causal form: each head's queries and keys go to the nearest centroid
  on the unit sphere (``attn.centroids`` [H, K, d_h], normalised); a query
  sees the keys of its cluster among the last ``history`` positions, itself
  always. The oracle keeps every key and value seen
  (:class:`RoutingState`) and routes them again each call.
* dense layers with ``"memory": "compressive"``
  (:class:`CompressiveAttention`): attention over [compressed | XL memory |
  segment], distances continuing through the compressed rows; evicted
  hidden rows compressed in groups (max_pool, mean_pool, conv1d,
  dilated_conv, most_used); state :class:`CompressiveState`.
* ``"residual_attention": true`` on a dense (XL or compressive) or sparse
  layer (RealFormer): the layer adds the previous layer's unmasked
  pre-softmax scores ``S^(l-1)`` [B, H, T, K] to its own before its mask
  and softmax and passes the sum on; dense scores include the positional
  term, sparse ones are ``q.k / sqrt(d_h)``. Masked entries keep their raw
  (finite) score. The scores live within one call, never in the state.
* ``layer_groups`` (parameters of group ``l * G // n_layer`` stored once as
  ``layers.g.*``; ``model.stack`` lists the module of every layer) and
  ``d_embed`` (``emb_proj`` after the scaled embedding, when it differs
  from d_model).

Library use::

    model = random_checkpoint(config, "ckpt_dir", seed=1)
    model = load_checkpoint("ckpt_dir").double()
    logits = stream_logits(model, ids, segment_len=16)          # [N, V]

Command line (``python -m mnemo_reference``, see ``__main__.py``)::

    python -m mnemo_reference make-checkpoint --config-json '{...}' \
        --out DIR --seed S
    python -m mnemo_reference logits --model DIR --ids FILE --segment-len N \
        [--decode] --output OUT

``logits`` mirrors ``mnemo logits``: float64 internally, raw little-endian
float32 ``[num_tokens, vocab_size]`` written to OUT.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import mnemo_checkpoint

__all__ = [
    "DTYPES", "dtype_name", "validate_config", "group_of", "group_layers",
    "has_emb_proj", "FEATURE_MAPS", "LINEAR_EPS_DEFAULT", "FAVOR_MAX_D_HEAD",
    "RESIDUAL_FIELD", "SPARSE_MAX_SPAN", "SPARSE_PATTERNS",
    "PATTERN_COMPONENTS", "GLOBAL_FIELDS", "MAX_GLOBAL", "PATTERN_FIELDS",
    "BIGBIRD_WINDOW_BLOCKS", "BIGBIRD_RANDOM_BLOCKS", "LSH_MAX_HASHES",
    "LSH_MAX_BUCKETS", "LSH_MAX_HISTORY", "LSH_HISTORY_DEFAULT",
    "COMPRESSIONS", "COMPRESSION_KERNEL_DEFAULT", "layer_specs",
    "sinusoid_table", "RelMultiHeadAttention", "LinearState",
    "LinearAttention", "SparseState", "SparseAttention", "splitmix64_finalise",
    "bigbird_mix", "bigbird_random_blocks", "pattern_allowed", "PatternState",
    "PatternSparseAttention", "LSHState", "LSHAttention",
    "MemoryCompressedState", "MemoryCompressedAttention",
    "MEMORY_COMPRESSED_MAX_RATE", "RoutingState", "RoutingAttention",
    "ROUTING_MAX_CLUSTERS", "ROUTING_HISTORY_DEFAULT", "CompressiveState",
    "compress_rows", "CompressiveAttention", "PositionwiseFF", "DecoderLayer",
    "LMHead", "TransfoXLReference", "stream_logits", "favor_features",
    "random_checkpoint", "load_checkpoint", "read_ids", "main",
]


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

#: field name -> accepted Python type(s), as in docs/checkpoint-format.md.
_REQUIRED_FIELDS = {
    "architecture": str,
    "vocab_size": int,
    "d_model": int,
    "n_layer": int,
    "n_head": int,
    "d_head": int,
    "d_inner": int,
    "mem_len": int,
    "clamp_len": int,
    "same_length": bool,
    "pre_lnorm": bool,
    "untie_r": bool,
    "activation": str,
    "layer_norm_epsilon": (float, int),
    "memory_init": str,
    "tie_word_embeddings": bool,
    "torch_dtype": str,
}
_OPTIONAL_FIELDS = {"eos_token_id": int, "layers": list,
                    "layer_groups": int, "d_embed": int}

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """Return the ``torch_dtype`` config string of a storage dtype."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported storage dtype {dtype}")


def validate_config(config: dict) -> dict:
    """Check a config dict against the checkpoint format; return a copy.

    Unknown fields are rejected, like the engine's loader does.
    """
    cfg = dict(config)
    unknown = set(cfg) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"unknown config fields: {sorted(unknown)}")
    missing = set(_REQUIRED_FIELDS) - set(cfg)
    if missing:
        raise ValueError(f"missing config fields: {sorted(missing)}")
    for name, value in cfg.items():
        kind = _REQUIRED_FIELDS.get(name) or _OPTIONAL_FIELDS[name]
        # bool is a subclass of int; never accept it for numeric fields.
        bad_bool = isinstance(value, bool) and kind is not bool
        if bad_bool or not isinstance(value, kind):
            raise ValueError(f"config field {name!r} has bad type: {value!r}")

    def check(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"invalid config: {what}")

    check(cfg["architecture"] == "transfo_xl",
          "architecture must be transfo_xl")
    for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_head",
                 "d_inner"):
        check(cfg[name] > 0, f"{name} must be > 0")
    check(cfg["d_model"] % 2 == 0, "d_model must be even")
    check(cfg["mem_len"] >= 0, "mem_len must be >= 0")
    check(cfg["clamp_len"] >= 0, "clamp_len must be >= 0")
    check(cfg["activation"] in ("relu", "gelu"), "activation")
    check(cfg["layer_norm_epsilon"] > 0, "layer_norm_epsilon must be > 0")
    check(cfg["memory_init"] in ("zeros", "empty"), "memory_init")
    check(cfg["torch_dtype"] in DTYPES, "torch_dtype")
    cfg["layer_norm_epsilon"] = float(cfg["layer_norm_epsilon"])
    if "layers" in cfg:
        _validate_layers(cfg["layers"], cfg)
        cfg["layers"] = [dict(entry) for entry in cfg["layers"]]
    if "d_embed" in cfg:
        check(cfg["d_embed"] >= 1, f"'d_embed' must be >= 1, got "
                                   f"{cfg['d_embed']}")
        check(not cfg["tie_word_embeddings"]
              or cfg["d_embed"] == cfg["d_model"],
              f"'d_embed' ({cfg['d_embed']}) must equal 'd_model' "
              f"({cfg['d_model']}) when 'tie_word_embeddings' is true")
    if "layer_groups" in cfg:
        G, n_layer = cfg["layer_groups"], cfg["n_layer"]
        check(1 <= G <= n_layer, f"'layer_groups' must be in [1, n_layer = "
                                 f"{n_layer}], got {G}")
        check(n_layer % G == 0, f"'layer_groups' ({G}) must divide "
                                f"'n_layer' ({n_layer})")
        specs = layer_specs(cfg)
        for n in range(n_layer):
            g = n * G // n_layer
            first = group_layers(cfg, g)[0]
            check(specs[n] == specs[first],
                  f"'layer_groups': layers[{n}] and layers[{first}] share "
                  f"group {g} but have different 'layers' entries")
    return cfg


def group_of(cfg: dict, n: int) -> int:
    """Parameter group of layer ``n`` (``layer_groups``, ALBERT)."""
    G = cfg.get("layer_groups", cfg["n_layer"])
    return n * G // cfg["n_layer"]


def group_layers(cfg: dict, g: int) -> List[int]:
    """The layers that use the parameters of group ``g``, ascending."""
    return [n for n in range(cfg["n_layer"]) if group_of(cfg, n) == g]


def has_emb_proj(cfg: dict) -> bool:
    """Factorised embedding (``emb_proj``): when ``d_embed`` is given and
    differs from d_model; ``d_embed == d_model`` is the default, a plain
    embedding."""
    return cfg.get("d_embed", cfg["d_model"]) != cfg["d_model"]


#: feature maps of linear layers (MODEL-SPEC 5.2-5.4).
FEATURE_MAPS = ("elu", "favor", "rfa")
#: default ``eps`` of a linear layer (denominator clamp).
LINEAR_EPS_DEFAULT = 1e-6
#: favor keys carry no stabiliser, so exp() must stay in float32 range.
FAVOR_MAX_D_HEAD = 128


def _validate_layers(layers, cfg: dict) -> None:
    """Validate the optional per-layer ``layers`` list (attention kinds)."""

    def fail(n, what: str):
        raise ValueError(f"invalid config: layers[{n}]: {what}")

    if len(layers) != cfg["n_layer"]:
        raise ValueError(f"invalid config: 'layers' has {len(layers)} "
                         f"entries, n_layer is {cfg['n_layer']}")
    for n, entry in enumerate(layers):
        if not isinstance(entry, dict):
            fail(n, f"must be an object, got {entry!r}")
        if "attention" not in entry:
            fail(n, "missing field 'attention'")
        kind = entry["attention"]
        if RESIDUAL_FIELD in entry and kind not in ("dense", "sparse"):
            fail(n, f"field {RESIDUAL_FIELD!r} is only for \"dense\" and "
                    f"\"sparse\" layers, not {kind!r}")
        if RESIDUAL_FIELD in entry and not isinstance(entry[RESIDUAL_FIELD],
                                                      bool):
            fail(n, f"field {RESIDUAL_FIELD!r} must be a bool, got "
                    f"{entry[RESIDUAL_FIELD]!r}")
        if kind == "dense":
            _validate_dense(entry, cfg, lambda what, n=n: fail(n, what))
            continue
        if kind == "sparse":
            _validate_sparse(entry, cfg, lambda what, n=n: fail(n, what))
            continue
        if kind == "lsh":
            _validate_lsh(entry, cfg, lambda what, n=n: fail(n, what))
            continue
        if kind == "memory_compressed":
            _validate_memory_compressed(entry, lambda what, n=n: fail(n, what))
            continue
        if kind == "routing":
            _validate_routing(entry, lambda what, n=n: fail(n, what))
            continue
        if kind != "linear":
            fail(n, f"field 'attention' must be \"dense\", \"linear\", "
                    f"\"sparse\", \"lsh\", \"memory_compressed\" or "
                    f"\"routing\", got {kind!r}")
        allowed = {"attention", "feature_map", "num_features", "eps", "gated"}
        extra = sorted(set(entry) - allowed)
        if extra:
            fail(n, f"unknown field {extra[0]!r}")
        if "feature_map" not in entry:
            fail(n, "missing field 'feature_map'")
        fmap = entry["feature_map"]
        if not isinstance(fmap, str) or fmap not in FEATURE_MAPS:
            fail(n, f"field 'feature_map' must be one of {FEATURE_MAPS}, "
                    f"got {fmap!r}")
        if fmap == "elu":
            if "num_features" in entry:
                fail(n, "field 'num_features' is not allowed for "
                        "feature_map elu")
        else:
            if "num_features" not in entry:
                fail(n, f"missing field 'num_features' (required for "
                        f"feature_map {fmap})")
            m = entry["num_features"]
            if isinstance(m, bool) or not isinstance(m, int) or m <= 0:
                fail(n, f"field 'num_features' must be an int > 0, got {m!r}")
        if "eps" in entry:
            eps = entry["eps"]
            if (isinstance(eps, bool) or not isinstance(eps, (int, float))
                    or not math.isfinite(eps) or eps <= 0):
                fail(n, f"field 'eps' must be a float > 0, got {eps!r}")
        if "gated" in entry:
            gated = entry["gated"]
            if not isinstance(gated, bool):
                fail(n, f"field 'gated' must be a bool, got {gated!r}")
            if gated and fmap != "rfa":
                fail(n, f"field 'gated' may be true only for feature_map "
                        f"rfa, not {fmap}")
        if fmap == "favor" and cfg["d_head"] > FAVOR_MAX_D_HEAD:
            fail(n, f"field 'feature_map' favor needs d_head <= "
                    f"{FAVOR_MAX_D_HEAD}, d_head is {cfg['d_head']}")
    _validate_residual(layers, cfg, fail)


#: the RealFormer flag of dense and sparse entries.
RESIDUAL_FIELD = "residual_attention"


def _without_residual(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != RESIDUAL_FIELD}


def _validate_residual(layers, cfg: dict, fail) -> None:
    """Residual attention (RealFormer): layer 0 cannot be residual; a
    residual layer's predecessor has the same entry apart from the flag
    (compared after defaults); sparse residual layers and their predecessor
    have no global positions / tokens / max_global."""
    specs = None
    for n, entry in enumerate(layers):
        if not entry.get(RESIDUAL_FIELD, False):
            continue
        if n == 0:
            fail(n, f"field {RESIDUAL_FIELD!r}: the first layer cannot be "
                    f"residual (there are no previous scores)")
        prev = layers[n - 1]
        if entry["attention"] == "sparse":
            for who, e in ((n, entry), (n - 1, prev)):
                present = [f for f in GLOBAL_FIELDS if f in e]
                if present:
                    fail(n, f"field {RESIDUAL_FIELD!r}: sparse residual "
                            f"attention allows no global positions, but "
                            f"layers[{who}] has field {present[0]!r}")
        if specs is None:
            specs = layer_specs(dict(cfg, layers=layers))
        if _without_residual(specs[n]) != _without_residual(specs[n - 1]):
            fail(n, f"field {RESIDUAL_FIELD!r} needs layers[{n - 1}] to be "
                    f"the same entry apart from this flag (it must see the "
                    f"same keys): {_without_residual(specs[n - 1])} vs "
                    f"{_without_residual(specs[n])}")


#: largest ``window * max(dilation)`` of a sparse layer, and largest span.
SPARSE_MAX_SPAN = 1 << 20
#: sparse ``pattern`` values (docs/checkpoint-format.md "Sparse patterns").
SPARSE_PATTERNS = ("window", "strided", "fixed", "bigbird")
#: the components of the factorised patterns, in their default order.
PATTERN_COMPONENTS = {"strided": ("local", "strided"),
                      "fixed": ("block", "summary")}
#: fields every sparse pattern accepts (global attention).
GLOBAL_FIELDS = ("global_positions", "global_tokens", "max_global")
#: largest ``max_global``.
MAX_GLOBAL = 65536
#: fields of each pattern besides attention/pattern and the global fields.
PATTERN_FIELDS = {
    "window": ("window", "dilation"),
    "strided": ("stride", "span", "components", "split"),
    "fixed": ("block", "summary", "span", "components", "split"),
    "bigbird": ("block", "span", "window_blocks", "random_blocks", "seed"),
}
#: bigbird defaults.
BIGBIRD_WINDOW_BLOCKS = 2 + 1
BIGBIRD_RANDOM_BLOCKS = 2
#: LSH limits and defaults (docs/checkpoint-format.md "lsh").
LSH_MAX_HASHES = 64
LSH_MAX_BUCKETS = 65536
LSH_MAX_HISTORY = 1 << 20
LSH_HISTORY_DEFAULT = 4096
#: compressive memory.
COMPRESSIONS = ("max_pool", "mean_pool", "conv1d", "dilated_conv",
                "most_used")
COMPRESSION_KERNEL_DEFAULT = 2
_U64 = (1 << 64) - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(entry: dict, name: str, fail, lo: int, hi=None,
               required: bool = True, default=None):
    """An int field in [lo, hi] (hi None: unbounded)."""
    if name not in entry:
        if required:
            fail(f"missing field {name!r}")
        return default
    value = entry[name]
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        fail(f"field {name!r} must be an int {bound}, got {value!r}")
    return value


def _validate_dense(entry: dict, cfg: dict, fail) -> None:
    """A dense entry: XL memory, or compressive memory on top of it."""
    memory = entry.get("memory", "xl")
    comp_fields = ("compression", "compression_rate", "cmem_len",
                   "compression_kernel")
    allowed = {"attention", "memory", RESIDUAL_FIELD} | (
        set(comp_fields) if memory == "compressive" else set())
    extra = sorted(set(entry) - allowed)
    if extra:
        fail(f"field {extra[0]!r} is not allowed for a dense layer"
             + ("" if memory == "compressive" or extra[0] not in comp_fields
                else " with 'memory' \"xl\""))
    if memory not in ("xl", "compressive"):
        fail(f"field 'memory' must be \"xl\" or \"compressive\", got "
             f"{memory!r}")
    if memory == "xl":
        return
    if cfg["same_length"]:
        fail("'memory' \"compressive\" needs 'same_length' false")
    if cfg["mem_len"] < 1:
        fail(f"'memory' \"compressive\" needs 'mem_len' >= 1, got "
             f"{cfg['mem_len']}")
    if "compression" not in entry:
        fail("missing field 'compression' (required for 'memory' "
             "\"compressive\")")
    comp = entry["compression"]
    if not isinstance(comp, str) or comp not in COMPRESSIONS:
        fail(f"field 'compression' must be one of {COMPRESSIONS}, got "
             f"{comp!r}")
    rate = _int_field(entry, "compression_rate", fail, 1, cfg["mem_len"])
    _int_field(entry, "cmem_len", fail, 1)
    if "compression_kernel" in entry and comp != "dilated_conv":
        fail(f"field 'compression_kernel' is only for compression "
             f"dilated_conv, not {comp}")
    if comp == "dilated_conv":
        K = _int_field(entry, "compression_kernel", fail, 1, required=False,
                       default=COMPRESSION_KERNEL_DEFAULT)
        if rate % K:
            fail(f"field 'compression_kernel' ({K}) must divide "
                 f"'compression_rate' ({rate})")


def _validate_lsh(entry: dict, cfg: dict, fail) -> None:
    allowed = {"attention", "n_hashes", "n_buckets", "chunk_len", "history"}
    extra = sorted(set(entry) - allowed)
    if extra:
        fail(f"unknown field {extra[0]!r}")
    _int_field(entry, "n_hashes", fail, 1, LSH_MAX_HASHES)
    nb = _int_field(entry, "n_buckets", fail, 2, LSH_MAX_BUCKETS)
    if nb % 2:
        fail(f"field 'n_buckets' must be even, got {nb}")
    _int_field(entry, "chunk_len", fail, 1)
    _int_field(entry, "history", fail, 1, LSH_MAX_HISTORY, required=False)


#: memory_compressed limits (docs/checkpoint-format.md "memory_compressed").
MEMORY_COMPRESSED_MAX_RATE = 4096


def _validate_memory_compressed(entry: dict, fail) -> None:
    allowed = {"attention", "compression_rate", "cmem_len"}
    extra = sorted(set(entry) - allowed)
    if extra:
        fail(f"unknown field {extra[0]!r}")
    _int_field(entry, "compression_rate", fail, 2, MEMORY_COMPRESSED_MAX_RATE)
    _int_field(entry, "cmem_len", fail, 1, SPARSE_MAX_SPAN)


#: routing limits and defaults (docs/checkpoint-format.md "routing").
ROUTING_MAX_CLUSTERS = 4096
ROUTING_HISTORY_DEFAULT = 4096


def _validate_routing(entry: dict, fail) -> None:
    allowed = {"attention", "n_clusters", "history"}
    extra = sorted(set(entry) - allowed)
    if extra:
        fail(f"unknown field {extra[0]!r}")
    _int_field(entry, "n_clusters", fail, 2, ROUTING_MAX_CLUSTERS)
    _int_field(entry, "history", fail, 1, SPARSE_MAX_SPAN, required=False)


def _validate_globals(entry: dict, cfg: dict, fail) -> None:
    positions = entry.get("global_positions", [])
    if not isinstance(positions, list):
        fail(f"field 'global_positions' must be a list of ints >= 0, got "
             f"{positions!r}")
    for i, pos in enumerate(positions):
        if not _is_int(pos) or pos < 0:
            fail(f"field 'global_positions'[{i}] must be an int >= 0, got "
                 f"{pos!r}")
        if i and pos <= positions[i - 1]:
            fail(f"field 'global_positions' must be ascending and distinct "
                 f"({positions[i - 1]} then {pos})")
    tokens = entry.get("global_tokens")
    if tokens is not None:
        if not isinstance(tokens, list):
            fail(f"field 'global_tokens' must be a list of token ids, got "
                 f"{tokens!r}")
        for i, tok in enumerate(tokens):
            if not _is_int(tok) or not 0 <= tok < cfg["vocab_size"]:
                fail(f"field 'global_tokens'[{i}] must be a token id in "
                     f"[0, vocab_size = {cfg['vocab_size']}), got {tok!r}")
    max_global = _int_field(entry, "max_global", fail, 0, MAX_GLOBAL,
                            required=False, default=len(positions))
    if max_global > MAX_GLOBAL:
        fail(f"field 'max_global' defaults to len('global_positions') = "
             f"{max_global}, above {MAX_GLOBAL}; give 'max_global'")
    if tokens is not None and max_global < 1:
        fail("field 'max_global' must be >= 1 when 'global_tokens' is "
             "given")


def _validate_components(entry: dict, pattern: str, fail) -> None:
    names = PATTERN_COMPONENTS[pattern]
    comps = entry.get("components", list(names))
    if not isinstance(comps, list) or not comps:
        fail(f"field 'components' must be a non-empty list of {names}, got "
             f"{comps!r}")
    for c in comps:
        if not isinstance(c, str) or c not in names:
            fail(f"field 'components' of pattern {pattern!r}: {c!r} is not "
                 f"one of {names}")
    if len(set(comps)) != len(comps):
        fail(f"field 'components' repeats a component: {comps!r}")
    split = entry.get("split", "heads")
    if split not in ("heads", "union"):
        fail(f"field 'split' must be \"heads\" or \"union\", got {split!r}")


def _validate_sparse(entry: dict, cfg: dict, fail) -> None:
    """One ``{"attention": "sparse", ...}`` entry (any pattern)."""
    pattern = entry.get("pattern", "window")
    if not isinstance(pattern, str) or pattern not in SPARSE_PATTERNS:
        fail(f"field 'pattern' must be one of {SPARSE_PATTERNS}, got "
             f"{pattern!r}")
    allowed = {"attention", "pattern", RESIDUAL_FIELD, *GLOBAL_FIELDS,
               *PATTERN_FIELDS[pattern]}
    extra = sorted(set(entry) - allowed)
    if extra:
        others = [p for p, f in PATTERN_FIELDS.items() if extra[0] in f]
        if others:
            fail(f"field {extra[0]!r} is not allowed for pattern "
                 f"{pattern!r} (it belongs to {others})")
        fail(f"unknown field {extra[0]!r}")
    _validate_globals(entry, cfg, fail)
    if pattern == "strided":
        _int_field(entry, "stride", fail, 1)
    elif pattern == "fixed":
        block = _int_field(entry, "block", fail, 1)
        _int_field(entry, "summary", fail, 1, block)
    elif pattern == "bigbird":
        _int_field(entry, "block", fail, 1)
        _int_field(entry, "window_blocks", fail, 1, required=False)
        _int_field(entry, "random_blocks", fail, 0, required=False)
        _int_field(entry, "seed", fail, 0, _U64, required=False)
    if pattern in PATTERN_COMPONENTS:
        _validate_components(entry, pattern, fail)
    if pattern != "window":
        _int_field(entry, "span", fail, 1, SPARSE_MAX_SPAN)
        return
    if "window" not in entry:
        fail("missing field 'window' (required when 'attention' is "
             "\"sparse\")")
    window = entry["window"]
    if not _is_int(window) or window < 1:
        fail(f"field 'window' must be an int >= 1, got {window!r}")
    dilation = entry.get("dilation", 1)
    n_head = cfg["n_head"]
    if isinstance(dilation, list):
        if len(dilation) != n_head:
            fail(f"field 'dilation' has {len(dilation)} entries, n_head is "
                 f"{n_head}")
        for h, d in enumerate(dilation):
            if not _is_int(d) or d < 1:
                fail(f"field 'dilation'[{h}] must be an int >= 1, got {d!r}")
        max_dil = max(dilation)
    else:
        if not _is_int(dilation) or dilation < 1:
            fail(f"field 'dilation' must be an int >= 1 or a list of n_head "
                 f"({n_head}) ints >= 1, got {dilation!r}")
        max_dil = dilation
    if window * max_dil > SPARSE_MAX_SPAN:
        fail(f"fields 'window' * 'dilation' = {window} * {max_dil} = "
             f"{window * max_dil} exceeds {SPARSE_MAX_SPAN}")


def _sparse_spec(entry: dict, cfg: dict) -> dict:
    """Normalised spec of a sparse entry.

    A plain window (no global fields) keeps the historical short form
    ``{"attention", "window", "dilation"}``; every other sparse entry gets
    ``pattern``, ``span``, the pattern's fields with defaults, the per-head
    component lists ``head_components`` (strided/fixed) and
    ``global_positions`` / ``global_tokens`` / ``max_global``.
    """
    pattern = entry.get("pattern", "window")
    is_global = any(f in entry for f in GLOBAL_FIELDS)
    n_head = cfg["n_head"]
    if pattern == "window":
        dilation = entry.get("dilation", 1)
        if not isinstance(dilation, list):
            dilation = [dilation] * n_head
        spec = {"attention": "sparse", "window": entry["window"],
                "dilation": list(dilation)}
        if not is_global:
            return spec
        spec["span"] = (entry["window"] - 1) * max(dilation)
    else:
        spec = {"attention": "sparse", "span": entry["span"]}
    spec["pattern"] = pattern
    if pattern == "strided":
        spec["stride"] = entry["stride"]
    elif pattern == "fixed":
        spec["block"], spec["summary"] = entry["block"], entry["summary"]
    elif pattern == "bigbird":
        spec["block"] = entry["block"]
        spec["window_blocks"] = entry.get("window_blocks",
                                          BIGBIRD_WINDOW_BLOCKS)
        spec["random_blocks"] = entry.get("random_blocks",
                                          BIGBIRD_RANDOM_BLOCKS)
        spec["seed"] = entry.get("seed", 0)
    if pattern in PATTERN_COMPONENTS:
        comps = list(entry.get("components", PATTERN_COMPONENTS[pattern]))
        split = entry.get("split", "heads")
        spec["components"], spec["split"] = comps, split
        spec["head_components"] = [
            [comps[h % len(comps)]] if split == "heads" else list(comps)
            for h in range(n_head)]
    positions = list(entry.get("global_positions", []))
    spec["global_positions"] = positions
    spec["global_tokens"] = list(entry.get("global_tokens", []))
    spec["max_global"] = entry.get("max_global", len(positions))
    return spec


def layer_specs(cfg: dict) -> List[dict]:
    """Per-layer attention specs of a validated config, defaults filled in.

    Dense: ``{"attention": "dense"}``, plus for compressive memory
    ``memory``, ``compression``, ``compression_rate``, ``cmem_len`` and
    ``compression_kernel`` (None unless dilated_conv). Linear:
    ``attention``, ``feature_map``, ``num_features`` (m, the size of the
    ``features`` tensor; None for elu), ``eps`` and ``gated``. Sparse: see
    :func:`_sparse_spec` (a plain window: ``window`` and ``dilation``, a
    list of ``n_head`` ints). LSH: ``n_hashes``, ``n_buckets``,
    ``chunk_len``, ``history``. A residual (RealFormer) dense or sparse
    layer adds ``"residual_attention": True`` (absent otherwise).
    """
    layers = cfg.get("layers")
    if layers is None:
        return [{"attention": "dense"} for _ in range(cfg["n_layer"])]
    specs = []
    for entry in layers:
        specs.append(_entry_spec(entry, cfg))
        if entry.get(RESIDUAL_FIELD, False):
            specs[-1][RESIDUAL_FIELD] = True
    return specs


def _entry_spec(entry: dict, cfg: dict) -> dict:
    """The spec of one entry, defaults filled in, without the residual
    flag."""
    if entry["attention"] == "dense":
        if entry.get("memory", "xl") == "xl":
            return {"attention": "dense"}
        comp = entry["compression"]
        return {
            "attention": "dense", "memory": "compressive",
            "compression": comp,
            "compression_rate": entry["compression_rate"],
            "cmem_len": entry["cmem_len"],
            "compression_kernel": (
                entry.get("compression_kernel", COMPRESSION_KERNEL_DEFAULT)
                if comp == "dilated_conv" else None)}
    if entry["attention"] == "sparse":
        return _sparse_spec(entry, cfg)
    if entry["attention"] == "routing":
        return {"attention": "routing", "n_clusters": entry["n_clusters"],
                "history": entry.get("history", ROUTING_HISTORY_DEFAULT)}
    if entry["attention"] == "memory_compressed":
        return {"attention": "memory_compressed",
                "compression_rate": entry["compression_rate"],
                "cmem_len": entry["cmem_len"]}
    if entry["attention"] == "lsh":
        return {"attention": "lsh",
                "n_hashes": entry["n_hashes"],
                "n_buckets": entry["n_buckets"],
                "chunk_len": entry["chunk_len"],
                "history": entry.get("history", LSH_HISTORY_DEFAULT)}
    return {
        "attention": "linear",
        "feature_map": entry["feature_map"],
        "num_features": entry.get("num_features"),
        "eps": float(entry.get("eps", LINEAR_EPS_DEFAULT)),
        "gated": bool(entry.get("gated", False)),
    }


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def sinusoid_table(distances: torch.Tensor, d_model: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Relative position embeddings ``R[p]`` for the given distances.

    ``R[p] = [sin(p f_0) .. sin(p f_{D/2-1}), cos(p f_0) .. cos(p f_{D/2-1})]``
    with ``f_i = 10000^(-2i/D)`` (all sines first, then all cosines).
    Evaluated in float64 and cast to ``dtype``.
    """
    exponent = torch.arange(0, d_model, 2, dtype=torch.float64) / d_model
    inv_freq = 1.0 / (10000.0 ** exponent)
    angles = distances.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def _residual_scores(module: nn.Module, scores: torch.Tensor,
                     prev_scores: Optional[torch.Tensor],
                     keep_scores: bool) -> torch.Tensor:
    """Residual attention (RealFormer, docs/checkpoint-format.md "Residual
    attention"): ``S^l = scores^l + S^(l-1)`` on the unmasked pre-softmax
    scores [B, H, T, K] (every entry finite: masked keys hold their raw
    score, each layer applies its own mask afterwards). With
    ``keep_scores`` the sum is left in ``module.carried_scores`` for the
    next (residual) layer, else that attribute is None."""
    if prev_scores is not None:
        if prev_scores.shape != scores.shape:
            raise ValueError(f"residual attention: previous scores "
                             f"{tuple(prev_scores.shape)}, this layer's "
                             f"{tuple(scores.shape)}")
        scores = scores + prev_scores.to(scores.dtype)
    module.carried_scores = scores if keep_scores else None
    return scores


class RelMultiHeadAttention(nn.Module):
    """Transformer-XL relative multi-head attention (MODEL-SPEC 1.1, 1-9)."""

    def __init__(self, cfg: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.d_model, self.n_head, self.d_head = d_model, n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.clamp_len = cfg["clamp_len"]
        self.same_length = cfg["same_length"]
        self.mem_len = cfg["mem_len"]
        self.qkv = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.r = nn.Linear(d_model, n_head * d_head, bias=False)
        self.o = nn.Linear(n_head * d_head, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])
        if cfg["untie_r"]:
            self.r_w_bias = nn.Parameter(torch.zeros(n_head, d_head))
            self.r_r_bias = nn.Parameter(torch.zeros(n_head, d_head))

    def attention_mask(self, T: int, M: int, device=None) -> torch.Tensor:
        """Boolean ``[T, K]`` mask, True = forbidden (MODEL-SPEC 1.1, 6)."""
        K = M + T
        i = torch.arange(T, device=device)[:, None]
        j = torch.arange(K, device=device)[None, :]
        mask = j > M + i
        if self.same_length:
            overflow = K - self.mem_len
            shift = T - overflow if overflow > 0 else T
            mask = mask | (j <= i - shift)
        return mask

    def forward(self, x: torch.Tensor, mem: torch.Tensor,
                r_w_bias: torch.Tensor, r_r_bias: torch.Tensor,
                prev_scores: Optional[torch.Tensor] = None,
                keep_scores: bool = False) -> torch.Tensor:
        """``x``: [B, T, D] new rows; ``mem``: [B, M, D]; returns [B, T, D].

        Residual attention: ``prev_scores`` [B, H, T, K] is added to the
        unmasked scores before the mask; with ``keep_scores`` the sum is
        left in ``self.carried_scores`` (see :func:`_residual_scores`).
        """
        B, T, _ = x.shape
        M = mem.shape[1]
        K = M + T
        H, dh = self.n_head, self.d_head

        c = torch.cat([mem, x], dim=1)                           # [B, K, D]
        if self.pre_lnorm:
            c = self.ln(c)
        q, k, v = self.qkv(c).split(H * dh, dim=-1)
        q = q[:, M:].reshape(B, T, H, dh)
        k = k.reshape(B, K, H, dh)
        v = v.reshape(B, K, H, dh)

        # Distance of key j from query i, delta = (M + i) - j.  Entries with
        # delta < 0 are masked; clamp them to 0 only so the lookup is valid.
        i = torch.arange(T, device=x.device)[:, None]
        j = torch.arange(K, device=x.device)[None, :]
        delta = (M + i - j).clamp(min=0)
        if self.clamp_len > 0:
            delta = delta.clamp(max=self.clamp_len)
        max_dist = int(delta.max()) if delta.numel() else 0
        table = sinusoid_table(torch.arange(max_dist + 1), self.d_model,
                               x.dtype).to(x.device)
        rk = self.r(table).reshape(max_dist + 1, H, dh)[delta]  # [T,K,H,dh]

        content = torch.einsum("bthd,bkhd->bhtk", q + r_w_bias, k)
        position = torch.einsum("bthd,tkhd->bhtk", q + r_r_bias, rk)
        scores = (content + position) / math.sqrt(dh)
        scores = _residual_scores(self, scores, prev_scores, keep_scores)

        mask = self.attention_mask(T, M, x.device)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        # A row whose every key is masked produces zeros, not NaN (spec 0.2).
        probs = probs.masked_fill(mask.all(dim=-1, keepdim=True), 0.0)

        out = torch.einsum("bhtk,bkhd->bthd", probs, v).reshape(B, T, H * dh)
        out = self.o(out)
        if self.pre_lnorm:
            return x + out
        return self.ln(x + out)


class LinearState(NamedTuple):
    """Carried state of one linear-attention layer (MODEL-SPEC 5.1).

    ``S``: [B, H, m', d_h], ``z``: [B, H, m']; zeros for a new session.
    """

    S: torch.Tensor
    z: torch.Tensor


class LinearAttention(nn.Module):
    """Causal linear attention with a carried (S, z) state (MODEL-SPEC 5).

    Same projections, residual and LayerNorm as the dense layer, but no
    relative positions, no memory, no r biases and no 1/sqrt(d_h) scaling.
    ``mode`` selects the recurrent (token by token, the definition) or the
    parallel (masked quadratic) form; both give the same outputs and state.
    """

    def __init__(self, cfg: dict, spec: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.d_model, self.n_head, self.d_head = d_model, n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.feature_map = spec["feature_map"]
        self.num_features = spec["num_features"]
        self.eps = spec["eps"]
        self.gated = spec["gated"]
        self.mode = "recurrent"
        #: smallest phi(q).z (before the clamp) seen since construction or
        #: the last model.reset_denominator_stats(); a conditioning check
        #: for tests (rfa features can make it ~0 or negative).
        self.min_denominator = math.inf
        self.qkv = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.o = nn.Linear(n_head * d_head, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])
        if self.feature_map in ("favor", "rfa"):
            self.features = nn.Parameter(
                torch.zeros(self.num_features, d_head))
        if self.gated:
            self.gate = nn.Linear(d_model, n_head, bias=True)

    @property
    def state_features(self) -> int:
        """m', the length of phi(x)."""
        if self.feature_map == "elu":
            return self.d_head
        if self.feature_map == "favor":
            return self.num_features
        return 2 * self.num_features

    def init_state(self, batch: int, ref: torch.Tensor) -> LinearState:
        H, m, dh = self.n_head, self.state_features, self.d_head
        return LinearState(ref.new_zeros(batch, H, m, dh),
                           ref.new_zeros(batch, H, m))

    def phi(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """Feature map of [..., d_h] -> [..., m']."""
        if self.feature_map == "elu":
            return F.elu(x) + 1.0
        m = self.num_features
        if self.feature_map == "favor":
            xh = x * self.d_head ** -0.25
            u = xh @ self.features.t()                               # [.., m]
            sq = 0.5 * (xh * xh).sum(dim=-1, keepdim=True)
            arg = u - sq
            if is_query:
                arg = arg - u.max(dim=-1, keepdim=True).values
            return m ** -0.5 * (torch.exp(arg) + 1e-4)
        # rfa
        norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        wx = (x / norm) @ self.features.t()
        return m ** -0.5 * torch.cat([wx.sin(), wx.cos()], dim=-1)

    def _recurrent(self, fq, fk, v, gate, state: LinearState):
        """fq, fk: [B, H, T, m']; v: [B, H, T, d_h]; gate: [B, H, T]|None."""
        S, z = state
        T = fq.shape[2]
        outs, dens = [], []
        for t in range(T):
            kv = fk[:, :, t, :, None] * v[:, :, t, None, :]      # [B,H,m',dh]
            if gate is None:
                S = S + kv
                z = z + fk[:, :, t]
            else:
                g = gate[:, :, t]
                S = g[..., None, None] * S + (1 - g)[..., None, None] * kv
                z = g[..., None] * z + (1 - g)[..., None] * fk[:, :, t]
            q = fq[:, :, t]                                          # [B,H,m']
            num = torch.einsum("bhm,bhmd->bhd", q, S)
            den = (q * z).sum(dim=-1)
            dens.append(den)
            outs.append(num / den.clamp(min=self.eps)[..., None])
        if T == 0:
            return v.new_zeros(v.shape), fq.new_zeros(fq.shape[:3]), \
                LinearState(S, z)
        return (torch.stack(outs, dim=2), torch.stack(dens, dim=2),
                LinearState(S, z))

    def _parallel(self, fq, fk, v, gate, state: LinearState):
        """Masked quadratic form with the carried state; same contract."""
        S0, z0 = state
        T = fq.shape[2]
        causal = torch.ones(T, T, dtype=torch.bool,
                            device=fq.device).tril()               # s <= t
        A = torch.einsum("bhtm,bhsm->bhts", fq, fk)
        if gate is None:
            A = A.masked_fill(~causal, 0.0)
            carry_q = torch.ones_like(fq[..., 0])                    # [B,H,T]
            wk = torch.ones_like(fk[..., 0])                         # [B,H,T]
            carry_final = torch.ones_like(fq[:, :, 0, 0])            # [B,H]
            decay_final = wk
        else:
            logg = torch.log(gate)
            c = torch.cumsum(logg, dim=-1)                           # [B,H,T]
            diff = (c[..., :, None] - c[..., None, :]).masked_fill(
                ~causal, float("-inf"))
            w = 1 - gate                                             # (1-g_s)
            A = A * torch.exp(diff) * w[..., None, :]
            carry_q = torch.exp(c)
            c_T = c[..., -1:] if T else torch.zeros_like(c[..., :1])
            carry_final = torch.exp(c_T[..., 0])
            decay_final = torch.exp(c_T - c) * w
        num = (carry_q[..., None]
               * torch.einsum("bhtm,bhmd->bhtd", fq, S0)
               + torch.einsum("bhts,bhsd->bhtd", A, v))
        den = (carry_q * torch.einsum("bhtm,bhm->bht", fq, z0)
               + A.sum(dim=-1))
        out = num / den.clamp(min=self.eps)[..., None]
        fkw = fk * decay_final[..., None]
        S = (carry_final[..., None, None] * S0
             + torch.einsum("bhsm,bhsd->bhmd", fkw, v))
        z = carry_final[..., None] * z0 + fkw.sum(dim=2)
        return out, den, LinearState(S, z)

    def forward(self, x: torch.Tensor, state: LinearState
                ) -> Tuple[torch.Tensor, LinearState]:
        """``x``: [B, T, D]; returns ([B, T, D], state after the call)."""
        B, T, _ = x.shape
        H, dh = self.n_head, self.d_head
        h = self.ln(x) if self.pre_lnorm else x                 # layer input
        q, k, v = self.qkv(h).split(H * dh, dim=-1)
        q, k, v = (t.reshape(B, T, H, dh).transpose(1, 2) for t in (q, k, v))
        fq, fk = self.phi(q, is_query=True), self.phi(k, is_query=False)
        gate = None
        if self.gated:
            gate = torch.sigmoid(self.gate(h)).transpose(1, 2)      # [B,H,T]
        form = self._recurrent if self.mode == "recurrent" else self._parallel
        out, den, new_state = form(fq, fk, v, gate, state)
        if den.numel():
            self.min_denominator = min(self.min_denominator,
                                       float(den.min()))
        out = self.o(out.transpose(1, 2).reshape(B, T, H * dh))
        if self.pre_lnorm:
            return x + out, new_state
        return self.ln(x + out), new_state


class SparseState(NamedTuple):
    """Carried state of one sparse (sliding-window) layer.

    ``k``, ``v``: [B, H, P, d_h], the projected keys and values of the last
    ``P = min(seen, (window - 1) * max(dilation))`` stream positions, oldest
    first; P = 0 for a new session. Because the cache always holds the most
    recent positions, ``P < (window - 1) * max(dilation)`` means that the
    session has seen exactly P tokens, so no position counter is needed.
    """

    k: torch.Tensor
    v: torch.Tensor


class SparseAttention(nn.Module):
    """Causal sliding-window (optionally dilated) softmax attention.

    Query at stream position p, head h (dilation d_h) sees the keys at
    ``p - r * d_h`` for ``r = 0 .. window - 1`` that are >= 0, itself
    included; ``score = q.k / sqrt(d_head)``, softmax over those keys. No
    relative or absolute positions, no r biases, no memory; the same
    projections, residual and LayerNorm as the other kinds.
    """

    def __init__(self, cfg: dict, spec: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.d_model, self.n_head, self.d_head = d_model, n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.window = spec["window"]
        self.dilation = list(spec["dilation"])
        # Registration order = random_checkpoint draw order: qkv, o, ln.
        self.qkv = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.o = nn.Linear(n_head * d_head, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])

    @property
    def cache_len(self) -> int:
        """Positions kept between calls: (window - 1) * max(dilation)."""
        return (self.window - 1) * max(self.dilation)

    def init_state(self, batch: int, ref: torch.Tensor) -> SparseState:
        shape = (batch, self.n_head, 0, self.d_head)
        return SparseState(ref.new_zeros(shape), ref.new_zeros(shape))

    def allowed(self, T: int, P: int, device=None) -> torch.Tensor:
        """Boolean [H, T, P + T], True = key j visible to query i.

        Keys are [cache | new]; query i sits at index P + i, so the stream
        distance to key j is ``delta = P + i - j``.
        """
        i = torch.arange(T, device=device)[:, None]
        j = torch.arange(P + T, device=device)[None, :]
        delta = (P + i - j)[None]                                 # [1,T,K]
        dil = torch.tensor(self.dilation, device=device)[:, None, None]
        return ((delta >= 0) & (delta % dil == 0)
                & (delta // dil < self.window))

    def forward(self, x: torch.Tensor, state: SparseState,
                prev_scores: Optional[torch.Tensor] = None,
                keep_scores: bool = False
                ) -> Tuple[torch.Tensor, SparseState]:
        """``x``: [B, T, D]; returns ([B, T, D], state after the call).

        Residual attention: scores [B, H, T, P + T] over [cache | new]."""
        B, T, _ = x.shape
        H, dh = self.n_head, self.d_head
        h = self.ln(x) if self.pre_lnorm else x                 # layer input
        q, k, v = self.qkv(h).split(H * dh, dim=-1)
        q, k, v = (t.reshape(B, T, H, dh).transpose(1, 2) for t in (q, k, v))
        keys = torch.cat([state.k, k], dim=2)                  # [B,H,P+T,dh]
        values = torch.cat([state.v, v], dim=2)
        P = state.k.shape[2]
        scores = torch.einsum("bhtd,bhkd->bhtk", q, keys) / math.sqrt(dh)
        scores = _residual_scores(self, scores, prev_scores, keep_scores)
        mask = self.allowed(T, P, x.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)   # never all masked (r = 0)
        out = torch.einsum("bhtk,bhkd->bhtd", probs, values)
        out = self.o(out.transpose(1, 2).reshape(B, T, H * dh))
        keep = min(self.cache_len, P + T)
        start = P + T - keep
        new_state = SparseState(keys[:, :, start:], values[:, :, start:])
        if self.pre_lnorm:
            return x + out, new_state
        return self.ln(x + out), new_state


# --------------------------------------------------------------------------
# Sparse patterns (strided, fixed, bigbird, global positions / tokens)
# --------------------------------------------------------------------------


def splitmix64_finalise(z: int) -> int:
    """splitmix64's finaliser ``f`` of docs/checkpoint-format.md (mod 2^64)."""
    z = (z + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def bigbird_mix(seed: int, h: int, q: int, t: int) -> int:
    """``mix(s, h, q, t) = f(f(f(s ^ h) ^ q) ^ t)``."""
    f = splitmix64_finalise
    return f(f(f((seed ^ h) & _U64) ^ q) ^ t)


def bigbird_random_blocks(seed: int, h: int, q: int, span: int, block: int,
                          window_blocks: int, random_blocks: int
                          ) -> List[int]:
    """``R_h(q)``: the random key blocks of query block ``q``, head ``h``.

    Candidates ``C = [max(0, q - span // block), q - window_blocks]``
    ascending; all of them when ``|C| <= r``, else a partial Fisher-Yates
    shuffle with ``i = t + mix(seed, h, q, t) mod (|C| - t)``.
    """
    cand = list(range(max(0, q - span // block), q - window_blocks + 1))
    r = random_blocks
    if len(cand) <= r:
        return cand
    for t in range(r):
        i = t + bigbird_mix(seed, h, q, t) % (len(cand) - t)
        cand[t], cand[i] = cand[i], cand[t]
    return cand[:r]


def pattern_allowed(spec: dict, h: int, p: int, n_keys: int) -> List[bool]:
    """``Allowed_h(p)`` before the span cut, as a list over keys 0..n_keys-1
    (only ``j <= p`` can be True). Written from the table of
    docs/checkpoint-format.md, one position at a time."""
    pattern = spec["pattern"]
    out = [False] * n_keys
    if pattern == "bigbird":
        b, w = spec["block"], spec["window_blocks"]
        qb = p // b
        blocks = set(range(max(0, qb - w + 1), qb + 1))
        blocks |= set(bigbird_random_blocks(
            spec["seed"], h, qb, spec["span"], b, w, spec["random_blocks"]))
    for j in range(min(p, n_keys - 1) + 1):
        if pattern == "window":
            d = spec["dilation"][h]
            ok = (p - j) % d == 0 and (p - j) // d < spec["window"]
        elif pattern == "strided":
            l = spec["stride"]
            ok = False
            for comp in spec["head_components"][h]:
                if comp == "local":
                    ok = ok or p - l < j
                else:
                    ok = ok or (p - j) % l == 0
        elif pattern == "fixed":
            l, c = spec["block"], spec["summary"]
            ok = False
            for comp in spec["head_components"][h]:
                if comp == "block":
                    ok = ok or j // l == p // l
                else:
                    ok = ok or j % l >= l - c
        else:  # bigbird: every j <= p in the window or random blocks
            ok = j // spec["block"] in blocks
        out[j] = ok
    # The sets are taken literally: "(j <= p, itself included)" says j = p
    # counts as earlier; a summary-only head of "fixed" may miss p itself
    # and may even be empty (then the head's output is zero).
    return out


class PatternState(NamedTuple):
    """State of a sparse layer with a general pattern or global positions.

    The oracle keeps the whole history (the span cut and the kept globals
    ``K(p)`` are applied in the mask, so the result is the spec's bounded
    state): ``k``, ``v`` [B, H, P, d_h] of every position seen, oldest
    first, and ``glob`` [B, P] bool, whether each position is global.
    """

    k: torch.Tensor
    v: torch.Tensor
    glob: torch.Tensor


class PatternSparseAttention(nn.Module):
    """Sparse softmax attention with an explicit per-query allowed set.

    Query p (head h) sees ``Allowed_h(p)`` (every ``j <= p`` for a global
    query) cut to ``p - j <= span``, plus ``K(p)``: the last
    ``max_global`` global positions before p. ``score = q.k / sqrt(d_h)``.
    Same tensors (and draw order) as the sliding window.
    """

    def __init__(self, cfg: dict, spec: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.d_model, self.n_head, self.d_head = d_model, n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.spec = spec
        self.span = spec["span"]
        self.global_positions = set(spec["global_positions"])
        self.global_tokens = set(spec["global_tokens"])
        self.max_global = spec["max_global"]
        self.qkv = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.o = nn.Linear(n_head * d_head, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])

    def init_state(self, batch: int, ref: torch.Tensor) -> PatternState:
        shape = (batch, self.n_head, 0, self.d_head)
        return PatternState(ref.new_zeros(shape), ref.new_zeros(shape),
                            torch.zeros(batch, 0, dtype=torch.bool))

    def is_global(self, p: int, token: int) -> bool:
        return p in self.global_positions or token in self.global_tokens

    def visible(self, glob: Sequence[bool], p: int) -> torch.Tensor:
        """Boolean [H, p + 1]: the keys query ``p`` sees, per head.

        ``glob[j]``: whether position j (0..p) is global.
        """
        n = p + 1
        kept = [j for j in range(p) if glob[j]][-self.max_global:] \
            if self.max_global > 0 else []
        rows = []
        for h in range(self.n_head):
            if glob[p]:
                base = [True] * n
            else:
                base = pattern_allowed(self.spec, h, p, n)
            row = [base[j] and p - j <= self.span for j in range(n)]
            for j in kept:
                row[j] = True
            rows.append(row)
        return torch.tensor(rows, dtype=torch.bool)

    def forward(self, x: torch.Tensor, state: PatternState,
                ids: torch.Tensor,
                prev_scores: Optional[torch.Tensor] = None,
                keep_scores: bool = False
                ) -> Tuple[torch.Tensor, PatternState]:
        """``x``: [B, T, D], ``ids``: [B, T] token ids.

        Residual attention: scores [B, H, T, P + T] over every position
        seen (P: the whole history the oracle keeps); query i uses the
        first P + i + 1 columns."""
        B, T, _ = x.shape
        H, dh = self.n_head, self.d_head
        h = self.ln(x) if self.pre_lnorm else x
        q, k, v = self.qkv(h).split(H * dh, dim=-1)
        q, k, v = (t.reshape(B, T, H, dh).transpose(1, 2) for t in (q, k, v))
        keys = torch.cat([state.k, k], dim=2)
        values = torch.cat([state.v, v], dim=2)
        P = state.k.shape[2]
        new_glob = torch.tensor(
            [[self.is_global(P + i, int(ids[b, i])) for i in range(T)]
             for b in range(B)], dtype=torch.bool).reshape(B, T)
        glob = torch.cat([state.glob, new_glob], dim=1)
        out = x.new_zeros(B, H, T, dh)
        scores = torch.einsum("bhtd,bhkd->bhtk", q, keys) / math.sqrt(dh)
        scores = _residual_scores(self, scores, prev_scores, keep_scores)
        for b in range(B):
            flags = glob[b].tolist()
            for i in range(T):
                p = P + i
                mask = self.visible(flags, p)                   # [H, p+1]
                s = scores[b, :, i, :p + 1]
                s = s.masked_fill(~mask, float("-inf"))
                probs = torch.softmax(s, dim=-1)
                # A head that sees no key (a summary-only head of "fixed"
                # before the first summary position) outputs zeros, as a
                # fully masked row does everywhere (MODEL-SPEC 0.2).
                probs = probs.masked_fill(~mask.any(dim=-1, keepdim=True),
                                          0.0)
                out[b, :, i] = torch.einsum("hk,hkd->hd", probs,
                                            values[b, :, :p + 1])
        out = self.o(out.transpose(1, 2).reshape(B, T, H * dh))
        new_state = PatternState(keys, values, glob)
        if self.pre_lnorm:
            return x + out, new_state
        return self.ln(x + out), new_state


# --------------------------------------------------------------------------
# LSH (Reformer) attention
# --------------------------------------------------------------------------


class LSHState(NamedTuple):
    """State of an LSH layer: the shared query/key vectors ``x`` and values
    ``v`` [B, H, P, d_h] of the last ``P = min(seen, history - 1)``
    positions, oldest first (buckets and normalised keys are functions of
    ``x``, recomputed by the oracle)."""

    x: torch.Tensor
    v: torch.Tensor


class LSHAttention(nn.Module):
    """Reformer attention, the per-query definition of docs/checkpoint-format.md.

    ``qkv`` [2 H d_h, D] (shared query/key block, then values),
    ``rotations`` [H, d_h, R, nb/2]. Query p looks at
    ``U(p) = {p - history < j <= p}``; per round the window is sorted by
    ``(bucket, j)`` and p's own chunk and the one before are candidates;
    the output is the softmax over the union of candidates minus p of
    ``x_p . k_j`` (keys normalised), or ``v_p`` when the union is {p}.
    """

    def __init__(self, cfg: dict, spec: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.d_model, self.n_head, self.d_head = d_model, n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.n_hashes = spec["n_hashes"]
        self.n_buckets = spec["n_buckets"]
        self.chunk_len = spec["chunk_len"]
        self.history = spec["history"]
        #: smallest gap between the largest and second-largest entry of
        #: ``[y, -y]`` over every hash computed (a conditioning check: a
        #: float32 engine may pick another bucket on a near-tie).
        self.min_margin = math.inf
        self.qkv = nn.Linear(d_model, 2 * n_head * d_head, bias=False)
        self.rotations = nn.Parameter(torch.zeros(
            n_head, d_head, self.n_hashes, self.n_buckets // 2))
        self.o = nn.Linear(n_head * d_head, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])

    def init_state(self, batch: int, ref: torch.Tensor) -> LSHState:
        shape = (batch, self.n_head, 0, self.d_head)
        return LSHState(ref.new_zeros(shape), ref.new_zeros(shape))

    def buckets(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, N, d_h] -> bucket ids [B, H, R, N] (first max on ties)."""
        y = torch.einsum("bhnd,hdrk->bhrnk", x, self.rotations.to(x.dtype))
        both = torch.cat([y, -y], dim=-1)
        return both.argmax(dim=-1)

    def margins(self, x: torch.Tensor) -> float:
        y = torch.einsum("bhnd,hdrk->bhrnk", x, self.rotations.to(x.dtype))
        both = torch.cat([y, -y], dim=-1)
        if both.numel() == 0:
            return math.inf
        top = both.topk(2, dim=-1).values
        return float((top[..., 0] - top[..., 1]).min())

    def candidates(self, bucket: List[List[int]], p: int) -> List[int]:
        """C(p) over local indices: ``bucket[r][j]`` for every round r and
        index j <= p; the window is ``max(0, p - history + 1) .. p``."""
        c = self.chunk_len
        window = range(max(0, p - self.history + 1), p + 1)
        found = set()
        for r in range(self.n_hashes):
            order = sorted(window, key=lambda j: (bucket[r][j], j))
            s = order.index(p)
            lo = max(0, (s // c - 1) * c)
            hi = min(len(order), (s // c + 1) * c)
            found.update(order[lo:hi])
        return sorted(found)

    def forward(self, x: torch.Tensor, state: LSHState
                ) -> Tuple[torch.Tensor, LSHState]:
        B, T, _ = x.shape
        H, dh = self.n_head, self.d_head
        h = self.ln(x) if self.pre_lnorm else x
        xs, v = self.qkv(h).split(H * dh, dim=-1)
        xs, v = (t.reshape(B, T, H, dh).transpose(1, 2) for t in (xs, v))
        allx = torch.cat([state.x, xs], dim=2)                  # [B,H,N,dh]
        allv = torch.cat([state.v, v], dim=2)
        P = state.x.shape[2]
        self.min_margin = min(self.min_margin, self.margins(xs))
        bucket = self.buckets(allx).tolist()                    # [B][H][R][N]
        keys = allx / torch.sqrt((allx * allx).mean(dim=-1, keepdim=True)
                                 + 1e-6) / math.sqrt(dh)
        out = x.new_zeros(B, H, T, dh)
        for b in range(B):
            for hh in range(H):
                for i in range(T):
                    p = P + i
                    others = [j for j in self.candidates(bucket[b][hh], p)
                              if j != p]
                    if not others:
                        out[b, hh, i] = allv[b, hh, p]
                        continue
                    logits = keys[b, hh, others] @ allx[b, hh, p]
                    probs = torch.softmax(logits, dim=0)
                    out[b, hh, i] = probs @ allv[b, hh, others]
        out = self.o(out.transpose(1, 2).reshape(B, T, H * dh))
        keep = min(self.history - 1, P + T)
        start = P + T - keep
        new_state = LSHState(allx[:, :, start:], allv[:, :, start:])
        if self.pre_lnorm:
            return x + out, new_state
        return self.ln(x + out), new_state


# --------------------------------------------------------------------------
# Compressive memory (Compressive Transformer) on a dense layer
# --------------------------------------------------------------------------


class MemoryCompressedState(NamedTuple):
    """Carried state of one memory-compressed layer in the oracle.

    ``k``, ``v``: [B, P, H * d_h], the projected keys and values of every
    stream position seen so far (P = the session's position), oldest
    first. The engine keeps only what a query can still reach; the oracle
    keeps the whole history and recomputes the compression from it, so the
    two share nothing but the definition.
    """

    k: torch.Tensor
    v: torch.Tensor


class MemoryCompressedAttention(nn.Module):
    """Memory-compressed attention (Liu et al. 2018), causal.

    Positions fall into blocks of c = ``compression_rate``; block j covers
    positions [j c, j c + c). ``compress_k`` and ``compress_v`` are
    ``Conv1d(H d_h, H d_h, kernel_size=c, stride=c)`` over the sequence of
    keys (values): output j is block j compressed. The query at position i
    (block b = i // c) sees the compressed blocks max(0, b - S) .. b - 1
    (S = ``cmem_len``) and the keys of positions b c .. i; ``score =
    q.k / sqrt(d_h)`` per head (compressed rows split into heads like the
    keys), one softmax over both sets. No position encodings.
    """

    def __init__(self, cfg: dict, spec: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.n_head, self.d_head = n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.rate = spec["compression_rate"]
        self.cmem_len = spec["cmem_len"]
        width = n_head * d_head
        # Registration order = random_checkpoint draw order.
        self.qkv = nn.Linear(d_model, 3 * width, bias=False)
        self.o = nn.Linear(width, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])
        self.compress_k = nn.Conv1d(width, width, self.rate, stride=self.rate)
        self.compress_v = nn.Conv1d(width, width, self.rate, stride=self.rate)

    def init_state(self, batch: int, ref: torch.Tensor
                   ) -> MemoryCompressedState:
        shape = (batch, 0, self.n_head * self.d_head)
        return MemoryCompressedState(ref.new_zeros(shape), ref.new_zeros(shape))

    def allowed(self, T: int, P: int, n_blocks: int, device=None
                ) -> torch.Tensor:
        """Boolean [T, n_blocks + P + T]: [compressed blocks | positions]."""
        c, S = self.rate, self.cmem_len
        i = torch.arange(P, P + T, device=device)[:, None]      # query positions
        block = i // c
        j = torch.arange(n_blocks, device=device)[None, :]
        compressed = (j < block) & (j >= block - S)
        m = torch.arange(P + T, device=device)[None, :]
        own = (m >= block * c) & (m <= i)
        return torch.cat([compressed, own], dim=1)

    def forward(self, x: torch.Tensor, state: MemoryCompressedState
                ) -> Tuple[torch.Tensor, MemoryCompressedState]:
        B, T, _ = x.shape
        H, dh = self.n_head, self.d_head
        h = self.ln(x) if self.pre_lnorm else x
        q, k, v = self.qkv(h).split(H * dh, dim=-1)
        keys = torch.cat([state.k, k], dim=1)                 # [B, P+T, HD]
        values = torch.cat([state.v, v], dim=1)
        P = state.k.shape[1]
        if P + T >= self.rate:   # complete blocks: one output each
            ck = self.compress_k(keys.transpose(1, 2)).transpose(1, 2)
            cv = self.compress_v(values.transpose(1, 2)).transpose(1, 2)
        else:
            ck, cv = keys[:, :0], values[:, :0]               # [B, 0, HD]
        n_blocks = ck.shape[1]
        all_k = torch.cat([ck, keys], dim=1)
        all_v = torch.cat([cv, values], dim=1)

        def heads(t):
            return t.reshape(B, t.shape[1], H, dh).transpose(1, 2)

        scores = torch.einsum("bhtd,bhkd->bhtk", heads(q),
                              heads(all_k)) / math.sqrt(dh)
        mask = self.allowed(T, P, n_blocks, x.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)   # never empty: i sees itself
        out = torch.einsum("bhtk,bhkd->bhtd", probs, heads(all_v))
        out = self.o(out.transpose(1, 2).reshape(B, T, H * dh))
        new_state = MemoryCompressedState(keys, values)
        if self.pre_lnorm:
            return x + out, new_state
        return self.ln(x + out), new_state


class RoutingState(NamedTuple):
    """Carried state of one routing layer in the oracle.

    ``k``, ``v``: [B, H, P, d_h], the keys and values of every position
    seen so far (P = the session's position), oldest first. The engine
    keeps the last history - 1 with their clusters; the oracle keeps all and
    routes them again each call, so the window is applied in the mask.
    """

    k: torch.Tensor
    v: torch.Tensor


class RoutingAttention(nn.Module):
    """Routing attention (Roy et al. 2020), causal, with fixed centroids.

    Per head h, ``route(x) = argmax_c (mu_c / |mu_c|) . x`` over the
    checkpoint's centroids ``mu`` = ``attn.centroids[h]`` [K, d_h] (the
    nearest centroid on the unit sphere; the first maximum on ties). The
    query at position p sees the keys j with ``p - history < j <= p`` and
    ``route(k_j) == route(q_p)``, and itself always; ``score = q.k /
    sqrt(d_h)``, softmax over those keys. No position encodings.
    ``min_margin`` records the smallest gap between the best and the
    second-best centroid of any vector routed (relative to the vector's
    norm), so tests can tell a float32 tie from a bug.
    """

    def __init__(self, cfg: dict, spec: dict):
        super().__init__()
        d_model, n_head, d_head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
        self.n_head, self.d_head = n_head, d_head
        self.pre_lnorm = cfg["pre_lnorm"]
        self.history = spec["history"]
        width = n_head * d_head
        # Registration order = random_checkpoint draw order.
        self.qkv = nn.Linear(d_model, 3 * width, bias=False)
        self.o = nn.Linear(width, d_model, bias=False)
        self.ln = nn.LayerNorm(d_model, eps=cfg["layer_norm_epsilon"])
        self.centroids = nn.Parameter(
            torch.zeros(n_head, spec["n_clusters"], d_head))
        self.min_margin = math.inf

    def init_state(self, batch: int, ref: torch.Tensor) -> RoutingState:
        shape = (batch, self.n_head, 0, self.d_head)
        return RoutingState(ref.new_zeros(shape), ref.new_zeros(shape))

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, N, d_h] -> cluster ids [B, H, N]."""
        unit = self.centroids / self.centroids.norm(dim=-1, keepdim=True)
        sims = torch.einsum("bhnd,hkd->bhnk", x, unit)
        if sims.shape[-1] > 1 and sims.numel():
            top = sims.topk(2, dim=-1).values
            gap = (top[..., 0] - top[..., 1]) / x.norm(dim=-1).clamp_min(1e-30)
            self.min_margin = min(self.min_margin, gap.min().item())
        return sims.argmax(dim=-1)

    def forward(self, x: torch.Tensor, state: RoutingState
                ) -> Tuple[torch.Tensor, RoutingState]:
        B, T, _ = x.shape
        H, dh = self.n_head, self.d_head
        h = self.ln(x) if self.pre_lnorm else x
        q, k, v = self.qkv(h).split(H * dh, dim=-1)
        q, k, v = (t.reshape(B, T, H, dh).transpose(1, 2) for t in (q, k, v))
        keys = torch.cat([state.k, k], dim=2)                   # [B,H,P+T,dh]
        values = torch.cat([state.v, v], dim=2)
        P = state.k.shape[2]
        same = self.route(q)[..., :, None] == self.route(keys)[..., None, :]
        i = torch.arange(P, P + T)[:, None]
        j = torch.arange(P + T)[None, :]
        window = (j <= i) & (j > i - self.history)
        allowed = (same & window) | (j == i)
        scores = torch.einsum("bhtd,bhkd->bhtk", q, keys) / math.sqrt(dh)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.einsum("bhtk,bhkd->bhtd", torch.softmax(scores, -1),
                           values)
        out = self.o(out.transpose(1, 2).reshape(B, T, H * dh))
        new_state = RoutingState(keys, values)
        if self.pre_lnorm:
            return x + out, new_state
        return self.ln(x + out), new_state


class CompressiveState(NamedTuple):
    """State of a dense layer with compressive memory.

    ``mem`` [B, M, D]: the XL memory (layer inputs, as for a dense layer);
    ``usage`` [B, M]: attention each memory row received while in the XL
    memory (summed over heads and queries); ``buf`` [B, n_b, D] /
    ``buf_usage`` [B, n_b]: evicted rows in hidden form (LayerNorm'd under
    pre_lnorm), waiting for a full group; ``cmem`` [B, n, D]: compressed
    rows (hidden form, projected by the key/value weights when used),
    oldest first, at most ``cmem_len``.
    """

    mem: torch.Tensor
    usage: torch.Tensor
    buf: torch.Tensor
    buf_usage: torch.Tensor
    cmem: torch.Tensor


def compress_rows(kind: str, group: torch.Tensor, usage: torch.Tensor,
                  weight: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None,
                  kernel: int = 1) -> torch.Tensor:
    """One compressed row per batch entry from ``group`` [B, c, D].

    ``usage`` [B, c] is used by most_used (the first maximum = the oldest).
    """
    c = group.shape[1]
    if kind == "max_pool":
        return group.max(dim=1).values
    if kind == "mean_pool":
        return group.mean(dim=1)
    if kind == "conv1d":
        return bias + torch.einsum("oik,bki->bo", weight, group)
    if kind == "dilated_conv":
        taps = [k * (c // kernel) for k in range(kernel)]
        return bias + torch.einsum("oik,bki->bo", weight, group[:, taps])
    idx = usage.argmax(dim=1)                                      # oldest
    return group[torch.arange(group.shape[0]), idx]


class CompressiveAttention(RelMultiHeadAttention):
    """Transformer-XL attention over ``[compressed | XL memory | segment]``
    with one relative position per slot; rows leaving the XL memory are
    compressed in groups of ``compression_rate`` (docs/checkpoint-format.md
    "Compressive memory")."""

    def __init__(self, cfg: dict, spec: dict):
        super().__init__(cfg)
        self.compression = spec["compression"]
        self.rate = spec["compression_rate"]
        self.cmem_len = spec["cmem_len"]
        self.kernel = spec["compression_kernel"]
        self.memory_init = cfg["memory_init"]
        #: smallest usage gap between the chosen most_used row and the best
        #: row of different content in its group (conditioning check).
        self.min_usage_margin = math.inf
        if self.compression in ("conv1d", "dilated_conv"):
            taps = self.rate if self.compression == "conv1d" else self.kernel
            self.compress = nn.Conv1d(cfg["d_model"], cfg["d_model"], taps)
            # only the parameters are used (weight [D, D, taps], bias [D])

    def init_state(self, batch: int, ref: torch.Tensor) -> CompressiveState:
        D = self.d_model
        rows = self.mem_len if self.memory_init == "zeros" else 0
        return CompressiveState(ref.new_zeros(batch, rows, D),
                                ref.new_zeros(batch, rows),
                                ref.new_zeros(batch, 0, D),
                                ref.new_zeros(batch, 0),
                                ref.new_zeros(batch, 0, D))

    def compress_group(self, group: torch.Tensor, usage: torch.Tensor
                       ) -> torch.Tensor:
        if self.compression == "most_used":
            for b in range(group.shape[0]):
                best = int(usage[b].argmax())
                differs = (group[b] != group[b, best]).any(dim=-1)
                # Exact zeros (rows never seen as memory) tie exactly in
                # any precision; only a positive winner can be fragile.
                if differs.any() and usage[b, best] > 0:
                    gap = float(usage[b, best] - usage[b][differs].max())
                    self.min_usage_margin = min(self.min_usage_margin, gap)
        weight = bias = None
        if self.compression in ("conv1d", "dilated_conv"):
            weight = self.compress.weight.to(group.dtype)
            bias = self.compress.bias.to(group.dtype)
        return compress_rows(self.compression, group, usage, weight, bias,
                             self.kernel or 1)

    def forward(self, x: torch.Tensor, state: CompressiveState,
                r_w_bias: torch.Tensor, r_r_bias: torch.Tensor,
                prev_scores: Optional[torch.Tensor] = None,
                keep_scores: bool = False
                ) -> Tuple[torch.Tensor, CompressiveState]:
        B, T, _ = x.shape
        mem, cmem = state.mem, state.cmem
        M, C = mem.shape[1], cmem.shape[1]
        K = C + M + T
        H, dh = self.n_head, self.d_head

        both = torch.cat([mem, x], dim=1)                     # raw rows
        hid = self.ln(both) if self.pre_lnorm else both       # hidden form
        q, k, v = self.qkv(hid).split(H * dh, dim=-1)
        _, ck, cv = self.qkv(cmem).split(H * dh, dim=-1)
        q = q[:, M:].reshape(B, T, H, dh)
        k = torch.cat([ck, k], dim=1).reshape(B, K, H, dh)
        v = torch.cat([cv, v], dim=1).reshape(B, K, H, dh)

        i = torch.arange(T)[:, None]
        j = torch.arange(K)[None, :]
        delta = C + M + i - j
        mask = delta < 0
        delta = delta.clamp(min=0)
        if self.clamp_len > 0:
            delta = delta.clamp(max=self.clamp_len)
        max_dist = int(delta.max())
        table = sinusoid_table(torch.arange(max_dist + 1), self.d_model,
                               x.dtype)
        rk = self.r(table).reshape(max_dist + 1, H, dh)[delta]
        content = torch.einsum("bthd,bkhd->bhtk", q + r_w_bias, k)
        position = torch.einsum("bthd,tkhd->bhtk", q + r_r_bias, rk)
        scores = (content + position) / math.sqrt(dh)
        scores = _residual_scores(self, scores, prev_scores, keep_scores)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("bhtk,bkhd->bthd", probs, v).reshape(B, T, H * dh)
        out = self.o(out)
        out = x + out if self.pre_lnorm else self.ln(x + out)

        # State update: usage of the memory rows, eviction, compression.
        usage = torch.cat([state.usage + probs[..., C:C + M].sum(dim=(1, 2)),
                           x.new_zeros(B, T)], dim=1)
        keep = min(self.mem_len, M + T)
        gone = M + T - keep
        buf = torch.cat([state.buf, hid[:, :gone]], dim=1)
        buf_usage = torch.cat([state.buf_usage, usage[:, :gone]], dim=1)
        rows = [cmem]
        while buf.shape[1] >= self.rate:
            rows.append(self.compress_group(buf[:, :self.rate],
                                            buf_usage[:, :self.rate])[:, None])
            buf, buf_usage = buf[:, self.rate:], buf_usage[:, self.rate:]
        cmem = torch.cat(rows, dim=1)
        cmem = cmem[:, max(0, cmem.shape[1] - self.cmem_len):]
        new_state = CompressiveState(both[:, gone:], usage[:, gone:], buf,
                                     buf_usage, cmem)
        return out, new_state


class PositionwiseFF(nn.Module):
    """Position-wise feed-forward block with its residual and LayerNorm."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.pre_lnorm = cfg["pre_lnorm"]
        self.fc1 = nn.Linear(cfg["d_model"], cfg["d_inner"])
        self.fc2 = nn.Linear(cfg["d_inner"], cfg["d_model"])
        self.ln = nn.LayerNorm(cfg["d_model"], eps=cfg["layer_norm_epsilon"])
        # F.gelu defaults to the exact erf form.
        self.act = F.relu if cfg["activation"] == "relu" else F.gelu

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.pre_lnorm:
            return y + self.fc2(self.act(self.fc1(self.ln(y))))
        return self.ln(y + self.fc2(self.act(self.fc1(y))))


class DecoderLayer(nn.Module):
    """Dense (Transformer-XL) layer by default; ``spec`` may make it linear,
    sparse (a plain window, or ``kind`` "pattern" for the other patterns and
    global attention), lsh, memory_compressed, routing, or dense with compressive
    memory (``kind`` "compressive")."""

    def __init__(self, cfg: dict, spec: Optional[dict] = None):
        super().__init__()
        self.kind = "dense" if spec is None else spec["attention"]
        if self.kind == "dense" and spec is not None \
                and spec.get("memory", "xl") == "compressive":
            self.kind = "compressive"
        if self.kind == "sparse" and "pattern" in spec:
            self.kind = "pattern"
        if self.kind == "dense":
            self.attn = RelMultiHeadAttention(cfg)
        elif self.kind == "compressive":
            self.attn = CompressiveAttention(cfg, spec)
        elif self.kind == "sparse":
            self.attn = SparseAttention(cfg, spec)
        elif self.kind == "pattern":
            self.attn = PatternSparseAttention(cfg, spec)
        elif self.kind == "lsh":
            self.attn = LSHAttention(cfg, spec)
        elif self.kind == "memory_compressed":
            self.attn = MemoryCompressedAttention(cfg, spec)
        elif self.kind == "routing":
            self.attn = RoutingAttention(cfg, spec)
        else:
            self.attn = LinearAttention(cfg, spec)
        self.ff = PositionwiseFF(cfg)

    def forward(self, x, mem, r_w_bias=None, r_r_bias=None, ids=None,
                prev_scores=None, keep_scores=False):
        """Dense: returns the output; every other kind: (output, new
        state). ``prev_scores`` / ``keep_scores``: residual attention
        (dense, compressive and sparse kinds only); the kept scores are in
        ``self.attn.carried_scores``."""
        res = {}
        if prev_scores is not None or keep_scores:
            if self.kind in ("linear", "lsh", "memory_compressed", "routing"):
                raise ValueError(f"a {self.kind} layer has no residual "
                                 f"attention")
            res = {"prev_scores": prev_scores, "keep_scores": keep_scores}
        if self.kind == "dense":
            return self.ff(self.attn(x, mem, r_w_bias, r_r_bias, **res))
        if self.kind == "compressive":
            y, state = self.attn(x, mem, r_w_bias, r_r_bias, **res)
        elif self.kind == "pattern":
            y, state = self.attn(x, mem, ids, **res)
        else:
            y, state = self.attn(x, mem, **res)
        return self.ff(y), state


class LMHead(nn.Module):
    """Output projection; owns ``weight`` only when it is not tied."""

    def __init__(self, cfg: dict):
        super().__init__()
        if not cfg["tie_word_embeddings"]:
            self.weight = nn.Parameter(
                torch.zeros(cfg["vocab_size"], cfg["d_model"]))
        self.bias = nn.Parameter(torch.zeros(cfg["vocab_size"]))


class TransfoXLReference(nn.Module):
    """Transformer-XL LM with plain (or factorised) embedding and plain
    softmax head.

    ``layers`` holds one module per parameter group (``layer_groups``;
    one per layer when absent), stored as ``layers.g.*``; ``stack`` lists
    the module of every layer in order. Session state is per layer.
    """

    def __init__(self, config: dict):
        super().__init__()
        cfg = validate_config(config)
        self.config = cfg
        n_head, d_head = cfg["n_head"], cfg["d_head"]
        d_embed = cfg.get("d_embed", cfg["d_model"])
        self.word_emb = nn.Embedding(cfg["vocab_size"], d_embed)
        if has_emb_proj(cfg):
            self.emb_proj = nn.Linear(d_embed, cfg["d_model"])
        self.specs = layer_specs(cfg)
        #: per layer: residual attention (adds the previous layer's scores).
        self.residual = [bool(s.get(RESIDUAL_FIELD, False))
                         for s in self.specs]
        n_groups = cfg.get("layer_groups", cfg["n_layer"])
        self.group_of = [group_of(cfg, n) for n in range(cfg["n_layer"])]
        #: the spec of each parameter group (that of its first layer).
        self.module_specs = [self.specs[group_layers(cfg, g)[0]]
                             for g in range(n_groups)]
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, spec) for spec in self.module_specs)
        # The shared r biases exist only when some layer is dense.
        any_dense = any(s["attention"] == "dense" for s in self.specs)
        if not cfg["untie_r"] and any_dense:
            self.r_w_bias = nn.Parameter(torch.zeros(n_head, d_head))
            self.r_r_bias = nn.Parameter(torch.zeros(n_head, d_head))
        self.lm_head = LMHead(cfg)

    @property
    def stack(self) -> List[DecoderLayer]:
        """The module of every layer, in layer order (shared in a group)."""
        return [self.layers[g] for g in self.group_of]

    @property
    def mem_len(self) -> int:
        return self.config["mem_len"]

    def output_weight(self) -> torch.Tensor:
        if self.config["tie_word_embeddings"]:
            return self.word_emb.weight
        return self.lm_head.weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding x sqrt(d_model), then ``emb_proj`` when factorised."""
        x = self.word_emb(ids) * math.sqrt(self.config["d_model"])
        if has_emb_proj(self.config):
            x = self.emb_proj(x)
        return x

    def set_linear_mode(self, mode: str) -> None:
        """``"recurrent"`` (default) or ``"parallel"`` for linear layers."""
        if mode not in ("recurrent", "parallel"):
            raise ValueError(mode)
        for layer in self.layers:
            if layer.kind == "linear":
                layer.attn.mode = mode

    def reset_denominator_stats(self) -> None:
        for layer in self.layers:
            if layer.kind == "linear":
                layer.attn.min_denominator = math.inf

    def min_denominator(self) -> float:
        """Smallest linear-attention denominator seen (inf if none)."""
        return min((layer.attn.min_denominator for layer in self.layers
                    if layer.kind == "linear"), default=math.inf)

    def reset_margin_stats(self) -> None:
        for layer in self.layers:
            if layer.kind in ("lsh", "routing"):
                layer.attn.min_margin = math.inf
            if layer.kind == "compressive":
                layer.attn.min_usage_margin = math.inf

    def min_lsh_margin(self) -> float:
        """Smallest top-1 / top-2 gap of any LSH hash computed (inf if
        none): a float32 engine may pick another bucket below ~1e-4."""
        return min((layer.attn.min_margin for layer in self.layers
                    if layer.kind == "lsh"), default=math.inf)

    def min_routing_margin(self) -> float:
        """Smallest best / second-best centroid gap of any vector routed
        (inf if none), relative to the vector's norm: a float32 engine may
        pick another cluster below ~1e-5."""
        return min((layer.attn.min_margin for layer in self.layers
                    if layer.kind == "routing"), default=math.inf)

    def min_usage_margin(self) -> float:
        """Smallest most_used usage gap (inf if none)."""
        return min((layer.attn.min_usage_margin for layer in self.layers
                    if layer.kind == "compressive"), default=math.inf)

    def init_mems(self, batch: int) -> list:
        """First-call state per layer.

        Dense layer: ``mem_len`` zero rows or empty (memory_init), [B, M, D].
        Linear layer: a zero :class:`LinearState` (S, z). Sparse layer: an
        empty :class:`SparseState` (plain window) or :class:`PatternState`
        (memory_init does not apply). LSH layer: an empty
        :class:`LSHState`. Compressive layer: a :class:`CompressiveState`.
        """
        rows = self.mem_len if self.config["memory_init"] == "zeros" else 0
        ref = self.word_emb.weight
        return [ref.new_zeros(batch, rows, self.config["d_model"])
                if layer.kind == "dense" else layer.attn.init_state(batch, ref)
                for layer in self.stack]

    @torch.no_grad()
    def forward(self, ids: torch.Tensor,
                mems: Optional[Sequence] = None,
                last_only: bool = False
                ) -> Tuple[torch.Tensor, list]:
        """Run one call of ``T`` new tokens.

        ``ids``: LongTensor [B, T]; ``mems``: per-layer state or None
        (dense layer: memory [B, M, D]; linear layer: a LinearState; sparse
        layer: a SparseState or PatternState; lsh: an LSHState; compressive:
        a CompressiveState).
        Returns ``(logits [B, T, V], new_mems)`` where, for a dense layer,
        ``new_mems[l]`` is the last ``mem_len`` rows of
        ``cat(mems[l], input of layer l)`` and, for the other kinds, the
        state after the call; with ``last_only`` the logits are those of
        the last position, [B, 1, V].
        """
        B, T = ids.shape
        if mems is None:
            mems = self.init_mems(B)
        if len(mems) != len(self.stack):
            raise ValueError("need one memory tensor per layer")

        x = self.embed(ids)
        new_mems = []
        state_types = {"sparse": SparseState, "pattern": PatternState,
                       "lsh": LSHState, "compressive": CompressiveState,
                       "memory_compressed": MemoryCompressedState,
                       "routing": RoutingState}
        # Residual attention: the scores S of the previous layer when this
        # layer is residual; they live within this call only.
        n_layer = len(self.stack)
        carried = None
        for n, layer in enumerate(self.stack):
            res = {"prev_scores": carried if self.residual[n] else None,
                   "keep_scores": n + 1 < n_layer and self.residual[n + 1]}
            carried = None
            if self.config["untie_r"]:
                u = getattr(layer.attn, "r_w_bias", None)
                v = getattr(layer.attn, "r_r_bias", None)
            else:
                u = getattr(self, "r_w_bias", None)
                v = getattr(self, "r_r_bias", None)
            if layer.kind == "linear":
                state = mems[n]
                if (not isinstance(state, tuple) or len(state) != 2
                        or isinstance(state, (SparseState, LSHState,
                                              MemoryCompressedState,
                                              RoutingState))):
                    raise ValueError(f"layer {n} is linear: its state must "
                                     f"be a LinearState (S, z)")
                state = LinearState(state[0].to(x.dtype),
                                    state[1].to(x.dtype))
                x, state = layer(x, state)
                new_mems.append(LinearState(state.S.detach().clone(),
                                            state.z.detach().clone()))
                continue
            if layer.kind in state_types:
                state = mems[n]
                kind = state_types[layer.kind]
                if not isinstance(state, kind):
                    raise ValueError(f"layer {n} is {layer.kind}: its state "
                                     f"must be a {kind.__name__}")
                state = kind(*(t if t.dtype == torch.bool else t.to(x.dtype)
                               for t in state))
                x, state = layer(x, state, u, v, ids=ids, **res)
                new_mems.append(kind(*(t.detach().clone() for t in state)))
                if res["keep_scores"]:
                    carried = layer.attn.carried_scores
                    layer.attn.carried_scores = None
                continue
            mem = mems[n].to(x.dtype)
            both = torch.cat([mem, x], dim=1)
            keep = min(self.mem_len, both.shape[1])
            new_mems.append(both[:, both.shape[1] - keep:].detach().clone())
            x = layer(x, mem, u, v, **res)
            if res["keep_scores"]:
                carried = layer.attn.carried_scores
                layer.attn.carried_scores = None

        if last_only:
            x = x[:, -1:]
        logits = x @ self.output_weight().t() + self.lm_head.bias
        return logits, new_mems


# --------------------------------------------------------------------------
# Streaming (mirrors `mnemo logits`)
# --------------------------------------------------------------------------


def stream_logits(model: TransfoXLReference, ids: Sequence[int],
                  segment_len: int = 0, decode: bool = False
                  ) -> torch.Tensor:
    """Logits ``[len(ids), V]`` for one fresh session, memory carried.

    Segment mode feeds consecutive segments of ``segment_len`` tokens (the
    last may be shorter); ``decode`` feeds one token at a time.
    """
    step = 1 if decode else segment_len
    if step <= 0:
        raise ValueError("segment_len must be > 0 unless decode")
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    mems = None
    out = []
    for start in range(0, ids_t.numel(), step):
        logits, mems = model(ids_t[None, start:start + step], mems)
        out.append(logits[0])
    if not out:
        return model.word_emb.weight.new_zeros(0, model.config["vocab_size"])
    return torch.cat(out, dim=0)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def favor_features(m: int, d_head: int, gen: torch.Generator
                   ) -> torch.Tensor:
    """FAVOR+ projection Omega [m, d_head] (MODEL-SPEC 5.3, scaling=1).

    Blocks of d_head orthogonal rows (Q of the QR of a Gaussian
    [d_head, d_head] matrix, float64), the last block partial; every row is
    rescaled to norm sqrt(d_head).
    """
    blocks = []
    rows = 0
    while rows < m:
        g = torch.randn(d_head, d_head, generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(g)
        take = min(d_head, m - rows)
        blocks.append(q.t()[:take])  # rows of Q^T: orthonormal
        rows += take
    omega = torch.cat(blocks, dim=0)
    return omega / omega.norm(dim=1, keepdim=True) * math.sqrt(d_head)


def _init_weights(model: TransfoXLReference, gen: torch.Generator) -> None:
    """Seeded init that gives non-trivial attention patterns and logits."""

    def normal(p: torch.Tensor, mean: float, std: float) -> None:
        p.copy_(mean + std * torch.randn(p.shape, generator=gen,
                                         dtype=torch.float64))

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("attn.features"):
                g = int(name.split(".")[1])
                fmap = model.module_specs[g]["feature_map"]
                if fmap == "favor":
                    p.copy_(favor_features(p.shape[0], p.shape[1], gen))
                else:  # rfa: w_i ~ N(0, sigma^2 I), sigma = 1
                    normal(p, 0.0, 1.0)
            elif name.endswith(("attn.rotations",  # LSH: standard normal
                                "attn.centroids")):  # routing: directions
                normal(p, 0.0, 1.0)
            elif name.endswith(("attn.compress.weight",  # [D, D, taps]
                                "attn.compress_k.weight",  # [HD, HD, c]
                                "attn.compress_v.weight")):
                normal(p, 0.0, 1.0 / math.sqrt(p.shape[1] * p.shape[2]))
            elif name.endswith("attn.gate.weight"):
                normal(p, 0.0, 0.5 / math.sqrt(p.shape[1]))
            elif name.endswith("attn.gate.bias"):
                p.zero_()
            elif name.endswith("ln.weight"):
                normal(p, 1.0, 0.1)
            elif leaf in ("r_w_bias", "r_r_bias"):
                normal(p, 0.0, 0.2)
            elif leaf == "bias":
                normal(p, 0.0, 0.05)
            elif name == "word_emb.weight":
                normal(p, 0.0, 0.15)
            else:  # linear weights: std 1/sqrt(fan_in) keeps scales O(1)
                normal(p, 0.0, 1.0 / math.sqrt(p.shape[1]))


def random_checkpoint(config: dict, directory, seed: int,
                      dtype: Optional[torch.dtype] = None
                      ) -> TransfoXLReference:
    """Write ``config.json`` + ``model.safetensors`` with random weights.

    ``dtype`` is the storage dtype; None takes ``config['torch_dtype']``
    (default float32). The config written has ``torch_dtype`` set to it.
    Returns the model (float32 module) holding exactly the stored values,
    i.e. already rounded to the storage dtype.
    """
    cfg = dict(config)
    if dtype is None:
        dtype = DTYPES[cfg.get("torch_dtype", "float32")]
    cfg["torch_dtype"] = dtype_name(dtype)
    cfg = validate_config(cfg)

    model = TransfoXLReference(cfg)
    gen = torch.Generator().manual_seed(seed)
    _init_weights(model, gen)

    tensors = {name: t.detach().to(dtype).contiguous()
               for name, t in model.state_dict().items()}
    with torch.no_grad():  # round the returned model to the stored values
        for name, p in model.named_parameters():
            p.copy_(tensors[name].to(p.dtype))

    mnemo_checkpoint.write_checkpoint(directory, cfg, tensors)
    return model


def load_checkpoint(directory, dtype: torch.dtype = torch.float32
                    ) -> TransfoXLReference:
    """Load a checkpoint directory; the module is built in ``dtype``.

    Stored tensors must match the format exactly (names, shapes, dtype).
    """
    cfg = validate_config(mnemo_checkpoint.read_config(directory))
    model = TransfoXLReference(cfg)
    tensors = mnemo_checkpoint.load_tensors(directory)
    expected = model.state_dict()
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        raise ValueError(f"tensor names differ: missing {missing}, "
                         f"unexpected {unexpected}")
    stored = DTYPES[cfg["torch_dtype"]]
    for name, t in tensors.items():
        if t.dtype != stored:
            raise ValueError(f"{name}: dtype {t.dtype}, config says {stored}")
        if t.shape != expected[name].shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)}, expected "
                             f"{tuple(expected[name].shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()},
                          strict=True)
    return model.to(dtype).eval()


def read_ids(path) -> List[int]:
    """Whitespace-separated decimal token ids."""
    with open(path) as f:
        return [int(tok) for tok in f.read().split()]


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (``python -m mnemo_reference``)."""
    parser = argparse.ArgumentParser(prog="python -m mnemo_reference",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-checkpoint", help="write a random checkpoint")
    make.add_argument("--config-json", required=True,
                      help="config.json contents as a JSON string")
    make.add_argument("--out", required=True, help="output directory")
    make.add_argument("--seed", type=int, default=0)

    logits = sub.add_parser("logits", help="float64 oracle logits")
    logits.add_argument("--model", required=True)
    logits.add_argument("--ids", required=True)
    logits.add_argument("--segment-len", type=int, default=0)
    logits.add_argument("--decode", action="store_true")
    logits.add_argument("--output", required=True)

    args = parser.parse_args(argv)
    if args.command == "make-checkpoint":
        random_checkpoint(json.loads(args.config_json), args.out, args.seed)
        return 0

    model = load_checkpoint(args.model, dtype=torch.float64)
    result = stream_logits(model, read_ids(args.ids), args.segment_len,
                           args.decode)
    result.numpy().astype("<f4").tofile(args.output)
    return 0

