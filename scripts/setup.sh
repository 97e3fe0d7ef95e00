#!/usr/bin/env bash
# One command for a fresh machine: install what is missing, build, and run
# the demo (the simulator comparing the built-in schedules) on the default
# CPU backend.  The picture lands in build/demo.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$(nproc)"

./build/bench/baton-bench --schedule gpipe,1f1b,interleaved,zb-h1,zb-h2,auto \
  --devices 4 --microbatches 8 --svg build/demo.svg --trace build/demo.trace.json
echo
echo "demo: timeline picture in build/demo.svg, Chrome trace in build/demo.trace.json"
