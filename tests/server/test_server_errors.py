"""Every kind of bad input gets its status code (the proto's header comment), INVALID_ARGUMENT
with a BadRequest detail naming the field, and the server stays up."""

import threading

import grpc
import pytest
from mnemo.v1 import mnemo_pb2 as pb

from mnemo_client import bad_request_violations
from mnemo_client import health
from server_harness import (expect_error, pb_bytes, pb_varint, raw_stream_stream, raw_unary,
                            raw_unary_stream)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNKNOWN_SESSION = "0123456789abcdef0123456789abcdef"


def expect_invalid(fn, field=None):
    """fn() fails with INVALID_ARGUMENT carrying a BadRequest; `field` (if given) must be named
    by one violation (exactly, or as the end of a longer path)."""
    error = expect_error(fn, INVALID)
    violations = bad_request_violations(error)
    assert violations, f"INVALID_ARGUMENT without a BadRequest detail: {error.details()}"
    assert all(desc for _, desc in violations), violations
    if field is not None:
        fields = [f for f, _ in violations]
        assert any(f == field or f.endswith("." + field) or f.startswith(field + "[")
                   or f.startswith(field + ".") for f in fields), \
            f"no violation names {field!r}: {violations}"
    return violations


@pytest.fixture(scope="module")
def session(shared_client):
    s = shared_client.create_session(labels={"suite": "errors"})
    shared_client.ingest(s.id, ["Some document text to make the session non-empty."])
    yield shared_client.get_session(s.id)
    shared_client.delete_session(s.id)


# --- missing or malformed input ----------------------------------------------------------

def test_score_without_input_is_invalid(shared_client, session):
    expect_invalid(lambda: shared_client.score(session.id))
    expect_invalid(lambda: shared_client.score())
    expect_invalid(lambda: shared_client.score(session.id, text=""))
    expect_invalid(lambda: shared_client.score(session.id, ids=[]))


def test_generation_with_nothing_to_continue_is_invalid(shared_client):
    empty = shared_client.create_session()
    try:
        expect_invalid(lambda: shared_client.generate_text(empty.id, None, max_tokens=4))
        expect_invalid(lambda: shared_client.generate_text(empty.id, "", max_tokens=4))
        expect_invalid(lambda: shared_client.generate_text(prompt=None, max_tokens=4))
        expect_invalid(lambda: shared_client.generate_text(prompt=[], max_tokens=4))
        assert shared_client.get_session(empty.id).state_version == 0
    finally:
        shared_client.delete_session(empty.id)


@pytest.mark.parametrize("bad_id", [1000, 5000, -1])
def test_token_ids_outside_the_vocabulary_are_invalid(shared_client, session, bad_id):
    ids = [1, 2, 3, bad_id, 4]
    expect_invalid(lambda: shared_client.score(session.id, ids=ids), field="ids[3]")
    expect_invalid(lambda: shared_client.generate_text(session.id, ids, max_tokens=2),
                   field="ids[3]")
    expect_invalid(lambda: shared_client.ingest(session.id, [[7, 8], ids]))
    expect_invalid(lambda: shared_client.detokenize(ids), field="ids[3]")
    expect_invalid(lambda: shared_client.generate_text(session.id, "x", max_tokens=2,
                                                       stop_ids=[bad_id]))


def test_invalid_utf8_is_refused_and_the_server_stays_up(shared_server, shared_client, session,
                                                         capsys):
    """Python's protobuf will not put invalid UTF-8 in a string field, so these requests are
    serialized by hand. The C++ protobuf parser may refuse them before the service sees them;
    the observed codes are printed (run with -s) and must not be OK."""
    bad = b"abc\xff\xfedef"
    channel = shared_server.channel
    calls = {
        "Tokenize.text": lambda: raw_unary(
            channel, "/mnemo.v1.ModelService/Tokenize", pb_bytes(2, bad)),
        "Score.text": lambda: raw_unary(
            channel, "/mnemo.v1.InferenceService/Score",
            pb_bytes(1, session.id) + pb_bytes(4, bad)),
        "Generate.stop": lambda: raw_unary_stream(
            channel, "/mnemo.v1.InferenceService/Generate",
            pb_bytes(1, session.id) + pb_bytes(4, "x") + pb_varint(6, 2) + pb_bytes(8, bad)),
        "Generate.text": lambda: raw_unary_stream(
            channel, "/mnemo.v1.InferenceService/Generate",
            pb_bytes(4, bad) + pb_varint(6, 2)),
        "CreateSession.labels": lambda: raw_unary(
            channel, "/mnemo.v1.SessionService/CreateSession",
            pb_bytes(3, pb_bytes(1, "key") + pb_bytes(2, bad))),
    }
    observed = {}
    for name, call in calls.items():
        try:
            call()
            observed[name] = "OK"
        except grpc.RpcError as e:
            observed[name] = f"{e.code().name}: {e.details()}"
    with capsys.disabled():
        print("\ninvalid UTF-8 observed:", observed)
    for name, outcome in observed.items():
        assert not outcome.startswith("OK"), f"{name} accepted invalid UTF-8"
        assert outcome.split(":")[0] == "INVALID_ARGUMENT", (name, outcome)
    assert shared_server.alive()
    assert shared_server.health() == health.SERVING
    assert shared_client.tokenize("still fine") != []
    assert shared_client.get_session(session.id).state_version == session.state_version


