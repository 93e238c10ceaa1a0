#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite with ctest.
# GPU tests skip themselves when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
./scripts/build.sh
cd "${BUILD_DIR:-build}"
# ctest runs two tests at once and each uses every core through OpenMP: waiting threads sleep
# instead of spinning, or the oversubscribed cores spend their time in barriers.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ctest --output-on-failure -j"$(nproc)" --timeout 900
