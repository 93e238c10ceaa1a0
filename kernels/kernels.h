// Host-side launchers of the CUDA kernels (kernels/*.cu), called by the CUDA backend
// (src/cuda/cuda_backend.cpp). Plain C++: no device code, includable from .cpp files.
//
// Conventions (the same as include/ltrain/core/backend.h):
//  - raw row-major device pointers with shape comments; N = B*T rows;
//  - T is the activation type: float or bf16 (explicitly instantiated for both);
//  - statistics (rstd, lse, losses), RoPE tables, parameter gradients, master weights and AdamW
//    moments are fp32;
//  - activation gradients are written (=); parameter gradients and rmsnorm's dinp accumulate (+=);
//  - every launcher enqueues on `stream`, checks the launch, and never synchronizes;
//  - every reduction has a fixed order: two runs give bitwise identical results.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "ltrain/kernels/scratch.h"  // the scratch sizes and grid constants, shared with the memory plan

namespace ltrain::cuda {

using bf16 = __nv_bfloat16;

// ---- embedding.cu ------------------------------------------------------------------------------
template <class T>
void embedding_forward(T* out,                 // (N, C)
                       const int32_t* tokens,  // (N)
                       const T* wte,           // (V, C)
                       int N, int C, int V, cudaStream_t stream);
// dwte (V, C) += rows of dout summed per token; tokens < 0 (another vocabulary shard's) add
// nothing, tokens >= V trap. Deterministic and asynchronous: the rows are grouped by token with
// a sort on the device (in `scratch`), then each token's rows are added in increasing row order.
template <class T>
void embedding_backward(float* dwte,            // (V, C) +=
                        const T* dout,          // (N, C)
                        const int32_t* tokens,  // (N)
                        void* scratch,          // embedding_backward_scratch_bytes(N)
                        int N, int C, int V, cudaStream_t stream);

// The main launch of a memory-bound kernel for a shape (16-byte aligned pointers), as its
// launcher computes it: for the work tests (tests/cuda_emu/work_memory_bound.cpp) and the docs.
struct KernelGrid {
  int64_t blocks;
  int threads;
};

// ---- rmsnorm.cu --------------------------------------------------------------------------------
// Each block normalizes a chunk of rows from registers (a row read once, the weight once per
// block); see kernels/rmsnorm.cu.
template <class T>
KernelGrid rmsnorm_forward_grid(int N, int C);
template <class T>
KernelGrid rmsnorm_backward_grid(int N, int C);
template <class T>
void rmsnorm_forward(T* out,           // (N, C)
                     float* rstd,      // (N)
                     const T* inp,     // (N, C)
                     const T* weight,  // (C)
                     int N, int C, float eps, cudaStream_t stream);
// Its scratch: rmsnorm_backward_scratch_floats(N, C) (ltrain/kernels/scratch.h).
template <class T>
void rmsnorm_backward(T* dinp,           // (N, C) +=
                      float* dweight,    // (C) +=
                      const T* dout,     // (N, C)
                      const T* inp,      // (N, C)
                      const T* weight,   // (C)
                      const float* rstd, // (N)
                      int N, int C, float* scratch, cudaStream_t stream);

// ---- rope.cu -----------------------------------------------------------------------------------
// Interleaved pairs (2i, 2i+1); sign +1 rotates by +angle (forward), -1 by -angle (backward).
// out may alias inp. A block rotates one position of one or more batches (the table row read
// once per block).
template <class T>
KernelGrid rope_grid(int B, int Tn, int NH);
template <class T>
void rope_rotate(T* out,              // (B, T, NH, HD)
                 const T* inp,        // (B, T, NH, HD)
                 const float* freqs,  // (>= T, HD/2, 2) cos, sin
                 int B, int Tn, int NH, int HD, int sign, cudaStream_t stream);

// ---- swiglu.cu (and the residual add) ----------------------------------------------------------
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream);  // (N, FF)
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n,
                     cudaStream_t stream);  // all (N, FF)
template <class T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream);  // out may alias a or b

// ---- cross_entropy.cu --------------------------------------------------------------------------
// losses (N) = logsumexp(row) - row[target]; dlogits (or nullptr) = (softmax - onehot) * dloss,
// written over logits when they alias. A negative target gives loss 0 and gradient 0.
// One block per row, the row held in registers (read once) for V up to 32768 (16-byte accesses).
template <class T>
KernelGrid cross_entropy_grid(int N, int V);
template <class T>
void cross_entropy(float* losses,           // (N)
                   T* dlogits,              // (N, V) or nullptr
                   const T* logits,         // (N, V)
                   const int32_t* targets,  // (N)
                   int N, int V, float dloss, cudaStream_t stream);
