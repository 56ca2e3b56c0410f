"""Speculative decoding served over gRPC (`--speculative on` and a model directory whose
draft.json names a draft): the same greedy text as the model alone, session memories that stay
exact across ingest, generation stopped inside a verification pass, fork and score, and the
draft's work reported in Usage, GetModel and the metrics.

The draft here is the tiny model itself, so while its memory holds the same document as the
model's it proposes exactly the model's greedy tokens: any drift of the draft state shows up as
a rejected proposal.
"""

import os

import pytest

from mnemo.v1 import mnemo_pb2 as pb

DOCUMENT = ("The licence grants every person who receives a copy the freedom to study, change "
            "and share the program, provided that the same freedoms pass on with it. ") * 3
MORE = "Redistribution of modified versions must carry prominent notices of the change. "
PROBE = " and the source code shall accompany every copy"


@pytest.fixture
def speculative_model(tiny_model, tmp_path):
    """A model directory: the tiny checkpoint plus draft.json naming the tiny model itself."""
    target = tmp_path / "speculative"
    target.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        os.symlink(os.path.join(tiny_model, name), target / name)
    (target / "draft.json").write_text(f'{{"model": "{tiny_model}", "draft_tokens": 3}}')
    return str(target)


def run_script(client, model):
    """Ingest, generate (stopped by a string met inside a pass), ingest, generate, fork, score."""
    session = client.create_session(model=model).id
    client.ingest_text(session, DOCUMENT, chunk_bytes=37)
    first = client.generate_result(session, model=model, max_tokens=30, temperature=0,
                                   ignore_eos=True)
    # The same request again, stopped by a string from the middle of that text.
    client.delete_session(session)
    session = client.create_session(model=model).id
    client.ingest_text(session, DOCUMENT, chunk_bytes=37)
    stop = first.text[len(first.text) // 2:][:3]
    stopped = client.generate_result(session, model=model, max_tokens=30, temperature=0,
                                      ignore_eos=True, stop=[stop])
    client.ingest_text(session, MORE)
    second = client.generate_result(session, model=model, max_tokens=17, temperature=0,
                                    ignore_eos=True)
    fork = client.fork_session(session).id
    from_fork = client.generate_result(fork, model=model, max_tokens=9, temperature=0,
                                       ignore_eos=True)
    scored = client.score(session, text=PROBE)
    client.delete_session(fork)
    client.delete_session(session)
    return [first, stopped, second, from_fork], [t.logprob for t in scored.tokens]


def test_speculative_sessions_match_the_model_alone(start_server, tiny_model, speculative_model):
    server = start_server("--speculative", "on",
                          models=[f"plain={tiny_model}", f"spec={speculative_model}"])
    client = server.client()
    plain_info, spec_info = client.model("plain"), client.model("spec")
    assert plain_info.draft_model == "" and plain_info.draft_tokens == 0
    assert spec_info.draft_model == tiny_model and spec_info.draft_tokens == 3
    assert spec_info.state_bytes_per_session == 2 * plain_info.state_bytes_per_session
    session = client.create_session(model="spec")
    assert session.state_bytes == spec_info.state_bytes_per_session
    client.delete_session(session.id)

    want, want_scores = run_script(client, "plain")
    got, got_scores = run_script(client, "spec")
    assert want[1].final.finish_reason == pb.FINISH_REASON_STOP_STRING
    proposed = accepted = 0
    for g, w in zip(got, want):
        assert g.ids == w.ids and g.text == w.text
        assert g.final.finish_reason == w.final.finish_reason
        assert w.final.usage.draft_tokens_proposed == 0
        proposed += g.final.usage.draft_tokens_proposed
        accepted += g.final.usage.draft_tokens_accepted
    assert proposed > 0
    assert accepted == proposed, "the draft's memory drifted from the model's"
    assert got_scores == pytest.approx(want_scores, abs=1e-4)

    metrics = server.metrics()
    assert metrics.sum("mnemo_draft_tokens_proposed_total") == proposed
    assert metrics.sum("mnemo_draft_tokens_accepted_total") == accepted
    client.close()


def test_speculative_needs_the_flag_and_a_fit_draft(start_server, tiny_model, speculative_model,
                                                    tmp_path):
    # Without --speculative the draft.json is not read.
    server = start_server(models=[f"spec={speculative_model}"])
    client = server.client()
    assert client.model("spec").draft_model == ""
    _, final = client.generate_text(prompt="The licence", model="spec", max_tokens=5,
                                    temperature=0, ignore_eos=True)
    assert final.usage.draft_tokens_proposed == 0
    client.close()
    server.stop(check=True)
    # A draft.json naming a missing directory stops the server at start with a clear message.
    with open(os.path.join(speculative_model, "draft.json"), "w") as f:
        f.write('{"model": "/nonexistent/draft"}')
    from server_harness import BASE_FLAGS, ServerProcess
    bad = ServerProcess(server.args[0], tiny_model, str(tmp_path), BASE_FLAGS +
                        ["--speculative", "on"], models=[f"spec={speculative_model}"])
    try:
        code = bad.wait_exit(30)
        assert code not in (None, 0), "the server started with an unusable draft"
        log = bad.stderr_text()
        assert 'model "spec"' in log and "/nonexistent/draft" in log, log
    finally:
        bad.stop(check=False)
