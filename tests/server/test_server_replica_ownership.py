"""Replica mode end to end (docs/deploy.md "Routing and ownership"): real mnemo-server processes
sharing one --session-store, each with its own --replica-id, reached over gRPC like a router
would. A session moves between replicas by hand-off (the owner writes its newest version and
lets go) or, when the owner is gone or frozen, by a fenced claim of its newest durable version;
a drained replica leaves every session in the store. After each move the session computes
bitwise what a session on a single server that saw the same requests computes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import grpc
import pytest
from mnemo.v1 import mnemo_pb2 as pb
from mnemo_client import MnemoClient, errors, health

from durability_harness import assert_same, doc_chunks, observe, wait_durable
from server_harness import (BASE_FLAGS, RUNNING_SERVERS, ServerProcess, expect_error, free_port,
                            wait_until)

HANDOFF_TIMEOUT_S = 1.0
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
RELEASED_LINE = "sessions written to the store and released"


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def replicas(start_server, store_dir):
    """Factory: replicas(*names, grace_s=5.0) -> [ServerProcess] sharing `store_dir`, each with
    --replica-id NAME. No --advertise: it defaults to the --listen address (127.0.0.1:PORT)."""
    def start(*names, grace_s=5.0):
        return [start_server("--session-store", store_dir, "--replica-id", name,
                             "--handoff-timeout", f"{HANDOFF_TIMEOUT_S:g}s", grace_s=grace_s)
                for name in names]
    return start


@pytest.fixture
def reference(shared_client):
    """Sessions on the shared single server (no store): what a session that never moved
    computes. Deleted at the end of the test."""
    made = []

    def create(chunk_lists=()):
        session = shared_client.create_session(model="tiny")
        made.append(session.id)
        for chunks in chunk_lists:
            shared_client.ingest(session.id, chunks)
        return session.id

    yield create
    for session_id in made:
        shared_client.delete_session(session_id)


def error_info(error: grpc.RpcError):
    """(reason, domain) of the call's ErrorInfo detail (mnemo_client.errors), or None."""
    info = errors.error_info(error)
    return None if info is None else (info.reason, info.domain)


def expect_reason(fn, code: grpc.StatusCode, reason: str) -> grpc.RpcError:
    """fn() (a stream drained) fails with `code` and an ErrorInfo{reason, domain "mnemo.v1"}."""
    e = expect_error(fn, code)
    assert error_info(e) == (reason, "mnemo.v1"), (e.details(), error_info(e))
    return e


def owner_records(store: str, session_id: str) -> list[tuple[int, str, str]]:
    """(epoch, replica, address) of every owner record of a session, oldest first."""
    directory = os.path.join(store, "sessions", session_id)
    out = []
    for name in sorted(os.listdir(directory)):
        if name.startswith("owner-"):
            with open(os.path.join(directory, name)) as f:
                lines = f.read().split("\n")
            out.append((int(name[len("owner-"):]), lines[0], lines[1]))
    return out


def stored_versions(store: str, session_id: str) -> list[int]:
    """Published versions of a session (<version>[-<epoch>].snap), ascending."""
    names = os.listdir(os.path.join(store, "sessions", session_id))
    return sorted(int(n[:20]) for n in names if n.endswith(".snap") and n[:20].isdigit())


def owner(store: str, session_id: str) -> tuple[str, str]:
    """(replica, address) of the newest owner record ("" and "" once released)."""
    records = owner_records(store, session_id)
    assert records, f"no owner record of {session_id}"
    return records[-1][1], records[-1][2]


def counter(server: ServerProcess, name: str, **labels: str) -> float:
    return server.metrics().sum(name, **labels)


def handoffs(server: ServerProcess, direction: str, result: str = "ok") -> float:
    return counter(server, "mnemo_session_handoffs_total", direction=direction, result=result)


def ownership(server: ServerProcess, event: str) -> float:
    return counter(server, "mnemo_session_ownership_total", event=event)


def held_ids(client) -> set[str]:
    """The sessions a replica holds now (ListSessions in replica mode)."""
    return {s.id for s in client.list_sessions()}


