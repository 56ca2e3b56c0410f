"""MnemoClient: a small, friendly wrapper around the generated mnemo.v1 gRPC stubs.

    from mnemo_client import MnemoClient

    with MnemoClient("127.0.0.1:50051", timeout=60) as client:
        session = client.create_session(labels={"doc": "gpl3"})
        client.ingest_file(session.id, "/usr/share/common-licenses/GPL-3")
        text, final = client.generate_text(session.id, "In short,", max_tokens=40,
                                           temperature=0)

Messages in and out are the generated protobuf classes (`mnemo.v1.mnemo_pb2`); the client only
saves the boilerplate (request building, paging, streaming, UTF-8-safe chunking).

Errors: every method raises `grpc.RpcError` when the call fails. The error is also a
`grpc.Call`, so `e.code()` is the `grpc.StatusCode` (NOT_FOUND, ABORTED, …, see the proto's
header comment), `e.details()` the server's message, and `bad_request_violations(e)` the
(field, description) pairs of an INVALID_ARGUMENT. Client-side mistakes (both text and ids,
a file that is not UTF-8) raise ValueError before anything is sent.

Retries: calls refused without effect (SESSION_MOVED, DRAINING, no connection) and read-only
calls broken by the transport are retried with backoff, transparently (`mnemo_client.retry`;
`retry=None` turns it off). A state-changing call broken by the transport is retried only when
`expected_state_version` is pinned; if that retry is refused, `OutcomeUnknownError` (a
grpc.RpcError) says the first attempt may have taken effect.

Threading: one MnemoClient (one channel) may be shared by many threads.
"""

from __future__ import annotations

import numbers
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import grpc
from google.protobuf import duration_pb2

try:
    from mnemo.v1 import mnemo_pb2, mnemo_pb2_grpc
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mnemo_client needs the generated mnemo.v1 stubs (mnemo/v1/mnemo_pb2.py and "
        "mnemo_pb2_grpc.py): the build writes them to <build dir>/python, so run with "
        "PYTHONPATH=<build dir>/python:clients/python") from _e

from mnemo_client import health
from mnemo_client.retry import NO_RETRY, ReplayBuffer, Retrier, RetryingStream, RetryPolicy, Safety
from mnemo_client.tls import TlsConfig
from mnemo_client.utf8 import iter_utf8_chunks

pb = mnemo_pb2

Prompt = Union[str, Sequence[int], None]
Chunk = Union[str, Sequence[int]]

_UNSET: Any = object()  # "argument not given" (None is a meaningful timeout: no deadline)

COMMIT_MODES = {
    "keep_all": pb.COMMIT_MODE_KEEP_ALL,
    "keep_prompt": pb.COMMIT_MODE_KEEP_PROMPT,
    "scratch": pb.COMMIT_MODE_SCRATCH,
}


DURABILITIES = {
    "none": pb.DURABILITY_NONE,
    "async": pb.DURABILITY_ASYNC,
    "sync": pb.DURABILITY_SYNC,
}

# Bytes per ImportSession message: well under the server's --max-message-bytes (16 MiB).
IMPORT_CHUNK_BYTES = 1 << 20


def durability_value(value: Union[str, int, None]) -> int:
    """A Durability from "none" / "async" / "sync", an enum value, or None (the server's
    default, --durability)."""
    if value is None:
        return pb.DURABILITY_UNSPECIFIED
    if isinstance(value, int):
        return value
    key = value.lower().removeprefix("durability_")
    if key not in DURABILITIES:
        raise ValueError(f"unknown durability {value!r}: one of {', '.join(DURABILITIES)}")
    return DURABILITIES[key]


def commit_mode(value: Union[str, int, None]) -> int:
    """A CommitMode from "keep_all" / "keep_prompt" / "scratch", an enum value, or None."""
    if value is None:
        return pb.COMMIT_MODE_UNSPECIFIED
    if isinstance(value, int):
        return value
    key = value.lower().removeprefix("commit_mode_")
    if key not in COMMIT_MODES:
        raise ValueError(f"unknown commit mode {value!r}: one of {', '.join(COMMIT_MODES)}")
    return COMMIT_MODES[key]


def sampling_params(temperature: Optional[float] = None, top_k: Optional[int] = None,
                    top_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
                    seed: Optional[int] = None) -> Optional[pb.SamplingParams]:
    """A SamplingParams from the given values, or None when none is given (server default)."""
    values = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, seed=seed)
    given = {k: v for k, v in values.items() if v is not None}
    return pb.SamplingParams(**given) if given else None


