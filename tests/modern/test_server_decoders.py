"""The sliding-window decoders through the real server: a random MistralForCausalLM
(grouped-query attention, a sliding window of 16) converted by tools/convert_hf_mistral.py
streams a 4000-token document into a session whose state stays the same size, then scores the
next tokens as Hugging Face does over the whole document; a full-attention layout
(sliding_window null) and a Gemma2ForCausalLM (sliding and global layers, soft caps) serve up to
their maximum context as Hugging Face does and refuse beyond it with OUT_OF_RANGE, the session
intact."""

import grpc
import numpy as np
import pytest
import torch

from mnemo_checkpoint import write_checkpoint
from server_harness import BASE_FLAGS, ServerProcess, expect_error
from test_hf_mistral_parity import hf_logits
from tools import convert_hf_gemma2, convert_hf_mistral

FIELDS = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
              max_position_embeddings=4096, rope_theta=10000.0)
FULL = dict(FIELDS, sliding_window=None, max_position_embeddings=48)
GEMMA = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8,
             max_position_embeddings=48, query_pre_attn_scalar=8, attn_logit_softcapping=20.0,
             final_logit_softcapping=10.0)


def hf_logprobs(model, ids):
    """Hugging Face's log-probabilities over the whole stream, in float64."""
    return torch.log_softmax(torch.from_numpy(hf_logits(model, ids)), dim=-1).numpy()


@pytest.fixture(scope="module")
def served(tmp_path_factory, server_bin):
    tmp = tmp_path_factory.mktemp("mistral")
    models = {}
    for name, fields, converter in (("window", FIELDS, convert_hf_mistral),
                                    ("full", FULL, convert_hf_mistral),
                                    ("gemma", GEMMA, convert_hf_gemma2)):
        model = converter.random_hf_model(fields, seed=21)
        config, tensors = converter.convert(model)
        write_checkpoint(str(tmp / name), config, tensors)
        models[name] = model
    server = ServerProcess(server_bin, str(tmp / "window"), str(tmp), list(BASE_FLAGS),
                           models=[f"{name}={tmp / name}" for name in models],
                           grace_s=10.0)
    server.wait_serving()
    client = server.client()
    yield client, models
    client.close()
    server.stop(check=True)


def chunks(ids, size):
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def test_long_document_streams_at_constant_state(served):
    client, models = served
    described = client.model("window")
    assert (described.architecture, described.n_head, described.n_kv_head) == ("mistral", 4, 2)
    assert described.max_positions == 0
    # Per layer a ring of W − 1 = 15 positions of k and v, 2 key/value heads of 8 floats.
    assert described.state_bytes_per_session == 2 * 2 * 15 * 2 * 8 * 4
    ids = np.random.default_rng(5).integers(0, FIELDS["vocab_size"], size=4024).tolist()
    session = client.create_session(model="window")
    client.ingest(session.id, chunks(ids[:200], 37))
    early = client.get_session(session.id)
    client.ingest(session.id, chunks(ids[200:4000], 113))
    late = client.get_session(session.id)
    assert (early.tokens_seen, late.tokens_seen) == (200, 4000)
    assert early.state_bytes == late.state_bytes == described.state_bytes_per_session
    scored = client.score(session.id, ids=ids[4000:])
    want = hf_logprobs(models["window"], ids)
    got = [t.logprob for t in scored.tokens]
    expected = [want[4000 + i - 1, ids[4000 + i]] for i in range(len(got))]
    assert len(got) == 24
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("name", ["full", "gemma"])
def test_full_attention_layers_refuse_past_the_context(served, name):
    client, models = served
    assert client.model(name).max_positions == 48
    ids = np.random.default_rng(6).integers(0, FULL["vocab_size"], size=48).tolist()
    session = client.create_session(model=name)
    client.ingest(session.id, chunks(ids[:40], 9))
    error = expect_error(lambda: client.ingest(session.id, [ids[40:48] + [1]]),
                         grpc.StatusCode.OUT_OF_RANGE)
    assert "48" in error.details() and "max_positions" in error.details()
    assert client.get_session(session.id).tokens_seen == 40  # nothing of the refused call
    scored = client.score(session.id, ids=ids[40:48])
    want = hf_logprobs(models[name], ids)
    np.testing.assert_allclose([t.logprob for t in scored.tokens],
                               [want[39 + i, ids[40 + i]] for i in range(8)], atol=1e-4)
