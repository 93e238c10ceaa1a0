// Shared by attention_forward.cu and attention_backward.cu: tile constants, fragment loads
// (plain shared loads, and ldmatrix), cp.async tile loads and the launch helpers. The algorithm is described in attention_forward.cu and attention_backward.cu.
#pragma once
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "common/mma.cuh"
#include "kernels.h"

namespace ltrain::cuda::attention_detail {


constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 16;
constexpr int kTile = kWarps * kRowsPerWarp;  // 64 rows of queries (forward, dQ) or keys (dK/dV)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory row stride in elements: 16 bytes of padding put the 8 rows a fragment load
// touches on different banks.
template <int HD>
constexpr int kStride = HD + 8;

// Two floats as bf16x2, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Two consecutive bf16 of one shared-memory row.
__device__ __forceinline__ uint32_t lds_pair(const bf16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// Two bf16 of one column in consecutive rows (a B fragment of a row-major k x n operand).
__device__ __forceinline__ uint32_t lds_column_pair(const bf16* p, int stride) {
  const uint16_t lo = *reinterpret_cast<const uint16_t*>(p);
  const uint16_t hi = *reinterpret_cast<const uint16_t*>(p + stride);
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// A fragment (16 rows x 16 columns at column k0) of a row-major shared-memory tile.
template <int S>
__device__ __forceinline__ void lds_a_fragment(uint32_t a[4], const bf16* tile, int row0, int k0,
                                               int g, int t) {
  const bf16* p = tile + (row0 + g) * S + k0 + 2 * t;
  a[0] = lds_pair(p);
  a[1] = lds_pair(p + 8 * S);
  a[2] = lds_pair(p + 8);
  a[3] = lds_pair(p + 8 * S + 8);
}

// The A fragment for k columns 16kk..16kk+15 from two fp32 C tiles 2kk and 2kk+1.
__device__ __forceinline__ void c_tiles_to_a_fragment(uint32_t a[4], const float c0[4],
                                                      const float c1[4]) {
  a[0] = pack_bf16x2(c0[0], c0[1]);
  a[1] = pack_bf16x2(c0[2], c0[3]);
  a[2] = pack_bf16x2(c1[0], c1[1]);
  a[3] = pack_bf16x2(c1[2], c1[3]);
}

// Copies rows [0, valid) of a (R, HD) tile with global row stride ld into shared memory and
// zero-fills rows [valid, R), 16 bytes per thread per step.
template <int R, int HD>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int64_t ld, int valid) {
  constexpr int kChunks = HD / 8;
  for (int i = threadIdx.x; i < R * kChunks; i += blockDim.x) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(src + r * ld + c);
    *reinterpret_cast<uint4*>(tile + r * kStride<HD> + c) = v;
  }
}

// ---- ldmatrix fragments (common/mma.cuh) ---------------------------------------------------------
// Tiles are row-major in shared memory with row stride S elements (16-byte aligned rows); every
// lane of the warp calls these together.

// The A fragment of rows row0..row0+15, k k0..k0+15.
template <int S>
__device__ __forceinline__ void ldsm_a_fragment(uint32_t a[4], const bf16* tile, int row0, int k0, int lane) {
  ldmatrix_x4(a, tile + (row0 + lane % 16) * S + k0 + 8 * (lane / 16));
}

// B fragments of an n-major tile (row = n, column = k: K as the k x n operand of Q K^T): {b0, b1}
// of n-tile n0..n0+7 in b[0], b[1] and of n0+8..n0+15 in b[2], b[3], for k k0..k0+15.
template <int S>
__device__ __forceinline__ void ldsm_b_fragments_nk(uint32_t b[4], const bf16* tile, int n0, int k0, int lane) {
  ldmatrix_x4(b, tile + (n0 + lane % 8 + 8 * (lane / 16)) * S + k0 + 8 * (lane / 8 % 2));
}

// B fragments of a k-major tile (row = k, column = n: V as the k x n operand of P V), through
// ldmatrix .trans: {b0, b1} of n-tile n0 in b[0], b[1] and of n0+8 in b[2], b[3], for k k0..k0+15.
template <int S>
__device__ __forceinline__ void ldsm_b_fragments_kn(uint32_t b[4], const bf16* tile, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, tile + (k0 + lane % 16) * S + n0 + 8 * (lane / 16));
}

// ---- asynchronous tile loads (cp.async, common/mma.cuh) ----------------------------------------
// Issues the copies of rows [0, valid) (valid >= 1) of an (R, HD) tile with global row stride ld
// into shared memory (row stride kStride<HD>) and zero-fills rows [valid, R) (src-size 0, with
// row 0 as the never-read source address): 16 bytes per copy, NT threads, consecutive threads
// on consecutive 16 bytes of a row. The caller commits and waits (cp_async_commit, cp_async_wait).
// The loop is kept rolled: unrolled, the compiler holds every copy's addresses in registers
// across the caller's main loop (the forward at HD 64 then spills under its 128-register bound).
template <int R, int HD, int NT>
__device__ __forceinline__ void cp_async_tile(bf16* tile, const bf16* src, int64_t ld, int valid) {
  constexpr int kChunks = HD / 8;
  static_assert(R * kChunks % NT == 0, "the tile's 16-byte chunks must divide among the threads");
#pragma unroll 1
  for (int i = 0; i < R * kChunks / NT; ++i) {
    const int c = int(threadIdx.x) + i * NT;
    const int r = c / kChunks, col = c % kChunks * 8;
    const bool ok = r < valid;
    cp_async_16_zfill(tile + r * kStride<HD> + col, src + (ok ? r : 0) * ld + col, ok ? 16 : 0);
  }
}

// Sets the kernel's dynamic shared memory limit (needed above 48 KiB) and launches it with
// `threads` threads per block.
template <class Kernel, class... Args>
inline void launch_with_smem_threads(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream,
                                     Args... args) {
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch_kernel(kernel, grid, threads, smem, stream, args...);
  CUDA_CHECK_LAUNCH();
}

// The same with kThreads threads per block.
template <class Kernel, class... Args>
inline void launch_with_smem(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, Args... args) {
  launch_with_smem_threads(kernel, grid, kThreads, smem, stream, args...);
}

inline void check_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    LTRAIN_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "attention tensors must be 16-byte aligned");
}

}  // namespace ltrain::cuda::attention_detail
