"""The server's plain contract: models, tokenizer, session lifecycle, listing, TTL, the shape of
Ingest progress and Generate event streams, sampling and stop conditions."""

import re
import uuid

import grpc
import pytest
from mnemo.v1 import mnemo_pb2 as pb

from mnemo_client import health
from server_harness import expect_error, wait_until

PROSE = ("This program is free software: you can redistribute it and/or modify it under the "
         "terms of the licence, provided that the conditions below are met.")


def test_health_reports_serving(shared_server):
    assert shared_server.health() == health.SERVING


def test_models_describe_the_checkpoint(shared_client):
    models = shared_client.models()
    assert [m.name for m in models] == ["tiny"]
    m = models[0]
    assert (m.architecture, m.vocab_size, m.d_model, m.n_head, m.d_head, m.d_inner) == \
        ("transfo_xl", 1000, 128, 4, 32, 512)
    assert m.memory_tokens == 64 and m.segment_tokens == 16
    assert m.dtype == "float32" and m.device == "cpu" and m.eos_token_id == 2
    # n_layer · 2 (keys, values) · mem_len · n_head · d_head · 4 bytes (README).
    assert m.state_bytes_per_session == 2 * 2 * 64 * 4 * 32 * 4
    assert len(m.layers) == 2
    assert all(l.attention == pb.ATTENTION_KIND_DENSE and l.memory_tokens == 64
               for l in m.layers)
    assert sum(l.state_bytes for l in m.layers) == m.state_bytes_per_session
    assert m.fingerprint
    assert 0.0 <= m.weight_sparsity <= 1.0
    assert shared_client.model("tiny") == m
    expect_error(lambda: shared_client.model("no-such-model"), grpc.StatusCode.NOT_FOUND)


def test_tokenize_and_detokenize_round_trip(shared_client):
    ids = shared_client.tokenize(PROSE)
    assert ids and all(0 <= i < 1000 for i in ids)
    assert shared_client.tokenize(PROSE, model="tiny") == ids
    assert shared_client.detokenize(ids) == PROSE
    assert shared_client.tokenize("") == []


def test_session_lifecycle(shared_client, model_info):
    created = shared_client.create_session(
        ttl_s=120, labels={"suite": "basics", "case": "lifecycle"},
        default_sampling={"temperature": 0.5, "top_k": 7, "seed": 11})
    assert re.fullmatch(r"[0-9a-f]{32}", created.id)
    assert created.model == "tiny"
    assert dict(created.labels) == {"suite": "basics", "case": "lifecycle"}
    assert created.ttl.seconds == 120
    assert (created.tokens_seen, created.state_version, created.pending_tokens) == (0, 0, 0)
    assert created.state_bytes == model_info.state_bytes_per_session
    assert created.tier == pb.STATE_TIER_DEVICE
    assert created.memory_tokens == 64
    assert created.create_time.seconds > 0
    assert (created.default_sampling.temperature, created.default_sampling.top_k,
            created.default_sampling.seed) == (pytest.approx(0.5), 7, 11)
    got = shared_client.get_session(created.id)
    assert got.id == created.id and dict(got.labels) == dict(created.labels)
    other = shared_client.create_session()
    assert other.id != created.id
    assert other.ttl.seconds > 0  # the server's default TTL
    shared_client.delete_session(created.id)
    expect_error(lambda: shared_client.get_session(created.id), grpc.StatusCode.NOT_FOUND)
    expect_error(lambda: shared_client.delete_session(created.id), grpc.StatusCode.NOT_FOUND)
    shared_client.delete_session(other.id)


