"""Many replicas behind one router: three mnemo-server replicas sharing a session store, real nginx
in front (deploy/nginx/mnemo.conf.template, consistent hash of x-session-id) and a real
Prometheus scraping every replica, all run by deploy/local/cluster.py (the harness of the
documented local setup).

* Routing: a session's calls always reach one replica; calls naming no session go round-robin;
  a replica that is down costs its sessions' calls nothing visible (the next replica on the ring
  answers) and the others' sessions do not move; a replica joining takes over only sessions
  that now hash to it.
* Prometheus scrapes every replica and evaluates every PromQL expression the project ships
  (deploy/tools/promql_expressions.py: dashboards and alert rules).
* Sessions survive the replicas (DESIGN.md §3 "Ownership across replicas"): ≥ 32 SYNC sessions
  under a concurrent workload through the router (ingest, greedy generation that keeps its
  output, scoring with commit, fork) while (a) a replica is killed with kill -9 and restarted,
  (b) every replica is restarted in turn with SIGTERM on its ports and id (a rolling update),
  (c) a fourth replica joins and one leaves. Every call that changes a session names the
  version it expects, so a call whose outcome the client could not see (the connection broke)
  is settled by reading the session's version afterwards. Afterwards every session exists at
  exactly the version the test knows, and scores a probe as the same acknowledged requests
  replayed one at a time on a fresh single server (token ids exactly; log-probabilities to 1e-5:
  the cluster batched requests of many sessions, test_server_durability_crash.py explains).
  The only errors a client saw were retryable (UNAVAILABLE; ABORTED with reason SESSION_MOVED;
  a stream nginx reset when its replica died), and each was retried.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import os
import random
import threading
import time
from typing import Callable, Optional

import grpc
import pytest

from deploy.local.cluster import Cluster, ClusterConfig, ClusterError
from durability_harness import PROBE
from mnemo_client import MnemoClient, errors
from server_harness import BASE_FLAGS, document, wait_until

SEED = int(os.environ.get("MNEMO_REPLICA_SEED", "1"))
SESSIONS = 32
MAX_FORKS = 8
WORKERS = 8
TOLERANCE = 1e-5
TEXT = document("GPL-3", unicode_tail=True)
# Calls through the router that fail for a retryable reason are retried for at most this long.
RETRY_FOR_S = 60.0
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def start_cluster(server_bin: str, tiny_model: str, workdir: str, identity: bool,
                  replicas: int = 3) -> Cluster:
    """Replicas of the tiny model on one store (SYNC by default), nginx, Prometheus (1 s
    scrapes). Fails the test with the failing process's log when something does not start."""
    config = ClusterConfig(server_bin=server_bin, workdir=workdir, models=[f"tiny={tiny_model}"],
                           replicas=replicas, durability="sync", shutdown_grace_s=3.0,
                           identity=identity, extra_flags=list(BASE_FLAGS),
                           prometheus_bin=os.environ.get("MNEMO_PROMETHEUS",
                                                         "/usr/bin/prometheus"))
    cluster = Cluster(config)
    try:
        return cluster.start()
    except ClusterError as e:
        error = str(e)
    cluster.close()
    pytest.fail(error, pytrace=False)


def close_cluster(cluster: Cluster) -> None:
    """Stops everything; fails unless every running replica drained and exited 0."""
    codes = cluster.close()
    bad = {rid: code for rid, code in codes.items() if code != 0}
    assert not bad, f"replicas did not exit 0 after SIGTERM: {bad}"


def replica_of(cluster: Cluster, target: str) -> str:
    for r in cluster.replicas + cluster.departed:
        if r.target == target:
            return r.replica_id
    return target


# --- routing (needs no replica cooperation: runs on any mnemo-server) ------------------------

@pytest.fixture(scope="module")
def router_cluster(server_bin, tiny_model, tmp_path_factory):
    """Three replicas without replica identities (routing and scraping need none)."""
    cluster = start_cluster(server_bin, tiny_model, str(tmp_path_factory.mktemp("router")),
                            identity=False)
    yield cluster
    close_cluster(cluster)


