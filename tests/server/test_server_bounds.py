"""Bounded requests: every repeated field and string of every request has a limit
(docs/server-api.md "Request limits"), checked before any work proportional to it. The sweep
sends each field at its limit (not refused for that field) and one past it (INVALID_ARGUMENT
with a BadRequest naming the field), on a server started with small configurable limits so
the at-limit requests stay cheap."""

import time

import grpc
import pytest
from mnemo.v1 import mnemo_pb2 as pb
from mnemo.v1 import mnemo_pb2_grpc as pb_grpc

from mnemo_client import bad_request_violations

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# The configurable limits of the sweep's server; the fixed ones are the server's own.
MAX_TEXT_BYTES = 128
MAX_INPUT_TOKENS = 256
MAX_STOP_IDS = 8
MAX_STOP_STRINGS = 16
MAX_STOP_BYTES = 256
MAX_LABELS = 16
MAX_NAME = 64
MAX_SESSION_ID = 64
MAX_PAGE_TOKEN = 32
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_GLOBAL_POSITIONS = 4096
MAX_MLM_POSITIONS = 256
TOKEN = 5  # an id inside the tiny model's vocabulary


@pytest.fixture(scope="module")
def bounded(server_bin, tiny_model, tmp_path_factory):
    from server_harness import BASE_FLAGS, ServerProcess
    server = ServerProcess(server_bin, tiny_model, str(tmp_path_factory.mktemp("bounds")),
                           BASE_FLAGS + ["--max-text-bytes", str(MAX_TEXT_BYTES),
                                         "--max-input-tokens", str(MAX_INPUT_TOKENS),
                                         "--max-stop-ids", str(MAX_STOP_IDS)])
    server.wait_serving()
    yield server
    server.stop(check=True)


@pytest.fixture(scope="module")
def stubs(bounded):
    class Stubs:
        model = pb_grpc.ModelServiceStub(bounded.channel)
        session = pb_grpc.SessionServiceStub(bounded.channel)
        inference = pb_grpc.InferenceServiceStub(bounded.channel)
    return Stubs


@pytest.fixture(scope="module")
def session_id(bounded):
    client = bounded.client()
    s = client.create_session()
    client.ingest(s.id, ["A short document for the bounds sweep."])
    yield s.id
    client.delete_session(s.id)
    client.close()


