#!/usr/bin/env bash
# One command for a machine with a GPU: build with CUDA and run every GPU
# test, then print a summary.  On a machine without a GPU the GPU tests
# report "skipped" and the script says so.
#
#   scripts/gpu-check.sh [BUILD_DIR]     (default build-gpu)
#
# It builds for sm_90 (H100 and H200, the device tool's machines).  The
# device machine has nvcc, cuBLAS and NCCL but not ck, jemalloc, OpenBLAS
# or MPI, and reaches no package registry: build the CPU parts here first
# and carry the build folder (or the unpacked Debian packages), as
# /work/.library/device/METHOD.md describes.  The GPU tests:
#   cuda_probe         a kernel runs at all
#   test_cuda_device   CUDA devices on the runtime: stream waits on events
#   test_cuda_gpt      embedding, attention, dropout against the CPU kernels
#   test_cuda_kernels  linear, GELU, LayerNorm, residual, cross-entropy,
#                      SGD, AdamW against the CPU kernels
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

cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DBATON_CUDA_ARCHITECTURES=90 \
  >"$dir.configure.log" 2>&1 || { tail -20 "$dir.configure.log"; exit 1; }
cmake --build "$dir" -j "$(nproc)" --target cuda_probe test_cuda_gpt test_cuda_device \
  test_cuda_kernels >"$dir.build.log" 2>&1 || { tail -40 "$dir.build.log"; exit 1; }

(cd "$dir" && ctest --output-on-failure -R 'cuda' 2>&1) | tee "$dir.ctest.log"
status=${PIPESTATUS[0]}
skipped=$(grep -c '\*\*\*Skipped' "$dir.ctest.log" || true)
echo
echo "gpu-check: $(grep -E 'tests passed' "$dir.ctest.log" || echo 'no summary')"
if [ "$skipped" -gt 0 ]; then
  echo "gpu-check: $skipped GPU test(s) skipped: no usable CUDA device here"
fi
echo "gpu-check: $(( $(date +%s) - start )) s"
exit "$status"
