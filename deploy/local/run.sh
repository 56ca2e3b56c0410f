#!/usr/bin/env bash
# A local three-replica mnemo setup (docs/deploy.md "Local three-replica setup"): builds the
# release preset (as tools/run.sh), installs nginx and Prometheus if missing, then starts N
# replicas of mnemo-server on the embedded default model sharing one session store, nginx
# routing by session id in front and Prometheus scraping them, in the foreground; Ctrl-C stops
# everything (the replicas drain their sessions to the store).
#   deploy/local/run.sh [--replicas N] [--router HOST:PORT] [--store DIR] [--tls]
#                       [--auth-file FILE] [-- server flags…]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tools/setup.sh build
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
# --tls makes its certificates with cryptography (deploy/local/certs.py).
python3 -c 'import cryptography' 2>/dev/null || missing+=(python3-cryptography)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $sudo apt-get install -y "${missing[@]}"
fi
cmake --preset release -DMNEMO_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release --target mnemo-server mnemo_proto_python
export PYTHONPATH="$root:$root/clients/python:$root/build/release/python${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m deploy.local "$@"
