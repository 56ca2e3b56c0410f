"""Helpers for the end-to-end server tests: a real mnemo-server process on free loopback ports,
Prometheus text parsing, hand-serialized protobuf for requests the Python protobuf library
refuses to build (invalid UTF-8), and small retry/wait utilities.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from typing import Callable, Iterable, Optional, Union

import grpc
import pytest

from deploy.local.cluster import free_port  # noqa: F401  (the tests' one port picker)
from mnemo_client import MnemoClient
from mnemo_client import health
from mnemo_client.tls import TlsConfig

# Tokens per model segment of the test servers; the offline reference uses the same.
SEGMENT_TOKENS = 16
# Flags every test server gets unless a test says otherwise.
BASE_FLAGS = ["--segment-tokens", str(SEGMENT_TOKENS), "--max-generate-tokens", "1000000"]

# Servers alive in this pytest process: conftest attaches their stderr to failing tests.
RUNNING_SERVERS: list["ServerProcess"] = []


def executable(var: str) -> str:
    """The executable environment variable `var` names (ctest sets it); the test fails, never
    skips, without it."""
    path = os.environ.get(var)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"{var} must name an executable (ctest sets it); got {path!r}",
                    pytrace=False)
    return path


class ServerProcess:
    """One mnemo-server process: started on construction, stopped by `stop()`."""

    # Whether the harness picked the ports (a start-up that lost them may move to new ones).
    picks_ports = True
    relaunches = 0

    def __init__(self, binary: str, model_dir: str, workdir: str, extra_flags: Iterable[str] = (),
                 models: Optional[list[str]] = None, grace_s: float = 5.0,
                 tls: Optional[TlsConfig] = None):
        # `tls`: how the harness and client() connect when the server's listener is TLS.
        self.tls = tls
        self.grace_s = grace_s
        self.workdir = workdir
        self.model_flags = []
        for spec in models or [f"tiny={model_dir}"]:
            self.model_flags += ["--model", spec]
        self.binary, self.extra_flags = binary, list(extra_flags)
        self._launch()
        self.returncode: Optional[int] = None
        self.sigterm_sent = False
        RUNNING_SERVERS.append(self)

    def _launch(self) -> None:
        """Starts the process on two ports free_port picked."""
        self.port = free_port()
        self.metrics_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.stderr_path = os.path.join(self.workdir, f"mnemo-server-{self.port}.log")
        self.args = [self.binary, "--listen", self.target,
                     "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                     *self.model_flags, "--shutdown-grace", f"{self.grace_s:g}s",
                     *self.extra_flags]
        self._log = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.channel = self.new_channel()

    def _relaunch_if_port_taken(self) -> bool:
        """free_port's port is free when picked, not when the server binds it: another process
        (a parallel test) may take it in between. A server that exited at start-up for that
        alone starts again on new ports (at most twice); True when it did."""
        if (not self.picks_ports or self.relaunches >= 2 or
                "Address already in use" not in self.stderr_text()):
            return False
        self.relaunches += 1
        self.channel.close()
        self._log.close()
        self._launch()
        return True

    def stderr_text(self, tail_bytes: int = 20000) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.stderr_path, "rb") as f:
            data = f.read()
        return data[-tail_bytes:].decode("utf-8", errors="replace")

    def fail(self, message: str) -> None:
        if not self.sigterm_sent and "signal 15" in self.stderr_text():
            message += " (it received a SIGTERM this harness did not send: killed from outside?)"
        pytest.fail(f"{message}\n--- mnemo-server {' '.join(self.args)}\n{self.stderr_text()}",
                    pytrace=False)

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Polls grpc.health.v1 until SERVING; fails with the server's log if it dies first."""
        end = time.monotonic() + timeout
        last = None
        # A channel whose first connection attempts failed (nothing listened yet) waits out
        # gRPC's reconnect backoff, seconds per start: once the log says the server listens, a
        # fresh channel connects at once.
        fresh = False
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                if self._relaunch_if_port_taken():
                    fresh = False
                    continue
                self.fail(f"mnemo-server exited with {self.proc.returncode} during start-up")
            if not fresh:
                if "listening on" not in self.stderr_text():
                    time.sleep(0.02)
                    continue
                self.channel.close()
                self.channel = self.new_channel()
                fresh = True
            try:
                status = health.health_check(self.channel, timeout=1.0)
                if status == health.SERVING:
                    return
                last = f"health status {health.STATUS_NAMES.get(status, status)}"
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            time.sleep(0.1)
        self.fail(f"mnemo-server not SERVING after {timeout:.0f} s (last: {last})")

    def new_channel(self) -> grpc.Channel:
        if self.tls is not None:
            return self.tls.channel(self.target)
        return grpc.insecure_channel(self.target)

    def client(self, timeout: Optional[float] = 120.0) -> MnemoClient:
        return MnemoClient(self.target, timeout=timeout, tls=self.tls)

    def health(self, timeout: float = 2.0) -> int:
        return health.health_check(self.channel, timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """Sends SIGTERM (graceful drain)."""
        if self.proc.poll() is None:
            self.sigterm_sent = True
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL (a crash: nothing drained, nothing flushed), then reaps the process."""
        if self in RUNNING_SERVERS:
            RUNNING_SERVERS.remove(self)
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.returncode = self.proc.wait()
        self._log.close()
        return self.returncode

    def wait_exit(self, timeout: float) -> Optional[int]:
        """The exit status, or None when still running after `timeout` seconds."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, check: bool = True) -> Optional[int]:
        """SIGTERM, wait for the grace (+ slack), SIGKILL if needed; with `check`, fail unless
        the server exited 0 within the grace."""
        if self in RUNNING_SERVERS:
            RUNNING_SERVERS.remove(self)
        self.channel.close()
        already = self.proc.poll()
        self.terminate()
        code = self.wait_exit(self.grace_s + 5.0)  # idle: it should not even need the grace
        killed = False
        if code is None:
            self.proc.kill()
            self.proc.wait()
            killed = True
        self._log.close()
        if check and already is None:
            if killed:
                self.fail(f"mnemo-server still running {self.grace_s + 5.0:.0f} s after SIGTERM "
                          "(killed)")
            if code != 0:
                self.fail(f"mnemo-server exited with {code} after SIGTERM (expected 0)")
        if check and already is not None:
            self.fail(f"mnemo-server had already exited with {already} before teardown")
        return code

    # -- metrics -----------------------------------------------------------------------------

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode("utf-8")
        except OSError as e:  # URLError, connection refused, timeout
            error = e
        self.fail(f"cannot read {url}: {error}")

    def metrics(self) -> "Metrics":
        return Metrics(self.metrics_text())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value: str) -> str:
    return value.replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\")


