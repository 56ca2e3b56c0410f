"""TLS and mTLS on the real server with the real clients (Python MnemoClient, both command lines):
handshakes that must succeed and those that must be refused (wrong CA, expired server
certificate, no client certificate or one from another CA under mTLS), certificate rotation while
connected, the plaintext health-only listener, and --reflection off.

Certificates are made per test module with `cryptography` (deploy/local/certs.py). Every server
here also gets --health-listen, and the harness waits for it there: the main listener may be one
that the test's clients are meant to be refused by.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import grpc
import pytest

from deploy.local.certs import Ca, not_after
from mnemo_client import MnemoClient, health
from mnemo_client.tls import TlsConfig
from server_harness import BASE_FLAGS, ServerProcess, free_port, pb_bytes, rpc_code, wait_until

REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
LIST_MODELS = "/mnemo.v1.ModelService/ListModels"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two unrelated CAs; server certificates (valid, expired) and client certificates."""
    root = str(tmp_path_factory.mktemp("pki"))
    ca = Ca(os.path.join(root, "ca"))
    other = Ca(os.path.join(root, "other"), name="another CA")
    return {
        "ca": ca,
        "other": other,
        "server": ca.issue("server", "mnemo-server"),
        "server_expired": ca.issue("server-expired", "mnemo-server", expired=True),
        "server_other": other.issue("server-other", "mnemo-server"),
        "replica": ca.issue("replica", "mnemo-replica", client=True),
        "client": ca.issue("client", "tenant-a", server=False),
        "client_other": other.issue("client-other", "tenant-a", server=False),
    }


@pytest.fixture
def start_tls(server_bin, tiny_model, server_workdir):
    """start_tls(*flags, tls=TlsConfig or None, grace_s=5.0) -> a ServerProcess whose health listener says
    SERVING; `server.health_target` is that listener. Stopped (and checked) at the end."""
    started = []

    def start(*flags, tls=None, grace_s=5.0):
        health_target = f"127.0.0.1:{free_port()}"
        server = ServerProcess(server_bin, tiny_model, server_workdir,
                               BASE_FLAGS + ["--health-listen", health_target, *flags], tls=tls,
                               grace_s=grace_s)
        server.health_target = health_target
        started.append(server)
        wait_health(server)
        return server

    yield start
    for server in started:
        if server.returncode is None:
            server.stop(check=True)


def wait_health(server, timeout: float = 60.0) -> None:
    """Waits until the plaintext health listener answers SERVING (a fresh channel once the log
    says the server listens, as ServerProcess.wait_serving does)."""
    wait_until(lambda: "listening on" in server.stderr_text() or not server.alive(), timeout,
               message="the server's start-up")
    if not server.alive():
        server.fail("mnemo-server exited during start-up")
    with grpc.insecure_channel(server.health_target) as channel:
        def serving():
            try:
                return health.health_check(channel, timeout=1.0) == health.SERVING
            except grpc.RpcError:
                return False
        wait_until(serving, timeout, message="SERVING on the health listener")


def tls(pki, ca="ca", client=None, **kwargs) -> TlsConfig:
    leaf = pki[client] if client else None
    return TlsConfig(ca_file=pki[ca].pem, cert_file=leaf.cert if leaf else None,
                     key_file=leaf.key if leaf else None, **kwargs)


def server_flags(pki, server="server", client_ca=None):
    flags = ["--tls-cert", pki[server].cert, "--tls-key", pki[server].key]
    if client_ca:
        flags += ["--tls-client-ca", pki[client_ca].pem]
    return flags


def list_models(server, config, timeout=5.0):
    """ListModels on a fresh connection with `config` (None: plaintext); raises grpc.RpcError."""
    with MnemoClient(server.target, timeout=timeout, tls=config, retry=None) as client:
        return client.models()


# Why a handshake failed, as the client's error and the server's log (gRPC's) say it.
CLIENT_DISTRUSTS = "certificate verify failed"  # the server's certificate, on the client
OTHER_NAME = "is not in peer certificate"
SERVER_HUNG_UP = "Socket closed"
NO_CLIENT_CERT = "peer did not return a certificate"
CLIENT_CERT_DISTRUSTED = "certificate verify failed"  # the client's certificate, on the server
NOT_TLS = "wrong version number"


