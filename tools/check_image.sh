#!/usr/bin/env bash
# Proves the container image recipe without a Docker engine (CI has none): builds the runtime
# image's root from a fresh Debian bookworm (debootstrap --variant=minbase) with the same setup
# script as the Dockerfile's runtime stage (deploy/docker/runtime-setup.sh: runtime-packages.txt
# only, the user 10001, the store mount point), stages the same files (deploy/docker/stage.sh),
# then runs the image's ENTRYPOINT in it as the image's USER with exactly the image's ENV, read
# from the Dockerfile, on a read-only root with a writable store volume, in its own mount and
# network namespaces (the image's ports, no clash with the host's). It checks that every
# library resolves inside the root, that grpc.health.v1 turns SERVING, that /metrics answers,
# that a durable session generates tokens and lands in the store volume, and that SIGTERM stops
# the server with exit status 0.
#   tools/check_image.sh [--dockerfile FILE] [BUILD_DIR]
# BUILD_DIR (default build/release) holds a release build of mnemo-server and mnemo-client. The
# Dockerfile defaults to deploy/docker/Dockerfile.cuda for a build that links the CUDA runtime,
# to ./Dockerfile otherwise; without a GPU driver in the root, MNEMO_DEVICE=cuda runs as cpu.
# Needs root (mounts, chroot, namespaces), Debian's python3 with python3-grpcio (tools/setup.sh
# build) for the client, and for the first run the Debian mirror the host's apt uses: the
# bookworm root is cached under ${MNEMO_CACHE:-~/.cache/mnemo}/image-check, keyed by the
# package list, the setup script and the mirrors. The work tree is build/image-check (replaced
# on every run; the server's log is build/image-check/server.log).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)

# --- inside the namespaces: the container's run -----------------------------------------------
# Called by the script itself through unshare (own mount and network namespaces), so every mount
# below disappears with the namespace however the run ends; the trap unmounts them anyway.
if [ "${1:-}" = --in-namespace ]; then
  shift
  work=$1 build=$2 user=$3 volume=$4 grpc_port=$5 metrics_port=$6 envfile=$7
  shift 7
  entrypoint=("$@")
  mnt=$work/mnt
  server=
  # shellcheck disable=SC2317  # (run by the EXIT trap)
  cleanup() {
    [ -z "$server" ] || kill -KILL "$server" 2>/dev/null || true
    umount -R "$mnt" 2>/dev/null || true
  }
  trap cleanup EXIT
  trap 'exit 143' TERM INT
  ip link set lo up
  # The image's root read-only, with what a container runtime mounts: /proc, /dev, a read-only
  # /sys, and the store volume (writable).
  mkdir -p "$mnt"
  mount --bind "$work/root" "$mnt"
  mount -o remount,bind,ro "$mnt"
  mount -t proc proc "$mnt/proc"
  mount --bind /dev "$mnt/dev"
  mount --bind /sys "$mnt/sys"
  mount -o remount,bind,ro "$mnt/sys"
  mount --bind "$work/store" "$mnt$volume"
  if touch "$mnt/opt/mnemo/.write-test" 2>/dev/null; then
    echo "check_image: the root is writable" >&2
    exit 1
  fi

  mapfile -t env <"$envfile"
  echo "== image: libraries inside the root"
  for f in "$mnt"/opt/mnemo/bin/mnemo-server "$mnt"/opt/mnemo/bin/mnemo-client \
           "$mnt"/opt/mnemo/bin/libmnemo_sentencepiece.so; do
    out=$(env -i "${env[@]}" chroot "$mnt" ldd "${f#"$mnt"}")
    if grep -q 'not found' <<<"$out"; then
      echo "check_image: ${f#"$mnt"}:" >&2
      grep 'not found' <<<"$out" >&2
      exit 1
    fi
  done

  echo "== image: start ${entrypoint[*]} as $user"
  env -i "${env[@]}" chroot --userspec="$user" "$mnt" "${entrypoint[@]}" \
    >"$work/server.log" 2>&1 &
  server=$!
  PYTHONPATH=$build/python:$src/clients/python /usr/bin/python3 - "$grpc_port" "$metrics_port" "$server" \
    <<'PY' || { cat "$work/server.log" >&2; exit 1; }
import os
import sys
import time
import urllib.request

import grpc

from mnemo_client import MnemoClient, health

grpc_port, metrics_port, server = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = MnemoClient(f"127.0.0.1:{grpc_port}", timeout=60)
deadline = time.monotonic() + 120
while True:
    try:
        os.kill(server, 0)
    except ProcessLookupError:
        sys.exit("check_image: the server exited before serving")
    try:
        if client.health(timeout=2) == health.SERVING:
            break
    except grpc.RpcError:
        pass
    if time.monotonic() > deadline:
        sys.exit("check_image: health not SERVING after 120 s")
    time.sleep(0.2)
print("check_image: health SERVING")
metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
for name in (b"mnemo_build_info", b"mnemo_model_info"):
    if name not in metrics:
        sys.exit(f"check_image: /metrics has no {name.decode()}")
