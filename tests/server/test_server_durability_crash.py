"""kill -9 at random moments under mixed concurrent load (ingest, greedy generation that keeps
its output, scoring with commit, fork), then a restart on the same store, many times over.

SYNC: after every restart each session is at a version at least its last acknowledged one (one
more only when a request on it was in flight and its result had reached the store), restores
without error, and scores as an oracle — a separate server that is never killed, replaying the
session's acknowledged requests (plus the in-flight one when the store holds its result).
ASYNC: a session is never torn and never older than the durable_version last observed.

The oracle runs its requests one at a time while the crashed server batched them with other
sessions' requests; float32 GEMMs of a different batch shape round differently (≈5e-7 in a
log-probability), so here log-probabilities are compared to 1e-5 and token ids exactly. Restores
themselves are compared bitwise in test_server_durability.py, where requests run alone.

Randomness is seeded (MNEMO_CRASH_SEED, default 1); MNEMO_CRASH_ITERATIONS sets the SYNC loop's
length (default 50).
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from typing import Optional

import grpc
import pytest

from durability_harness import PROBE, StoreDir, sessions_by_id
from server_harness import BASE_FLAGS, ServerProcess, document

ITERATIONS = int(os.environ.get("MNEMO_CRASH_ITERATIONS", "50"))
ASYNC_ITERATIONS = max(5, ITERATIONS // 2)
SEED = int(os.environ.get("MNEMO_CRASH_SEED", "1"))
WORKERS = 3
INITIAL_SESSIONS = 4
MAX_SESSIONS = 7
TOLERANCE = 1e-5
TEXT = document("GPL-3", unicode_tail=True)


@dataclasses.dataclass
class Op:
    """One state-changing request; `result` is what the crashed server answered (ids of a
    generation, None otherwise)."""

    kind: str  # ingest | generate | score | fork
    chunks: tuple = ()
    prompt: Optional[str] = None
    max_tokens: int = 0
    text: str = ""
    result: Optional[tuple] = None


def random_op(rng: random.Random, may_fork: bool) -> Op:
    roll = rng.random()
    if may_fork and roll < 0.08:
        return Op("fork")
    start = rng.randrange(len(TEXT) - 400)
    if roll < 0.5:
        pieces, pos = [], start
        for _ in range(rng.randint(1, 4)):
            n = rng.randint(1, 90)
            pieces.append(TEXT[pos:pos + n])
            pos += n
        return Op("ingest", chunks=tuple(pieces))
    if roll < 0.8:
        prompt = None if rng.random() < 0.3 else TEXT[start:start + rng.randint(1, 40)]
        return Op("generate", prompt=prompt, max_tokens=rng.randint(1, 6))
    text = TEXT[start:start + rng.randint(1, 60)]
    if not any(ch.isalnum() for ch in text):  # whitespace alone scores nothing
        text += " and more"
    return Op("score", text=text)


def apply(client, session_id: str, op: Op):
    """Runs `op`; returns (version after, generated ids or None, new Session for a fork)."""
    if op.kind == "ingest":
        return client.ingest(session_id, list(op.chunks)).state_version, None, None
    if op.kind == "generate":
        r = client.generate_result(session_id, op.prompt, max_tokens=op.max_tokens,
                                   temperature=0, ignore_eos=True, commit="keep_all")
        return r.final.state_version_after, tuple(r.ids), None
    if op.kind == "score":
        return client.score(session_id, text=op.text, commit=True).state_version, None, None
    child = client.fork_session(session_id)
    return None, None, child


@dataclasses.dataclass
class Tracked:
    """A session as the test knows it: its requests and what was acknowledged."""

    id: str
    inherited: list  # ops that made the state it was forked from (none for a created session)
    base_version: int  # its version when created / forked
    ops: list = dataclasses.field(default_factory=list)  # its own state-changing ops, in order
    acked: int = 0  # the last acknowledged version
    inflight: Optional[Op] = None
    durable_seen: int = -1  # ASYNC: the largest durable_version observed
    mirror: Optional[str] = None  # its twin on the oracle
    mirror_ops: int = 0  # own ops applied to the twin

    def history(self, n_own: int) -> list:
        return self.inherited + self.ops[:n_own]


class Oracle:
    """Twins of the tracked sessions on a server that is never killed, brought to any version
    by replaying requests one at a time."""

    def __init__(self, client):
        self.client = client

    def _replay(self, session_id, ops, check=True):
        for op in ops:
            if op.kind == "fork":
                continue  # a fork leaves its source unchanged
            _, ids, _ = apply(self.client, session_id, op)
            if check and op.result is not None:
                assert ids == op.result, (
                    f"the oracle's greedy tokens {ids} differ from the acknowledged {op.result}")

    def bring_to(self, t: Tracked, n_own: int) -> str:
        """t's twin with its first n_own own ops applied."""
        if t.mirror is None or n_own < t.mirror_ops:
            if t.mirror is not None:
                self.client.delete_session(t.mirror)
            t.mirror = self.client.create_session().id
            self._replay(t.mirror, t.inherited)
            t.mirror_ops = 0
        self._replay(t.mirror, t.ops[t.mirror_ops:n_own])
        t.mirror_ops = n_own
        return t.mirror


