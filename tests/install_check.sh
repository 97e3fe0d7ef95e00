#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds a consumer from
# outside the tree both ways (find_package and pkg-config) and runs it.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/tests/consumer" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cmake" >/dev/null
"$tmp/cmake/consumer_shared"
"$tmp/cmake/consumer_static"

libdir=$(dirname "$(find "$tmp/prefix" -name baton.pc | head -n1)")
export PKG_CONFIG_PATH="$libdir"
cc -std=c11 $(pkg-config --cflags baton) "$src/tests/consumer/main.c" \
  $(pkg-config --libs baton) -Wl,-rpath,"$tmp/prefix/lib" -o "$tmp/consumer_pc"
"$tmp/consumer_pc"
want=$(grep -m1 -o 'project(baton VERSION [0-9.]*' "$src/CMakeLists.txt" | awk '{print $3}')
test "$(pkg-config --modversion baton)" = "$want"

# The shared library exports the public API only.
so=$(find "$tmp/prefix" -name 'libbaton.so.*.*' | head -n1)
if nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^bt_' | grep -v '^_' | grep .; then
  echo "install_check: libbaton exports symbols outside the bt_ API" >&2
  exit 1
fi
if nm -D --defined-only "$so" | awk '{print $3}' | grep '^bt__'; then
  echo "install_check: libbaton exports internal bt__ symbols" >&2
  exit 1
fi
echo "install_check: ok"
