#!/usr/bin/env bash
# Runs the packed CUDA tests on a GPU machine. From the repository root, after
# scripts/gpu_pack.sh on the build machine and with .devpack carried over:
#   scripts/gpu_check.sh [gtest filter]        (default: all tests of the CUDA binaries)
# Prints nvidia-smi, runs test_cuda_ops and test_cuda_model (and, with ALL=1, every packed test
# binary), keeps each log in ${LOG_DIR:-.devpack/logs}, and ends with a pass/fail table.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=.devpack
LOG_DIR=${LOG_DIR:-$PACK/logs}
FILTER=${1:-*}
mkdir -p "$LOG_DIR"

if [[ -f "$PACK/devpack.tar.xz" && ! -d "$PACK/bin" ]]; then
  tar -C "$PACK" -xJf "$PACK/devpack.tar.xz" || { echo "[gpu_check] cannot unpack $PACK/devpack.tar.xz"; exit 1; }
fi
[[ -d "$PACK/bin" ]] || { echo "[gpu_check] no $PACK/bin: run scripts/gpu_pack.sh on the build machine"; exit 1; }

nvidia-smi || echo "[gpu_check] nvidia-smi failed: is there a GPU?"
# Our libraries first, then CUDA's (cudart, cuBLASLt) from the image's toolkit.
export LD_LIBRARY_PATH="$PWD/$PACK/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

# The test binaries were built elsewhere: point the compiled-in source path at this checkout.
src=$(cat "$PACK/source_dir" 2>/dev/null || true)
if [[ -n "$src" && "$src" != "$PWD" && ! -e "$src" ]]; then
  mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src" 2>/dev/null || true
fi

bins=(test_cuda_ops test_cuda_model)
if [[ "${ALL:-0}" == 1 ]]; then
  bins=()
  for f in "$PACK"/bin/test_*; do bins+=("$(basename "$f")"); done
fi

missing=$(for b in "${bins[@]}"; do ldd "$PACK/bin/$b" | grep "not found"; done | sort -u)
if [[ -n "$missing" ]]; then
  echo "[gpu_check] missing shared libraries:"
  echo "$missing"
fi

declare -A result
for b in "${bins[@]}"; do
  echo "=================== $b ==================="
  start=$(date +%s)
  "$PACK/bin/$b" --gtest_filter="$FILTER" --gtest_color=no 2>&1 | tee "$LOG_DIR/$b.log"
  rc=${PIPESTATUS[0]}
  secs=$(( $(date +%s) - start ))
  passed=$(grep -c '^\[       OK \]' "$LOG_DIR/$b.log")
  # Count the lines printed as each test ends ("... (N ms)"), not gtest's closing lists.
  failed=$(grep -cE '^\[  FAILED  \] [A-Za-z].*\([0-9]+ ms\)$' "$LOG_DIR/$b.log")
  skipped=$(grep -cE '^\[  SKIPPED \] [A-Za-z].*\([0-9]+ ms\)$' "$LOG_DIR/$b.log")
  result[$b]="rc=$rc passed=$passed failed=$failed skipped=$skipped ${secs}s"
done

echo
echo "=================== summary ==================="
printf '%-20s %s\n' binary result
status=0
for b in "${bins[@]}"; do
  printf '%-20s %s\n' "$b" "${result[$b]}"
  [[ "${result[$b]}" == rc=0* ]] || status=1
done
grep -h '^\[  FAILED  \] [A-Za-z]' "$LOG_DIR"/*.log 2>/dev/null | sort -u
exit $status
