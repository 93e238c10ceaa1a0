// Rotary position embedding, forward and backward, on (B, T, NH, HD) with interleaved pairs
// (2i, 2i+1) as in Meta's LLaMA code:
//   y[2i]   = x[2i] cos - x[2i+1] sin
//   y[2i+1] = x[2i] sin + x[2i+1] cos
// The backward is the rotation by -angle (the Jacobian of a rotation is its transpose), so both
// directions are one kernel with a sign. Elementwise on pairs, so out may alias inp.
//
// Memory-bound, so the table row of a position is read once per block, not once per head: block
// (t, j) handles position t of batches [j * bpb, (j + 1) * bpb) (bpb = ceil(32 / NH), so that a
// block covers at least 32 head rows and the table's reads stay within ~3% of the data's), copies
// the row's cos and sin into shared memory (split into a cos and a sin array, so that a thread's
// P cosines and P sines are contiguous and a warp reads them without bank conflicts), then
// rotates its rows with 16-byte accesses (P = 8 / sizeof(T) pairs per thread). Grid T x B / bpb
// (B T = 8192 rows: 8192 blocks for 32 heads, 2048 for 8).
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

#include <algorithm>

namespace ltrain::cuda {
namespace {

constexpr int kThreads = 256;

int batches_per_block(int B, int NH) { return std::min(B, (32 + NH - 1) / NH); }

// Dynamic shared memory: HD floats (HD/2 cosines, then HD/2 sines).
template <class T, int PAIRS>
__global__ void __launch_bounds__(kThreads)
    rope_rotate_rows(T* out, const T* inp, const float* freqs, int B, int Tn, int NH, int HD, int bpb,
                     float sign) {
  LTRAIN_DYNAMIC_SHARED(float, tab);
  const int t = blockIdx.x, half = HD / 2;
  float* cs = tab;
  float* sn = tab + half;
  const float* f = freqs + int64_t(t) * HD;
  if constexpr (PAIRS % 2 == 0) {
    for (int i = threadIdx.x * 2; i < half; i += blockDim.x * 2) {  // two pairs: 16 bytes
      const Packed<float, 4> v = load_packed<float, 4>(f + 2 * i);
      store_packed<float, 2>(cs + i, Packed<float, 2>{{v.v[0], v.v[2]}});
      store_packed<float, 2>(sn + i, Packed<float, 2>{{v.v[1], v.v[3]}});
    }
  } else {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      cs[i] = f[2 * i];
      sn[i] = f[2 * i + 1];
    }
  }
  __syncthreads();
  const int b0 = blockIdx.y * bpb, b1 = min(B, b0 + bpb);
  const int groups = half / PAIRS;                       // per head row
  const int64_t total = int64_t(b1 - b0) * NH * groups;  // this block's groups
  for (int64_t g = threadIdx.x; g < total; g += blockDim.x) {
    const int i0 = int(g % groups) * PAIRS;
    const int64_t hr = g / groups;  // (b - b0) * NH + h
    const int b = b0 + int(hr / NH), h = int(hr % NH);
    const int64_t off = ((int64_t(b) * Tn + t) * NH + h) * HD + 2 * i0;
    const Packed<T, 2 * PAIRS> x = load_packed<T, 2 * PAIRS>(inp + off);
    const Packed<float, PAIRS> c = load_packed<float, PAIRS>(cs + i0), s = load_packed<float, PAIRS>(sn + i0);
    Packed<T, 2 * PAIRS> y;
#pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
      const float x0 = to_float(x.v[2 * p]), x1 = to_float(x.v[2 * p + 1]), sp = sign * s.v[p];
      y.v[2 * p] = from_float<T>(x0 * c.v[p] - x1 * sp);
      y.v[2 * p + 1] = from_float<T>(x0 * sp + x1 * c.v[p]);
    }
    store_packed<T, 2 * PAIRS>(out + off, y);
  }
}

}  // namespace

template <class T>
KernelGrid rope_grid(int B, int Tn, int NH) {
  return {int64_t(Tn) * ((B + batches_per_block(B, NH) - 1) / batches_per_block(B, NH)), kThreads};
}

template <class T>
void rope_rotate(T* out, const T* inp, const float* freqs, int B, int Tn, int NH, int HD, int sign,
                 cudaStream_t stream) {
  if (int64_t(B) * Tn * NH * (HD / 2) == 0) return;
  // P pairs per thread: one 16-byte access of x (8 bytes of cos and 8 or 16 of sin per thread
  // from shared memory); the table's row is copied with 16-byte loads.
  constexpr int P = 8 / sizeof(T);
  const bool vec = (HD / 2) % P == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(inp) % 16 == 0 && reinterpret_cast<uintptr_t>(freqs) % 16 == 0;
  const int bpb = batches_per_block(B, NH);
  const dim3 grid(unsigned(Tn), unsigned((B + bpb - 1) / bpb));
  const size_t smem = size_t(HD) * sizeof(float);
  if (vec)
    launch_kernel(rope_rotate_rows<T, P>, grid, kThreads, smem, stream, out, inp, freqs, B, Tn, NH, HD,
                  bpb, float(sign));
  else
    launch_kernel(rope_rotate_rows<T, 1>, grid, kThreads, smem, stream, out, inp, freqs, B, Tn, NH, HD,
                  bpb, float(sign));
  CUDA_CHECK_LAUNCH();
}

template KernelGrid rope_grid<float>(int, int, int);
template KernelGrid rope_grid<bf16>(int, int, int);
template void rope_rotate<float>(float*, const float*, const float*, int, int, int, int, int, cudaStream_t);
template void rope_rotate<bf16>(bf16*, const bf16*, const float*, int, int, int, int, int, cudaStream_t);

}  // namespace ltrain::cuda