def text(n):
    """n bytes of ASCII words (a few tokens, whatever n)."""
    return ("ab " * (n // 3 + 1))[:n]


def labels(count=1, key_bytes=4, value_bytes=4):
    return {("k%03d" % i + "x" * key_bytes)[:key_bytes]: "v" * value_bytes for i in range(count)}


def snapshot_of(stubs, session_id):
    return b"".join(c.data for c in stubs.session.ExportSession(
        pb.ExportSessionRequest(session_id=session_id), timeout=30))


# Each case: (name, field the violation names, limit, call(stubs, session_id, n)) where call
# sends a request whose field holds n items or bytes and drains the answer.
def _generate(**kw):
    def call(stubs, sid, n):
        fields = kw["build"](n, sid)
        fields.setdefault("max_tokens", 1)
        return list(stubs.inference.Generate(pb.GenerateRequest(**fields), timeout=60))
    return call


def _ingest(build):
    def call(stubs, sid, n):
        messages = build(n, sid)
        return list(stubs.inference.Ingest(iter(messages), timeout=60))
    return call


def _encode(**fields):
    """Encode's first message (this server has no encoder: within every limit the call fails
    with FAILED_PRECONDITION, past one with INVALID_ARGUMENT before the model is looked up)."""
    def call(stubs, sid, n):
        built = {k: v(n) for k, v in fields.items()}
        return list(stubs.inference.Encode(iter([pb.EncodeRequest(**built)]), timeout=60))
    return call


def _import(build):
    def call(stubs, sid, n):
        data = snapshot_of(stubs, sid)
        first, rest = build(n, sid, data)
        return stubs.session.ImportSession(iter([first, *rest]), timeout=60)
    return call


CASES = [
    ("GetModel.name", "name", MAX_NAME,
     lambda s, sid, n: s.model.GetModel(pb.GetModelRequest(name="m" * n))),
    ("Tokenize.model", "model", MAX_NAME,
     lambda s, sid, n: s.model.Tokenize(pb.TokenizeRequest(model="m" * n, text="x"))),
    ("Tokenize.text", "text", MAX_TEXT_BYTES,
     lambda s, sid, n: s.model.Tokenize(pb.TokenizeRequest(text=text(n)))),
    ("Detokenize.model", "model", MAX_NAME,
     lambda s, sid, n: s.model.Detokenize(pb.DetokenizeRequest(model="m" * n, ids=[TOKEN]))),
    ("Detokenize.ids", "ids", MAX_INPUT_TOKENS,
     lambda s, sid, n: s.model.Detokenize(pb.DetokenizeRequest(ids=[TOKEN] * n))),
    ("CreateSession.model", "model", MAX_NAME,
     lambda s, sid, n: s.session.CreateSession(pb.CreateSessionRequest(model="m" * n))),
    ("CreateSession.labels", "labels", MAX_LABELS,
     lambda s, sid, n: s.session.CreateSession(pb.CreateSessionRequest(labels=labels(n)))),
    ("CreateSession.labels key", "labels", MAX_LABEL_KEY,
     lambda s, sid, n: s.session.CreateSession(
         pb.CreateSessionRequest(labels=labels(key_bytes=n)))),
    ("CreateSession.labels value", "labels", MAX_LABEL_VALUE,
     lambda s, sid, n: s.session.CreateSession(
         pb.CreateSessionRequest(labels=labels(value_bytes=n)))),
    ("GetSession.session_id", "session_id", MAX_SESSION_ID,
     lambda s, sid, n: s.session.GetSession(pb.GetSessionRequest(session_id="a" * n))),
    ("ListSessions.page_token", "page_token", MAX_PAGE_TOKEN,
     lambda s, sid, n: s.session.ListSessions(pb.ListSessionsRequest(page_token="0" * (n - 1) + "1"))),
    ("ListSessions.label_filter", "label_filter", MAX_LABELS,
     lambda s, sid, n: s.session.ListSessions(pb.ListSessionsRequest(label_filter=labels(n)))),
    ("ListSessions.label_filter key", "label_filter", MAX_LABEL_KEY,
     lambda s, sid, n: s.session.ListSessions(
         pb.ListSessionsRequest(label_filter=labels(key_bytes=n)))),
    ("ListSessions.label_filter value", "label_filter", MAX_LABEL_VALUE,
     lambda s, sid, n: s.session.ListSessions(
         pb.ListSessionsRequest(label_filter=labels(value_bytes=n)))),
    ("DeleteSession.session_id", "session_id", MAX_SESSION_ID,
     lambda s, sid, n: s.session.DeleteSession(pb.DeleteSessionRequest(session_id="a" * n))),
    ("ForkSession.session_id", "session_id", MAX_SESSION_ID,
     lambda s, sid, n: s.session.ForkSession(pb.ForkSessionRequest(session_id="a" * n))),
    ("ForkSession.labels", "labels", MAX_LABELS,
     lambda s, sid, n: s.session.ForkSession(
         pb.ForkSessionRequest(session_id=sid, labels=labels(n)))),
    ("ForkSession.labels key", "labels", MAX_LABEL_KEY,
     lambda s, sid, n: s.session.ForkSession(
         pb.ForkSessionRequest(session_id=sid, labels=labels(key_bytes=n)))),
    ("ForkSession.labels value", "labels", MAX_LABEL_VALUE,
     lambda s, sid, n: s.session.ForkSession(
         pb.ForkSessionRequest(session_id=sid, labels=labels(value_bytes=n)))),
    ("ExportSession.session_id", "session_id", MAX_SESSION_ID,
     lambda s, sid, n: list(s.session.ExportSession(pb.ExportSessionRequest(session_id="a" * n)))),
    ("ImportSession.model", "model", MAX_NAME, _import(
        lambda n, sid, data: (pb.ImportSessionRequest(model="m" * n, data=data), []))),
    ("ImportSession.session_id", "session_id", MAX_SESSION_ID, _import(
        lambda n, sid, data: (pb.ImportSessionRequest(session_id="a" * n, data=data), []))),
    ("ImportSession.labels", "labels", MAX_LABELS, _import(
        lambda n, sid, data: (pb.ImportSessionRequest(labels=labels(n), data=data), []))),
    ("ImportSession.labels key", "labels", MAX_LABEL_KEY, _import(
        lambda n, sid, data: (pb.ImportSessionRequest(labels=labels(key_bytes=n), data=data),
                              []))),
    ("ImportSession.labels value", "labels", MAX_LABEL_VALUE, _import(
        lambda n, sid, data: (pb.ImportSessionRequest(labels=labels(value_bytes=n), data=data),
                              []))),
    ("ImportSession messages[1].model", "messages[1].model", MAX_NAME, _import(
        lambda n, sid, data: (pb.ImportSessionRequest(data=data[:10]),
                              [pb.ImportSessionRequest(model="m" * n, data=data[10:])]))),
    ("Ingest.session_id", "session_id", MAX_SESSION_ID, _ingest(
        lambda n, sid: [pb.IngestRequest(session_id="a" * n, text="x")])),
    ("Ingest.text", "text", MAX_TEXT_BYTES, _ingest(
        lambda n, sid: [pb.IngestRequest(session_id=sid, text=text(n))])),
    ("Ingest.ids", "ids.ids", MAX_INPUT_TOKENS, _ingest(
        lambda n, sid: [pb.IngestRequest(session_id=sid, ids=pb.TokenIds(ids=[TOKEN] * n))])),
    ("Ingest messages[1].text", "messages[1].text", MAX_TEXT_BYTES, _ingest(
        lambda n, sid: [pb.IngestRequest(session_id=sid, text="x "),
                        pb.IngestRequest(text=text(n))])),
    ("Ingest messages[1].ids", "messages[1].ids.ids", MAX_INPUT_TOKENS, _ingest(
        lambda n, sid: [pb.IngestRequest(session_id=sid, ids=pb.TokenIds(ids=[TOKEN])),
                        pb.IngestRequest(ids=pb.TokenIds(ids=[TOKEN] * n))])),
    ("Ingest messages[1].session_id", "messages[1].session_id", MAX_SESSION_ID, _ingest(
        lambda n, sid: [pb.IngestRequest(session_id=sid, text="x "),
                        pb.IngestRequest(session_id="a" * n, text="y")])),
    ("Generate.session_id", "session_id", MAX_SESSION_ID, _generate(
        build=lambda n, sid: dict(session_id="a" * n, text="x"))),
    ("Generate.model", "model", MAX_NAME, _generate(
        build=lambda n, sid: dict(model="m" * n, text="x"))),
    ("Generate.text", "text", MAX_TEXT_BYTES, _generate(
        build=lambda n, sid: dict(text=text(n)))),
    ("Generate.ids", "ids.ids", MAX_INPUT_TOKENS, _generate(
        build=lambda n, sid: dict(ids=pb.TokenIds(ids=[TOKEN] * n)))),
    ("Generate.stop", "stop", MAX_STOP_STRINGS, _generate(
        build=lambda n, sid: dict(text="x", stop=["zz"] * n))),
    ("Generate.stop[0]", "stop[0]", MAX_STOP_BYTES, _generate(
        build=lambda n, sid: dict(text="x", stop=["z" * n]))),
    ("Generate.stop_ids", "stop_ids", MAX_STOP_IDS, _generate(
        build=lambda n, sid: dict(text="x", stop_ids=[TOKEN] * n))),
    ("Score.session_id", "session_id", MAX_SESSION_ID,
     lambda s, sid, n: s.inference.Score(pb.ScoreRequest(session_id="a" * n, text="x y"))),
    ("Score.model", "model", MAX_NAME,
     lambda s, sid, n: s.inference.Score(pb.ScoreRequest(model="m" * n, text="x y"))),
    ("Score.text", "text", MAX_TEXT_BYTES,
     lambda s, sid, n: s.inference.Score(pb.ScoreRequest(text=text(n)))),
    ("Score.ids", "ids.ids", MAX_INPUT_TOKENS,
     lambda s, sid, n: s.inference.Score(pb.ScoreRequest(ids=pb.TokenIds(ids=[TOKEN] * n)))),
    ("Encode.model", "model", MAX_NAME, _encode(model=lambda n: "m" * n)),
    ("Encode.text", "text", MAX_TEXT_BYTES, _encode(text=text)),
    ("Encode.ids", "ids.ids", MAX_INPUT_TOKENS,
     _encode(ids=lambda n: pb.TokenIds(ids=[TOKEN] * n))),
    ("Encode.global_positions", "global_positions", MAX_GLOBAL_POSITIONS,
     _encode(global_positions=lambda n: list(range(n)))),
    ("Encode.mlm_positions", "mlm_positions", MAX_MLM_POSITIONS,
     _encode(mlm_positions=lambda n: list(range(n)))),
]


def violations_of(call):
    """(code, [(field, description)]) of call(); OK and [] when it succeeds."""
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), bad_request_violations(e)
    return grpc.StatusCode.OK, []


@pytest.mark.parametrize("name,field,limit,call", CASES, ids=[c[0] for c in CASES])
def test_field_at_and_past_its_limit(stubs, session_id, name, field, limit, call):
    code, violations = violations_of(lambda: call(stubs, session_id, limit))
    assert not (code == INVALID and any(f == field for f, _ in violations)), \
        f"{name} at its limit ({limit}) refused for that field: {violations}"
    code, violations = violations_of(lambda: call(stubs, session_id, limit + 1))
    assert code == INVALID, f"{name} one past its limit ({limit + 1}): {code}"
    assert any(f == field for f, _ in violations), \
        f"{name} one past its limit: no violation names {field!r}: {violations}"


def test_every_request_field_is_swept():
    """Every string and repeated field of every client request appears in CASES (map fields
    as their count, key and value), so a field added to the contract needs a limit here."""
    swept = {c[0].split(" ")[0] for c in CASES}
    swept |= {c[0].replace(" messages[1].", ".") for c in CASES}
    missing = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        if service.name == "ReplicaService":
            continue  # replica-to-replica only; its limits are in request_bounds.cc
        for method in service.methods:
            for f in method.input_type.fields:
                sized = f.type in (f.TYPE_STRING, f.TYPE_BYTES) or f.label == f.LABEL_REPEATED \
                    or f.type == f.TYPE_MESSAGE and f.message_type.name == "TokenIds"
                if not sized or f.name == "data":  # snapshot bytes: bounded per model
                    continue
                if f"{method.name}.{f.name}" not in swept:
                    missing.append(f"{method.name}.{f.name}")
    assert not missing, f"fields without an at/past-limit case: {missing}"


def test_two_million_stop_ids_are_refused_at_once(shared_server):
    """The case that ran past a 15 s deadline and grew the server to 1.2 GB: now refused before
    any work, naming the field (the time is reported, not asserted)."""
    stub = pb_grpc.InferenceServiceStub(shared_server.channel)
    request = pb.GenerateRequest(text="x", max_tokens=1, stop_ids=[100000 + i % 1000
                                                                   for i in range(2_000_000)])
    assert request.ByteSize() > 4_000_000
    start = time.monotonic()
    code, violations = violations_of(lambda: list(stub.Generate(request, timeout=15)))
    elapsed = time.monotonic() - start
    assert code == INVALID, code
    assert [f for f, _ in violations] == ["stop_ids"], violations
    print(f"2M stop_ids refused in {elapsed * 1000:.1f} ms round trip")
    assert shared_server.alive()


# --- unknown enum values ------------------------------------------------------------------

def _with_varint(message, number, value):
    """`message` serialized, plus field `number` set to `value` (which Python protobuf would
    not let a message hold, e.g. an enum value the contract does not define)."""
    from server_harness import pb_varint
    return message.SerializeToString() + pb_varint(number, value)


@pytest.mark.parametrize("value", [99, -1])
def test_unknown_commit_mode_is_refused_and_changes_nothing(bounded, session_id, value):
    from server_harness import raw_unary_stream
    client = bounded.client()
    before = client.get_session(session_id)
    request = _with_varint(pb.GenerateRequest(session_id=session_id, text="x", max_tokens=2), 13,
                           value)
    code, violations = violations_of(lambda: raw_unary_stream(
        bounded.channel, "/mnemo.v1.InferenceService/Generate", request))
    assert code == INVALID, code
    assert [f for f, _ in violations] == ["commit"], violations
    after = client.get_session(session_id)
    assert (after.state_version, after.tokens_seen) == (before.state_version, before.tokens_seen)
    client.close()


@pytest.mark.parametrize("value", [7, -1])
def test_unknown_durability_is_refused(bounded, stubs, session_id, value):
    from server_harness import raw_unary
    request = _with_varint(pb.CreateSessionRequest(), 6, value)
    code, violations = violations_of(lambda: raw_unary(
        bounded.channel, "/mnemo.v1.SessionService/CreateSession", request))
    assert code == INVALID, code
    assert [f for f, _ in violations] == ["durability"], violations
    first = _with_varint(pb.ImportSessionRequest(data=snapshot_of(stubs, session_id)), 6, value)
    code, violations = violations_of(lambda: bounded.channel.stream_unary(
        "/mnemo.v1.SessionService/ImportSession")(iter([first]), timeout=30))
    assert code == INVALID, code
    assert [f for f, _ in violations] == ["durability"], violations


# --- echoed input -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10_000, 100_000])
def test_long_names_get_their_status_not_a_transport_error(stubs, size):
    """A NOT_FOUND once repeated the name in full; above ~8 KiB the client got a metadata-size
    error instead of a status. Now: INVALID_ARGUMENT naming the field, and a short message."""
    for call, field in [
        (lambda: stubs.model.GetModel(pb.GetModelRequest(name="m" * size)), "name"),
        (lambda: stubs.session.GetSession(pb.GetSessionRequest(session_id="a" * size)),
         "session_id"),
        (lambda: stubs.model.Tokenize(pb.TokenizeRequest(model="m" * size, text="x")), "model"),
    ]:
        try:
            call()
            pytest.fail("accepted")
        except grpc.RpcError as e:
            assert e.code() == INVALID, (e.code(), e.details()[:200])
            assert [f for f, _ in bad_request_violations(e)] == [field]
            assert len(e.details()) < 1024, len(e.details())


def test_not_found_quotes_the_name_it_did_not_find(stubs):
    name = "no-such-model-" + "x" * (MAX_NAME - 14)
    with pytest.raises(grpc.RpcError) as raised:
        stubs.model.GetModel(pb.GetModelRequest(name=name))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert name in raised.value.details()
