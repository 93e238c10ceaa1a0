// Device helpers shared by the kernels: element conversions, 16-byte vector loads and stores,
// warp and block reductions. Device code only (plus the host-side alignment test).
//
// Conventions for every kernel in kernels/:
//  - element types are float or __nv_bfloat16 (bf16); arithmetic is always fp32;
//  - a kernel takes 16-byte vector accesses when the row length and the pointers allow it
//    (can_vectorize), with a scalar path for the rest, so odd shapes are handled, not refused;
//  - reductions use a fixed order (no atomics), so results are bitwise reproducible.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ltrain::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// N elements of T in one aligned access (N * sizeof(T) is 4, 8 or 16 bytes).
template <class T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};

// Elements per 16-byte access.
template <class T>
constexpr int kVec = 16 / sizeof(T);

template <class T, int N>
__device__ __forceinline__ Packed<T, N> load_packed(const T* p) {
  return *reinterpret_cast<const Packed<T, N>*>(p);
}
template <class T, int N>
__device__ __forceinline__ void store_packed(T* p, const Packed<T, N>& x) {
  *reinterpret_cast<Packed<T, N>*>(p) = x;
}

// True when every pointer is 16-byte aligned and `row` (elements per row) keeps the next rows
// aligned too, so 16-byte accesses are legal everywhere.
template <class T>
inline bool can_vectorize(int64_t row, std::initializer_list<const void*> ptrs) {
  if (row % kVec<T> != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the block, returned to every thread. `scratch` holds 32 values; blockDim.x is a
// multiple of 32. Begins with a barrier, so back-to-back calls may share the scratch.
template <class S>
__device__ __forceinline__ S block_sum(S x, S* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : S(0);
  return warp_sum(x);
}

__device__ __forceinline__ float block_max(float x, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(x);
}

// Sum over the block with one barrier, for a loop that reduces once per iteration (a row):
// `scratch` holds two sets of 32 values used alternately by the iteration's `parity`, so the
// next iteration's writes cannot overtake this one's reads (they are a barrier apart). Every
// thread adds the warps' partials in the same order, so all of them get the same value.
template <class S>
__device__ __forceinline__ S block_sum_alternating(S x, S (*scratch)[32], int parity) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  x = warp_sum(x);
  if (lane == 0) scratch[parity & 1][warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[parity & 1][lane] : S(0);
  return warp_sum(x);
}

// N floats (N a multiple of 4) to or from 16-byte aligned memory, in 16-byte accesses.
template <int N>
__device__ __forceinline__ void store_floats(float* p, const float (&x)[N]) {
  static_assert(N % 4 == 0, "whole 16-byte pieces");
#pragma unroll
  for (int i = 0; i < N; i += 4) {
    Packed<float, 4> v;
#pragma unroll
    for (int j = 0; j < 4; ++j) v.v[j] = x[i + j];
    store_packed<float, 4>(p + i, v);
  }
}
template <int N>
__device__ __forceinline__ void load_floats(float (&x)[N], const float* p) {
  static_assert(N % 4 == 0, "whole 16-byte pieces");
#pragma unroll
  for (int i = 0; i < N; i += 4) {
    const Packed<float, 4> v = load_packed<float, 4>(p + i);
#pragma unroll
    for (int j = 0; j < 4; ++j) x[i + j] = v.v[j];
  }
}

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

// Design sizes of the memory-bound kernels (kDesignSMs, kFillBlocks): include/ltrain/kernels/scratch.h.

}  // namespace ltrain::cuda
