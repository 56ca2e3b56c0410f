"""Helpers shared by the parity tests: a base config, token streams, the
logits comparison, and running ``mnemo logits`` (the engine under test).

The ``mnemo_bin`` fixture lives in ``conftest.py``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile

import numpy as np
import torch

from mnemo_reference import load_checkpoint, random_checkpoint, stream_logits


def base_config(**overrides) -> dict:
    """A small valid config.json (all layers dense unless overridden)."""
    cfg = {
        "architecture": "transfo_xl",
        "vocab_size": 60,
        "d_model": 32,
        "n_layer": 2,
        "n_head": 4,
        "d_head": 8,
        "d_inner": 64,
        "mem_len": 8,
        "clamp_len": 0,
        "same_length": False,
        "pre_lnorm": False,
        "untie_r": True,
        "activation": "relu",
        "layer_norm_epsilon": 1e-5,
        "memory_init": "zeros",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    cfg.update(overrides)
    return cfg


def segment_len(cfg: dict, kind: str) -> int:
    mem = cfg["mem_len"]
    return {"short": max(1, mem // 2 - 1), "equal": mem, "long": mem + 3}[kind]


def document(cfg: dict, length: int, seed: int = 1234) -> list:
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg["vocab_size"], size=length).tolist()


def segment_document(cfg: dict, seg: int) -> list:
    """>= 3 segments, longer than mem_len (memory wraps), last one short."""
    length = 3 * max(seg, cfg["mem_len"]) + 5
    if length % seg == 0:
        length += 1
    return document(cfg, length)


def decode_document(cfg: dict) -> list:
    return document(cfg, 3 * cfg["mem_len"] + 7, seed=4321)


def assert_logits_close(actual: np.ndarray, expected: np.ndarray,
                        tol: float = 1e-4, what: str = "") -> None:
    """``max|a-b| <= tol*max|b| + 1e-6`` and elementwise allclose."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.isfinite(actual).all(), f"{what}: non-finite logits"
    scale = float(np.abs(expected).max())
    diff = np.abs(actual - expected)
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    assert diff.max() <= tol * scale + 1e-6, (
        f"{what}: max|diff| {diff.max():.3e} > {tol:g} * max|ref| "
        f"{scale:.3e} (+1e-6); worst at row/col {worst}: "
        f"got {actual[worst]:.8g}, want {expected[worst]:.8g}")
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale,
                               err_msg=what)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(b.abs().max().item(), 1e-300)
    return (a - b).abs().max().item() / scale


def oracle_logits(ckpt_dir, ids, segment_len=0, decode=False) -> np.ndarray:
    """float64 oracle logits of a checkpoint directory."""
    model = load_checkpoint(ckpt_dir, dtype=torch.float64)
    return stream_logits(model, ids, segment_len, decode).numpy()


def write_ids(path, ids) -> None:
    path.write_text(" ".join(str(i) for i in ids) + "\n")