def duration(seconds: float) -> duration_pb2.Duration:
    """A google.protobuf.Duration of `seconds` (fractions kept to the nanosecond)."""
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))


def _as_sampling(value: Union[pb.SamplingParams, Mapping[str, Any], None]):
    if value is None or isinstance(value, pb.SamplingParams):
        return value
    return pb.SamplingParams(**value)


def import_requests(first: pb.ImportSessionRequest,
                    data: Union[bytes, bytearray, memoryview, Iterable[bytes]],
                    chunk_bytes: int = IMPORT_CHUNK_BYTES) -> Iterator[pb.ImportSessionRequest]:
    """The messages of an ImportSession stream: `first` (the header fields) carrying the first
    piece of `data`, then one message per piece. Bytes are cut every `chunk_bytes`; an
    iterable's items are sent as they come (lazily). Empty data still sends the header."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        pieces: Iterable[bytes] = (bytes(view[i:i + chunk_bytes])
                                   for i in range(0, len(view), chunk_bytes))
    else:
        pieces = data
    sent_first = False
    for piece in pieces:
        if not sent_first:
            first.data = bytes(piece)
            sent_first = True
            yield first
        else:
            yield pb.ImportSessionRequest(data=bytes(piece))
    if not sent_first:
        yield first


def _pinned(expected_state_version: int) -> Safety:
    """A state-changing call's Safety: PINNED when a duplicate would be refused for its version."""
    return Safety.PINNED if expected_state_version else Safety.UNSAFE


def _is_ids(value: Any) -> bool:
    return not isinstance(value, (str, bytes, bytearray)) and value is not None


@dataclass
class GenerateResult:
    """Everything one Generate stream carried, gathered by `collect_generate`."""

    text: str = ""
    ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)       # TokenLogprob per id (if asked)
    top_logprobs: list[Any] = field(default_factory=list)   # TopLogprobs per id (if asked)
    started: Optional[Any] = None                           # mnemo.v1.Started
    final: Optional[Any] = None                             # mnemo.v1.Final
    deltas: int = 0                                         # Delta events received


def collect_generate(events: Iterable[Any],
                     on_delta: Optional[Callable[[Any], None]] = None) -> GenerateResult:
    """Consumes a Generate event stream into a GenerateResult; `on_delta(delta)` sees each Delta.

    Raises grpc.RpcError when the stream ends with an error status.
    """
    result = GenerateResult()
    parts = []
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "started":
            result.started = event.started
        elif kind == "delta":
            delta = event.delta
            result.deltas += 1
            parts.append(delta.text)
            result.ids.extend(delta.ids)
            result.logprobs.extend(delta.logprobs)
            result.top_logprobs.extend(delta.top_logprobs)
            if on_delta is not None:
                on_delta(delta)
        elif kind == "final":
            result.final = event.final
    result.text = "".join(parts)
    return result


POOLINGS = {
    "none": pb.POOLING_NONE,
    "mean": pb.POOLING_MEAN,
    "first": pb.POOLING_FIRST,
    "funnel": pb.POOLING_FUNNEL,
}


def pooling_value(value: Union[str, int, None]) -> int:
    """A Pooling enum value from "none" / "mean" / "first" / "funnel", an int, or None (the
    default)."""
    if value is None:
        return pb.POOLING_UNSPECIFIED
    if isinstance(value, str):
        if value not in POOLINGS:
            raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {value!r}")
        return POOLINGS[value]
    return int(value)


@dataclass
class EncodeResult:
    """What Encode returned: `rows` vectors of `dim` float32 each, row after row in `data`
    (little-endian), the token ids of the rows (per-token output), the document's tokens and the
    passes it ran in; `mlm` maps each position asked for to its masked-LM log-probabilities
    (vocab_size little-endian float32, by token id)."""

    dim: int = 0
    rows: int = 0
    data: bytes = b""
    ids: list = field(default_factory=list)
    tokens: int = 0
    windows: int = 0
    mlm: dict = field(default_factory=dict)

    def vectors(self) -> list:
        """The vectors as lists of Python floats."""
        import array
        values = array.array("f")
        values.frombytes(self.data)
        if sys.byteorder != "little":
            values.byteswap()
        return [values[r * self.dim:(r + 1) * self.dim].tolist() for r in range(self.rows)]

    def numpy(self):
        """The vectors as a float32 numpy array [rows, dim] (needs numpy)."""
        import numpy as np
        return np.frombuffer(self.data, dtype="<f4").reshape(self.rows, self.dim)

    def mlm_numpy(self, position: int):
        """One position's masked-LM log-probabilities as a float32 numpy array [vocab_size]."""
        import numpy as np
        return np.frombuffer(self.mlm[position], dtype="<f4")