def routes(cluster: Cluster, ids: list[str]) -> dict[str, str]:
    """{session id: replica id} of a GetSession per id through the router (the sessions do not
    exist: every replica answers NOT_FOUND, and the access log says which one did).

    A new connection each time: after a reload, a connection opened before it stays with an old
    nginx worker (and the old upstream list) until it is idle and closed."""
    before = len(cluster.router.access_entries())
    with MnemoClient(cluster.router_target, timeout=30) as client:
        for sid in ids:
            try:
                client.get_session(sid)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, f"{e.code().name}: {e.details()}"
    entries = cluster.router.entries_after(before, len(ids))
    assert [e.session for e in entries] == ids, "the access log lacks calls"
    return {e.session: replica_of(cluster, e.upstream) for e in entries}


def test_the_router_keeps_a_session_on_one_replica_and_spreads_the_rest(router_cluster):
    cluster = router_cluster
    rng = random.Random(SEED)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(60)]
    names = sorted(r.replica_id for r in cluster.replicas)
    with MnemoClient(cluster.router_target, timeout=30) as client:
        first = routes(cluster, ids)
        assert routes(cluster, ids) == first, "a session id moved between replicas"
        assert sorted(set(first.values())) == names, f"the ids did not spread: {first}"

        # No session id: round-robin over every replica, not all to one.
        before = len(cluster.router.access_entries())
        for _ in range(3 * len(names)):
            client.models()
        served = collections.Counter(replica_of(cluster, e.upstream)
                                     for e in cluster.router.entries_after(before, 3 * len(names)))
        assert served == {n: 3 for n in names}, f"calls without x-session-id: {served}"

        # A replica down: its sessions' calls are answered by another replica (the caller sees
        # no error); every other session stays where it was.
        down = cluster.replicas[1]
        down.kill()
        during = routes(cluster, ids)
        for sid, where in first.items():
            if where == down.replica_id:
                assert during[sid] != down.replica_id
            else:
                assert during[sid] == where, f"{sid} moved from {where} to {during[sid]}"
        # Back on its ports: its sessions return once nginx retries it (fail_timeout).
        down.start()
        down.wait_serving()
        wait_until(lambda: routes(cluster, ids) == first, timeout=20, interval=0.5,
                   message="the restarted replica's sessions to return to it")

        # A fourth replica: only sessions that now hash to it move; it leaves, they return.
        joined = cluster.add_replica()
        with_four = routes(cluster, ids)
        moved = {sid for sid in ids if with_four[sid] != first[sid]}
        assert moved and all(with_four[sid] == joined.replica_id for sid in moved), (
            f"a joining replica moved sessions between the others: {with_four}")
        assert len(moved) < len(ids) / 2, f"{len(moved)} of {len(ids)} sessions moved"
        assert cluster.remove_replica(joined) == 0, "the leaving replica did not exit 0"
        assert routes(cluster, ids) == first


# --- Prometheus -------------------------------------------------------------------------------

def promql_expressions() -> list[dict]:
    """Every PromQL expression the project ships (dashboards, alert and recording rules), from
    deploy/tools/promql_expressions.py: dicts with "expr" and "source"."""
    try:
        module = importlib.import_module("deploy.tools.promql_expressions")
    except ModuleNotFoundError as e:
        if e.name not in ("deploy.tools", "deploy.tools.promql_expressions"):
            raise
        pytest.fail("deploy/tools/promql_expressions.py is missing: it lists every PromQL "
                    "expression of the dashboards and rules, which this test evaluates against "
                    "a real Prometheus scraping the replicas", pytrace=False)
    function = getattr(module, "expressions", None)
    if not callable(function):
        pytest.fail("deploy/tools/promql_expressions.py has no expressions() function",
                    pytrace=False)
    found = list(function())
    assert found, "deploy/tools/promql_expressions.py lists no expression"
    for item in found:
        assert isinstance(item, dict) and item.get("expr") and item.get("source"), item
    return found


