"""Metrics: the Prometheus exposition carries the documented families with the right counts,
and a real Prometheus server (Debian's /usr/bin/prometheus) scrapes it."""

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import grpc
import pytest

from server_harness import expect_error, free_port, wait_until

FAMILIES = {
    "mnemo_requests_total": "counter",
    "mnemo_request_duration_seconds": "histogram",
    "mnemo_time_to_first_token_seconds": "histogram",
    "mnemo_inter_token_latency_seconds": "histogram",
    "mnemo_prompt_tokens_total": "counter",
    "mnemo_generated_tokens_total": "counter",
    "mnemo_ingested_tokens_total": "counter",
    "mnemo_requests_running": "gauge",
    "mnemo_requests_waiting": "gauge",
    "mnemo_batch_size": "histogram",
    "mnemo_engine_step_seconds": "histogram",
    "mnemo_sessions": "gauge",
    "mnemo_session_state_bytes": "gauge",
    "mnemo_model_info": "gauge",
    "mnemo_build_info": "gauge",
    "mnemo_heap_allocated_bytes": "gauge",
    "mnemo_heap_bytes": "gauge",
}


def run_workload(client):
    """A fixed mix of requests; returns what the counters must show."""
    session = client.create_session()
    progress = client.ingest(session.id, ["The licence grants you the right ",
                                          "to copy, modify and distribute the work."])
    generated = prompt = 0
    for i in range(3):
        result = client.generate_result(session.id, f" Part {i}:", max_tokens=5 + i,
                                        temperature=0, ignore_eos=True)
        generated += result.final.usage.generated_tokens
        prompt += result.final.usage.prompt_tokens
    one_shot = client.generate_result(prompt="One shot", max_tokens=4, temperature=0,
                                      ignore_eos=True)
    generated += one_shot.final.usage.generated_tokens
    prompt += one_shot.final.usage.prompt_tokens
    expect_error(lambda: client.generate_text(session.id, "x", max_tokens=0),
                 grpc.StatusCode.INVALID_ARGUMENT)
    expect_error(lambda: client.get_session("0" * 32), grpc.StatusCode.NOT_FOUND)
    return dict(session=session, ingested=progress.tokens_ingested, generated=generated,
                prompt=prompt, generates_ok=4)


def test_exposition_has_the_documented_families_and_counts(start_server):
    server = start_server()
    with server.client() as client:
        expected = run_workload(client)
        metrics = server.metrics()
        for name, kind in FAMILIES.items():
            assert metrics.types.get(name) == kind, f"{name}: TYPE {metrics.types.get(name)}"
        assert metrics.sum("mnemo_requests_total", rpc="Generate", code="OK") == 4
        assert metrics.sum("mnemo_requests_total", rpc="Generate",
                           code="INVALID_ARGUMENT") == 1
        assert metrics.sum("mnemo_requests_total", rpc="GetSession", code="NOT_FOUND") == 1
        assert metrics.sum("mnemo_requests_total", rpc="Ingest", code="OK") == 1
        assert metrics.sum("mnemo_requests_total", rpc="CreateSession", code="OK") == 1
        assert metrics.sum("mnemo_generated_tokens_total") == expected["generated"]
        assert metrics.sum("mnemo_prompt_tokens_total") == expected["prompt"]
        assert metrics.sum("mnemo_ingested_tokens_total") == expected["ingested"]
        assert metrics.sum("mnemo_request_duration_seconds_count", rpc="Generate") == 5
        assert metrics.sum("mnemo_time_to_first_token_seconds_count") == 4
        # The session had its document before it generated; the one-shot request had none.
        assert metrics.sum("mnemo_time_to_first_token_seconds_count",
                           state_source="resident") == 3
        assert metrics.sum("mnemo_time_to_first_token_seconds_count", state_source="new") == 1
        # One inter-token gap per generated token after the first of each generation (a
        # server may also count the first token's gap: at most one more per generation).
        gaps = metrics.sum("mnemo_inter_token_latency_seconds_count")
        assert expected["generated"] - 4 <= gaps <= expected["generated"]
        assert metrics.sum("mnemo_requests_running") == 0
        assert metrics.sum("mnemo_requests_waiting") == 0
        assert metrics.sum("mnemo_sessions", tier="device") == 1
        assert metrics.sum("mnemo_session_state_bytes", tier="device") == \
            expected["session"].state_bytes
        info = metrics.select("mnemo_model_info")
        assert info and info[0][0].get("name", info[0][0].get("model")) == "tiny", info
        assert metrics.select("mnemo_build_info")
        assert metrics.sum("mnemo_engine_step_seconds_count") > 0
        # Read from the allocator at each scrape: the server holds something (the model, its
        # threads' buffers), within what the allocator took from the system.
        assert 0 < metrics.sum("mnemo_heap_allocated_bytes") <= metrics.sum("mnemo_heap_bytes")
        assert metrics.sum("mnemo_batch_size_count") > 0
        client.score(expected["session"].id, text=" and so on")
        metrics = server.metrics()
        assert metrics.sum("mnemo_requests_total", rpc="Score", code="OK") == 1
        assert metrics.sum("mnemo_engine_step_seconds_count", phase="score") >= 1
        assert metrics.sum("mnemo_requests_total") == \
            metrics.sum("mnemo_request_duration_seconds_count")
        client.delete_session(expected["session"].id)
        metrics = server.metrics()
        assert metrics.sum("mnemo_sessions") == 0
        assert metrics.sum("mnemo_session_state_bytes") == 0
        assert metrics.sum("mnemo_sessions_closed_total", reason="deleted") == 1