def documents(n: int) -> list[list[str]]:
    """n different documents of odd-sized text chunks."""
    return [doc_chunks(seed=11 + i, chars=500 + 60 * i) for i in range(n)]


def first_delta(call) -> None:
    """Reads a Generate stream up to its first generated token."""
    for event in call:
        if event.WhichOneof("event") == "delta" and event.delta.ids:
            return
    pytest.fail("the generation ended before its first token", pytrace=False)


def long_generation_tokens(decode_rate: float, seconds: float) -> int:
    """Greedy tokens that take the shared server about `seconds` (at least 200)."""
    return max(200, min(20000, int(decode_rate * seconds)))


# --- 1. hand-off ------------------------------------------------------------------------------

@pytest.mark.parametrize("durability", ["none", "async"])
def test_a_handoff_moves_the_newest_version_and_back(durability, replicas, reference,
                                                     shared_client, store_dir):
    a, b = replicas("ra", "rb")
    first, second, third, fourth = documents(4)
    ref = reference([first, second])
    want = observe(shared_client, ref)
    ref_session = shared_client.get_session(ref)
    with a.client() as ca, b.client() as cb:
        session = ca.create_session(model="tiny", durability=durability)
        sid = session.id
        assert session.state_version == 0
        assert ca.ingest(sid, first).state_version == 1
        assert ca.ingest(sid, second).state_version == 2
        assert owner(store_dir, sid) == ("ra", a.target)
        before_a, before_b = a.metrics(), b.metrics()

        # B takes it over: A hands off its newest version (for NONE: the only one).
        got = cb.get_session(sid)
        assert (got.state_version, got.tokens_seen, got.pending_tokens) == (
            2, ref_session.tokens_seen, ref_session.pending_tokens)
        assert got.durability == session.durability
        assert owner(store_dir, sid) == ("rb", b.target)
        assert len(owner_records(store_dir, sid)) == 1
        assert sid in held_ids(cb) and sid not in held_ids(ca)
        after_a, after_b = a.metrics(), b.metrics()
        assert after_b.sum("mnemo_session_handoffs_total", direction="in", result="ok") == \
            before_b.sum("mnemo_session_handoffs_total", direction="in", result="ok") + 1
        assert after_a.sum("mnemo_session_handoffs_total", direction="out", result="ok") == \
            before_a.sum("mnemo_session_handoffs_total", direction="out", result="ok") + 1
        assert after_b.sum("mnemo_session_ownership_total", event="claimed") == \
            before_b.sum("mnemo_session_ownership_total", event="claimed") + 1
        assert after_a.sum("mnemo_session_ownership_total", event="released") >= 1
        assert "handed off to rb" in a.stderr_text()

        assert_same(observe(cb, sid), want, f"{durability}: on B after the hand-off")
        assert cb.get_session(sid).state_version == 2, "score and SCRATCH commit nothing"
        assert cb.ingest(sid, third).state_version == 3
        shared_client.ingest(ref, third)

        # A request on A takes it back from B; versions continue.
        assert ca.ingest(sid, fourth).state_version == 4
        shared_client.ingest(ref, fourth)
        assert owner(store_dir, sid) == ("ra", a.target)
        assert sid in held_ids(ca) and sid not in held_ids(cb)
        back = ca.get_session(sid)
        assert (back.state_version, back.tokens_seen) == (
            4, shared_client.get_session(ref).tokens_seen)
        assert_same(observe(ca, sid), observe(shared_client, ref),
                    f"{durability}: on A after taking it back")
        assert handoffs(a, "in") >= 1 and handoffs(b, "out") >= 1
        assert ownership(a, "claimed") >= 1
        for server in (a, b):
            assert handoffs(server, "in", "unreachable") == 0
            assert handoffs(server, "in", "error") == 0
            assert handoffs(server, "out", "error") == 0


# --- 2. drain ---------------------------------------------------------------------------------

