// Softmax cross-entropy fused with its gradient, one block per row of logits (N, V):
//   pass 1: each thread keeps an online (max, sum of exp) over its strided columns; the block
//           merges them into lse = logsumexp(row);
//   losses[n] = lse - row[target]   (0 for a negative target)
//   pass 2: dlogits = (exp(row - lse) - onehot(target)) * dloss, written in place over the logits
//           when they alias (each element is read before it is written, by the same thread).
// The model calls this on chunks of rows, so no (N, V) fp32 buffer ever exists.
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void online_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.f;  // exp(-inf) = 0 covers the first element
    m = x;
  } else {
    s += expf(x - m);
  }
}

// Three uses of one kernel: the fused loss + gradient (lse_in == nullptr, vocab_offset 0); the
// row logsumexp of a vocabulary shard alone (lse_out != nullptr: writes lse and returns); and the
// loss + gradient of a shard given the full rows' lse (lse_in != nullptr), where only the rank
// owning the target column (targets[n] - vocab_offset in [0, V)) adds the target term.
template <class T, int VEC>
__global__ void cross_entropy_row_per_block(float* losses, T* dlogits, const T* logits,
                                            const int32_t* targets, int V, float dloss,
                                            const float* lse_in, float* lse_out, int vocab_offset) {
  __shared__ float scratch[32];
  __shared__ float target_logit;
  const int n = blockIdx.x;
  const T* x = logits + int64_t(n) * V;
  const bool ignored = !lse_out && targets[n] < 0;
  const int tgt = lse_out ? -1 : targets[n] - vocab_offset;
  const bool owned = !ignored && tgt >= 0 && tgt < V;
  if (threadIdx.x == 0) target_logit = owned ? to_float(x[tgt]) : 0.f;

  float lse;
  if (lse_in) {
    __syncthreads();  // target_logit
    lse = lse_in[n];
  } else {
    float m = -INFINITY, s = 0.f;
    for (int c = threadIdx.x * VEC; c < V; c += blockDim.x * VEC) {
      Packed<T, VEC> xv = load_packed<T, VEC>(x + c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) online_add(m, s, to_float(xv.v[j]));
    }
    const float row_max = block_max(m, scratch);
    const float sum = block_sum(m == -INFINITY ? 0.f : s * expf(m - row_max), scratch);
    lse = row_max + logf(sum);
  }
  if (lse_out) {
    if (threadIdx.x == 0) lse_out[n] = lse;
    return;
  }
  // The barriers above order target_logit's write before this read, and before pass 2's writes.
  if (threadIdx.x == 0) losses[n] = owned ? lse - target_logit : 0.f;
  if (!dlogits) return;
  T* dx = dlogits + int64_t(n) * V;
  for (int c = threadIdx.x * VEC; c < V; c += blockDim.x * VEC) {
    Packed<T, VEC> xv = load_packed<T, VEC>(x + c), g;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float p = expf(to_float(xv.v[j]) - lse) - (owned && c + j == tgt ? 1.f : 0.f);
      g.v[j] = from_float<T>(ignored ? 0.f : p * dloss);
    }
    store_packed<T, VEC>(dx + c, g);
  }
}

}  // namespace

namespace {
template <class T>
void launch(float* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
            float dloss, const float* lse_in, float* lse_out, int vocab_offset, cudaStream_t stream) {
  if (N == 0) return;
  if (can_vectorize<T>(V, {logits, dlogits}))
    launch_kernel(cross_entropy_row_per_block<T, kVec<T>>, N, kThreads, 0, stream,
        losses, dlogits, logits, targets, V, dloss, lse_in, lse_out, vocab_offset);
  else
    launch_kernel(cross_entropy_row_per_block<T, 1>, N, kThreads, 0, stream,
        losses, dlogits, logits, targets, V, dloss, lse_in, lse_out, vocab_offset);
  CUDA_CHECK_LAUNCH();
}
}  // namespace

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

template void cross_entropy<float>(float*, float*, const float*, const int32_t*, int, int, float, cudaStream_t);
template void cross_entropy<bf16>(float*, bf16*, const bf16*, const int32_t*, int, int, float, cudaStream_t);
template void logsumexp_rows<float>(float*, const float*, int, int, cudaStream_t);
template void logsumexp_rows<bf16>(float*, const bf16*, int, int, cudaStream_t);
template void cross_entropy_with_lse<float>(float*, float*, const float*, const float*, const int32_t*, int,
                                            int, int, float, cudaStream_t);
template void cross_entropy_with_lse<bf16>(float*, bf16*, const bf16*, const float*, const int32_t*, int,
                                           int, int, float, cudaStream_t);

}  // namespace ltrain::cuda
