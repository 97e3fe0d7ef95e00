#!/usr/bin/env bash
# One command for a machine with a GPU: build with CUDA, run every GPU test
# and the GPU benchmarks, then print a summary.  On a machine without a GPU
# the GPU tests report "skipped" and the benchmarks are left out.
#
#   scripts/gpu-check.sh [BUILD_DIR]     (default build-gpu)
#
# It builds for sm_90 (H100 and H200, the device tool's machines).  The
# device machine has nvcc, cuBLAS, NCCL and CMake but not OpenBLAS or
# jansson, and reaches no package registry: run scripts/gpu-prepare.sh here
# first and carry .gpu-deps with the call; this script then builds against
# it, without jemalloc and MPI (no GPU check uses them).  The GPU tests:
#   cuda_probe         a kernel runs at all
#   test_cuda_device   CUDA devices on the runtime: stream waits on events
#   test_cuda_gpt      embedding, attention, dropout against the CPU kernels
#   test_cuda_kernels  linear, GELU, LayerNorm, residual, cross-entropy,
#                      SGD, AdamW against the CPU kernels
#   test_cuda_train    the resmlp trainer on 1, 2, 4 logical devices of
#                      cuda:0 against the CPU trainer, CUDA graphs, a CUDA
#                      error in a task, out of GPU memory
#   cuda_cli           baton-train --devices cuda:... against cpu:...
# The benchmarks (JSON lines in BUILD_DIR/gpu-bench.jsonl, and under $OUT
# when the device tool sets it): baton-bench --backend cuda on 1 and 4
# logical devices (host overhead per task, idle gaps, CUDA graphs) and the
# resmlp trainer L=8 H=1024 N=4096 (kernel share of the step).
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-gpu}
start=$(date +%s)

if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "gpu-check: no nvcc (install the CUDA toolkit, or add /usr/local/cuda/bin to PATH)" >&2
  exit 2
fi
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  2>/dev/null | sed 's/^/gpu-check: GPU /' || echo "gpu-check: nvidia-smi found no GPU"

extra=()
if [ -d .gpu-deps/usr ]; then
  deps=$PWD/.gpu-deps/usr
  export CMAKE_PREFIX_PATH=$deps${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export LD_LIBRARY_PATH=$deps/lib/x86_64-linux-gnu:$deps/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  extra=(-DBATON_JEMALLOC=OFF -DBATON_MPI=OFF)
  echo "gpu-check: using the packages carried in .gpu-deps"
fi
mkdir -p "$dir"
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DBATON_CUDA_ARCHITECTURES=90 \
  "${extra[@]}" >"$dir.configure.log" 2>&1 || { tail -20 "$dir.configure.log"; exit 1; }
cmake --build "$dir" -j "$(nproc)" --target cuda_probe test_cuda_gpt test_cuda_device \
  test_cuda_kernels test_cuda_train baton-train baton-bench \
  >"$dir.build.log" 2>&1 || { tail -40 "$dir.build.log"; exit 1; }
echo "gpu-check: built in $(( $(date +%s) - start )) s"

(cd "$dir" && ctest --output-on-failure -R 'cuda' 2>&1) | tee "$dir.ctest.log"
status=${PIPESTATUS[0]}
skipped=$(grep -c '\*\*\*Skipped' "$dir.ctest.log" || true)

bench=$dir/gpu-bench.jsonl
: >"$bench"
if [ "$skipped" -eq 0 ]; then
  b=$dir/bench/baton-bench
  for args in \
    "--devices 1 --microbatches 8 --unit-us 20" \
    "--devices 4 --microbatches 8 --unit-us 20 --schedule 1f1b" \
    "--devices 4 --microbatches 8 --unit-us 20 --schedule zb-h1 --cost F=1,B=1,W=1" \
    "--model resmlp --devices 1 --layers 8 --hidden 1024 --batch 4096 --microbatches 4 --repeat 10" \
    "--model resmlp --devices cuda:0,cuda:0 --layers 8 --hidden 1024 --batch 4096 --microbatches 4 --repeat 10"; do
    # shellcheck disable=SC2086
    timeout 120 "$b" --backend cuda $args --json >>"$bench" 2>"$dir.bench.err" ||
      { echo "gpu-check: baton-bench --backend cuda $args failed:"; tail -5 "$dir.bench.err"; status=1; }
  done
  [ -n "${OUT:-}" ] && cp "$bench" "$dir"/*.log "$OUT"/ 2>/dev/null
  echo
  echo "gpu-check: benchmarks (baton-bench --backend cuda ... --json):"
  python3 - "$bench" <<'PY' || cat "$bench"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
    if "model" in r:
        share = r["kernel_share"]
        print(f"  resmlp L={r['layers']} H={r['hidden']} N={r['batch']} on {r['devices']} dev: "
              f"step {r['step_ms']:.2f} ms, kernels "
              f"{'n/a' if share is None else f'{100 * share:.1f}%'}, "
              f"pipeline {f(r['overhead_ms'])} ms, CUDA graph {r['graph_step_ms']:.2f} ms")
    else:
        h, g = r["host_us"], r["gap_us"]
        print(f"  {r['schedule']} p={r['devices']} m={r['microbatches']} ({r['tasks']} tasks): "
              f"step {r['step_ms']:.3f} ms (sim {r['sim_step_ms']:.3f}), host/task "
              f"{h['mean']:.2f} us (max {h['max']:.2f}), gap {f(g['mean'])} us "
              f"(max {f(g['max'])}), graph {r['graph_step_ms']:.3f} ms, "
              f"{r['graph_host_us']:.3f} us/task")
PY
fi
echo
echo "gpu-check: $(grep -E 'tests passed' "$dir.ctest.log" || echo 'no summary')"
if [ "$skipped" -gt 0 ]; then
  echo "gpu-check: $skipped GPU test(s) skipped: no usable CUDA device here"
fi
echo "gpu-check: $(( $(date +%s) - start )) s"
exit "$status"
