"""The Python client's retries against a real gRPC server in this process that plays a mnemo
replica: it answers each attempt from a script (SESSION_MOVED, DRAINING, a bare UNAVAILABLE, a
plain ABORTED, or success), with the status details a mnemo server sends, and counts attempts.

Needs the generated stubs on PYTHONPATH (as test_client_unit.py):

    PYTHONPATH=build/release/python:clients/python python -m pytest clients/python/tests
"""

import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

mnemo_pb2 = pytest.importorskip("mnemo.v1.mnemo_pb2")  # ctest puts the stubs on the path
mnemo_pb2_grpc = pytest.importorskip("mnemo.v1.mnemo_pb2_grpc")

from google.protobuf import any_pb2  # noqa: E402

from mnemo_client import MnemoClient, OutcomeUnknownError, RetryPolicy, error_reason  # noqa: E402
from mnemo_client.errors import ERROR_INFO_TYPE_URL  # noqa: E402
from mnemo_client.retry import failure_kind  # noqa: E402

pb = mnemo_pb2
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)


def status_details(code: grpc.StatusCode, message: str, reason: str) -> bytes:
    info = pb.ErrorInfo(reason=reason, domain="mnemo.v1", metadata={"session_id": "s1"})
    detail = any_pb2.Any(type_url=ERROR_INFO_TYPE_URL, value=info.SerializeToString())
    return pb.RpcStatus(code=code.value[0], message=message, details=[detail]).SerializeToString()


# What one attempt gets: "ok", or an error the fake server sends.
ERRORS = {
    "moved": (grpc.StatusCode.ABORTED, "session s1 moved to replica b", "SESSION_MOVED"),
    "draining": (grpc.StatusCode.UNAVAILABLE, "server draining", "DRAINING"),
    "unavailable": (grpc.StatusCode.UNAVAILABLE, "connection reset", ""),
    "aborted": (grpc.StatusCode.ABORTED, "state_version 4 != expected 3", ""),
    "not_found": (grpc.StatusCode.NOT_FOUND, "no session s1", ""),
}


class FakeReplica(mnemo_pb2_grpc.ModelServiceServicer, mnemo_pb2_grpc.SessionServiceServicer,
                  mnemo_pb2_grpc.InferenceServiceServicer):
    """Answers each attempt of a method with the next entry of its script (then "ok")."""

    def __init__(self):
        self.lock = threading.Lock()
        self.scripts: dict[str, list[str]] = {}
        self.attempts: dict[str, int] = {}
        self.metadata: dict[str, list[dict]] = {}
        self.requests: dict[str, list] = {}

    def script(self, method: str, *outcomes: str) -> None:
        self.scripts[method] = list(outcomes)

    def _next(self, method: str, context, request=None) -> str:
        with self.lock:
            self.attempts[method] = self.attempts.get(method, 0) + 1
            self.metadata.setdefault(method, []).append(dict(context.invocation_metadata()))
            self.requests.setdefault(method, []).append(request)
            script = self.scripts.get(method, [])
            return script.pop(0) if script else "ok"

    @staticmethod
    def _fail(context, outcome: str) -> None:
        code, message, reason = ERRORS[outcome]
        if reason:
            context.set_trailing_metadata(
                (("grpc-status-details-bin", status_details(code, message, reason)),))
        context.abort(code, message)

    def _unary(self, method, request, context, response):
        outcome = self._next(method, context, request)
        if outcome != "ok":
            self._fail(context, outcome)
        return response

    def ListModels(self, request, context):
        return self._unary("ListModels", request, context,
                           pb.ListModelsResponse(models=[pb.Model(name="tiny")]))

    def CreateSession(self, request, context):
        return self._unary("CreateSession", request, context, pb.Session(id="s1"))

    def GetSession(self, request, context):
        return self._unary("GetSession", request, context,
                           pb.Session(id=request.session_id, state_version=3))

    def DeleteSession(self, request, context):
        return self._unary("DeleteSession", request, context, pb.DeleteSessionResponse())

    def ForkSession(self, request, context):
        return self._unary("ForkSession", request, context, pb.Session(id="child"))

    def Score(self, request, context):
        return self._unary("Score", request, context, pb.ScoreResponse(total_bits=1.5))

    def ImportSession(self, request_iterator, context):
        messages = list(request_iterator)
        return self._unary("ImportSession", messages, context,
                           pb.Session(id=messages[0].session_id or "imported"))

    def Ingest(self, request_iterator, context):
        messages = list(request_iterator)  # the whole document, then the answer
        outcome = self._next("Ingest", context, messages)
        if outcome != "ok":
            yield pb.IngestProgress(tokens_ingested=1)  # progress before the refusal
            self._fail(context, outcome)
        yield pb.IngestProgress(tokens_ingested=len(messages), done=True, state_version=4)

    def Generate(self, request, context):
        outcome = self._next("Generate", context, request)
        if outcome.startswith("late_"):  # one event, then the error
            yield pb.GenerateEvent(delta=pb.Delta(text="partial"))
            self._fail(context, outcome.removeprefix("late_"))
        elif outcome != "ok":
            self._fail(context, outcome)
        yield pb.GenerateEvent(delta=pb.Delta(text="hello"))
        yield pb.GenerateEvent(final=pb.Final(finish_reason=pb.FINISH_REASON_LENGTH))

    def ExportSession(self, request, context):
        outcome = self._next("ExportSession", context, request)
        if outcome != "ok":
            self._fail(context, outcome)
        yield pb.SessionSnapshotChunk(data=b"abc", total_bytes=6)
        yield pb.SessionSnapshotChunk(data=b"def")


