"""The server computes what the offline engine computes: a document streamed into a session in
many small chunks, split at odd places, then continued greedily, gives the same tokens, text
and log-probabilities as `mnemo generate --prompt-file` on the whole document with the same
segment length (and the same tokens for seeded sampling)."""

import json
import math

import grpc
import pytest
from mnemo.v1 import mnemo_pb2 as pb

from server_harness import (SEGMENT_TOKENS, byte_cuts_inside_characters, cli_generate, document,
                            logprob_values, odd_chunks, pb_bytes, raw_stream_stream, run_cli)

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def doc():
    return document("Apache-2.0")


@pytest.fixture(scope="module")
def doc_file(doc, tmp_path_factory):
    path = tmp_path_factory.mktemp("doc") / "document.txt"
    path.write_bytes(doc.encode("utf-8"))
    return str(path)


@pytest.fixture(scope="module")
def offline(mnemo_bin, tiny_model, doc_file):
    """The offline engine's greedy continuation of the whole document: (text, ids, logprobs)."""
    return cli_generate(mnemo_bin, tiny_model, doc_file, MAX_TOKENS, SEGMENT_TOKENS)


@pytest.fixture(scope="module")
def offline_sampled(mnemo_bin, tiny_model, doc_file):
    """The same with temperature 1 and seed 5."""
    return cli_generate(mnemo_bin, tiny_model, doc_file, MAX_TOKENS, SEGMENT_TOKENS,
                        temperature=1.0, seed=5)


@pytest.fixture(scope="module")
def doc_ids(shared_client, doc):
    return shared_client.tokenize(doc)


def _continue(client, session_id, **sampling):
    sampling = sampling or {"temperature": 0}
    return client.generate_result(session_id, None, max_tokens=MAX_TOKENS, ignore_eos=True,
                                  logprobs=True, commit="scratch", **sampling)


def assert_matches(result, offline):
    text, ids, logprobs = offline
    assert result.ids == ids
    assert result.text == text
    # The command line prints logprobs with 4 decimals.
    assert logprob_values(result) == pytest.approx(logprobs, abs=2e-4)


def test_document_ingested_in_odd_text_chunks_continues_like_the_offline_engine(
        shared_client, doc, doc_ids, offline, offline_sampled):
    assert len(doc.encode()) > 8000 and len(doc_ids) > 20 * SEGMENT_TOKENS
    session = shared_client.create_session()
    chunks = odd_chunks(doc, seed=1)
    assert len(chunks) > 300
    final = shared_client.ingest(session.id, chunks)
    assert final.done
    assert final.tokens_ingested == len(doc_ids), \
        "the server's tokens of the chunked document differ from Tokenize(whole document)"
    described = shared_client.get_session(session.id)
    assert described.tokens_seen == len(doc_ids)
    assert final.segments_processed * SEGMENT_TOKENS + final.pending_tokens == len(doc_ids)
    result = _continue(shared_client, session.id)
    assert_matches(result, offline)
    assert result.final.usage.generated_tokens == MAX_TOKENS
    assert result.final.usage.prompt_tokens == 0
    sampled = _continue(shared_client, session.id, temperature=1.0, seed=5)
    assert sampled.ids == offline_sampled[1]
    assert sampled.text == offline_sampled[0]
    shared_client.delete_session(session.id)


def test_document_ingested_as_token_ids_continues_like_the_offline_engine(
        shared_client, doc_ids, offline):
    session = shared_client.create_session()
    sizes = [1, 7, 16, 17, 3, 31, 2, 64, 15]
    chunks, pos, i = [], 0, 0
    while pos < len(doc_ids):
        chunks.append(doc_ids[pos:pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    final = shared_client.ingest(session.id, chunks)
    assert final.tokens_ingested == len(doc_ids)
    assert_matches(_continue(shared_client, session.id), offline)
    shared_client.delete_session(session.id)


def test_a_chunk_split_inside_a_utf8_character_fails_and_changes_nothing(
        shared_server, shared_client, doc):
    """The contract: text is split between characters (each message's text is valid UTF-8, as
    protobuf requires of strings). A message cut inside a character is refused with
    INVALID_ARGUMENT and the whole stream changes nothing. Python's protobuf refuses such strings,
    so the requests are serialized by hand."""
    session = shared_client.create_session()
    pieces = byte_cuts_inside_characters(doc.encode("utf-8"), seed=2)
    assert sum(1 for p in pieces[:-1] if p and p[-1] >= 0xC0) >= 20
    requests = [pb_bytes(1, session.id) + pb_bytes(3, pieces[0])]
    requests += [pb_bytes(3, p) for p in pieces[1:]]
    with pytest.raises(grpc.RpcError) as failure:
        list(raw_stream_stream(shared_server.channel, "/mnemo.v1.InferenceService/Ingest",
                               requests))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    assert "UTF-8" in failure.value.details()
    after = shared_client.get_session(session.id)
    assert (after.state_version, after.tokens_seen, after.pending_tokens) == (0, 0, 0)
    shared_client.delete_session(session.id)


def test_one_shot_generation_matches_the_offline_engine(shared_client, mnemo_bin, tiny_model,
                                                        tmp_path):
    prompt = "The licence grants you the right"
    path = tmp_path / "prompt.txt"
    path.write_text(prompt, encoding="utf-8")
    offline = cli_generate(mnemo_bin, tiny_model, str(path), MAX_TOKENS, SEGMENT_TOKENS)
    result = shared_client.generate_result(prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                           ignore_eos=True, logprobs=True)
    assert_matches(result, offline)
    assert result.final.usage.prompt_tokens == len(shared_client.tokenize(prompt))
    offline = cli_generate(mnemo_bin, tiny_model, str(path), MAX_TOKENS, SEGMENT_TOKENS,
                           temperature=0.8, seed=9)
    result = shared_client.generate_result(prompt=prompt, max_tokens=MAX_TOKENS,
                                           temperature=0.8, seed=9, ignore_eos=True,
                                           logprobs=True)
    assert_matches(result, offline)


def test_one_shot_score_matches_the_offline_engine(shared_client, mnemo_bin, tiny_model,
                                                   tmp_path):
    text = document("BSD", unicode_tail=True)[:1200]
    path = tmp_path / "score.txt"
    path.write_bytes(text.encode("utf-8"))
    lines = run_cli(mnemo_bin, "score", "--model", tiny_model, "--text-file", str(path),
                    "--segment-len", str(SEGMENT_TOKENS), "--json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    offline_tokens, summary = rows[:-1], rows[-1]["summary"]
    scored = shared_client.score(text=text)
    assert [t.id for t in scored.tokens] == [t["token"] for t in offline_tokens]
    assert [t.logprob for t in scored.tokens] == pytest.approx(
        [t["logprob"] for t in offline_tokens], abs=1e-4)
    assert scored.total_bits == pytest.approx(summary["total_bits"], rel=1e-5)
    assert scored.bits_per_byte == pytest.approx(summary["bits_per_byte"], rel=1e-5)
    assert math.isfinite(scored.bits_per_byte) and scored.bits_per_byte > 0
