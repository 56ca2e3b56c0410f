"""Encode through the real server: a random Hugging Face `LongformerModel`, converted with
tools/convert_hf_longformer.py and served beside the tiny decoder, encoded through the Python
client, its command line and the C++ command line.

- the vectors match Hugging Face's `last_hidden_state` (float64 oracle, within 1e-4), and
  documents longer than a pass match `mnemo encode` with the same window (same windows, same
  vectors); pooled vectors are the mean and first row of the per-token ones;
- text streamed in odd chunks encodes as its tokens (the ids come back with the rows);
- concurrent Encode calls share forward passes (the encode steps counted by the metrics are
  fewer than the windows run) and get what each gets alone;
- Nyströmformer, Linformer and Synthesizer encoders serve beside it, matching Hugging Face or
  the PyTorch reference;
- masked-LM log-probabilities of chosen positions (a converted LongformerForMaskedLM) match
  Hugging Face's and `mnemo encode`'s, through both clients;
- every kind of bad input is refused with its status code and field, and the server goes on
  serving; decoders refuse Encode and the encoder refuses sessions, by name.
"""

import json
import os
import shutil
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

from mnemo.v1 import mnemo_pb2 as pb
from mnemo_checkpoint import write_checkpoint
from mnemo_client import bad_request_violations
from server_harness import (BASE_FLAGS, ServerProcess, executable, expect_error, pb_bytes,
                            raw_stream_stream)
from mnemo_reference import encoder as reference_encoder
from tools import convert_hf_bigbird as bigbird
from tools import convert_hf_funnel as funnel
from tools import convert_hf_nystromformer as nystromformer
from tools.convert_hf_longformer import convert, hf_last_hidden, hf_mlm_logprobs, random_hf_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hf_fields(vocab_size):
    return dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, attention_window=[4, 8], max_position_embeddings=68,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)


