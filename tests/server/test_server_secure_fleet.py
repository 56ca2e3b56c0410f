"""A secure fleet: three replicas of the tiny model with TLS, mTLS and an auth file (two tenants),
behind the real nginx terminating TLS toward clients and speaking mTLS to the replicas, all run
by deploy/local/cluster.py (what ``python3 -m deploy.local --tls --auth-file FILE`` starts).

Through the router with the real Python client: a tenant's session is invisible to the other
tenant, a call without a token is UNAUTHENTICATED, a plaintext client cannot talk to the
router, and the replicas refuse anyone without a client certificate from the fleet's CA. A
session moves twice while it continues exactly (versions, greedy token ids as on a single
server): to another replica by a hand-off (its owner out of the ring but running: the new owner
asks it over mTLS with the replica token, an admin tenant's), then by a claim from the store
(its owner drained with SIGTERM). Had nginx spoken plaintext to the replicas, or a replica been
refused its hand-off, every one of these would fail.

Also the rendering checks of deploy/nginx/render.py's TLS options.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets

import grpc
import pytest

from deploy.local.cluster import REPLICA_TLS_NAME, Cluster, ClusterConfig, ClusterError, Replica
from deploy.nginx import render as nginx_render
from mnemo_client import MnemoClient
from mnemo_client.tls import TlsConfig
from server_harness import BASE_FLAGS, document, wait_until

TOKENS = {name: secrets.token_urlsafe(24) for name in ("alpha", "beta", "gamma")}
TEXT = document("GPL-3")


def auth_doc(*names: str) -> bytes:
    return json.dumps({"tenants": [
        {"name": n, "token_sha256": [hashlib.sha256(TOKENS[n].encode()).hexdigest()]}
        for n in names]}).encode()


def write_atomically(path: str, data: bytes) -> None:
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


@pytest.fixture(scope="module")
def fleet(server_bin, tiny_model, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("secure_fleet"))
    auth_file = os.path.join(workdir, "tenants.json")
    write_atomically(auth_file, auth_doc("alpha", "beta"))
    config = ClusterConfig(server_bin=server_bin, workdir=os.path.join(workdir, "cluster"),
                           models=[f"tiny={tiny_model}"], replicas=3, durability="sync",
                           shutdown_grace_s=3.0, tls=True, auth_file=auth_file,
                           extra_flags=list(BASE_FLAGS), prometheus_bin=None)
    cluster = Cluster(config)
    try:
        cluster.start()
    except ClusterError as e:
        cluster.close()
        pytest.fail(str(e), pytrace=False)
    yield cluster
    codes = cluster.close()
    assert all(code == 0 for code in codes.values()), f"replicas did not exit 0: {codes}"


def client(cluster: Cluster, tenant: str = "", tls: bool = True, target: str = "",
           **tls_options) -> MnemoClient:
    """A client of the router (or `target`) trusting the fleet's CA, as tenant `tenant`. No
    retries: nothing here may fail for a transient reason, and a refusal must show at once."""
    config = TlsConfig(ca_file=cluster.tls.ca_file, **tls_options) if tls else None
    return MnemoClient(target or cluster.router_target, timeout=30, retry=None, tls=config,
                       token=TOKENS[tenant] if tenant else None)


def refused(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def owner_of(cluster: Cluster, session_id: str) -> Replica:
    """The replica that answered the session's last call (the router's access log)."""
    entries = [e for e in cluster.router.access_entries() if e.session == session_id]
    assert entries, f"no call for {session_id} in the router's log"
    return next(r for r in cluster.replicas + cluster.departed
                if r.target == entries[-1].upstream)


def handoffs(replica: Replica, direction: str) -> float:
    """mnemo_session_handoffs_total{direction, result="ok"} of `replica`."""
    pattern = re.compile(r'^mnemo_session_handoffs_total\{([^}]*)\} (\S+)$', re.MULTILINE)
    return sum(float(value) for labels, value in pattern.findall(replica.metrics_text())
               if f'direction="{direction}"' in labels and 'result="ok"' in labels)


# --- render.py --------------------------------------------------------------------------------

def test_render_checks_and_writes_the_tls_options(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("not checked by render.py; nginx -t reads it\n")
    pem = str(pem)
    plain = nginx_render.render("127.0.0.1:1", ["127.0.0.1:2"], str(tmp_path))
    directives = [line for line in plain.splitlines() if not line.lstrip().startswith("#")]
    assert "        listen 127.0.0.1:1 http2;" in directives
    assert "            grpc_pass grpc://$mnemo_upstream;" in directives
    assert not [line for line in directives if "ssl" in line or "{{" in line]

    both = nginx_render.render("127.0.0.1:1", ["127.0.0.1:2"], str(tmp_path), tls_cert=pem,
                               tls_key=pem, upstream_tls_ca=pem, upstream_tls_name="replica",
                               upstream_tls_cert=pem, upstream_tls_key=pem)
    for line in ("listen 127.0.0.1:1 ssl http2;", f"ssl_certificate {pem};",
                 "ssl_protocols TLSv1.2 TLSv1.3;", "grpc_pass grpcs://$mnemo_upstream;",
                 f"grpc_ssl_trusted_certificate {pem};", "grpc_ssl_verify on;",
                 "grpc_ssl_name replica;", "grpc_ssl_session_reuse on;",
                 f"grpc_ssl_certificate {pem};", f"grpc_ssl_certificate_key {pem};"):
        assert f"\n        {line}\n" in both or f"\n            {line}\n" in both, line

    bad = [dict(tls_cert=pem), dict(tls_key=pem),
           dict(tls_cert=pem, tls_key=str(tmp_path / "missing.pem")),
           dict(upstream_tls_ca=pem), dict(upstream_tls_name="replica"),
           dict(upstream_tls_cert=pem, upstream_tls_key=pem),
           dict(upstream_tls_ca=pem, upstream_tls_name="a b"),
           dict(upstream_tls_ca=pem, upstream_tls_name="replica", upstream_tls_cert=pem)]
    for options in bad:
        with pytest.raises(ValueError):
            nginx_render.render("127.0.0.1:1", ["127.0.0.1:2"], str(tmp_path), **options)


# --- the fleet --------------------------------------------------------------------------------

def test_tenants_are_kept_apart_through_the_tls_router(fleet):
    with client(fleet, "alpha") as alpha, client(fleet, "beta") as beta:
        session = alpha.create_session(durability="sync")
        alpha.ingest(session.id, [TEXT[:300]], expected_state_version=session.state_version)
        result = alpha.generate_result(session.id, "The", max_tokens=4, temperature=0,
                                       ignore_eos=True, commit="keep_all")
        assert len(result.ids) == 4

        assert refused(lambda: beta.get_session(session.id)) == grpc.StatusCode.NOT_FOUND
        assert refused(lambda: beta.generate_result(session.id, "x", max_tokens=1)) == \
            grpc.StatusCode.NOT_FOUND
        for _ in fleet.replicas:  # round-robin: every replica once
            assert list(beta.list_sessions()) == []
        assert alpha.get_session(session.id).state_version == result.final.state_version_after

    with client(fleet) as anonymous:
        assert refused(anonymous.models) == grpc.StatusCode.UNAUTHENTICATED
    # Plaintext to the TLS router: nginx answers with an HTTP/1 error, never a call.
    with client(fleet, "alpha", tls=False) as plaintext:
        assert refused(plaintext.models) == grpc.StatusCode.UNAVAILABLE
    # The router's certificate names localhost too (the name a client may check instead).
    with client(fleet, "alpha", server_name=fleet.tls.server_name) as by_name:
        assert by_name.models()
    # The replicas require a client certificate from the fleet's CA.
    replica = fleet.replicas[0]
    with client(fleet, "alpha", target=replica.target,
                server_name=REPLICA_TLS_NAME) as no_certificate:
        assert refused(no_certificate.models) == grpc.StatusCode.UNAVAILABLE
    with client(fleet, "alpha", tls=False, target=replica.target) as plaintext:
        assert refused(plaintext.models) == grpc.StatusCode.UNAVAILABLE

    # A tenant added to the operator's file reaches the replicas' copy, without a restart.
    write_atomically(fleet.config.auth_file, auth_doc("alpha", "beta", "gamma"))
    assert fleet.sync_auth()
    with client(fleet, "gamma") as gamma:
        wait_until(lambda: all(_answers(gamma) for _ in fleet.replicas), timeout=10,
                   interval=0.2, message="the new tenant to be accepted by every replica")


def _answers(c: MnemoClient) -> bool:
    try:
        return bool(c.models())
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
        return False


def _generate(c: MnemoClient, session_id: str, version: int) -> tuple[int, tuple]:
    r = c.generate_result(session_id, None, max_tokens=6, temperature=0, ignore_eos=True,
                          commit="keep_all", expected_state_version=version)
    return r.final.state_version_after, tuple(r.ids)


def test_a_session_moves_between_replicas_over_mtls_and_continues_exactly(fleet, start_server):
    # Each step through a new connection: after a reload, an open connection stays with an old
    # nginx worker and the old ring.
    with client(fleet, "alpha") as alpha:
        session = alpha.create_session(durability="sync")
        version = alpha.ingest(session.id, [TEXT[1000:1400]],
                               expected_state_version=session.state_version).state_version
        steps = [(version, ())]
        steps.append(_generate(alpha, session.id, version))
    first = owner_of(fleet, session.id)

    # A hand-off: the owner leaves the ring but runs; the replica the session now hashes to
    # asks it to let the session go (HandOffSession over mTLS, with the replica token). (Counts
    # before: a session created on one replica and used on another was handed off already.)
    before = {r.replica_id: (handoffs(r, "out"), handoffs(r, "in")) for r in fleet.replicas}
    fleet.remove_replica(first, stop=False)
    with client(fleet, "alpha") as alpha:
        steps.append(_generate(alpha, session.id, steps[-1][0]))
    second = owner_of(fleet, session.id)
    assert second is not first
    assert handoffs(first, "out") == before[first.replica_id][0] + 1, (
        f"{first.replica_id} handed nothing off")
    assert handoffs(second, "in") == before[second.replica_id][1] + 1, (
        f"{second.replica_id} took nothing over")

    # A claim from the store: the new owner drains (SIGTERM) and exits.
    assert fleet.remove_replica(second) == 0
    with client(fleet, "alpha") as alpha:
        steps.append(_generate(alpha, session.id, steps[-1][0]))
        assert alpha.get_session(session.id).state_version == steps[-1][0]
    third = owner_of(fleet, session.id)
    assert third not in (first, second)

    # One version per request; the same tokens as the same requests on one plain server.
    versions = [v for v, _ in steps]
    assert versions == list(range(versions[0], versions[0] + len(steps))), versions
    reference = start_server()
    with reference.client() as ref:
        s = ref.create_session()
        v = ref.ingest(s.id, [TEXT[1000:1400]], expected_state_version=s.state_version)
        want = [(v.state_version, ())]
        for _ in range(3):
            want.append(_generate(ref, s.id, want[-1][0]))
    assert [ids for _, ids in steps] == [ids for _, ids in want]
    assert versions[-1] - versions[0] == want[-1][0] - want[0][0]
