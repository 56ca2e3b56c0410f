"""Unit tests of mnemo_client's pure parts: UTF-8 chunking, error-detail and health decoding,
request building. No server needed.

The tests of request building need the generated stubs: the build's python/ directory on
PYTHONPATH, as ctest sets it. Run:

    PYTHONPATH=build/release/python:clients/python python -m pytest clients/python/tests
"""

import io

import pytest

from mnemo_client import health  # (pure: no stubs needed)
from mnemo_client.utf8 import InvalidUtf8Error, iter_utf8_chunks, split_utf8, utf8_boundary


@pytest.fixture(scope="module")
def stubs():
    """The generated mnemo.v1 stubs: a build output, on PYTHONPATH (the build's python/ dir)."""
    try:
        from mnemo.v1 import mnemo_pb2
    except ImportError:
        pytest.fail("the generated mnemo.v1 stubs are not importable: put the build's python/ "
                    "directory on PYTHONPATH, e.g. PYTHONPATH=build/release/python:clients/python "
                    "(ctest sets it)", pytrace=False)
    return mnemo_pb2


# --- UTF-8 chunking -----------------------------------------------------------------------

TEXT = "plain ascii, é ñ ü (2 bytes), € ☃ 日本語 (3 bytes), 🎉 𝄞 (4 bytes) — end.\n" * 7


def test_boundary_moves_back_to_a_lead_byte():
    data = "aé".encode()  # 61 c3 a9
    assert utf8_boundary(data, 1) == 1
    assert utf8_boundary(data, 2) == 1  # inside é: cut before it
    assert utf8_boundary(data, 3) == 3
    emoji = "🎉".encode()  # 4 bytes
    assert [utf8_boundary(emoji + b"x", n) for n in range(5)] == [0, 0, 0, 0, 4]


@pytest.mark.parametrize("max_bytes", [4, 5, 6, 7, 13, 64, 10_000])
def test_split_utf8_chunks_are_whole_characters_within_the_limit(max_bytes):
    data = TEXT.encode()
    chunks = split_utf8(data, max_bytes)
    assert "".join(chunks) == TEXT
    assert all(0 < len(c.encode()) <= max_bytes for c in chunks)
    # As large as possible: each cut is at most 3 bytes short of the limit.
    assert all(len(c.encode()) > max_bytes - 4 for c in chunks[:-1])


def test_split_utf8_rejects_a_limit_below_one_character():
    with pytest.raises(ValueError):
        split_utf8(b"abc", 3)


@pytest.mark.parametrize("bad, offset", [
    (b"abc\xffdef", 3),                 # never valid
    (b"ab\xc3(", 2),                     # lead byte without its continuation
    (b"abcdefgh\x80", 8),               # stray continuation byte
    (b"xyz\xe2\x82", 3),                # truncated at the end
])
def test_split_utf8_reports_the_offset_of_invalid_bytes(bad, offset):
    with pytest.raises(InvalidUtf8Error) as info:
        split_utf8(bad, 4)
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)


class TrickleReader(io.RawIOBase):
    """A stream that returns at most `step` bytes per read (like a pipe or a socket)."""

    def __init__(self, data, step):
        self.data, self.pos, self.step = data, 0, step

    def readable(self):
        return True

    def read(self, n=-1):
        n = self.step if n < 0 else min(n, self.step)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("chunk_bytes", [4, 5, 9, 100, 1 << 16])
@pytest.mark.parametrize("step", [1, 3, 1 << 20])
def test_iter_utf8_chunks_carries_split_characters(chunk_bytes, step):
    data = TEXT.encode()
    chunks = list(iter_utf8_chunks(TrickleReader(data, step), chunk_bytes))
    assert "".join(chunks) == TEXT
    assert all(0 < len(c.encode()) <= chunk_bytes for c in chunks)


def test_iter_utf8_chunks_reports_the_stream_offset():
    data = ("é" * 50).encode() + b"\xff" + b"tail"
    with pytest.raises(InvalidUtf8Error) as info:
        list(iter_utf8_chunks(io.BytesIO(data), 16))
    assert info.value.offset == 100
    truncated = b"a" * 30 + "🎉".encode()[:3]
    with pytest.raises(InvalidUtf8Error) as info:
        list(iter_utf8_chunks(io.BytesIO(truncated), 8))
    assert info.value.offset == 30


def test_iter_utf8_chunks_of_an_empty_stream_yields_nothing():
    assert list(iter_utf8_chunks(io.BytesIO(b""), 8)) == []


# --- hand-made protobuf wire bytes ---------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def google_rpc_status(code, message, details):
    """google.rpc.Status{code=1, message=2, details=3 (Any{type_url=1, value=2})}."""
    out = field_varint(1, code) + field_bytes(2, message)
    for type_url, value in details:
        out += field_bytes(3, field_bytes(1, type_url) + field_bytes(2, value))
    return out


def google_rpc_bad_request(violations):
    """google.rpc.BadRequest{field_violations=1 (FieldViolation{field=1, description=2})}."""
    return b"".join(field_bytes(1, field_bytes(1, f) + field_bytes(2, d))
                    for f, d in violations)


class FakeRpcError(Exception):
    """Stands in for grpc.RpcError: only trailing_metadata() is used."""

    def __init__(self, metadata):
        super().__init__("fake")
        self._metadata = metadata

    def trailing_metadata(self):
        return self._metadata


