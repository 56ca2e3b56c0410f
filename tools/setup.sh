#!/usr/bin/env bash
# Installs everything mnemo needs on Debian bookworm, idempotently: the Debian packages for the
# C++ build and the Python test tooling (a venv in .venv that sees Debian's python3-torch).
# Usage: tools/setup.sh            (build + test dependencies)
# Safe to run again: it only installs what is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

debs=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates
  libabsl-dev libopenblas-dev libsentencepiece-dev sentencepiece nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-format clang-tidy
  python3 python3-venv python3-pip python3-numpy python3-torch
)

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Python test tooling: Debian's torch, PyPI for the rest (pinned; transformers 4.27 still ships
# TransfoXL and works with torch 1.13).
venv=$root/.venv
stamp=$venv/.mnemo-requirements
req=$root/tools/requirements.txt
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
