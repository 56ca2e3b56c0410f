"""Fixtures of the end-to-end server tests: a real mnemo-server process driven through the
Python client package (clients/python/mnemo_client).

Environment (ctest sets it; every variable is required, the tests fail without it):
  MNEMO_SERVER_BIN    the server binary
  MNEMO_BIN           the engine's command line `mnemo` (offline reference results)
  PYTHONPATH          the import roots (python/README.md) and the build's python/ directory
                      (the generated gRPC stubs)
  MNEMO_CLIENT_BIN    the C++ command line `mnemo-client` (test_server_tls.py)
Optional: MNEMO_LOAD_SECONDS (load test duration, default 20), MNEMO_LOAD_SESSIONS (32),
MNEMO_PROMETHEUS (the Prometheus binary, default /usr/bin/prometheus).
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

try:
    from mnemo.v1 import mnemo_pb2  # noqa: F401  (the generated stubs, a build output)
except ImportError:
    pytest.fail("the generated gRPC stubs (mnemo/v1/mnemo_pb2.py) are not importable: put the "
                "build's python/ directory on PYTHONPATH, e.g. PYTHONPATH=build/release/python "
                "(ctest sets it; python/README.md)", pytrace=False)

import server_harness  # noqa: E402
from server_harness import BASE_FLAGS, ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def server_bin():
    return server_harness.executable("MNEMO_SERVER_BIN")


@pytest.fixture(scope="session")
def mnemo_bin():
    return server_harness.executable("MNEMO_BIN")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny checkpoint (real sentencepiece tokenizer, random weights), made once per run."""
    out = tmp_path_factory.mktemp("tiny_model")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_tiny_model.py"),
                           str(out), "--seed", "3"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"make_tiny_model.py failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return str(out)


@pytest.fixture(scope="session")
def server_workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("servers"))


@pytest.fixture
def start_server(server_bin, tiny_model, server_workdir):
    """Factory: start_server(*extra_flags, base=True, grace_s=5.0) -> a SERVING ServerProcess.

    Every server started is SIGTERMed at the end of the test, which then fails unless the
    process exited 0 within its shutdown grace.
    """
    started = []

    def start(*extra, base=True, grace_s=5.0, models=None):
        flags = (BASE_FLAGS if base else []) + list(extra)
        server = ServerProcess(server_bin, tiny_model, server_workdir, flags, models=models,
                               grace_s=grace_s)
        started.append(server)
        server.wait_serving()
        return server

    yield start
    for server in started:
        if server.returncode is None:
            server.stop(check=True)


@pytest.fixture(scope="session")
def shared_server(server_bin, tiny_model, server_workdir):
    """One server for the tests that do not care about its flags or counters."""
    server = ServerProcess(server_bin, tiny_model, server_workdir, BASE_FLAGS)
    server.wait_serving()
    yield server
    server.stop(check=True)


@pytest.fixture(scope="session")
def shared_client(shared_server):
    client = shared_server.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def model_info(shared_client):
    """The tiny model as the shared server describes it (mnemo.v1.Model)."""
    return shared_client.model("tiny")


@pytest.fixture(scope="session")
def decode_rate(shared_client):
    """Greedy decode speed of the shared server, tokens per second (sizes long generations)."""
    import time
    shared_client.generate_text(prompt="warm up", max_tokens=8, temperature=0, ignore_eos=True)
    start = time.monotonic()
    _, final = shared_client.generate_text(prompt="The licence", max_tokens=256, temperature=0,
                                           ignore_eos=True)
    elapsed = time.monotonic() - start
    assert final.usage.generated_tokens == 256
    return 256 / max(elapsed, 1e-3)


@pytest.fixture(scope="session")
def kind_models(tiny_model, tmp_path_factory):
    """{kind: checkpoint dir}: one small model per layer kind and the shipped teacher (with its
    student as draft), for the durability tests (durability_harness.make_kind_models)."""
    from durability_harness import make_kind_models
    return make_kind_models(tiny_model, str(tmp_path_factory.mktemp("kind_models")))


@pytest.fixture
def store_server(server_bin, tiny_model, server_workdir):
    """Factory: store_server(store_dir, *extra_flags, models=None) -> a SERVING
    durability_harness.StoreServer on that session store (restartable, crashable). Every process
    it started and that is still alive is SIGTERMed at the end of the test, which then fails
    unless it exited 0."""
    from durability_harness import StoreServer, stop_all
    started = []

    def start(store_dir, *extra, models=None):
        return StoreServer(server_bin, server_workdir, str(store_dir),
                           models or [f"tiny={tiny_model}"], list(extra), started)

    yield start
    stop_all(started)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the log of every live server to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in list(server_harness.RUNNING_SERVERS):
            report.sections.append((f"mnemo-server {server.target} log (tail)",
                                    server.stderr_text(8000)))
