"""Parity of the mnemo encoder with Hugging Face Funnel-Transformer; converter too.

Small random HF `FunnelModel`s and `FunnelBaseModel`s (tools/convert_hf_funnel.random_hf_model:
LayerNorm weights near 1, everything else random) are converted with tools/convert_hf_funnel.py;
`$MNEMO_BIN encode` must return HF's `last_hidden_state` (every token's vector through the
up-sampling decoder; a base model's pooled sequence with `--pool funnel`) within 1e-4 (float64
oracle): both attention types (relative_shift and factorized), with and without the separate
first token and truncation, pooled keys and values (pool_q_only false), max pooling, repeated
blocks, heads narrower than d_model / n_head, passes from the fewest tokens that pool at every
block up, documents in windows and pooled, and the refusals.

Run: PYTHONPATH=python:. MNEMO_BIN=build/release/mnemo .venv/bin/python -m pytest \
         tests/reference/test_hf_funnel_parity.py
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from parity_common import (assert_logits_close, bfloat16_pair, check_windows_and_pooling,
                           run_encode, stitched_windows, write_converted)
from tools.convert_hf_funnel import (ConversionError, convert, convert_dir, hf_last_hidden,
                                     hf_mlm_logprobs, random_hf_model)

ROOT = Path(__file__).resolve().parents[2]

BASE = dict(vocab_size=60, d_model=32, n_head=4, d_head=8, d_inner=64, block_sizes=[2, 1, 1],
            num_decoder_layers=2)

CASES = {
    # the published layout: relative_shift, the first token separate, the last dropped
    "relative_shift": dict(),
    # four blocks
    "factorized": dict(attention_type="factorized", hidden_act="gelu", block_sizes=[1, 1, 1, 1]),
    # every token pooled alike, keys and values pooled too, max pooling
    "no_cls_pool_kv_max": dict(separate_cls=False, pool_q_only=False, pooling_type="max"),
    # the last token kept, repeated blocks (the decoder's residual from halfway through block 0),
    # three heads of 10 over d_model 32 (Hugging Face's relative_shift table overflows with more
    # blocks of untruncated sequences; the engine has no table)
    "no_truncate_repeats": dict(truncate_seq=False, block_repeats=[2, 1, 2], n_head=3, d_head=10,
                                layer_norm_eps=1e-6),
}


# The shortest passes compared: the fewest tokens that pool at every block and one more, except
# where Hugging Face's own relative_shift table overflows (untruncated sequences of 4 and 6).
SHORTEST = {"no_truncate_repeats": [5, 7]}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    fields = dict(BASE, **CASES[request.param])
    model = random_hf_model(fields, seed=9).double()
    ckpt = tmp_path_factory.mktemp(request.param) / "ckpt"
    config = dict(write_converted(convert, model, ckpt), name=request.param)
    return model, ckpt, fields, config


def document(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, BASE["vocab_size"], size=n).tolist()


def fewest_tokens(fields):
    """The shortest document that pools at every block, counted as Hugging Face pools."""
    sep, trunc = fields.get("separate_cls", True), fields.get("truncate_seq", True)
    for n in range(1, 100):
        t, ok = n, True
        for _ in fields["block_sizes"][1:]:
            ok = ok and t > (2 if sep else 1)
            t = (t + (1 if sep and not trunc else 0) + 1) // 2
        if ok:
            return n
    raise AssertionError("no length pools")


def hf_encoder_output(model, ids):
    """A FunnelModel's encoder output (its last block, before the decoder)."""
    ids = torch.tensor([list(ids)])
    with torch.no_grad():
        return model.encoder(model.embeddings(ids), attention_mask=torch.ones_like(ids),
                             token_type_ids=torch.zeros_like(ids)).last_hidden_state[0].numpy()


def test_engine_matches_hf_from_the_fewest_tokens_up(mnemo_bin, tmp_path, case):
    model, ckpt, fields, config = case
    fewest = fewest_tokens(fields)
    shortest = SHORTEST.get(config["name"], [fewest, fewest + 1])
    for n in sorted({*shortest, 16, 37, 64}):
        ids = document(n, n)
        got = run_encode(mnemo_bin, tmp_path, ckpt, ids)
        assert_logits_close(got, hf_last_hidden(model, ids), what=f"{n} tokens")
        pooled = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--pool", "funnel")
        assert_logits_close(pooled, hf_encoder_output(model, ids), what=f"{n} tokens, pooled")
    proc = run_encode(mnemo_bin, tmp_path, ckpt, document(fewest - 1, 1), expect_ok=False)
    assert proc.returncode == 1 and "Funnel pass needs at least" in proc.stderr, proc.stderr


def test_engine_pools_and_runs_long_documents_in_windows(mnemo_bin, tmp_path, case):
    model, ckpt, _, _ = case
    window, ids = 24, document(70, 4)
    check_windows_and_pooling(mnemo_bin, tmp_path, ckpt, ids, window,
                              lambda part: hf_last_hidden(model, part))
    # The pooled sequence is one pass's: a longer document is refused, naming the window.
    proc = run_encode(mnemo_bin, tmp_path, ckpt, ids, "--window", str(window), "--pool",
                      "funnel", expect_ok=False)
    assert proc.returncode == 1 and "one pass" in proc.stderr, proc.stderr


