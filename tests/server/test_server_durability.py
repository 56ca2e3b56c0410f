"""A session outlives its place: exported and imported (into the same server and into another
process), restored from the session store after a SIGTERM or a kill -9 (SYNC and ASYNC), or
evicted to the store beyond --host-state-budget and brought back, it computes exactly what a
control session that never left memory computes — bitwise the same probe log-probabilities and
the same greedy continuation — for every layer kind and for the shipped teacher with its draft.
A document whose ingest stopped mid-segment and resumed after a restart equals one uninterrupted
ingest.
"""

import pytest
from mnemo.v1 import mnemo_pb2 as pb

from durability_harness import (KIND_LAYERS, KINDS, StoreDir, assert_same, doc_chunks,
                                model_flags, observe, sessions_by_id, snapshot_layout,
                                wait_durable)
from server_harness import BASE_FLAGS, ServerProcess, document, odd_chunks, wait_until


@pytest.fixture(scope="module")
def control(server_bin, kind_models, server_workdir):
    """A server without a store serving every kind: its sessions never leave memory."""
    server = ServerProcess(server_bin, "", server_workdir, BASE_FLAGS + ["--speculative", "on"],
                           models=model_flags(kind_models))
    server.wait_serving()
    client = server.client()
    yield client
    client.close()
    server.stop(check=True)


