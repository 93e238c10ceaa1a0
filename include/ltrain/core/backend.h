// The backend interface: memory and every op the model and optimizer call.
//
// Two implementations: the CPU backend (src/cpu/, fp32, OpenMP threads and BLAS; the same code in
// double precision is the test oracle) and the CUDA backend (kernels/, cuBLASLt, bf16 compute).
// Adding an op means: declare it here (this is the one registration point), implement it in
// src/cpu/ops.h and in kernels/, and test it in tests/.
//
// Conventions that hold for every op:
//  - Shapes come from the tensors; the comments give them with the fixed letters
//    N = B*T rows, C hidden, H query heads, KV key/value heads, HD head dim, FF, V.
//  - Activation gradients are written with `=`, parameter gradients are accumulated with `+=`
//    (so gradient accumulation over micro-batches needs no extra pass). Exceptions say so.
//  - Weights and activations are in compute_dtype(); statistics kept for backward (rstd, lse),
//    per-token losses, parameter gradients, master weights and optimizer moments are in
//    master_dtype() (fp32, or fp64 for the test oracle).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "ltrain/core/tensor.h"

namespace ltrain {

// One AdamW step for one tensor. The global-norm clipping factor is folded into grad_scale so the
// gradients are read once.
struct AdamWStep {
  double lr;
  double beta1, beta2, eps;
  double weight_decay;  // 0 for tensors that do not decay
  double grad_scale;    // gradient multiplier (clipping), applied before the moments
  int step;            // 1-based, for bias correction
};

// Timestamps taken in a backend's execution order, for profilers (`ltrain bench --profile`).
// record() marks the point after all work issued so far; seconds_between() is the time between
// two marks once the work before the later one has run (it waits for that). On the CUDA backend
// the marks are CUDA events on its stream, so recording does not synchronize; on the CPU backend,
// whose ops are synchronous, a mark is the host clock.
class EventTimer {
 public:
  virtual ~EventTimer() = default;
  virtual int record() = 0;                          // the mark's index, 0, 1, 2, ...
  virtual double seconds_between(int from, int to) = 0;
  virtual void clear() = 0;                          // forget every mark; indices restart at 0
  virtual const char* method() const = 0;            // how the marks are taken, for reports
};
// Host wall-clock marks: right for a backend whose ops have finished when they return.
std::unique_ptr<EventTimer> make_host_event_timer();

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Whether tensors live on a CUDA device (device memory, a stream, NCCL for collectives): what
  // the trainer, the memory plan and bench ask, instead of parsing name().
  virtual bool is_cuda() const { return false; }
  virtual DType compute_dtype() const = 0;
  virtual DType master_dtype() const = 0;

  // ---- memory -------------------------------------------------------------------------------
  virtual Tensor alloc(Shape shape, DType dtype) = 0;  // zero-filled
  virtual void free(Tensor& t) = 0;
  // Host transfers convert between the tensor's dtype and the host buffer's dtype.
  virtual void from_host(Tensor dst, const void* src, DType src_dtype) = 0;
  virtual void to_host(void* dst, DType dst_dtype, const Tensor& src) = 0;
  virtual void copy(Tensor dst, const Tensor& src) = 0;  // converts dtype; same numel
  virtual void zero(Tensor t) = 0;
  virtual void synchronize() {}
  virtual size_t bytes_allocated() const = 0;
  // Marks in this backend's execution order (see EventTimer); must not outlive the backend.
  virtual std::unique_ptr<EventTimer> make_event_timer() = 0;

  // ---- matrix products ----------------------------------------------------------------------
  // out (M, N) = alpha * op(a) @ op(b) + beta * c, op(x) = x or x^T; all 2-D row-major. c is
  // out itself when not given (defined); otherwise it has out's shape and dtype and is read, not
  // written: a residual add in the product's epilogue, with no copy of the residual first.
  virtual void matmul(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                      float alpha = 1.0f, float beta = 0.0f, const Tensor& c = Tensor{}) = 0;

