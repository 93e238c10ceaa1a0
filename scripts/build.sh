#!/usr/bin/env bash
# Configures and builds ltrain in ./build (Release). The CUDA backend is built when nvcc is found
# (at /usr/local/cuda/bin/nvcc or on PATH); everything else needs only the Debian packages that
# ./scripts/install_deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "[build] $BUILD_DIR/ltrain"
