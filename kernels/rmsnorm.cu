// RMSNorm forward and backward.
//   forward:  out (N, C) = inp * rstd * weight, rstd (N) = (mean(inp^2) + eps)^-1/2
//   backward: with g = dout * weight:
//             dinp (N, C) += rstd * g - inp * rstd^3 * mean(g * inp)    (+=: the residual stream)
//             dweight (C) += sum over rows of dout * inp * rstd          (+=, fp32)
//
// Memory-bound, so designed to move each byte once (tests/cuda_emu/work_memory_bound.cpp):
//  - a block handles a chunk of consecutive rows; each thread owns the same VPT 16-byte vectors
//    of columns in every row, and keeps its slice of the weight, of the current row and (in the
//    backward) of the dweight partial sums in registers. A row is read from global memory once
//    (the row's reduction and the output both come from registers), the weight once per block;
//  - one barrier per row (block_sum_alternating);
//  - the backward's dweight partials stay in registers (no shared memory, so no bank
//    conflicts) and go to a (chunks, C) scratch once per block; a second kernel adds the chunks
//    in order, 16-byte loads spread over the chunk dimension, and adds the sum to dweight. Fixed
//    order everywhere: deterministic, no atomics;
//  - grids sized for 132 SMs and one wave: the forward takes 8+ rows per block and up to
//    2 x kFillBlocks = 528 blocks (4 per SM, which its registers allow at 256 threads), the
//    backward 16+ rows per block and up to kFillBlocks = 264 blocks (2 per SM; fewer blocks
//    also keep the partials' traffic small: 2 x 264 x C x 4 bytes against 4 N C x 2). N = 8192:
//    528 blocks of 15-16 rows, and 264 of 31-32.
// Register tiles: up to 512 threads x 4 vectors (x 2 in the bf16 backward), so C up to 16384
// (forward) and 8192 (backward) in bf16, 8192 in fp32, 2048 without 16-byte accesses; wider
// rows take the plain streaming kernels (rows read twice), still correct.
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

#include <algorithm>