def test_ingest_with_invalid_utf8_fails_and_changes_nothing(shared_server, shared_client):
    """Invalid UTF-8 mid-stream must fail the whole stream (not end it early and commit the
    text before it): "cancelled or failed, the session stays at its previous version"."""
    s = shared_client.create_session()
    try:
        shared_client.ingest(s.id, ["The first part of a document. "])
        before = shared_client.get_session(s.id)
        requests = [pb_bytes(1, s.id) + pb_bytes(3, "More text that is fine. "),
                    pb_bytes(3, b"then \xff\xfe garbage "), pb_bytes(3, "and a valid tail.")]
        code = "OK"
        try:
            raw_stream_stream(shared_server.channel, "/mnemo.v1.InferenceService/Ingest",
                              requests)
        except grpc.RpcError as e:
            code = e.code().name
        after = shared_client.get_session(s.id)
        assert code == "INVALID_ARGUMENT", code
        assert (after.state_version, after.tokens_seen) == \
            (before.state_version, before.tokens_seen)
    finally:
        shared_client.delete_session(s.id)


def test_a_request_that_did_not_parse_does_not_fail_the_next_one(shared_server, shared_client):
    """A parse failure is reported to its own call only: a valid request handled next (quite
    likely on the same server thread) must not inherit it."""
    s = shared_client.create_session()
    try:
        for round_ in range(12):
            with pytest.raises(grpc.RpcError) as bad:
                raw_unary_stream(shared_server.channel, "/mnemo.v1.InferenceService/Generate",
                                 pb_bytes(4, b"\xff") + pb_varint(6, 2))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            final = shared_client.ingest(s.id, [[5, 6, 7]])
            assert final.done and final.state_version == round_ + 1
    finally:
        shared_client.delete_session(s.id)


# --- unknown names --------------------------------------------------------------------------

def test_unknown_model_is_not_found(shared_client):
    expect_error(lambda: shared_client.model("nope"), NOT_FOUND)
    expect_error(lambda: shared_client.create_session(model="nope"), NOT_FOUND)
    expect_error(lambda: shared_client.tokenize("x", model="nope"), NOT_FOUND)
    expect_error(lambda: shared_client.detokenize([1], model="nope"), NOT_FOUND)
    expect_error(lambda: shared_client.generate_text(prompt="x", model="nope", max_tokens=2),
                 NOT_FOUND)
    expect_error(lambda: shared_client.score(text="x y", model="nope"), NOT_FOUND)


def test_unknown_session_is_not_found(shared_client):
    s = UNKNOWN_SESSION
    expect_error(lambda: shared_client.get_session(s), NOT_FOUND)
    expect_error(lambda: shared_client.delete_session(s), NOT_FOUND)
    expect_error(lambda: shared_client.fork_session(s), NOT_FOUND)
    expect_error(lambda: shared_client.generate_text(s, "x", max_tokens=2), NOT_FOUND)
    expect_error(lambda: shared_client.score(s, text="x"), NOT_FOUND)
    expect_error(lambda: shared_client.ingest(s, ["x"]), NOT_FOUND)
    # A malformed id names no session either (NOT_FOUND or INVALID_ARGUMENT).
    code = None
    try:
        shared_client.get_session("not-a-session-id")
    except grpc.RpcError as e:
        code = e.code()
    assert code in (NOT_FOUND, INVALID)


