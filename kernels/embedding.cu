// Token embedding lookup and its gradient.
//   forward:  out (N, C) = wte[tokens[n]]                 (=)
//   backward: dwte (V, C) += sum of dout rows per token    (+=, fp32)
// The backward is deterministic: the caller groups rows by token (a stable counting sort of the
// N token ids on the host), and each block adds one token's rows for a slice of columns in
// increasing row order. No atomics, so repeated tokens sum in the same order every run.
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

constexpr int kThreads = 256;

// grid (N, column blocks); each thread copies kVec elements (or 1 on the scalar path).
template <class T, int VEC>
__global__ void embedding_forward_row_per_block(T* out, const int32_t* tokens, const T* wte, int C,
                                                int V) {
  const int n = blockIdx.x;
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
  if (c >= C) return;
  const int tok = tokens[n];
  if (tok >= V) __trap();  // an out-of-range id is a data bug; fail loudly
  T* dst = out + int64_t(n) * C + c;
  if (tok < 0) {  // a token owned by another vocabulary shard (tensor parallelism): a zero row
    for (int j = 0; j < VEC && c + j < C; ++j) dst[j] = from_float<T>(0.f);
    return;
  }
  const T* src = wte + int64_t(tok) * C + c;
  if constexpr (VEC > 1) {
    store_packed<T, VEC>(dst, load_packed<T, VEC>(src));
  } else {
    *dst = *src;
  }
}

// grid (U segments, column blocks)
template <class T, int VEC>
__global__ void embedding_backward_segment_per_block(float* dwte, const T* dout,
                                                     const int32_t* order, const int32_t* starts,
                                                     const int32_t* seg_tokens, int C) {
  const int u = blockIdx.x;
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
  if (c >= C) return;
  float acc[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc[j] = 0.f;
  for (int i = starts[u]; i < starts[u + 1]; ++i) {
    const T* src = dout + int64_t(order[i]) * C + c;
    if constexpr (VEC > 1) {
      Packed<T, VEC> x = load_packed<T, VEC>(src);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += to_float(x.v[j]);
    } else {
      acc[0] += to_float(*src);
    }
  }
  float* dst = dwte + int64_t(seg_tokens[u]) * C + c;
#pragma unroll
  for (int j = 0; j < VEC; ++j) dst[j] += acc[j];
}

}  // namespace

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, int N, int C, int V,
                       cudaStream_t stream) {
  if (N == 0) return;
  if (can_vectorize<T>(C, {out, wte})) {
    constexpr int VEC = kVec<T>;
    dim3 grid(N, ceil_div(C, int64_t(kThreads) * VEC));
    launch_kernel(embedding_forward_row_per_block<T, VEC>, grid, kThreads, 0, stream, out, tokens, wte, C, V);
  } else {
    dim3 grid(N, ceil_div(C, kThreads));
    launch_kernel(embedding_forward_row_per_block<T, 1>, grid, kThreads, 0, stream, out, tokens, wte, C, V);
  }
  CUDA_CHECK_LAUNCH();
}

template <class T>
void embedding_backward(float* dwte, const T* dout, const int32_t* order, const int32_t* starts,
                        const int32_t* seg_tokens, int U, int C, cudaStream_t stream) {
  if (U == 0) return;
  // 8 columns per thread on the vector path: one 16-byte bf16 load, two 16-byte fp32 stores.
  constexpr int VEC = 8;
  if (C % VEC == 0 && reinterpret_cast<uintptr_t>(dout) % (VEC * sizeof(T)) == 0 &&
      reinterpret_cast<uintptr_t>(dwte) % 32 == 0) {
    dim3 grid(U, ceil_div(C, int64_t(kThreads) * VEC));
    launch_kernel(embedding_backward_segment_per_block<T, VEC>,
        grid, kThreads, 0, stream, dwte, dout, order, starts, seg_tokens, C);
  } else {
    dim3 grid(U, ceil_div(C, kThreads));
    launch_kernel(embedding_backward_segment_per_block<T, 1>,
        grid, kThreads, 0, stream, dwte, dout, order, starts, seg_tokens, C);
  }
  CUDA_CHECK_LAUNCH();
}

#define LTRAIN_INSTANTIATE(T)                                                                   \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int, int, int, cudaStream_t); \
  template void embedding_backward<T>(float*, const T*, const int32_t*, const int32_t*,         \
                                      const int32_t*, int, int, cudaStream_t);
LTRAIN_INSTANTIATE(float)
LTRAIN_INSTANTIATE(bf16)
#undef LTRAIN_INSTANTIATE

}  // namespace ltrain::cuda