@pytest.fixture(scope="module")
def encoders(tiny_model, tmp_path_factory):
    """(HF model in float64, checkpoint with the tiny model's tokenizer, one without)."""
    with open(os.path.join(tiny_model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    model = random_hf_model(hf_fields(vocab), seed=11).double()
    config, tensors = convert(model, dtype="float32")
    with_tok = tmp_path_factory.mktemp("encoder") / "enc"
    write_checkpoint(with_tok, config, tensors)
    shutil.copy(os.path.join(tiny_model, "tokenizer.model"), with_tok / "tokenizer.model")
    bare = tmp_path_factory.mktemp("encoder_bare") / "enc"
    write_checkpoint(bare, config, tensors)
    return model, str(with_tok), str(bare)


@pytest.fixture(scope="module")
def mlm_encoder(tiny_model, tmp_path_factory):
    """(LongformerForMaskedLM in float64, its checkpoint)."""
    with open(os.path.join(tiny_model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    model = random_hf_model(hf_fields(vocab), seed=12, masked_lm=True).double()
    config, tensors = convert(model, dtype="float32")
    ckpt = tmp_path_factory.mktemp("encoder_mlm") / "mlm"
    write_checkpoint(ckpt, config, tensors)
    return model, str(ckpt)


@pytest.fixture(scope="module")
def nystromformer_encoder(tmp_path_factory):
    """(NystromformerModel in float64, its checkpoint): 8 landmarks over passes of 32."""
    model = nystromformer.random_hf_model(
        dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=40, pad_token_id=1,
             segment_means_seq_len=32, num_landmarks=8, conv_kernel_size=5), seed=13).double()
    config, tensors = nystromformer.convert(model, dtype="float32")
    ckpt = tmp_path_factory.mktemp("encoder_nystromformer") / "nys"
    write_checkpoint(ckpt, config, tensors)
    return model, str(ckpt)


@pytest.fixture(scope="module")
def bigbird_encoder(tmp_path_factory):
    """(BigBirdModel in float64, its checkpoint): block-sparse, blocks of 8, one random block."""
    model = bigbird.random_hf_model(
        dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=260, attention_type="block_sparse",
             block_size=8, num_random_blocks=1), seed=14).double()
    config, tensors = bigbird.convert(model, dtype="float32")
    ckpt = tmp_path_factory.mktemp("encoder_bigbird") / "bb"
    write_checkpoint(ckpt, config, tensors)
    return model, str(ckpt)


@pytest.fixture(scope="module")
def funnel_encoders(tmp_path_factory):
    """{"fun": (FunnelModel, checkpoint), "funbase": (FunnelBaseModel, checkpoint), "funwide": (a
    two-block FunnelBaseModel of d_model 512 and passes of 2048, checkpoint)}, float64."""
    out = {}
    small = dict(vocab_size=60, d_model=32, n_head=4, d_head=8, d_inner=64, block_sizes=[1, 1, 1],
                 num_decoder_layers=1)
    wide = dict(vocab_size=60, d_model=512, n_head=8, d_head=64, d_inner=512, block_sizes=[1, 1],
                max_position_embeddings=2048)
    for name, fields, base in (("fun", small, False), ("funbase", small, True),
                               ("funwide", wide, True)):
        model = funnel.random_hf_model(fields, seed=15, base=base).double()
        config, tensors = funnel.convert(model, dtype="float32")
        ckpt = tmp_path_factory.mktemp(f"encoder_{name}") / name
        write_checkpoint(ckpt, config, tensors)
        out[name] = (model, str(ckpt))
    return out


@pytest.fixture(scope="module")
def sequence_encoders(tmp_path_factory):
    """{name: (config, float64 tensors, checkpoint)}: a Linformer and a dense Synthesizer."""
    import torch
    out = {}
    for name, config in (("lin", reference_encoder.linformer_config(segment_len=24, k=6)),
                         ("syn", reference_encoder.synthesizer_config(segment_len=24))):
        tensors = reference_encoder.random_tensors(config, seed=5)
        ckpt = tmp_path_factory.mktemp(f"encoder_{name}") / name
        write_checkpoint(ckpt, config, {k: v.to(torch.float32) for k, v in tensors.items()})
        out[name] = (config, tensors, str(ckpt))
    return out


@pytest.fixture(scope="module")
def server(server_bin, tiny_model, encoders, mlm_encoder, nystromformer_encoder,
           bigbird_encoder, funnel_encoders, sequence_encoders, tmp_path_factory):
    _, with_tok, bare = encoders
    s = ServerProcess(server_bin, tiny_model, str(tmp_path_factory.mktemp("encode_server")),
                      BASE_FLAGS + ["--max-encode-tokens", "5000", "--batch-wait", "50ms",
                                    "--max-batch-tokens", "4096"],
                      models=[f"tiny={tiny_model}", f"enc={with_tok}", f"bare={bare}",
                              f"mlm={mlm_encoder[1]}", f"nys={nystromformer_encoder[1]}",
                              f"bb={bigbird_encoder[1]}", f"fun={funnel_encoders['fun'][1]}",
                              f"funbase={funnel_encoders['funbase'][1]}",
                              f"funwide={funnel_encoders['funwide'][1]}",
                              f"lin={sequence_encoders['lin'][2]}",
                              f"syn={sequence_encoders['syn'][2]}"])
    s.wait_serving()
    yield s
    s.stop(check=True)



def assert_close(got, want, tol=1e-4):
    scale = float(np.abs(want).max())
    diff = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert diff <= tol * scale + 1e-6, f"max|diff| {diff:.3e} > {tol} * {scale:.3e}"


def document(n, seed, vocab):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=n).tolist()
    ids[n // 2] = 1  # the pad id inside the document: positions count around it
    return ids


def cli_encode(mnemo_bin, tmp_path, ckpt, ids, *flags):
    ids_file, out = tmp_path / "ids.txt", tmp_path / "cli.f32"
    ids_file.write_text(" ".join(map(str, ids)))
    proc = subprocess.run([mnemo_bin, "encode", "--model", ckpt, "--ids", str(ids_file),
                           "--output", str(out), *flags], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows, cols = map(int, proc.stdout.split())
    return np.fromfile(out, dtype="<f4").reshape(rows, cols)


def test_encode_matches_hugging_face_and_the_command_line(server, encoders, mnemo_bin,
                                                          tmp_path):
    model, with_tok, _ = encoders
    vocab = model.config.vocab_size
    client = server.client()
    ids = document(60, 1, vocab)
    for globals_ in ((), (0, 31, 59)):
        r = client.encode(ids, model="enc", global_positions=globals_)
        assert (r.rows, r.dim, r.tokens, r.windows) == (60, 32, 60, 1)
        assert r.ids == ids
        assert_close(r.numpy(), hf_last_hidden(model, ids, globals_))
    # A document longer than a pass (the position table holds 66): windows of 24, the same
    # windows and vectors as the engine's command line.
    long_ids = document(150, 2, vocab)
    r = client.encode(long_ids, model="enc", global_positions=[0, 100], window_tokens=24)
    assert r.windows == len(range(0, 150 - 24, 12)) + 1
    want = cli_encode(mnemo_bin, tmp_path, with_tok, long_ids, "--window", "24",
                      "--global-positions", "0,100")
    np.testing.assert_allclose(r.numpy(), want, rtol=0, atol=1e-5)  # (passes group differently)
    # Per-token output arrives in order in several messages once it passes ~1 MiB: not here,
    # but the pooled forms are the mean and the first row of the per-token one.
    per_token = r.numpy().astype(np.float64)
    mean = client.encode(long_ids, model="enc", global_positions=[0, 100], window_tokens=24,
                         pooling="mean")
    assert (mean.rows, mean.dim, mean.ids) == (1, 32, [])
    np.testing.assert_allclose(mean.numpy()[0], per_token.mean(axis=0), rtol=0, atol=1e-5)
    first = client.encode(long_ids, model="enc", global_positions=[0, 100], window_tokens=24,
                          pooling="first")
    assert first.windows == 1  # only the window holding token 0 runs
    np.testing.assert_allclose(first.numpy()[0], per_token[0], rtol=0, atol=1e-6)
    # The vectors in plain Python.
    assert np.allclose(np.array(first.vectors()), first.numpy())


def test_text_streamed_in_odd_chunks_encodes_as_its_tokens(server):
    client = server.client()
    text = ("The quick brown fox jumps over the lazy dog; naïve café, 日本語 and 🎉 too. " * 4)
    ids = client.tokenize(text, model="enc")
    assert len(ids) > 66  # more than one pass
    by_ids = client.encode(ids, model="enc", window_tokens=40, global_positions=[0])
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    by_text = client.encode(iter(pieces), model="enc", window_tokens=40, global_positions=[0])
    assert by_text.ids == ids
    np.testing.assert_array_equal(by_text.numpy(), by_ids.numpy())
    # Text and ids mixed keep the document's order.
    mixed = client.encode(iter(["The quick brown", [7, 8, 9], " fox jumps"]), model="enc")
    want = (client.tokenize("The quick brown", model="enc") + [7, 8, 9] +
            client.tokenize(" fox jumps", model="enc"))
    assert mixed.ids == want
    np.testing.assert_array_equal(mixed.numpy(), client.encode(want, model="enc").numpy())


def test_concurrent_encodes_share_forward_passes(server, encoders):
    model, _, _ = encoders
    vocab = model.config.vocab_size
    client = server.client()
    docs = [document(90 + 7 * k, 10 + k, vocab) for k in range(6)]
    alone = [client.encode(d, model="enc", window_tokens=30, global_positions=[0]).numpy()
             for d in docs]

    def passes():
        return server.metrics().sum("mnemo_engine_step_seconds_count", phase="encode")

    before = passes()
    results = [None] * len(docs)
    barrier = threading.Barrier(len(docs))

    def run(k):
        barrier.wait()
        results[k] = client.encode(docs[k], model="enc", window_tokens=30, global_positions=[0])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(docs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    windows = sum(r.windows for r in results)
    ran = passes() - before
    # Without sharing every window is a pass of its own (--max-batch-tokens 30 gives exactly
    # that); how many share depends on how the six requests overlap in time, which the machine's
    # load decides (on a quiet machine, fewer than half as many passes as windows).
    assert ran < windows, f"{ran} encode passes for {windows} windows: no pass was shared"
    for got, want in zip(results, alone):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


def test_the_encoder_is_described_and_tokenizes(server):
    client = server.client()
    m = client.model("enc")
    assert (m.family, m.architecture, m.d_model, m.n_head, m.max_positions) == (
        "encoder", "longformer", 32, 4, 66)
    assert [(l.attention, l.window) for l in m.layers] == [
        (pb.ATTENTION_KIND_LONGFORMER, 2), (pb.ATTENTION_KIND_LONGFORMER, 4)]
    assert client.model("tiny").family == "decoder"
    names = {x.name: x.family for x in client.models()}
    assert names == {"tiny": "decoder", "enc": "encoder", "bare": "encoder", "mlm": "encoder",
                     "nys": "encoder", "bb": "encoder", "fun": "encoder", "funbase": "encoder",
                     "funwide": "encoder", "lin": "encoder", "syn": "encoder"}
    lin, syn = client.model("lin").layers[0], client.model("syn").layers[0]
    assert (lin.attention, lin.window, lin.projected_length) == (
        pb.ATTENTION_KIND_LINFORMER, 24, 6)
    assert (syn.attention, syn.window, syn.synthesizer) == (
        pb.ATTENTION_KIND_SYNTHESIZER, 24, "dense")
    n = client.model("nys")
    assert (n.architecture, n.max_positions) == ("nystromformer", 32)
    assert {(l.attention, l.window, l.num_landmarks, l.conv_kernel_size) for l in n.layers} == {
        (pb.ATTENTION_KIND_NYSTROMFORMER, 32, 8, 5)}
    b = client.model("bb")
    assert (b.architecture, b.max_positions) == ("bigbird", 256)
    assert {(l.attention, l.window, l.pattern, l.block_size, l.num_random_blocks)
            for l in b.layers} == {(pb.ATTENTION_KIND_BIGBIRD, 256, "block_sparse", 8, 1)}
    f = client.model("fun")
    assert (f.architecture, f.max_positions, len(f.layers)) == ("funnel", 512, 3)
    assert {(l.attention, l.window, l.pattern) for l in f.layers} == {
        (pb.ATTENTION_KIND_FUNNEL, 512, "mean")}
    ids = client.tokenize("hello world", model="enc")
    assert client.detokenize(ids, model="enc") == "hello world"


def violations(e):
    return dict(bad_request_violations(e))


def test_bad_encode_requests_are_refused_and_the_server_goes_on(server, encoders):
    model, _, _ = encoders
    vocab = model.config.vocab_size
    client = server.client()
    code = grpc.StatusCode
    # Decoders do not encode; the encoder has no sessions.
    e = expect_error(lambda: client.encode([5, 6], model="tiny"), code.FAILED_PRECONDITION)
    assert "decoder" in e.details()
    e = expect_error(lambda: client.create_session(model="enc"), code.FAILED_PRECONDITION)
    assert "encoder" in e.details()
    expect_error(lambda: client.generate_text("", [5, 6], model="enc", max_tokens=2),
                 code.FAILED_PRECONDITION)
    expect_error(lambda: client.score(ids=[5, 6], model="enc"), code.FAILED_PRECONDITION)
    expect_error(lambda: client.encode([5], model="nope"), code.NOT_FOUND)
    # Fields.
    cases = [
        (dict(document=[5, vocab]), "ids.ids[1]"),
        (dict(document=[5, -1]), "ids.ids[1]"),
        (dict(document=[5, 6, 7], global_positions=[2, 1]), "global_positions[1]"),
        (dict(document=[5, 6, 7], global_positions=[-1]), "global_positions[0]"),
        (dict(document=[5, 6, 7], global_positions=[0, 3]), "global_positions[1]"),
        (dict(document=[5, 6, 7], global_positions=list(range(4097))), "global_positions"),
        (dict(document=[5, 6, 7], window_tokens=1), "window_tokens"),
        (dict(document=[5, 6, 7], window_tokens=67), "window_tokens"),
        (dict(document=[5, 6, 7], window_tokens=-4), "window_tokens"),
        (dict(document=[5, 6, 7], pooling=99), "pooling"),
        (dict(document=[]), "chunk"),
        (dict(document=iter([])), "chunk"),
        (dict(document=[5] * 5001), "ids.ids"),
        (dict(document=iter([[5] * 3000, [6] * 3000])), "messages[1].ids.ids"),
        (dict(document=[5, 6, 7], mlm_positions=[2, 1]), "mlm_positions[1]"),
        (dict(document=[5, 6, 7], mlm_positions=[3]), "mlm_positions[0]"),
        (dict(document=[5] * 300, mlm_positions=list(range(257))), "mlm_positions"),
    ]
    for kwargs, field in cases:
        name = "mlm" if "mlm_positions" in kwargs else "enc"
        e = expect_error(lambda: client.encode(model=name, **kwargs), code.INVALID_ARGUMENT)
        assert field in violations(e), (kwargs.get("global_positions"), field, violations(e))
    # Global positions on an encoder without them.
    e = expect_error(lambda: client.encode([5, 6], model="nys", global_positions=[0]),
                     code.INVALID_ARGUMENT)
    assert "global_positions" in violations(e)
    # Masked-LM positions on an encoder without the head.
    e = expect_error(lambda: client.encode([5, 6], model="enc", mlm_positions=[1]),
                     code.FAILED_PRECONDITION)
    assert "masked-LM" in e.details()
    # Text to an encoder without a tokenizer.
    e = expect_error(lambda: client.encode("some text", model="bare"), code.FAILED_PRECONDITION)
    assert "tokenizer" in e.details()
    # Invalid UTF-8 in a text chunk (the Python protobuf library refuses to build it).
    first = pb.EncodeRequest(model="enc").SerializeToString()
    bad_text = pb_bytes(5, b"ok \xff\xfe")
    e = expect_error(lambda: raw_stream_stream(server.channel, "/mnemo.v1.InferenceService/Encode",
                                               [first, bad_text]), code.INVALID_ARGUMENT)
    # A message that does not parse at all.
    e = expect_error(lambda: raw_stream_stream(server.channel, "/mnemo.v1.InferenceService/Encode",
                                               [first, b"\xff\xff\xff"]), code.INVALID_ARGUMENT)
    # The server still encodes.
    ok = client.encode([5, 6, 7], model="enc")
    assert (ok.rows, ok.tokens) == (3, 3)
    assert server.alive()


def test_command_lines_encode(server, encoders, tmp_path):
    """The Python client's and the C++ client's command lines write the same float32 rows."""
    model, _, _ = encoders
    vocab = model.config.vocab_size
    ids = document(80, 5, vocab)
    want = server.client().encode(ids, model="enc", window_tokens=32, global_positions=[0, 9])
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(",".join(map(str, ids)))
    env = dict(os.environ)
    py_out = tmp_path / "py.f32"
    proc = subprocess.run([sys.executable, "-m", "mnemo_client", "--target", server.target,
                           "encode", str(ids_file), "--ids", "--model", "enc", "--window", "32",
                           "--global-positions", "0,9", "--output", str(py_out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["80", "32"]
    assert py_out.read_bytes() == want.data
    cpp_out = tmp_path / "cpp.f32"
    proc = subprocess.run([executable("MNEMO_CLIENT_BIN"), "--target", server.target, "encode",
                           "--ids-file", str(ids_file), "--model", "enc", "--window", "32",
                           "--global-positions", "0,9", "--output", str(cpp_out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["80", "32"]
    assert cpp_out.read_bytes() == want.data
    # Pooled, from text.
    text_file = tmp_path / "doc.txt"
    text_file.write_text("a small document about encoders and their windows")
    mean = server.client().encode(text_file.read_text(), model="enc", pooling="mean")
    proc = subprocess.run([executable("MNEMO_CLIENT_BIN"), "--target", server.target, "encode",
                           "--file", str(text_file), "--model", "enc", "--pool", "mean",
                           "--output", str(cpp_out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "32"]
    assert cpp_out.read_bytes() == mean.data
    # A bad request exits 1 naming the field.
    proc = subprocess.run([executable("MNEMO_CLIENT_BIN"), "--target", server.target, "encode",
                           "--ids-file", str(ids_file), "--model", "enc", "--window", "1",
                           "--output", str(cpp_out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "window_tokens" in proc.stderr, proc.stderr



def test_masked_lm_log_probabilities(server, mlm_encoder, mnemo_bin, tmp_path):
    model, ckpt = mlm_encoder
    vocab = model.config.vocab_size
    client = server.client()
    ids = document(50, 21, vocab)
    positions = [0, 9, 33, 49]
    r = client.encode(ids, model="mlm", global_positions=[0], mlm_positions=positions,
                      pooling="mean")
    assert sorted(r.mlm) == positions and r.rows == 1
    want = hf_mlm_logprobs(model, ids, (0,))[positions]
    assert_close(np.stack([r.mlm_numpy(p) for p in positions]), want)
    # In windows: what the engine's command line writes, through both command-line clients too.
    ids = document(130, 22, vocab)
    positions = [3, 40, 41, 129]
    r = client.encode(ids, model="mlm", window_tokens=20, mlm_positions=positions,
                      pooling="first")
    assert r.windows > 1  # "first" still runs the windows that keep a position
    got = np.stack([r.mlm_numpy(p) for p in positions])
    ids_file, cli_out = tmp_path / "ids.txt", tmp_path / "cli.f32"
    ids_file.write_text(" ".join(map(str, ids)))
    proc = subprocess.run([mnemo_bin, "encode", "--model", ckpt, "--ids", str(ids_file),
                           "--output", str(tmp_path / "v.f32"), "--window", "20",
                           "--mlm-positions", ",".join(map(str, positions)), "--mlm-output",
                           str(cli_out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    want = np.fromfile(cli_out, dtype="<f4").reshape(len(positions), vocab)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    for command in ([sys.executable, "-m", "mnemo_client", "--target", server.target, "encode",
                     str(ids_file), "--ids"],
                    [executable("MNEMO_CLIENT_BIN"), "--target", server.target, "encode",
                     "--ids-file", str(ids_file)]):
        out = tmp_path / "client_mlm.f32"
        proc = subprocess.run(command + ["--model", "mlm", "--window", "20", "--mlm-positions",
                                         ",".join(map(str, positions)), "--mlm-output", str(out),
                                         "--output", str(tmp_path / "client_v.f32")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == b"".join(r.mlm[p] for p in positions), command[0]


def test_nystromformer_encodes_through_the_server(server, nystromformer_encoder, mnemo_bin,
                                                  tmp_path):
    model, ckpt = nystromformer_encoder
    client = server.client()
    ids = document(20, 31, 60)  # a short pass: padded to 32, the padding masked
    r = client.encode(ids, model="nys")
    assert (r.rows, r.windows) == (20, 1)
    assert_close(r.numpy(), nystromformer.hf_last_hidden(model, ids))
    long_ids = document(100, 32, 60)
    r = client.encode(long_ids, model="nys", window_tokens=24)
    want = cli_encode(mnemo_bin, tmp_path, ckpt, long_ids, "--window", "24")
    np.testing.assert_allclose(r.numpy(), want, rtol=0, atol=1e-5)  # (passes group differently)


def test_bigbird_encodes_through_the_server(server, bigbird_encoder, mnemo_bin, tmp_path):
    model, ckpt = bigbird_encoder
    client = server.client()
    for n in (30, 61):  # full attention; block-sparse, padded to 64
        ids = document(n, 50 + n, 60)
        r = client.encode(ids, model="bb")
        assert (r.rows, r.windows) == (n, 1)
        assert_close(r.numpy(), bigbird.hf_last_hidden(model, ids))
    long_ids = document(300, 33, 60)  # windows of 100 every 50, block-sparse
    r = client.encode(long_ids, model="bb", window_tokens=100)
    want = cli_encode(mnemo_bin, tmp_path, ckpt, long_ids, "--window", "100")
    np.testing.assert_allclose(r.numpy(), want, rtol=0, atol=1e-5)
    with pytest.raises(grpc.RpcError) as e:
        client.encode(long_ids, model="bb", global_positions=[0])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Longformer" in e.value.details()


def test_funnel_encodes_through_the_server_and_returns_its_pooled_sequence(
        server, funnel_encoders, mnemo_bin, tmp_path):
    client = server.client()
    model, ckpt = funnel_encoders["fun"]
    ids = document(37, 60, 60)
    r = client.encode(ids, model="fun")
    assert (r.rows, r.windows) == (37, 1)
    assert_close(r.numpy(), funnel.hf_last_hidden(model, ids))
    pooled = client.encode(ids, model="fun", pooling="funnel")
    assert pooled.rows == 10 and pooled.windows == 1  # 37 → 19 → 10
    np.testing.assert_allclose(pooled.numpy(), cli_encode(mnemo_bin, tmp_path, ckpt, ids, "--pool",
                                                          "funnel"), rtol=0, atol=1e-5)
    base, _ = funnel_encoders["funbase"]
    r = client.encode(ids, model="funbase", pooling="funnel")
    assert_close(r.numpy(), funnel.hf_last_hidden(base, ids))
    # The C++ command-line client writes the same rows.
    out = tmp_path / "funnel.f32"
    ids_file = tmp_path / "funnel_ids.txt"
    ids_file.write_text(" ".join(map(str, ids)))
    proc = subprocess.run([executable("MNEMO_CLIENT_BIN"), "--target", server.target, "encode",
                           "--model", "funbase", "--ids-file", str(ids_file), "--pool", "funnel",
                           "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == r.data
    for kwargs, code, fragment in [
            (dict(model="funbase"), grpc.StatusCode.FAILED_PRECONDITION, "pooling funnel"),
            (dict(model="bb", pooling="funnel"), grpc.StatusCode.INVALID_ARGUMENT, "Funnel"),
            (dict(model="fun", pooling="funnel", window_tokens=20),
             grpc.StatusCode.INVALID_ARGUMENT, "one pass"),
            (dict(model="fun", window_tokens=4), grpc.StatusCode.INVALID_ARGUMENT,
             "window_tokens")]:
        with pytest.raises(grpc.RpcError) as e:
            client.encode(ids, **kwargs)
        assert e.value.code() == code and fragment in e.value.details(), (kwargs, e.value)
    with pytest.raises(grpc.RpcError) as e:  # too short to pool at every block
        client.encode(ids[:4], model="fun")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    # A pooled sequence over 1 MiB (550 rows of 512 floats) streams in several messages.
    wide, _ = funnel_encoders["funwide"]
    long_ids = document(1100, 61, 60)
    r = client.encode(long_ids, model="funwide", pooling="funnel")
    assert (r.rows, r.dim, len(r.data)) == (550, 512, 550 * 512 * 4)
    assert_close(r.numpy(), funnel.hf_last_hidden(wide, long_ids))
    request = pb.EncodeRequest(model="funwide", pooling=pb.POOLING_FUNNEL,
                               ids=pb.TokenIds(ids=long_ids))
    # The raw replies (encode() joins them); this test server asks for no credentials.
    replies = list(client.inference_stub.Encode(iter([request]), timeout=120))
    assert [m.count for m in replies if m.count] == [512, 38], [m.count for m in replies]


def test_linformer_and_synthesizer_encode_through_the_server(server, sequence_encoders):
    client = server.client()
    for name, (config, tensors, _) in sequence_encoders.items():
        ids = document(15, 40, 60)
        r = client.encode(ids, model=name)
        assert_close(r.numpy(), reference_encoder.encode(config, tensors, ids))
        long_ids = document(70, 41, 60)  # windows of 24 every 12
        r = client.encode(long_ids, model=name, pooling="mean")
        assert r.windows == len(range(0, 70 - 24, 12)) + 1
