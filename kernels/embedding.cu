// Token embedding lookup and its gradient.
//   forward:  out (N, C) = wte[tokens[n]]                 (=)
//   backward: dwte (V, C) += sum of dout rows per token    (+=, fp32)
// The backward is deterministic and stays on the device (no host round trip, no stream sync):
//  1. keys[n] = (token << 32) | n, with tokens of another vocabulary shard (< 0) mapped to an id
//     above every real one; a bitonic sort of the N keys (chunks of 2048 sorted in shared
//     memory, then the larger merge stages: their long-distance steps one launch each over all
//     pairs, their last 11 steps in shared memory again). Keys are distinct, so the order is
//     unique: rows grouped by token, in increasing row order within a token.
//  2. One block per sorted position and slice of columns: the block at the first position of a
//     token adds that token's rows in order; every other block returns at once.
// No atomics: repeated tokens sum in the same order every run.
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

// ---- the sort of (token, row) keys ----
constexpr int kSortThreads = 1024;
constexpr int kSortChunk = 2 * kSortThreads;  // keys per block in shared memory (16 KiB)
constexpr uint32_t kOtherShard = 0x7FFFFFFFu;  // the id of a row whose token is another shard's

__device__ __forceinline__ uint32_t key_token(uint64_t key) { return uint32_t(key >> 32); }

// Compare-exchange: the smaller key to the lower index.
__device__ __forceinline__ void order_pair(uint64_t* a, int64_t i, int64_t j) {
  const uint64_t x = a[i], y = a[j];
  if (y < x) {
    a[i] = y;
    a[j] = x;
  }
}

// Pair p of a step: the lower index i and its partner. A "flip" step of stage k pairs i with its
// mirror in its block of k (i ^ (k - 1)); a plain step of distance j pairs i with i + j. Every
// comparator puts the smaller key first, so a key past the end behaves as +infinity and its
// comparators can be skipped: the sort needs no padding to a power of two.
__device__ __forceinline__ void step_pair(int64_t p, int64_t k, int64_t j, bool flip, int64_t& i,
                                          int64_t& partner) {
  if (flip) {
    const int64_t half = k / 2;
    i = (p / half) * k + p % half;
    partner = i ^ (k - 1);
  } else {
    i = (p / j) * 2 * j + p % j;
    partner = i + j;
  }
}

// Builds the keys and sorts each chunk of kSortChunk; grid ceil(N / kSortChunk), kSortThreads.
__global__ void __launch_bounds__(kSortThreads)
    embedding_sort_chunks(uint64_t* keys, const int32_t* tokens, int N, int V) {
  __shared__ uint64_t s[kSortChunk];
  const int64_t base = int64_t(blockIdx.x) * kSortChunk;
  const int n = int(min(int64_t(kSortChunk), N - base));
  for (int i = threadIdx.x; i < kSortChunk; i += blockDim.x) {
    uint64_t key = ~uint64_t(0);  // past the end: sorts last, never written back
    if (i < n) {
      const int row = int(base + i), tok = tokens[row];
      if (tok >= V) __trap();  // an out-of-range id is a data bug; fail loudly
      key = (uint64_t(tok < 0 ? kOtherShard : uint32_t(tok)) << 32) | uint32_t(row);
    }
    s[i] = key;
  }
  for (int k = 2; k <= kSortChunk; k *= 2)
    for (int j = k / 2; j >= 1; j /= 2) {
      __syncthreads();
      int64_t i, partner;
      step_pair(threadIdx.x, k, j, j == k / 2, i, partner);
      order_pair(s, i, partner);
    }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) keys[base + i] = s[i];
}

// One long-distance step of merge stage k (distance j >= kSortChunk, or the flip) over all
// pairs; grid over ceil(P / 256) blocks of 256 threads, P = pairs of the padded length.
__global__ void embedding_sort_step(uint64_t* keys, int64_t N, int64_t pairs, int64_t k, int64_t j,
                                    int flip) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  int64_t i, partner;
  step_pair(p, k, j, flip != 0, i, partner);
  if (partner < N) order_pair(keys, i, partner);
}