class _ChunkedRequests:
    """The request side of an Ingest or Encode stream: `header` (an IngestRequest or
    EncodeRequest holding the first message's fields) on the first message, one chunk each.

    Runs on gRPC's request thread. An exception from the caller's chunk iterable is stored and
    the call cancelled (so the server discards the partial document) instead of half-closing.
    """

    def __init__(self, header, chunks: Iterable[Chunk]):
        self.header = header
        self.chunks = chunks
        self.error: Optional[BaseException] = None
        self.bytes_sent = 0
        self.messages_sent = 0
        self._call = None
        self._call_ready = threading.Event()

    def attach(self, call) -> None:
        self._call = call
        self._call_ready.set()

    def _message(self, chunk: Optional[Chunk]):
        request = type(self.header)()
        if self.messages_sent == 0:
            request.CopyFrom(self.header)
        if chunk is None:
            pass
        elif isinstance(chunk, str):
            request.text = chunk
            self.bytes_sent += len(chunk.encode("utf-8"))
        elif isinstance(chunk, (bytes, bytearray)):
            text = bytes(chunk).decode("utf-8")  # must hold whole characters
            request.text = text
            self.bytes_sent += len(chunk)
        else:
            request.ids.SetInParent()
            request.ids.ids.extend(int(i) for i in chunk)
        return request

    def __iter__(self) -> Iterator[pb.IngestRequest]:
        try:
            for chunk in self.chunks:
                message = self._message(chunk)
                self.messages_sent += 1
                yield message
            if self.messages_sent == 0:  # no chunk at all: still send the header
                self.messages_sent += 1
                yield self._message(None)
        except GeneratorExit:  # gRPC closed the stream (the call ended): nothing to report
            raise
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            self.error = e
            self._call_ready.wait(timeout=10)
            if self._call is not None:
                self._call.cancel()


