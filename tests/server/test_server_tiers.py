"""Session states beyond --device-state-budget are demoted to host memory (least recently used
first) and promoted back on their next request, exactly: the results equal those of a server
that never moved them."""

import grpc
import pytest
from mnemo.v1 import mnemo_pb2 as pb

from server_harness import assert_same_generation, document, expect_error, odd_chunks

PROBE = " Licensed works, modifications and larger works may be distributed."


def greedy_scratch(client, session_id, prompt=None, max_tokens=16):
    return client.generate_result(session_id, prompt, max_tokens=max_tokens, temperature=0,
                                  ignore_eos=True, commit="scratch", logprobs=True)


@pytest.fixture(scope="module")
def doc():
    return document("Apache-2.0", unicode_tail=True)[-3000:]


@pytest.fixture(scope="module")
def reference(shared_client, doc):
    """Score and continuation of the document on the shared server (ample budget)."""
    session = shared_client.create_session()
    shared_client.ingest(session.id, odd_chunks(doc, seed=5))
    assert shared_client.get_session(session.id).tier == pb.STATE_TIER_DEVICE
    score = shared_client.score(session.id, text=PROBE)
    continuation = greedy_scratch(shared_client, session.id)
    shared_client.delete_session(session.id)
    return score, continuation


def tier(client, session_id):
    return client.get_session(session_id).tier


def test_demotion_and_promotion_reproduce_the_same_results(start_server, model_info, doc,
                                                           reference):
    state_bytes = model_info.state_bytes_per_session
    server = start_server("--device-state-budget", str(state_bytes))  # room for one state
    ref_score, ref_continuation = reference
    with server.client() as client:
        a = client.create_session()
        client.ingest(a.id, odd_chunks(doc, seed=5))
        assert tier(client, a.id) == pb.STATE_TIER_DEVICE
        b = client.create_session()  # needs the device room: `a` (idle) moves to the host
        assert tier(client, a.id) == pb.STATE_TIER_HOST
        assert tier(client, b.id) == pb.STATE_TIER_DEVICE
        described = client.get_session(a.id)
        assert described.state_bytes == state_bytes
        metrics = server.metrics()
        assert metrics.sum("mnemo_sessions", tier="host") == 1
        assert metrics.sum("mnemo_sessions", tier="device") == 1
        assert metrics.sum("mnemo_session_state_bytes", tier="host") == state_bytes
        assert metrics.sum("mnemo_session_state_bytes", tier="device") == state_bytes
        assert metrics.sum("mnemo_session_tier_moves_total", **{"from": "device",
                                                                "to": "host"}) == 1

        # `a`'s next request promotes it (demoting `b`) and computes exactly what it would have.
        score = client.score(a.id, text=PROBE)
        assert [t.id for t in score.tokens] == [t.id for t in ref_score.tokens]
        assert [t.logprob for t in score.tokens] == pytest.approx(
            [t.logprob for t in ref_score.tokens], abs=1e-5)
        assert tier(client, a.id) == pb.STATE_TIER_DEVICE
        assert tier(client, b.id) == pb.STATE_TIER_HOST
        continuation = greedy_scratch(client, a.id)
        assert_same_generation(continuation, ref_continuation, tol=1e-5)
        assert continuation.text == ref_continuation.text

        # A generation on the demoted `b` reports its state as promoted.
        client.ingest(b.id, ["A second document."])
        assert tier(client, b.id) == pb.STATE_TIER_DEVICE
        assert tier(client, a.id) == pb.STATE_TIER_HOST
        greedy_scratch(client, a.id, max_tokens=2)
        greedy_scratch(client, b.id, " more", max_tokens=2)
        metrics = server.metrics()
        moves_down = metrics.sum("mnemo_session_tier_moves_total", **{"from": "device",
                                                                       "to": "host"})
        moves_up = metrics.sum("mnemo_session_tier_moves_total", **{"from": "host",
                                                                     "to": "device"})
        assert moves_down == 5 and moves_up == 4, metrics.select(
            "mnemo_session_tier_moves_total")
        assert metrics.sum("mnemo_time_to_first_token_seconds_count",
                           state_source="promoted") >= 2

        # A demoted session can be deleted; its bytes leave the accounting. (No fork here: with
        # room for one state, a fork needs two on the device and is RESOURCE_EXHAUSTED.)
        assert tier(client, a.id) == pb.STATE_TIER_HOST
        for s in (a.id, b.id):
            client.delete_session(s)
        metrics = server.metrics()
        assert metrics.sum("mnemo_session_state_bytes") == 0
        assert metrics.sum("mnemo_sessions") == 0


def test_no_device_room_while_the_only_state_is_busy(start_server, model_info, doc):
    server = start_server("--device-state-budget", str(model_info.state_bytes_per_session))
    with server.client() as client:
        a = client.create_session()
        client.ingest(a.id, [doc])
        b = client.create_session()
        client.ingest(b.id, ["Another document, demoting the first one."])
        assert tier(client, a.id) == pb.STATE_TIER_HOST
        stream = client.generate(b.id, None, max_tokens=1_000_000, temperature=0,
                                 ignore_eos=True)
        events = iter(stream)
        next(events)
        next(events)  # `b` is running on the device: it cannot be demoted now
        try:
            error = expect_error(lambda: client.score(a.id, text=PROBE),
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert error.details()
        finally:
            stream.cancel()
        assert tier(client, a.id) == pb.STATE_TIER_HOST
