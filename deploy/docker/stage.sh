#!/usr/bin/env bash
# Lays out everything the runtime image holds beyond its Debian packages under DEST, as it will
# be in the image (the Dockerfiles' build stage runs it and the runtime stage copies DEST to /;
# tools/check_image.sh runs it into its test root):
#   /opt/mnemo/bin/     mnemo-server, mnemo-client, libmnemo_sentencepiece.so (loaded from the
#                       executable's directory)
#   /opt/mnemo/models/  the embedded default models (models/*/)
#   /opt/mnemo/lib/     shared libraries the binaries load that no Debian package provides (the
#                       CUDA runtime and cuBLAS of a CUDA build; empty otherwise)
# Fails when a binary needs a library of a Debian package that runtime-packages.txt lacks.
#   deploy/docker/stage.sh BUILD_DIR DEST
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: deploy/docker/stage.sh BUILD_DIR DEST" >&2; exit 2; }
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$1
dest=$2
packages=$src/deploy/docker/runtime-packages.txt

bin=$dest/opt/mnemo/bin
install -d -m 0755 "$bin" "$dest/opt/mnemo/models" "$dest/opt/mnemo/lib"
install -m 0755 "$build/mnemo-server" "$build/mnemo-client" "$bin/"
install -m 0644 "$build/libmnemo_sentencepiece.so" "$bin/"
for model in "$src"/models/*/; do
  cp -R "$model" "$dest/opt/mnemo/models/"
done
chmod -R u=rwX,go=rX "$dest/opt/mnemo"

# Every library the binaries load, resolved here (ldd fails the build on one not found).
libs=$(for f in "$bin"/*; do
         out=$(ldd "$f")
         if grep -q 'not found' <<<"$out"; then
           echo "stage: $f: libraries not found:" >&2
           grep 'not found' <<<"$out" >&2
           exit 1
         fi
         awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$out"
       done | sort -u)
# Their Debian packages, asked in one dpkg-query (Debian's merged /usr records some libraries
# under /lib, some under /usr/lib): "pkg:arch[, pkg2:arch]: path" per owned path.
declare -A owner
candidates=()
for lib in $libs; do
  candidates+=("$lib" "/usr$lib" "$(readlink -f "$lib")")
done
while IFS= read -r line; do
  owner[${line##*: }]=${line%%:*}
done < <(dpkg-query -S "${candidates[@]}" 2>/dev/null | grep -v '^diversion ')
missing=()
for lib in $libs; do
  pkg=${owner[$lib]:-${owner[/usr$lib]:-${owner[$(readlink -f "$lib")]:-}}}
  if [ -n "$pkg" ]; then
    grep -qx "$pkg" "$packages" || missing+=("$pkg ($lib)")
  else
    # A hard link where DEST shares the library's file system (hundreds of MB for cuBLASLt).
    target=$dest/opt/mnemo/lib/$(basename "$lib")
    ln -f "$(readlink -f "$lib")" "$target" 2>/dev/null ||
      install -m 0644 "$(readlink -f "$lib")" "$target"
  fi
done
if ((${#missing[@]})); then
  echo "stage: packages missing from deploy/docker/runtime-packages.txt:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi
