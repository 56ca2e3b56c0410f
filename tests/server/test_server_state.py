"""What requests do to a session's state: forks are independent copies, commit modes keep what
they say, failed / cancelled / timed-out requests leave the session exactly at its previous
version, and one request at a time runs on a session (the second is refused with ABORTED)."""

import threading
import time

import grpc
import pytest

from server_harness import (assert_same_generation, document, expect_error, logprob_values,
                            odd_chunks, retry_while_aborted, wait_until)

PROBE = " Licensed works, modifications and larger works may be distributed."


@pytest.fixture(scope="module")
def doc():
    # 2.3 KB: a few dozen segments, quick to ingest.
    return document("Apache-2.0", unicode_tail=False)[:2300]


def new_session(client, doc, **kwargs):
    session = client.create_session(**kwargs)
    client.ingest(session.id, odd_chunks(doc, seed=7))
    return client.get_session(session.id)


def greedy(client, session_id, prompt, max_tokens=16, commit="keep_all", **kwargs):
    """A greedy generation with per-token logprobs (compared by assert_same_generation)."""
    return client.generate_result(session_id, prompt, max_tokens=max_tokens, temperature=0,
                                  ignore_eos=True, commit=commit, logprobs=True, **kwargs)


def logprobs(score_response):
    return [t.logprob for t in score_response.tokens]


# --- b. fork --------------------------------------------------------------------------------

def test_fork_is_an_independent_copy(shared_client, doc):
    source = new_session(shared_client, doc, labels={"role": "source"})
    control = new_session(shared_client, doc)  # the same document, never forked
    fork = shared_client.fork_session(source.id, labels={"role": "fork"})
    assert fork.id != source.id
    assert dict(fork.labels) == {"role": "fork"}
    assert fork.tokens_seen == source.tokens_seen
    assert fork.pending_tokens == source.pending_tokens
    assert fork.model == source.model

    on_fork = greedy(shared_client, fork.id, " The fork says")
    on_fork_2 = greedy(shared_client, fork.id, " and then")
    on_source = greedy(shared_client, source.id, " Meanwhile the source")
    # The fork continued the source's document…
    assert_same_generation(on_fork, greedy(shared_client, control.id, " The fork says",
                                           commit="scratch"))
    # …and what happened to it did not reach the source: the source behaves like a session
    # that never had a fork.
    assert_same_generation(on_source, greedy(shared_client, control.id,
                                             " Meanwhile the source"))
    assert logprobs(shared_client.score(source.id, text=PROBE)) == pytest.approx(
        logprobs(shared_client.score(control.id, text=PROBE)), abs=1e-5)
    assert logprobs(shared_client.score(fork.id, text=PROBE)) != pytest.approx(
        logprobs(shared_client.score(control.id, text=PROBE)), abs=1e-3)
    described_fork = shared_client.get_session(fork.id)
    described_source = shared_client.get_session(source.id)
    prompt_fork = len(shared_client.tokenize(" The fork says")) + len(
        shared_client.tokenize(" and then"))
    assert described_fork.tokens_seen == source.tokens_seen + prompt_fork + 32
    assert described_source.tokens_seen == source.tokens_seen + len(
        shared_client.tokenize(" Meanwhile the source")) + 16
    assert described_source.state_version == source.state_version + 1
    # Deleting the source leaves the fork usable.
    shared_client.delete_session(source.id)
    again = greedy(shared_client, fork.id, " Still here", commit="scratch")
    assert again.final.usage.generated_tokens == 16
    assert on_fork_2.final.usage.generated_tokens == 16
    for s in (fork.id, control.id):
        shared_client.delete_session(s)


def test_fork_label_and_ttl_default_to_the_source(shared_client):
    source = shared_client.create_session(labels={"k": "v"}, ttl_s=300)
    fork = shared_client.fork_session(source.id)
    assert dict(fork.labels) == {"k": "v"} and fork.ttl.seconds == 300
    expect_error(lambda: shared_client.fork_session(source.id, expected_state_version=5),
                 grpc.StatusCode.ABORTED)
    for s in (source.id, fork.id):
        shared_client.delete_session(s)


# --- c. commit modes ------------------------------------------------------------------------

def test_scratch_generation_changes_nothing(shared_client, doc):
    session = new_session(shared_client, doc)
    before = logprobs(shared_client.score(session.id, text=PROBE))
    result = greedy(shared_client, session.id, " What if", max_tokens=12, commit="scratch")
    assert result.final.usage.generated_tokens == 12
    assert result.final.state_version_after == session.state_version
    after = shared_client.get_session(session.id)
    assert (after.state_version, after.tokens_seen, after.pending_tokens) == \
        (session.state_version, session.tokens_seen, session.pending_tokens)
    assert logprobs(shared_client.score(session.id, text=PROBE)) == pytest.approx(before, abs=1e-5)
    # A scratch generation from the document alone (no prompt) is repeatable.
    first = greedy(shared_client, session.id, None, commit="scratch")
    second = greedy(shared_client, session.id, None, commit="scratch")
    assert_same_generation(first, second)
    shared_client.delete_session(session.id)


def test_keep_prompt_commits_exactly_the_prompt(shared_client, doc):
    prompt = " The Work and any Derivative Works thereof"
    session = new_session(shared_client, doc)
    ingested = new_session(shared_client, doc)
    n_prompt = len(shared_client.tokenize(prompt))
    result = greedy(shared_client, session.id, prompt, max_tokens=10, commit="keep_prompt")
    assert result.final.usage.generated_tokens == 10
    assert result.final.state_version_after == session.state_version + 1
    after = shared_client.get_session(session.id)
    assert after.state_version == session.state_version + 1
    assert after.tokens_seen == session.tokens_seen + n_prompt
    # The same as ingesting the prompt.
    shared_client.ingest(ingested.id, [prompt])
    assert logprobs(shared_client.score(session.id, text=PROBE)) == pytest.approx(
        logprobs(shared_client.score(ingested.id, text=PROBE)), abs=1e-4)
    assert_same_generation(greedy(shared_client, session.id, None, commit="scratch"),
                           greedy(shared_client, ingested.id, None, commit="scratch"))
    for s in (session.id, ingested.id):
        shared_client.delete_session(s)


def test_keep_all_commits_prompt_and_output(shared_client, doc):
    prompt = " Grant of Copyright License."
    session = new_session(shared_client, doc)
    control = new_session(shared_client, doc)
    result = greedy(shared_client, session.id, prompt, max_tokens=10, commit="keep_all")
    after = shared_client.get_session(session.id)
    n_prompt = len(shared_client.tokenize(prompt))
    assert after.tokens_seen == session.tokens_seen + n_prompt + 10
    assert after.state_version == result.final.state_version_after == session.state_version + 1
    # Continuing in a second request is the same as generating 20 tokens in one.
    rest = greedy(shared_client, session.id, None, max_tokens=10, commit="keep_all")
    whole = greedy(shared_client, control.id, prompt, max_tokens=20, commit="scratch")
    assert result.ids + rest.ids == whole.ids
    assert logprob_values(result) + logprob_values(rest) == pytest.approx(
        logprob_values(whole), abs=1e-4)
    # (Text at the seam may differ in a word-initial space, which a fresh decoder may drop.)
    assert (result.text + rest.text).replace(" ", "") == whole.text.replace(" ", "")
    assert shared_client.get_session(session.id).state_version == session.state_version + 2
    for s in (session.id, control.id):
        shared_client.delete_session(s)


# --- d. cancellation and deadlines ----------------------------------------------------------

def _assert_unchanged_and_usable(client, session, reference_id, prompt):
    """`session` (a Session snapshot) is still at that version and continues exactly like
    `reference_id`, a fork taken before the failed request."""
    # The failed request may hold the session a moment longer; while busy a session reports
    # no pending tokens (the tail belongs to the running request), so wait for the tail.
    wait_until(lambda: client.get_session(session.id).pending_tokens == session.pending_tokens,
               timeout=10, message="the session to be idle with its previous pending tail")
    described = client.get_session(session.id)
    assert described.state_version == session.state_version
    assert described.tokens_seen == session.tokens_seen
    assert described.pending_tokens == session.pending_tokens
    got = retry_while_aborted(lambda: greedy(client, session.id, prompt))
    want = greedy(client, reference_id, prompt)
    assert_same_generation(got, want)
    assert got.final.state_version_after == session.state_version + 1


def test_cancelled_generation_leaves_the_session_as_it_was(shared_client, doc):
    session = new_session(shared_client, doc)
    reference = shared_client.fork_session(session.id)
    stream = shared_client.generate(session.id, " Cancel me", max_tokens=100000,
                                    temperature=0, ignore_eos=True, commit="keep_all")
    deltas = 0
    with pytest.raises(grpc.RpcError) as info:
        for event in stream:
            if event.HasField("delta"):
                deltas += 1
                stream.cancel()
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert deltas >= 1
    _assert_unchanged_and_usable(shared_client, session, reference.id, " After the cancel")
    for s in (session.id, reference.id):
        shared_client.delete_session(s)


def test_generation_past_its_deadline_leaves_the_session_as_it_was(shared_client, doc,
                                                                    decode_rate):
    session = new_session(shared_client, doc)
    reference = shared_client.fork_session(session.id)
    # Long enough to still be running when the deadline passes, whatever the machine's speed.
    max_tokens = int(min(1_000_000, max(100_000, decode_rate * 30)))
    started = time.monotonic()
    events = []
    with pytest.raises(grpc.RpcError) as info:
        for event in shared_client.generate(session.id, " Too slow", max_tokens=max_tokens,
                                            temperature=0, ignore_eos=True, timeout=0.5):
            events.append(event.WhichOneof("event"))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    assert "final" not in events
    _assert_unchanged_and_usable(shared_client, session, reference.id, " After the deadline")
    for s in (session.id, reference.id):
        shared_client.delete_session(s)


def test_cancelled_ingest_leaves_the_session_as_it_was(shared_client, doc):
    session = new_session(shared_client, doc)
    reference = shared_client.fork_session(session.id)
    sent = []

    class GaveUp(Exception):
        pass

    def chunks_then_failure():
        for piece in odd_chunks(doc * 3, seed=9):
            sent.append(piece)
            yield piece
            if len(sent) == 200:
                raise GaveUp  # the client gives up mid-stream: the call is cancelled

    with pytest.raises(GaveUp):
        shared_client.ingest(session.id, chunks_then_failure())
    _assert_unchanged_and_usable(shared_client, session, reference.id, " After the ingest")
    for s in (session.id, reference.id):
        shared_client.delete_session(s)


