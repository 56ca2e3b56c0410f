"""Transparent retries of the calls a mnemo server (or the network) refused without doing them.

Which failures are retried (clients/python/README.md, "Retries", says the same for users):

* ABORTED with ErrorInfo reason SESSION_MOVED: another replica owns the session now and nothing
  was committed; any call.
* UNAVAILABLE with ErrorInfo reason DRAINING: the server is shutting down and did nothing; any
  call.
* UNAVAILABLE that never reached a server (the channel failed to connect); any call.
* UNAVAILABLE without a reason (the connection broke, perhaps after the server got the request):
  read-only calls (`READ_ONLY`) always; state-changing calls only when the caller pinned
  `expected_state_version` (`PINNED`), so a duplicate is refused by the server instead of applied
  twice. Such a retry that is then refused (ABORTED, or NOT_FOUND for a delete) raises
  `OutcomeUnknownError`: the first attempt may have taken effect. Unpinned state-changing calls
  (`UNSAFE`) are not retried.

Server-streaming calls (Generate, ExportSession) are retried only while no response message has
arrived; client-streaming calls (Ingest, ImportSession) only while the messages already sent fit
the policy's replay buffer (they are sent again). Attempts back off exponentially with jitter and
stop at `max_attempts` or when the next one could not start before the call's deadline, which
covers all attempts. Every retry is logged at DEBUG on the "mnemo_client" logger.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import grpc

from mnemo_client.errors import DRAINING, SESSION_MOVED, OutcomeUnknownError, error_reason

log = logging.getLogger("mnemo_client")

# Substrings of gRPC's UNAVAILABLE details when the channel could not connect at all (the call
# was never sent): grpc-core's pick_first / round_robin messages and resolver failures.
_NOT_CONNECTED = ("failed to connect to all addresses", "connections to all backends failing",
                  "connection refused", "dns resolution failed")


class Safety(enum.Enum):
    """How a call may be retried after a transport failure that may have reached the server."""

    READ_ONLY = "read-only"  # changes nothing: always safe to repeat
    PINNED = "pinned"        # state-changing, expected_state_version set: a duplicate is refused
    UNSAFE = "unsafe"        # state-changing, a duplicate would apply twice: never repeated


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a MnemoClient retries (`MnemoClient(..., retry=RetryPolicy(...))`;
    `retry=None` turns retries off).

    The n-th retry waits a random time between half and all of
    min(max_backoff, initial_backoff * multiplier**(n-1)) seconds. `max_attempts` counts the
    first attempt too (1: no retry). A client-streaming call is retried only while the messages
    it sent total at most `replay_buffer_bytes` (they are kept to be sent again).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    replay_buffer_bytes: int = 64 << 20

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def delay(self, retry_index: int) -> float:
        """Seconds to wait before retry number `retry_index` + 1 (jittered)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** retry_index)
        return random.uniform(base / 2, base)


NO_RETRY = RetryPolicy(max_attempts=1)