def start_server(replica: FakeReplica, port: int = 0):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.so_reuseport", 0)])
    mnemo_pb2_grpc.add_ModelServiceServicer_to_server(replica, server)
    mnemo_pb2_grpc.add_SessionServiceServicer_to_server(replica, server)
    mnemo_pb2_grpc.add_InferenceServiceServicer_to_server(replica, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


@pytest.fixture
def replica():
    fake = FakeReplica()
    server, port = start_server(fake)
    fake.target = f"127.0.0.1:{port}"
    yield fake
    server.stop(grace=None)


@pytest.fixture
def client(replica):
    with MnemoClient(replica.target, timeout=10, retry=FAST) as c:
        yield c


# --- what is retried ----------------------------------------------------------------------

def test_session_moved_is_retried_with_its_reason_decoded(replica, client):
    replica.script("GetSession", "moved", "moved")
    assert client.get_session("s1").id == "s1"
    assert replica.attempts["GetSession"] == 3


def test_the_error_reason_of_a_refusal_is_readable(replica):
    replica.script("GetSession", "moved")
    with MnemoClient(replica.target, timeout=10, retry=None) as c:
        with pytest.raises(grpc.RpcError) as raised:
            c.get_session("s1")
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert error_reason(raised.value) == "SESSION_MOVED"
    assert failure_kind(raised.value) == "moved"


def test_plain_aborted_is_not_retried(replica, client):
    replica.script("GetSession", "aborted")
    with pytest.raises(grpc.RpcError) as raised:
        client.get_session("s1")
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert not isinstance(raised.value, OutcomeUnknownError)
    assert replica.attempts["GetSession"] == 1


def test_draining_is_retried_even_for_an_unpinned_change(replica, client):
    replica.script("CreateSession", "draining")
    assert client.create_session().id == "s1"
    assert replica.attempts["CreateSession"] == 2


def test_other_codes_are_not_retried(replica, client):
    replica.script("GetSession", "not_found")
    with pytest.raises(grpc.RpcError) as raised:
        client.get_session("s1")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert replica.attempts["GetSession"] == 1


def test_max_attempts_bounds_the_retries(replica, client):
    replica.script("ListModels", *["moved"] * 10)
    with pytest.raises(grpc.RpcError) as raised:
        client.models()
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert replica.attempts["ListModels"] == FAST.max_attempts


def test_the_deadline_bounds_the_retries(replica):
    replica.script("ListModels", *["moved"] * 10)
    slow = RetryPolicy(max_attempts=10, initial_backoff=1.0, max_backoff=1.0)
    with MnemoClient(replica.target, timeout=0.3, retry=slow) as c:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError):
            c.models()
        # The first backoff (0.5–1 s) would end past the 0.3 s deadline: no second attempt.
        assert time.monotonic() - start < 0.3
    assert replica.attempts["ListModels"] == 1


