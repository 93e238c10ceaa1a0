// Shared by attention_forward.cu and attention_backward.cu: tile constants, fragment loads and
// the launch helper. The algorithm is described in attention_forward.cu and attention_backward.cu.
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

// Sets the kernel's dynamic shared memory limit (needed above 48 KiB) and launches it.
template <class Kernel, class... Args>
inline void launch_with_smem(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, Args... args) {
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch_kernel(kernel, grid, kThreads, smem, stream, args...);
  CUDA_CHECK_LAUNCH();
}

inline void check_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    LTRAIN_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "attention tensors must be 16-byte aligned");
}

}  // namespace ltrain::cuda::attention_detail
