"""Linformer and Synthesizer (dense and random) encoders against the PyTorch reference
(python/mnemo_reference/encoder.py, float64, written from the papers independently of the
engine): random checkpoints in the mnemo format, `$MNEMO_BIN encode` within 1e-4 for full and
short passes (a pass of N tokens uses the first N columns or positions of the sequence-long
weights), documents longer than a pass in the documented windows, mean pooling, a bfloat16
checkpoint, and the refusals (no global positions, no MLM head, windows past segment_len, bad
configs).

Run: PYTHONPATH=python:. MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
         tests/reference/test_encoder_kinds_parity.py
"""

import json

import numpy as np
import pytest
import torch

from mnemo_checkpoint import write_checkpoint
from mnemo_reference import encoder as ref
from parity_common import assert_logits_close, plan_windows, run_encode

CASES = {
    "linformer_k6_of_24": ref.linformer_config(segment_len=24, k=6),
    "linformer_k24_gelu_tanh": ref.linformer_config(segment_len=24, k=24, n_layer=3,
                                                    activation="gelu_tanh"),
    "synthesizer_dense": ref.synthesizer_config(segment_len=24, kind="dense"),
    "synthesizer_random": ref.synthesizer_config(segment_len=20, kind="random", n_head=2),
}



def as_float32(tensors):
    return {k: v.to(torch.float32) for k, v in tensors.items()}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    config = CASES[request.param]
    tensors = ref.random_tensors(config, seed=3)
    ckpt = tmp_path_factory.mktemp(request.param) / "ckpt"
    write_checkpoint(ckpt, config, as_float32(tensors))
    return config, tensors, ckpt


def document(n, seed, vocab=60):
    return np.random.default_rng(seed).integers(2, vocab, size=n).tolist()


def test_engine_matches_the_reference_full_and_short_passes(mnemo_bin, tmp_path, case):
    config, tensors, ckpt = case
    seg = config["segment_len"]
    for n in sorted({seg, seg - 1, seg // 2, 1}):
        ids = document(n, n)
        assert_logits_close(run_encode(mnemo_bin, tmp_path, ckpt, ids),
                            ref.encode(config, tensors, ids), what=f"{n} of {seg} positions")


def test_engine_runs_long_documents_in_windows_and_pools(mnemo_bin, tmp_path, case):
    config, tensors, ckpt = case
    seg = config["segment_len"]
    n = 3 * seg + 7
    ids = document(n, 11)
    for window in (seg, seg // 2 + 1):
        want = np.zeros((n, config["d_model"]))
        for begin, kept in plan_windows(n, window):
            hidden = ref.encode(config, tensors, ids[begin:begin + window])
            for t in kept:
                want[t] = hidden[t - begin]
        got = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", str(window))
        assert_logits_close(got, want, what=f"windows of {window}")
    mean = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", str(window), "--pool", "mean")
    assert_logits_close(mean, want.mean(axis=0, keepdims=True), what="mean")


def test_engine_matches_a_bfloat16_checkpoint(mnemo_bin, tmp_path):
    config = dict(CASES["synthesizer_dense"], torch_dtype="bfloat16")
    tensors = {k: v.to(torch.bfloat16) for k, v in ref.random_tensors(config, seed=4).items()}
    write_checkpoint(tmp_path / "bf16", config, tensors)
    ids = document(17, 5)
    assert_logits_close(run_encode(mnemo_bin, tmp_path, tmp_path / "bf16", ids),
                        ref.encode(config, tensors, ids), what="bfloat16 checkpoint")


def test_encode_refuses_what_these_kinds_lack(mnemo_bin, tmp_path, case):
    config, _, ckpt = case
    ids = document(10, 6)
    for flags, fragment in [(["--global-positions", "0"], "Longformer"),
                            (["--window", str(config["segment_len"] + 1)], "window"),
                            (["--mlm-positions", "3", "--mlm-output", str(tmp_path / "m")],
                             "masked-LM head")]:
        proc = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags, expect_ok=False)
        assert proc.returncode == 1 and fragment in proc.stderr, (flags, proc.stderr)


@pytest.mark.parametrize("edit,fragment", [
    (dict(linformer_k=25), "linformer_k"),
    (dict(linformer_k=0), "linformer_k"),
    (dict(segment_len=25), "segment_len"),      # past the position table
    (dict(mlm_head=True), "mlm_head"),
    (dict(attention_window=[4, 4]), "attention_window"),  # Longformer's field
])
def test_bad_linformer_configs_are_named(mnemo_bin, tmp_path, edit, fragment):
    config = dict(CASES["linformer_k6_of_24"], **edit)
    write_checkpoint(tmp_path / "bad", config,
                     as_float32(ref.random_tensors(CASES["linformer_k6_of_24"], seed=1)))
    proc = run_encode(mnemo_bin, tmp_path, tmp_path / "bad", [3, 4], expect_ok=False)
    assert proc.returncode == 1 and fragment in proc.stderr, proc.stderr


def test_bad_synthesizer_configs_and_tensors_are_named(mnemo_bin, tmp_path):
    config = CASES["synthesizer_dense"]
    tensors = as_float32(ref.random_tensors(config, seed=1))
    write_checkpoint(tmp_path / "kind", dict(config, synthesizer="factorized"), tensors)
    proc = run_encode(mnemo_bin, tmp_path, tmp_path / "kind", [3, 4], expect_ok=False)
    assert proc.returncode == 1 and "synthesizer" in proc.stderr, proc.stderr
    # A random Synthesizer's config over a dense one's tensors: the missing matrix is named.
    write_checkpoint(tmp_path / "mixed", dict(config, synthesizer="random"), tensors)
    proc = run_encode(mnemo_bin, tmp_path, tmp_path / "mixed", [3, 4], expect_ok=False)
    assert proc.returncode == 1 and "attn.random.weight" in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "kind" / "config.json").read_text())["synthesizer"] == \
        "factorized"
