"""Parity of the mnemo encoder with Hugging Face Nyströmformer; converter too.

Small random HF `NystromformerModel`s (tools/convert_hf_nystromformer.random_hf_model: LayerNorm
weights near 1, everything else random) are converted with tools/convert_hf_nystromformer.py;
`$MNEMO_BIN encode` must return HF's `last_hidden_state` of the pass padded to
segment_means_seq_len (tools/convert_hf_nystromformer.hf_last_hidden; float64 oracle) within 1e-4:
landmarks fewer than the positions (the Nyström approximation with its pseudo-inverse) and equal
to them (exact attention), with and without the values' convolution, full and short passes,
documents longer than a pass in windows, a bfloat16 checkpoint, and the converter's refusals.

Run: PYTHONPATH=python:. MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
         tests/reference/test_hf_nystromformer_parity.py
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_common import (assert_logits_close, bfloat16_pair, check_windows_and_pooling,
                           run_encode, stitched_windows, write_converted)
from tools.convert_hf_nystromformer import (ConversionError, convert, convert_dir,
                                            hf_last_hidden, random_hf_model)

ROOT = Path(__file__).resolve().parents[2]

BASE = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=70, pad_token_id=1, type_vocab_size=2)

CASES = {
    # the Nyström approximation: 8 landmarks over passes of 32, a convolution of 5 taps
    "landmarks_8_of_32_conv_5": dict(segment_means_seq_len=32, num_landmarks=8,
                                     conv_kernel_size=5),
    # exact attention (landmarks = positions), no convolution, gelu, three layers
    "exact_16_no_conv": dict(segment_means_seq_len=16, num_landmarks=16, conv_kernel_size=None,
                             hidden_act="gelu", num_hidden_layers=3),
    # one landmark per 16 positions of 64, the widest convolution the pass allows
    "landmarks_4_of_64_conv_63": dict(segment_means_seq_len=64, num_landmarks=4,
                                      conv_kernel_size=63, layer_norm_eps=1e-6),
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
    ids = rng.integers(3, BASE["vocab_size"], size=n).tolist()
    ids[n // 3] = 1  # the pad id inside the document is a token like any other here
    return ids


def test_engine_matches_hf_full_and_short_passes(mnemo_bin, tmp_path, case):
    model, ckpt, fields = case
    seg = fields["segment_means_seq_len"]
    for n in sorted({seg, seg - 1, seg // 2 + 1, 3}):
        ids = document(n, n)
        got = run_encode(mnemo_bin, tmp_path, ckpt, ids)
        assert_logits_close(got, hf_last_hidden(model, ids), what=f"{n} of {seg} positions")


def test_engine_pools_and_runs_long_documents_in_windows(mnemo_bin, tmp_path, case):
    model, ckpt, fields = case
    seg = fields["segment_means_seq_len"]
    n = 3 * seg + 5
    ids = document(n, 4)
    want = stitched_windows(lambda part: hf_last_hidden(model, part), ids, seg)
    got = run_encode(mnemo_bin, tmp_path, ckpt, ids)
    assert_logits_close(got, want, what=f"windows of {seg}")
    mean = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--pool", "mean")
    assert_logits_close(mean, want.mean(axis=0, keepdims=True), what="mean")
    # Shorter windows are padded to the pass as well.
    check_windows_and_pooling(mnemo_bin, tmp_path, ckpt, ids, seg // 2,
                              lambda part: hf_last_hidden(model, part))


def test_engine_matches_a_bfloat16_checkpoint(mnemo_bin, tmp_path):
    fields = dict(BASE, **CASES["landmarks_8_of_32_conv_5"])
    model = random_hf_model(fields, seed=4)
    ckpt = tmp_path / "bf16"
    model = bfloat16_pair(convert, model, ckpt)
    ids = document(30, 5)
    assert_logits_close(run_encode(mnemo_bin, tmp_path, ckpt, ids),
                        hf_last_hidden(model, ids), what="bfloat16 checkpoint")


def test_converter_reads_a_saved_hf_directory_and_its_command_line(tmp_path):
    fields = dict(BASE, **CASES["landmarks_8_of_32_conv_5"])
    random_hf_model(fields, seed=5).save_pretrained(tmp_path / "hf")
    config = convert_dir(tmp_path / "hf", tmp_path / "ours")
    assert (config["segment_len"], config["num_landmarks"], config["conv_kernel_size"],
            config["position_rows"]) == (32, 8, 5, 72)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf_nystromformer.py"),
                           "--random-init", json.dumps(fields), str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "8 landmarks over 32" in proc.stdout


@pytest.mark.parametrize("fields,fragment", [
    (dict(segment_means_seq_len=32, num_landmarks=5), "num_landmarks"),
    (dict(segment_means_seq_len=32, num_landmarks=8, conv_kernel_size=4), "conv_kernel_size"),
    (dict(segment_means_seq_len=32, num_landmarks=8, inv_coeff_init_option=True),
     "inv_coeff_init_option"),
    (dict(segment_means_seq_len=32, num_landmarks=8, hidden_act="tanh"), "hidden_act"),
    (dict(segment_means_seq_len=32, num_landmarks=8, position_embedding_type="relative_key"),
     "position_embedding_type"),
])
def test_converter_refuses_what_the_engine_cannot_run(fields, fragment):
    model = random_hf_model(dict(BASE, segment_means_seq_len=32, num_landmarks=8), seed=1)
    cfg = dict(model.config.to_dict(), **fields)
    with pytest.raises(ConversionError, match=fragment):
        convert(model.state_dict(), cfg)


def test_encode_refuses_what_nystromformer_lacks(mnemo_bin, tmp_path, case):
    _, ckpt, fields = case
    ids = document(10, 6)
    seg = fields["segment_means_seq_len"]
    for flags, fragment in [(["--global-positions", "0"], "Longformer"),
                            (["--window", str(seg + 1)], "window"),
                            (["--mlm-positions", "3", "--mlm-output", str(tmp_path / "m")],
                             "masked-LM head")]:
        proc = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags, expect_ok=False)
        assert proc.returncode == 1 and fragment in proc.stderr, (flags, proc.stderr)