def wait_scraped(cluster: Cluster, times: int = 2, timeout: float = 60.0) -> None:
    """Waits until Prometheus has scraped every member replica at least `times` times since it
    last started, each time successfully, and the newest scrape of each is up."""
    prometheus = cluster.prometheus
    members = {r.replica_id for r in cluster.replicas}

    def done() -> bool:
        up = {labels.get("replica"): value
              for labels, value in prometheus.samples('up{job="mnemo"}')}
        ups = {labels.get("replica"): value for labels, value in prometheus.samples(
            'sum by (replica) (sum_over_time(up{job="mnemo"}[5m]))')}
        return all(up.get(r) == 1 and ups.get(r, 0) >= times for r in members)

    wait_until(done, timeout=timeout, interval=0.5,
               message=f"Prometheus to scrape every replica ({sorted(members)}) {times} times")


def check_promql(cluster: Cluster) -> None:
    """Every shipped expression evaluates (status success) against the cluster's Prometheus."""
    failed = []
    for item in promql_expressions():
        body = cluster.prometheus.query(item["expr"])
        if body.get("status") != "success":
            failed.append(f"{item['source']}: {item['expr']}\n    -> {body.get('error', body)}")
    assert not failed, "PromQL expressions Prometheus refused:\n" + "\n".join(failed)


def test_prometheus_scrapes_every_replica_and_evaluates_the_shipped_expressions(router_cluster):
    cluster = router_cluster
    # Traffic through the router (requests, tokens, latencies on every replica).
    with MnemoClient(cluster.router_target, timeout=30) as client:
        for i in range(6):
            client.generate_result(prompt=f"Part {i}:", max_tokens=4, temperature=0,
                                   ignore_eos=True)
            client.score(text=f"The work number {i}")
    wait_scraped(cluster)
    prometheus = cluster.prometheus
    per_replica = {labels["replica"]: value for labels, value in prometheus.samples(
        'sum by (replica) (mnemo_requests_total{rpc="Generate",code="OK"})')}
    assert sum(per_replica.values()) == 6 and len(per_replica) == 3, per_replica
    check_promql(cluster)


# --- sessions across replicas ----------------------------------------------------------------

def error_reason(error: grpc.RpcError) -> str:
    """The reason of the call's ErrorInfo detail (mnemo_client.errors), or ""."""
    return errors.error_reason(error)


class Outcome:
    """How a failed call is treated.

    NOT_APPLIED: nothing was committed (ABORTED SESSION_MOVED, UNAVAILABLE DRAINING): retry.
    UNKNOWN: the transport broke (UNAVAILABLE without a reason, or the stream nginx reset with
    RST_STREAM when its replica died: gRPC reports that as INTERNAL "Received RST_STREAM"; a
    CANCELLED the client did not ask for, from a replica's transport shutting down at the end of
    its drain): settle the version, then retry if it did not move.
    FATAL: anything else (the test fails)."""

    NOT_APPLIED, UNKNOWN, FATAL = "not applied", "unknown", "fatal"


def classify(error: grpc.RpcError) -> tuple[str, str]:
    """(Outcome, label for the error counts) of a failed call."""
    code, reason = error.code(), error_reason(error)
    if code == grpc.StatusCode.ABORTED and reason == "SESSION_MOVED":
        return Outcome.NOT_APPLIED, "ABORTED SESSION_MOVED"
    if code == grpc.StatusCode.UNAVAILABLE:
        if reason == "DRAINING":
            return Outcome.NOT_APPLIED, "UNAVAILABLE DRAINING"
        if reason:
            return Outcome.FATAL, f"UNAVAILABLE {reason}: {error.details()}"
        return Outcome.UNKNOWN, "UNAVAILABLE (transport)"
    if code == grpc.StatusCode.INTERNAL and "RST_STREAM" in (error.details() or ""):
        return Outcome.UNKNOWN, "INTERNAL (router reset the stream)"
    # This test never cancels a call itself: CANCELLED is a draining replica's transport
    # shutting down with the call still running past --shutdown-grace (a request waiting on a
    # hand-off may: --handoff-timeout is longer), or reaching it in that moment. The request is
    # rolled back, unless it finished just then.
    if code == grpc.StatusCode.CANCELLED:
        return Outcome.UNKNOWN, "CANCELLED (replica shut down)"
    return Outcome.FATAL, f"{code.name} {reason}: {error.details()}".strip()