def test_list_sessions_pages_in_creation_order_and_filters_by_labels(shared_client):
    group = uuid.uuid4().hex[:12]
    ids = []
    for i in range(7):
        labels = {"group": group, "parity": "even" if i % 2 == 0 else "odd"}
        ids.append(shared_client.create_session(labels=labels).id)
    try:
        listed = shared_client.list_sessions(label_filter={"group": group}, page_size=3)
        assert [s.id for s in listed] == ids
        even = shared_client.list_sessions(label_filter={"group": group, "parity": "even"},
                                           page_size=2)
        assert [s.id for s in even] == ids[0::2]
        first = shared_client.session_stub.ListSessions(
            pb.ListSessionsRequest(page_size=3, label_filter={"group": group}))
        assert len(first.sessions) == 3 and first.next_page_token
        everything = {s.id for s in shared_client.list_sessions()}
        assert set(ids) <= everything
        assert shared_client.list_sessions(label_filter={"group": "nothing-" + group}) == []
    finally:
        for i in ids:
            shared_client.delete_session(i)


def test_idle_session_expires_after_its_ttl(shared_server, shared_client):
    session = shared_client.create_session(ttl_s=1)
    assert session.ttl.seconds == 1
    keep = shared_client.create_session(ttl_s=120)

    def gone():
        try:
            shared_client.get_session(session.id)
            return False
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
            return True

    wait_until(gone, timeout=10, message="the 1 s-TTL session to expire")
    assert shared_client.get_session(keep.id).id == keep.id
    assert shared_server.metrics().sum("mnemo_sessions_closed_total", reason="expired") >= 1
    shared_client.delete_session(keep.id)


def test_ingest_reports_progress_per_message_and_keeps_a_pending_tail(shared_client):
    session = shared_client.create_session()
    seen = []
    chunks = [[(7 * i + j) % 1000 for j in range(5)] for i in range(10)]  # 50 ids, 5 a message
    final = shared_client.ingest(session.id, chunks, on_progress=seen.append)
    assert len(seen) == 11, "one progress per request message plus the final one"
    assert [p.tokens_ingested for p in seen[:10]] == list(range(5, 55, 5))
    assert all(not p.done and p.state_version == 0 for p in seen[:10])
    assert final is seen[-1] and final.done and final.state_version == 1
    assert final.tokens_ingested == 50
    assert 1 <= final.pending_tokens <= 16
    assert final.segments_processed * 16 + final.pending_tokens == 50
    got = shared_client.get_session(session.id)
    assert (got.tokens_seen, got.state_version, got.pending_tokens) == \
        (50, 1, final.pending_tokens)
    shared_client.delete_session(session.id)


def test_generate_streams_started_deltas_final(shared_client):
    session = shared_client.create_session()
    shared_client.ingest(session.id, [PROSE])
    before = shared_client.get_session(session.id)
    events = list(shared_client.generate(session.id, " And so", max_tokens=12, temperature=0,
                                         ignore_eos=True, logprobs=True, top_logprobs=3,
                                         commit="keep_all"))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "final"
    assert set(kinds[1:-1]) == {"delta"}
    started, final = events[0].started, events[-1].final
    deltas = [e.delta for e in events[1:-1]]
    prompt_tokens = len(shared_client.tokenize(" And so"))
    assert started.prompt_tokens == prompt_tokens == final.usage.prompt_tokens
    assert started.state_version_before == before.state_version
    assert started.memory_tokens_reused == before.tokens_seen == final.usage.memory_tokens
    ids = [i for d in deltas for i in d.ids]
    assert len(ids) == final.usage.generated_tokens == 12
    assert final.finish_reason == pb.FINISH_REASON_LENGTH
    assert final.text == "".join(d.text for d in deltas)
    assert final.state_version_after == before.state_version + 1
    logprobs = [lp for d in deltas for lp in d.logprobs]
    tops = [t for d in deltas for t in d.top_logprobs]
    assert [lp.id for lp in logprobs] == ids and len(tops) == 12
    for lp, top in zip(logprobs, tops):
        assert lp.logprob <= 0.0
        assert len(top.alternatives) == 3
        assert top.alternatives[0].id == lp.id  # greedy picks the most likely token
        assert top.alternatives[0].logprob == pytest.approx(lp.logprob, abs=1e-5)
        assert top.alternatives[0].logprob >= top.alternatives[1].logprob
    after = shared_client.get_session(session.id)
    assert after.tokens_seen == before.tokens_seen + prompt_tokens + 12
    assert after.state_version == final.state_version_after
    shared_client.delete_session(session.id)


