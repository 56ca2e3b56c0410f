"""Parity of the mnemo encoder with Hugging Face BigBird; converter too.

Small random HF `BigBirdModel`s (tools/convert_hf_bigbird.random_hf_model: LayerNorm weights near
1, everything else random) are converted with tools/convert_hf_bigbird.py; `$MNEMO_BIN encode`
must return HF's `last_hidden_state` of the same window (tools/convert_hf_bigbird.hf_last_hidden;
float64 oracle) within 1e-4. Block-sparse passes pad to whole blocks and draw their random blocks
as Hugging Face does (per layer and padded length, the paper's plan at 1024 positions), with
nothing fed from outside: a wrong draw moves the outputs by ~0.1. Short windows run full
attention, as Hugging Face switches to it; original_full with unbiased projections and rescaled
embeddings; documents in windows and pooled; the masked-LM head; a bfloat16 checkpoint; the
converter's refusals.

Run: PYTHONPATH=python:. MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
         tests/reference/test_hf_bigbird_parity.py
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnemo_checkpoint import write_checkpoint
from parity_common import (assert_logits_close, bfloat16_pair, check_windows_and_pooling,
                           run_encode, write_converted)
from tools.convert_hf_bigbird import (ConversionError, convert, convert_dir, hf_last_hidden,
                                      hf_mlm_logprobs, random_hf_model)

ROOT = Path(__file__).resolve().parents[2]

BASE = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=1100, type_vocab_size=2)

CASES = {
    # blocks of 8, two random blocks per row: windows over 72 tokens run block-sparse
    "sparse_8_r2": dict(attention_type="block_sparse", block_size=8, num_random_blocks=2),
    # three layers, one random block per row of blocks of 4, exact GELU
    "sparse_4_r1_gelu": dict(attention_type="block_sparse", block_size=4, num_random_blocks=1,
                             num_hidden_layers=3, hidden_act="gelu", layer_norm_eps=1e-6),
    # full attention, unbiased projections, embeddings scaled by sqrt(d_model)
    "full_unbiased_rescaled": dict(attention_type="original_full", use_bias=False,
                                   rescale_embeddings=True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    fields = dict(BASE, **CASES[request.param])
    model = random_hf_model(fields, seed=9).double()
    ckpt = tmp_path_factory.mktemp(request.param) / "ckpt"
    write_converted(convert, model, ckpt)
    return model, ckpt, fields


def document(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(1, BASE["vocab_size"], size=n).tolist()


def sparse_threshold(fields):
    """The longest window Hugging Face runs with full attention."""
    return (5 + 2 * fields.get("num_random_blocks", 3)) * fields.get("block_size", 64)


def test_engine_matches_hf_sparse_padded_and_full_passes(mnemo_bin, tmp_path, case):
    model, ckpt, fields = case
    edge = sparse_threshold(fields)
    for n in sorted({3, edge, edge + 1, min(2 * edge + 3, 1100), 300}):
        ids = document(n, n)
        got = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", str(n))
        assert_logits_close(got, hf_last_hidden(model, ids), what=f"{n} positions")


def test_engine_draws_the_paper_plan_at_1024_positions(mnemo_bin, tmp_path, case):
    model, ckpt, _ = case
    for n in (1024, 1019):  # 1019 pads to 1024 with blocks of 4 or 8
        ids = document(n, 2)
        got = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", str(n))
        assert_logits_close(got, hf_last_hidden(model, ids), what=f"{n} positions")


def test_engine_pools_and_runs_long_documents_in_windows(mnemo_bin, tmp_path, case):
    model, ckpt, _ = case
    check_windows_and_pooling(mnemo_bin, tmp_path, ckpt, document(500, 4), 160,
                              lambda ids: hf_last_hidden(model, ids))


def test_masked_lm_log_probabilities_match_hf(mnemo_bin, tmp_path):
    """BigBirdForMaskedLM's head (dense, hidden_act, LayerNorm, tied decoder and its bias)."""
    fields = dict(BASE, **CASES["sparse_8_r2"])
    model = random_hf_model(fields, seed=17, masked_lm=True).double()
    config, tensors = convert(model, dtype="float32")
    assert config["mlm_head"] is True and config["mlm_activation"] == "gelu_tanh"
    ckpt = tmp_path / "mlm"
    write_checkpoint(ckpt, config, tensors)
    out = tmp_path / "mlm.f32"
    ids = document(150, 8)
    positions = [0, 7, 80, 149]
    run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", "150", "--mlm-positions",
               ",".join(map(str, positions)), "--mlm-output", str(out))
    got = np.fromfile(out, dtype="<f4").reshape(len(positions), BASE["vocab_size"])
    assert_logits_close(got, hf_mlm_logprobs(model, ids)[positions], what="masked-LM")


def test_engine_matches_a_bfloat16_checkpoint(mnemo_bin, tmp_path):
    fields = dict(BASE, **CASES["sparse_8_r2"])
    model = random_hf_model(fields, seed=4)
    ckpt = tmp_path / "bf16"
    model = bfloat16_pair(convert, model, ckpt)
    ids = document(130, 5)
    assert_logits_close(run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", "130"),
                        hf_last_hidden(model, ids), what="bfloat16 checkpoint")


def test_converter_reads_a_saved_hf_directory_and_its_command_line(tmp_path):
    fields = dict(BASE, **CASES["sparse_8_r2"])
    random_hf_model(fields, seed=5).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "spiece.model").write_bytes(b"sentencepiece model bytes")
    config = convert_dir(tmp_path / "hf", tmp_path / "ours")
    assert (tmp_path / "ours" / "tokenizer.model").read_bytes() == b"sentencepiece model bytes"
    assert (config["attention_type"], config["block_size"], config["num_random_blocks"],
            config["position_rows"], config["layer_norm_epsilon"]) == (
                "block_sparse", 8, 2, 1100, 1e-12)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf_bigbird.py"),
                           "--random-init", json.dumps(fields), str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "block_sparse (blocks of 8, 2 random)" in proc.stdout


@pytest.mark.parametrize("fields,fragment", [
    (dict(num_random_blocks=0), "num_random_blocks"),
    (dict(hidden_act="tanh"), "hidden_act"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(attention_type="sliding"), "attention_type"),
])
def test_converter_refuses_what_the_engine_cannot_run(fields, fragment):
    model = random_hf_model(dict(BASE, **CASES["sparse_8_r2"]), seed=1)
    cfg = dict(model.config.to_dict(), **fields)
    with pytest.raises(ConversionError, match=fragment):
        convert(model.state_dict(), cfg)


def test_encode_refuses_what_bigbird_lacks(mnemo_bin, tmp_path, case):
    _, ckpt, fields = case
    ids = document(10, 6)
    most = 1100 if fields["attention_type"] == "original_full" else 1100 // fields[
        "block_size"] * fields["block_size"]
    for flags, fragment in [(["--global-positions", "0"], "Longformer"),
                            (["--window", str(most + 1)], "window"),
                            (["--mlm-positions", "3", "--mlm-output", str(tmp_path / "m")],
                             "masked-LM head")]:
        proc = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags, expect_ok=False)
        assert proc.returncode == 1 and fragment in proc.stderr, (flags, proc.stderr)
