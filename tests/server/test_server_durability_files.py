"""What goes wrong with snapshots and the store, and what the server then does.

* Stored snapshots damaged while the server was down (truncated at every section boundary and at
  random offsets, flipped bytes, another model's snapshot in place, a future format version):
  that session's requests fail with DATA_LOSS, FAILED_PRECONDITION or INVALID_ARGUMENT, its file
  moves to DIR/quarantine/, and every other session is served exactly as before.
* A failing or full store (--session-store-faults @FILE, switched on and off while the server
  runs): SYNC requests fail UNAVAILABLE and leave their session at its previous version and
  state, NONE sessions keep working, the errors are counted; with the faults cleared SYNC
  requests succeed again, and a crash afterwards restores the last acknowledged version.
* Bad ExportSession / ImportSession calls get their status code and the server keeps serving.
"""

import os
import random
import subprocess
import sys

import grpc
import pytest
from mnemo.v1 import mnemo_pb2 as pb

from durability_harness import (HEADER_BYTES, ROOT, FaultFile, StoreDir, assert_same,
                                doc_chunks, flip, observe, retarget, snapshot_layout,
                                with_format_version)
from server_harness import expect_error, retry_while_aborted, wait_until

RESTORE_FAILURES = {grpc.StatusCode.DATA_LOSS, grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A checkpoint of the tiny model's shape and tokenizer with other weights (another
    fingerprint)."""
    out = tmp_path_factory.mktemp("other_model")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_tiny_model.py"), str(out),
                    "--seed", "4"], check=True, capture_output=True, timeout=300)
    return str(out)


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


# --- damaged files -----------------------------------------------------------------------------

def damage_cases(layout, alien: bytes):
    """(name, damage(victim's bytes, victim's id) -> bytes, codes allowed), for victims whose
    snapshots have `layout` (the same for all of them: forks of one session, at one version,
    with labels of one length)."""
    rng = random.Random(7)

    def cut(n):
        return lambda data, _: data[:n]

    def flipped(offset):
        return lambda data, _: flip(data, offset)

    cases = [(f"truncated at {n}", cut(n), RESTORE_FAILURES) for n in layout.boundaries()]
    for start, size in layout.sections:
        cases.append((f"truncated inside the section at {start}", cut(start + size // 2),
                      RESTORE_FAILURES))
    for n in sorted(rng.sample(range(1, layout.total_bytes), 4)):
        cases.append((f"truncated at random offset {n}", cut(n), RESTORE_FAILURES))
    for start, size in layout.sections:
        for offset in (start, start + size - 1, start + rng.randrange(size)):
            cases.append((f"byte {offset} flipped (a section)", flipped(offset),
                          {grpc.StatusCode.DATA_LOSS}))
    cases += [
        ("a manifest byte flipped", flipped(HEADER_BYTES + 8), RESTORE_FAILURES),
        ("the manifest checksum flipped", flipped(24), RESTORE_FAILURES),
        ("bad magic", flipped(0), RESTORE_FAILURES),
        ("format version 2", lambda data, _: with_format_version(data, 2),
         {grpc.StatusCode.FAILED_PRECONDITION}),
        ("another model's snapshot of another session", lambda data, _: alien,
         RESTORE_FAILURES),
        ("another model's snapshot of this session",
         lambda data, victim: retarget(alien, victim, 0), {grpc.StatusCode.FAILED_PRECONDITION}),
        ("random bytes", lambda data, _: bytes(rng.randrange(256) for _ in range(len(data))),
         RESTORE_FAILURES),
    ]
    return cases


def test_damaged_stored_snapshots_are_quarantined_and_the_rest_is_served(
        store_server, tiny_model, other_model, tmp_path):
    chunks = doc_chunks(seed=11)
    # Another model's snapshot: the same model name on another checkpoint, a session at
    # version 0 as the victims are.
    alien_store = StoreDir(str(tmp_path / "alien"))
    alien_node = store_server(alien_store.path, models=[f"tiny={other_model}"])
    with alien_node.client() as c:
        alien = c.export_session(c.create_session().id)
    alien_node.server.stop(check=True)

    store = StoreDir(str(tmp_path / "store"))
    node = store_server(store.path, "--durability", "sync")
    with node.client() as c:
        source = c.create_session(labels={"role": "source"})
        c.ingest(source.id, chunks)
        other = c.create_session()
        c.ingest(other.id, doc_chunks(seed=12, chars=900))
        bystanders = [source.id, other.id]
        want = {i: observe(c, i) for i in bystanders}
        data = open(store.newest(source.id), "rb").read()
        exported = c.export_session(source.id)
        start = snapshot_layout(data).data_offset  # (the manifests' last-use times may differ)
        assert data[start:] == exported[start:], "the stored states differ from Export's"
        first = c.fork_session(source.id, labels={"case": "000"}).id
        layout = snapshot_layout(open(store.newest(first), "rb").read())
        cases = damage_cases(layout, alien)
        victims = [first] + [c.fork_session(source.id, labels={"case": f"{n:03d}"}).id
                             for n in range(1, len(cases))]
    node.server.stop(check=True)

    for victim, (_, damage, _) in zip(victims, cases):
        path = store.newest(victim)
        with open(path, "rb") as f:
            data = f.read()
        assert snapshot_layout(data).boundaries() == layout.boundaries()
        with open(path, "wb") as f:
            f.write(damage(data, victim))
    node.start()
    failures, codes = [], {}
    with node.client() as c:
        listed = {s.id for s in c.list_sessions()}
        for victim, (name, _, allowed) in zip(victims, cases):
            code, details = code_of(lambda: c.score(victim, text="probe"))
            codes[code.name] = codes.get(code.name, 0) + 1
            if code not in allowed:
                failures.append(f"{name}: {code.name} ({details}), want one of "
                                f"{sorted(a.name for a in allowed)}; listed: {victim in listed}")
                continue
            again, _ = code_of(lambda: c.generate_result(victim, None, max_tokens=2,
                                                          temperature=0, commit="scratch"))
            if again != code:
                failures.append(f"{name}: the second request got {again.name}, the first "
                                f"{code.name}")
            if not any(q.startswith(victim) and q.endswith(".snap") for q in store.quarantined()):
                failures.append(f"{name}: no quarantine/{victim}-*.snap")
            if store.versions(victim):
                failures.append(f"{name}: the damaged file is still in sessions/")
        assert not failures, "\n".join(failures) + "\n" + store.listing()
        assert len([q for q in store.quarantined() if q.endswith(".why")]) == len(victims)
        # Every other session is served, exactly as before.
        for i in bystanders:
            assert_same(observe(c, i), want[i], f"bystander {i}")
        counted = node.metrics().select("mnemo_session_store_errors_total")
        assert sum(v for _, v in counted) >= len(victims), (counted, codes)
        # A quarantined session can be deleted; it is then gone.
        for victim in victims[:3]:
            c.delete_session(victim)
            expect_error(lambda: c.get_session(victim), grpc.StatusCode.NOT_FOUND)
    # After another restart the quarantined sessions are not restored again.
    node.stop_and_restart()
    with node.client() as c:
        for i in bystanders:
            assert_same(observe(c, i), want[i], f"bystander {i} after a second restart")


# --- a failing or full store ---------------------------------------------------------------------

FAULTS = ["append:fail", "sync:fail", "rename:fail", "syncdir:fail", "create:fail",
          "append:full", "append:tear"]


def test_sync_requests_fail_unavailable_and_roll_back_while_the_store_fails(
        store_server, tmp_path):
    store = StoreDir(str(tmp_path / "store"))
    faults = FaultFile(str(tmp_path / "faults"))
    node = store_server(store.path, *faults.flag())
    chunks = doc_chunks(seed=13)
    with node.client() as c:
        durable = c.create_session(durability="sync")
        twin = c.create_session(durability="none")  # the same requests, never durable
        plain = c.create_session()  # NONE by default
        canary = c.create_session(durability="sync")
        for s in (durable, twin, plain):
            c.ingest(s.id, chunks)
        n = 0

        def canary_ingest():
            nonlocal n
            n += 1
            return code_of(lambda: c.ingest(canary.id, [f" canary {n}."]))[0]

        for fault in FAULTS:
            faults.set(fault)
            wait_until(lambda: canary_ingest() == grpc.StatusCode.UNAVAILABLE, timeout=10,
                       message=f"the server to take up the fault {fault}")
            before = c.get_session(durable.id)
            want = observe(c, durable.id)
            errors = node.metrics().sum("mnemo_session_store_errors_total")
            requests = {
                "ingest": lambda: c.ingest(durable.id, [" Lost text."]),
                "generate": lambda: c.generate_result(durable.id, " Lost", max_tokens=3,
                                                      temperature=0, commit="keep_all"),
                "score": lambda: c.score(durable.id, text=" Lost.", commit=True),
            }
            for name, request in requests.items():
                code, details = code_of(request)
                assert code == grpc.StatusCode.UNAVAILABLE, f"{fault}: {name}: {code.name} " \
                    f"{details}"
                wait_until(lambda: c.get_session(durable.id).pending_tokens ==
                           before.pending_tokens, timeout=10, message="the session idle")
                after = c.get_session(durable.id)
                assert after.state_version == before.state_version, f"{fault}: {name}"
                assert after.tokens_seen == before.tokens_seen, f"{fault}: {name}"
                assert_same(observe(c, durable.id), want, f"{fault}: after a failed {name}")
            metrics = node.metrics()
            assert metrics.sum("mnemo_session_store_errors_total") >= errors + 3, fault
            if fault.endswith(":full"):
                assert metrics.sum("mnemo_session_store_errors_total", kind="full") >= 3
            # NONE sessions do not touch the store.
            c.ingest(plain.id, [f" Still working under {fault}."])

            faults.clear()
            wait_until(lambda: canary_ingest() == grpc.StatusCode.OK, timeout=10,
                       message=f"the server to drop the fault {fault}")
            text = f" Kept after {fault}."
            progress = retry_while_aborted(lambda: c.ingest(durable.id, [text]))
            assert progress.state_version == before.state_version + 1
            c.ingest(twin.id, [text])
            assert_same(observe(c, durable.id), observe(c, twin.id), f"{fault}: recovered")
        want = observe(c, twin.id)
        version = c.get_session(durable.id).state_version

    # A torn write and then a crash: the store still holds the acknowledged version.
    faults.set("append:tear")
    with node.client() as c:
        expect_error(lambda: c.ingest(durable.id, [" Torn."]), grpc.StatusCode.UNAVAILABLE)
    node.crash()
    faults.clear()
    node.start()
    assert store.quarantined() == []
    with node.client() as c:
        assert c.get_session(durable.id).state_version == version
        assert_same(observe(c, durable.id), want, "restored after a torn write and a crash")
        assert plain.id not in {s.id for s in c.list_sessions()}


def test_async_sessions_catch_up_after_the_store_recovers(store_server, tmp_path):
    store = StoreDir(str(tmp_path / "store"))
    faults = FaultFile(str(tmp_path / "faults"))
    node = store_server(store.path, "--durability", "async", *faults.flag())
    with node.client() as c:
        s = c.create_session()
        assert s.durability == pb.DURABILITY_ASYNC
        c.ingest(s.id, doc_chunks(seed=14))
        wait_until(lambda: c.get_session(s.id).durable_version ==
                   c.get_session(s.id).state_version, timeout=10, message="durable")
        durable = c.get_session(s.id).durable_version
        faults.set("any:fail")
        errors = node.metrics().sum("mnemo_session_store_errors_total")
        for i in range(3):  # ASYNC requests succeed; their snapshots fail
            c.ingest(s.id, [f" More {i}."])
        wait_until(lambda: node.metrics().sum("mnemo_session_store_errors_total") > errors,
                   timeout=10, message="a counted store error")
        assert c.get_session(s.id).durable_version == durable
        faults.clear()
        c.ingest(s.id, [" The last change."])
        wait_until(lambda: c.get_session(s.id).durable_version ==
                   c.get_session(s.id).state_version, timeout=10,
                   message="durable again after the store recovered")
        want = observe(c, s.id)
        version = c.get_session(s.id).state_version
    node.crash_and_restart()
    with node.client() as c:
        assert c.get_session(s.id).state_version == version
        assert_same(observe(c, s.id), want, "ASYNC after the store recovered")


# --- export and import errors --------------------------------------------------------------------

def test_bad_exports_and_imports_get_their_codes_and_the_server_keeps_serving(
        start_server, tiny_model, other_model):
    server = start_server(models=[f"tiny={tiny_model}", f"other={other_model}"])
    with server.client() as c:
        source = c.create_session()
        c.ingest(source.id, doc_chunks(seed=15))
        want = observe(c, source.id)
        first = next(iter(c.export_session_stream(source.id)))
        snapshot = c.export_session(source.id)
        other = c.create_session(model="other")
        other_fingerprint = next(iter(c.export_session_stream(other.id))).model_fingerprint
        assert other_fingerprint != first.model_fingerprint

        def imports(data, **kw):
            return code_of(lambda: c.import_session(data, **kw))

        layout = snapshot_layout(snapshot)
        section_start, section_bytes = layout.sections[0]
        cases = {
            "empty": (b"", grpc.StatusCode.INVALID_ARGUMENT),
            "garbage": (b"not a snapshot at all " * 100, grpc.StatusCode.INVALID_ARGUMENT),
            "header only": (snapshot[:32], grpc.StatusCode.INVALID_ARGUMENT),
            "truncated in the manifest": (snapshot[:layout.manifest_end - 5],
                                          grpc.StatusCode.INVALID_ARGUMENT),
            "truncated in a section": (snapshot[:section_start + section_bytes // 2],
                                       grpc.StatusCode.INVALID_ARGUMENT),
            "one byte short": (snapshot[:-1], grpc.StatusCode.INVALID_ARGUMENT),
            "trailing bytes": (snapshot + b"\0" * 100, grpc.StatusCode.INVALID_ARGUMENT),
            "a section byte flipped": (flip(snapshot, section_start + 3),
                                       grpc.StatusCode.DATA_LOSS),
            "format version 99": (with_format_version(snapshot, 99),
                                  grpc.StatusCode.FAILED_PRECONDITION),
        }
        for name, (data, code) in cases.items():
            got, details = imports(data)
            assert got == code, f"{name}: {got.name} {details}"
        # Another model's snapshot: both fingerprints named.
        got, details = imports(snapshot, model="other")
        assert got == grpc.StatusCode.FAILED_PRECONDITION, details
        assert first.model_fingerprint in details and other_fingerprint in details, details
        assert imports(snapshot, model="nonexistent")[0] == grpc.StatusCode.NOT_FOUND
        # Far longer than any snapshot of the model: refused without reading it all.
        got, details = imports(iter([snapshot] + [b"\0" * (1 << 20)] * 64))
        assert got == grpc.StatusCode.INVALID_ARGUMENT, details
        # Replacing a session: its version must match.
        target = c.create_session()
        c.ingest(target.id, ["Something else entirely."])
        target = c.get_session(target.id)
        got, _ = imports(snapshot, session_id=target.id,
                         expected_state_version=target.state_version + 5)
        assert got == grpc.StatusCode.ABORTED
        assert imports(snapshot, session_id="0" * 32, expected_state_version=1)[0] == \
            grpc.StatusCode.NOT_FOUND
        got, _ = imports(snapshot[:100], session_id=target.id,
                         expected_state_version=target.state_version)
        assert got == grpc.StatusCode.INVALID_ARGUMENT
        assert c.get_session(target.id).state_version == target.state_version
        # Export errors.
        v = c.get_session(source.id).state_version
        expect_error(lambda: c.export_session(source.id, expected_state_version=v + 1),
                     grpc.StatusCode.ABORTED)
        expect_error(lambda: c.export_session("f" * 32), grpc.StatusCode.NOT_FOUND)
        # Durable sessions need a store.
        expect_error(lambda: c.create_session(durability="sync"),
                     grpc.StatusCode.FAILED_PRECONDITION)
        # The server still serves, and nothing leaked.
        assert server.health() == 1
        assert_same(observe(c, source.id), want, "the exported session after the bad calls")
        replaced = c.import_session(snapshot, session_id=target.id,
                                    expected_state_version=target.state_version)
        assert replaced.state_version == target.state_version + 1
        assert_same(observe(c, target.id), want, "the replaced session")
        assert server.metrics().sum("mnemo_sessions") == 3


def test_only_successful_imports_count_as_restores(start_server):
    server = start_server()
    with server.client() as c:
        source = c.create_session()
        c.ingest(source.id, doc_chunks(seed=16, chars=300))
        snapshot = c.export_session(source.id)
        target = c.create_session()
        refused = {
            "garbage": lambda: c.import_session(b"garbage" * 50),
            "a stale expected version": lambda: c.import_session(
                snapshot, session_id=target.id, expected_state_version=7),
            "a missing session": lambda: c.import_session(
                snapshot, session_id="0" * 32, expected_state_version=1),
            "a bad label": lambda: c.import_session(snapshot, labels={"": "x"}),
        }
        for name, call in refused.items():
            code, _ = code_of(call)
            assert code != grpc.StatusCode.OK, name
            counted = server.metrics().sum("mnemo_session_restores_total", source="import")
            assert counted == 0, f"an import refused for {name} ({code.name}) counted as a restore"
        c.import_session(snapshot)
        c.import_session(snapshot, session_id=target.id, expected_state_version=0)
        assert server.metrics().sum("mnemo_session_restores_total", source="import") == 2


def test_a_deleted_sync_session_stays_deleted_after_a_crash(store_server, tmp_path):
    """DeleteSession's answer is the deletion's acknowledgement: a SYNC session the server said
    it deleted must not come back after a restart, even when the store could not remove its
    files (then the delete must fail instead)."""
    store = StoreDir(str(tmp_path / "store"))
    faults = FaultFile(str(tmp_path / "faults"))
    node = store_server(store.path, *faults.flag())
    with node.client() as c:
        gone = c.create_session(durability="sync")
        c.ingest(gone.id, ["A document to forget."])
        kept = c.create_session(durability="sync")
        c.ingest(kept.id, ["A document to keep."])
        faults.set("remove:fail")
        code, _ = code_of(lambda: c.delete_session(gone.id))
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE), code
    node.crash()
    faults.clear()
    node.start()
    with node.client() as c:
        listed = {s.id for s in c.list_sessions()}
        assert kept.id in listed
        if code == grpc.StatusCode.OK:
            assert gone.id not in listed, "a session deleted with OK came back after a restart"
        else:
            assert gone.id in listed
