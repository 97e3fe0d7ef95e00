#!/usr/bin/env bash
# One command for the whole test suite: install what is missing, build with
# warnings as errors, run every test; then again under ASan+UBSan, and under
# ThreadSanitizer (which must report nothing: the runtime is lock-free).
# GPU tests exit 77 and are reported as skipped on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
jobs=$(nproc)

run_suite() {
  local dir=$1; shift
  cmake -S . -B "$dir" -DBATON_WERROR=ON "$@"
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && ctest --output-on-failure -j "$jobs")
}

run_suite build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_suite build-asan -DCMAKE_BUILD_TYPE=Debug "-DBATON_SANITIZE=address;undefined"
run_suite build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATON_SANITIZE=thread