def test_a_drained_replica_leaves_every_session_to_the_others(replicas, reference, shared_client,
                                                              store_dir):
    a, b = replicas("ra", "rb")
    docs = documents(6)
    sessions = {}  # durability -> (id, reference id)
    with a.client() as ca:
        for i, durability in enumerate(["none", "async", "sync"]):
            sid = ca.create_session(model="tiny", durability=durability).id
            chunks = [docs[2 * i], docs[2 * i + 1]]
            for c in chunks:
                ca.ingest(sid, c)
            sessions[durability] = (sid, reference(chunks))
        assert held_ids(ca) == {sid for sid, _ in sessions.values()}
    wants = {d: observe(shared_client, ref) for d, (_, ref) in sessions.items()}

    start = time.monotonic()
    a.terminate()
    code = a.wait_exit(a.grace_s + 5.0)
    elapsed = time.monotonic() - start
    assert code == 0, f"exit code {code} after SIGTERM\n{a.stderr_text()}"
    assert elapsed < a.grace_s, f"an idle replica took {elapsed:.1f} s to drain"
    log = a.stderr_text()
    assert f"3 {RELEASED_LINE}" in log, log
    for sid, _ in sessions.values():
        assert owner(store_dir, sid) == ("", ""), "a drained replica releases its sessions"

    with b.client() as cb:
        claimed = ownership(b, "claimed")
        for durability, (sid, ref) in sessions.items():
            got = cb.get_session(sid)
            want_session = shared_client.get_session(ref)
            assert (got.state_version, got.tokens_seen, got.pending_tokens) == (
                2, want_session.tokens_seen, want_session.pending_tokens), durability
            assert pb.Durability.Name(got.durability) == f"DURABILITY_{durability.upper()}"
            assert_same(observe(cb, sid), wants[durability], f"{durability}: after the drain")
            assert owner(store_dir, sid) == ("rb", b.target)
        assert ownership(b, "claimed") == claimed + 3
        # Nobody was there to hand off: the released records are claimed directly.
        assert handoffs(b, "in", "ok") + handoffs(b, "in", "unreachable") == 0


def test_a_second_sigterm_does_not_cut_the_drain_short(replicas, decode_rate, store_dir):
    """Signals go to the thread that waits for them: a second SIGTERM (or SIGINT) while the
    replica drains must not kill it before it wrote its sessions to the store."""
    a, b = replicas("ra", "rb", grace_s=15.0)
    tokens = long_generation_tokens(decode_rate, 2.0)
    with a.client(timeout=60) as ca:
        sid = ca.create_session(model="tiny", durability="none").id
        assert ca.ingest(sid, documents(1)[0]).state_version == 1
        started, outcome = threading.Event(), {}

        def generate():  # reads the stream to its end, so flow control never holds it up
            try:
                outcome["result"] = ca.generate_result(
                    sid, None, max_tokens=tokens, temperature=0, ignore_eos=True,
                    commit="keep_all", on_delta=lambda _: started.set())
            except grpc.RpcError as e:
                outcome["error"] = e
            started.set()

        thread = threading.Thread(target=generate)
        thread.start()
        assert started.wait(30)
        a.terminate()
        wait_until(lambda: a.health() == health.NOT_SERVING, timeout=5, interval=0.01,
                   message="readiness NOT_SERVING")
        a.proc.send_signal(signal.SIGTERM)
        code = a.wait_exit(a.grace_s + 5.0)
        thread.join(30)
    assert code == 0, (f"a second SIGTERM during the drain ended the replica with {code}; log:\n"
                       f"{a.stderr_text()}")
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].final.state_version_after == 2
    assert f"1 {RELEASED_LINE}" in a.stderr_text()
    with b.client() as cb:
        assert cb.get_session(sid).state_version == 2


# --- 3. fencing a frozen owner -----------------------------------------------------------------

