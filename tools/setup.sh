#!/usr/bin/env bash
# Installs what mnemo needs on Debian bookworm, idempotently (only what is missing).
#   tools/setup.sh build   Debian packages for building and running (C++ toolchain, libraries)
#   tools/setup.sh test    the above, the test tooling (with nginx), and a venv in .venv that sees Debian's
#                          python3-torch, adds pinned PyPI packages (tools/requirements.txt) and
#                          finds the project's Python packages (mnemo.pth; python/README.md)
#   tools/setup.sh deploy  only what tools/check_deploy.sh needs: kubectl 1.20 (Debian's
#                          kubernetes-client), promtool (prometheus) and the venv
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-test}

debs=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates
  libabsl-dev libopenblas-dev libsentencepiece-dev sentencepiece nlohmann-json3-dev libxxhash-dev
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev prometheus-cpp-dev
  libssl-dev python3 python3-numpy python3-grpcio python3-protobuf
)
deploy_debs=(python3-venv python3-pip prometheus kubernetes-client)
if [ "$mode" = test ]; then
  # nginx: the router of the replica tests (tests/server/test_server_replicas.py);
  # python3-cryptography, openssl: the certificates of the TLS tests (deploy/local/certs.py,
  # tests/server/client_cpp_e2e_test.cc).
  # libclang-rt-14-dev and libfuzzer-14-dev: the sanitizer and libFuzzer runtimes of the fuzz
  # targets (tools/fuzz.sh); clang-14 only recommends the former.
  debs+=(libgtest-dev libgmock-dev libbenchmark-dev clang-format clang-tidy clang-14
         libclang-rt-14-dev libfuzzer-14-dev
         python3-torch python3-cryptography openssl bible-kjv bible-kjv-text nginx
         "${deploy_debs[@]}")
elif [ "$mode" = deploy ]; then
  debs=(python3 "${deploy_debs[@]}")
elif [ "$mode" != build ]; then
  echo "usage: tools/setup.sh [build|test|deploy]" >&2
  exit 2
fi

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# kubernetes-client cannot be installed where another package (Google Cloud's `kubectl`) owns
# /usr/bin/kubectl. The Debian package's kubectl is then unpacked into .cache/kubernetes-client
# instead, where tools/check_deploy.sh looks first: the manifests are checked with kubectl 1.20's
# kustomize either way.
kubectl_dir=$root/.cache/kubernetes-client
if [[ " ${debs[*]} " == *" kubernetes-client "* ]] &&
   ! dpkg-query -W -f='${Status}' kubernetes-client 2>/dev/null | grep -q 'install ok installed' &&
   owner=$(dpkg-query -S /usr/bin/kubectl 2>/dev/null); then
  debs=("${debs[@]/kubernetes-client}")
  if [ ! -x "$kubectl_dir/usr/bin/kubectl" ]; then
    echo "setup: /usr/bin/kubectl belongs to ${owner%%:*}; unpacking kubernetes-client into .cache"
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download -q kubernetes-client >/dev/null 2>&1); then
      "${sudo_cmd[@]}" apt-get update -q >/dev/null
      (cd "$tmp" && apt-get download -q kubernetes-client)
    fi
    rm -rf "$kubectl_dir" && mkdir -p "$kubectl_dir"
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$kubectl_dir"
    rm -rf "$tmp"
  fi
fi

missing=()
for p in "${debs[@]}"; do
  [ -n "$p" ] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
fi

[ "$mode" != build ] || exit 0

# Python test tooling: Debian's torch (system site packages), PyPI for the rest, pinned
# (transformers 4.27 still ships TransfoXL and works with torch 1.13).
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

# A second venv, .venv-modern, for the sliding-window decoders' parity tests (tests/modern):
# Mistral needs transformers ≥ 4.34, whose TransfoXL (moved to `deprecated`) no longer runs
# (4.44.2 calls type_as(dtype=…)), while 4.44.2 is the last release whose Mistral runs on Debian's
# torch 1.13 (later ones need torch._dynamo). No single release serves both.
# (test mode only)
modern=$root/.venv-modern
modern_stamp=$modern/.mnemo-requirements
modern_req=$root/tools/requirements-modern.txt
envs=("$venv")
if [ "$mode" = test ]; then
  if [ ! -x "$modern/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$modern"
  fi
  if ! cmp -s "$modern_req" "$modern_stamp" 2>/dev/null; then
    "$modern/bin/python" -m pip install -q --disable-pip-version-check -r "$modern_req"
    cp "$modern_req" "$modern_stamp"
  fi
  envs+=("$modern")
fi

# The project's import roots (python/README.md), listed in a .pth file of each venv: python/
# (mnemo_reference, mnemo_checkpoint), the repository root (tools.*, bench.*), clients/python
# (mnemo_client) and the release build's generated gRPC stubs. Rewritten only when it changes.
roots=$(printf '%s\n' "$root/python" "$root" "$root/clients/python" "$root/build/release/python")
for env in "${envs[@]}"; do
  site=$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  pth=$site/mnemo.pth
  if [ "$(cat "$pth" 2>/dev/null)" != "$roots" ]; then
    printf '%s\n' "$roots" >"$pth"
  fi
done
