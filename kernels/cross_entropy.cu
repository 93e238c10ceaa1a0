// Softmax cross-entropy fused with its gradient, one block per row of logits (N, V):
//   lse = logsumexp(row), losses[n] = lse - row[target]   (0 for a negative target)
//   dlogits = (exp(row - lse) - onehot(target)) * dloss, written in place over the logits when
//   they alias (each element is read before it is written, by the same thread).
// The model calls this on chunks of rows, so no (N, V) fp32 buffer ever exists.
//
// Memory-bound, so one pass: each thread loads its VPT 16-byte vectors of the row into
// registers (all loads issued back to back), takes the max and the sum of exponentials of its
// own elements, the block merges the (max, sum) pairs with one barrier, and the gradient is
// written from the same registers. The row is read once and written once; the target logit
// comes from the registers of the thread that owns it, and thread 0 alone reads the target.
// Tiles: up to 512 threads of 8 (bf16) or 16 (fp32) vectors: V up to 32768 with 16-byte
// accesses, 4096 (bf16) or 8192 (fp32) without; wider rows take the streaming kernel (read twice).
// Grid: one block per row (N = 8192, V = 32000: 8192 blocks of 512 threads, 8 vectors per
// thread in bf16, 16 in fp32).
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

// 512 threads leave 128 registers per thread: enough for 16 fp32 vectors (64 registers), and
// for 8 bf16 ones (16 bf16 vectors would spill): rows of up to 32768 columns either way.
constexpr int kMaxThreads = 512;
template <class T>
constexpr int kMaxVpt = sizeof(T) == 2 ? 8 : 16;

// (max, sum of exp(x - max)) pairs merged; commutative, so a butterfly gives every lane the same.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;  // both empty
  s = s * expf(m - mm) + s2 * expf(m2 - mm);
  m = mm;
}

// The block's logsumexp from each thread's (max, sum) pair: a butterfly within each warp, then
// every thread merges the warps' pairs in the same order. Its barrier also publishes what the
// block wrote to shared memory before the call.
__device__ __forceinline__ float block_logsumexp(float m, float s, float* red_m, float* red_s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  if (lane == 0) {
    red_m[warp] = m;
    red_s[warp] = s;
  }
  __syncthreads();
  m = red_m[0];
  s = red_s[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w) merge(m, s, red_m[w], red_s[w]);
  return m + logf(s);
}

// Three uses of one kernel: the fused loss + gradient (lse_in == nullptr, vocab_offset 0); the
// row logsumexp of a vocabulary shard alone (lse_out != nullptr: writes lse and returns); and the
// loss + gradient of a shard given the full rows' lse (lse_in != nullptr), where only the rank
// owning the target column (targets[n] - vocab_offset in [0, V)) adds the target term.
template <class T, int VEC, int VPT>
__global__ void __launch_bounds__(kMaxThreads)
    cross_entropy_row_tile(float* losses, T* dlogits, const T* logits, const int32_t* targets, int V,
                           float dloss, const float* lse_in, float* lse_out, int vocab_offset) {
  __shared__ float red_m[32], red_s[32];
  __shared__ int32_t target;
  __shared__ float given_lse;
  const int n = blockIdx.x;
  const T* x = logits + int64_t(n) * V;
  if (threadIdx.x == 0 && !lse_out) target = targets[n];
  if (threadIdx.x == 0 && lse_in) given_lse = lse_in[n];
  Packed<T, VEC> xv[VPT];
  int col[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    col[k] = (k * int(blockDim.x) + int(threadIdx.x)) * VEC;
    if (col[k] < V) xv[k] = load_packed<T, VEC>(x + col[k]);
  }
  float lse;
  if (lse_in) {
    __syncthreads();  // target, given_lse
    lse = given_lse;
  } else {
    float m = -INFINITY, s = 0.f;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
      if (col[k] < V) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) m = fmaxf(m, to_float(xv[k].v[j]));
      }
    if (m != -INFINITY) {
#pragma unroll
      for (int k = 0; k < VPT; ++k)
        if (col[k] < V) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) s += expf(to_float(xv[k].v[j]) - m);
        }
    }
    lse = block_logsumexp(m, s, red_m, red_s);  // its barrier also publishes target
  }
  if (lse_out) {
    if (threadIdx.x == 0) lse_out[n] = lse;
    return;
  }
  const bool ignored = target < 0;
  const int tgt = target - vocab_offset;
  const bool owned = !ignored && tgt >= 0 && tgt < V;
  // One writer of the loss: the thread holding the target column, or thread 0.
  if (!owned && threadIdx.x == 0) losses[n] = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k)
    if (owned && col[k] <= tgt && tgt < col[k] + VEC) {
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        if (col[k] + j == tgt) losses[n] = lse - to_float(xv[k].v[j]);
    }
  if (!dlogits) return;
  T* dx = dlogits + int64_t(n) * V;
#pragma unroll
  for (int k = 0; k < VPT; ++k)
    if (col[k] < V) {
      Packed<T, VEC> g;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float p = expf(to_float(xv[k].v[j]) - lse) - (owned && col[k] + j == tgt ? 1.f : 0.f);
        g.v[j] = from_float<T>(ignored ? 0.f : p * dloss);
      }
      store_packed<T, VEC>(dx + col[k], g);
    }
}