def test_bad_request_violations_decodes_google_rpc_wire_bytes(stubs):
    from mnemo_client import bad_request_violations, rpc_status
    violations = [("sampling.top_p", "must be in (0, 1], got 2"), ("ids[3]", "1000 ≥ vocab 1000")]
    status = google_rpc_status(3, "bad request", [
        ("type.googleapis.com/google.rpc.DebugInfo", b"\x0a\x03abc"),  # ignored
        ("type.googleapis.com/google.rpc.BadRequest", google_rpc_bad_request(violations)),
        ("type.googleapis.com/google.rpc.BadRequest",
         google_rpc_bad_request([("max_tokens", "0 < 1")])),
    ])
    error = FakeRpcError((("content-type", "x"), ("grpc-status-details-bin", status)))
    assert bad_request_violations(error) == violations + [("max_tokens", "0 < 1")]
    decoded = rpc_status(error)
    assert decoded.code == 3 and decoded.message == "bad request" and len(decoded.details) == 3


def test_bad_request_violations_without_details_is_empty(stubs):
    from mnemo_client import bad_request_violations
    assert bad_request_violations(FakeRpcError(())) == []
    assert bad_request_violations(FakeRpcError(None)) == []
    only_other = google_rpc_status(5, "no such session", [])
    assert bad_request_violations(
        FakeRpcError([("grpc-status-details-bin", only_other)])) == []


def test_mnemo_bad_request_is_wire_identical_to_google_rpc(stubs):
    built = stubs.BadRequest(field_violations=[
        stubs.BadRequest.FieldViolation(field="text", description="invalid UTF-8")])
    assert built.SerializeToString() == google_rpc_bad_request([("text", "invalid UTF-8")])


# --- health --------------------------------------------------------------------------------

def test_health_messages():
    assert health.encode_health_request("") == b""
    assert health.encode_health_request("mnemo.v1.InferenceService") == \
        field_bytes(1, "mnemo.v1.InferenceService")
    assert health.decode_health_response(b"") == health.UNKNOWN
    assert health.decode_health_response(field_varint(1, 1)) == health.SERVING
    assert health.decode_health_response(
        field_bytes(7, b"future") + field_varint(1, 2)) == health.NOT_SERVING
    with pytest.raises(ValueError):
        health.decode_health_response(b"\x08")


# --- request building ----------------------------------------------------------------------

def test_generate_request_sampling_and_prompt(stubs):
    pytest.importorskip("mnemo.v1.mnemo_pb2_grpc")  # needs grpc_python_plugin without the build
    from mnemo_client.client import MnemoClient, commit_mode

    client = MnemoClient("127.0.0.1:1")
    try:
        def build(prompt, **kw):
            args = dict(model="", max_tokens=4, sampling=None, temperature=None, top_k=None,
                        top_p=None, repetition_penalty=None, seed=None, stop=(), stop_ids=(),
                        ignore_eos=False, logprobs=False, top_logprobs=0, commit=None,
                        expected_state_version=0)
            args.update(kw)
            return client._generate_request("s", prompt, **args)

        r = build("hi")
        assert r.WhichOneof("prompt") == "text" and not r.HasField("sampling")
        r = build([5, 6], temperature=0.0)
        assert list(r.ids.ids) == [5, 6] and r.HasField("sampling")  # greedy is explicit
        assert r.sampling.temperature == 0.0
        r = build([], commit="scratch")
        assert r.WhichOneof("prompt") == "ids" and r.commit == stubs.COMMIT_MODE_SCRATCH
        r = build(None, sampling={"temperature": 0.7, "seed": 3}, temperature=0.0, top_k=5)
        assert r.WhichOneof("prompt") is None
        assert (r.sampling.temperature, r.sampling.seed, r.sampling.top_k) == (0.0, 3, 5)
        assert commit_mode("KEEP_PROMPT") == stubs.COMMIT_MODE_KEEP_PROMPT
        assert commit_mode("commit_mode_keep_all") == stubs.COMMIT_MODE_KEEP_ALL
        with pytest.raises(ValueError):
            commit_mode("sometimes")
    finally:
        client.close()


def test_import_requests_carry_the_header_once_and_every_byte(stubs):
    from mnemo_client.client import durability_value, import_requests

    def header():
        return stubs.ImportSessionRequest(model="m", session_id="s", expected_state_version=4,
                                          durability=durability_value("sync"))

    data = bytes(range(256)) * 10  # 2560 bytes
    messages = list(import_requests(header(), data, chunk_bytes=1000))
    assert [len(m.data) for m in messages] == [1000, 1000, 560]
    assert b"".join(m.data for m in messages) == data
    assert (messages[0].model, messages[0].session_id, messages[0].expected_state_version) == \
        ("m", "s", 4)
    assert messages[0].durability == stubs.DURABILITY_SYNC
    assert all(not m.model and not m.session_id for m in messages[1:])
    pieces = [b"ab", b"", b"cde"]  # an iterable is sent piece by piece, as given
    assert [m.data for m in import_requests(header(), iter(pieces))] == pieces
    empty = list(import_requests(header(), b""))
    assert len(empty) == 1 and empty[0].session_id == "s" and empty[0].data == b""
    with pytest.raises(ValueError):
        list(import_requests(header(), data, chunk_bytes=0))
    assert durability_value(None) == stubs.DURABILITY_UNSPECIFIED
    assert durability_value("ASYNC") == stubs.DURABILITY_ASYNC
    assert durability_value("durability_none") == stubs.DURABILITY_NONE
    with pytest.raises(ValueError):
        durability_value("eventually")


def test_cli_parses_labels_and_rejects_malformed_ones(capsys):
    from mnemo_client import cli
    args = cli.build_parser().parse_args(
        ["--target", "h:1", "create", "--label", "a=b", "--label", "c=d=e", "--ttl-s", "2.5"])
    assert cli._labels(args.label) == {"a": "b", "c": "d=e"} and args.ttl_s == 2.5
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["create", "--label", "novalue"])
    assert info.value.code == 2
