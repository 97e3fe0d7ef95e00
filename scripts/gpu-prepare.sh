#!/usr/bin/env bash
# Run here, before a session's first call to the GPU machine: unpacks the
# Debian packages the build needs and that machine lacks (OpenBLAS and its
# Fortran runtime, jansson) into .gpu-deps/ (ignored by git), for the call
# to carry (`carry: [".gpu-deps"]`).  scripts/gpu-check.sh finds them there
# and builds without jemalloc and MPI, which the GPU checks do not use.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-deps
pkgs=(libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread
  libjansson-dev libjansson4 libgfortran5)
rm -rf "$dest"
mkdir -p "$dest/debs"
(cd "$dest/debs" && apt-get download "${pkgs[@]}" >/dev/null 2>&1)
for f in "$dest"/debs/*.deb; do
  dpkg -x "$f" "$dest"
done
# Static archives and LAPACK are not linked: the carry limit is 64 MiB.
rm -rf "$dest/debs" "$dest/usr/share"
find "$dest" \( -name '*.a' -o -name 'liblapack*' \) -exec rm -f {} +
echo "gpu-prepare: $(du -sh "$dest" | cut -f1) in $dest; carry it with the call"