@dataclasses.dataclass
class Op:
    """One state-changing request; `ids` are the tokens an acknowledged generation produced."""

    kind: str  # ingest | generate | score
    chunks: tuple = ()
    prompt: Optional[str] = None
    max_tokens: int = 0
    text: str = ""
    ids: Optional[tuple] = None


def random_op(rng: random.Random) -> Op:
    start = rng.randrange(len(TEXT) - 400)
    roll = rng.random()
    if roll < 0.45:
        pieces, pos = [], start
        for _ in range(rng.randint(1, 3)):
            n = rng.randint(1, 80)
            pieces.append(TEXT[pos:pos + n])
            pos += n
        return Op("ingest", chunks=tuple(pieces))
    if roll < 0.75:
        prompt = None if rng.random() < 0.3 else TEXT[start:start + rng.randint(1, 30)]
        return Op("generate", prompt=prompt, max_tokens=rng.randint(1, 4))
    text = TEXT[start:start + rng.randint(1, 50)]
    if not any(ch.isalnum() for ch in text):  # whitespace alone scores nothing
        text += " and more"
    return Op("score", text=text)


def apply(client: MnemoClient, session_id: str, op: Op, expected: int) -> tuple[int, tuple]:
    """Runs `op` on a session expected at version `expected` (0: any, a new session); returns
    (version after, generated ids)."""
    if op.kind == "ingest":
        return client.ingest(session_id, list(op.chunks),
                             expected_state_version=expected).state_version, ()
    if op.kind == "generate":
        r = client.generate_result(session_id, op.prompt, max_tokens=op.max_tokens,
                                   temperature=0, ignore_eos=True, commit="keep_all",
                                   expected_state_version=expected)
        return r.final.state_version_after, tuple(r.ids)
    return client.score(session_id, text=op.text, commit=True,
                        expected_state_version=expected).state_version, ()


@dataclasses.dataclass
class Tracked:
    """A session as the test knows it: the acknowledged (or settled as applied) requests that
    made its state, and its version."""

    id: str
    history: list  # Ops from its creation (a fork's starts with its source's)
    version: int


