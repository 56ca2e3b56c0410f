"""--cpu-weights through the real server: the shipped teacher (a bfloat16 checkpoint) serves the
same log-probabilities and the same greedy text with its weights kept 16-bit (the default) as
widened to float32 at load (the oracle form), decode steps and prefill segments alike, and says
at start-up which form it holds; a bad value stops the server with a message naming the flag."""

import os
import subprocess

import pytest

from server_harness import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEACHER = os.path.join(ROOT, "models", "teacher")
DOCUMENT = ("The committee met on a Tuesday to review the budget for the coming year. "
            "After a long discussion of the library's roof, the members agreed that the "
            "repairs could not wait for another winter. ") * 6
PROBE = " The treasurer then read the figures aloud, and nobody spoke for a while."


def serve_script(client):
    """Ingest (prefill segments), greedy decode steps, then a Score of PROBE on that memory."""
    session = client.create_session(model="teacher").id
    client.ingest_text(session, DOCUMENT)
    generated = client.generate_result(session, model="teacher", max_tokens=12, temperature=0,
                                       ignore_eos=True)
    scored = client.score(session, text=PROBE)
    client.delete_session(session)
    return generated.text, [t.id for t in scored.tokens], [t.logprob for t in scored.tokens]


def test_stored_16bit_weights_serve_like_float32_weights(start_server):
    with open(os.path.join(TEACHER, "config.json")) as f:
        assert '"bfloat16"' in f.read()  # the shipped models are 16-bit checkpoints
    results = {}
    for mode in ("stored", "float32"):
        server = start_server("--cpu-weights", mode, models=[f"teacher={TEACHER}"])
        results[mode] = serve_script(server.client())
        server.stop(check=True)
        with open(server.stderr_path, encoding="utf-8") as f:
            held = "bfloat16" if mode == "stored" else "float32"
            assert f"mnemo-server: model teacher (cpu, {held} weights, " in f.read()
    text_16, ids_16, logprobs_16 = results["stored"]
    text_32, ids_32, logprobs_32 = results["float32"]
    assert ids_16 == ids_32 and len(logprobs_16) > 10
    # Each weight widens exactly; only the order of float32 sums differs.
    assert logprobs_16 == pytest.approx(logprobs_32, abs=1e-4)
    assert text_16 == text_32


def test_a_bad_cpu_weights_value_stops_the_server(server_bin, tiny_model):
    proc = subprocess.run([server_bin, "--model", f"tiny={tiny_model}", "--listen",
                           f"127.0.0.1:{free_port()}", "--metrics-listen", "off",
                           "--cpu-weights", "half"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert '--cpu-weights must be stored or float32, got "half"' in proc.stderr, proc.stderr
