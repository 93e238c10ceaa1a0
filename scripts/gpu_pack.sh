#!/usr/bin/env bash
# Packs what a GPU machine needs to run the tests built here into .devpack/ (ignored by git):
#   .devpack/bin/  ltrain and every tests/test_* binary of the build, stripped;
#   .devpack/lib/  the shared libraries they link that such a machine may lack (OpenBLAS's OpenMP
#                  build, libgomp, sentencepiece, yaml-cpp, gtest, gfortran, and libstdc++ and
#                  libgcc_s in case its own are older), found with ldd.
# Left out: glibc (libc, libm, libpthread, libdl, librt, ld-linux), the driver (libcuda,
# libnvidia-*), and CUDA's own libraries (cudart, cuBLAS/cuBLASLt, NCCL), which the GPU image has
# in the same major version (CUDA 13) and which are far too large to carry (cuBLASLt is ~0.5 GB).
# bin/ and lib/ go into one .devpack/devpack.tar.xz (OpenBLAS's all-CPU build alone is 35 MB
# uncompressed, ~9 MB packed): a device call carries at most 64 MiB with the whole source tree.
# The GPU machine's copy of the repository gets .devpack when the call names it in `carry`;
# scripts/gpu_check.sh unpacks and runs it there.
#
# Usage: scripts/gpu_pack.sh [BUILD_DIR]     (default build-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build-cuda}
PACK=.devpack
[[ -x "$BUILD_DIR/ltrain" ]] || { echo "gpu_pack: no $BUILD_DIR/ltrain; build first (cmake --build $BUILD_DIR)" >&2; exit 1; }

rm -rf "$PACK"
mkdir -p "$PACK/bin" "$PACK/lib"
bins=("$BUILD_DIR/ltrain")
for f in "$BUILD_DIR"/tests/test_*; do
  [[ -f "$f" && -x "$f" ]] && bins+=("$f")
done
for b in "${bins[@]}"; do
  cp "$b" "$PACK/bin/"
  strip --strip-unneeded "$PACK/bin/$(basename "$b")"
done

skip='^(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^ ]*|linux-vdso|libcuda|libnvidia[^ ]*|libcudart|libcublas|libcublasLt|libnccl)\.so'
for b in "${bins[@]}"; do
  ldd "$b" | awk '/=> \// { print $1, $3 }'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$path" "$PACK/lib/$name"
  strip --strip-unneeded "$PACK/lib/$name" 2>/dev/null || true
done
# The tests locate fixtures under the source tree (LTRAIN_TEST_DATA), which the device copy of the
# repository has at the same relative place; the path compiled in is this machine's.
echo "$(cd "$BUILD_DIR" && pwd)" > "$PACK/build_dir"
echo "$(pwd)" > "$PACK/source_dir"

nlibs=$(ls "$PACK/lib" | wc -l)
ls -1 "$PACK/lib" | sed 's/^/  lib: /'
tar -C "$PACK" -cf - bin lib | xz -T2 -6 > "$PACK/devpack.tar.xz"
rm -rf "$PACK/bin" "$PACK/lib"
size=$(du -sm "$PACK" | cut -f1)
echo "[gpu_pack] $PACK/devpack.tar.xz: ${#bins[@]} binaries, $nlibs libraries, ${size} MiB"
if (( size >= 40 )); then
  echo "[gpu_pack] $PACK is ${size} MiB, too much to carry beside the source tree (64 MiB a call)" >&2
  exit 1
fi
