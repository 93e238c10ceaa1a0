#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite with ctest, twice:
#  1. ./build: the product build (CPU backend; the CUDA backend through nvcc when it is found).
#     GPU tests skip themselves when no GPU is present.
#  2. ./build-emu: the CUDA emulator build (-DLTRAIN_CUDA_EMU=ON, AddressSanitizer and UBSan):
#     the real kernels and CUDA backend compiled as host C++, every GPU test run on the CPU
#     (ctest label "emu"; tests/cuda_emu). Needs only the CUDA toolkit's headers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
./scripts/build.sh
# ctest runs two tests at once and each uses every core through OpenMP: waiting threads sleep
# instead of spinning, or the oversubscribed cores spend their time in barriers.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure -j"$(nproc)" --timeout 900)

EMU_DIR=${EMU_BUILD_DIR:-build-emu}
if [ ! -f /usr/local/cuda/include/cublasLt.h ] && [ -z "${CUDAToolkit_ROOT:-}" ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "[test] the CUDA emulator build needs the CUDA toolkit's headers (/usr/local/cuda/include)" >&2
    exit 1
  fi
  echo "[test] skipping the CUDA emulator build: no CUDA toolkit headers in /usr/local/cuda/include"
  exit 0
fi
start=$(date +%s)
BUILD_DIR="$EMU_DIR" ./scripts/build.sh -DLTRAIN_CUDA_EMU=ON
echo "[test] CUDA emulator build: $(( $(date +%s) - start )) s; its tests follow (ctest's total time last)"
cd "$EMU_DIR" && ctest --output-on-failure -j"$(nproc)" --timeout 900 -L emu