class _ProgressBar:
    """A plain-text progress bar on a terminal stream (a final line only when not a tty)."""

    WIDTH = 30

    def __init__(self, total_bytes: int, stream=None, label: str = "ingest"):
        self.total = max(total_bytes, 0)
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.last_draw = 0.0

    def _line(self, sent: int, progress) -> str:
        fraction = sent / self.total if self.total else 1.0
        filled = int(fraction * self.WIDTH)
        elapsed = max(time.monotonic() - self.start, 1e-9)
        tokens = progress.tokens_ingested if progress is not None else 0
        return (f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{100 * fraction:5.1f}% {_human_bytes(sent)}/{_human_bytes(self.total)} "
                f"{tokens} tokens {tokens / elapsed:,.0f} tok/s")

    def update(self, sent: int, progress) -> None:
        now = time.monotonic()
        if self.tty and now - self.last_draw >= 0.1:
            self.last_draw = now
            self.stream.write("\r" + self._line(sent, progress))
            self.stream.flush()

    def finish(self, sent: int, progress) -> None:
        self.stream.write(("\r" if self.tty else "") + self._line(sent, progress) + "\n")
        self.stream.flush()


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class MnemoClient:
    """A connection to one mnemo server.

    `target` is "host:port"; `timeout` is the default deadline of every call in seconds (None:
    no deadline), retries included; each method also takes `timeout=` to override it. `tls` (a
    `mnemo_client.tls.TlsConfig`) makes the channel a TLS one: the CA to trust and, for mTLS, the
    client certificate and key; without it the channel is plaintext. `channel` may be given
    instead of both (`target` and `tls` are then ignored). `retry` is the
    RetryPolicy (default: RetryPolicy(), 5 attempts, backoff 50 ms doubling to 2 s); None turns
    retries off. `token` is a bearer token for a server with an auth file: sent as
    "authorization: Bearer <token>" metadata on every call. Use as a context manager or call
    `close()`.
    """

    def __init__(self, target: str, timeout: Optional[float] = None, *,
                 channel: Optional[grpc.Channel] = None,
                 options: Optional[Sequence[tuple[str, Any]]] = None,
                 retry: Optional[RetryPolicy] = _UNSET,
                 tls: Optional[TlsConfig] = None, token: Optional[str] = None):
        self.target = target
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise ValueError("token must be a non-empty string without line breaks")
        self._token = token
        self.timeout = timeout
        self.retry_policy = RetryPolicy() if retry is _UNSET else (retry or NO_RETRY)
        opts = list(options or []) + [("grpc.max_receive_message_length", 64 << 20)]
        if channel is not None:
            self.channel = channel
        elif tls is not None:
            self.channel = tls.channel(target, opts)
        else:
            self.channel = grpc.insecure_channel(target, opts)
        self.model_stub = mnemo_pb2_grpc.ModelServiceStub(self.channel)
        self.session_stub = mnemo_pb2_grpc.SessionServiceStub(self.channel)
        self.inference_stub = mnemo_pb2_grpc.InferenceServiceStub(self.channel)

    # -- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "MnemoClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _timeout(self, timeout: Any) -> Optional[float]:
        return self.timeout if timeout is _UNSET else timeout

    def _metadata(self, session_id: str) -> Optional[list[tuple[str, str]]]:
        metadata = []
        if self._token is not None:
            metadata.append(("authorization", f"Bearer {self._token}"))
        if session_id:
            # Session-affinity routers hash on this header (DESIGN.md §4).
            metadata.append(("x-session-id", session_id))
        return metadata or None

    def _retrier(self, method: str, timeout: Any, safety: Safety, **kwargs) -> Retrier:
        return Retrier(self.retry_policy, method, self._timeout(timeout), safety, **kwargs)

    def _unary(self, method: str, rpc, request, timeout: Any, safety: Safety,
               session_id: str = "", **kwargs):
        """One unary call, retried as `mnemo_client.retry` describes."""
        metadata = self._metadata(session_id)
        return self._retrier(method, timeout, safety, **kwargs).run(
            lambda t: rpc(request, timeout=t, metadata=metadata))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel connects; raises grpc.FutureTimeoutError after `timeout`."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def health(self, service: str = "", timeout: Any = _UNSET) -> int:
        """grpc.health.v1 status of the server (health.SERVING == 1, NOT_SERVING == 2)."""
        return health.health_check(self.channel, service, timeout=self._timeout(timeout))

    # -- models ----------------------------------------------------------------------------

    def models(self, timeout: Any = _UNSET) -> list:
        """The loaded models (mnemo.v1.Model), the default one first."""
        return list(self._unary("ListModels", self.model_stub.ListModels,
                                pb.ListModelsRequest(), timeout, Safety.READ_ONLY).models)

    def model(self, name: str = "", timeout: Any = _UNSET):
        """One model by name (NOT_FOUND if unknown); "" returns the default model."""
        if not name:
            models = self.models(timeout=timeout)
            if not models:
                raise ValueError("the server lists no models")
            return models[0]
        return self._unary("GetModel", self.model_stub.GetModel, pb.GetModelRequest(name=name),
                           timeout, Safety.READ_ONLY)

    def tokenize(self, text: str, model: str = "", timeout: Any = _UNSET) -> list[int]:
        """Token ids of `text` under the model's tokenizer."""
        return list(self._unary("Tokenize", self.model_stub.Tokenize,
                                pb.TokenizeRequest(model=model, text=text), timeout,
                                Safety.READ_ONLY).ids)

    def detokenize(self, ids: Iterable[int], model: str = "", timeout: Any = _UNSET) -> str:
        """The text of token ids."""
        return self._unary("Detokenize", self.model_stub.Detokenize,
                           pb.DetokenizeRequest(model=model, ids=list(ids)), timeout,
                           Safety.READ_ONLY).text

    # -- sessions --------------------------------------------------------------------------

    def create_session(self, model: str = "", ttl_s: Optional[float] = None,
                       labels: Optional[Mapping[str, str]] = None, memory_tokens: int = 0,
                       default_sampling: Union[pb.SamplingParams, Mapping[str, Any], None] = None,
                       durability: Union[str, int, None] = None, timeout: Any = _UNSET):
        """Opens a session; returns the mnemo.v1.Session (its `id` names it in later calls).

        `ttl_s` None: the server's default TTL. `default_sampling` (SamplingParams or a dict of
        its fields) applies to Generate calls on this session that set no sampling.
        `durability` is "none", "async", "sync" or a Durability (None: the server's
        --durability); "async" and "sync" need a server with a session store.
        """
        request = pb.CreateSessionRequest(model=model, labels=dict(labels or {}),
                                          memory_tokens=memory_tokens,
                                          durability=durability_value(durability))
        if ttl_s is not None:
            request.ttl.CopyFrom(duration(ttl_s))
        sampling = _as_sampling(default_sampling)
        if sampling is not None:
            request.default_sampling.CopyFrom(sampling)
        # Not repeated after a transport failure: a duplicate would open a second session.
        return self._unary("CreateSession", self.session_stub.CreateSession, request, timeout,
                           Safety.UNSAFE)

    def get_session(self, session_id: str, timeout: Any = _UNSET):
        """The session's current description (mnemo.v1.Session); NOT_FOUND if gone."""
        return self._unary("GetSession", self.session_stub.GetSession,
                           pb.GetSessionRequest(session_id=session_id), timeout,
                           Safety.READ_ONLY, session_id)

    def iter_sessions(self, label_filter: Optional[Mapping[str, str]] = None,
                      page_size: int = 0, timeout: Any = _UNSET) -> Iterator:
        """Yields every session (oldest first), fetching page after page."""
        token = ""
        while True:
            page = self._unary(
                "ListSessions", self.session_stub.ListSessions,
                pb.ListSessionsRequest(page_size=page_size, page_token=token,
                                       label_filter=dict(label_filter or {})),
                timeout, Safety.READ_ONLY)
            yield from page.sessions
            token = page.next_page_token
            if not token:
                return

    def list_sessions(self, label_filter: Optional[Mapping[str, str]] = None,
                      page_size: int = 0, timeout: Any = _UNSET) -> list:
        """All sessions (every page), oldest first, optionally only those with these labels."""
        return list(self.iter_sessions(label_filter, page_size, timeout))

    def delete_session(self, session_id: str, expected_state_version: int = 0,
                       timeout: Any = _UNSET) -> None:
        """Frees the session (ABORTED while a request runs on it)."""
        # A pinned delete repeated after a transport failure finds the session gone (NOT_FOUND)
        # or busy (ABORTED) if the first attempt got through: both mean "outcome unknown".
        self._unary("DeleteSession", self.session_stub.DeleteSession,
                    pb.DeleteSessionRequest(session_id=session_id,
                                            expected_state_version=expected_state_version),
                    timeout, _pinned(expected_state_version), session_id,
                    unknown_codes=(grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND))

    def fork_session(self, session_id: str, expected_state_version: int = 0,
                     labels: Optional[Mapping[str, str]] = None, ttl_s: Optional[float] = None,
                     timeout: Any = _UNSET):
        """A new session with a copy of the source's state; returns the new mnemo.v1.Session."""
        request = pb.ForkSessionRequest(session_id=session_id,
                                        expected_state_version=expected_state_version,
                                        labels=dict(labels or {}))
        if ttl_s is not None:
            request.ttl.CopyFrom(duration(ttl_s))
        # Never repeated after a transport failure: a fork leaves the source's version as it
        # was, so pinning it does not stop a duplicate (a second child).
        return self._unary("ForkSession", self.session_stub.ForkSession, request, timeout,
                           Safety.UNSAFE, session_id)

    def export_session_stream(self, session_id: str, expected_state_version: int = 0,
                              timeout: Any = _UNSET):
        """Starts an ExportSession; returns the stream of mnemo.v1.SessionSnapshotChunk.

        The first chunk also carries the snapshot's `total_bytes`, `state_version` and
        `model_fingerprint`. The session is busy (ABORTED for other requests) while it is
        copied; `cancel()` on the returned call stops the copy.
        """
        request = pb.ExportSessionRequest(session_id=session_id,
                                          expected_state_version=expected_state_version)
        metadata = self._metadata(session_id)
        retrier = self._retrier("ExportSession", timeout, Safety.READ_ONLY)
        return RetryingStream(retrier, lambda t: self.session_stub.ExportSession(
            request, timeout=t, metadata=metadata))

    def export_session(self, session_id: str, expected_state_version: int = 0,
                       timeout: Any = _UNSET) -> bytes:
        """The session's whole state as snapshot bytes (docs/session-snapshots.md), which
        `import_session` turns back into a session on this or another server with the same
        model. `expected_state_version` 0 takes any version (ABORTED on a mismatch).

        Raises ValueError when the stream's length differs from the total_bytes it announced.
        """
        parts, total = [], None
        for chunk in self.export_session_stream(session_id, expected_state_version, timeout):
            if total is None:
                total = chunk.total_bytes
            parts.append(chunk.data)
        data = b"".join(parts)
        if total is not None and len(data) != total:
            raise ValueError(f"ExportSession sent {len(data)} bytes, announced {total}")
        return data

    def import_session(self, data: Union[bytes, bytearray, memoryview, Iterable[bytes]], *,
                       model: str = "", session_id: str = "", expected_state_version: int = 0,
                       labels: Optional[Mapping[str, str]] = None, ttl_s: Optional[float] = None,
                       durability: Union[str, int, None] = None,
                       chunk_bytes: int = IMPORT_CHUNK_BYTES, timeout: Any = _UNSET):
        """A session from snapshot bytes (from `export_session`); returns its mnemo.v1.Session.

        Without `session_id` a new session is created (labels, TTL and durability not given
        are the snapshot's). With `session_id` that session's state is replaced; it must be at
        `expected_state_version` (ABORTED otherwise), and its version advances by one.
        `data` is bytes, sent `chunk_bytes` at a time, or an iterable of byte strings sent one
        per message (e.g. chunks read from a file). Errors: INVALID_ARGUMENT for a malformed
        snapshot, FAILED_PRECONDITION for another model's, DATA_LOSS for a checksum mismatch.
        """
        first = pb.ImportSessionRequest(model=model, session_id=session_id,
                                        expected_state_version=expected_state_version,
                                        labels=dict(labels or {}),
                                        durability=durability_value(durability))
        if ttl_s is not None:
            first.ttl.CopyFrom(duration(ttl_s))
        if isinstance(data, (bytes, bytearray, memoryview)):  # cut again for every attempt
            def requests() -> Iterator[pb.ImportSessionRequest]:
                header = pb.ImportSessionRequest()
                header.CopyFrom(first)
                return import_requests(header, data, chunk_bytes)
            replayable = lambda: True  # noqa: E731
        else:  # an iterable is read once: keep what was sent (up to the replay buffer's limit)
            buffer = ReplayBuffer(import_requests(first, data, chunk_bytes),
                                  self.retry_policy.replay_buffer_bytes)
            requests = buffer.attempt
            replayable = lambda: buffer.replayable  # noqa: E731
        # Replacing a pinned session is refused when repeated; a new session would be a second.
        safety = _pinned(expected_state_version if session_id else 0)
        metadata = self._metadata(session_id)
        return self._retrier("ImportSession", timeout, safety).run(
            lambda t: self.session_stub.ImportSession(requests(), timeout=t, metadata=metadata),
            replayable)

    # -- inference -------------------------------------------------------------------------

    def ingest(self, session_id: str, chunks: Iterable[Chunk], expected_state_version: int = 0,
               on_progress: Optional[Callable[[Any], None]] = None, timeout: Any = _UNSET,
               _requests: Optional[_ChunkedRequests] = None):
        """Streams a document into the session; returns the final IngestProgress (done=True).

        `chunks` yields str (whole characters) or sequences of token ids, one message each; it
        is consumed lazily, so a generator over a huge file is fine. `on_progress` is called
        with every IngestProgress the server sends (one per message, then the final one). If
        the iterable or the callback raises, the call is cancelled (the session keeps its
        previous version) and that exception propagates.

        A retried attempt (see the module docstring) sends the chunks again from the start, so
        `on_progress` then starts over; chunks beyond the policy's replay_buffer_bytes are not
        kept and the call is then not retried.
        """
        requests = _requests or _ChunkedRequests(
            pb.IngestRequest(session_id=session_id, expected_state_version=expected_state_version),
            chunks)
        last = None

        def on_attempt():
            nonlocal last
            last = None

        def on_message(progress):
            nonlocal last
            last = progress
            if on_progress is not None:
                on_progress(progress)

        self._chunked_call("Ingest", self.inference_stub.Ingest, requests, on_message, timeout,
                           _pinned(expected_state_version), session_id, on_attempt=on_attempt)
        return last

    def _chunked_call(self, method: str, rpc, requests: _ChunkedRequests,
                      on_message: Callable[[Any], None], timeout: Any, safety: Safety,
                      session_id: str = "", on_attempt: Optional[Callable[[], None]] = None):
        """A chunks-in, messages-out stream (Ingest, Encode), retried as `mnemo_client.retry`
        describes: the chunks are replayed from a buffer, each attempt first calls `on_attempt`
        (to drop what an earlier attempt delivered) and its messages go to `on_message`."""
        buffer = ReplayBuffer(iter(requests), self.retry_policy.replay_buffer_bytes)
        metadata = self._metadata(session_id)

        def attempt(attempt_timeout):
            if on_attempt is not None:
                on_attempt()
            call = rpc(buffer.attempt(), timeout=attempt_timeout, metadata=metadata)
            requests.attach(call)
            try:
                for message in call:
                    on_message(message)
            except grpc.RpcError:
                if requests.error is not None:
                    raise requests.error
                raise
            except BaseException:
                call.cancel()
                raise
            if requests.error is not None:
                raise requests.error

        self._retrier(method, timeout, safety).run(attempt, lambda: buffer.replayable)

    def ingest_text(self, session_id: str, text: str, chunk_bytes: int = 65536,
                    **kwargs):
        """Ingests a str, cut into chunks of at most `chunk_bytes` UTF-8 bytes."""
        from mnemo_client.utf8 import split_utf8
        return self.ingest(session_id, split_utf8(text.encode("utf-8"), chunk_bytes), **kwargs)

    def ingest_file(self, session_id: str, path: Union[str, os.PathLike],
                    chunk_bytes: int = 65536, progress: bool = True,
                    expected_state_version: int = 0, timeout: Any = _UNSET, stream=None):
        """Streams a UTF-8 file into the session; returns the final IngestProgress.

        The file is read `chunk_bytes` at a time and cut only between characters (protobuf
        `string` fields must be valid UTF-8 per message). With `progress`, a plain-text
        progress bar goes to stderr (or `stream`). Raises mnemo_client.utf8.InvalidUtf8Error
        (a ValueError, with the byte offset) for a file that is not UTF-8; the session is then
        left unchanged.
        """
        total = os.path.getsize(path)
        with open(path, "rb") as f:
            requests = _ChunkedRequests(
                pb.IngestRequest(session_id=session_id,
                                 expected_state_version=expected_state_version),
                iter_utf8_chunks(f, chunk_bytes))
            bar = _ProgressBar(total, stream) if progress else None
            on_progress = None
            if bar is not None:
                def on_progress(p):
                    bar.update(requests.bytes_sent, p)
            final = self.ingest(session_id, (), on_progress=on_progress, timeout=timeout,
                                _requests=requests)
            if bar is not None:
                bar.finish(requests.bytes_sent, final)
            return final

    def encode(self, document: Union[str, Sequence[int], Iterable[Chunk]], *, model: str = "",
               pooling: Union[str, int, None] = None, global_positions: Sequence[int] = (),
               window_tokens: int = 0, mlm_positions: Sequence[int] = (),
               chunk_bytes: int = 65536, timeout: Any = _UNSET) -> EncodeResult:
        """Encodes a document with an encoder model (Model.family "encoder"): a str (sent in
        UTF-8-safe chunks of `chunk_bytes`), a sequence of token ids (a list, tuple or array of
        integers), or any other iterable of chunks (str or id sequences, one message each, as
        `ingest` takes them). `pooling` is "none" (one vector per token, the default), "mean" or
        "first"; `global_positions` are document positions that attend globally; `window_tokens` the tokens per pass (0: the model's
        maximum; longer documents run in overlapping windows, docs/server-api.md "Encode");
        `mlm_positions` the positions whose masked-LM log-probabilities to return (encoders with
        the MLM head). Read-only, so it is retried like one."""
        header = pb.EncodeRequest(model=model, pooling=pooling_value(pooling),
                                  global_positions=[int(g) for g in global_positions],
                                  window_tokens=window_tokens,
                                  mlm_positions=[int(p) for p in mlm_positions])
        if isinstance(document, str):
            from mnemo_client.utf8 import split_utf8
            chunks: Iterable[Chunk] = split_utf8(document.encode("utf-8"), chunk_bytes)
        elif hasattr(document, "__len__") and (
                len(document) == 0 or isinstance(document[0], numbers.Integral)):
            ids = [int(i) for i in document]
            step = 1 << 18
            chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
        else:
            chunks = document
        result = EncodeResult()
        parts: list = []

        def on_attempt():
            parts.clear()
            result.ids.clear()
            result.mlm.clear()
            result.rows = 0

        def on_message(r):
            if r.count:
                result.dim = r.dim
                result.rows += r.count
                parts.append(r.vectors)
                result.ids.extend(r.ids)
            for m in r.mlm:
                result.mlm[m.position] = m.logprobs
            if r.done:
                result.tokens, result.windows = r.tokens, r.windows

        self._chunked_call("Encode", self.inference_stub.Encode, _ChunkedRequests(header, chunks),
                           on_message, timeout, Safety.READ_ONLY, on_attempt=on_attempt)
        result.data = b"".join(parts)
        return result

    def _generate_request(self, session_id: str, prompt: Prompt, *, model: str,
                          max_tokens: int, sampling, temperature, top_k, top_p,
                          repetition_penalty, seed, stop, stop_ids, ignore_eos, logprobs,
                          top_logprobs, commit, expected_state_version) -> pb.GenerateRequest:
        request = pb.GenerateRequest(
            session_id=session_id, model=model, expected_state_version=expected_state_version,
            max_tokens=max_tokens, stop=list(stop or ()), stop_ids=list(stop_ids or ()),
            ignore_eos=ignore_eos, logprobs=logprobs, top_logprobs=top_logprobs,
            commit=commit_mode(commit))
        if isinstance(prompt, str):
            request.text = prompt
        elif _is_ids(prompt):
            request.ids.SetInParent()
            request.ids.ids.extend(int(i) for i in prompt)
        params = _as_sampling(sampling)
        overrides = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if params is not None or overrides:
            request.sampling.SetInParent()  # present even when every field is 0 (greedy)
            if params is not None:
                request.sampling.CopyFrom(params)
            for name, value in overrides.items():  # setattr: MergeFrom would skip zeros
                setattr(request.sampling, name, value)
        return request

    def generate(self, session_id: str = "", prompt: Prompt = None, *, model: str = "",
                 max_tokens: int = 64, sampling=None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 repetition_penalty: Optional[float] = None, seed: Optional[int] = None,
                 stop: Sequence[str] = (), stop_ids: Sequence[int] = (),
                 ignore_eos: bool = False, logprobs: bool = False, top_logprobs: int = 0,
                 commit: Union[str, int, None] = None, expected_state_version: int = 0,
                 timeout: Any = _UNSET):
        """Starts a generation; returns the stream of mnemo.v1.GenerateEvent.

        `prompt` is text, a list of token ids, or None (continue the session's document). With
        no `session_id` it is a one-shot generation on `model`. Sampling: pass `sampling`
        (SamplingParams or dict) and/or the individual fields; giving none of them uses the
        session's default sampling (greedy one-shot). `commit` is "keep_all", "keep_prompt",
        "scratch" or a CommitMode (None: the server's default).

        The returned object acts as the gRPC call: iterate it for the events (Started, Delta…,
        Final); `cancel()` stops the generation (iteration then raises grpc.RpcError with
        CANCELLED); errors raise grpc.RpcError while iterating. A retryable failure before the
        first event starts the call again transparently; after an event it is raised.
        """
        request = self._generate_request(
            session_id, prompt, model=model, max_tokens=max_tokens, sampling=sampling,
            temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, seed=seed, stop=stop, stop_ids=stop_ids,
            ignore_eos=ignore_eos, logprobs=logprobs, top_logprobs=top_logprobs,
            commit=commit, expected_state_version=expected_state_version)
        # One-shot and scratch generations change no session: read-only.
        read_only = not session_id or request.commit == pb.COMMIT_MODE_SCRATCH
        safety = Safety.READ_ONLY if read_only else _pinned(expected_state_version)
        metadata = self._metadata(session_id)
        return RetryingStream(self._retrier("Generate", timeout, safety),
                              lambda t: self.inference_stub.Generate(request, timeout=t,
                                                                     metadata=metadata))

    def generate_result(self, session_id: str = "", prompt: Prompt = None, *,
                        on_delta: Optional[Callable[[Any], None]] = None,
                        **kwargs) -> GenerateResult:
        """Runs `generate` to the end; returns a GenerateResult (text, ids, logprobs, final)."""
        return collect_generate(self.generate(session_id, prompt, **kwargs), on_delta)

    def generate_text(self, session_id: str = "", prompt: Prompt = None, *,
                      on_delta: Optional[Callable[[Any], None]] = None, **kwargs):
        """Runs `generate` to the end; returns (text, final) with final a mnemo.v1.Final."""
        result = self.generate_result(session_id, prompt, on_delta=on_delta, **kwargs)
        return result.text, result.final

    def score(self, session_id: str = "", text: Optional[str] = None,
              ids: Optional[Sequence[int]] = None, *, model: str = "", commit: bool = False,
              expected_state_version: int = 0, timeout: Any = _UNSET):
        """Log-probabilities of `text` or `ids` given the session's memory (mnemo.v1.ScoreResponse).

        With `commit`, the scored input stays in the session's memory.
        """
        if text is not None and ids is not None:
            raise ValueError("score takes text or ids, not both")
        request = pb.ScoreRequest(session_id=session_id, model=model, commit=commit,
                                  expected_state_version=expected_state_version)
        if text is not None:
            request.text = text
        elif ids is not None:
            request.ids.SetInParent()
            request.ids.ids.extend(int(i) for i in ids)
        safety = _pinned(expected_state_version) if commit and session_id else Safety.READ_ONLY
        return self._unary("Score", self.inference_stub.Score, request, timeout, safety,
                           session_id)
