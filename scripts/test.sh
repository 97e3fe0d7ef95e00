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

# The CUDA code compiles and links in the first build; the sanitizer builds
# leave it out (its tests skip without a GPU, and nvcc is the slow part).
run_suite build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_suite build-asan -DCMAKE_BUILD_TYPE=Debug "-DBATON_SANITIZE=address;undefined" \
  -DBATON_CUDA=OFF
run_suite build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATON_SANITIZE=thread \
  -DBATON_CUDA=OFF
