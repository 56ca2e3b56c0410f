"""Fault-injection soak: the real server (built with ASan + LSan + UBSan in CI: the `server_soak`
ctest entry of the asan preset) under --backend-faults, driven by the real Python client with 64
sessions and a random mix of ingest, generate (every commit mode), score, fork, export, delete,
one-shot requests, client cancellations and deadlines.

What it asserts:
  * no crash, no sanitizer report, exit 0 after SIGTERM (LSan's leak check runs at exit);
  * every failure is a typed status: an injected fault (RESOURCE_EXHAUSTED or INTERNAL naming
    it), the client's own DEADLINE_EXCEEDED or CANCELLED; nothing else;
  * every request failed by a fault is rolled back: the session's version and its whole state
    (the exported snapshot's data area and manifest, but for the last-use time) are as before;
    after a deadline or a cancellation the session is either as before or the request committed
    (a result the server finished just as the client gave up);
  * successful requests advance the version by exactly one when they commit and leave the
    session as it was when they do not; a fork's child holds its parent's state;
  * after each round (faults off) every session still works, the server lists exactly the
    sessions the client believes exist, and once they are deleted the sessions and state-bytes
    gauges are 0; at the end the server's heap (the bytes it holds as its allocator counts them,
    mnemo_heap_allocated_bytes) is within 10% of what it was after a 30 s warm-up round of the
    same mix, and with MNEMO_SOAK_RSS_BOUND (1.10 for the release build) so is its RSS, measured
    after the server has handed the allocator's free memory back to the system
    (--memory-release-interval, 1 s here; before the releaser glibc's per-thread arenas kept the
    RSS up to 13% above its level). Under ASan the RSS is reported only: the shadow memory and the
    sanitizer allocator's regions grow with the addresses used, not with what is held (5 min:
    heap 1.01 → 1.01 MiB, RSS 133.7 → 155.6 MiB). The RSS and the heap after every round are
    reported: they show whether memory levels off or keeps growing.

Environment: MNEMO_SOAK_SECONDS (default 45, in rounds of at most a minute),
MNEMO_SOAK_WARMUP_SECONDS (30), MNEMO_SOAK_SESSIONS (64), MNEMO_SOAK_SEED (1), MNEMO_SOAK_FAULTS
(the spec), MNEMO_SOAK_MIX (JSON weights of the requests, e.g. {"cancel": 0}),
MNEMO_SOAK_REPORT (a file the figures are written to as JSON), MNEMO_SOAK_RSS_BOUND (the RSS
bound as a ratio; 0: none).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest

from mnemo_client import MnemoClient

SOAK_SECONDS = float(os.environ.get("MNEMO_SOAK_SECONDS", "45"))
# Long enough for the server's memory to reach its working size under this mix (measured: a
# 10 s warm-up left the first minute's RSS 6–11% above it, a further minute without
# cancellations added nothing).
WARMUP_SECONDS = float(os.environ.get("MNEMO_SOAK_WARMUP_SECONDS", "30"))
SESSIONS = int(os.environ.get("MNEMO_SOAK_SESSIONS", "64"))
SEED = int(os.environ.get("MNEMO_SOAK_SEED", "1"))
RSS_BOUND = float(os.environ.get("MNEMO_SOAK_RSS_BOUND", "0"))
WORKERS = 8
VOCAB = 1000  # tools/make_tiny_model.py's default
# Per backend op. A forward pass of the tiny model issues ~40 ops, so about one request in ten
# meets a fault, of every kind: allocations, kernels, memory appends, copies, tier moves.
FAULTS = os.environ.get(
    "MNEMO_SOAK_FAULTS",
    "alloc:oom%0.002, compute:fail%0.0008, attention:late%0.003, append:late%0.004, "
    "copy:fail%0.004, download:fail%0.01, upload:oom%0.01, sync:fail%0.003")
# Relative weights of the requests (MNEMO_SOAK_MIX, JSON, overrides some of them).
MIX = {"ingest": 24, "generate": 22, "score": 16, "fork": 6, "delete": 4, "oneshot": 6,
       "cancel": 8, "deadline": 8, "export": 6}
MIX.update(json.loads(os.environ.get("MNEMO_SOAK_MIX", "{}")))
FAULT_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
# The server's sanitizers: a report fails the run (exit status), leaks are checked at exit. ASan
# keeps freed memory in a quarantine (256 MiB by default) to catch uses after free; 16 MiB still
# catches the recent ones and keeps the reported RSS close to the server's own memory (with the
# default the RSS grows by the quarantine: 233 → 436 MiB measured; the bound is on the heap).
# Freed pages go back to the system every 0.5 s.
ASAN_OPTIONS = ("detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=66:"
                "quarantine_size_mb=16:allocator_release_to_os_interval_ms=500")
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1"


@pytest.fixture(scope="module")
def ids_only_model(tiny_model, tmp_path_factory):
    """The tiny checkpoint without its tokenizer: a sanitized server cannot load sentencepiece
    (engine/tokenizer/sentencepiece_module.h), so the soak speaks token ids."""
    out = tmp_path_factory.mktemp("soak_model")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model, name), out / name)
    return str(out)


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/PID/status (kB values in bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                fields = line.split()
                return int(fields[1]) * (1024 if fields[-1] == "kB" else 1)
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return proc_status(pid, "VmRSS")


def set_faults(path: str, spec: str) -> None:
    """Switches the server's faults (its --backend-faults @path): a new file renamed over."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(spec)
    os.replace(tmp, path)
    time.sleep(0.1)  # the spec file is looked at every 10 ms at most