class Workload:
    """WORKERS threads through the router, each owning some sessions and running random requests
    on them until `stop` is set, retrying every retryable failure (counted in `errors`)."""

    def __init__(self, target: str, rng: random.Random):
        self.client = MnemoClient(target, timeout=60)
        self.rng = rng
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.tracked: list[Tracked] = []
        self.errors: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.ops_done = 0
        self.forks = 0
        self.settled = collections.Counter()  # applied / not applied after an unknown outcome

    # -- retrying calls --

    def call(self, what: str, fn: Callable, settle: Optional[Callable[[], bool]] = None):
        """fn() until it succeeds. A failure whose outcome is unknown is settled with
        `settle()` (True: it was applied, return None) before retrying; without `settle`, fn is
        safe to repeat. A fatal error raises AssertionError."""
        end = time.monotonic() + RETRY_FOR_S
        delay = 0.05
        while True:
            try:
                return fn()
            except grpc.RpcError as e:
                outcome, label = classify(e)
                with self.lock:
                    self.errors[label] += 1
                if outcome == Outcome.FATAL:
                    raise AssertionError(f"{what}: non-retryable error {label}")
                if time.monotonic() > end:
                    raise AssertionError(f"{what}: still failing after {RETRY_FOR_S:.0f} s "
                                         f"({label})")
                if outcome == Outcome.UNKNOWN and settle is not None:
                    applied = settle()
                    with self.lock:
                        self.settled["applied" if applied else "not applied"] += 1
                    if applied:
                        return None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def settled_version(self, session_id: str) -> int:
        """The session's committed version once no request runs on it. A read-only Score takes
        the session: while a request whose client was cut off still finishes on a replica, it
        answers plain ABORTED (busy), which is waited out (and counted)."""
        end = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                return self.client.score(session_id, text=" settle").state_version
            except grpc.RpcError as e:
                outcome, label = classify(e)
                busy = e.code() == grpc.StatusCode.ABORTED and not error_reason(e)
                with self.lock:
                    self.errors["ABORTED busy (settling)" if busy else label] += 1
                if (outcome == Outcome.FATAL and not busy) or time.monotonic() > end:
                    raise AssertionError(f"settling {session_id}: {label}")
                time.sleep(0.1)

    # -- sessions --

    def create(self) -> Tracked:
        # A create whose answer was lost may leave an orphan session; the test tracks the one
        # it was told about.
        session = self.call("CreateSession", lambda: self.client.create_session(
            durability="sync"))
        return Tracked(session.id, [], session.state_version)

    def step(self, t: Tracked, op: Op) -> None:
        """Applies `op` to `t` exactly once."""
        result = {}

        def run():
            result["version"], result["ids"] = apply(self.client, t.id, op, t.version)

        def settle() -> bool:
            version = self.settled_version(t.id)
            assert version in (t.version, t.version + 1), (
                f"{t.id}: version {version} after a request at {t.version}")
            return version == t.version + 1

        self.call(f"{op.kind} on {t.id} at version {t.version}", run, settle)
        if "version" in result:
            assert result["version"] == t.version + 1, (t.id, op.kind, result, t.version)
            op.ids = result["ids"] if op.kind == "generate" else None
        t.history.append(op)
        t.version += 1

    def fork(self, t: Tracked) -> Tracked:
        child = self.call(f"fork of {t.id}", lambda: self.client.fork_session(
            t.id, expected_state_version=t.version))
        return Tracked(child.id, list(t.history), child.state_version)

    def run_worker(self, w: int, owned: list[Tracked]) -> None:
        rng = random.Random(self.rng.random() + w)
        try:
            while not self.stop.is_set():
                t = rng.choice(owned)
                with self.lock:
                    may_fork = self.forks < MAX_FORKS
                    if may_fork and rng.random() < 0.06:
                        self.forks += 1
                    else:
                        may_fork = False
                if may_fork:
                    child = self.fork(t)
                    owned.append(child)
                    with self.lock:
                        self.tracked.append(child)
                else:
                    self.step(t, random_op(rng))
                with self.lock:
                    self.ops_done += 1
        except BaseException as e:  # noqa: BLE001 — reported by the main thread
            with self.lock:
                self.failures.append(f"worker {w}: {type(e).__name__}: {e}")
            self.stop.set()

    def start(self) -> None:
        self.tracked = [self.create() for _ in range(SESSIONS)]
        for i, t in enumerate(self.tracked):  # a document first: a generation needs context
            self.step(t, Op("ingest", chunks=(TEXT[i * 200:i * 200 + 90],
                                               TEXT[i * 200 + 90:i * 200 + 200])))
        owned = [[t for i, t in enumerate(self.tracked) if i % WORKERS == w]
                 for w in range(WORKERS)]
        self.threads = [threading.Thread(target=self.run_worker, args=(w, owned[w]), daemon=True)
                        for w in range(WORKERS)]
        for thread in self.threads:
            thread.start()

    def wait_ops(self, n: int, timeout: float = 120.0) -> None:
        """Lets the workload run `n` more requests (fails early when a worker failed)."""
        with self.lock:
            goal = self.ops_done + n
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.failures:
                    pytest.fail("\n".join(self.failures), pytrace=False)
                if self.ops_done >= goal:
                    return
            if time.monotonic() > end:
                pytest.fail(f"the workload made {self.ops_done} of {goal} requests in "
                            f"{timeout:.0f} s", pytrace=False)
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=RETRY_FOR_S + 30)
            assert not thread.is_alive(), "a workload thread is stuck"
        assert not self.failures, "\n".join(self.failures)


def probe(client: MnemoClient, session_id: str) -> tuple[list[int], list[float]]:
    scored = client.score(session_id, text=PROBE)
    return [t.id for t in scored.tokens], [t.logprob for t in scored.tokens]