models = [m.name for m in client.models()]
print(f"check_image: models {models}")
session = client.create_session(durability="sync")
text, final = client.generate_text(session.id, "And God said unto Moses,", max_tokens=8,
                                   ignore_eos=True)
if final is None or final.usage.generated_tokens != 8:
    sys.exit(f"check_image: generate ended with {final}")
print(f"check_image: session {session.id} generated {text!r}")
PY
  # SIGTERM drains: nothing is in flight, so well within the default grace; a hung server is
  # killed after 120 s and fails the check.
  kill -TERM "$server"
  (sleep 120 && kill -KILL "$server") 2>/dev/null &
  watchdog=$!
  rc=0
  wait "$server" || rc=$?
  server=
  kill "$watchdog" 2>/dev/null || true
  cat "$work/server.log"
  if [ "$rc" -ne 0 ]; then
    echo "check_image: the server exited with status $rc after SIGTERM" >&2
    exit 1
  fi
  echo "check_image: SIGTERM: exit status 0"
  exit 0
fi

# --- outside: build the root, stage the image's files, run -------------------------------------
dockerfile=
while [ $# -gt 0 ]; do
  case $1 in
    --dockerfile) dockerfile=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "usage: tools/check_image.sh [--dockerfile FILE] [BUILD_DIR]" >&2; exit 2 ;;
    *) break ;;
  esac
done
build=$(cd "${1:-$src/build/release}" && pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "check_image: needs root (mounts, chroot)" >&2
  exit 2
fi
for f in mnemo-server mnemo-client libmnemo_sentencepiece.so python/mnemo; do
  [ -e "$build/$f" ] || { echo "check_image: $build has no $f: build the release preset" >&2; exit 2; }
done
if [ -z "$dockerfile" ]; then
  dockerfile=$src/Dockerfile
  if grep -q libcudart <<<"$(ldd "$build/mnemo-server")"; then
    dockerfile=$src/deploy/docker/Dockerfile.cuda
  fi
fi
# The host's tools beyond Debian's essential set: debootstrap, and ip for the namespace's
# loopback.
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start)) s"; }
docker_dir=$src/deploy/docker

