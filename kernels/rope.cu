// Rotary position embedding, forward and backward, on (B, T, NH, HD) with interleaved pairs
// (2i, 2i+1) as in Meta's LLaMA code:
//   y[2i]   = x[2i] cos - x[2i+1] sin
//   y[2i+1] = x[2i] sin + x[2i+1] cos
// The backward is the rotation by -angle (the Jacobian of a rotation is its transpose), so both
// directions are one kernel with a sign. Elementwise on pairs, so out may alias inp.
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

// One thread rotates PAIRS consecutive pairs of one head row.
template <class T, int PAIRS>
__global__ void rope_rotate_pairs(T* out, const T* inp, const float* freqs, int64_t total_groups,
                                  int Tn, int NH, int HD, float sign) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total_groups) return;
  const int groups_per_head = HD / (2 * PAIRS);
  const int64_t head_row = idx / groups_per_head;  // index over (B, T, NH)
  const int i0 = int(idx % groups_per_head) * PAIRS;  // first pair
  const int t = int((head_row / NH) % Tn);
  const float* f = freqs + int64_t(t) * HD + 2 * i0;
  const int64_t off = head_row * HD + 2 * i0;
  Packed<T, 2 * PAIRS> x = load_packed<T, 2 * PAIRS>(inp + off), y;
  Packed<float, 2 * PAIRS> cs = load_packed<float, 2 * PAIRS>(f);
#pragma unroll
  for (int p = 0; p < PAIRS; ++p) {
    const float c = cs.v[2 * p], s = sign * cs.v[2 * p + 1];
    const float x0 = to_float(x.v[2 * p]), x1 = to_float(x.v[2 * p + 1]);
    y.v[2 * p] = from_float<T>(x0 * c - x1 * s);
    y.v[2 * p + 1] = from_float<T>(x0 * s + x1 * c);
  }
  store_packed<T, 2 * PAIRS>(out + off, y);
}

}  // namespace

template <class T>
void rope_rotate(T* out, const T* inp, const float* freqs, int B, int Tn, int NH, int HD, int sign,
                 cudaStream_t stream) {
  const int64_t pairs = int64_t(B) * Tn * NH * (HD / 2);
  if (pairs == 0) return;
  // 4 pairs per thread: one 16-byte bf16 access (two 16-byte fp32 accesses for the table).
  constexpr int P = 4;
  const bool vec = (HD / 2) % P == 0 && reinterpret_cast<uintptr_t>(out) % (2 * P * sizeof(T)) == 0 &&
                   reinterpret_cast<uintptr_t>(inp) % (2 * P * sizeof(T)) == 0 &&
                   reinterpret_cast<uintptr_t>(freqs) % 32 == 0;
  if (vec) {
    const int64_t groups = pairs / P;
    launch_kernel(rope_rotate_pairs<T, P>, ceil_div(groups, 256), 256, 0, stream, out, inp, freqs, groups, Tn,
                                                                       NH, HD, float(sign));
  } else {
    launch_kernel(rope_rotate_pairs<T, 1>, ceil_div(pairs, 256), 256, 0, stream, out, inp, freqs, pairs, Tn,
                                                                      NH, HD, float(sign));
  }
  CUDA_CHECK_LAUNCH();
}

template void rope_rotate<float>(float*, const float*, const float*, int, int, int, int, int, cudaStream_t);
template void rope_rotate<bf16>(bf16*, const bf16*, const float*, int, int, int, int, int, cudaStream_t);

}  // namespace ltrain::cuda