def snapshot_key(data: bytes):
    """What must not change when a request is rolled back: the snapshot's manifest (section
    checksums, positions, bookkeeping, pending tokens, version, token count) but for the
    last-use time, and the data area itself (docs/session-snapshots.md)."""
    assert data[:8] == b"MNEMOSS\0", data[:8]
    (length,) = struct.unpack_from("<Q", data, 16)
    manifest = json.loads(data[32:32 + length])
    manifest["session"].pop("last_use_unix_ms", None)
    start = (32 + length + 63) // 64 * 64
    return json.dumps(manifest, sort_keys=True), data[start:]


def data_area(key) -> bytes:
    return key[1]


@dataclass
class Stats:
    ok: dict = field(default_factory=dict)
    injected: dict = field(default_factory=dict)
    deadline: int = 0
    cancelled: int = 0
    committed_at_deadline: int = 0
    rolled_back_checked: int = 0
    unexpected: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, table: dict, op: str) -> None:
        with self.lock:
            table[op] = table.get(op, 0) + 1

    def bump(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def problem(self, text: str) -> None:
        with self.lock:
            self.unexpected.append(text)


class Worker:
    """Owns a set of sessions and runs one random request at a time on them."""

    def __init__(self, index: int, client: MnemoClient, stats: Stats, sessions: list[str],
                 deadline: float):
        self.index = index
        self.client = client
        self.stats = stats
        self.sessions = {sid: 0 for sid in sessions}  # id -> state version the client knows
        self.rng = random.Random(SEED * 1000 + index)
        self.deadline = deadline
        self.ops = 0

    # -- helpers ---------------------------------------------------------------------------

    def retry(self, fn, what: str, attempts: int = 200):
        """fn() until it does not fail with an injected fault or ABORTED (a request the client
        gave up on may still hold the session for a moment)."""
        for _ in range(attempts):
            try:
                return fn()
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.ABORTED or self.injected(e):
                    time.sleep(0.01)
                    continue
                raise
        raise AssertionError(f"{what}: still failing after {attempts} attempts")

    @staticmethod
    def injected(e: grpc.RpcError) -> bool:
        return e.code() in FAULT_CODES and "injected fault" in (e.details() or "")

    def snapshot(self, sid: str):
        data = self.retry(lambda: self.client.export_session(sid, timeout=60), "export")
        key = snapshot_key(data)
        return json.loads(key[0])["session"]["state_version"], key

    def new_session(self) -> str:
        s = self.retry(lambda: self.client.create_session(labels={"soak": "1"}), "create")
        self.sessions[s.id] = 0
        return s.id

    def ids(self, lo: int, hi: int) -> list[int]:
        return [self.rng.randrange(3, VOCAB) for _ in range(self.rng.randint(lo, hi))]

    # -- one request -----------------------------------------------------------------------

    def step(self) -> None:
        sid = self.rng.choice(list(self.sessions))
        op = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if op == "oneshot":
            self.oneshot()
            return
        if op == "delete":
            self.delete(sid)
            return
        if op == "export":
            version, _ = self.snapshot(sid)
            if version != self.sessions[sid]:
                self.stats.problem(f"{sid}: exported version {version}, expected "
                                   f"{self.sessions[sid]}")
            self.stats.count(self.stats.ok, "export")
            return
        before_version, before = self.snapshot(sid)
        if before_version != self.sessions[sid]:
            self.stats.problem(f"{sid}: version {before_version} before {op}, expected "
                               f"{self.sessions[sid]}")
            self.sessions[sid] = before_version
        commits, outcome = False, None
        try:
            commits = self.run(op, sid, before)
            self.stats.count(self.stats.ok, op)
            outcome = "ok"
        except grpc.RpcError as e:
            code = e.code()
            if self.injected(e):
                self.stats.count(self.stats.injected, op)
                outcome = "fault"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED and op == "deadline":
                self.stats.bump("deadline")
                outcome = "gave_up"
            elif code == grpc.StatusCode.CANCELLED and op == "cancel":
                self.stats.bump("cancelled")
                outcome = "gave_up"
            else:
                self.stats.problem(f"{op} on {sid}: {code.name}: {e.details()}")
                outcome = "fault"
        after_version, after = self.snapshot(sid)
        if outcome == "ok":
            want = before_version + (1 if commits else 0)
            if after_version != want:
                self.stats.problem(f"{op} on {sid}: version {before_version} -> {after_version}, "
                                   f"expected {want}")
            if not commits and after != before:
                self.stats.problem(f"{op} on {sid} changed a session it must not commit to")
        elif outcome == "fault" or after_version == before_version:
            self.stats.bump("rolled_back_checked")
            if after != before:
                self.stats.problem(
                    f"{op} on {sid} failed but the session changed: version {before_version} -> "
                    f"{after_version}" + ("" if after_version != before_version else
                                          " (same version, different state)"))
        elif after_version == before_version + 1:
            self.stats.bump("committed_at_deadline")
        else:
            self.stats.problem(f"{op} on {sid}: version {before_version} -> {after_version}")
        self.sessions[sid] = after_version

    def run(self, op: str, sid: str, before) -> bool:
        """Runs one request; returns whether a success commits to the session."""
        c = self.client
        if op == "ingest":
            chunks = [self.ids(1, 40) for _ in range(self.rng.randint(1, 3))]
            progress = c.ingest(sid, chunks, timeout=60)
            if progress.tokens_ingested != sum(len(x) for x in chunks):
                self.stats.problem(f"ingest on {sid}: {progress.tokens_ingested} tokens ingested")
            return True
        if op == "generate":
            commit = self.rng.choice(["keep_all", "keep_prompt", "scratch"])
            # No prompt continues the session's pending tail (refused when there is none).
            pending = json.loads(before[0])["session"]["pending"]
            prompt = self.ids(1, 20) if self.rng.random() < 0.7 or not pending else None
            result = c.generate_result(sid, prompt, max_tokens=self.rng.randint(1, 12),
                                       temperature=self.rng.choice([0, 0.8]),
                                       seed=self.rng.randrange(1 << 30), ignore_eos=True,
                                       commit=commit, logprobs=self.rng.random() < 0.3,
                                       timeout=60)
            if prompt is None and result.final.usage.prompt_tokens != 0:
                self.stats.problem(f"generate on {sid}: prompt tokens without a prompt")
            return commit != "scratch"
        if op == "score":
            commit = self.rng.random() < 0.5
            scored = c.score(sid, ids=self.ids(2, 30), commit=commit, timeout=60)
            if not scored.tokens:
                self.stats.problem(f"score on {sid}: no tokens")
            return commit
        if op == "fork":
            child = c.fork_session(sid, labels={"soak": "1"}, timeout=60)
            self.sessions[child.id] = child.state_version
            _, child_key = self.snapshot(child.id)
            if data_area(child_key) != data_area(before):
                self.stats.problem(f"fork of {sid}: the child's state differs from its parent's")
            if len(self.sessions) > 2 * SESSIONS // WORKERS:
                self.delete(self.rng.choice([s for s in self.sessions if s != sid]))
            return False
        if op == "cancel":
            # A long generation or a streamed ingest, cancelled by the client partway.
            if self.rng.random() < 0.5:
                call = c.generate(sid, self.ids(1, 8), max_tokens=400, ignore_eos=True,
                                  commit=self.rng.choice(["keep_all", "keep_prompt"]), timeout=60)
                stop_after = self.rng.randint(1, 4)
                for i, _ in enumerate(call):
                    if i >= stop_after:
                        call.cancel()
                return True
            chunks = (self.ids(8, 32) for _ in range(40))

            def progress(p):
                if p.tokens_ingested > 60:
                    raise _StopIngest()
            try:
                c.ingest(sid, chunks, on_progress=progress, timeout=60)
            except _StopIngest:  # mnemo_client.ingest cancelled the call
                raise _Cancelled() from None
            return True
        if op == "deadline":
            c.generate_result(sid, self.ids(1, 8), max_tokens=300, ignore_eos=True,
                              commit="keep_all", timeout=self.rng.choice([0.02, 0.05, 0.15]))
            return True
        raise AssertionError(op)

    def oneshot(self) -> None:
        try:
            if self.rng.random() < 0.5:
                self.client.generate_result("", self.ids(1, 16), model="tiny",
                                            max_tokens=self.rng.randint(1, 8), ignore_eos=True,
                                            timeout=60)
            else:
                self.client.score("", ids=self.ids(2, 24), model="tiny", timeout=60)
            self.stats.count(self.stats.ok, "oneshot")
        except grpc.RpcError as e:
            if self.injected(e):
                self.stats.count(self.stats.injected, "oneshot")
            else:
                self.stats.problem(f"oneshot: {e.code().name}: {e.details()}")

    def delete(self, sid: str) -> None:
        self.retry(lambda: self.client.delete_session(sid, timeout=60), "delete")
        del self.sessions[sid]
        self.stats.count(self.stats.ok, "delete")
        if len(self.sessions) < SESSIONS // WORKERS:
            self.new_session()

    def loop(self) -> None:
        while time.monotonic() < self.deadline:
            self.step()
            self.ops += 1


class _StopIngest(Exception):
    """Raised from an ingest's progress callback: the client cancels the call."""


class _Cancelled(grpc.RpcError):
    """The client cancelled its own call (a callback raised inside mnemo_client.ingest)."""

    def code(self):
        return grpc.StatusCode.CANCELLED

    def details(self):
        return "cancelled by the client"


def soak_round(server, fault_file: str, stats: Stats, seconds: float, first_worker: int) -> None:
    """SESSIONS new sessions, WORKERS threads of random requests on them for `seconds` with the
    faults on; then, faults off, every session must be where the client believes and still
    work, and the server must hold nothing once they are deleted. Each round is a new client
    connection, closed at its end."""
    with MnemoClient(server.target, timeout=120, retry=None) as client:
        soak_round_on(client, server, fault_file, stats, seconds, first_worker)


def soak_round_on(client: MnemoClient, server, fault_file: str, stats: Stats, seconds: float,
                  first_worker: int) -> None:
    per_worker = SESSIONS // WORKERS
    sessions = [client.create_session(labels={"soak": "1"}).id for _ in range(SESSIONS)]
    set_faults(fault_file, FAULTS)
    end = time.monotonic() + seconds
    workers = [Worker(first_worker + i, client, stats,
                      sessions[i * per_worker:(i + 1) * per_worker], end)
               for i in range(WORKERS)]
    errors = []

    def run(w):
        try:
            w.loop()
        except Exception as e:  # noqa: BLE001 (reported below with its worker)
            errors.append(f"worker {w.index}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 600)
    assert not any(t.is_alive() for t in threads), "soak workers still running"
    set_faults(fault_file, "")
    assert server.alive(), "the server died during the soak"
    assert errors == [], errors

    owned = {sid: v for w in workers for sid, v in w.sessions.items()}
    listed = {s.id: s for s in client.list_sessions()}
    assert set(listed) == set(owned), (
        f"sessions leaked: {sorted(set(listed) - set(owned))[:5]}, "
        f"lost: {sorted(set(owned) - set(listed))[:5]}")
    for sid, version in owned.items():
        assert listed[sid].state_version == version, (sid, listed[sid], version)
        result = client.generate_result(sid, [11, 12], max_tokens=2, ignore_eos=True)
        assert result.final.state_version_after == version + 1
        client.delete_session(sid)
    assert client.list_sessions() == []
    metrics = server.metrics()
    assert metrics.sum("mnemo_sessions") == 0
    assert metrics.sum("mnemo_session_state_bytes") == 0


def settled_rss(pid: int, below: float = 0, wait_s: float = 1.0) -> int:
    """The RSS once the server has had time to hand freed memory back (two of its release
    intervals), waiting up to `wait_s` more for it to fall to `below`."""
    time.sleep(2.5)
    rss = rss_bytes(pid)
    end = time.monotonic() + wait_s
    while rss > below and time.monotonic() < end:
        time.sleep(0.5)
        rss = rss_bytes(pid)
    return rss


def heap_bytes(server) -> tuple[int, int]:
    """The bytes the server holds on its heap, as its allocator (glibc, or ASan's) counts them,
    and the bytes that allocator took from the system for its heap (held or kept for reuse)."""
    metrics = server.metrics()
    return (int(metrics.sum("mnemo_heap_allocated_bytes")), int(metrics.sum("mnemo_heap_bytes")))


def test_fault_injection_soak(server_bin, ids_only_model, server_workdir, tmp_path, monkeypatch):
    from server_harness import BASE_FLAGS, ServerProcess
    monkeypatch.setenv("ASAN_OPTIONS", ASAN_OPTIONS)
    monkeypatch.setenv("UBSAN_OPTIONS", UBSAN_OPTIONS)
    fault_file = str(tmp_path / "backend-faults")
    set_faults(fault_file, "")
    # A device budget of a third of the sessions' states: idle states move to host memory and
    # back (uploads and downloads meet faults too).
    state_bytes = 2 * 2 * 64 * 128 * 4  # layers × (k, v) × mem_len × d_model × float32
    server = ServerProcess(server_bin, ids_only_model, server_workdir,
                           BASE_FLAGS + ["--backend-faults", f"@{fault_file}",
                                         "--max-sessions", "1000", "--session-ttl", "3600s",
                                         "--device-state-budget", str(state_bytes * SESSIONS // 3),
                                         "--memory-release-interval", "1s"],
                           grace_s=10.0)
    server.wait_serving(timeout=120)
    pid = server.proc.pid
    stats = Stats()
    try:
        # Warm-up: a short round of the same mix, so that the RSS measured next includes what
        # the server's pools, arenas and threads grow to under this load. Then the soak proper
        # in rounds of at most a minute, each ending with every session deleted: the RSS after
        # each shows whether memory keeps growing or levels off.
        soak_round(server, fault_file, stats, WARMUP_SECONDS, 0)
        rss_before = settled_rss(pid)
        heap_before, allocator_before = heap_bytes(server)
        threads_before = proc_status(pid, "Threads")
        rounds = max(1, math.ceil(SOAK_SECONDS / 60))
        rss_rounds, heap_rounds, allocator_rounds = [], [], []
        start = time.monotonic()
        for r in range(rounds):
            soak_round(server, fault_file, stats, SOAK_SECONDS / rounds,
                       (r + 1) * WORKERS)
            rss_rounds.append(settled_rss(pid))
            heap, allocator = heap_bytes(server)
            heap_rounds.append(heap)
            allocator_rounds.append(allocator)
        elapsed = time.monotonic() - start
        limit = heap_before * 1.10
        heap_after = heap_rounds[-1]
        rss_after = settled_rss(pid, below=rss_before * 1.10, wait_s=3.0)

        total_ok = sum(stats.ok.values())
        total_injected = sum(stats.injected.values())
        report = {
            "seconds": round(elapsed, 1), "warmup_seconds": WARMUP_SECONDS, "rounds": rounds,
            "sessions": SESSIONS, "workers": WORKERS, "faults": FAULTS,
            "requests": total_ok + total_injected + stats.deadline + stats.cancelled,
            "ok": stats.ok, "failed_by_fault": stats.injected,
            "deadline_exceeded": stats.deadline, "cancelled": stats.cancelled,
            "committed_as_the_client_gave_up": stats.committed_at_deadline,
            "rollbacks_checked": stats.rolled_back_checked,
            "rss_before_mib": round(rss_before / 2**20, 1),
            "rss_after_each_round_mib": [round(x / 2**20, 1) for x in rss_rounds],
            "rss_after_mib": round(rss_after / 2**20, 1),
            "heap_before_mib": round(heap_before / 2**20, 2),
            "heap_after_each_round_mib": [round(x / 2**20, 2) for x in heap_rounds],
            "allocator_heap_before_mib": round(allocator_before / 2**20, 1),
            "allocator_heap_after_each_round_mib": [round(x / 2**20, 1) for x in allocator_rounds],
            "threads_before": threads_before, "threads_after": proc_status(pid, "Threads"),
            "unexpected": stats.unexpected[:20],
        }
        print("\nsoak: " + json.dumps(report, indent=1))
        if os.environ.get("MNEMO_SOAK_REPORT"):
            with open(os.environ["MNEMO_SOAK_REPORT"], "w") as f:
                json.dump(report, f, indent=1)
        assert stats.unexpected == [], stats.unexpected[:20]
        assert total_ok >= 100, report
        assert total_injected >= 10, report
        assert stats.rolled_back_checked >= 10, report
        assert heap_before > 0, report  # the allocator's figures are there to compare
        assert heap_after <= limit, (
            f"heap {heap_after / 2**20:.2f} MiB after the soak, {heap_before / 2**20:.2f} MiB "
            "before")
        if RSS_BOUND:
            assert rss_after <= rss_before * RSS_BOUND, (
                f"RSS {rss_after / 2**20:.1f} MiB after the soak, {rss_before / 2**20:.1f} MiB "
                "before")
            assert server.metrics().sum("mnemo_heap_releases_total") >= 1, report
    finally:
        server.stop(check=True)
    log = server.stderr_text(tail_bytes=200000)
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in log, log[-5000:]