namespace ltrain::cuda {
namespace {

constexpr int kMaxThreads = 512;
constexpr int kForwardMinRows = 8, kBackwardMinRows = kRmsnormBackwardMinRows;

// How a call is laid out: the register tile (vpt vectors of vec elements per thread, 0 when the
// row does not fit it), threads per block, blocks. Block b takes rows [b N / blocks, (b + 1) N /
// blocks): at least about min_rows each, and at most target_blocks blocks, so that the grid is
// one full wave at the occupancy the tiles allow (no lone tail blocks).
struct Plan {
  int vec, vpt, threads, blocks;
};

int round_up32(int64_t t) { return int(t < 32 ? 32 : (t + 31) / 32 * 32); }

// Up to 256 threads with the fewest vectors per thread, else max_vpt vectors and up to 512 threads.
Plan make_plan(int N, int C, int vec, int max_vpt, int min_rows, int target_blocks) {
  Plan p{vec, 0, 0, 0};
  const int64_t vectors = (int64_t(C) + vec - 1) / vec;
  for (int v = 1; v <= max_vpt && p.vpt == 0; v *= 2)
    if (vectors <= 256 * v) p.vpt = v;
  if (p.vpt == 0 && vectors <= int64_t(kMaxThreads) * max_vpt) p.vpt = max_vpt;
  p.threads = p.vpt ? round_up32((vectors + p.vpt - 1) / p.vpt) : 256;
  p.blocks = int(std::min<int64_t>(target_blocks, (int64_t(N) + min_rows - 1) / min_rows));
  return p;
}

// The backward's largest tile in bf16 (2 vectors of 8: 16 dweight sums) keeps it within 128
// registers at 512 threads; 4 vectors of 8 would spill.
template <class T>
constexpr int kBackwardMaxVpt = kVec<T> == 8 ? 2 : 4;

template <class T>
Plan forward_plan(int N, int C, bool vectorized) {
  return make_plan(N, C, vectorized ? kVec<T> : 1, 4, kForwardMinRows, 2 * kFillBlocks);
}
template <class T>
Plan backward_plan(int N, int C, bool vectorized) {
  return make_plan(N, C, vectorized ? kVec<T> : 1, vectorized ? kBackwardMaxVpt<T> : 4,
                   kBackwardMinRows, kFillBlocks);
}

// ---- register-tiled kernels ----------------------------------------------------------------

// The block's rows (see Plan); thread t owns vectors t, t + blockDim.x, ... (VPT of them).
template <class T, int VEC, int VPT>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_forward_rows(T* out, float* rstd, const T* inp, const T* weight, int N, int C,
                         float eps) {
  __shared__ float red[2][32];
  Packed<T, VEC> w[VPT];
  int col[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    col[k] = (k * int(blockDim.x) + int(threadIdx.x)) * VEC;
    if (col[k] < C) w[k] = load_packed<T, VEC>(weight + col[k]);
  }
  const int n0 = int(int64_t(blockIdx.x) * N / gridDim.x), n1 = int(int64_t(blockIdx.x + 1) * N / gridDim.x);
  for (int n = n0; n < n1; ++n) {
    const int64_t row = int64_t(n) * C;
    Packed<T, VEC> x[VPT];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
      if (col[k] < C) {
        x[k] = load_packed<T, VEC>(inp + row + col[k]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) ss += to_float(x[k].v[j]) * to_float(x[k].v[j]);
      }
    ss = block_sum_alternating(ss, red, n);
    const float r = rsqrtf(ss / float(C) + eps);
    if (threadIdx.x == 0) rstd[n] = r;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
      if (col[k] < C) {
        Packed<T, VEC> y;
#pragma unroll
        for (int j = 0; j < VEC; ++j) y.v[j] = from_float<T>(to_float(x[k].v[j]) * r * to_float(w[k].v[j]));
        store_packed<T, VEC>(out + row + col[k], y);
      }
  }
}

// Writes the block's dweight partial (its rows' column sums) to dw_partial[blockIdx.x].
template <class T, int VEC, int VPT>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_backward_rows(T* dinp, float* dw_partial, const T* dout, const T* inp, const T* weight,
                          const float* rstd, int N, int C) {
  __shared__ float red[2][32];
  Packed<T, VEC> w[VPT];
  float dw[VPT][VEC];
  int col[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    col[k] = (k * int(blockDim.x) + int(threadIdx.x)) * VEC;
    if (col[k] < C) w[k] = load_packed<T, VEC>(weight + col[k]);
#pragma unroll
    for (int j = 0; j < VEC; ++j) dw[k][j] = 0.f;
  }
  const int n0 = int(int64_t(blockIdx.x) * N / gridDim.x), n1 = int(int64_t(blockIdx.x + 1) * N / gridDim.x);
  for (int n = n0; n < n1; ++n) {
    const int64_t row = int64_t(n) * C;
    Packed<T, VEC> x[VPT], g[VPT];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
      if (col[k] < C) {
        x[k] = load_packed<T, VEC>(inp + row + col[k]);
        g[k] = load_packed<T, VEC>(dout + row + col[k]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) dot += to_float(g[k].v[j]) * to_float(w[k].v[j]) * to_float(x[k].v[j]);
      }
    // One lane per warp reads the row's rstd; the others take it by shuffle.
    float r = threadIdx.x % 32 == 0 ? rstd[n] : 0.f;
    r = __shfl_sync(0xffffffffu, r, 0);
    dot = block_sum_alternating(dot, red, n);
    const float kr = dot / float(C) * r * r * r;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
      if (col[k] < C) {
        Packed<T, VEC> d = load_packed<T, VEC>(dinp + row + col[k]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float xf = to_float(x[k].v[j]), gf = to_float(g[k].v[j]);
          d.v[j] = from_float<T>(to_float(d.v[j]) + r * gf * to_float(w[k].v[j]) - xf * kr);
          dw[k][j] += gf * xf * r;
        }
        store_packed<T, VEC>(dinp + row + col[k], d);
      }
  }
  float* part = dw_partial + int64_t(blockIdx.x) * C;
#pragma unroll
  for (int k = 0; k < VPT; ++k)
    if (col[k] < C) {
      if constexpr (VEC % 4 == 0) {
        store_floats<VEC>(part + col[k], dw[k]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) part[col[k] + j] = dw[k][j];
      }
    }
}

// ---- streaming kernels (rows beyond the register tiles) ------------------------------------

template <class T>
__global__ void rmsnorm_forward_stream(T* out, float* rstd, const T* inp, const T* weight, int N,
                                       int C, float eps) {
  __shared__ float red[2][32];
  const int n0 = int(int64_t(blockIdx.x) * N / gridDim.x), n1 = int(int64_t(blockIdx.x + 1) * N / gridDim.x);
  for (int n = n0; n < n1; ++n) {
    const T* x = inp + int64_t(n) * C;
    T* y = out + int64_t(n) * C;
    float ss = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += to_float(x[c]) * to_float(x[c]);
    ss = block_sum_alternating(ss, red, n);
    const float r = rsqrtf(ss / float(C) + eps);
    if (threadIdx.x == 0) rstd[n] = r;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      y[c] = from_float<T>(to_float(x[c]) * r * to_float(weight[c]));
  }
}

// Each thread owns columns threadIdx.x + k * blockDim.x and sums their dweight partial in
// dw_partial[blockIdx.x] directly (global memory, written by this thread only).
template <class T>
__global__ void rmsnorm_backward_stream(T* dinp, float* dw_partial, const T* dout, const T* inp,
                                        const T* weight, const float* rstd, int N, int C) {
  __shared__ float red[2][32];
  float* part = dw_partial + int64_t(blockIdx.x) * C;
  const int n0 = int(int64_t(blockIdx.x) * N / gridDim.x), n1 = int(int64_t(blockIdx.x + 1) * N / gridDim.x);
  for (int n = n0; n < n1; ++n) {
    const int64_t row = int64_t(n) * C;
    const T *x = inp + row, *dy = dout + row;
    T* dx = dinp + row;
    const float r = rstd[n];
    float dot = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      dot += to_float(dy[c]) * to_float(weight[c]) * to_float(x[c]);
    dot = block_sum_alternating(dot, red, n);
    const float kr = dot / float(C) * r * r * r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float xf = to_float(x[c]), gf = to_float(dy[c]);
      dx[c] = from_float<T>(to_float(dx[c]) + r * gf * to_float(weight[c]) - xf * kr);
      part[c] = (n == n0 ? 0.f : part[c]) + gf * xf * r;
    }
  }
}

// ---- dweight: the chunks' partials added in order ------------------------------------------

// A block of 256 threads covers kColVecs vectors of VEC columns (VEC * kColVecs columns) with
// 256 / kColVecs groups: group i adds chunks i, i + groups, ... in order, then thread t < VEC *
// kColVecs adds the groups' sums in order for one column. Consecutive threads read consecutive
// 16-byte vectors of a chunk (coalesced), and the shared-memory exchange is conflict-free (each
// phase touches consecutive words).
constexpr int kSumThreads = 256;
template <int VEC>
constexpr int kColVecs = VEC == 4 ? 8 : 32;

template <int VEC>
__global__ void __launch_bounds__(kSumThreads)
    rmsnorm_dweight_sum_chunks(float* dweight, const float* partial, int chunks, int C) {
  constexpr int CV = kColVecs<VEC>, G = kSumThreads / CV, COLS = CV * VEC;
  __shared__ float sums[G][COLS];
  const int cv = threadIdx.x % CV, grp = threadIdx.x / CV;
  const int c = blockIdx.x * COLS + cv * VEC;
  float s[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) s[j] = 0.f;
  if (c < C) {
    for (int i = grp; i < chunks; i += G) {
      if constexpr (VEC == 4) {
        const Packed<float, 4> v = load_packed<float, 4>(partial + int64_t(i) * C + c);
#pragma unroll
        for (int j = 0; j < 4; ++j) s[j] += v.v[j];
      } else {
        s[0] += partial[int64_t(i) * C + c];
      }
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) sums[grp][cv * VEC + j] = s[j];
  __syncthreads();
  if (int(threadIdx.x) < COLS && int(blockIdx.x) * COLS + int(threadIdx.x) < C) {
    float t = 0.f;
    for (int g = 0; g < G; ++g) t += sums[g][threadIdx.x];
    dweight[blockIdx.x * COLS + threadIdx.x] += t;
  }
}

}  // namespace

template <class T>
KernelGrid rmsnorm_forward_grid(int N, int C) {
  const Plan p = forward_plan<T>(N, C, C % kVec<T> == 0);
  return {p.blocks, p.threads};
}
template <class T>
KernelGrid rmsnorm_backward_grid(int N, int C) {
  const Plan p = backward_plan<T>(N, C, C % kVec<T> == 0);
  return {p.blocks, p.threads};
}

template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* weight, int N, int C, float eps,
                     cudaStream_t stream) {
  if (N == 0) return;
  const Plan p = forward_plan<T>(N, C, can_vectorize<T>(C, {out, inp, weight}));
  auto run = [&](auto kernel) {
    launch_kernel(kernel, p.blocks, p.threads, 0, stream, out, rstd, inp, weight, N, C, eps);
  };
  constexpr int V = kVec<T>;
  if (p.vpt == 0) run(rmsnorm_forward_stream<T>);
  else if (p.vec == V && p.vpt == 1) run(rmsnorm_forward_rows<T, V, 1>);
  else if (p.vec == V && p.vpt == 2) run(rmsnorm_forward_rows<T, V, 2>);
  else if (p.vec == V) run(rmsnorm_forward_rows<T, V, 4>);
  else if (p.vpt == 1) run(rmsnorm_forward_rows<T, 1, 1>);
  else if (p.vpt == 2) run(rmsnorm_forward_rows<T, 1, 2>);
  else run(rmsnorm_forward_rows<T, 1, 4>);
  CUDA_CHECK_LAUNCH();
}


