"""Tenants through the real server and client: --auth-file tokens (UNAUTHENTICATED without valid
ones), every session RPC isolated between tenants (table-driven: another tenant's session answers
exactly as a missing one and is left unchanged), the admin role, each quota reached and reported
with a QuotaFailure naming it, per-tenant metrics, the auth file re-read without a restart, and a
session's tenant surviving a restart with a session store.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading

import grpc
import pytest

from mnemo.v1 import mnemo_pb2 as pb
from mnemo_client import MnemoClient
from mnemo_client.errors import error_reason, quota_violations
from server_harness import expect_error, wait_until

TOKENS = {name: secrets.token_urlsafe(24) for name in ("alice", "bob", "root", "quota", "late")}


def tenant(name, admin=False, quotas=None):
    t = {"name": name, "token_sha256": [hashlib.sha256(TOKENS[name].encode()).hexdigest()]}
    if admin:
        t["admin"] = True
    if quotas:
        t["quotas"] = quotas
    return t


def write_auth(path, tenants):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"tenants": tenants}, f)
    os.replace(tmp, path)


BASE_TENANTS = [tenant("alice"), tenant("bob"), tenant("root", admin=True)]


@pytest.fixture
def auth_server(start_server, tmp_path):
    path = str(tmp_path / "auth.json")
    write_auth(path, BASE_TENANTS)
    server = start_server("--auth-file", path)
    clients = []

    def client(name=None, token=None):
        c = MnemoClient(server.target, timeout=60, retry=None,
                        token=token if token is not None else (TOKENS[name] if name else None))
        clients.append(c)
        return c

    yield server, path, client
    for c in clients:
        c.close()


def not_found_text(call, session_id):
    """The NOT_FOUND details of `call` with the session id replaced (compared across ids)."""
    e = expect_error(call, grpc.StatusCode.NOT_FOUND)
    return e.details().replace(session_id, "<id>")


def drain(stream):
    return list(stream)


def ingest_call(c, sid):
    return lambda: c.ingest(sid, ["more text", [5, 6, 7]])


# Every session RPC, as (name, call(client, session_id, snapshot)). Each must answer NOT_FOUND for
# another tenant's session, exactly as for an id that does not exist.
SESSION_RPCS = [
    ("GetSession", lambda c, sid, snap: c.get_session(sid)),
    ("DeleteSession", lambda c, sid, snap: c.delete_session(sid)),
    ("ForkSession", lambda c, sid, snap: c.fork_session(sid)),
    ("Ingest", lambda c, sid, snap: c.ingest(sid, ["more text", [5, 6, 7]])),
    ("Generate", lambda c, sid, snap: drain(c.generate(sid, "go on", max_tokens=2))),
    ("Score", lambda c, sid, snap: c.score(sid, text="scored text", commit=True)),
    ("ExportSession", lambda c, sid, snap: c.export_session(sid)),
    ("ImportSession", lambda c, sid, snap: c.import_session(snap, session_id=sid)),
]


def test_every_session_rpc_is_isolated_between_tenants(auth_server):
    server, _, client = auth_server
    alice, bob = client("alice"), client("bob")
    owned = alice.create_session(labels={"doc": "a"})
    alice.ingest(owned.id, ["The document of alice, kept to herself."])
    before = alice.get_session(owned.id)
    snapshot = alice.export_session(owned.id)
    missing = secrets.token_hex(16)
    for name, call in SESSION_RPCS:
        other = not_found_text(lambda: call(bob, owned.id, snapshot), owned.id)
        absent = not_found_text(lambda: call(bob, missing, snapshot), missing)
        assert other == absent, f"{name}: another tenant's session answers unlike a missing one"
    assert [s.id for s in bob.list_sessions()] == []
    after = alice.get_session(owned.id)
    assert (after.state_version, after.tokens_seen) == (before.state_version, before.tokens_seen)
    # The owner still does all of it.
    for name, call in SESSION_RPCS:
        if name != "DeleteSession":
            call(alice, owned.id, snapshot)
    assert [s.id for s in alice.list_sessions()] == [owned.id] + [
        s.id for s in alice.list_sessions() if s.id != owned.id]
    # A fork belongs to the caller who made it; an import to the importing caller.
    fork = alice.fork_session(owned.id)
    expect_error(lambda: bob.get_session(fork.id), grpc.StatusCode.NOT_FOUND)
    imported = bob.import_session(snapshot)
    assert bob.get_session(imported.id).tokens_seen == before.tokens_seen
    expect_error(lambda: alice.get_session(imported.id), grpc.StatusCode.NOT_FOUND)
    assert [s.id for s in bob.list_sessions()] == [imported.id]
    alice.delete_session(owned.id)


def test_admin_lists_and_deletes_across_tenants_but_runs_nothing_on_them(auth_server):
    _, _, client = auth_server
    alice, bob, root = client("alice"), client("bob"), client("root")
    a = alice.create_session()
    b = bob.create_session()
    owners = {s.id: s.tenant for s in root.list_sessions()}
    assert owners[a.id] == "alice" and owners[b.id] == "bob"
    assert root.get_session(a.id).tenant == "alice"
    for name, call in SESSION_RPCS:
        if name in ("GetSession", "DeleteSession"):
            continue
        expect_error(lambda: call(root, a.id, b""), grpc.StatusCode.NOT_FOUND)
    root.delete_session(a.id)
    expect_error(lambda: alice.get_session(a.id), grpc.StatusCode.NOT_FOUND)
    assert [s.id for s in bob.list_sessions()] == [b.id]


def test_calls_without_valid_credentials_are_unauthenticated(auth_server):
    server, _, client = auth_server
    for c in (client(), client(token="not-a-token"), client(token=TOKENS["alice"] + "x")):
        for call in (lambda: c.models(), lambda: c.create_session(),
                     lambda: c.list_sessions(), lambda: c.get_session("0" * 32),
                     lambda: c.score(text="abc"), lambda: drain(c.generate(prompt="a")),
                     lambda: c.ingest("0" * 32, ["x"]), lambda: c.export_session("0" * 32),
                     lambda: c.import_session(b"x")):
            expect_error(call, grpc.StatusCode.UNAUTHENTICATED)
    # A scheme other than Bearer is refused too; health stays open to probes.
    raw = grpc.insecure_channel(server.target)
    stub = pb_grpc_stub(raw)
    with pytest.raises(grpc.RpcError) as e:
        stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", "Basic abc")],
                        timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    raw.close()
    assert server.health() == 1
    metrics = server.metrics()
    assert metrics.sum("mnemo_auth_failures_total") >= 27
    text = server.metrics_text()
    for token in TOKENS.values():
        assert token not in text


def pb_grpc_stub(channel):
    from mnemo.v1 import mnemo_pb2_grpc
    return mnemo_pb2_grpc.ModelServiceStub(channel)


def quota_of(e):
    violations = quota_violations(e)
    assert len(violations) == 1, violations
    assert error_reason(e) == "QUOTA_EXCEEDED"
    return violations[0][0]


def test_each_quota_is_reached_and_reported(auth_server):
    server, path, client = auth_server
    alice = client("alice")
    state_bytes = alice.create_session().state_bytes
    assert state_bytes > 0
    write_auth(path, BASE_TENANTS + [
        tenant("quota", quotas={"sessions": 2, "concurrent_requests": 1,
                                "tokens_per_minute": 100}),
        tenant("late", quotas={"state_bytes": state_bytes * 3 // 2})])
    q = client("quota")
    wait_until(lambda: rpc_ok(lambda: q.models()), timeout=15)

    # sessions: the third is refused; deleting one makes room.
    first, second = q.create_session(), q.create_session()
    e = expect_error(lambda: q.create_session(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert quota_of(e) == "sessions"
    expect_error(lambda: q.fork_session(first.id), grpc.StatusCode.RESOURCE_EXHAUSTED)
    q.delete_session(second.id)
    q.create_session()

    # state_bytes: one session's state fits, a second does not.
    late = client("late")
    late.create_session()
    e = expect_error(lambda: late.create_session(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert quota_of(e) == "state_bytes"

    # concurrent_requests: an Ingest held open takes the only slot.
    release = threading.Event()

    def chunks():
        yield pb.IngestRequest(session_id=first.id, text="held open")
        release.wait(30)

    call = q.inference_stub.Ingest(chunks(), metadata=q._metadata(""), timeout=60)
    next(call)  # the server runs it
    e = expect_error(lambda: q.models(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert quota_of(e) == "concurrent_requests"
    release.set()
    drain(call)

    # tokens_per_minute: a request runs while the bucket holds tokens; it empties it.
    q.score(text=None, ids=list(range(10, 160)))
    e = expect_error(lambda: q.score(ids=[1, 2, 3]), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert quota_of(e) == "tokens_per_minute"
    expect_error(lambda: drain(q.generate(prompt=[1, 2], max_tokens=1)),
                 grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Another tenant is not held back by it.
    alice.score(ids=[1, 2, 3])

    m = server.metrics()
    for quota in ("sessions", "concurrent_requests", "tokens_per_minute"):
        assert m.sum("mnemo_tenant_quota_rejections_total", tenant="quota", quota=quota) >= 1
    assert m.sum("mnemo_tenant_quota_rejections_total", tenant="late", quota="state_bytes") == 1
    assert m.sum("mnemo_tenant_sessions", tenant="quota") == 2
    assert m.sum("mnemo_tenant_tokens_total", tenant="quota") >= 150
    assert m.sum("mnemo_tenant_requests_total", tenant="alice", code="OK") >= 2


def rpc_ok(call):
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def test_auth_file_change_applies_without_restart(auth_server):
    server, path, client = auth_server
    alice, late = client("alice"), client("late")
    expect_error(lambda: late.models(), grpc.StatusCode.UNAUTHENTICATED)
    session = alice.create_session()
    # late gets a token, alice loses hers: both apply within the file's check interval.
    write_auth(path, [tenant("late"), tenant("bob")])
    wait_until(lambda: rpc_ok(lambda: late.models()), timeout=15)
    expect_error(lambda: alice.models(), grpc.StatusCode.UNAUTHENTICATED)
    # A file that does not parse is refused and the previous contents stay.
    with open(path, "w") as f:
        f.write("{not json")
    wait_until(lambda: "previous contents stay" in server.stderr_text(), timeout=15)
    late.models()
    # alice's session is hers again once her token is back.
    write_auth(path, BASE_TENANTS)
    wait_until(lambda: rpc_ok(lambda: alice.models()), timeout=15)
    assert alice.get_session(session.id).id == session.id


def test_tenant_survives_a_restart_with_a_store(start_server, tmp_path):
    path = str(tmp_path / "auth.json")
    write_auth(path, BASE_TENANTS)
    store = str(tmp_path / "store")
    flags = ("--auth-file", path, "--session-store", store)
    server = start_server(*flags)
    with MnemoClient(server.target, timeout=60, token=TOKENS["alice"]) as alice:
        sid = alice.create_session(durability="sync").id
        alice.ingest(sid, ["A durable document that belongs to alice."])
        version = alice.get_session(sid).state_version
    server.stop()
    server = start_server(*flags)
    with MnemoClient(server.target, timeout=60, token=TOKENS["alice"]) as alice, \
            MnemoClient(server.target, timeout=60, token=TOKENS["bob"]) as bob:
        expect_error(lambda: bob.get_session(sid), grpc.StatusCode.NOT_FOUND)
        expect_error(lambda: bob.score(sid, text="x"), grpc.StatusCode.NOT_FOUND)
        assert bob.list_sessions() == []
        assert alice.get_session(sid).state_version == version
        alice.score(sid, text="still hers")
        assert [s.id for s in alice.list_sessions()] == [sid]


def test_cli_reads_the_token_from_a_file_or_the_environment(auth_server, tmp_path):
    import subprocess
    import sys
    server, _, _ = auth_server
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["alice"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "MNEMO_TOKEN"}

    def cli(*args, token_env=None):
        e = dict(env, **({"MNEMO_TOKEN": token_env} if token_env else {}))
        return subprocess.run([sys.executable, "-m", "mnemo_client", "--target", server.target,
                               "--no-retry", *args], capture_output=True, text=True, env=e,
                              timeout=120)

    refused = cli("models")
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr + refused.stdout
    created = cli("--token-file", str(token_file), "create")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip().split()[-1]
    assert cli("get", sid, token_env=TOKENS["alice"]).returncode == 0
    other = cli("get", sid, token_env=TOKENS["bob"])
    assert other.returncode != 0 and "NOT_FOUND" in other.stderr + other.stdout


def test_without_an_auth_file_the_start_up_log_says_so(start_server):
    server = start_server()
    assert "no --auth-file: every caller is one implicit tenant" in server.stderr_text()
    with server.client() as c:
        c.list_sessions()  # no credentials needed


def test_replicas_leave_another_tenants_session_where_it_is(start_server, tmp_path):
    path = str(tmp_path / "auth.json")
    write_auth(path, BASE_TENANTS)
    store = str(tmp_path / "store")
    token_file = tmp_path / "replica-token"
    token_file.write_text(TOKENS["root"] + "\n")  # the replicas ask each other as an admin
    a, b = (start_server("--auth-file", path, "--session-store", store, "--replica-id", name,
                         "--replica-token-file", str(token_file))
            for name in ("a", "b"))

    def claimed(server):
        return server.metrics().sum("mnemo_session_ownership_total", event="claimed")

    with MnemoClient(a.target, timeout=60, token=TOKENS["alice"]) as alice_a, \
            MnemoClient(b.target, timeout=60, token=TOKENS["alice"]) as alice_b, \
            MnemoClient(a.target, timeout=60, token=TOKENS["bob"]) as bob_a, \
            MnemoClient(b.target, timeout=60, token=TOKENS["bob"]) as bob_b:
        sid = alice_a.create_session().id
        alice_a.ingest(sid, ["alice's document"])
        before = claimed(b)
        expect_error(lambda: bob_b.get_session(sid), grpc.StatusCode.NOT_FOUND)
        expect_error(lambda: bob_b.score(sid, text="x"), grpc.StatusCode.NOT_FOUND)
        assert claimed(b) == before, "another tenant's lookup took the session over"
        assert alice_a.get_session(sid).tier != pb.STATE_TIER_STORE
        # Its owner moves it; the tenant moves with it (and with the release A writes).
        assert alice_b.score(sid, text="moved").state_version >= 1
        after = claimed(a)
        expect_error(lambda: bob_a.get_session(sid), grpc.StatusCode.NOT_FOUND)
        assert claimed(a) == after
        assert alice_a.get_session(sid).id == sid


def test_only_an_admin_may_ask_a_replica_for_a_hand_off(start_server, tmp_path):
    """HandOffSession makes a replica write a session out and let it go: with an auth file only
    an admin tenant's credentials (the replicas' own) may call it."""
    from mnemo.v1 import mnemo_pb2_grpc as pb_grpc

    path = str(tmp_path / "auth.json")
    write_auth(path, BASE_TENANTS)
    store = str(tmp_path / "store")
    a = start_server("--auth-file", path, "--session-store", store, "--replica-id", "a")
    with MnemoClient(a.target, timeout=60, token=TOKENS["alice"]) as alice:
        sid = alice.create_session().id
        alice.ingest(sid, ["alice's document"])
        stub = pb_grpc.ReplicaServiceStub(alice.channel)
        request = pb.HandOffSessionRequest(session_id=sid, to_replica="intruder")
        for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                               ((("authorization", "Bearer " + TOKENS["alice"]),),
                                grpc.StatusCode.PERMISSION_DENIED)):
            expect_error(lambda: stub.HandOffSession(request, timeout=10, metadata=metadata),
                         code)
            # Still held here, at its version, not written out and released.
            info = alice.get_session(sid)
            assert info.state_version == 1 and info.tier != pb.STATE_TIER_STORE
        stub.HandOffSession(request, timeout=10,
                            metadata=(("authorization", "Bearer " + TOKENS["root"]),))
        handed = a.metrics().sum("mnemo_session_handoffs_total", direction="out", result="ok")
        assert handed == 1