def test_ingest_past_its_deadline_leaves_the_session_as_it_was(shared_client, doc):
    session = new_session(shared_client, doc)
    reference = shared_client.fork_session(session.id)

    def slow_chunks():
        for piece in odd_chunks(doc, seed=3):
            time.sleep(0.01)
            yield piece

    with pytest.raises(grpc.RpcError) as info:
        shared_client.ingest(session.id, slow_chunks(), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_unchanged_and_usable(shared_client, session, reference.id, " After the timeout")
    for s in (session.id, reference.id):
        shared_client.delete_session(s)


def test_failed_generation_leaves_the_session_as_it_was(shared_client, doc):
    session = new_session(shared_client, doc)
    reference = shared_client.fork_session(session.id)
    expect_error(lambda: greedy(shared_client, session.id, [5, 6, 5000]),
                 grpc.StatusCode.INVALID_ARGUMENT)
    expect_error(lambda: shared_client.ingest(session.id, [[1, 2, 3], [4, 1000]]),
                 grpc.StatusCode.INVALID_ARGUMENT)
    _assert_unchanged_and_usable(shared_client, session, reference.id, " After the errors")
    for s in (session.id, reference.id):
        shared_client.delete_session(s)


# --- e. one request at a time ---------------------------------------------------------------

def test_two_generations_started_together_one_is_aborted(shared_client, doc, decode_rate):
    session = new_session(shared_client, doc)
    max_tokens = int(min(1_000_000, max(2000, decode_rate * 2)))  # ~2 s of decoding
    barrier = threading.Barrier(2)
    outcomes = [None, None]

    def run(i):
        barrier.wait()
        try:
            result = greedy(shared_client, session.id, f" Writer {i}", max_tokens=max_tokens)
            outcomes[i] = ("OK", result.final.usage.generated_tokens)
        except grpc.RpcError as e:
            outcomes[i] = (e.code().name, e.details())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    codes = sorted(o[0] for o in outcomes)
    assert codes == ["ABORTED", "OK"], outcomes
    winner = [o for o in outcomes if o[0] == "OK"][0]
    assert winner[1] == max_tokens
    described = shared_client.get_session(session.id)
    assert described.state_version == session.state_version + 1
    shared_client.delete_session(session.id)


def test_requests_on_a_busy_session_are_aborted_not_queued(shared_client, doc):
    session = new_session(shared_client, doc)
    stream = shared_client.generate(session.id, " Busy", max_tokens=1_000_000, temperature=0,
                                    ignore_eos=True)
    events = iter(stream)
    first = next(events)
    assert first.HasField("started")
    next(events)  # a Delta: the generation is running
    try:
        expect_error(lambda: greedy(shared_client, session.id, " Second"),
                     grpc.StatusCode.ABORTED)
        expect_error(lambda: shared_client.score(session.id, text=PROBE),
                     grpc.StatusCode.ABORTED)
        expect_error(lambda: shared_client.ingest(session.id, ["more text"]),
                     grpc.StatusCode.ABORTED)
        expect_error(lambda: shared_client.delete_session(session.id), grpc.StatusCode.ABORTED)
        # Reading the session's description is not a state change: allowed meanwhile.
        assert shared_client.get_session(session.id).state_version == session.state_version
    finally:
        stream.cancel()
    retry_while_aborted(lambda: shared_client.delete_session(session.id))


def test_expected_state_version_mismatch_is_aborted(shared_client, doc):
    session = new_session(shared_client, doc)
    v = session.state_version
    assert v >= 1
    wrong = v + 7
    expect_error(lambda: greedy(shared_client, session.id, " x", expected_state_version=wrong),
                 grpc.StatusCode.ABORTED)
    expect_error(lambda: shared_client.score(session.id, text=PROBE,
                                             expected_state_version=wrong),
                 grpc.StatusCode.ABORTED)
    expect_error(lambda: shared_client.ingest(session.id, ["text"],
                                              expected_state_version=wrong),
                 grpc.StatusCode.ABORTED)
    expect_error(lambda: shared_client.delete_session(session.id,
                                                      expected_state_version=wrong),
                 grpc.StatusCode.ABORTED)
    assert shared_client.get_session(session.id).state_version == v
    # The right version passes, and becomes stale afterwards.
    result = greedy(shared_client, session.id, " x", max_tokens=2, expected_state_version=v)
    assert result.final.state_version_after == v + 1
    final = shared_client.ingest(session.id, ["more"], expected_state_version=v + 1)
    assert final.state_version == v + 2
    expect_error(lambda: shared_client.ingest(session.id, ["more"], expected_state_version=v + 1),
                 grpc.StatusCode.ABORTED)
    shared_client.delete_session(session.id, expected_state_version=v + 2)
