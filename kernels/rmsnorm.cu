// RMSNorm forward and backward.
//   forward:  out (N, C) = inp * rstd * weight, rstd (N) = (mean(inp^2) + eps)^-1/2
//   backward: with g = dout * weight:
//             dinp (N, C) += rstd * g - inp * rstd^3 * mean(g * inp)    (+=: the residual stream)
//             dweight (C) += sum over rows of dout * inp * rstd          (+=, fp32)
// One block per row for the forward. The backward's dweight is a column sum over all N rows; to
// keep it deterministic without atomics, each block handles a chunk of rows, keeps its partial
// column sums in shared memory, and writes them to a (chunks, C) scratch; a second kernel adds
// the chunks in order.
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

constexpr int kMaxChunks = 256;

int threads_for(int C, int vec) {
  int t = int(ceil_div(C, vec));
  t = (t + 31) / 32 * 32;
  return t < 32 ? 32 : (t > 256 ? 256 : t);
}

int rows_per_chunk(int N) { return (N + kMaxChunks - 1) / kMaxChunks; }

template <class T, int VEC>
__global__ void rmsnorm_forward_row_per_block(T* out, float* rstd, const T* inp, const T* weight,
                                              int C, float eps) {
  __shared__ float scratch[32];
  const int64_t row = int64_t(blockIdx.x) * C;
  const T* x = inp + row;
  T* y = out + row;
  float ss = 0.f;
  for (int c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
    Packed<T, VEC> xv = load_packed<T, VEC>(x + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) ss += to_float(xv.v[j]) * to_float(xv.v[j]);
  }
  ss = block_sum(ss, scratch);
  const float r = rsqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
    Packed<T, VEC> xv = load_packed<T, VEC>(x + c), wv = load_packed<T, VEC>(weight + c), yv;
#pragma unroll
    for (int j = 0; j < VEC; ++j) yv.v[j] = from_float<T>(to_float(xv.v[j]) * r * to_float(wv.v[j]));
    store_packed<T, VEC>(y + c, yv);
  }
}

// grid (chunks); dynamic shared memory: C floats of partial dweight. Each thread owns the same
// columns in every row, so the partial sums need no synchronization.
template <class T, int VEC>
__global__ void rmsnorm_backward_row_chunk_per_block(T* dinp, float* dweight_partial,
                                                     const T* dout, const T* inp, const T* weight,
                                                     const float* rstd, int N, int C, int rows) {
  LTRAIN_DYNAMIC_SHARED(float, dw);  // (C)
  __shared__ float scratch[32];
  for (int c = threadIdx.x; c < C; c += blockDim.x) dw[c] = 0.f;
  __syncthreads();
  const int n0 = blockIdx.x * rows, n1 = min(N, n0 + rows);
  for (int n = n0; n < n1; ++n) {
    const int64_t row = int64_t(n) * C;
    const T *x = inp + row, *dy = dout + row;
    T* dx = dinp + row;
    const float r = rstd[n];
    float dot = 0.f;
    for (int c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
      Packed<T, VEC> xv = load_packed<T, VEC>(x + c), gv = load_packed<T, VEC>(dy + c),
                     wv = load_packed<T, VEC>(weight + c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) dot += to_float(gv.v[j]) * to_float(wv.v[j]) * to_float(xv.v[j]);
    }
    dot = block_sum(dot, scratch);
    const float k = dot / float(C) * r * r * r;
    for (int c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
      Packed<T, VEC> xv = load_packed<T, VEC>(x + c), gv = load_packed<T, VEC>(dy + c),
                     wv = load_packed<T, VEC>(weight + c), dv = load_packed<T, VEC>(dx + c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float xf = to_float(xv.v[j]), gf = to_float(gv.v[j]);
        dv.v[j] = from_float<T>(to_float(dv.v[j]) + r * gf * to_float(wv.v[j]) - xf * k);
        dw[c + j] += gf * xf * r;
      }
      store_packed<T, VEC>(dx + c, dv);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    dweight_partial[int64_t(blockIdx.x) * C + c] = dw[c];
}

// One thread per column: dweight[c] += sum of the chunks' partials, in chunk order.
__global__ void rmsnorm_dweight_sum_chunks(float* dweight, const float* partial, int chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int i = 0; i < chunks; ++i) s += partial[int64_t(i) * C + c];
  dweight[c] += s;
}

}  // namespace

template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* weight, int N, int C, float eps,
                     cudaStream_t stream) {
  if (N == 0) return;
  if (can_vectorize<T>(C, {out, inp, weight})) {
    constexpr int VEC = kVec<T>;
    launch_kernel(rmsnorm_forward_row_per_block<T, VEC>,
        N, threads_for(C, VEC), 0, stream, out, rstd, inp, weight, C, eps);
  } else {
    launch_kernel(rmsnorm_forward_row_per_block<T, 1>, N, threads_for(C, 1), 0, stream, out, rstd, inp, weight, C, eps);
  }
  CUDA_CHECK_LAUNCH();
}

size_t rmsnorm_backward_scratch_floats(int N, int C) {
  if (N == 0) return 0;
  const int rows = rows_per_chunk(N);
  return size_t((N + rows - 1) / rows) * size_t(C);
}

template <class T>
void rmsnorm_backward(T* dinp, float* dweight, const T* dout, const T* inp, const T* weight,
                      const float* rstd, int N, int C, float* scratch, cudaStream_t stream) {
  if (N == 0) return;
  const int rows = rows_per_chunk(N), chunks = (N + rows - 1) / rows;
  const size_t smem = size_t(C) * sizeof(float);
  auto launch = [&](auto kernel, int vec) {
    // Above 48 KiB in all, static (the block_sum scratch) plus dynamic, a kernel must opt in.
    cudaFuncAttributes attr{};
    CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    if (smem + attr.sharedSizeBytes > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    launch_kernel(kernel, chunks, threads_for(C, vec), smem, stream, dinp, scratch, dout, inp, weight,
                  rstd, N, C, rows);
    CUDA_CHECK_LAUNCH();
  };
  if (can_vectorize<T>(C, {dinp, dout, inp, weight}))
    launch(rmsnorm_backward_row_chunk_per_block<T, kVec<T>>, kVec<T>);
  else
    launch(rmsnorm_backward_row_chunk_per_block<T, 1>, 1);
  launch_kernel(rmsnorm_dweight_sum_chunks, ceil_div(C, 256), 256, 0, stream, dweight, scratch, chunks, C);
  CUDA_CHECK_LAUNCH();
}

#define LTRAIN_INSTANTIATE(T)                                                                    \
  template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int, int, float, cudaStream_t); \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int, \
                                    int, float*, cudaStream_t);
LTRAIN_INSTANTIATE(float)
LTRAIN_INSTANTIATE(bf16)
#undef LTRAIN_INSTANTIATE

}  // namespace ltrain::cuda
