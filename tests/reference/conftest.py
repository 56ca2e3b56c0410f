"""Fixtures shared by the parity tests."""

import os

import pytest


@pytest.fixture(scope="session")
def mnemo_bin() -> str:
    """The engine binary under test. The parity tests fail, never skip, when
    it is missing: ctest sets MNEMO_BIN."""
    path = os.environ.get("MNEMO_BIN")
    if not path:
        pytest.fail("MNEMO_BIN is not set; point it at the mnemo binary "
                    "(e.g. MNEMO_BIN=build/release/mnemo); ctest sets it",
                    pytrace=False)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"MNEMO_BIN={path!r} is not an executable file",
                    pytrace=False)
    return path