def test_base_model_returns_its_pooled_sequence(mnemo_bin, tmp_path):
    fields = dict(BASE, block_sizes=[1, 2, 1])
    model = random_hf_model(fields, seed=12, base=True).double()
    config = write_converted(convert, model, tmp_path / "base")
    assert config["decoder_layers"] == 0
    for n in (5, 40):
        ids = document(n, 20 + n)
        got = run_encode(mnemo_bin, tmp_path, tmp_path / "base", ids, "--pool", "funnel")
        want = hf_last_hidden(model, ids)
        rows = (((n + 1) // 2) + 1) // 2  # pooled twice, the first token kept, the last dropped
        assert got.shape == want.shape == (rows, 32)
        assert_logits_close(got, want, what=f"base model, {n} tokens")
    for pool in ("none", "mean", "first"):
        proc = run_encode(mnemo_bin, tmp_path, tmp_path / "base", document(9, 1), "--pool", pool,
                          expect_ok=False)
        assert proc.returncode == 1 and "pooling funnel" in proc.stderr, proc.stderr


def test_masked_lm_log_probabilities_match_hf(mnemo_bin, tmp_path):
    """FunnelForMaskedLM's head (the tied word embeddings and a bias over the decoder's output),
    in one pass and from the windows that keep each position."""
    model = random_hf_model(BASE, seed=17, masked_lm=True).double()
    config = write_converted(convert, model, tmp_path / "mlm")
    assert config["mlm_head"] is True
    out = tmp_path / "mlm.f32"
    ids, positions = document(60, 8), [0, 7, 31, 59]

    def run(*flags):
        run_encode(mnemo_bin, tmp_path, tmp_path / "mlm", ids, "--mlm-positions",
                   ",".join(map(str, positions)), "--mlm-output", str(out), *flags)
        return np.fromfile(out, dtype="<f4").reshape(len(positions), BASE["vocab_size"])

    assert_logits_close(run(), hf_mlm_logprobs(model, ids)[positions], what="one pass")
    want = stitched_windows(lambda part: hf_mlm_logprobs(model, part), ids, 24)[positions]
    assert_logits_close(run("--window", "24"), want, what="windows of 24")


def test_engine_matches_a_bfloat16_checkpoint(mnemo_bin, tmp_path):
    model = bfloat16_pair(convert, random_hf_model(BASE, seed=4), tmp_path / "bf16")
    ids = document(30, 5)
    assert_logits_close(run_encode(mnemo_bin, tmp_path, tmp_path / "bf16", ids),
                        hf_last_hidden(model, ids), what="bfloat16 checkpoint")


def test_converter_reads_a_saved_hf_directory_and_its_command_line(tmp_path):
    random_hf_model(BASE, seed=5).save_pretrained(tmp_path / "hf")
    config = convert_dir(tmp_path / "hf", tmp_path / "ours")
    assert (config["block_sizes"], config["block_repeats"], config["decoder_layers"],
            config["n_layer"], config["segment_len"], config["pooling"]) == (
                [2, 1, 1], [1, 1, 1], 2, 4, 512, "mean")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf_funnel.py"),
                           "--random-init", '{"vocab_size": 60, "d_model": 32, "n_head": 4, '
                           '"d_head": 8, "d_inner": 64, "block_sizes": [1, 1]}',
                           str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "blocks [1, 1]" in proc.stdout and "2 decoder layers" in proc.stdout


@pytest.mark.parametrize("fields,fragment", [
    (dict(hidden_act="tanh"), "hidden_act"),
    (dict(d_model=33), "d_model"),
    (dict(pooling_type="min"), "pooling_type"),
    (dict(model_type="bert"), "model_type"),
])
def test_converter_refuses_what_the_engine_cannot_run(fields, fragment):
    model = random_hf_model(BASE, seed=1)
    cfg = dict(model.config.to_dict(), **fields)
    with pytest.raises(ConversionError, match=fragment):
        convert(model.state_dict(), cfg)


def test_encode_refuses_what_funnel_lacks(mnemo_bin, tmp_path, case):
    _, ckpt, fields, _ = case
    ids = document(12, 6)
    fewest = max(2, fewest_tokens(fields))
    for flags, fragment in [(["--global-positions", "0"], "Longformer"),
                            (["--window", str(fewest - 1)], "window"),
                            (["--window", "513"], "window"),
                            (["--mlm-positions", "3", "--mlm-output", str(tmp_path / "m")],
                             "masked-LM head")]:  # (the plain FunnelModel has none)
        proc = run_encode(mnemo_bin, tmp_path, ckpt, ids, *flags, expect_ok=False)
        assert proc.returncode == 1 and fragment in proc.stderr, (flags, proc.stderr)
