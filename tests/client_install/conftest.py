"""Fixtures of the client installation tests: a real mnemo-server on a tiny checkpoint, started
with tests/server/server_harness.py, for the installed clients to talk to.

Environment (ctest sets it): MNEMO_SERVER_BIN, PYTHONPATH with the repository's import roots
(python/README.md; the harness itself uses the in-repository client). test_python_client_install
needs PyPI (or a pip cache / PIP_FIND_LINKS holding grpcio-tools, grpcio and protobuf);
test_cpp_client_install needs MNEMO_BINARY_DIR (a built tree to install from) and CMake.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "server"))

from server_harness import BASE_FLAGS, ServerProcess  # noqa: E402


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} must be set (ctest sets it)", pytrace=False)
    return value


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A SERVING mnemo-server on a tiny checkpoint (tools/make_tiny_model.py)."""
    binary = required_env("MNEMO_SERVER_BIN")
    model = tmp_path_factory.mktemp("tiny_model")
    made = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_tiny_model.py"),
                           str(model), "--seed", "3"], capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        pytest.fail(f"make_tiny_model.py failed:\n{made.stdout}\n{made.stderr}", pytrace=False)
    process = ServerProcess(binary, str(model), str(tmp_path_factory.mktemp("server")), BASE_FLAGS)
    process.wait_serving()
    yield process
    process.stop(check=True)


def run(args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command; fails the test with its output unless it exits 0."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(str(a) for a in args)} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", pytrace=False)
    return proc
