"""Parity of the mnemo encoder with Hugging Face Longformer; converter too.

Small random HF `LongformerModel`s (tools/convert_hf_longformer.random_hf_model: LayerNorm
weights near 1, every other weight N(0, 0.25/hidden_size)) are run in float64 and converted with
tools/convert_hf_longformer.py; `$MNEMO_BIN encode` must return HF's `last_hidden_state` (every
token, mean-pooled, first token) within max|ours - hf| <= 1e-4 * max|hf| (plus an elementwise
allclose): sliding windows of different widths per layer, global positions (none, the first,
several including the last), lengths that are not multiples of the window (HF pads), a token
equal to pad_token_id inside the document (HF's position rule counts around it), gelu_new, a
second token type table, and a bfloat16 checkpoint. A document longer than one pass runs in
windows; the test rebuilds the documented window rule from HF passes and compares.

Refusals: the converter names what it cannot run; `mnemo encode` answers bad input (ids outside
the vocabulary, global positions out of order or range, a window larger than the position
table, no input) with a clear error and exit status 1; the decoder commands refuse an encoder.

Tests that need the engine fail (never skip) when MNEMO_BIN is unset.
Run: MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
         tests/reference/test_hf_longformer_parity.py
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnemo_checkpoint import write_checkpoint
from parity_common import (assert_logits_close, bfloat16_pair, plan_windows, run_encode,
                           write_converted)
from tools.convert_hf_longformer import (ConversionError, convert, convert_dir, hf_last_hidden,
                                         hf_mlm_logprobs, random_hf_model)

ROOT = Path(__file__).resolve().parents[2]

BASE = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, attention_window=[4, 8], max_position_embeddings=80,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)

CASES = {
    "windows_4_8": dict(),
    # (HF's chunked band needs a window of at least 4)
    "three_layers_gelu_new": dict(num_hidden_layers=3, attention_window=[4, 4, 8],
                                  hidden_act="gelu_new", num_attention_heads=2),
    "wide_window": dict(attention_window=[16, 16], type_vocab_size=2, layer_norm_eps=1e-6),
}




@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    fields = dict(BASE, **CASES[request.param])
    model = random_hf_model(fields, seed=7).double()
    ckpt = tmp_path_factory.mktemp(request.param) / "ckpt"
    write_converted(convert, model, ckpt)
    return model, ckpt, fields


def document(n, seed, vocab=60):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=n).tolist()
    ids[n // 3] = 1  # pad_token_id inside the document: positions count around it
    return ids


@pytest.mark.parametrize("globals_", [(), (0,), (0, 5, 36)])
def test_engine_matches_hf_every_token(mnemo_bin, tmp_path, case, globals_):
    model, ckpt, _ = case
    ids = document(37, 1)
    want = hf_last_hidden(model, ids, globals_)
    flags = ["--global-positions", ",".join(map(str, globals_))] if globals_ else []
    got = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags)
    assert_logits_close(got, want, what=f"globals {globals_}")


def test_engine_matches_hf_over_several_query_blocks(mnemo_bin, tmp_path):
    """200 tokens in one pass: the engine's blocks of 64 queries, windows crossing them, global
    positions inside blocks and at the end."""
    model = random_hf_model(dict(BASE, attention_window=[16, 32], max_position_embeddings=260),
                            seed=13).double()
    config, tensors = convert(model, dtype="float32")
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, config, tensors)
    ids = document(200, 6)
    for globals_ in ((), (0, 63, 64, 130, 199)):
        want = hf_last_hidden(model, ids, globals_)
        flags = ["--global-positions", ",".join(map(str, globals_))] if globals_ else []
        got = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags)
        assert_logits_close(got, want, what=f"200 tokens, globals {globals_}")


def test_engine_pools_as_documented(mnemo_bin, tmp_path, case):
    model, ckpt, _ = case
    ids = document(29, 2)
    want = hf_last_hidden(model, ids, (0,))
    mean = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--pool", "mean", "--global-positions", "0")
    first = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--pool", "first", "--global-positions", "0")
    assert mean.shape == first.shape == (1, want.shape[1])
    assert_logits_close(mean, want.mean(axis=0, keepdims=True), what="mean")
    assert_logits_close(first, want[:1], what="first")


def test_engine_long_document_runs_in_windows(mnemo_bin, tmp_path, case):
    model, ckpt, _ = case
    ids = document(90, 3)
    want = np.zeros((90, model.config.hidden_size))
    globals_ = (0, 40)
    for begin, kept in plan_windows(90, 16):
        inside = [g - begin for g in globals_ if begin <= g < begin + 16]
        hidden = hf_last_hidden(model, ids[begin:begin + 16], inside)
        for t in kept:
            want[t] = hidden[t - begin]
    got = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", "16", "--global-positions", "0,40")
    assert_logits_close(got, want, what="windows of 16")
    # Two windows overlapping most of their length split the document at the overlap's middle.
    assert plan_windows(90, 77) == [(0, list(range(0, 45))), (13, list(range(45, 90)))]


def test_engine_matches_a_bfloat16_checkpoint(mnemo_bin, tmp_path):
    model = random_hf_model(BASE, seed=11)
    ckpt = tmp_path / "bf16"
    model = bfloat16_pair(convert, model, ckpt)
    ids = document(33, 4)
    want = hf_last_hidden(model, ids, (3,))
    got = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--global-positions", "3")
    assert_logits_close(got, want, what="bfloat16 checkpoint")


def test_converter_reads_a_saved_hf_directory(tmp_path):
    model = random_hf_model(BASE, seed=5)
    model.save_pretrained(tmp_path / "hf")
    config = convert_dir(tmp_path / "hf", tmp_path / "ours")
    assert config["attention_window"] == [4, 8] and config["position_rows"] == 80
    assert config["d_head"] == 8 and config["activation"] == "gelu"
    names = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert names["architecture"] == "longformer"


def test_converter_command_line_random_init(tmp_path):
    fields = json.dumps(dict(BASE, num_hidden_layers=1, attention_window=[6]))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf_longformer.py"),
                           "--random-init", fields, str(tmp_path / "out"), "--dtype", "bfloat16"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "windows [6]" in proc.stdout and "bfloat16" in proc.stdout
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["attention_window"] == [6] and config["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("fields, fragment", [
    (dict(attention_window=[4, 5]), "attention_window"),
    (dict(hidden_act="tanh"), "hidden_act"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
])
def test_converter_refuses_what_the_engine_cannot_run(fields, fragment):
    model = random_hf_model(dict(BASE, attention_window=[4, 8]), seed=1)
    cfg = dict(model.config.to_dict(), **fields)
    with pytest.raises(ConversionError, match=fragment):
        convert(model.state_dict(), cfg)


def test_encode_refuses_bad_input(mnemo_bin, tmp_path, case):
    _, ckpt, _ = case
    ids = document(20, 5)
    for flags, fragment in [
        (["--global-positions", "5,3"], "ascend"),
        (["--global-positions", "20"], "global positions"),
        (["--global-positions", "x"], "not a position"),
        (["--window", "1"], "window"),
        (["--window", "100000"], "window"),
        (["--pool", "max"], "--pool"),
    ]:
        proc = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags, expect_ok=False)
        assert proc.returncode == 1 and fragment in proc.stderr, (flags, proc.stderr)
    bad_ids = tmp_path / "bad.txt"
    bad_ids.write_text("3 4 60\n")
    proc = subprocess.run([mnemo_bin, "encode", "--model", str(ckpt), "--ids", str(bad_ids),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1 and "not a token id" in proc.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    proc = subprocess.run([mnemo_bin, "encode", "--model", str(ckpt), "--ids", str(empty),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1 and "no token ids" in proc.stderr
    # A decoder command on an encoder checkpoint says what it is.
    proc = subprocess.run([mnemo_bin, "logits", "--model", str(ckpt), "--ids", str(empty),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1 and "encoder" in proc.stderr, proc.stderr



def test_masked_lm_log_probabilities_match_hf(mnemo_bin, tmp_path):
    """LongformerForMaskedLM's head (dense, exact GELU, LayerNorm, tied decoder and its bias):
    log-softmax at chosen positions within 1e-4, in one pass and in windows (each position from
    the window that keeps its vector), with every pooling."""
    model = random_hf_model(BASE, seed=17, masked_lm=True).double()
    config, tensors = convert(model, dtype="float32")
    assert config["mlm_head"] is True
    ckpt = tmp_path / "mlm"
    write_checkpoint(ckpt, config, tensors)
    out = tmp_path / "mlm.f32"
    ids = document(40, 8)
    positions = [0, 7, 20, 39]

    def run(*flags):
        run_encode(mnemo_bin, tmp_path, ckpt, ids, "--mlm-positions", ",".join(map(str, positions)),
               "--mlm-output", str(out), *flags)
        return np.fromfile(out, dtype="<f4").reshape(len(positions), BASE["vocab_size"])

    want = hf_mlm_logprobs(model, ids, (0,))[positions]
    for pool in ("none", "mean", "first"):
        assert_logits_close(run("--global-positions", "0", "--pool", pool), want,
                            what=f"one pass, pool {pool}")
    want = np.zeros((len(positions), BASE["vocab_size"]))
    for begin, kept in plan_windows(40, 16):
        lp = hf_mlm_logprobs(model, ids[begin:begin + 16], [0] if begin == 0 else [])
        for k, p in enumerate(positions):
            if p in kept:
                want[k] = lp[p - begin]
    for pool in ("none", "first"):  # first still runs the windows that keep a position
        assert_logits_close(run("--window", "16", "--global-positions", "0", "--pool", pool),
                            want, what=f"windows of 16, pool {pool}")
    # A checkpoint without the head refuses positions; bad positions are named.
    plain = tmp_path / "plain"
    config, tensors = convert(random_hf_model(BASE, seed=17), dtype="float32")
    write_checkpoint(plain, config, tensors)
    proc = subprocess.run([mnemo_bin, "encode", "--model", str(plain), "--ids",
                           str(tmp_path / "ids.txt"), "--output", str(tmp_path / "o"),
                           "--mlm-positions", "3", "--mlm-output", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "masked-LM head" in proc.stderr, proc.stderr
    for flags, fragment in [(["--mlm-positions", "9,2", "--mlm-output", str(out)], "ascend"),
                            (["--mlm-positions", "40", "--mlm-output", str(out)], "masked-LM"),
                            (["--mlm-positions", "3"], "go together")]:
        proc = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags, expect_ok=False)
        assert proc.returncode == 1 and fragment in proc.stderr, (flags, proc.stderr)


def test_converter_refuses_an_untied_masked_lm_head():
    model = random_hf_model(BASE, seed=2, masked_lm=True)
    sd = dict(model.state_dict())
    sd["lm_head.decoder.weight"] = sd["lm_head.decoder.weight"].clone() + 1.0
    with pytest.raises(ConversionError, match="tied"):
        convert(sd, model.config)
