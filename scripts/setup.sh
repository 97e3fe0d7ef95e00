#!/usr/bin/env bash
# One command for a fresh machine: install what is missing, build, and run
# the demos: baton-train training a residual MLP on the 8x8 digits
# pipelined over two CPU devices, a short run of the GPT language model on
# Debian's fortunes (the full default run is in the README), then the
# simulator comparing the built-in schedules.  The picture lands in
# build/demo.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh --demo
if [ ! -f data/digits.safetensors ]; then
  python3 scripts/digits.py
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$(nproc)"

./build/apps/baton-train
echo

./build/apps/baton-train --model gpt --steps 300 --generate 120
echo

./build/bench/baton-bench --schedule gpipe,1f1b,interleaved,zb-h1,zb-h2,auto \
  --devices 4 --microbatches 8 --svg build/demo.svg --trace build/demo.trace.json
echo
echo "demo: timeline picture in build/demo.svg, Chrome trace in build/demo.trace.json"