@pytest.mark.parametrize("durability", ["async", "sync"])
def test_a_frozen_owner_is_fenced_and_its_generation_aborted(durability, replicas, reference,
                                                             shared_client, decode_rate,
                                                             store_dir):
    a, b = replicas("ra", "rb")
    first, second = documents(2)
    ref = reference([first])
    with a.client(timeout=60) as ca, b.client(timeout=60) as cb:
        sid = ca.create_session(model="tiny", durability=durability).id
        assert ca.ingest(sid, first).state_version == 1
        wait_durable(ca, sid)
        call = ca.generate(sid, None, max_tokens=long_generation_tokens(decode_rate, 3.0),
                           temperature=0, ignore_eos=True)
        stream = iter(call)
        first_delta(stream)
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            taken = cb.get_session(sid)
            waited = time.monotonic() - start
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        assert taken.state_version == 1, "B restores the newest durable version"
        assert waited >= HANDOFF_TIMEOUT_S * 0.9, f"B took it over after {waited:.2f} s"
        assert handoffs(b, "in", "unreachable") == 1
        assert owner(store_dir, sid) == ("rb", b.target)

        # A wakes up, finishes its tokens, and may not commit them.
        error = expect_reason(lambda: list(stream), grpc.StatusCode.ABORTED, "SESSION_MOVED")
        assert "another replica" in error.details() or "claimed" in error.details(), \
            error.details()
        assert cb.get_session(sid).state_version == 1
        assert_same(observe(cb, sid), observe(shared_client, ref),
                    f"{durability}: on B after the aborted generation")
        assert sid in held_ids(cb)
        # A learned the session moved (its commit was refused); it must not list it as its own.
        # Checked at the end, after the take-back.
        stale_listing = sid in held_ids(ca)

        # A takes it back cleanly.
        fenced = ownership(a, "fenced")
        back = ca.get_session(sid)
        assert back.state_version == 1
        assert ownership(a, "fenced") >= max(1, fenced)
        assert handoffs(a, "in", "ok") == 1 and handoffs(b, "out", "ok") == 1
        assert owner(store_dir, sid) == ("ra", a.target)
        assert ca.ingest(sid, second).state_version == 2
        shared_client.ingest(ref, second)
        assert_same(observe(ca, sid), observe(shared_client, ref),
                    f"{durability}: on A after taking it back")
        assert sid not in held_ids(cb)
    assert not stale_listing, (
        "after its Generate ended ABORTED SESSION_MOVED, replica A still listed the session in "
        "ListSessions (it holds only the sessions it owns)")


# --- 4. draining answers -----------------------------------------------------------------------

def test_a_draining_replica_refuses_new_calls_and_finishes_running_ones(replicas, store_dir):
    (a,) = replicas("ra", grace_s=15.0)
    with a.client(timeout=60) as ca:
        busy = ca.create_session(model="tiny", durability="async").id
        idle = ca.create_session(model="tiny").id
        ca.ingest(busy, documents(1)[0])
        # The running request is an Ingest held open by this test: running at SIGTERM and
        # through every check below on a machine of any speed, and let go within the grace.
        started, release, outcome = threading.Event(), threading.Event(), {}

        def chunks():
            yield " A continuation that is"
            release.wait(a.grace_s)
            yield " committed while the replica drains."

        def ingest():
            try:
                outcome["result"] = ca.ingest(busy, chunks(), on_progress=lambda _: started.set())
            except grpc.RpcError as e:  # reported below
                outcome["error"] = e
            started.set()

        thread = threading.Thread(target=ingest)
        thread.start()
        assert started.wait(30)
        a.terminate()
        # (Readiness turns NOT_SERVING once new calls are refused; the log line comes first.)
        wait_until(lambda: a.health() == health.NOT_SERVING, timeout=5, interval=0.01,
                   message="readiness NOT_SERVING")
        # What the server answers, seen by a client that does not retry (one that does retries
        # DRAINING until its backoff gives up or the replica is gone).
        with MnemoClient(a.target, timeout=60, retry=None) as raw:
            for call in (lambda: raw.get_session(idle),
                         lambda: raw.create_session(model="tiny"),
                         lambda: raw.score(idle, text="draining"),
                         lambda: raw.generate(idle, "x", max_tokens=1)):
                expect_reason(call, grpc.StatusCode.UNAVAILABLE, "DRAINING")
        assert a.alive() and thread.is_alive(), "the held Ingest must still be running"
        release.set()
        thread.join(30)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].done
        assert outcome["result"].state_version == 2
    assert a.wait_exit(a.grace_s + 5.0) == 0
    assert f"2 {RELEASED_LINE}" in a.stderr_text()
    assert owner(store_dir, busy) == ("", "")
    assert stored_versions(store_dir, busy)[-1] == 2, "the drain wrote the ingested version"


