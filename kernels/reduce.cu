// Reductions and conversions over whole tensors:
//   sum_squares: the global gradient norm's sum of squares, in two fixed-order stages (each thread
//                sums its grid-strided 16-byte vectors in fp32, blocks reduce in double into one
//                partial per block, a last kernel adds the partials in order), so it is
//                deterministic: the grid depends on n only, never on the device;
//   convert:     elementwise dtype conversion (fp32 master weights <-> bf16 compute weights).
// Memory-bound, so: 16-byte accesses (8 elements per step for convert, so that both sides are
// whole 16-byte vectors), four independent loads in flight per thread, and grids that fill 132
// SMs (sum of squares: up to kSumSquaresBlocks = 1024 blocks of 256 threads, 7.8 per SM;
// convert: up to 4096 blocks). A pointer that is not 16-byte aligned takes the scalar kernels.
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

#include <algorithm>

namespace ltrain::cuda {
namespace {

constexpr int kThreads = 256, kUnroll = 4;

// Thread i adds vectors i, i + stride, ... (VEC elements each, in order), then the scalar tail
// elements n / VEC * VEC + i, + stride, ...
template <class T, int VEC>
__global__ void __launch_bounds__(kThreads)
    sum_squares_grid_stride(double* partials, const T* x, int64_t n) {
  __shared__ double scratch[32];
  float s = 0.f;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, nv = n / VEC;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (kUnroll - 1) * stride < nv; i += kUnroll * stride) {
    Packed<T, VEC> v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = load_packed<T, VEC>(x + (i + u * stride) * VEC);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += to_float(v[u].v[j]) * to_float(v[u].v[j]);
  }
  for (; i < nv; i += stride) {
    const Packed<T, VEC> v = load_packed<T, VEC>(x + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += to_float(v.v[j]) * to_float(v.v[j]);
  }
  for (int64_t e = nv * VEC + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const float v = to_float(x[e]);
    s += v * v;
  }
  const double total = block_sum(double(s), scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] += total;
}

__global__ void sum_partials_one_block(double* out, const double* partials) {
  __shared__ double scratch[32];
  double s = 0;
  for (int i = threadIdx.x; i < kSumSquaresBlocks; i += blockDim.x) s += partials[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = s;
}

// 8 elements per step: 16-byte accesses on both sides (two for the fp32 side).
constexpr int kConvertVec = 8;
template <class D, class S>
__global__ void __launch_bounds__(kThreads) convert_vec(D* dst, const S* src, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, nv = n / kConvertVec;
  constexpr int SV = 16 / sizeof(S), DV = 16 / sizeof(D);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < nv; i += stride) {
    float f[kConvertVec];
#pragma unroll
    for (int a = 0; a < kConvertVec; a += SV) {
      const Packed<S, SV> v = load_packed<S, SV>(src + i * kConvertVec + a);
#pragma unroll
      for (int j = 0; j < SV; ++j) f[a + j] = to_float(v.v[j]);
    }
#pragma unroll
    for (int a = 0; a < kConvertVec; a += DV) {
      Packed<D, DV> v;
#pragma unroll
      for (int j = 0; j < DV; ++j) v.v[j] = from_float<D>(f[a + j]);
      store_packed<D, DV>(dst + i * kConvertVec + a, v);
    }
  }
  for (int64_t e = nv * kConvertVec + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride)
    dst[e] = from_float<D>(to_float(src[e]));
}

template <class D, class S>
__global__ void convert_elementwise(D* dst, const S* src, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = from_float<D>(to_float(src[i]));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

template <class T>
KernelGrid sum_squares_grid(int64_t n) {
  // Enough blocks for kUnroll vectors per thread, at most kSumSquaresBlocks.
  const int64_t per_block = int64_t(kThreads) * kUnroll * kVec<T>;
  return {std::clamp<int64_t>((n + per_block - 1) / per_block, 1, kSumSquaresBlocks), kThreads};
}

template <class T>
void sum_squares_accumulate(double* partials, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const KernelGrid g = sum_squares_grid<T>(n);
  if (aligned16(x))
    launch_kernel(sum_squares_grid_stride<T, kVec<T>>, unsigned(g.blocks), g.threads, 0, stream, partials, x, n);
  else
    launch_kernel(sum_squares_grid_stride<T, 1>, unsigned(g.blocks), g.threads, 0, stream, partials, x, n);
  CUDA_CHECK_LAUNCH();
}

void sum_partials(double* out, const double* partials, cudaStream_t stream) {
  launch_kernel(sum_partials_one_block, 1, kThreads, 0, stream, out, partials);
  CUDA_CHECK_LAUNCH();
}

template <class D, class S>
void convert(D* dst, const S* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (aligned16(dst) && aligned16(src)) {
    const unsigned blocks = unsigned(std::clamp<int64_t>(ceil_div(n, int64_t(kThreads) * kConvertVec), 1, 4096));
    launch_kernel(convert_vec<D, S>, blocks, kThreads, 0, stream, dst, src, n);
  } else {
    const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(n, kThreads), 4096));
    launch_kernel(convert_elementwise<D, S>, blocks, kThreads, 0, stream, dst, src, n);
  }
  CUDA_CHECK_LAUNCH();
}

template KernelGrid sum_squares_grid<float>(int64_t);
template KernelGrid sum_squares_grid<bf16>(int64_t);
template void sum_squares_accumulate<float>(double*, const float*, int64_t, cudaStream_t);
template void sum_squares_accumulate<bf16>(double*, const bf16*, int64_t, cudaStream_t);
template void convert<float, bf16>(float*, const bf16*, int64_t, cudaStream_t);
template void convert<bf16, float>(bf16*, const float*, int64_t, cudaStream_t);

}  // namespace ltrain::cuda