# --- parameters out of range ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    (dict(top_p=2.0), "sampling.top_p"),
    (dict(top_p=-0.5), "sampling.top_p"),
    (dict(temperature=-1.0), "sampling.temperature"),
    (dict(temperature=101.0), "sampling.temperature"),
    (dict(temperature=float("nan")), "sampling.temperature"),
    (dict(repetition_penalty=0.5), "sampling.repetition_penalty"),
    (dict(repetition_penalty=11.0), "sampling.repetition_penalty"),
    (dict(top_k=-1), "sampling.top_k"),
    (dict(top_logprobs=21), "top_logprobs"),
    (dict(top_logprobs=-1), "top_logprobs"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=-5), "max_tokens"),
    (dict(max_tokens=1_000_001), "max_tokens"),  # above --max-generate-tokens
    (dict(stop=[f"s{i}" for i in range(17)]), "stop"),
])
def test_generation_parameters_out_of_range_are_invalid(shared_client, session, kwargs, field):
    args = dict(max_tokens=4)
    args.update(kwargs)
    expect_invalid(lambda: shared_client.generate_text(session.id, "x", commit="scratch",
                                                       **args), field=field)
    assert shared_client.get_session(session.id).state_version == session.state_version


def test_max_generate_tokens_flag_bounds_requests(start_server):
    server = start_server("--max-generate-tokens", "8", base=False)
    with server.client() as client:
        _, final = client.generate_text(prompt="The licence", max_tokens=8, ignore_eos=True)
        assert final.usage.generated_tokens == 8
        expect_invalid(lambda: client.generate_text(prompt="The licence", max_tokens=9),
                       field="max_tokens")


@pytest.mark.parametrize("kwargs, field", [
    (dict(labels={"Upper": "x"}), None),
    (dict(labels={"": "x"}), None),
    (dict(labels={"k" * 64: "x"}), None),
    (dict(labels={"k": "v" * 257}), None),
    (dict(labels={f"k{i}": "v" for i in range(17)}), "labels"),
    (dict(memory_tokens=65), "memory_tokens"),
    (dict(memory_tokens=-1), "memory_tokens"),
    (dict(ttl_s=-5), "ttl"),
    (dict(ttl_s=30 * 24 * 3600), "ttl"),  # above the default --max-session-ttl (7 days)
])
def test_session_parameters_out_of_range_are_invalid(shared_client, kwargs, field):
    expect_invalid(lambda: shared_client.create_session(**kwargs), field=field)


def test_list_parameters_out_of_range_are_invalid(shared_client):
    expect_invalid(lambda: shared_client.session_stub.ListSessions(
        pb.ListSessionsRequest(page_size=1001)), field="page_size")
    expect_invalid(lambda: shared_client.session_stub.ListSessions(
        pb.ListSessionsRequest(page_size=-1)), field="page_size")
    expect_invalid(lambda: shared_client.session_stub.ListSessions(
        pb.ListSessionsRequest(page_token="garbage!")), field="page_token")


def test_ingest_must_name_a_session_first(shared_client):
    requests = iter([pb.IngestRequest(text="no session named")])
    try:
        list(shared_client.inference_stub.Ingest(requests, timeout=30))
        pytest.fail("an Ingest without a session id succeeded")
    except grpc.RpcError as e:
        assert e.code() in (INVALID, NOT_FOUND), e


# --- quotas ---------------------------------------------------------------------------------

def test_session_quota_is_resource_exhausted(start_server):
    server = start_server("--max-sessions", "2")
    with server.client() as client:
        first = client.create_session()
        second = client.create_session()
        error = expect_error(lambda: client.create_session(),
                             grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert error.details()
        expect_error(lambda: client.fork_session(first.id), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert len(client.list_sessions()) == 2
        client.delete_session(second.id)
        third = client.create_session()
        assert {s.id for s in client.list_sessions()} == {first.id, third.id}
        # The rejections are counted.
        metrics = server.metrics()
        assert metrics.sum("mnemo_requests_total", rpc="CreateSession",
                           code="RESOURCE_EXHAUSTED") == 1
        assert metrics.sum("mnemo_requests_total", rpc="ForkSession",
                           code="RESOURCE_EXHAUSTED") == 1


def test_full_step_queue_is_resource_exhausted(start_server):
    server = start_server("--max-queue", "1")
    outcomes = []
    lock = threading.Lock()
    with server.client() as client:
        def run(i):
            try:
                client.generate_text(prompt=f"Thread {i} says", max_tokens=100, temperature=0,
                                     ignore_eos=True)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            with lock:
                outcomes.append(code)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        rejected = outcomes.count("RESOURCE_EXHAUSTED")
        assert rejected >= 1 and "OK" in outcomes, outcomes
        metrics = server.metrics()
        assert metrics.sum("mnemo_requests_rejected_total", reason="queue_full") == rejected
        assert metrics.sum("mnemo_requests_total", rpc="Generate",
                           code="RESOURCE_EXHAUSTED") == rejected
        # Capacity comes back: a lone request runs.
        _, final = client.generate_text(prompt="Alone", max_tokens=5, ignore_eos=True)
        assert final.usage.generated_tokens == 5
