#!/usr/bin/env bash
# Installs the Debian packages ltrain builds and tests with, only those that are missing.
# The CUDA toolkit (nvcc, cuBLAS, NCCL) is expected at /usr/local/cuda and is optional.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libopenblas-openmp-dev       # BLAS for the CPU backend (OpenMP build: one thread pool with ours)
  libsentencepiece-dev sentencepiece
  nlohmann-json3-dev libyaml-cpp-dev
  libgtest-dev
  libopenmpi-dev openmpi-bin
  slurm-wlm munge              # tests/scripts/test_slurm_cli.sh starts a one-node Slurm
  python3-torch python3-numpy  # the independent PyTorch reference in the tests
  python3-matplotlib python3-yaml  # scripts/plot_metrics.py, scripts/bench_pytorch.py
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] all ${#pkgs[@]} packages present"
  exit 0
fi
echo "[deps] installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[deps] done"