def halves(seed=5):
    chunks = doc_chunks(seed=seed)
    return chunks[:len(chunks) // 2], chunks[len(chunks) // 2:]


def check_listed(listed, session, kind, tier=pb.STATE_TIER_STORE):
    """A session as ListSessions shows it right after a restart: every field it had."""
    got = listed.get(session.id)
    assert got is not None, f"{session.id} ({pb.Durability.Name(session.durability)}) is not " \
        f"listed after the restart"
    assert got.tier == tier, pb.StateTier.Name(got.tier)
    for field in ("model", "state_version", "tokens_seen", "pending_tokens", "durability",
                  "memory_tokens", "state_bytes"):
        assert getattr(got, field) == getattr(session, field), field
    assert dict(got.labels) == dict(session.labels)
    assert got.ttl.seconds == session.ttl.seconds
    assert got.durable_version == session.state_version
    assert got.model == kind


@pytest.mark.parametrize("kind", KINDS)
def test_a_session_restores_exactly_after_export_import_restart_and_crash(
        kind, control, store_server, kind_models, tmp_path):
    first, rest = halves()
    # The control: the same chunks, never out of memory.
    reference = control.create_session(model=kind)
    progress = control.ingest(reference.id, first)
    assert progress.pending_tokens > 0, "the first half must stop inside a segment"
    want_first = observe(control, reference.id)

    store = StoreDir(str(tmp_path / "store"))
    node = store_server(store.path, "--speculative", "on", models=model_flags(kind_models))
    with node.client() as c:
        if kind in KIND_LAYERS:  # GetModel reports each layer's kind as config.json names it
            layers = c.model(kind).layers
            assert [pb.AttentionKind.Name(l.attention) for l in layers] == [
                "ATTENTION_KIND_" + e["attention"].upper() for e in KIND_LAYERS[kind]]
            if kind == "routing":
                assert [(l.n_clusters, l.history, l.memory_tokens) for l in layers] == [
                    (4, 40, 39), (2, 24, 23)]
            if kind == "memory_compressed":
                assert [(l.compression_rate, l.cmem_len, l.memory_tokens) for l in layers] == [
                    (3, 8, 3 * 8 + 2), (4, 6, 4 * 6 + 3)]
        sync = c.create_session(model=kind, durability="sync", labels={"kind": kind, "d": "s"},
                                ttl_s=3000)
        asyn = c.create_session(model=kind, durability="async", labels={"d": "a"}, ttl_s=2000)
        none = c.create_session(model=kind, durability="none")
        assert (sync.durability, asyn.durability, none.durability) == (
            pb.DURABILITY_SYNC, pb.DURABILITY_ASYNC, pb.DURABILITY_NONE)
        for s in (sync, asyn, none):
            assert c.ingest(s.id, first).pending_tokens == progress.pending_tokens
            assert_same(observe(c, s.id), want_first, f"{kind}: in memory")

        # Export → import into the same server.
        before = c.get_session(sync.id)
        stream = list(c.export_session_stream(sync.id, expected_state_version=before.state_version))
        snapshot = b"".join(chunk.data for chunk in stream)
        assert stream[0].total_bytes == len(snapshot) > before.state_bytes
        assert stream[0].state_version == before.state_version
        assert stream[0].model_fingerprint
        # A second export of the version holds the same states (the manifest's session fields,
        # such as the last use time, may differ).
        layout, again = snapshot_layout(snapshot), c.export_session(sync.id)
        assert again[layout.data_offset:] == snapshot[layout.data_offset:]
        after = c.get_session(sync.id)
        assert (after.state_version, after.tokens_seen, after.pending_tokens) == (
            before.state_version, before.tokens_seen, before.pending_tokens)
        copy = c.import_session(snapshot, model=kind, durability="none")
        assert copy.id != sync.id and copy.model == kind
        assert (copy.tokens_seen, copy.pending_tokens) == (before.tokens_seen,
                                                           before.pending_tokens)
        assert dict(copy.labels) == dict(before.labels)
        assert copy.durability == pb.DURABILITY_NONE
        assert_same(observe(c, copy.id), want_first, f"{kind}: imported into the same server")

        wait_durable(c, asyn.id)
        listed_before = {s.id: c.get_session(s.id) for s in (sync, asyn)}
        assert listed_before[sync.id].durable_version == listed_before[sync.id].state_version

    # … into another process (a new session, and replacing an existing session's state).
    imported = control.import_session(snapshot, model=kind, durability="none")
    assert_same(observe(control, imported.id), want_first, f"{kind}: imported elsewhere")
    target = control.create_session(model=kind)
    replaced = control.import_session(snapshot, model=kind, session_id=target.id,
                                      expected_state_version=0)
    assert replaced.id == target.id and replaced.state_version == 1
    assert_same(observe(control, target.id), want_first, f"{kind}: replaced elsewhere")
    for s in (imported.id, target.id):
        control.delete_session(s)

    # kill -9, restart on the store: SYNC and ASYNC sessions come back, NONE ones do not.
    node.crash_and_restart()
    assert store.quarantined() == [] and store.temporaries() == []
    with node.client() as c:
        listed = sessions_by_id(c)
        assert none.id not in listed and copy.id not in listed
        for s in listed_before.values():
            check_listed(listed, s, kind)
        assert node.metrics().sum("mnemo_sessions", tier="store") == 2
        for s in (sync, asyn):
            assert_same(observe(c, s.id), want_first, f"{kind}: restored after kill -9")
            assert c.get_session(s.id).tier == pb.STATE_TIER_DEVICE
        metrics = node.metrics()
        assert metrics.sum("mnemo_session_restores_total") >= 2
        assert metrics.sum("mnemo_sessions", tier="store") == 0

        # The document's second half on the restored sessions = one uninterrupted ingest.
        for s in (sync, asyn):
            c.ingest(s.id, rest)
        control.ingest(reference.id, rest)
        want_second = observe(control, reference.id)
        whole = control.create_session(model=kind)
        control.ingest(whole.id, first + rest)
        assert_same(observe(control, whole.id), want_second, f"{kind}: two ingests vs one")
        for s in (sync, asyn):
            assert_same(observe(c, s.id), want_second, f"{kind}: ingest resumed after restart")
        wait_durable(c, asyn.id)
        versions = {s.id: c.get_session(s.id).state_version for s in (sync, asyn)}

    # SIGTERM, restart.
    node.stop_and_restart()
    with node.client() as c:
        for s in (sync, asyn):
            assert c.get_session(s.id).state_version == versions[s.id]
            assert_same(observe(c, s.id), want_second, f"{kind}: restored after SIGTERM")
        for s in (sync, asyn):
            c.delete_session(s.id)
        # (The store's writer removes a deleted session's files in the background.)
        wait_until(lambda: not store.versions(sync.id) and not store.versions(asyn.id),
                   timeout=10,
                   message=lambda: f"the deleted sessions' files to go:\n{store.listing()}")
    for s in (reference.id, whole.id):
        control.delete_session(s)


@pytest.mark.parametrize("kind", ["dense", "teacher"])
def test_idle_sessions_beyond_the_host_budget_wait_in_the_store_and_come_back_exactly(
        kind, control, store_server, kind_models, tmp_path):
    docs = [odd_chunks(document(name, unicode_tail=False)[:1200], seed=3)
            for name in ("Apache-2.0", "BSD", "GPL-3")]
    want = []
    for chunks in docs:
        reference = control.create_session(model=kind)
        control.ingest(reference.id, chunks)
        want.append(observe(control, reference.id))
        control.delete_session(reference.id)

    state = control.model(kind).state_bytes_per_session
    store = StoreDir(str(tmp_path / "store"))
    node = store_server(store.path, "--speculative", "on", "--device-state-budget", str(state),
                        "--host-state-budget", str(state), models=model_flags(kind_models))
    with node.client() as c:
        ids = []
        for chunks in docs:  # each new session pushes the older ones one tier down
            s = c.create_session(model=kind)
            c.ingest(s.id, chunks)
            ids.append(s.id)

        def tiers():
            return [c.get_session(i).tier for i in ids]

        wait_until(lambda: tiers() == [pb.STATE_TIER_STORE, pb.STATE_TIER_HOST,
                                       pb.STATE_TIER_DEVICE], timeout=10,
                   message=lambda: f"tiers store, host, device (now {tiers()})")
        assert store.versions(ids[0]), store.listing()
        metrics = node.metrics()
        for tier in ("store", "host", "device"):
            assert metrics.sum("mnemo_sessions", tier=tier) == 1, tier
        # Each request brings its session back to the device, pushing the others down.
        for round_ in range(2):
            for i in (0, 2, 1, 0):
                assert_same(observe(c, ids[i]), want[i], f"{kind}: session {i} round {round_}")
                assert c.get_session(ids[i]).tier == pb.STATE_TIER_DEVICE
        metrics = node.metrics()
        assert metrics.sum("mnemo_session_restores_total") >= 4
        assert metrics.sum("mnemo_session_snapshots_total") >= 4
        assert metrics.sum("mnemo_sessions") == 3
        # Deleting a session in the store removes its files.
        wait_until(lambda: c.get_session(ids[2]).tier == pb.STATE_TIER_STORE or
                   c.get_session(ids[1]).tier == pb.STATE_TIER_STORE, timeout=10,
                   message="a session in the store")
        in_store = [i for i in ids if c.get_session(i).tier == pb.STATE_TIER_STORE]
        for i in in_store:
            c.delete_session(i)
            wait_until(lambda: not store.versions(i), timeout=10,
                       message=lambda: f"the deleted session's files to go:\n{store.listing()}")
        assert node.metrics().sum("mnemo_sessions", tier="store") == 0


def test_the_command_line_exports_and_imports_a_session(control, tmp_path):
    """`mnemo-client export ID FILE` and `import FILE` (clients/python) move a session exactly."""
    import os
    import subprocess
    import sys
    source = control.create_session(model="linear")
    control.ingest(source.id, doc_chunks(seed=21, chars=700))
    want = observe(control, source.id)
    path = tmp_path / "session.snap"

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "mnemo_client", "--target", control.target,
                               *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    cli("export", source.id, str(path))
    assert path.read_bytes()[:8] == b"MNEMOSS\0"
    copy = cli("import", str(path), "--model", "linear", "--label", "via=cli")
    assert copy != source.id
    assert dict(control.get_session(copy).labels) == {"via": "cli"}
    assert_same(observe(control, copy), want, "exported and imported by the command line")
    target = control.create_session(model="linear")
    assert cli("import", str(path), "--session", target.id, "--expected-version", "0") == target.id
    assert_same(observe(control, target.id), want, "replaced by the command line")
    for s in (source.id, copy, target.id):
        control.delete_session(s)
