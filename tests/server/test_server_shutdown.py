"""Graceful shutdown: on SIGTERM the server stops taking requests (UNAVAILABLE; health
NOT_SERVING), lets running streams finish within --shutdown-grace, and exits 0."""

import threading
import time

import grpc
from mnemo.v1 import mnemo_pb2 as pb

from mnemo_client import health
from mnemo_client import MnemoClient


def test_sigterm_drains_running_streams_and_refuses_new_requests(start_server, decode_rate):
    grace = 20.0
    server = start_server(grace_s=grace)
    client = server.client(timeout=60)
    session = client.create_session()
    client.ingest(session.id, ["A document that is being continued while the server stops."])
    # About 3 s of decoding: long enough to be running at SIGTERM, short against the grace.
    max_tokens = int(max(200, decode_rate * 3))
    outcome = {}
    first_delta = threading.Event()

    def consume():
        try:
            result = client.generate_result(session.id, None, max_tokens=max_tokens,
                                            temperature=0, ignore_eos=True,
                                            on_delta=lambda d: first_delta.set())
            outcome["final"] = result.final
            outcome["ids"] = len(result.ids)
        except grpc.RpcError as e:
            outcome["error"] = (e.code(), e.details())
        finally:
            first_delta.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_delta.wait(timeout=30)
    assert "error" not in outcome, outcome
    sigterm_at = time.monotonic()
    server.terminate()

    # New requests are refused while draining (the listener may also be closed already:
    # UNAVAILABLE either way), and health no longer says SERVING.
    time.sleep(0.2)
    health_seen = None
    try:
        health_seen = health.STATUS_NAMES[server.health(timeout=2)]
    except grpc.RpcError as e:
        health_seen = e.code().name
    assert health_seen in ("NOT_SERVING", "UNAVAILABLE"), health_seen
    for attempt in (lambda: client.create_session(),
                    lambda: client.generate_text(prompt="new", max_tokens=2),
                    lambda: client.score(session.id, text="new text")):
        try:
            attempt()
            raise AssertionError("a new request succeeded after SIGTERM")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
    with MnemoClient(server.target, timeout=5) as fresh:  # a new connection too
        try:
            fresh.models()
            raise AssertionError("a new connection's request succeeded after SIGTERM")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())

    reader.join(timeout=grace + 30)
    assert not reader.is_alive()
    # The running stream was allowed to finish (it is far shorter than the grace).
    assert "final" in outcome, outcome
    assert outcome["final"].finish_reason == pb.FINISH_REASON_LENGTH
    assert outcome["ids"] == max_tokens
    code = server.wait_exit(timeout=grace + 10)
    assert code == 0, f"exit status {code}"
    assert time.monotonic() - sigterm_at < grace + 5
    client.close()
    server.stop(check=False)


def test_sigterm_cuts_streams_that_outlast_the_grace(start_server, decode_rate):
    grace = 1.0
    server = start_server(grace_s=grace)
    client = server.client(timeout=60)
    session = client.create_session()
    client.ingest(session.id, ["A document that is continued for far too long."])
    stream = client.generate(session.id, None, max_tokens=1_000_000, temperature=0,
                             ignore_eos=True)
    events = iter(stream)
    next(events)
    next(events)
    sigterm_at = time.monotonic()
    server.terminate()
    error = None
    try:
        for _ in events:
            pass
    except grpc.RpcError as e:
        error = e.code()
    assert error is not None, "a 1M-token stream finished within a 1 s grace"
    assert error in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                     grpc.StatusCode.ABORTED), error
    code = server.wait_exit(timeout=grace + 15)
    assert code == 0, f"exit status {code}"
    assert time.monotonic() - sigterm_at < grace + 10
    client.close()
    server.stop(check=False)