# --- 5. racing take-overs ----------------------------------------------------------------------

def claimed_by(store: str, session_id: str, replica: str) -> bool:
    try:
        return any(r[1] == replica for r in owner_records(store, session_id))
    except FileNotFoundError:  # (a record replaced while read)
        return False


def test_two_replicas_racing_for_a_crashed_owners_session_end_with_one_owner(
        replicas, reference, shared_client, store_dir):
    """B and C ask for sessions whose owner A was killed: at the same moment, and C just after
    B's claim reached the store (B's take-over still running)."""
    a, b, c = replicas("ra", "rb", "rc")
    chunks = documents(1)[0]
    ref = reference([chunks])
    ids = []
    with a.client() as ca:
        for _ in range(16):
            sid = ca.create_session(model="tiny", durability="sync").id
            assert ca.ingest(sid, chunks).state_version == 1
            ids.append(sid)
    a.kill()

    clients = {"rb": b.client(timeout=30), "rc": c.client(timeout=30)}
    servers = {"rb": b, "rc": c}
    stale = []  # sessions a replica listed although the store names the other as owner
    try:
        for i, sid in enumerate(ids):
            staggered = i % 4 != 0
            barrier, answers = threading.Barrier(2), {}

            def take(name):
                barrier.wait()
                if name == "rc" and staggered:
                    end = time.monotonic() + 10
                    while not claimed_by(store_dir, sid, "rb") and time.monotonic() < end:
                        pass
                try:
                    answers[name] = clients[name].get_session(sid)
                except grpc.RpcError as e:
                    answers[name] = e

            threads = [threading.Thread(target=take, args=(n,)) for n in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            winners = [n for n, r in answers.items() if isinstance(r, pb.Session)]
            assert winners, {n: r.details() for n, r in answers.items()}
            for name, r in answers.items():
                if isinstance(r, grpc.RpcError):
                    assert r.code() == grpc.StatusCode.ABORTED, (name, r.code(), r.details())
                    assert error_info(r) == ("SESSION_MOVED", "mnemo.v1"), r.details()
            assert {answers[n].state_version for n in winners} == {1}
            records = owner_records(store_dir, sid)
            assert len(records) == 1, records
            name, address = records[0][1:]
            assert name in servers and address == servers[name].target
            assert sid in held_ids(clients[name])
            other = "rc" if name == "rb" else "rb"
            if sid in held_ids(clients[other]):
                stale.append(f"{sid}: owner {name} (epoch {records[0][0]}), also listed by "
                             f"{other}; answers "
                             f"{ {n: type(r).__name__ for n, r in answers.items()} }")
            if i < 2:
                assert_same(observe(clients[name], sid), observe(shared_client, ref),
                            f"{sid} on {name}")
        claimed = sum(ownership(s, "claimed") for s in servers.values())
        assert claimed >= len(ids)
        assert sum(handoffs(s, "in", "error") for s in servers.values()) == 0
        # Every session, asked for on the non-owner, moves there intact.
        for sid in ids[:2]:
            name = owner(store_dir, sid)[0]
            other = "rc" if name == "rb" else "rb"
            assert clients[other].get_session(sid).state_version == 1
            assert owner(store_dir, sid)[0] == other
    finally:
        for client in clients.values():
            client.close()
    assert not stale, ("a replica whose take-over was overtaken still lists the session "
                       "(and holds its state):\n" + "\n".join(stale))


# --- 6. kill -9 of the owner -------------------------------------------------------------------

def test_a_crashed_owner_loses_its_none_sessions_and_not_the_durable_ones(
        replicas, reference, shared_client, store_dir):
    a, b = replicas("ra", "rb")
    docs = documents(3)
    with a.client() as ca:
        ids = {}
        for durability, chunks in zip(["none", "async", "sync"], docs):
            ids[durability] = ca.create_session(model="tiny", durability=durability).id
            ca.ingest(ids[durability], chunks)
        wait_durable(ca, ids["async"])
    refs = {d: reference([chunks]) for d, chunks in zip(["none", "async", "sync"], docs)}
    a.kill()
    with b.client(timeout=30) as cb:
        error = pytest.raises(grpc.RpcError, cb.get_session, ids["none"]).value
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert "was lost" in error.details(), error.details()
        # … and it stays gone.
        error = pytest.raises(grpc.RpcError, cb.get_session, ids["none"]).value
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert handoffs(b, "in", "unreachable") >= 1
        for durability in ("async", "sync"):
            got = cb.get_session(ids[durability])
            assert got.state_version == 1, durability
            assert_same(observe(cb, ids[durability]), observe(shared_client, refs[durability]),
                        f"{durability}: after the owner's kill -9")
            assert owner(store_dir, ids[durability]) == ("rb", b.target)


# --- 7. flags from the environment -------------------------------------------------------------

class EnvServerProcess(ServerProcess):
    """A mnemo-server configured through MNEMO_* variables (plus `flags` on the command line)."""

    picks_ports = False  # the caller's ports

    def __init__(self, binary: str, workdir: str, env: dict[str, str], flags: list[str],
                 port: int, metrics_port: int):
        self.port, self.metrics_port = port, metrics_port
        self.target = f"127.0.0.1:{port}"
        self.grace_s = 5.0
        self.tls = None
        self.stderr_path = os.path.join(workdir, f"mnemo-server-env-{port}.log")
        self.args = [binary, *flags]
        self._log = open(self.stderr_path, "wb")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MNEMO_")}
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**environment, **env})
        self.channel = grpc.insecure_channel(self.target)
        self.returncode = None
        self.sigterm_sent = False
        RUNNING_SERVERS.append(self)