  // ---- transformer ops ----------------------------------------------------------------------
  // out (N, C) = wte (V, C) rows picked by tokens (N) i32. A negative token gives a zero row and
  // no gradient: with a vocabulary split over tensor-parallel ranks, ids of other shards are -1.
  virtual void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& wte) = 0;
  // dwte (V, C) += scatter of dout (N, C) by tokens
  virtual void embedding_backward(Tensor dwte, const Tensor& dout, const Tensor& tokens) = 0;

  // out (N, C) = inp * rsqrt(mean(inp^2) + eps) * weight (C); rstd (N) saved for backward
  virtual void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight,
                               float eps) = 0;
  // dinp (N, C) += ...  (accumulates: dinp is the residual stream's gradient), dweight += ...
  virtual void rmsnorm_backward(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                                const Tensor& weight, const Tensor& rstd) = 0;

  // Rotary embedding on (B, T, NH, HD), interleaved pairs (2i, 2i+1) as in Meta's LLaMA code.
  // freqs (T, HD/2, 2) holds cos and sin of t * theta^(-2i/HD). out may alias inp.
  virtual void rope_forward(Tensor out, const Tensor& inp, const Tensor& freqs) = 0;
  virtual void rope_backward(Tensor dinp, const Tensor& dout, const Tensor& freqs) = 0;

  // Causal attention, grouped-query: q (B, T, H, HD), k and v (B, T, KV, HD), H % KV == 0;
  // query head h reads key/value head h / (H / KV). Scale 1/sqrt(HD).
  // out (B, T, H, HD); lse (B, H, T) log-sum-exp of each softmax row, kept for backward.
  virtual void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k,
                                 const Tensor& v) = 0;
  // dq, dk, dv written (=), probabilities recomputed from lse.
  virtual void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout,
                                  const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse) = 0;

  // out (N, FF) = silu(gate) * up
  virtual void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up) = 0;
  virtual void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                               const Tensor& up) = 0;

  // out = a + b, elementwise; out may alias a or b.
  virtual void add(Tensor out, const Tensor& a, const Tensor& b) = 0;

  // Softmax cross-entropy per row of logits (N, V) against targets (N) i32; a negative target is
  // ignored (loss 0, gradient 0). losses (N) written. If dlogits is defined it receives
  // (softmax - onehot) * dloss; it may alias logits, which is how the model avoids a second
  // (N, V) buffer.
  virtual void cross_entropy(Tensor losses, Tensor dlogits, const Tensor& logits,
                             const Tensor& targets, float dloss) = 0;
  // Vocabulary-parallel cross-entropy, in two ops around a host-side merge of the shards' lse:
  // logits (N, V/P) hold columns [vocab_offset, vocab_offset + V/P) of the full logits.
  //   logsumexp_rows: lse (N) = logsumexp of each row of this shard;
  //   cross_entropy_with_lse: with the full rows' lse (N), losses (N) = lse - logit[target] on the
  //   rank that owns the target column and 0 elsewhere (the sum over ranks is the loss), and
  //   dlogits = (exp(logits - lse) - onehot) * dloss, in place when dlogits aliases logits.
  virtual void logsumexp_rows(Tensor lse, const Tensor& logits) = 0;
  virtual void cross_entropy_with_lse(Tensor losses, Tensor dlogits, const Tensor& logits,
                                      const Tensor& lse, const Tensor& targets, int vocab_offset,
                                      float dloss) = 0;

  // ---- optimizer ----------------------------------------------------------------------------
  // Sum of squares over all elements of all tensors, in double.
  virtual double sum_squares(const std::vector<Tensor>& tensors) = 0;
  // param, m, v (master dtype) updated in place from grad.
  virtual void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v,
                            const AdamWStep& s) = 0;
};

// The CPU backend in fp32 (training) or fp64 (the test oracle).
std::unique_ptr<Backend> make_cpu_backend(DType dtype = DType::kF32);

}  // namespace ltrain
