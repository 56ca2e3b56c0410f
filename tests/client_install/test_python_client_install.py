"""The Python client installed from a wheel into a clean virtual environment (no system site
packages, no repository on the path, no C++ build outputs) works against a real server: the
wheel carries the generated mnemo.v1 stubs and pulls grpcio and protobuf from the index.

pip keeps its downloads in its cache (~/.cache/pip), so a repeated run takes seconds.
"""

import os
import shutil
import sys
import time

from conftest import ROOT, run

CHECK = r'''
import json, os, sys
import mnemo_client
from mnemo.v1 import mnemo_pb2
from mnemo_client import MnemoClient

prefix = sys.prefix
for module in (mnemo_client, mnemo_pb2):  # both from the venv, not the repository or a build
    assert os.path.realpath(module.__file__).startswith(os.path.realpath(prefix)), module.__file__
with MnemoClient(sys.argv[1], timeout=60) as client:
    models = [m.name for m in client.models()]
    session = client.create_session(labels={"test": "install"})
    done = client.ingest_text(session.id, "The quick brown fox jumps over the lazy dog. " * 4)
    text, final = client.generate_text(session.id, "The end", max_tokens=4, ignore_eos=True,
                                       temperature=0)
    client.delete_session(session.id)
print(json.dumps({"models": models, "ingested": done.tokens_ingested,
                  "generated": final.usage.generated_tokens}))
'''


def clean_env() -> dict:
    """The environment minus anything that would put the repository or its venv on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_wheel_installs_into_a_clean_venv_and_talks_to_a_server(server, tmp_path):
    timings = {}
    start = time.monotonic()
    env = clean_env()

    # The package source as a checkout has it: clients/python beside proto/ (setup.py finds the
    # contract at ../../proto). A copy, so the build leaves nothing in the source tree.
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "clients", "python"), src / "clients" / "python",
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__",
                                                  "tests"))
    shutil.copytree(os.path.join(ROOT, "proto", "mnemo"), src / "proto" / "mnemo",
                    ignore=shutil.ignore_patterns("*.cc", "*.h"))
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels,
         src / "clients" / "python"], env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("mnemo_client-*.whl")
    timings["wheel"] = time.monotonic() - start

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], env=env, cwd=tmp_path)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg, cfg
    python = venv / "bin" / "python"
    timings["venv"] = time.monotonic() - start
    run([python, "-m", "pip", "install", "-q", wheel], env=env, cwd=tmp_path)
    timings["install"] = time.monotonic() - start

    result = run([python, "-c", CHECK, server.target], env=env, cwd=tmp_path)
    summary = result.stdout.strip().splitlines()[-1]
    assert '"models": ["tiny"]' in summary and '"generated": 4' in summary, summary

    models = run([venv / "bin" / "mnemo-client", "--target", server.target, "models"],
                 env=env, cwd=tmp_path)
    assert "tiny" in models.stdout, models.stdout
    generated = run([venv / "bin" / "mnemo-client", "--target", server.target, "generate",
                     "--prompt", "Once", "--max-tokens", "3", "--temperature", "0"],
                    env=env, cwd=tmp_path)
    assert "generated 3" in generated.stderr, generated.stderr
    timings["total"] = time.monotonic() - start
    print("python client install timings (cumulative s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