// Vocabulary-parallel pieces (Backend::logsumexp_rows, Backend::cross_entropy_with_lse).
template <class T>
void logsumexp_rows(float* lse, const T* logits, int N, int V, cudaStream_t stream);
template <class T>
void cross_entropy_with_lse(float* losses, T* dlogits, const T* logits, const float* lse,
                            const int32_t* targets, int N, int V, int vocab_offset, float dloss,
                            cudaStream_t stream);

// ---- reduce.cu ---------------------------------------------------------------------------------
// Sum of squares in two fixed-order stages: sum_squares_accumulate adds each block's partial
// (fp32 within a thread, double across threads) into partials[block] (zero them first); after
// all tensors, sum_partials adds the kSumSquaresBlocks partials in order into *out. The grid
// (sum_squares_grid) depends on n only: the same result on every device.
template <class T>
KernelGrid sum_squares_grid(int64_t n);
template <class T>
void sum_squares_accumulate(double* partials,  // (kSumSquaresBlocks) +=
                            const T* x, int64_t n, cudaStream_t stream);
void sum_partials(double* out, const double* partials, cudaStream_t stream);
// dst = src converted elementwise (round to nearest even into bf16).
template <class D, class S>
void convert(D* dst, const S* src, int64_t n, cudaStream_t stream);

// ---- adamw.cu ----------------------------------------------------------------------------------
// Fused AdamW in fp32 (decoupled weight decay, bias corrections bc1 = 1 - beta1^t,
// bc2 = 1 - beta2^t computed by the caller in double), grad multiplied by grad_scale first.
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                  float bc1, float bc2, cudaStream_t stream);

// ---- matmul.cu ---------------------------------------------------------------------------------
// Row-major out (M, N) = alpha * op(a) @ op(b) + beta * c through cuBLASLt (c: out itself when
// null, else an (M, N) matrix of out's type that is read, not written): bf16 a and b, fp32
// accumulation (CUBLAS_COMPUTE_32F), out bf16 or fp32. Descriptors and the heuristic's algorithm
// are cached per (shape, flags, out type, pointer alignment). deterministic: only algorithms
// without split-K or with the in-place (ordered) split-K reduction.
class LtMatmul {
 public:
  LtMatmul(size_t workspace_bytes, bool deterministic = false);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;
  void run(void* out, bool out_fp32,  // (M, N)
           const bf16* a,             // (M, K), or (K, M) if trans_a
           const bf16* b,             // (K, N), or (N, K) if trans_b
           int M, int N, int K, bool trans_a, bool trans_b, float alpha, float beta,
           cudaStream_t stream, const void* c = nullptr);
  size_t workspace_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- attention_forward.cu, attention_backward.cu ---------------------------------------------
// Causal grouped-query flash attention (bf16 in and out, fp32 accumulation on tensor cores).
bool attention_supports_head_dim(int HD);  // 64 and 128
void attention_forward(bf16* out,        // (B, T, H, HD)
                       float* lse,       // (B, H, T) natural log
                       const bf16* q,    // (B, T, H, HD)
                       const bf16* k,    // (B, T, KV, HD)
                       const bf16* v,    // (B, T, KV, HD)
                       int B, int Tn, int H, int KV, int HD, cudaStream_t stream);
// The forward's unit of work (tests/cuda_emu/work_attention_forward.cpp): a block takes `queries`
// queries, each of its warps `warp_rows` of them; a warp multiplies its rows with every key tile
// of `keys` keys that starts at or before its last row (none if its first row is past T): two
// products of warp_rows x keys x HD per (warp, key tile).
struct AttentionForwardTile {
  int queries, keys, warp_rows;
};
AttentionForwardTile attention_forward_tile(int HD);
// The backward's unit of work: one tile of `queries` queries against one of `keys` keys (at or
// below the diagonal), five products of queries x keys x HD (tests/cuda_emu/work_attention_backward.cpp).
struct AttentionBackwardTile {
  int queries, keys;
};
AttentionBackwardTile attention_backward_tile(int HD);
// Its scratch (attention_backward_scratch_floats) and its blocks per (b, query head)
// (attention_backward_splits): ltrain/kernels/scratch.h, from the shape only.
// dq, dk, dv written (=). One pass over the (query tile, key tile) pairs; dQ is summed over key
// tiles and dK, dV over each group's query heads in a fixed order: no atomics, deterministic.
void attention_backward(bf16* dq,          // (B, T, H, HD)
                        bf16* dk,          // (B, T, KV, HD)
                        bf16* dv,          // (B, T, KV, HD)
                        const bf16* dout,  // (B, T, H, HD)
                        const bf16* q, const bf16* k, const bf16* v,
                        const bf16* out,   // (B, T, H, HD)
                        const float* lse,  // (B, H, T)
                        float* scratch,    // attention_backward_scratch_floats
                        int B, int Tn, int H, int KV, int HD, cudaStream_t stream);

}  // namespace ltrain::cuda