class Metrics:
    """A parsed Prometheus text exposition (format 0.0.4)."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.types: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(None, 3)
                self.types[name] = kind.strip()
                continue
            if not line.strip() or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            if match is None:
                raise ValueError(f"unparsable metrics line: {line!r}")
            name, label_text, value = match.groups()
            labels = {k: _unescape(v) for k, v in _LABEL.findall(label_text or "")}
            self.samples.append((name, labels, float(value)))

    def select(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == want for k, want in labels.items())]

    def sum(self, name: str, **labels: str) -> float:
        """Sum of every sample of `name` whose labels include `labels` (0 when none)."""
        return sum(v for _, v in self.select(name, **labels))

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


# -- raw protobuf (for bytes the Python library will not put in a string field) --------------

def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def pb_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def pb_bytes(number: int, payload) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def raw_unary(channel: grpc.Channel, method: str, request: bytes, timeout: float = 30.0) -> bytes:
    """Calls `method` ("/pkg.Service/Method") with hand-serialized request bytes."""
    return channel.unary_unary(method)(request, timeout=timeout)


def raw_unary_stream(channel: grpc.Channel, method: str, request: bytes,
                     timeout: float = 30.0) -> list[bytes]:
    return list(channel.unary_stream(method)(request, timeout=timeout))


def raw_stream_stream(channel: grpc.Channel, method: str, requests: Iterable[bytes],
                      timeout: float = 60.0) -> list[bytes]:
    return list(channel.stream_stream(method)(iter(requests), timeout=timeout))


# -- waiting -------------------------------------------------------------------------------

def retry_while_aborted(fn: Callable, timeout: float = 10.0):
    """Calls fn() until it does not fail with ABORTED (a just-finished request may still hold
    the session for a moment); re-raises after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ABORTED or time.monotonic() > end:
                raise
            time.sleep(0.05)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1,
               message: Union[str, Callable[[], str]] = "condition") -> None:
    """Polls predicate until it holds. A callable message is built only on a timeout, so it may
    describe a state (a directory listing) that changes while the wait goes on."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            what = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def rpc_code(fn: Callable) -> grpc.StatusCode:
    """The status code fn() fails with (OK when it does not raise)."""
    try:
        result = fn()
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes, list, dict)):
            for _ in result:  # drain streams so their status is known
                pass
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def expect_error(fn: Callable, code: grpc.StatusCode) -> grpc.RpcError:
    """Runs fn() (draining a returned stream) and asserts it fails with `code`."""
    try:
        result = fn()
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes, list, dict)):
            for _ in result:
                pass
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code.name}, got {e.code().name}: {e.details()}"
        return e
    pytest.fail(f"expected {code.name}, the call succeeded", pytrace=False)


# -- documents -------------------------------------------------------------------------------

LICENCES = "/usr/share/common-licenses"
# Multi-byte characters of every length, so chunk cuts can fall inside them.
UNICODE_TAIL = ("\nNaïve café façade — “quoted” text, 日本語の文章, emoji 🎉 and 𝄞 music; "
                "Ærøskøbing, Ελληνικά, кириллица.\n")


def document(name: str = "Apache-2.0", unicode_tail: bool = True) -> str:
    """A licence text from the Debian system (several KB), optionally with non-ASCII text."""
    with open(os.path.join(LICENCES, name), encoding="utf-8") as f:
        text = f.read()
    return text + (UNICODE_TAIL if unicode_tail else "")


def odd_chunks(text: str, seed: int, max_chars: int = 97) -> list[str]:
    """Cuts `text` into pieces of 1 … max_chars characters at pseudo-random places (inside words,
    right before and after spaces and newlines)."""
    import random
    rng = random.Random(seed)
    pieces, pos = [], 0
    while pos < len(text):
        n = rng.choice([1, 2, 3, 5, 8, 13, rng.randint(1, max_chars)])
        pieces.append(text[pos:pos + n])
        pos += n
    assert "".join(pieces) == text
    return pieces


def byte_cuts_inside_characters(data: bytes, seed: int, max_bytes: int = 61) -> list[bytes]:
    """Cuts UTF-8 `data` into pieces, every multi-byte character split across two pieces and
    elsewhere at pseudo-random places."""
    import random
    rng = random.Random(seed)
    cuts = {i + 1 for i, b in enumerate(data) if b >= 0xC0}  # right after each lead byte
    pos = 0
    while pos < len(data):
        pos += rng.randint(1, max_bytes)
        cuts.add(pos)
    cuts = sorted(c for c in cuts if 0 < c < len(data))
    pieces, prev = [], 0
    for c in cuts + [len(data)]:
        pieces.append(data[prev:c])
        prev = c
    assert b"".join(pieces) == data
    return pieces


def run_cli(mnemo_bin: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([mnemo_bin, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"mnemo {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}",
                    pytrace=False)
    return proc


def cli_generate(mnemo_bin: str, model_dir: str, prompt_file: str, max_tokens: int,
                 segment_len: int, temperature: float = 0.0,
                 seed: int = 0) -> tuple[str, list[int], list[float]]:
    """The offline engine's continuation of a prompt file: (text, token ids, logprobs).

    The logprobs come from `--logprobs 1` (printed with 4 decimals)."""
    proc = run_cli(mnemo_bin, "generate", "--model", model_dir, "--prompt-file", prompt_file,
                   "--temperature", f"{temperature:g}", "--seed", str(seed),
                   "--max-tokens", str(max_tokens), "--ignore-eos",
                   "--segment-len", str(segment_len), "--logprobs", "1")
    assert proc.stdout.endswith("\n"), proc.stdout
    rows = [line.split("\t") for line in proc.stderr.splitlines() if line[:1].isdigit()]
    assert len(rows) == max_tokens, proc.stderr
    return proc.stdout[:-1], [int(r[0]) for r in rows], [float(r[1]) for r in rows]


def logprob_values(result) -> list[float]:
    return [lp.logprob for lp in result.logprobs]


def assert_same_generation(got, want, tol: float = 1e-4) -> None:
    """Two GenerateResults (asked with logprobs=True) chose the same tokens with the same
    log-probabilities. The logprobs make the check sensitive to the whole state: the tiny
    random model's greedy output often just repeats its last input token."""
    assert got.ids == want.ids
    assert len(got.logprobs) == len(got.ids), "ask for logprobs=True"
    assert logprob_values(got) == pytest.approx(logprob_values(want), abs=tol)
