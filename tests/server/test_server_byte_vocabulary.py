"""Reformer's byte vocabulary (the enwik8 layout: 258 ids, no tokenizer file) through the real
server: a random ReformerModelWithLMHead of 258 ids, converted by tools/convert_hf_reformer.py
(which picks the byte tokenizer itself), tokenizes UTF-8 text as its bytes + 2, detokenizes
reserved ids to nothing and ill-formed bytes to U+FFFD, scores as the model's logits say, and
streams sampled bytes as text that never splits a character."""

import json
import os
import subprocess
import sys

import pytest
import torch

from server_harness import BASE_FLAGS, SEGMENT_TOKENS, ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERTER = os.path.join(ROOT, "tools", "convert_hf_reformer.py")
FIELDS = {"vocab_size": 258, "attn_layers": ["local", "lsh"], "num_hidden_layers": 2,
          "num_hashes": 1, "axial_pos_shape": [32, 64], "max_position_embeddings": 2048}
TEXT = "na\u00efve \u20ac 42 \U0001F642\n<page>"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bytes")
    out, hf_dir = tmp / "ours", tmp / "hf"
    proc = subprocess.run([sys.executable, CONVERTER, "--random-config", json.dumps(FIELDS),
                           "--seed", "4", "--save-hf", str(hf_dir), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "tokenizer: bytes" in proc.stdout
    with open(out / "config.json", encoding="utf-8") as f:
        assert json.load(f)["tokenizer"] == "bytes"
    return out, hf_dir


@pytest.fixture(scope="module")
def client(converted, server_bin, tiny_model, server_workdir):
    server = ServerProcess(server_bin, tiny_model, server_workdir, list(BASE_FLAGS),
                           models=[f"bytes={converted[0]}"], grace_s=10.0)
    server.wait_serving()
    c = server.client()
    yield c
    c.close()
    server.stop(check=True)


def test_text_is_its_utf8_bytes_plus_two(client):
    ids = client.tokenize(TEXT, model="bytes")
    assert ids == [b + 2 for b in TEXT.encode("utf-8")]
    assert client.detokenize(ids, model="bytes") == TEXT
    # Padding and the reserved id are no text; a byte that starts no character, and a
    # character cut short, are U+FFFD (as Python's "replace" decoding gives).
    noisy = [0, 1] + ids[:3] + [0xFF + 2] + [0xE2 + 2, 0x82 + 2] + ids[3:]
    raw = bytes(i - 2 for i in noisy if i >= 2)
    assert client.detokenize(noisy, model="bytes") == raw.decode("utf-8", "replace")
    assert "\ufffd" in client.detokenize(noisy, model="bytes")


def test_score_is_the_models_log_probability(converted, client):
    """The server feeds 16-token segments. Its LSH layer (the last of the two) sorts the stored
    keys with each call's, as Hugging Face sorts one call: logits 0-15 are Hugging Face's over
    the first 16 bytes and logits 16-31 its over all 32 (the local layer before it is the same
    either way)."""
    from transformers import ReformerModelWithLMHead

    hf = ReformerModelWithLMHead.from_pretrained(str(converted[1])).eval()
    text = "Raskolnikov walked to K. bridge."
    ids = [b + 2 for b in text.encode("utf-8")]
    assert len(ids) == 2 * SEGMENT_TOKENS
    scored = client.score(text=text, model="bytes")
    assert [t.id for t in scored.tokens] == ids[1:]
    with torch.no_grad():
        first = torch.log_softmax(hf(torch.tensor([ids[:16]])).logits[0].double(), -1)
        whole = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
    for i in range(31):
        want = first if i < SEGMENT_TOKENS else whole
        assert scored.tokens[i].logprob == pytest.approx(float(want[i, ids[i + 1]]), abs=1e-4)


def test_sampled_bytes_stream_as_whole_characters(client):
    session = client.create_session(model="bytes").id
    result = client.generate_result(session, TEXT, model="bytes", max_tokens=200,
                                    temperature=1.5, seed=7, ignore_eos=True)
    assert len(result.ids) == 200
    # Random bytes are mostly ill-formed UTF-8: what streams is valid text all the same (the
    # protocol's strings could not carry anything else), the whole equals Detokenize of the ids.
    assert result.text == client.detokenize(result.ids, model="bytes")
    raw = bytes(i - 2 for i in result.ids if 2 <= i < 258)
    assert result.text == raw.decode("utf-8", "replace")
    assert any(i >= 0x80 + 2 for i in result.ids)
    client.delete_session(session)
