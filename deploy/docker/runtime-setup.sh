#!/bin/sh
# The runtime image's one setup step, run as root inside a fresh Debian bookworm root: by the
# Dockerfiles' runtime stage (debian:bookworm-slim) and by tools/check_image.sh (a debootstrap
# root), so the two cannot drift apart. Installs exactly runtime-packages.txt (no recommends),
# creates the non-root user mnemo (uid/gid 10001) and the session store volume's mount point,
# owned by that user. Idempotent.
set -eu
here=$(dirname "$0")
packages=$(grep -v -e '^#' -e '^[[:space:]]*$' "$here/runtime-packages.txt" | tr '\n' ' ')

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086  # one word per package
apt-get install -y -q --no-install-recommends $packages
apt-get clean
rm -rf /var/lib/apt/lists/*

getent group mnemo >/dev/null || groupadd --system --gid 10001 mnemo
getent passwd mnemo >/dev/null ||
  useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin mnemo
install -d -o 10001 -g 10001 -m 0750 /var/lib/mnemo/store