def refused(server, config, client_says: str, server_says: str = "") -> None:
    """A ListModels on a fresh connection with `config` fails in the handshake: UNAVAILABLE,
    with `client_says` in its message and `server_says` in the server's log."""
    log_before = len(server.stderr_text(tail_bytes=10**9))
    with pytest.raises(grpc.RpcError) as info:
        list_models(server, config)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    assert client_says in info.value.details(), info.value.details()
    if server_says:
        wait_until(lambda: server_says in server.stderr_text(tail_bytes=10**9)[log_before:], 5,
                   message=f"{server_says!r} in the server's log")


# -- TLS --------------------------------------------------------------------------------------


def test_tls_session_round_trip_and_refusals(start_tls, pki):
    server = start_tls(*server_flags(pki), tls=tls(pki))
    assert "listening on" in server.stderr_text() and "TLS (" in server.stderr_text()
    with server.client() as client:
        session = client.create_session(labels={"doc": "tls"})
        client.ingest(session.id, ["Over TLS, a document like any other."])
        text, final = client.generate_text(session.id, " And", max_tokens=4, temperature=0)
        assert final.usage.generated_tokens == 4
        assert client.get_session(session.id).state_version == final.state_version_after
        assert client.health() == health.SERVING
    # The expected server name is checked: a certificate for localhost is not one for another.
    refused(server, tls(pki, server_name="elsewhere.example"), OTHER_NAME)
    assert [m.name for m in list_models(server, tls(pki, server_name="localhost"))] == ["tiny"]
    # A client that trusts another CA, and a plaintext client, are refused.
    refused(server, tls(pki, ca="other"), CLIENT_DISTRUSTS)
    refused(server, None, SERVER_HUNG_UP, NOT_TLS)


def test_expired_server_certificate_is_refused(start_tls, pki):
    server = start_tls(*server_flags(pki, server="server_expired"), tls=tls(pki))
    assert "has expired" in server.stderr_text()
    refused(server, tls(pki), CLIENT_DISTRUSTS)


# -- mTLS -------------------------------------------------------------------------------------


def test_mtls_requires_a_client_certificate_from_the_ca(start_tls, pki):
    server = start_tls(*server_flags(pki, client_ca="ca"), tls=tls(pki, client="client"))
    assert "mTLS (" in server.stderr_text()
    assert [m.name for m in list_models(server, tls(pki, client="client"))] == ["tiny"]
    refused(server, tls(pki), SERVER_HUNG_UP, NO_CLIENT_CERT)
    refused(server, tls(pki, client="client_other"), SERVER_HUNG_UP, CLIENT_CERT_DISTRUSTED)
    refused(server, None, SERVER_HUNG_UP, NOT_TLS)