def replay(client: MnemoClient, t: Tracked) -> str:
    """t's requests one at a time on a fresh session of `client`; checks the greedy tokens of
    every acknowledged generation; returns the session's id."""
    session = client.create_session()
    version = session.state_version
    for i, op in enumerate(t.history):
        version, ids = apply(client, session.id, op, version)
        if op.ids is not None:
            assert ids == op.ids, (
                f"{t.id}: request {i} ({op.kind}) generated {op.ids} on the cluster, {ids} "
                f"replayed on one server")
    assert version == len(t.history)
    return session.id


def test_sessions_survive_crashes_rolling_restarts_and_membership_changes(
        server_bin, tiny_model, tmp_path, start_server):
    cluster = start_cluster(server_bin, tiny_model, str(tmp_path / "cluster"), identity=True)
    try:
        workload = Workload(cluster.router_target, random.Random(SEED))
        workload.start()
        workload.wait_ops(2 * SESSIONS)

        # (a) kill -9 and a restart on the same ports and id.
        victim = cluster.replicas[1]
        cluster.restart(victim, "kill", down_s=1.0)
        workload.wait_ops(2 * SESSIONS)

        # (b) a rolling update: each replica SIGTERMed (it drains its sessions to the store),
        # its replacement started on the same ports and id once it has exited.
        for r in list(cluster.replicas):
            code = cluster.restart(r, "term")
            assert code == 0, f"{r.replica_id} exited {code} after SIGTERM (expected 0)"
            workload.wait_ops(SESSIONS)

        # (c) a fourth replica joins (nginx reloaded with it), then one leaves (out of nginx
        # first, then SIGTERM).
        cluster.add_replica()
        workload.wait_ops(2 * SESSIONS)
        leaving = cluster.replicas[0]
        assert cluster.remove_replica(leaving) == 0, f"{leaving.replica_id} did not exit 0"
        workload.wait_ops(2 * SESSIONS)
        workload.finish()

        client = workload.client
        # Every session exists at the version the test knows.
        for t in workload.tracked:
            got = workload.call(f"GetSession {t.id}", lambda: client.get_session(t.id))
            assert got.state_version == t.version, (
                f"{t.id}: state_version {got.state_version}, the test knows {t.version}")
        cluster_scores = {t.id: workload.call(f"probe {t.id}", lambda: probe(client, t.id))
                          for t in workload.tracked}

        # The clients saw only retryable errors, each retried.
        allowed = {"ABORTED SESSION_MOVED", "UNAVAILABLE DRAINING", "UNAVAILABLE (transport)",
                   "INTERNAL (router reset the stream)", "CANCELLED (replica shut down)",
                   "ABORTED busy (settling)"}
        assert set(workload.errors) <= allowed, dict(workload.errors)
        print(f"\nreplica test: {workload.ops_done} requests on {len(workload.tracked)} "
              f"sessions; retried errors {dict(workload.errors)}; unknown outcomes settled "
              f"{dict(workload.settled)}")

        # The replicas' own account, through Prometheus (hand-offs, ownership, identities).
        wait_scraped(cluster)
        prometheus = cluster.prometheus
        infos = {labels.get("replica") for labels, _ in prometheus.samples("mnemo_replica_info")}
        assert {r.replica_id for r in cluster.replicas} <= infos, infos
        moved_in = sum(v for _, v in prometheus.samples(
            'sum(mnemo_session_handoffs_total{direction="in"})'))
        assert moved_in > 0, "no replica counted a session handed off to it"
        check_promql(cluster)
    finally:
        if "workload" in locals():
            workload.stop.set()
        close_cluster(cluster)

    # The same requests replayed one at a time on a fresh single server.
    reference = start_server()
    with reference.client() as ref:
        for t in workload.tracked:
            sid = replay(ref, t)
            want, got = probe(ref, sid), cluster_scores[t.id]
            assert got[0] == want[0], f"{t.id}: probe tokens differ"
            worst = max(abs(a - b) for a, b in zip(got[1], want[1]))
            assert worst <= TOLERANCE, f"{t.id}: probe logprobs differ by {worst:.3g}"