def replica_names(server: ServerProcess) -> dict[str, float]:
    return {labels["replica"]: value
            for labels, value in server.metrics().select("mnemo_replica_info")}


def test_flags_come_from_the_environment_and_the_command_line_wins(server_bin, tiny_model,
                                                                   server_workdir, tmp_path):
    store = str(tmp_path / "store")
    port, metrics_port = free_port(), free_port()
    env = {"MNEMO_MODEL": f"tiny={tiny_model}", "MNEMO_LISTEN": f"127.0.0.1:{port}",
           "MNEMO_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", "MNEMO_SESSION_STORE": store,
           "MNEMO_REPLICA_ID": "from-env", "MNEMO_SHUTDOWN_GRACE": "5s",
           "MNEMO_SEGMENT_TOKENS": BASE_FLAGS[1]}
    servers = [EnvServerProcess(server_bin, server_workdir, env, [], port, metrics_port)]
    try:
        only_env = servers[0]
        only_env.wait_serving()
        assert replica_names(only_env) == {"from-env": 1.0}
        with only_env.client() as client:
            sid = client.create_session(model="tiny", durability="sync").id
            assert client.ingest(sid, documents(1)[0]).state_version == 1
        assert owner(store, sid) == ("from-env", only_env.target)  # replica mode, its store

        # The command line wins over the environment: another listen port, another name.
        cli_port, cli_metrics = free_port(), free_port()
        override = EnvServerProcess(
            server_bin, server_workdir, env,
            ["--listen", f"127.0.0.1:{cli_port}", "--metrics-listen", f"127.0.0.1:{cli_metrics}",
             "--replica-id", "from-cli"], cli_port, cli_metrics)
        servers.append(override)
        override.wait_serving()
        assert replica_names(override) == {"from-cli": 1.0}
        assert re.search(rf"listening on 127\.0\.0\.1:{cli_port}\b", override.stderr_text())
        with override.client() as client:
            got = client.get_session(sid)  # the shared store from the environment: a hand-off
            assert got.state_version == 1
        assert owner(store, sid) == ("from-cli", override.target)
        assert handoffs(only_env, "out", "ok") == 1
    finally:
        for server in servers:
            server.stop(check=True)