def failure_kind(error: grpc.RpcError) -> Optional[str]:
    """Why a failed call might be retryable: "moved", "draining", "not_connected", "transport",
    or None (not retryable whatever the call)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if code == grpc.StatusCode.ABORTED:
        return "moved" if error_reason(error) == SESSION_MOVED else None
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    reason = error_reason(error)
    if reason == DRAINING:
        return "draining"
    if reason:  # a reason the server states that we do not know: not ours to retry
        return None
    details = (error.details() or "").lower() if callable(getattr(error, "details", None)) else ""
    if any(s in details for s in _NOT_CONNECTED):
        return "not_connected"
    return "transport"


class Retrier:
    """The retry bookkeeping of one logical call: attempts, the shared deadline, the backoff and
    the outcome-unknown rule. Not thread-safe except `interrupt()`."""

    def __init__(self, policy: RetryPolicy, method: str, timeout: Optional[float],
                 safety: Safety, unknown_codes=(grpc.StatusCode.ABORTED,)):
        self.policy = policy
        self.method = method
        self.safety = safety
        self.unknown_codes = unknown_codes
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.attempts = 0
        self.uncertain: Optional[grpc.RpcError] = None  # a transport failure of a PINNED call
        self._interrupted = threading.Event()

    def remaining(self) -> Optional[float]:
        """The timeout of the next attempt: what is left of the call's deadline."""
        if self.deadline is None or self.attempts == 0:
            return self.timeout
        return max(self.deadline - time.monotonic(), 0.001)

    def interrupt(self) -> None:
        """Stops a backoff wait (the call was cancelled): `on_error` then re-raises."""
        self._interrupted.set()

    def on_error(self, error: grpc.RpcError, *, received: bool = False,
                 replayable: bool = True) -> None:
        """Returns (after the backoff) when the call should be attempted again; otherwise raises
        `error`, or OutcomeUnknownError when a retry of a possibly-applied change was refused.

        `received`: a response message of this attempt already reached the caller (server
        streams: no retry then). `replayable`: the request messages can be sent again.
        """
        kind = failure_kind(error)
        if (self.uncertain is not None and kind != "moved"
                and error.code() in self.unknown_codes):
            raise OutcomeUnknownError(self.uncertain, error, self.method) from error
        self.attempts += 1
        if (kind is None or received or not replayable or self._interrupted.is_set()
                or self.attempts >= self.policy.max_attempts):
            raise error
        if kind == "transport":
            if self.safety is Safety.UNSAFE:
                raise error
            if self.safety is Safety.PINNED and self.uncertain is None:
                self.uncertain = error
        delay = self.policy.delay(self.attempts - 1)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            raise error
        log.debug("mnemo_client: %s failed (%s: %s); retry %d in %.3f s", self.method,
                  error.code().name, error.details(), self.attempts, delay)
        if self._interrupted.wait(delay):
            raise error

    def run(self, attempt: Callable[[Optional[float]], Any],
            replayable: Callable[[], bool] = lambda: True) -> Any:
        """Calls `attempt(timeout)` until it returns or `on_error` gives up."""
        while True:
            try:
                return attempt(self.remaining())
            except grpc.RpcError as error:
                if isinstance(error, OutcomeUnknownError):
                    raise
                self.on_error(error, replayable=replayable())


class RetryingStream:
    """A server-streaming call that starts again (transparently) when it fails before its first
    response message and the failure is retryable. Iterate it like the gRPC call; `cancel()` and
    the other grpc.Call methods act on the current attempt."""

    def __init__(self, retrier: Retrier, start: Callable[[Optional[float]], Any]):
        self._retrier = retrier
        self._start = start
        self._lock = threading.Lock()
        self._cancelled = False
        self._received = False
        self._call = start(retrier.remaining())

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        while True:
            try:
                item = next(self._call)
            except grpc.RpcError as error:
                if self._cancelled:
                    raise
                self._retrier.on_error(error, received=self._received)
                with self._lock:
                    if self._cancelled:
                        raise
                    self._call = self._start(self._retrier.remaining())
                continue
            self._received = True
            return item

    def cancel(self) -> bool:
        with self._lock:
            self._cancelled = True
            self._retrier.interrupt()
            return self._call.cancel()

    def __getattr__(self, name: str):
        # code(), details(), trailing_metadata(), is_active(), time_remaining(), …
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._call, name)


class ReplayBuffer:
    """The request messages of a client-streaming call, kept so a retry can send them again.

    `attempt()` gives one attempt's request iterator: the messages taken so far, then new ones
    from `source` (each taken once, whichever attempt asks). Once the kept messages exceed
    `limit_bytes` they are dropped and `replayable` turns False. Starting an attempt retires the
    previous one (its iterator ends), so gRPC's request thread of a failed call never competes
    with the new one for the source.
    """

    def __init__(self, source: Iterator, limit_bytes: int):
        self._source = source
        self._limit = limit_bytes
        self._lock = threading.Lock()
        self._messages: list = []
        self._bytes = 0
        self._exhausted = False
        self._generation = 0
        self.overflowed = False

    @property
    def replayable(self) -> bool:
        return not self.overflowed

    def attempt(self) -> Iterator:
        with self._lock:
            self._generation += 1
            generation = self._generation
        return self._iterate(generation)

    def _iterate(self, generation: int) -> Iterator:
        i = 0
        while True:
            with self._lock:
                if generation != self._generation:
                    return
                if not self.overflowed and i < len(self._messages):
                    message = self._messages[i]
                elif self._exhausted:
                    return
                else:
                    try:
                        message = next(self._source)
                    except StopIteration:
                        self._exhausted = True
                        return
                    if not self.overflowed:
                        self._messages.append(message)
                        self._bytes += message.ByteSize()
                        if self._bytes > self._limit:
                            self.overflowed = True
                            self._messages = []
            i += 1
            yield message
