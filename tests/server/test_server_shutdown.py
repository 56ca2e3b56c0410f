"""Graceful shutdown: on SIGTERM the server stops taking requests (UNAVAILABLE; health
NOT_SERVING), lets running streams finish within --shutdown-grace, and exits 0."""

import threading
import time

import grpc

from mnemo_client import health
from mnemo_client import MnemoClient


def test_sigterm_drains_running_streams_and_refuses_new_requests(start_server):
    grace = 20.0
    server = start_server(grace_s=grace)
    client = server.client(timeout=60)
    session = client.create_session()
    # The running request is an Ingest stream this test holds open: it is in flight at SIGTERM
    # and for as long as the checks below take, whatever the machine's speed, and it ends when
    # the test lets it (well within the grace).
    started = threading.Event()
    release = threading.Event()
    outcome = {}

    def chunks():
        yield "A document that is being continued"
        release.wait(timeout=grace)
        yield " while the server stops."

    def ingest():
        try:
            outcome["final"] = client.ingest(session.id, chunks(),
                                             on_progress=lambda p: started.set())
        except grpc.RpcError as e:
            outcome["error"] = (e.code(), e.details())
        finally:
            started.set()

    writer = threading.Thread(target=ingest)
    writer.start()
    assert started.wait(timeout=30)
    assert "error" not in outcome, outcome
    sigterm_at = time.monotonic()
    server.terminate()

    # New requests are refused while draining, and health no longer says SERVING.
    time.sleep(0.2)
    health_seen = None
    try:
        health_seen = health.STATUS_NAMES[server.health(timeout=2)]
    except grpc.RpcError as e:
        health_seen = e.code().name
    assert health_seen == "NOT_SERVING", health_seen
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
    assert writer.is_alive(), "the held Ingest ended before it was let go"

    # The running stream is allowed to finish within the grace, and commits.
    release.set()
    writer.join(timeout=grace + 30)
    assert not writer.is_alive()
    assert "final" in outcome, outcome
    assert outcome["final"].done
    assert outcome["final"].state_version == session.state_version + 1
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