def engine_logits(mnemo_bin, tmp_path, ckpt_dir, ids, segment_len=1,
                  decode=False) -> np.ndarray:
    """Run ``mnemo logits`` and return float32 logits [len(ids), V]."""
    ids_file = tmp_path / "ids.txt"
    out_file = tmp_path / ("decode.f32" if decode else "segment.f32")
    write_ids(ids_file, ids)
    cmd = [mnemo_bin, "logits", "--model", str(ckpt_dir), "--ids",
           str(ids_file), "--segment-len", str(segment_len), "--output",
           str(out_file)]
    if decode:
        cmd.insert(-2, "--decode")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited with {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    with open(ckpt_dir / "config.json") as f:
        vocab = json.load(f)["vocab_size"]
    data = np.fromfile(out_file, dtype="<f4")
    assert data.size == len(ids) * vocab, (
        f"output has {data.size} floats, expected {len(ids)} x {vocab}")
    return data.reshape(len(ids), vocab)


#: How the kind-by-kind parity files feed a stream: segments of 3 and of 8 tokens, token by
#: token (decode), and the whole stream in one call.
MODES = ["seg3", "seg8", "decode", "one_call"]


def mode_args(mode: str, n: int):
    """(segment length, decode) for `mode` on a stream of `n` tokens."""
    if mode == "decode":
        return 1, True
    if mode == "one_call":
        return n, False
    return int(mode[3:]), False


def check_engine_parity(mnemo_bin, tmp_path, cfg: dict, seed: int, ids, mode: str,
                        what: str) -> None:
    """A random checkpoint of `cfg` (`seed`): `mnemo logits` against the float64 oracle."""
    ckpt = tmp_path / "ckpt"
    random_checkpoint(cfg, ckpt, seed=seed)
    seg, decode = mode_args(mode, len(ids))
    want = oracle_logits(ckpt, ids, seg, decode)
    got = engine_logits(mnemo_bin, tmp_path, ckpt, ids, seg, decode)
    assert_logits_close(got, want, what=what)


def run_splits(model, ids, splits):
    """Feed ``ids`` to the oracle in calls of the given sizes; (logits [N, V], mems)."""
    t = torch.tensor([ids])
    mems, out, start = None, [], 0
    for size in splits:
        logits, mems = model(t[:, start:start + size], mems)
        out.append(logits[0])
        start += size
    assert start == len(ids)
    return torch.cat(out), mems


def assert_split_independent(model, ids, splits_list, rel: float = 1e-10) -> None:
    """The oracle's logits of `ids` fed in one call equal those fed in each list of call
    sizes of `splits_list` (a stream of kinds whose output does not depend on the split)."""
    whole, _ = run_splits(model, ids, [len(ids)])
    for splits in splits_list:
        assert max_rel(run_splits(model, ids, splits)[0], whole) <= rel, splits


def oracle_model(cfg: dict, seed: int):
    """The float64 oracle of a random checkpoint of `cfg` drawn from `seed`."""
    with tempfile.TemporaryDirectory() as d:
        model = random_checkpoint(cfg, d, seed=seed)
    return model.double().eval()


def plan_windows(n, window):
    """docs/command-line.md's rule, written from its words: windows every window // 2 tokens,
    the last ending at the document's end; each token from the window where it is farthest from
    an edge, the earlier on a tie."""
    if n <= window:
        return [(0, range(n))]
    starts = list(range(0, n - window, window // 2)) + [n - window]
    keep = {b: [] for b in starts}
    for t in range(n):
        rooms = [(min(t - b, b + window - 1 - t), -b) for b in starts if b <= t < b + window]
        keep[-max(rooms)[1]].append(t)
    return [(b, keep[b]) for b in starts if keep[b]]


def run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags, expect_ok=True):
    """`$MNEMO_BIN encode` of `ids` with `flags`: the vectors [rows, cols] as float32, or the
    finished process when not `expect_ok`."""
    ids_file = tmp_path / "ids.txt"
    write_ids(ids_file, ids)
    out = tmp_path / "out.f32"
    cmd = [mnemo_bin, "encode", "--model", str(ckpt), "--ids", str(ids_file), "--output",
           str(out), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if not expect_ok:
        return proc
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    rows, cols = map(int, proc.stdout.split())
    data = np.fromfile(out, dtype="<f4")
    assert data.size == rows * cols
    return data.reshape(rows, cols)


def write_converted(convert, model, ckpt, dtype="float32"):
    """A converter's `convert` of a Hugging Face `model` to `dtype`, written as a checkpoint at
    `ckpt`; returns our config dict."""
    from mnemo_checkpoint import write_checkpoint

    config, tensors = convert(model, dtype=dtype)
    write_checkpoint(ckpt, config, tensors)
    return config


def bfloat16_pair(convert, model, ckpt):
    """A bfloat16 checkpoint of `model` at `ckpt`, and the model to compare it with: `model` on
    the stored (rounded) values, in float64."""
    write_converted(convert, model, ckpt, "bfloat16")
    with open(f"{ckpt}/config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return model.double()


def stitched_windows(reference, ids, window):
    """The vectors a document gets in windows of `window` tokens (plan_windows): each token's row
    of `reference(the window's ids)` (an [len, D] array) from the window that keeps it."""
    rows = {}
    for begin, kept in plan_windows(len(ids), window):
        hidden = reference(ids[begin:begin + window])
        rows.update({t: hidden[t - begin] for t in kept})
    return np.stack([rows[t] for t in range(len(ids))])


def check_windows_and_pooling(mnemo_bin, tmp_path, ckpt, ids, window, reference):
    """`mnemo encode` of `ids` in windows of `window` against stitched_windows(reference), per
    token, mean-pooled and first-token pooled."""
    want = stitched_windows(reference, ids, window)
    got = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", str(window))
    assert_logits_close(got, want, what=f"windows of {window}")
    for pool, expect in (("mean", want.mean(axis=0, keepdims=True)), ("first", want[:1])):
        got = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", str(window), "--pool", pool)
        assert_logits_close(got, expect, what=f"windows of {window}, pool {pool}")
