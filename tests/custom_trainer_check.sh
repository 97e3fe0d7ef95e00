#!/usr/bin/env bash
# The out-of-tree example trainer, built against the *installed* baton both
# ways (find_package and the Makefile with pkg-config), trains to the same
# loss curve as its own unpipelined loop with every kind of schedule: the
# built-ins, a plugin .so and a CSV plan; a failing callback ends its step
# cleanly, naming stage and microbatch, and the next step runs.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/examples/custom_trainer" -B "$tmp/cmake" \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cmake" >/dev/null
pcdir=$(dirname "$(find "$tmp/prefix" -name baton.pc | head -n1)")
PKG_CONFIG_PATH="$pcdir" make -s -C "$src/examples/custom_trainer" \
  OUT="$tmp/custom_trainer_pc" >/dev/null

plugin=$(find "$tmp/prefix" -name looped_bfs.so | head -n1)
"$tmp/prefix/bin/baton-bench" --schedule 1f1b --devices 2 --microbatches 4 \
  --dump-plan "$tmp/plan.csv" >/dev/null

run() { # binary, args...: prints the loss curve, fails on a mismatch
  local bin=$1; shift
  "$bin" --steps 8 "$@" > "$tmp/out.txt" || { cat "$tmp/out.txt"; return 1; }
  grep '^step' "$tmp/out.txt" | awk '{print $4}'
}

# Same model (2 stages), every kind of schedule: the same loss curve.
ref2=$(run "$tmp/cmake/custom_trainer" --schedule gpipe --devices 2 --microbatches 4)
# 4 stages: on 4 devices, or 2 devices with 2 virtual stages each.
ref4=$(run "$tmp/cmake/custom_trainer" --schedule gpipe --devices 4 --microbatches 4)
for bin in "$tmp/cmake/custom_trainer" "$tmp/custom_trainer_pc"; do
  for args in "--schedule gpipe --devices 2" "--schedule 1f1b --devices 2" \
              "--schedule zb-h1 --devices 2" "--schedule zb-h2 --devices 2" \
              "--schedule auto --devices 2" "--schedule $tmp/plan.csv --devices 2" \
              "--schedule 1f1b --devices 4" "--schedule zb-h1 --devices 4" \
              "--schedule interleaved --devices 2 --virtual 2" \
              "--schedule $plugin --devices 2 --virtual 2"; do
    # shellcheck disable=SC2086
    got=$(run "$bin" $args --microbatches 4)
    case "$args" in
      *"--devices 2 --virtual 2"*|*"--devices 4"*) want=$ref4 ;;
      *) want=$ref2 ;;
    esac
    if [ "$got" != "$want" ]; then
      echo "custom_trainer $args: loss curve differs from gpipe's" >&2
      exit 1
    fi
  done
done
# More devices and microbatches: still equal to the reference (checked
# inside the trainer, exit status 1 otherwise).
run "$tmp/cmake/custom_trainer" --schedule zb-h1 --devices 4 --microbatches 8 >/dev/null
run "$tmp/cmake/custom_trainer" --schedule 1f1b --devices 3 --microbatches 2 >/dev/null

# A failing callback: the step ends with stage and microbatch named, the
# next steps run and still match the reference.
"$tmp/cmake/custom_trainer" --steps 4 --schedule 1f1b --devices 2 \
  --microbatches 4 --fail-at 2:1:3 > "$tmp/fail.txt"
grep -q 'step 2 failed: 1F3 on cpu:1: injected failure' "$tmp/fail.txt"
grep -q '^step  4' "$tmp/fail.txt"
echo "custom_trainer_check: ok"