def logprobs(client, session_id):
    scored = client.score(session_id, text=PROBE)
    return [t.id for t in scored.tokens], [t.logprob for t in scored.tokens]


def assert_scores_alike(got, want, what):
    assert got[0] == want[0], f"{what}: probe tokens differ"
    worst = max(abs(a - b) for a, b in zip(got[1], want[1]))
    assert worst <= TOLERANCE, f"{what}: probe logprobs differ by {worst:.3g} from the oracle's"


class Load:
    """WORKERS threads, each owning some sessions, running random requests until the server
    dies under them. An error before the kill fails the test."""

    def __init__(self, client, tracked: list, rng: random.Random, durability: str):
        self.client = client
        self.tracked = tracked
        self.durability = durability
        self.lock = threading.Lock()
        self.killed = threading.Event()
        self.errors: list[str] = []
        self.acked = 0
        self.rngs = [random.Random(rng.random()) for _ in range(WORKERS)]
        self.owned = [[t for i, t in enumerate(tracked) if i % WORKERS == w]
                      for w in range(WORKERS)]
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True)
                        for w in range(WORKERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(timeout=120)
            assert not t.is_alive(), "a load thread is stuck after the kill"

    def _run(self, w):
        rng, owned = self.rngs[w], self.owned[w]
        while not self.killed.is_set():
            t = rng.choice(owned)
            with self.lock:
                may_fork = len(self.tracked) < MAX_SESSIONS
            op = random_op(rng, may_fork)
            t.inflight = op
            try:
                version, ids, child = apply(self.client, t.id, op)
            except grpc.RpcError as e:
                self._failed(op.kind, t, e)
                return
            op.result = ids
            if child is not None:
                n_own = t.acked - t.base_version
                forked = Tracked(child.id, t.history(n_own), child.state_version,
                                 acked=child.state_version)
                with self.lock:
                    self.tracked.append(forked)
                owned.append(forked)
                t.inflight = None
                continue
            t.ops.append(op)
            t.acked = version
            t.inflight = None
            with self.lock:
                self.acked += 1
            if self.durability == "async":
                try:
                    durable = self.client.get_session(t.id).durable_version
                except grpc.RpcError as e:
                    self._failed("GetSession", t, e)
                    return
                if durable > version:
                    self.errors.append(f"{t.id}: durable_version {durable} > version {version}")
                t.durable_seen = max(t.durable_seen, durable)

    def _failed(self, what, t, error):
        if not self.killed.is_set():
            self.errors.append(f"{what} on {t.id}: {error.code().name}: {error.details()}")


def new_sessions(client, rng, durability) -> list:
    tracked = []
    for i in range(INITIAL_SESSIONS):
        s = client.create_session(durability=durability)
        t = Tracked(s.id, [], s.state_version, acked=s.state_version)
        op = Op("ingest", chunks=(TEXT[i * 300:i * 300 + 150], TEXT[i * 300 + 150:i * 300 + 301]))
        t.acked = apply(client, s.id, op)[0]
        t.ops.append(op)
        if durability == "async":
            t.durable_seen = client.get_session(s.id).durable_version
        tracked.append(t)
    return tracked


def crash_loop(store_server, oracle_server, tmp_path, durability, iterations):
    rng = random.Random(SEED)
    store = StoreDir(str(tmp_path / "store"))
    node = store_server(store.path, "--durability", durability)
    oracle = Oracle(oracle_server.client())
    client = node.client(timeout=60)
    tracked = new_sessions(client, rng, durability)
    stats = {"acked": 0, "inflight_landed": 0, "lost_async": 0, "unknown_forks": 0}
    seconds = {"load": 0.0, "restart": 0.0, "verify": 0.0}
    for iteration in range(iterations):
        t0 = time.monotonic()
        load = Load(client, tracked, rng, durability)
        load.start()
        time.sleep(rng.uniform(0.05, 0.6))
        load.killed.set()
        node.crash()
        load.join()
        client.close()
        t1 = time.monotonic()
        assert not load.errors, f"iteration {iteration}: requests failed before the kill: " \
            f"{load.errors}"
        stats["acked"] += load.acked

        node.start()
        client = node.client(timeout=60)
        t2 = time.monotonic()
        assert store.quarantined() == [], f"iteration {iteration}: {store.quarantined()}"
        listed = sessions_by_id(client)
        known = {t.id for t in tracked}
        for t in list(tracked):
            what = f"iteration {iteration}, session {t.id}"
            got = listed.get(t.id)
            if durability == "sync":
                assert got is not None, f"{what}: acknowledged at {t.acked}, gone after restart"
                landed = t.inflight is not None and t.inflight.kind != "fork"
                allowed = {t.acked, t.acked + 1} if landed else {t.acked}
                assert got.state_version in allowed, (
                    f"{what}: version {got.state_version} after restart, acknowledged "
                    f"{t.acked}, in flight: {t.inflight.kind if t.inflight else None}")
            else:
                if got is None:  # never durable yet: lost with the process
                    assert t.durable_seen < 0, f"{what}: durable {t.durable_seen}, now gone"
                    tracked.remove(t)
                    continue
                landed = t.inflight is not None and t.inflight.kind != "fork"
                assert t.durable_seen <= got.state_version <= t.acked + landed, \
                    f"{what}: version {got.state_version}, durable seen {t.durable_seen}, " \
                    f"acknowledged {t.acked}"
            v = got.state_version
            if v == t.acked + 1:
                t.ops.append(t.inflight)
                stats["inflight_landed"] += 1
            n_own = v - t.base_version
            if n_own < len(t.ops):
                stats["lost_async"] += len(t.ops) - n_own
                del t.ops[n_own:]
            t.acked, t.inflight = v, None
            if durability == "async":
                t.durable_seen = v
            twin = oracle.bring_to(t, n_own)
            assert_scores_alike(logprobs(client, t.id), logprobs(oracle.client, twin), what)
        for sid in set(listed) - known:  # a fork in flight at the kill: restorable, then gone
            logprobs(client, sid)
            client.delete_session(sid)
            stats["unknown_forks"] += 1
        assert store.quarantined() == []
        if durability == "async" and len(tracked) < 2:
            tracked += new_sessions(client, rng, durability)
        seconds["load"] += t1 - t0
        seconds["restart"] += t2 - t1
        seconds["verify"] += time.monotonic() - t2
    metrics = node.metrics()
    assert metrics.sum("mnemo_session_restores_total") > 0
    client.close()
    oracle.client.close()
    print(f"{durability} crash loop: {iterations} kills, {stats}, seconds "
          f"{ {k: round(v, 1) for k, v in seconds.items()} }")
    assert stats["acked"] >= iterations, "the load acknowledged almost nothing between kills"
    return stats


@pytest.fixture(scope="module")
def oracle_server(server_bin, tiny_model, server_workdir):
    server = ServerProcess(server_bin, tiny_model, server_workdir, BASE_FLAGS)
    server.wait_serving()
    yield server
    server.stop(check=True)


def test_sync_sessions_survive_kill_9_under_load(store_server, oracle_server, tmp_path):
    crash_loop(store_server, oracle_server, tmp_path, "sync", ITERATIONS)


def test_async_sessions_are_never_torn_nor_older_than_durable(store_server, oracle_server,
                                                               tmp_path):
    crash_loop(store_server, oracle_server, tmp_path, "async", ASYNC_ITERATIONS)
