"""End-to-end tests of the `mnemo` command line on a real checkpoint.

The checkpoint comes from tools/make_tiny_model.py (a real sentencepiece
tokenizer, random weights). The binary is $MNEMO_BIN (set by ctest).
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = ("This program is free software: you can redistribute it and/or modify "
        "it under the terms of the licence, in any medium, with or without "
        "modification, provided that the conditions below are met. ") * 3


def mnemo():
    path = os.environ.get("MNEMO_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("MNEMO_BIN must name the built mnemo binary (ctest sets it)")
    return path


def run(*args, check=True):
    proc = subprocess.run([mnemo(), *args], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"mnemo {' '.join(args)} exited {proc.returncode}: "
                    f"{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools",
                                                 "make_tiny_model.py"),
                    str(out), "--seed", "3"], check=True,
                   capture_output=True)
    return str(out)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def test_generate_is_reproducible_for_a_seed(model):
    args = ["generate", "--model", model, "--prompt", "The licence",
            "--max-tokens", "20", "--temperature", "0.9", "--top-k", "50",
            "--seed", "7", "--ignore-eos"]
    first, second = run(*args), run(*args)
    assert first.stdout == second.stdout
    assert "[finish: length" in first.stderr and "generated 20]" in first.stderr
    other = run(*[("8" if a == "7" else a) for a in args])
    assert other.stdout != first.stdout


def test_generate_stops_at_a_stop_string_without_printing_it(model):
    base = run("generate", "--model", model, "--prompt", "The licence",
               "--max-tokens", "30", "--temperature", "0", "--ignore-eos")
    text = base.stdout.rstrip("\n")
    assert len(text) > 6
    stop = text[3:6]
    cut = run("generate", "--model", model, "--prompt", "The licence",
              "--max-tokens", "30", "--temperature", "0", "--ignore-eos",
              "--stop", stop)
    assert cut.stdout.rstrip("\n") == text[:text.find(stop)]
    assert "[finish: stop_string" in cut.stderr


def test_generate_logprobs_are_reported_per_token(model):
    proc = run("generate", "--model", model, "--prompt", "Licence",
               "--max-tokens", "5", "--temperature", "0", "--ignore-eos",
               "--logprobs", "3")
    rows = [line.split("\t") for line in proc.stderr.splitlines()
            if line and line[0].isdigit()]
    assert len(rows) == 5
    for row in rows:
        chosen, logprob = int(row[0]), float(row[1])
        alternatives = [(int(a), float(b)) for a, b in
                        (cell.split(":") for cell in row[2:])]
        assert len(alternatives) == 3
        # Greedy: the chosen token is the most likely one.
        assert alternatives[0][0] == chosen
        assert abs(alternatives[0][1] - logprob) < 1e-4
        assert logprob <= 0.0


def test_score_json_is_consistent(model, text_file):
    proc = run("score", "--model", model, "--text-file", text_file,
               "--segment-len", "16", "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    tokens, summary = lines[:-1], lines[-1]["summary"]
    assert summary["tokens"] == len(tokens) + 1
    assert [t["position"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert all(t["logprob"] <= 0.0 for t in tokens)
    bits = -sum(t["logprob"] for t in tokens) / math.log(2.0)
    assert summary["total_bits"] == pytest.approx(bits, rel=1e-6)
    assert summary["bits_per_byte"] == pytest.approx(
        summary["total_bits"] / summary["bytes"], rel=1e-6)
    assert 0 < summary["bytes"] <= len(TEXT.encode())


def test_score_of_ids_agrees_with_raw_logits(model, tmp_path):
    import numpy as np
    ids = [(7 * i + 3) % 1000 for i in range(90)]
    ids_path = tmp_path / "ids.txt"
    ids_path.write_text(" ".join(map(str, ids)))
    scored = [json.loads(line) for line in
              run("score", "--model", model, "--ids-file", str(ids_path),
                  "--segment-len", "16", "--json").stdout.splitlines()]
    out = tmp_path / "logits.f32"
    run("logits", "--model", model, "--ids", str(ids_path), "--segment-len",
        "16", "--output", str(out))
    logits = np.fromfile(out, dtype="<f4").reshape(len(ids), -1)
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    for row in scored[:-1]:
        t = row["position"]
        assert row["token"] == ids[t]
        assert row["logprob"] == pytest.approx(logp[t - 1, ids[t]], abs=1e-4)
    assert scored[-1]["summary"]["scored_tokens"] == len(ids) - 1


def test_bad_input_gives_clear_errors(model, tmp_path):
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (truncated / name).write_bytes(open(os.path.join(model, name),
                                            "rb").read())
    data = open(os.path.join(model, "model.safetensors"), "rb").read()
    (truncated / "model.safetensors").write_bytes(data[:len(data) // 2])
    proc = run("score", "--model", str(truncated), "--text-file",
               os.path.join(model, "config.json"), check=False)
    assert proc.returncode == 1
    assert "model.safetensors" in proc.stderr

    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes(b"ab\xff\xfecd")
    proc = run("score", "--model", model, "--text-file", str(bad_utf8),
               check=False)
    assert proc.returncode == 1 and "UTF-8" in proc.stderr

    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 1000000")
    proc = run("score", "--model", model, "--ids-file", str(ids),
               check=False)
    assert proc.returncode == 1 and "1000000" in proc.stderr

    proc = run("generate", "--model", model, "--prompt", "x", "--top-p",
               "1.5", check=False)
    assert proc.returncode == 1 and "top_p" in proc.stderr

    proc = run("generate", "--model", model, "--bogus", check=False)
    assert proc.returncode == 2 and "--bogus" in proc.stderr


def _copy_model(model, dest, weights):
    dest.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (dest / name).write_bytes(open(os.path.join(model, name), "rb").read())
    (dest / "model.safetensors").write_bytes(weights)
    return str(dest)


def test_corrupt_weights_are_refused_not_served_as_nan(model, text_file, tmp_path):
    """A checkpoint whose tensors do not tile the data area, or that holds a non-finite weight,
    fails to load naming what is wrong; it once loaded and scored `nan` bits with exit 0."""
    import struct
    data = open(os.path.join(model, "model.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header, weights = data[8:8 + n], data[8 + n:]
    # The header padded with spaces (as safetensors writers pad it), its length one byte short:
    # the JSON still parses and every tensor moves one byte.
    padded = header + b" " * 8
    shifted = struct.pack("<Q", len(padded) - 1) + padded + weights
    proc = run("score", "--model", _copy_model(model, tmp_path / "shifted", shifted),
               "--text-file", text_file, check=False)
    assert proc.returncode == 1, proc.stdout
    assert "the tensors cover" in proc.stderr, proc.stderr

    entries = json.loads(header)
    name = next(k for k in sorted(entries) if k != "__metadata__" and k.endswith(".weight"))
    begin = entries[name]["data_offsets"][0]
    nan = {"F32": struct.pack("<f", math.nan), "F16": b"\x00\x7e",
           "BF16": b"\xc0\x7f"}[entries[name]["dtype"]]
    poisoned = bytearray(data)
    poisoned[8 + n + begin:8 + n + begin + len(nan)] = nan
    proc = run("score", "--model", _copy_model(model, tmp_path / "nan", bytes(poisoned)),
               "--text-file", text_file, check=False)
    assert proc.returncode == 1, proc.stdout
    assert f'"{name}" holds a non-finite value' in proc.stderr, proc.stderr


MIXED_LAYERS = [
    {"attention": "sparse", "pattern": "window", "window": 24,
     "global_positions": [0]},
    {"attention": "lsh", "n_hashes": 2, "n_buckets": 8, "chunk_len": 8,
     "history": 40},
    {"attention": "linear", "feature_map": "elu"},
    {"attention": "dense", "memory": "compressive", "compression": "conv1d",
     "compression_rate": 4, "cmem_len": 8},
]


@pytest.fixture(scope="module")
def mixed_model(model, tmp_path_factory):
    """The tiny model's tokenizer on a random mixed-kind checkpoint (one
    layer of each long-context kind) written by the PyTorch reference."""
    out = tmp_path_factory.mktemp("mixed")
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    config.update(n_layer=4, mem_len=16, tie_word_embeddings=False,
                  layers=MIXED_LAYERS)
    subprocess.run([sys.executable, "-m", "mnemo_reference", "make-checkpoint", "--config-json", json.dumps(config),
                    "--out", str(out), "--seed", "5"],
                   check=True, capture_output=True)
    with open(os.path.join(model, "tokenizer.model"), "rb") as src, \
            open(os.path.join(out, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())
    return str(out)


def test_mixed_kind_model_generates_and_scores_like_the_reference(
        mixed_model, tmp_path):
    import torch

    import mnemo_reference
    args = ["generate", "--model", mixed_model, "--prompt", "The licence",
            "--max-tokens", "30", "--temperature", "0.8", "--seed", "4",
            "--ignore-eos"]
    first, second = run(*args), run(*args)
    assert first.stdout == second.stdout and first.stdout
    assert "generated 30]" in first.stderr
    ids = [(11 * i + 5) % 1000 for i in range(70)]
    ids_path = tmp_path / "ids.txt"
    ids_path.write_text(" ".join(map(str, ids)))
    scored = [json.loads(line) for line in
              run("score", "--model", mixed_model, "--ids-file",
                  str(ids_path), "--segment-len", "16",
                  "--json").stdout.splitlines()]
    oracle = mnemo_reference.load_checkpoint(mixed_model).double()
    logits = mnemo_reference.stream_logits(oracle, ids, segment_len=16)
    logp = torch.log_softmax(logits, dim=-1)
    for row in scored[:-1]:
        t = row["position"]
        assert row["logprob"] == pytest.approx(
            float(logp[t - 1, ids[t]]), abs=1e-4)
    assert len(scored) == len(ids)


@pytest.mark.parametrize("how", [["--sparsity", "0.9"], ["--two-four"]])
def test_pruned_model_scores_alike_from_sparse_and_dense_weights(
        model, tmp_path, how):
    pruned = tmp_path / "pruned"
    subprocess.run([sys.executable,
                    os.path.join(ROOT, "tools", "prune_checkpoint.py"), model,
                    str(pruned), *how], check=True, capture_output=True)
    ids = [(13 * i + 1) % 1000 for i in range(60)]
    ids_path = tmp_path / "ids.txt"
    ids_path.write_text(" ".join(map(str, ids)))

    def scores(mode):
        lines = run("score", "--model", str(pruned), "--ids-file",
                    str(ids_path), "--segment-len", "1", "--json",
                    "--sparse-weights", mode).stdout.splitlines()
        return [json.loads(line)["logprob"] for line in lines[:-1]]

    sparse, dense = scores("on"), scores("off")
    assert len(sparse) == len(ids) - 1
    assert sparse == pytest.approx(dense, abs=1e-4)
    bad = run("score", "--model", str(pruned), "--ids-file", str(ids_path),
              "--sparse-weights", "maybe", check=False)
    assert bad.returncode != 0 and "--sparse-weights" in bad.stderr


@pytest.fixture(scope="module")
def drafted_model(model, tmp_path_factory):
    """A copy of the tiny model whose draft.json names a 50%-pruned copy of it as the draft."""
    base = tmp_path_factory.mktemp("drafted")
    target, draft = base / "target", base / "draft"
    subprocess.run(["cp", "-r", model, str(target)], check=True)
    subprocess.run([sys.executable,
                    os.path.join(ROOT, "tools", "prune_checkpoint.py"), model,
                    str(draft), "--sparsity", "0.5"], check=True,
                   capture_output=True)
    (target / "draft.json").write_text(
        json.dumps({"model": "../draft", "draft_tokens": 3}))
    return str(target)


def test_speculative_greedy_output_is_the_models_own(drafted_model):
    args = ["generate", "--model", drafted_model, "--prompt", "The licence",
            "--max-tokens", "40", "--temperature", "0", "--ignore-eos",
            "--logprobs", "2"]
    alone = run(*args, "--draft", "off")
    assert "draft" not in alone.stderr
    for extra in ([], ["--draft-tokens", "1"], ["--draft-tokens", "6"]):
        spec = run(*args, *extra)
        assert spec.stdout == alone.stdout
        assert "accepted" in spec.stderr
        got = [line.split("\t") for line in spec.stderr.splitlines()[1:]]
        want = [line.split("\t") for line in alone.stderr.splitlines()[1:]]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [float(g[1]) for g in got] == pytest.approx(
            [float(w[1]) for w in want], abs=1e-3)


def test_speculative_sampling_runs_and_is_reproducible(drafted_model):
    args = ["generate", "--model", drafted_model, "--prompt", "The licence",
            "--max-tokens", "30", "--temperature", "0.8", "--seed", "5",
            "--ignore-eos"]
    first, second = run(*args), run(*args)
    assert first.stdout == second.stdout
    assert "generated 30, draft" in first.stderr


def test_bad_draft_set_ups_give_clear_errors(drafted_model, model, tmp_path):
    base = ["generate", "--model", drafted_model, "--prompt", "x",
            "--max-tokens", "2"]
    missing = run(*base, "--draft", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    zero = run(*base, "--draft-tokens", "0", check=False)
    assert zero.returncode != 0 and "--draft-tokens" in zero.stderr
    # A draft with another tokenizer.
    other = tmp_path / "other"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools",
                                                 "make_tiny_model.py"),
                    str(other), "--seed", "3", "--vocab-size", "900"],
                   check=True, capture_output=True)
    wrong = run(*base, "--draft", str(other), check=False)
    assert wrong.returncode != 0 and "tokenizer" in wrong.stderr
    # Malformed draft.json files.
    target = tmp_path / "target"
    subprocess.run(["cp", "-r", model, str(target)], check=True)
    for text, message in [("[1]", "not a JSON object"),
                          ('{"model": "../x", "k": 1}', "unknown field"),
                          ('{"draft_tokens": 2}', "\"model\""),
                          ('{"model": ".", "draft_tokens": 65}',
                           "draft_tokens")]:
        (target / "draft.json").write_text(text)
        bad = run("generate", "--model", str(target), "--prompt", "x",
                  "--max-tokens", "2", check=False)
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr


def greedy_ids(*args):
    """The token ids a greedy generate prints with --logprobs (stderr)."""
    proc = run("generate", "--temperature", "0", "--ignore-eos", "--logprobs",
               "1", *args)
    return [int(line.split("\t")[0]) for line in proc.stderr.splitlines()
            if line and line[0].isdigit()]


def test_score_continues_from_a_saved_state(model, tmp_path):
    ids = [(11 * i + 5) % 1000 for i in range(83)]
    paths = {}
    for name, part in (("a", ids[:50]), ("b", ids[50:]), ("ab", ids)):
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text(" ".join(map(str, part)))
    state = tmp_path / "a.state"

    def score(name, *extra):
        out = run("score", "--model", model, "--ids-file", str(paths[name]),
                  "--segment-len", "16", "--json", *extra).stdout
        return [json.loads(line) for line in out.splitlines()]

    whole = score("ab")
    first = score("a", "--save-state", str(state))
    second = score("b", "--load-state", str(state))
    assert state.exists() and not list(tmp_path.glob("a.state.tmp*"))
    # The continuation scores every token of B, exactly as one pass over A + B does (the same
    # segments: A's tail stayed pending in the state); A's own scores agree as well.
    assert second[:-1] == whole[49:-1]
    assert [r["position"] for r in first[:-1]] == list(range(1, 50))
    for got, want in zip(first[:-1], whole[:49]):
        assert got["token"] == want["token"]
        assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-5)
    assert second[-1]["summary"]["scored_tokens"] == 33
    # A state can be loaded, extended and saved again.
    again = tmp_path / "ab.state"
    run("score", "--model", model, "--ids-file", str(paths["b"]),
        "--segment-len", "16", "--load-state", str(state), "--save-state",
        str(again))
    assert again.stat().st_size > 0


@pytest.mark.parametrize("fixture", ["model", "drafted_model"])
def test_generate_continues_from_a_saved_state(fixture, request, tmp_path):
    checkpoint = request.getfixturevalue(fixture)
    state = tmp_path / "gen.state"
    whole = greedy_ids("--model", checkpoint, "--prompt", "The licence",
                       "--max-tokens", "16")
    head = greedy_ids("--model", checkpoint, "--prompt", "The licence",
                      "--max-tokens", "8", "--save-state", str(state))
    tail = greedy_ids("--model", checkpoint, "--load-state", str(state),
                      "--max-tokens", "8")
    assert head + tail == whole
    # A scored document continues into generation.
    text = tmp_path / "doc.txt"
    text.write_text(TEXT, encoding="utf-8")
    doc = tmp_path / "doc.state"
    run("score", "--model", checkpoint, "--text-file", str(text),
        "--save-state", str(doc))
    assert greedy_ids("--model", checkpoint, "--load-state", str(doc),
                      "--max-tokens", "4") == greedy_ids(
        "--model", checkpoint, "--prompt-file", str(text), "--max-tokens", "4")


def test_bad_state_files_give_clear_errors(model, mixed_model, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i) for i in range(1, 40)))
    state = tmp_path / "s.state"
    run("score", "--model", model, "--ids-file", str(ids), "--save-state",
        str(state))
    data = state.read_bytes()

    def load(path, checkpoint=model):
        return run("score", "--model", checkpoint, "--ids-file", str(ids),
                   "--load-state", str(path), check=False)

    garbage = tmp_path / "garbage.state"
    garbage.write_bytes(b"not a snapshot at all, really not" * 3)
    flipped = tmp_path / "flipped.state"
    flipped.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    truncated = tmp_path / "truncated.state"
    truncated.write_bytes(data[:len(data) // 2])
    for path, want in ((garbage, "INVALID_ARGUMENT"), (flipped, "DATA_LOSS"),
                       (truncated, "INVALID_ARGUMENT"),
                       (tmp_path / "missing.state", "NOT_FOUND")):
        proc = load(path)
        assert proc.returncode == 1, path
        assert want in proc.stderr and str(path) in proc.stderr, proc.stderr
    other = load(state, mixed_model)
    assert other.returncode == 1
    assert "FAILED_PRECONDITION" in other.stderr
    assert "written by model" in other.stderr, other.stderr
    proc = run("score", "--model", model, "--ids-file", str(ids),
               "--save-state", str(tmp_path / "no" / "such" / "dir"),
               check=False)
    assert proc.returncode == 1 and "cannot write" in proc.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_weights_score_like_float32_weights(model, tmp_path, dtype):
    """A 16-bit checkpoint scores the same with its weights kept 16-bit (`--cpu-weights stored`,
    the default) as widened to float32 at load (`float32`, the oracle form), in prefill segments
    and decode steps, and near it with `bf16-products` (activations rounded to bf16 in decode
    products: within the server test's bound); a bad value is refused naming the flag."""
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    config.update(torch_dtype=dtype)
    out = tmp_path / dtype
    subprocess.run([sys.executable, "-m", "mnemo_reference", "make-checkpoint", "--config-json",
                    json.dumps(config), "--out", str(out), "--seed", "8"],
                   check=True, capture_output=True)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == dtype
    ids = [(17 * i + 3) % config["vocab_size"] for i in range(50)]
    ids_path = tmp_path / "ids.txt"
    ids_path.write_text(" ".join(map(str, ids)))

    def scores(segment_len, mode):
        lines = run("score", "--model", str(out), "--ids-file", str(ids_path), "--segment-len",
                    segment_len, "--json", "--cpu-weights", mode).stdout.splitlines()
        return [json.loads(line)["logprob"] for line in lines[:-1]]

    for segment_len in ("16", "1"):
        stored, widened = scores(segment_len, "stored"), scores(segment_len, "float32")
        assert len(stored) == len(ids) - 1
        assert stored == pytest.approx(widened, abs=1e-4)
        assert scores(segment_len, "bf16-products") == pytest.approx(widened, abs=5e-2)
    bad = run("score", "--model", str(out), "--ids-file", str(ids_path), "--cpu-weights", "f16",
              check=False)
    assert bad.returncode != 0
    assert "--cpu-weights must be stored, float32 or bf16-products" in bad.stderr


def test_16bit_session_memory_scores_close_to_float32_memory(model, tmp_path):
    """`--session-memory bfloat16|float16` keeps the key/value memory 16-bit: scores in prefill
    segments and decode steps stay close to float32 memory's (and differ: the memory is read),
    a state saved with one session memory loads only with the same, and a bad value is refused
    naming the flag."""
    with open(os.path.join(model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    ids_path = tmp_path / "ids.txt"
    ids_path.write_text(" ".join(str((17 * i + 3) % vocab) for i in range(50)))

    def scores(segment_len, memory, *extra):
        lines = run("score", "--model", model, "--ids-file", str(ids_path), "--segment-len",
                    segment_len, "--json", "--session-memory", memory, *extra).stdout.splitlines()
        return [json.loads(line)["logprob"] for line in lines[:-1]]

    for segment_len in ("16", "1"):
        oracle = scores(segment_len, "float32")
        for memory in ("bfloat16", "float16"):
            got = scores(segment_len, memory)
            assert len(got) == len(oracle) == 49
            assert got == pytest.approx(oracle, abs=1e-2) and got != oracle, memory
    state = tmp_path / "state.snap"
    scores("16", "bfloat16", "--save-state", str(state))
    other = run("score", "--model", model, "--ids-file", str(ids_path), "--load-state",
                str(state), check=False)
    assert other.returncode == 1 and "FAILED_PRECONDITION" in other.stderr, other.stderr
    assert "--session-memory bfloat16" in other.stderr, other.stderr
    scores("16", "bfloat16", "--load-state", str(state))
    bad = run("score", "--model", model, "--ids-file", str(ids_path), "--session-memory", "bf16",
              check=False)
    assert bad.returncode != 0
    assert '--session-memory must be float32, bfloat16 or float16, got "bf16"' in bad.stderr
