"""A bounded load test: N sessions (MNEMO_LOAD_SESSIONS, default 32) each ingesting, generating
and scoring in a loop on its own thread for MNEMO_LOAD_SECONDS (default 60): no errors, every
session's version and token count add up, and deleting them all frees every byte."""

import os
import threading
import time

import grpc

from server_harness import document, odd_chunks


def test_many_sessions_in_parallel_without_errors(start_server):
    sessions = int(os.environ.get("MNEMO_LOAD_SESSIONS", "32"))
    seconds = float(os.environ.get("MNEMO_LOAD_SECONDS", "60"))
    server = start_server("--max-sessions", str(sessions + 8), "--max-queue", "4096",
                          "--session-ttl", "600s")
    text = document("GPL-2", unicode_tail=True)
    pieces = odd_chunks(text, seed=11, max_chars=400)
    client = server.client(timeout=120)
    deadline = time.monotonic() + seconds
    errors, stats = [], []
    lock = threading.Lock()
    start = threading.Barrier(sessions)

    def worker(index):
        rounds = 0
        try:
            session = client.create_session(labels={"load": "1", "worker": str(index)})
            start.wait(timeout=60)
            version, tokens = 0, 0
            cursor = index * 7
            while time.monotonic() < deadline:
                chunk = pieces[cursor % len(pieces):cursor % len(pieces) + 3]
                cursor += 3
                progress = client.ingest(session.id, chunk, expected_state_version=version)
                version, tokens = progress.state_version, tokens + progress.tokens_ingested
                commit = ("keep_all", "keep_prompt", "scratch")[rounds % 3]
                result = client.generate_result(
                    session.id, f" Question {rounds}?", max_tokens=6, temperature=0.8,
                    seed=index, ignore_eos=True, commit=commit, expected_state_version=version)
                assert result.final.usage.generated_tokens == 6
                prompt = result.final.usage.prompt_tokens
                if commit != "scratch":
                    version += 1
                    tokens += prompt + (6 if commit == "keep_all" else 0)
                assert result.final.state_version_after == version
                scored = client.score(session.id, text=" The end.",
                                      expected_state_version=version)
                assert scored.state_version == version and scored.tokens
                rounds += 1
            described = client.get_session(session.id)
            assert (described.state_version, described.tokens_seen) == (version, tokens), \
                (described, version, tokens)
            with lock:
                stats.append((session.id, rounds))
        except (grpc.RpcError, AssertionError, threading.BrokenBarrierError) as e:
            detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else e
            with lock:
                errors.append(f"worker {index} round {rounds}: {detail!r}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    assert not any(t.is_alive() for t in threads), "workers still running"
    assert errors == [], f"{len(errors)} errors, first: {errors[:5]}"
    assert len(stats) == sessions
    assert all(rounds >= 1 for _, rounds in stats), stats
    total_rounds = sum(r for _, r in stats)
    print(f"\nload: {sessions} sessions, {total_rounds} rounds in {seconds:.0f} s")

    listed = client.list_sessions(label_filter={"load": "1"}, page_size=5)
    assert sorted(s.id for s in listed) == sorted(s for s, _ in stats)
    for session_id, _ in stats:
        client.delete_session(session_id)
    assert client.list_sessions() == []
    metrics = server.metrics()
    assert metrics.sum("mnemo_session_state_bytes") == 0
    assert metrics.sum("mnemo_sessions") == 0
    assert metrics.sum("mnemo_requests_running") == 0
    assert metrics.sum("mnemo_requests_total", rpc="Generate", code="OK") == total_rounds
    not_ok = [(labels, v) for labels, v in metrics.select("mnemo_requests_total")
              if labels.get("code") != "OK"]
    assert not_ok == []
    assert metrics.sum("mnemo_batch_size_count") > 0
    client.close()