template <class T>
void rmsnorm_backward(T* dinp, float* dweight, const T* dout, const T* inp, const T* weight,
                      const float* rstd, int N, int C, float* scratch, cudaStream_t stream) {
  if (N == 0) return;
  const Plan p = backward_plan<T>(N, C, can_vectorize<T>(C, {dinp, dout, inp, weight}));
  auto run = [&](auto kernel) {
    launch_kernel(kernel, p.blocks, p.threads, 0, stream, dinp, scratch, dout, inp, weight, rstd,
                  N, C);
  };
  constexpr int V = kVec<T>;
  if (p.vpt == 0) run(rmsnorm_backward_stream<T>);
  else if (p.vec == V && p.vpt == 1) run(rmsnorm_backward_rows<T, V, 1>);
  else if (p.vec == V && p.vpt == 2) run(rmsnorm_backward_rows<T, V, 2>);
  else if (p.vec == V) run(rmsnorm_backward_rows<T, V, kBackwardMaxVpt<T>>);
  else if (p.vpt == 1) run(rmsnorm_backward_rows<T, 1, 1>);
  else if (p.vpt == 2) run(rmsnorm_backward_rows<T, 1, 2>);
  else run(rmsnorm_backward_rows<T, 1, 4>);
  CUDA_CHECK_LAUNCH();
  if (C % 4 == 0 && reinterpret_cast<uintptr_t>(scratch) % 16 == 0)
    launch_kernel(rmsnorm_dweight_sum_chunks<4>, ceil_div(C, 4 * kColVecs<4>), kSumThreads, 0, stream,
                  dweight, scratch, p.blocks, C);
  else
    launch_kernel(rmsnorm_dweight_sum_chunks<1>, ceil_div(C, kColVecs<1>), kSumThreads, 0, stream,
                  dweight, scratch, p.blocks, C);
  CUDA_CHECK_LAUNCH();
}

#define LTRAIN_INSTANTIATE(T)                                                                    \
  template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int, int, float, cudaStream_t); \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int, \
                                    int, float*, cudaStream_t);                                  \
  template KernelGrid rmsnorm_forward_grid<T>(int, int);                                         \
  template KernelGrid rmsnorm_backward_grid<T>(int, int);
LTRAIN_INSTANTIATE(float)
LTRAIN_INSTANTIATE(bf16)
#undef LTRAIN_INSTANTIATE

}  // namespace ltrain::cuda