# The runtime stage of the Dockerfile: the lines after its last FROM. Each ENV names one
# variable; anything the script cannot read fails rather than being skipped.
runtime=$(awk '/^FROM /{n=NR} {line[NR]=$0} END{for(i=n+1;i<=NR;i++) print line[i]}' "$dockerfile")
envs=() user='' volume='' entrypoint=() exposed=''
while IFS= read -r line; do
  case $line in
    ENV\ *)
      [[ $line =~ ^ENV\ ([A-Za-z_][A-Za-z0-9_]*)=([^\ \"\']*)$ ]] ||
        { echo "check_image: cannot read '$line' (one NAME=VALUE per ENV)" >&2; exit 1; }
      envs+=("${BASH_REMATCH[1]}=${BASH_REMATCH[2]}") ;;
    USER\ *)
      [[ $line =~ ^USER\ ([0-9]+:[0-9]+)$ ]] || { echo "check_image: USER uid:gid: $line" >&2; exit 1; }
      user=${BASH_REMATCH[1]} ;;
    VOLUME\ *) volume=${line#VOLUME } ;;
    EXPOSE\ *) exposed=" ${line#EXPOSE } " ;;
    ENTRYPOINT\ *)
      [[ $line =~ ^ENTRYPOINT\ \[\"([^\"]+)\"\]$ ]] ||
        { echo "check_image: ENTRYPOINT [\"PATH\"]: $line" >&2; exit 1; }
      entrypoint=("${BASH_REMATCH[1]}") ;;
  esac
done <<<"$runtime"
if ! grep -q 'sh /tmp/mnemo-docker/runtime-setup\.sh$' <<<"$runtime" ||
   ! grep -qx 'COPY --from=build /stage/ /' <<<"$runtime"; then
  echo "check_image: $dockerfile's runtime stage no longer runs runtime-setup.sh and copies /stage/" >&2
  exit 1
fi
if [ -z "$user" ] || [ -z "$volume" ] || ((${#entrypoint[@]} == 0)); then
  echo "check_image: $dockerfile has no USER, VOLUME or ENTRYPOINT" >&2
  exit 1
fi
value() {
  local e
  for e in "${envs[@]}"; do
    if [ "${e%%=*}" = "$1" ]; then echo "${e#*=}"; fi
  done
}
grpc_port=$(value MNEMO_LISTEN)
grpc_port=${grpc_port##*:}
metrics_port=$(value MNEMO_METRICS_LISTEN)
metrics_port=${metrics_port##*:}
for port in "$grpc_port" "$metrics_port"; do
  [[ $exposed == *" $port "* ]] || { echo "check_image: port $port is not EXPOSEd" >&2; exit 1; }
done

# What a container runtime adds to the image's ENV; OpenBLAS's core type where this machine
# needs one (docs/deploy.md: set it in the pod too).
run_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent)
for v in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do
  [ -z "${!v:-}" ] || run_env+=("$v=${!v}")
done
for e in "${envs[@]}"; do
  if [ "$e" = MNEMO_DEVICE=cuda ] || [[ $e == MNEMO_DEVICE=cuda:* ]]; then
    echo "check_image: no GPU driver in the root: $e runs as MNEMO_DEVICE=cpu"
    e=MNEMO_DEVICE=cpu
  fi
  run_env+=("$e")
done

# The Debian mirror(s) the host's apt uses for bookworm, bookworm-updates and
# bookworm-security, as one-line sources for the root.
sources=$(/usr/bin/python3 - <<'PY'
import glob
import re

suites = ("bookworm", "bookworm-updates", "bookworm-security")
found = []
files = glob.glob("/etc/apt/sources.list") + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for f in files:
    for line in open(f):
        m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m and m.group(2) in suites:
            found.append((m.group(1), m.group(2)))
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"])[0] == "no":
            continue
        for uri in fields.get("uris", []):
            for suite in fields.get("suites", []):
                if suite in suites:
                    found.append((uri, suite))
for uri, suite in dict.fromkeys(found):
    print(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main")
PY
)
mirror=$(awk '$4 == "bookworm" {print $3; exit}' <<<"$sources")
[ -n "$mirror" ] || { echo "check_image: the host's apt has no bookworm source" >&2; exit 1; }

cache=${MNEMO_CACHE:-$HOME/.cache/mnemo}/image-check
work=$src/build/image-check
mkdir -p "$cache"

# Leftovers of an earlier run: mounts (only a run of an older script could leave one) and files.
leftover=$(findmnt -rn -o TARGET | grep "^$work/" | sort -r || true)
for m in $leftover; do umount -l "$m"; done
rm -rf "$work"
mkdir -p "$work"

# 1. A minimal Debian bookworm, once per cache.
base=$cache/bookworm-minbase.tar
if [ ! -f "$base" ]; then
  echo "== image: debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/base" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$work/base"
  echo "check_image: base root cached ($(elapsed))"
fi

# 2. The runtime stage's setup in that root, cached by what it depends on.
key=$( (cat "$docker_dir/runtime-packages.txt" "$docker_dir/runtime-setup.sh"; echo "$sources") |
      sha256sum | cut -c1-16)
runtime_tar=$cache/runtime-$key.tar
if [ ! -f "$runtime_tar" ]; then
  echo "== image: runtime-setup.sh in the bookworm root"
  root=$work/setup
  mkdir -p "$root"
  tar -C "$root" -xf "$base"
  rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
  printf '%s\n' "$sources" >"$root/etc/apt/sources.list"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp -r "$docker_dir" "$root/tmp/mnemo-docker"
  # shellcheck disable=SC2016  # (expanded by the inner shell)
  unshare --mount --propagation private bash -c '
    set -e
    mount -t proc proc "$1/proc"
    mount --bind /dev "$1/dev"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$1" sh /tmp/mnemo-docker/runtime-setup.sh
  ' setup "$root" >"$work/setup.log" 2>&1 || { tail -n 30 "$work/setup.log" >&2; exit 1; }
  rm -rf "$root/tmp/mnemo-docker" "$root/etc/resolv.conf"
  tar -C "$root" -cf "$runtime_tar.tmp" . && mv "$runtime_tar.tmp" "$runtime_tar"
  rm -rf "$root"
  find "$cache" -maxdepth 1 -name 'runtime-*.tar' ! -name "runtime-$key.tar" -delete
  echo "check_image: runtime root cached ($(elapsed))"
fi

# 3. The image: the cached runtime root plus the staged files, and an empty store volume owned
# by the image's user (Kubernetes: fsGroup).
mkdir -p "$work/root" "$work/store"
tar -C "$work/root" -xf "$runtime_tar"
"$docker_dir/stage.sh" "$build" "$work/root"
chown "$user" "$work/store"
chmod 0750 "$work/store"
[ -d "$work/root$volume" ] || { echo "check_image: the image has no $volume" >&2; exit 1; }
printf '%s\n' "${run_env[@]}" >"$work/env"
echo "== image: $(realpath --relative-to="$src" "$dockerfile") with $(realpath --relative-to="$src" "$build") ($(elapsed) so far)"

# 4. Run it. Interrupted, the run is stopped (its trap kills the server and unmounts).
unshare --mount --net --propagation private "$0" --in-namespace "$work" "$build" "$user" \
  "$volume" "$grpc_port" "$metrics_port" "$work/env" "${entrypoint[@]}" &
runner=$!
trap 'kill -TERM "$runner" 2>/dev/null || true' EXIT
wait "$runner"
trap - EXIT

# 5. The store volume holds the durable session, written as the image's user.
if [ -z "$(find "$work/store" -type f -print -quit)" ]; then
  echo "check_image: the durable session is not in the store volume" >&2
  exit 1
fi
if [ -n "$(find "$work/store" ! -user "${user%%:*}" -print -quit)" ]; then
  echo "check_image: files in the store volume not owned by ${user%%:*}:" >&2
  find "$work/store" ! -user "${user%%:*}" >&2
  exit 1
fi
echo "check_image: store volume: $(find "$work/store" -type f | wc -l) files, owned by ${user%%:*}"
echo "== image: ok ($(elapsed))"