def test_retry_none_turns_retries_off(replica):
    replica.script("ListModels", "moved")
    with MnemoClient(replica.target, timeout=10, retry=None) as c:
        with pytest.raises(grpc.RpcError):
            c.models()
    assert replica.attempts["ListModels"] == 1


# --- transport failures: read-only, pinned, unpinned ----------------------------------------

def test_read_only_calls_are_retried_after_a_transport_failure(replica, client):
    replica.script("Score", "unavailable", "unavailable")
    assert client.score("s1", text="x").total_bits == 1.5  # commit=False: read-only
    assert replica.attempts["Score"] == 3


def test_unpinned_changes_are_not_retried_after_a_transport_failure(replica, client):
    for method, call in [("Score", lambda: client.score("s1", text="x", commit=True)),
                         ("CreateSession", client.create_session),
                         ("ForkSession", lambda: client.fork_session("s1", 3)),
                         ("DeleteSession", lambda: client.delete_session("s1"))]:
        replica.script(method, "unavailable")
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, method
        assert replica.attempts[method] == 1, method


def test_a_pinned_change_is_retried_after_a_transport_failure(replica, client):
    replica.script("Score", "unavailable")
    client.score("s1", text="x", commit=True, expected_state_version=3)
    assert replica.attempts["Score"] == 2


def test_a_refused_retry_of_a_pinned_change_is_outcome_unknown(replica, client):
    replica.script("Score", "unavailable", "aborted")
    with pytest.raises(OutcomeUnknownError) as raised:
        client.score("s1", text="x", commit=True, expected_state_version=3)
    error = raised.value
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # the original failure
    assert error.original.code() == grpc.StatusCode.UNAVAILABLE
    assert error.retry_error.code() == grpc.StatusCode.ABORTED
    assert "outcome unknown" in error.details()
    assert replica.attempts["Score"] == 2


def test_a_pinned_delete_that_finds_the_session_gone_is_outcome_unknown(replica, client):
    replica.script("DeleteSession", "unavailable", "not_found")
    with pytest.raises(OutcomeUnknownError):
        client.delete_session("s1", expected_state_version=3)


def test_session_moved_after_a_transport_failure_is_still_retried(replica, client):
    replica.script("Score", "unavailable", "moved")
    client.score("s1", text="x", commit=True, expected_state_version=3)
    assert replica.attempts["Score"] == 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_call_that_never_reached_a_server_is_retried_even_when_unpinned():
    port = _closed_port()
    with MnemoClient(f"127.0.0.1:{port}", timeout=5, retry=None) as c:
        with pytest.raises(grpc.RpcError) as raised:
            c.create_session()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure_kind(raised.value) == "not_connected", raised.value.details()

    # The server comes up while the client backs off: the unpinned CreateSession gets through.
    fake = FakeReplica()
    started = {}

    def start_later():
        time.sleep(0.3)
        started["server"] = start_server(fake, port)[0]

    patient = RetryPolicy(max_attempts=40, initial_backoff=0.05, max_backoff=0.2)
    quick_reconnect = [("grpc.initial_reconnect_backoff_ms", 50),
                       ("grpc.min_reconnect_backoff_ms", 50),
                       ("grpc.max_reconnect_backoff_ms", 100)]
    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with MnemoClient(f"127.0.0.1:{port}", timeout=10, retry=patient,
                         options=quick_reconnect) as c:
            assert c.create_session().id == "s1"
    finally:
        thread.join()
        if "server" in started:
            started["server"].stop(grace=None)
    assert fake.attempts["CreateSession"] == 1


# --- streams ------------------------------------------------------------------------------

def test_ingest_is_retried_by_sending_the_chunks_again(replica, client):
    replica.script("Ingest", "moved")
    chunks = (f"chunk {i} " for i in range(5))  # a generator: read once
    seen = []
    final = client.ingest("s1", chunks, on_progress=seen.append)
    assert final.done and final.tokens_ingested == 5
    first, second = replica.requests["Ingest"]
    assert [m.text for m in second] == [m.text for m in first] == [f"chunk {i} " for i in range(5)]
    assert second[0].session_id == "s1"
    assert replica.attempts["Ingest"] == 2


