"""Fixtures of the sliding-window decoders' tests (run by .venv-modern's Python: its
transformers has Mistral; tests/modern/README.md)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The parity helpers and the server harness, shared with the other suites.
sys.path[:0] = [os.path.join(ROOT, "tests", "reference"), os.path.join(ROOT, "tests", "server")]


from server_harness import executable  # noqa: E402


@pytest.fixture(scope="session")
def mnemo_bin():
    return executable("MNEMO_BIN")


@pytest.fixture(scope="session")
def server_bin():
    return executable("MNEMO_SERVER_BIN")