// The steps of distance kSortChunk / 2 .. 1 of a merge stage, one chunk per block in shared memory.
__global__ void __launch_bounds__(kSortThreads)
    embedding_sort_chunk_tail(uint64_t* keys, int N) {
  __shared__ uint64_t s[kSortChunk];
  const int64_t base = int64_t(blockIdx.x) * kSortChunk;
  const int n = int(min(int64_t(kSortChunk), N - base));
  for (int i = threadIdx.x; i < kSortChunk; i += blockDim.x) s[i] = i < n ? keys[base + i] : ~uint64_t(0);
  for (int j = kSortChunk / 2; j >= 1; j /= 2) {
    __syncthreads();
    int64_t i, partner;
    step_pair(threadIdx.x, kSortChunk, j, false, i, partner);
    order_pair(s, i, partner);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) keys[base + i] = s[i];
}

// grid (N sorted positions, column blocks): the block at a token's first position sums its rows.
template <class T, int VEC>
__global__ void embedding_backward_segment_per_block(float* dwte, const T* dout,
                                                     const uint64_t* keys, int N, int C) {
  const int first = blockIdx.x;
  const uint32_t tok = key_token(keys[first]);
  if (tok == kOtherShard || (first > 0 && key_token(keys[first - 1]) == tok)) return;
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
  if (c >= C) return;
  float acc[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc[j] = 0.f;
  for (int i = first; i < N && key_token(keys[i]) == tok; ++i) {
    const T* src = dout + int64_t(uint32_t(keys[i])) * C + c;
    if constexpr (VEC > 1) {
      Packed<T, VEC> x = load_packed<T, VEC>(src);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += to_float(x.v[j]);
    } else {
      acc[0] += to_float(*src);
    }
  }
  float* dst = dwte + int64_t(tok) * C + c;
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
void embedding_backward(float* dwte, const T* dout, const int32_t* tokens, void* scratch, int N,
                        int C, int V, cudaStream_t stream) {
  if (N == 0) return;
  auto* keys = static_cast<uint64_t*>(scratch);
  const unsigned chunks = ceil_div(N, kSortChunk);
  launch_kernel(embedding_sort_chunks, chunks, kSortThreads, 0, stream, keys, tokens, N, V);
  CUDA_CHECK_LAUNCH();
  int64_t padded = kSortChunk;
  while (padded < N) padded *= 2;
  const int64_t pairs = padded / 2;
  for (int64_t k = 2 * kSortChunk; k <= padded; k *= 2) {
    for (int64_t j = k / 2; j >= kSortChunk; j /= 2) {
      launch_kernel(embedding_sort_step, ceil_div(pairs, 256), 256, 0, stream, keys, int64_t(N), pairs,
                    k, j, int(j == k / 2));
      CUDA_CHECK_LAUNCH();
    }
    launch_kernel(embedding_sort_chunk_tail, chunks, kSortThreads, 0, stream, keys, N);
    CUDA_CHECK_LAUNCH();
  }
  // 8 columns per thread on the vector path: one 16-byte bf16 load, two 16-byte fp32 stores.
  constexpr int VEC = 8;
  if (C % VEC == 0 && reinterpret_cast<uintptr_t>(dout) % (VEC * sizeof(T)) == 0 &&
      reinterpret_cast<uintptr_t>(dwte) % 32 == 0) {
    dim3 grid(N, ceil_div(C, int64_t(kThreads) * VEC));
    launch_kernel(embedding_backward_segment_per_block<T, VEC>, grid, kThreads, 0, stream, dwte, dout,
                  (const uint64_t*)keys, N, C);
  } else {
    dim3 grid(N, ceil_div(C, kThreads));
    launch_kernel(embedding_backward_segment_per_block<T, 1>, grid, kThreads, 0, stream, dwte, dout,
                  (const uint64_t*)keys, N, C);
  }
  CUDA_CHECK_LAUNCH();
}

#define LTRAIN_INSTANTIATE(T)                                                                   \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int, int, int, cudaStream_t); \
  template void embedding_backward<T>(float*, const T*, const int32_t*, void*, int, int, int,   \
                                      cudaStream_t);
LTRAIN_INSTANTIATE(float)
LTRAIN_INSTANTIATE(bf16)
#undef LTRAIN_INSTANTIATE

}  // namespace ltrain::cuda