def test_ingest_beyond_the_replay_buffer_is_not_retried(replica):
    replica.script("Ingest", "moved")
    small = RetryPolicy(initial_backoff=0.01, replay_buffer_bytes=64)
    with MnemoClient(replica.target, timeout=10, retry=small) as c:
        with pytest.raises(grpc.RpcError) as raised:
            c.ingest("s1", ("x" * 40 for _ in range(3)))
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert replica.attempts["Ingest"] == 1


def test_unpinned_ingest_is_not_retried_after_a_transport_failure(replica, client):
    replica.script("Ingest", "unavailable")
    with pytest.raises(grpc.RpcError):
        client.ingest("s1", ["a", "b"])
    assert replica.attempts["Ingest"] == 1


def test_generate_is_retried_before_its_first_event(replica, client):
    replica.script("Generate", "draining", "moved")
    text, final = client.generate_text("s1", "hi", max_tokens=3)
    assert text == "hello" and final.finish_reason == pb.FINISH_REASON_LENGTH
    assert replica.attempts["Generate"] == 3


def test_generate_is_not_retried_after_an_event(replica, client):
    replica.script("Generate", "late_moved")
    events = []
    with pytest.raises(grpc.RpcError) as raised:
        for event in client.generate("s1", "hi", max_tokens=3):
            events.append(event)
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert [e.delta.text for e in events] == ["partial"]
    assert replica.attempts["Generate"] == 1


def test_scratch_generate_is_read_only(replica, client):
    replica.script("Generate", "unavailable")
    text, _ = client.generate_text("s1", "hi", max_tokens=3, commit="scratch")
    assert text == "hello" and replica.attempts["Generate"] == 2
    replica.script("Generate", "unavailable")
    with pytest.raises(grpc.RpcError):
        client.generate_text("s1", "hi", max_tokens=3, commit="keep_all")


def test_export_and_import_are_retried(replica, client):
    replica.script("ExportSession", "moved")
    assert client.export_session("s1") == b"abcdef"
    assert replica.attempts["ExportSession"] == 2
    replica.script("ImportSession", "draining")
    client.import_session(b"x" * 10, chunk_bytes=4)
    first, second = replica.requests["ImportSession"]
    assert b"".join(m.data for m in second) == b"x" * 10 == b"".join(m.data for m in first)
    replica.script("ImportSession", "moved")
    client.import_session(iter([b"ab", b"cd"]), session_id="s1", expected_state_version=3)
    assert b"".join(m.data for m in replica.requests["ImportSession"][-1]) == b"abcd"


# --- session affinity -----------------------------------------------------------------------

def test_every_call_naming_a_session_sends_x_session_id(replica, client):
    client.get_session("s1")
    client.delete_session("s1")
    client.fork_session("s1")
    client.score("s1", text="x")
    client.ingest("s1", ["a"])
    client.generate_text("s1", "hi")
    client.export_session("s1")
    client.import_session(b"x", session_id="s1", expected_state_version=3)
    for method in ("GetSession", "DeleteSession", "ForkSession", "Score", "Ingest", "Generate",
                   "ExportSession", "ImportSession"):
        assert replica.metadata[method][-1].get("x-session-id") == "s1", method
    client.create_session()
    client.models()
    assert "x-session-id" not in replica.metadata["CreateSession"][-1]


# --- bearer token -----------------------------------------------------------------------------

def test_a_token_is_sent_on_every_call_and_retry(replica):
    replica.script("GetSession", "moved")
    with MnemoClient(replica.target, timeout=10, retry=FAST, token="t0k") as c:
        c.models()
        c.create_session()
        c.get_session("s1")
        c.delete_session("s1")
        c.fork_session("s1")
        c.score("s1", text="x")
        c.ingest("s1", ["a"])
        c.generate_text("s1", "hi")
        c.export_session("s1")
        c.import_session(b"x", session_id="s1", expected_state_version=3)
    for method, calls in replica.metadata.items():
        for metadata in calls:
            assert metadata.get("authorization") == "Bearer t0k", method
    assert len(replica.metadata["GetSession"]) == 2, "the retry carries it too"
    with MnemoClient(replica.target, timeout=10) as c:
        c.models()
    assert "authorization" not in replica.metadata["ListModels"][-1]
    for bad in ("", "a\nb"):
        with pytest.raises(ValueError):
            MnemoClient(replica.target, token=bad)