def test_stop_strings_and_stop_ids_end_the_generation(shared_client):
    # Seeded sampling: the tiny random model's greedy text just repeats a token.
    args = dict(prompt="The licence", max_tokens=30, temperature=1.0, seed=3, ignore_eos=True)
    base = shared_client.generate_result(**args)
    assert base.final.finish_reason == pb.FINISH_REASON_LENGTH
    assert len(base.text) > 6
    stop = base.text[3:6]
    cut = shared_client.generate_result(stop=[stop], **args)
    assert cut.text == base.text[:base.text.find(stop)]
    assert cut.final.finish_reason == pb.FINISH_REASON_STOP_STRING
    assert cut.final.text == cut.text
    stop_id = base.ids[4]
    first = base.ids.index(stop_id)
    by_id = shared_client.generate_result(stop_ids=[stop_id], **args)
    assert by_id.ids == base.ids[:first + 1]  # the stop id is part of the output
    assert by_id.final.finish_reason == pb.FINISH_REASON_STOP_TOKEN


def test_sampling_is_reproducible_for_a_seed(shared_client):
    args = dict(prompt="The licence", max_tokens=20, temperature=0.9, top_k=50, ignore_eos=True)
    first = shared_client.generate_result(seed=7, **args)
    again = shared_client.generate_result(seed=7, **args)
    other = shared_client.generate_result(seed=8, **args)
    assert first.ids == again.ids
    assert other.ids != first.ids


def test_session_default_sampling_applies_when_the_request_sets_none(shared_client):
    sampling = {"temperature": 0.9, "top_k": 50, "seed": 5}
    session = shared_client.create_session(default_sampling=sampling)
    shared_client.ingest(session.id, [PROSE])
    implicit = shared_client.generate_result(session.id, max_tokens=16, ignore_eos=True,
                                             commit="scratch")
    explicit = shared_client.generate_result(session.id, max_tokens=16, ignore_eos=True,
                                             commit="scratch", sampling=sampling)
    greedy = shared_client.generate_result(session.id, max_tokens=16, ignore_eos=True,
                                           commit="scratch", temperature=0)
    assert implicit.ids == explicit.ids
    assert implicit.ids != greedy.ids
    shared_client.delete_session(session.id)


def test_score_reports_bits_and_leaves_the_session_unless_committed(shared_client):
    session = shared_client.create_session()
    shared_client.ingest(session.id, [PROSE])
    before = shared_client.get_session(session.id)
    text = " Everyone is permitted to copy."
    n = len(shared_client.tokenize(text))
    scored = shared_client.score(session.id, text=text)
    assert len(scored.tokens) == n  # with memory every token has context
    assert all(t.logprob <= 0 for t in scored.tokens)
    bits = -sum(t.logprob for t in scored.tokens) / 0.6931471805599453
    assert scored.total_bits == pytest.approx(bits, rel=1e-5)
    assert scored.bits_per_byte == pytest.approx(bits / len(text.strip().encode()), rel=0.1)
    assert scored.state_version == before.state_version
    assert shared_client.get_session(session.id).tokens_seen == before.tokens_seen
    again = shared_client.score(session.id, text=text)
    assert [t.logprob for t in again.tokens] == pytest.approx(
        [t.logprob for t in scored.tokens], abs=1e-5)
    committed = shared_client.score(session.id, text=text, commit=True)
    after = shared_client.get_session(session.id)
    assert committed.state_version == after.state_version == before.state_version + 1
    assert after.tokens_seen == before.tokens_seen + n
    one_shot = shared_client.score(text=text)
    assert len(one_shot.tokens) == n - 1  # no memory: the first token is not scored
    shared_client.delete_session(session.id)