def _prometheus_bin():
    path = os.environ.get("MNEMO_PROMETHEUS") or shutil.which("prometheus") or \
        "/usr/bin/prometheus"
    if not os.access(path, os.X_OK):
        pytest.fail(f"no Prometheus binary at {path} (Debian package prometheus)",
                    pytrace=False)
    return path


def _query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _scalar(port, expr):
    result = _query(port, expr)
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_scrapes_the_server(start_server, tmp_path):
    server = start_server()
    with server.client() as client:
        expected = run_workload(client)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: mnemo\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.metrics_port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [_prometheus_bin(), f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited {proc.returncode}:\n"
                            f"{(tmp_path / 'prometheus.log').read_text()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    return True
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(ready, timeout=60, message="Prometheus to be ready")

        def scraped():
            return _scalar(port, 'sum(mnemo_requests_total{rpc="Generate",code="OK"})') \
                is not None

        wait_until(scraped, timeout=60, interval=0.5, message="the first scrape")
        assert _scalar(port, 'up{job="mnemo"}') == 1
        assert _scalar(port, 'sum(mnemo_requests_total{rpc="Generate",code="OK"})') == \
            expected["generates_ok"]
        assert _scalar(port, 'sum(mnemo_requests_total{rpc="Generate",'
                             'code="INVALID_ARGUMENT"})') == 1
        assert _scalar(port, "sum(mnemo_generated_tokens_total)") == expected["generated"]
        assert _scalar(port, "sum(mnemo_ingested_tokens_total)") == expected["ingested"]
        assert _scalar(port, 'sum(mnemo_sessions{tier="device"})') == 1
        # Histograms are usable by PromQL (the buckets parse and aggregate).
        p50 = _scalar(port, "histogram_quantile(0.5, sum by (le) "
                            "(mnemo_time_to_first_token_seconds_bucket))")
        assert p50 is not None and p50 >= 0
        # New traffic shows up in a later scrape.
        with server.client() as client:
            client.generate_text(prompt="Later", max_tokens=3, temperature=0, ignore_eos=True)
        wait_until(lambda: _scalar(
            port, 'sum(mnemo_requests_total{rpc="Generate",code="OK"})') == 5,
            timeout=30, interval=0.5, message="the later generation in Prometheus")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
