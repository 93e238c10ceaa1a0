// Reductions and conversions over whole tensors:
//   sum_squares: the global gradient norm's sum of squares, in two fixed-order stages (each thread
//                sums its grid-strided elements in fp32, blocks reduce in double into one partial
//                per block, a last kernel adds the partials in order), so it is deterministic;
//   convert:     elementwise dtype conversion (fp32 master weights <-> bf16 compute weights).
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void sum_squares_grid_stride(double* partials, const T* x, int64_t n) {
  __shared__ double scratch[32];
  float s = 0.f;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = to_float(x[i]);
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

template <class D, class S>
__global__ void convert_elementwise(D* dst, const S* src, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = from_float<D>(to_float(src[i]));
}

}  // namespace

template <class T>
void sum_squares_accumulate(double* partials, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  // A fixed grid (not sized by the device) keeps the summation order, and so the result,
  // identical on every GPU.
  launch_kernel(sum_squares_grid_stride<T>, kSumSquaresBlocks, kThreads, 0, stream, partials, x, n);
  CUDA_CHECK_LAUNCH();
}

void sum_partials(double* out, const double* partials, cudaStream_t stream) {
  launch_kernel(sum_partials_one_block, 1, kThreads, 0, stream, out, partials);
  CUDA_CHECK_LAUNCH();
}

template <class D, class S>
void convert(D* dst, const S* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(n, kThreads), 4096));
  launch_kernel(convert_elementwise<D, S>, blocks, kThreads, 0, stream, dst, src, n);
  CUDA_CHECK_LAUNCH();
}

template void sum_squares_accumulate<float>(double*, const float*, int64_t, cudaStream_t);
template void sum_squares_accumulate<bf16>(double*, const bf16*, int64_t, cudaStream_t);
template void convert<float, bf16>(float*, const bf16*, int64_t, cudaStream_t);
template void convert<bf16, float>(bf16*, const float*, int64_t, cudaStream_t);

}  // namespace ltrain::cuda