// Rows wider than the tiles: an online (max, sum) pass, then the gradient pass re-reading the row.
template <class T>
__global__ void cross_entropy_row_stream(float* losses, T* dlogits, const T* logits,
                                         const int32_t* targets, int V, float dloss,
                                         const float* lse_in, float* lse_out, int vocab_offset) {
  __shared__ float red_m[32], red_s[32];
  __shared__ int32_t target;
  const int n = blockIdx.x;
  const T* x = logits + int64_t(n) * V;
  if (threadIdx.x == 0 && !lse_out) target = targets[n];
  float lse;
  if (lse_in) {
    __syncthreads();
    lse = lse_in[n];
  } else {
    float m = -INFINITY, s = 0.f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) merge(m, s, to_float(x[c]), 1.f);
    lse = block_logsumexp(m, s, red_m, red_s);
  }
  if (lse_out) {
    if (threadIdx.x == 0) lse_out[n] = lse;
    return;
  }
  const bool ignored = target < 0;
  const int tgt = target - vocab_offset;
  const bool owned = !ignored && tgt >= 0 && tgt < V;
  if (threadIdx.x == 0) losses[n] = owned ? lse - to_float(x[tgt]) : 0.f;
  if (!dlogits) return;
  // The barrier orders thread 0's read of x[tgt] before an in-place write of it.
  __syncthreads();
  T* dx = dlogits + int64_t(n) * V;
  for (int c = threadIdx.x; c < V; c += blockDim.x) {
    const float p = expf(to_float(x[c]) - lse) - (owned && c == tgt ? 1.f : 0.f);
    dx[c] = from_float<T>(ignored ? 0.f : p * dloss);
  }
}

// The tile for a row of V elements in vectors of `vec`: VPT (0: the streaming kernel) and threads.
struct Tile {
  int vpt, threads;
};
template <class T>
Tile tile_for(int V, int vec) {
  const int64_t vectors = (int64_t(V) + vec - 1) / vec;
  auto up32 = [](int64_t t) { return int(t < 32 ? 32 : (t + 31) / 32 * 32); };
  // The fewest vectors per thread that fit in 512 threads.
  for (int v = 1; v <= kMaxVpt<T>; v *= 2)
    if (vectors <= int64_t(kMaxThreads) * v) return {v, up32((vectors + v - 1) / v)};
  return {0, 256};
}

template <class T>
void launch(float* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
            float dloss, const float* lse_in, float* lse_out, int vocab_offset, cudaStream_t stream) {
  if (N == 0) return;
  constexpr int VEC = kVec<T>;
  const bool vec = can_vectorize<T>(V, {logits, dlogits});
  const Tile t = tile_for<T>(V, vec ? VEC : 1);
  auto run = [&](auto kernel) {
    launch_kernel(kernel, N, t.threads, 0, stream, losses, dlogits, logits, targets, V, dloss, lse_in,
                  lse_out, vocab_offset);
  };
  if (t.vpt == 0) run(cross_entropy_row_stream<T>);
  else if (vec && t.vpt == 1) run(cross_entropy_row_tile<T, VEC, 1>);
  else if (vec && t.vpt == 2) run(cross_entropy_row_tile<T, VEC, 2>);
  else if (vec && t.vpt == 4) run(cross_entropy_row_tile<T, VEC, 4>);
  else if (vec && t.vpt == 8) run(cross_entropy_row_tile<T, VEC, 8>);
  else if (vec) run(cross_entropy_row_tile<T, VEC, kMaxVpt<T>>);
  else if (t.vpt == 1) run(cross_entropy_row_tile<T, 1, 1>);
  else if (t.vpt == 2) run(cross_entropy_row_tile<T, 1, 2>);
  else if (t.vpt == 4) run(cross_entropy_row_tile<T, 1, 4>);
  else if (t.vpt == 8) run(cross_entropy_row_tile<T, 1, 8>);
  else run(cross_entropy_row_tile<T, 1, kMaxVpt<T>>);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
KernelGrid cross_entropy_grid(int N, int V) {
  return {N, tile_for<T>(V, V % kVec<T> == 0 ? kVec<T> : 1).threads};
}

template <class T>
void cross_entropy(float* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
                   float dloss, cudaStream_t stream) {
  launch<T>(losses, dlogits, logits, targets, N, V, dloss, nullptr, nullptr, 0, stream);
}

template <class T>
void logsumexp_rows(float* lse, const T* logits, int N, int V, cudaStream_t stream) {
  launch<T>(nullptr, nullptr, logits, nullptr, N, V, 0.f, nullptr, lse, 0, stream);
}

template <class T>
void cross_entropy_with_lse(float* losses, T* dlogits, const T* logits, const float* lse,
                            const int32_t* targets, int N, int V, int vocab_offset, float dloss,
                            cudaStream_t stream) {
  launch<T>(losses, dlogits, logits, targets, N, V, dloss, lse, nullptr, vocab_offset, stream);
}

template KernelGrid cross_entropy_grid<float>(int, int);
template KernelGrid cross_entropy_grid<bf16>(int, int);
template void cross_entropy<float>(float*, float*, const float*, const int32_t*, int, int, float, cudaStream_t);
template void cross_entropy<bf16>(float*, bf16*, const bf16*, const int32_t*, int, int, float, cudaStream_t);
template void logsumexp_rows<float>(float*, const float*, int, int, cudaStream_t);
template void logsumexp_rows<bf16>(float*, const bf16*, int, int, cudaStream_t);
template void cross_entropy_with_lse<float>(float*, float*, const float*, const float*, const int32_t*, int,
                                            int, int, float, cudaStream_t);
template void cross_entropy_with_lse<bf16>(float*, bf16*, const bf16*, const float*, const int32_t*, int,
                                           int, int, float, cudaStream_t);

}  // namespace ltrain::cuda
