"""--session-memory through the real server: with bfloat16 or float16 session memory every
session's Transformer-XL key/value rings hold half the bytes (ModelInfo says exactly how many a
session takes), the shipped teacher serves the same greedy text and nearly the same
log-probabilities as with float32 memory, the start-up log says which memory a model keeps, a
session written to the store by one server waits there, neither quarantined nor lost, while a
server with other session memory refuses it (FAILED_PRECONDITION naming the flag) and comes back
exactly on a server with its own, a snapshot crosses only between servers with the same session
memory, and a bad value stops the server with a message naming the flag."""

import json
import os
import subprocess

import grpc

from durability_harness import StoreDir, assert_same, observe
from server_harness import expect_error, free_port
from test_server_cpu_weights import DOCUMENT, PROBE, TEACHER, serve_script


def test_16bit_session_memory_halves_the_rings_and_serves_the_teacher(start_server, tiny_model):
    with open(os.path.join(tiny_model, "config.json")) as f:
        tiny = json.load(f)
    assert "layers" not in tiny  # every layer dense: its whole state is K/V rings
    rings_f32 = tiny["n_layer"] * 2 * tiny["mem_len"] * tiny["n_head"] * tiny["d_head"] * 4
    results, state_bytes = {}, {}
    for memory in ("float32", "bfloat16", "float16"):
        server = start_server("--session-memory", memory,
                              models=[f"tiny={tiny_model}", f"teacher={TEACHER}"])
        client = server.client()
        state_bytes[memory] = client.model("tiny").state_bytes_per_session
        results[memory] = serve_script(client)
        server.stop(check=True)
        with open(server.stderr_path, encoding="utf-8") as f:
            log = f.read()
        assert f"bfloat16 weights, {memory} session memory, " in log, log
    assert state_bytes["float32"] == rings_f32
    assert state_bytes["bfloat16"] == state_bytes["float16"] == rings_f32 // 2
    text_32, ids_32, logprobs_32 = results["float32"]
    for memory in ("bfloat16", "float16"):
        text, ids, logprobs = results[memory]
        worst = max(abs(a - b) for a, b in zip(logprobs, logprobs_32))
        print(f"\nteacher, {memory} session memory: probe log-probabilities within {worst:.3g} "
              f"of float32 memory; greedy text {'equal' if text == text_32 else 'differs'}")
        assert ids == ids_32 and len(logprobs) > 10
        assert text == text_32
        # Keys and values keep 8 (bf16) or 11 (f16) significant bits: the teacher's scores move
        # by far less than the gap between its likely and unlikely tokens.
        assert worst < (0.01 if memory == "bfloat16" else 0.002), worst
        assert logprobs != logprobs_32, "16-bit memory changed nothing: is it in use?"


def test_a_stored_session_waits_for_a_server_with_its_session_memory(store_server, start_server,
                                                                     tmp_path):
    store = StoreDir(str(tmp_path / "store"))
    node = store_server(store.path, "--session-memory", "bfloat16")
    with node.client() as c:
        session = c.create_session(durability="sync")
        c.ingest(session.id, [DOCUMENT])
        want = observe(c, session.id)
        snapshot = c.export_session(session.id)
        version = c.get_session(session.id).state_version

    # A server with float32 memory on the same store: the session is listed and refused, and
    # stays in the store (not quarantined).
    node.extra = ["--session-memory", "float32"]
    node.stop_and_restart()
    with node.client() as c:
        assert c.get_session(session.id).state_version == version
        details = expect_error(lambda: c.score(session.id, text=PROBE),
                               grpc.StatusCode.FAILED_PRECONDITION).details()
        assert "session memory is bfloat16" in details and "--session-memory bfloat16" in details
        details = expect_error(lambda: c.import_session(snapshot, durability="none"),
                               grpc.StatusCode.FAILED_PRECONDITION).details()
        assert "--session-memory bfloat16" in details
    assert store.quarantined() == [] and store.versions(session.id)

    # Back on bfloat16 memory: restored exactly.
    node.extra = ["--session-memory", "bfloat16"]
    node.stop_and_restart()
    with node.client() as c:
        assert_same(observe(c, session.id), want, "restored on bfloat16 memory")
        copy = c.import_session(snapshot, durability="none")
        assert_same(observe(c, copy.id), want, "imported on bfloat16 memory")


def test_a_bad_session_memory_value_stops_the_server(server_bin, tiny_model):
    proc = subprocess.run([server_bin, "--model", f"tiny={tiny_model}", "--listen",
                           f"127.0.0.1:{free_port()}", "--metrics-listen", "off",
                           "--session-memory", "int8"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert '--session-memory must be float32, bfloat16 or float16, got "int8"' in proc.stderr, \
        proc.stderr