def test_python_cli_over_mtls(start_tls, pki):
    server = start_tls(*server_flags(pki, client_ca="ca"), tls=tls(pki, client="client"))
    leaf = pki["client"]
    base = [sys.executable, "-m", "mnemo_client", "--target", server.target, "--timeout", "10",
            "--no-retry", "--tls-ca", pki["ca"].pem]
    ok = subprocess.run(base + ["--tls-cert", leaf.cert, "--tls-key", leaf.key, "models"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("tiny\t"), ok.stderr
    bad = subprocess.run(base + ["models"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "UNAVAILABLE" in bad.stderr, (bad.stdout, bad.stderr)
    usage = subprocess.run(base + ["--tls-cert", leaf.cert, "models"], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "--tls-key" in usage.stderr


def test_cpp_cli_over_mtls(start_tls, pki):
    client_bin = os.environ.get("MNEMO_CLIENT_BIN")
    assert client_bin and os.access(client_bin, os.X_OK), \
        f"MNEMO_CLIENT_BIN must name the mnemo-client binary (ctest sets it); got {client_bin!r}"
    server = start_tls(*server_flags(pki, client_ca="ca"), tls=tls(pki, client="client"))
    leaf = pki["client"]
    base = [client_bin, "--target", server.target, "--timeout", "10s", "--no-retry",
            "--tls-ca", pki["ca"].pem]
    ok = subprocess.run(base + ["--tls-cert", leaf.cert, "--tls-key", leaf.key, "models"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("tiny"), (ok.stdout, ok.stderr)
    created = subprocess.run(base + ["--tls-cert", leaf.cert, "--tls-key", leaf.key, "create"],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0 and created.stdout.strip(), created.stderr
    for extra in ([], ["--tls-cert", pki["client_other"].cert,
                       "--tls-key", pki["client_other"].key]):
        bad = subprocess.run(base + extra + ["models"], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 1 and "UNAVAILABLE" in bad.stderr, (bad.stdout, bad.stderr)
    wrong_ca = subprocess.run([client_bin, "--target", server.target, "--timeout", "10s",
                               "--no-retry", "--tls-ca", pki["other"].pem, "--tls-cert",
                               leaf.cert, "--tls-key", leaf.key, "models"],
                              capture_output=True, text=True, timeout=60)
    assert wrong_ca.returncode == 1 and "UNAVAILABLE" in wrong_ca.stderr, wrong_ca.stderr
    usage = subprocess.run(base + ["--tls-key", leaf.key, "models"], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "--tls-cert" in usage.stderr, usage.stderr


# -- rotation ---------------------------------------------------------------------------------


def test_rotation_while_connected(start_tls, pki, tmp_path):
    """The files are replaced by a certificate from another CA: new connections get it (a client
    trusting only the new CA connects, one trusting only the old one is refused) while a
    connection opened before keeps working, streams included. A set that does not check out (a
    key before its certificate, a broken file) is not served."""
    cert, key = str(tmp_path / "server.pem"), str(tmp_path / "server-key.pem")
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    server = start_tls("--tls-cert", cert, "--tls-key", key, "--tls-reload-interval", "1s",
                       tls=tls(pki))
    assert server.metrics().sum("mnemo_tls_certificate_expiry_timestamp_seconds") == \
        not_after(pki["server"].cert)
    old = server.client(timeout=30)
    session = old.create_session()
    old.ingest(session.id, ["Before the rotation."])
    refused(server, tls(pki, ca="other"), CLIENT_DISTRUSTS)

    # The key first, as a careless rotation would: a key that does not match the certificate is
    # not taken, and new connections keep getting the old certificate meanwhile.
    shutil.copy(pki["server_other"].key, key)
    wait_until(lambda: "TLS files not reloaded" in server.stderr_text(), 15,
               message="the mismatched key logged")
    assert "does not match the certificate" in server.stderr_text()
    assert [m.name for m in list_models(server, tls(pki))] == ["tiny"]
    shutil.copy(pki["server_other"].cert, cert)

    def new_certificate_served():
        try:
            list_models(server, tls(pki, ca="other"), timeout=2.0)
            return True
        except grpc.RpcError:
            return False
    wait_until(new_certificate_served, timeout=30, message="the new certificate served")
    refused(server, tls(pki), CLIENT_DISTRUSTS)
    # The connection made before the rotation still works, for unary and streaming calls.
    progress = old.ingest(session.id, [" After the rotation."])
    text, final = old.generate_text(session.id, " So", max_tokens=3, temperature=0)
    assert final.usage.generated_tokens == 3
    assert final.state_version_after > progress.state_version
    old.close()
    assert "TLS files changed" in server.stderr_text()
    metrics = server.metrics()
    assert metrics.sum("mnemo_tls_reloads_total", result="ok") == 1
    assert metrics.sum("mnemo_tls_reloads_total", result="refused") == 1  # the lone key
    assert metrics.sum("mnemo_tls_certificate_expiry_timestamp_seconds") == \
        not_after(pki["server_other"].cert)
    # A broken file is not served either: the last good certificate stays.
    logged = server.stderr_text().count("TLS files not reloaded")
    with open(cert, "w") as f:
        f.write("not a certificate\n")
    wait_until(lambda: server.stderr_text().count("TLS files not reloaded") > logged, 15,
               message="the broken certificate file logged")
    assert "not a PEM certificate" in server.stderr_text()
    time.sleep(2.5)  # past the next refresh of gRPC's watcher
    assert [m.name for m in list_models(server, tls(pki, ca="other"))] == ["tiny"]
    assert server.metrics().sum("mnemo_tls_reloads_total", result="refused") == 2


# -- replicas ----------------------------------------------------------------------------------


def test_replica_handoff_over_mtls(start_tls, pki, tmp_path):
    """Replicas whose listeners require client certificates hand sessions off to each other:
    each calls the other with its own certificate (issued for server and client use), verified
    against the client CA."""
    store = str(tmp_path / "store")
    flags = server_flags(pki, server="replica", client_ca="ca")
    a, b = (start_tls(*flags, "--session-store", store, "--replica-id", name,
                      "--handoff-timeout", "5s", tls=tls(pki, client="client"))
            for name in ("ra", "rb"))
    with a.client() as ca, b.client() as cb:
        sid = ca.create_session().id
        assert ca.ingest(sid, ["Held by A, taken over by B."]).state_version == 1
        before = b.metrics().sum("mnemo_session_handoffs_total", direction="in", result="ok")
        assert cb.get_session(sid).state_version == 1
        assert b.metrics().sum("mnemo_session_handoffs_total", direction="in",
                               result="ok") == before + 1
        assert "handed off to rb" in a.stderr_text()


def test_replica_refuses_a_peer_certificate_from_another_ca(start_tls, pki, tmp_path):
    """The host name of a peer replica is not checked, but its chain is: A serves a certificate
    from another CA, so B cannot hand a session off from it (the take-over finds it lost)."""
    store = str(tmp_path / "store")
    other_replica = pki["other"].issue("replica-other", "mnemo-replica", client=True)
    pki_a = dict(pki, replica_other=other_replica)
    a = start_tls(*server_flags(pki_a, server="replica_other", client_ca="ca"),
                  "--session-store", store, "--replica-id", "ra", "--handoff-timeout", "2s",
                  tls=tls(pki, ca="other", client="client"))
    b = start_tls(*server_flags(pki, server="replica", client_ca="ca"), "--session-store", store,
                  "--replica-id", "rb", "--handoff-timeout", "2s",
                  tls=tls(pki, client="client"))
    with a.client() as ca, b.client() as cb:
        sid = ca.create_session().id
        ca.ingest(sid, ["Held by A."])
        with pytest.raises(grpc.RpcError) as info:
            cb.get_session(sid)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value
        assert b.metrics().sum("mnemo_session_handoffs_total", direction="in",
                               result="ok") == 0
        assert "handed off" not in a.stderr_text()
        assert CLIENT_DISTRUSTS in b.stderr_text()  # B's call to A, refused by B
        assert CLIENT_CERT_DISTRUSTED not in a.stderr_text()  # A took B's certificate


# -- health listener, reflection ----------------------------------------------------------------


def reflection_services(channel) -> bytes:
    """The raw ListServices answer of server reflection (raises grpc.RpcError)."""
    call = channel.stream_stream(REFLECTION_METHOD)
    responses = call(iter([pb_bytes(7, "*")]), timeout=5.0)  # list_services = 7
    return b"".join(responses)


def test_health_listener_is_plaintext_and_health_only(start_tls, pki):
    server = start_tls(*server_flags(pki, client_ca="ca"), "--max-sessions", "1",
                       tls=tls(pki, client="client"))
    with grpc.insecure_channel(server.health_target) as plain:
        assert health.health_check(plain, "", timeout=5) == health.SERVING
        assert health.health_check(plain, "liveness", timeout=5) == health.SERVING
        # Nothing else is served there: not the API, not reflection.
        code = rpc_code(lambda: plain.unary_unary(LIST_MODELS)(b"", timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert rpc_code(lambda: reflection_services(plain)) == grpc.StatusCode.UNIMPLEMENTED
        # The same readiness as the main listener: full (--max-sessions 1) is NOT_SERVING.
        with server.client() as client:
            session = client.create_session()
            wait_until(lambda: client.health() == health.NOT_SERVING, 10,
                       message="NOT_SERVING on the main listener")
            wait_until(lambda: health.health_check(plain, "", timeout=5) == health.NOT_SERVING,
                       10, message="NOT_SERVING on the health listener")
            assert health.health_check(plain, "liveness", timeout=5) == health.SERVING
            client.delete_session(session.id)
            wait_until(lambda: health.health_check(plain, "", timeout=5) == health.SERVING, 10,
                       message="SERVING again on the health listener")
    # The main listener still refuses plaintext.
    refused(server, None, SERVER_HUNG_UP, NOT_TLS)


def test_health_listener_reports_the_drain(start_tls, pki):
    """SIGTERM: readiness turns NOT_SERVING on the health listener too (liveness stays SERVING)
    while a request runs; the listener closes once the server has stopped."""
    server = start_tls(*server_flags(pki), tls=tls(pki), grace_s=20.0)
    client = server.client(timeout=60)
    session = client.create_session()
    started, release, outcome = threading.Event(), threading.Event(), {}

    def chunks():  # an Ingest held open by the test: in flight at SIGTERM
        yield "A document that is being continued"
        release.wait(timeout=20)
        yield " while the server stops."

    def ingest():
        try:
            outcome["final"] = client.ingest(session.id, chunks(),
                                             on_progress=lambda p: started.set())
        except grpc.RpcError as e:
            outcome["error"] = (e.code(), e.details())
        finally:
            started.set()

    writer = threading.Thread(target=ingest)
    writer.start()
    assert started.wait(timeout=30) and "error" not in outcome, outcome
    server.terminate()
    with grpc.insecure_channel(server.health_target) as plain:
        wait_until(lambda: health.health_check(plain, "", timeout=5) == health.NOT_SERVING, 10,
                   message="NOT_SERVING on the health listener while draining")
        assert health.health_check(plain, "liveness", timeout=5) == health.SERVING
        assert writer.is_alive()
        release.set()
        writer.join(timeout=30)
        assert outcome.get("final") is not None and outcome["final"].done, outcome
        assert server.wait_exit(timeout=30) == 0
        assert rpc_code(lambda: health.health_check(plain, "", timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE
    client.close()


def test_reflection_on_by_default_and_off_on_request(start_tls):
    on = start_tls()
    with grpc.insecure_channel(on.target) as channel:
        assert b"mnemo.v1.SessionService" in reflection_services(channel)
    off = start_tls("--reflection", "off")
    with grpc.insecure_channel(off.target) as channel:
        assert rpc_code(lambda: reflection_services(channel)) == grpc.StatusCode.UNIMPLEMENTED
        assert [m.name for m in list_models(off, None)] == ["tiny"]


# -- start-up checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["cert_only", "key_only", "ca_only", "missing_file",
                                  "key_mismatch", "not_pem", "bad_reflection", "env_cert_only"])
def test_bad_tls_flags_stop_the_server(server_bin, tiny_model, pki, tmp_path, case):
    server, other = pki["server"], pki["client"]
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    flags, expect = {
        "cert_only": (["--tls-cert", server.cert], "--tls-key go together"),
        "key_only": (["--tls-key", server.key], "--tls-key go together"),
        "ca_only": (["--tls-client-ca", pki["ca"].pem], "--tls-client-ca needs"),
        "missing_file": (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", server.key],
                         "nope.pem: cannot read it"),
        "key_mismatch": (["--tls-cert", server.cert, "--tls-key", other.key],
                         "does not match the certificate"),
        "not_pem": (["--tls-cert", str(junk), "--tls-key", server.key],
                    "junk.pem: not a PEM certificate"),
        "bad_reflection": (["--reflection", "maybe"], "--reflection must be on or off"),
        "env_cert_only": ([], "--tls-key go together"),  # MNEMO_TLS_CERT below
    }[case]
    env = dict(os.environ)
    if case == "env_cert_only":
        env["MNEMO_TLS_CERT"] = server.cert
    proc = subprocess.run([server_bin, "--model", f"tiny={tiny_model}", "--listen",
                           f"127.0.0.1:{free_port()}", "--metrics-listen", "off", *flags],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert expect in proc.stderr, proc.stderr


def test_tls_config_needs_cert_and_key_together(pki):
    with pytest.raises(ValueError, match="go together"):
        TlsConfig(ca_file=pki["ca"].pem, cert_file=pki["client"].cert)


def test_a_verified_client_certificate_names_its_tenant(start_tls, pki, tmp_path):
    """With mTLS and an auth file, a call without a token is the tenant whose
    certificate_subjects holds its verified certificate's subject; a subject the file does not
    map is UNAUTHENTICATED; a token decides alone (here another tenant, who cannot see the
    certificate tenant's session)."""
    import hashlib
    import json
    import secrets

    token = secrets.token_urlsafe(24)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"tenants": [
        {"name": "by-certificate", "certificate_subjects": [pki["client"].subject]},
        {"name": "by-token", "token_sha256": [hashlib.sha256(token.encode()).hexdigest()]},
    ]}))
    server = start_tls(*server_flags(pki, client_ca="ca"), "--auth-file", str(auth),
                       tls=tls(pki, client="client"))
    with MnemoClient(server.target, timeout=30, retry=None,
                     tls=tls(pki, client="client")) as by_cert, \
            MnemoClient(server.target, timeout=30, retry=None,
                        tls=tls(pki, client="replica")) as unmapped, \
            MnemoClient(server.target, timeout=30, retry=None, tls=tls(pki, client="replica"),
                        token=token) as by_token:
        sid = by_cert.create_session().id
        by_cert.ingest(sid, ["a document of the certificate's tenant"])
        assert by_cert.get_session(sid).state_version == 1
        assert [s.id for s in by_cert.list_sessions()] == [sid]
        with pytest.raises(grpc.RpcError) as info:
            unmapped.models()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
        with pytest.raises(grpc.RpcError) as info:
            by_token.get_session(sid)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value
        assert list(by_token.list_sessions()) == []
