// The backend interface: memory and every op the model and optimizer call.
//
// Two implementations: the CPU backend (src/cpu/, fp32, OpenMP threads and BLAS; the same code in
// double precision is the test oracle) and the CUDA backend (kernels/, cuBLASLt, bf16 compute).
// Every op is a non-virtual method here that checks the shapes (and the dtype rules every backend
// shares) once, tells the op observer (if one is set) when it begins and ends, and calls the
// backend's protected virtual `<op>_impl`. docs/architecture.md, "How to add an op", lists the
// files a new op touches.
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
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "ltrain/core/check.h"
#include "ltrain/core/op_observer.h"
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

enum class BackendKind { kCpu, kCuda };

// The device a backend runs on, for reports (bench) and memory checks. Byte counts are -1 when the
// backend does not know them (the CPU backend).
struct DeviceInfo {
  std::string name;          // the CUDA device's name, or the CPU model with the thread count
  int64_t total_bytes = -1;  // device memory
  int64_t free_bytes = -1;   // free now, every process and context on the device counted
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual BackendKind kind() const = 0;
  // Whether tensors live on a CUDA device (device memory, a stream, NCCL for collectives): what
  // the trainer, the memory plan and bench ask, instead of parsing name().
  bool is_cuda() const { return kind() == BackendKind::kCuda; }
  virtual DType compute_dtype() const = 0;
  virtual DType master_dtype() const = 0;
  virtual DeviceInfo device_info() const { return DeviceInfo{name()}; }

  // The observer told about every op from now on; nullptr for none (the default).
  void set_observer(OpObserver* observer) { observer_ = observer; }
  OpObserver* observer() const { return observer_; }

  // ---- memory -------------------------------------------------------------------------------
  Tensor alloc(Shape shape, DType dtype);  // zero-filled
  void free(Tensor& t);
  // Host transfers convert between the tensor's dtype and the host buffer's dtype.
  void from_host(Tensor dst, const void* src, DType src_dtype);
  void to_host(void* dst, DType dst_dtype, const Tensor& src);
  void copy(Tensor dst, const Tensor& src);  // converts dtype; same numel
  void zero(Tensor t);
  void synchronize();
  virtual size_t bytes_allocated() const = 0;
  // Marks in this backend's execution order (see EventTimer); must not outlive the backend.
  virtual std::unique_ptr<EventTimer> make_event_timer() = 0;

  // ---- matrix products ----------------------------------------------------------------------
  // out (M, N) = alpha * op(a) @ op(b) + beta * c, op(x) = x or x^T; all 2-D row-major. c is
  // out itself when not given (defined); otherwise it has out's shape and dtype and is read, not
  // written: a residual add in the product's epilogue, with no copy of the residual first.
  // a and b share a dtype; out (and c) is in a's dtype or the master dtype.
  void matmul(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
              float alpha = 1.0f, float beta = 0.0f, const Tensor& c = Tensor{});

  // ---- transformer ops ----------------------------------------------------------------------
  // Dtypes: an op's activations (inputs, outputs and their gradients) share one dtype; rstd, lse,
  // losses and the embedding's dwte are in master_dtype(); token ids and targets are i32. Which
  // activation dtypes a backend computes in is its own rule (checked in its _impl).

  // out (N, C) = wte (V, C) rows picked by tokens (N) i32. A negative token gives a zero row and
  // no gradient: with a vocabulary split over tensor-parallel ranks, ids of other shards are -1.
  void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& wte);
  // dwte (V, C) += scatter of dout (N, C) by tokens
  void embedding_backward(Tensor dwte, const Tensor& dout, const Tensor& tokens);

  // out (N, C) = inp * rsqrt(mean(inp^2) + eps) * weight (C); rstd (N) saved for backward
  void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight, float eps);
  // dinp (N, C) += ...  (accumulates: dinp is the residual stream's gradient), dweight += ...
  void rmsnorm_backward(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                        const Tensor& weight, const Tensor& rstd);

  // Rotary embedding on (B, T, NH, HD), interleaved pairs (2i, 2i+1) as in Meta's LLaMA code.
  // freqs (T, HD/2, 2) holds cos and sin of t * theta^(-2i/HD). out may alias inp.
  void rope_forward(Tensor out, const Tensor& inp, const Tensor& freqs);
  void rope_backward(Tensor dinp, const Tensor& dout, const Tensor& freqs);

  // Causal attention, grouped-query: q (B, T, H, HD), k and v (B, T, KV, HD), H % KV == 0;
  // query head h reads key/value head h / (H / KV). Scale 1/sqrt(HD).
  // out (B, T, H, HD); lse (B, H, T) log-sum-exp of each softmax row, kept for backward.
  void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v);
  // dq, dk, dv written (=), probabilities recomputed from lse.
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse);

  // out (N, FF) = silu(gate) * up
  void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up);
  void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                       const Tensor& up);

  // out = a + b, elementwise; out may alias a or b.
  void add(Tensor out, const Tensor& a, const Tensor& b);

  // Softmax cross-entropy per row of logits (N, V) against targets (N) i32; a negative target is
  // ignored (loss 0, gradient 0). losses (N) written. If dlogits is defined it receives
  // (softmax - onehot) * dloss; it may alias logits, which is how the model avoids a second
  // (N, V) buffer.
  void cross_entropy(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& targets,
                     float dloss);
  // Vocabulary-parallel cross-entropy, in two ops around a host-side merge of the shards' lse:
  // logits (N, V/P) hold columns [vocab_offset, vocab_offset + V/P) of the full logits.
  //   logsumexp_rows: lse (N) = logsumexp of each row of this shard;
  //   cross_entropy_with_lse: with the full rows' lse (N), losses (N) = lse - logit[target] on the
  //   rank that owns the target column and 0 elsewhere (the sum over ranks is the loss), and
  //   dlogits = (exp(logits - lse) - onehot) * dloss, in place when dlogits aliases logits.
  void logsumexp_rows(Tensor lse, const Tensor& logits);
  void cross_entropy_with_lse(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& lse,
                              const Tensor& targets, int vocab_offset, float dloss);

  // ---- optimizer ----------------------------------------------------------------------------
  // Sum of squares over all elements of all tensors, in double.
  double sum_squares(const std::vector<Tensor>& tensors);
  // param, m, v, grad (master dtype): param, m, v updated in place from grad.
  void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWStep& s);

 protected:
  // What each backend implements: the public method of the same name has checked the shapes and
  // the shared dtype rules already. Memory is required; an op a backend lacks fails when called
  // (a backend that only counts allocations, tests/test_memory_plan.cpp, implements no op).
  virtual Tensor alloc_impl(Shape shape, DType dtype) = 0;
  virtual void free_impl(Tensor& t) = 0;
  virtual void from_host_impl(Tensor dst, const void* src, DType src_dtype) = 0;
  virtual void to_host_impl(void* dst, DType dst_dtype, const Tensor& src) = 0;
  virtual void copy_impl(Tensor dst, const Tensor& src) = 0;
  virtual void zero_impl(Tensor t) = 0;
  virtual void synchronize_impl() {}

  virtual void matmul_impl(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                           float alpha, float beta, const Tensor& c) { unsupported("matmul"); }
  virtual void embedding_forward_impl(Tensor out, const Tensor& tokens, const Tensor& wte) {
    unsupported("embedding_forward");
  }
  virtual void embedding_backward_impl(Tensor dwte, const Tensor& dout, const Tensor& tokens) {
    unsupported("embedding_backward");
  }
  virtual void rmsnorm_forward_impl(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight,
                                    float eps) { unsupported("rmsnorm_forward"); }
  virtual void rmsnorm_backward_impl(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                                     const Tensor& weight, const Tensor& rstd) {
    unsupported("rmsnorm_backward");
  }
  // Both directions of the rotary embedding: sign +1 rotates by the angles (forward), -1 by minus
  // the angles, which is the backward (a rotation's transpose is its inverse).
  virtual void rope_impl(Tensor out, const Tensor& inp, const Tensor& freqs, int sign) { unsupported("rope"); }
  virtual void attention_forward_impl(Tensor out, Tensor lse, const Tensor& q, const Tensor& k,
                                      const Tensor& v) { unsupported("attention_forward"); }
  virtual void attention_backward_impl(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout,
                                       const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse) {
    unsupported("attention_backward");
  }
  virtual void swiglu_forward_impl(Tensor out, const Tensor& gate, const Tensor& up) {
    unsupported("swiglu_forward");
  }
  virtual void swiglu_backward_impl(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                                    const Tensor& up) { unsupported("swiglu_backward"); }
  virtual void add_impl(Tensor out, const Tensor& a, const Tensor& b) { unsupported("add"); }
  virtual void cross_entropy_impl(Tensor losses, Tensor dlogits, const Tensor& logits,
                                  const Tensor& targets, float dloss) { unsupported("cross_entropy"); }
  virtual void logsumexp_rows_impl(Tensor lse, const Tensor& logits) { unsupported("logsumexp_rows"); }
  virtual void cross_entropy_with_lse_impl(Tensor losses, Tensor dlogits, const Tensor& logits,
                                           const Tensor& lse, const Tensor& targets, int vocab_offset,
                                           float dloss) { unsupported("cross_entropy_with_lse"); }
  virtual double sum_squares_impl(const std::vector<Tensor>& tensors) {
    unsupported("sum_squares");
  }
  virtual void adamw_update_impl(Tensor param, const Tensor& grad, Tensor m, Tensor v,
                                 const AdamWStep& s) { unsupported("adamw_update"); }

 private:
  // Brackets one public op: tells the observer, unless the op runs inside another op.
  class OpScope {
   public:
    OpScope(Backend& be, const OpInfo& info) : be_(be), info_(info), outer_(be.op_depth_++ == 0) {
      if (outer_ && be_.observer_) be_.observer_->op_begin(info_);
    }
    ~OpScope() {
      --be_.op_depth_;
      if (outer_ && be_.observer_) be_.observer_->op_end(info_);
    }
    OpScope(const OpScope&) = delete;
    OpScope& operator=(const OpScope&) = delete;

   private:
    Backend& be_;
    OpInfo info_;
    bool outer_;
  };
  [[noreturn]] void unsupported(const char* op) const {
    fatal_error(__FILE__, __LINE__, op, "implemented", "the " + name() + " backend has no " + op);
  }
  OpObserver* observer_ = nullptr;
  int op_depth_ = 0;
};

// ---- the one place per op: checks, then the observer, then the backend -----------------------
// Defined here, next to the declarations, so that an op's contract, its checks and its report to
// observers are read (and added) in one file.

namespace backend_check {

// Bytes of the tensors an op reads or writes once each (undefined tensors count 0).
inline double bytes_of(std::initializer_list<const Tensor*> ts) {
  double b = 0;
  for (const Tensor* t : ts)
    if (t->defined()) b += double(t->bytes());
  return b;
}

inline void dtype_is(const Tensor& t, DType want, const char* op, const char* what) {
  LTRAIN_CHECK(t.dtype == want, "" << op << ": " << what << " must be " << dtype_name(want) << ", got "
                                   << dtype_name(t.dtype) << " " << t.shape.str());
}

// Every tensor in `ts` has `want`'s dtype (an op's activations share one).
inline void same_dtype(std::initializer_list<const Tensor*> ts, const Tensor& want, const char* op) {
  for (const Tensor* t : ts) dtype_is(*t, want.dtype, op, "activations and their gradients");
}

inline int64_t last_dim(const Tensor& t) { return t.shape.ndim > 0 ? t.shape.dims[t.shape.ndim - 1] : 0; }

// Rotary embedding: inp (B, T, NH, HD), out as large, freqs (>= T, HD/2, 2) in the master dtype.
inline void rope(const Tensor& out, const Tensor& inp, const Tensor& freqs, DType master, const char* op) {
  const auto& s = inp.shape;
  LTRAIN_CHECK(s.ndim == 4 && out.numel() == inp.numel() && freqs.shape.ndim >= 1 &&
                   freqs.shape.dims[0] >= s.dims[1] && freqs.numel() / freqs.shape.dims[0] == s.dims[3],
               "" << op << ": inp " << s.str() << " out " << out.shape.str() << " freqs " << freqs.shape.str());
  same_dtype({&out}, inp, op);
  dtype_is(freqs, master, op, "freqs");
}

// Attention: q (B, T, H, HD), k and v (B, T, KV, HD) with H % KV == 0.
inline void attention(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  LTRAIN_CHECK(q.shape.ndim == 4 && k.shape.ndim == 4 && k.shape == v.shape,
               "" << op << ": q (B, T, H, HD), k and v (B, T, KV, HD), got q " << q.shape.str() << " k "
                  << k.shape.str() << " v " << v.shape.str());
  LTRAIN_CHECK(k.shape.dims[0] == q.shape.dims[0] && k.shape.dims[1] == q.shape.dims[1] &&
                   k.shape.dims[3] == q.shape.dims[3] && k.shape.dims[2] > 0 &&
                   q.shape.dims[2] % k.shape.dims[2] == 0,
               "" << op << ": q " << q.shape.str() << " does not match k " << k.shape.str());
  same_dtype({&k, &v}, q, op);
}

}  // namespace backend_check

inline Tensor Backend::alloc(Shape shape, DType dtype) {
  OpScope op(*this, {"alloc", OpFamily::kHost, -1, 0, shape});
  return alloc_impl(shape, dtype);
}
inline void Backend::free(Tensor& t) {
  OpScope op(*this, {"free", OpFamily::kHost, -1, 0, t.shape});
  free_impl(t);
}
inline void Backend::from_host(Tensor dst, const void* src, DType src_dtype) {
  OpScope op(*this, {"from_host", OpFamily::kHost, -1, 0, dst.shape});
  from_host_impl(dst, src, src_dtype);
}
inline void Backend::to_host(void* dst, DType dst_dtype, const Tensor& src) {
  OpScope op(*this, {"to_host", OpFamily::kHost, -1, 0, src.shape});
  to_host_impl(dst, dst_dtype, src);
}
inline void Backend::copy(Tensor dst, const Tensor& src) {
  LTRAIN_CHECK(dst.numel() == src.numel(), "copy " << dst.shape.str() << " vs " << src.shape.str());
  // A copy onto itself moves nothing.
  const double bytes = dst.data == src.data && dst.dtype == src.dtype ? 0.0 : backend_check::bytes_of({&dst, &src});
  OpScope op(*this, {"copy", OpFamily::kMemory, bytes, 0, dst.shape});
  copy_impl(dst, src);
}
inline void Backend::zero(Tensor t) {
  OpScope op(*this, {"zero", OpFamily::kMemory, backend_check::bytes_of({&t}), 0, t.shape});
  zero_impl(t);
}
inline void Backend::synchronize() {
  synchronize_impl();
  if (observer_) observer_->synchronized();
}

inline void Backend::matmul(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                            float alpha, float beta, const Tensor& c) {
  LTRAIN_CHECK(out.shape.ndim == 2 && a.shape.ndim == 2 && b.shape.ndim == 2,
               "matmul: 2-D tensors, got out " << out.shape.str() << " a " << a.shape.str() << " b "
                                               << b.shape.str());
  const int64_t M = trans_a ? a.shape.dims[1] : a.shape.dims[0];
  const int64_t K = trans_a ? a.shape.dims[0] : a.shape.dims[1];
  const int64_t Kb = trans_b ? b.shape.dims[1] : b.shape.dims[0];
  const int64_t N = trans_b ? b.shape.dims[0] : b.shape.dims[1];
  LTRAIN_CHECK(K == Kb && out.shape.dims[0] == M && out.shape.dims[1] == N,
               "matmul shapes: out " << out.shape.str() << " a " << a.shape.str() << (trans_a ? "^T" : "")
                                     << " b " << b.shape.str() << (trans_b ? "^T" : ""));
  backend_check::dtype_is(b, a.dtype, "matmul", "b (a's dtype)");
  LTRAIN_CHECK(out.dtype == a.dtype || out.dtype == master_dtype(),
               "matmul: out must be " << dtype_name(a.dtype) << " or " << dtype_name(master_dtype()) << ", got "
                                      << dtype_name(out.dtype));
  LTRAIN_CHECK(!c.defined() || (c.dtype == out.dtype && c.shape == out.shape),
               "matmul: c " << c.shape.str() << " " << dtype_name(c.dtype) << " vs out " << out.shape.str() << " "
                            << dtype_name(out.dtype));
  OpScope op(*this, {"matmul", OpFamily::kMatmul, -1, 2.0 * double(M) * double(N) * double(K), out.shape});
  matmul_impl(out, a, b, trans_a, trans_b, alpha, beta, c);
}

inline void Backend::embedding_forward(Tensor out, const Tensor& tokens, const Tensor& wte) {
  backend_check::dtype_is(tokens, DType::kI32, "embedding_forward", "tokens");
  LTRAIN_CHECK(wte.shape.ndim == 2 && out.numel() == tokens.numel() * wte.shape.dims[1],
               "embedding_forward: out " << out.shape.str() << " tokens " << tokens.shape.str() << " wte "
                                         << wte.shape.str());
  backend_check::same_dtype({&out}, wte, "embedding_forward");
  // The rows read from wte are as large as out.
  const double bytes = 2 * backend_check::bytes_of({&out}) + backend_check::bytes_of({&tokens});
  OpScope op(*this, {"embedding_forward", OpFamily::kEmbedding, bytes, 0, out.shape});
  embedding_forward_impl(out, tokens, wte);
}
inline void Backend::embedding_backward(Tensor dwte, const Tensor& dout, const Tensor& tokens) {
  backend_check::dtype_is(tokens, DType::kI32, "embedding_backward", "tokens");
  backend_check::dtype_is(dwte, master_dtype(), "embedding_backward", "dwte");
  LTRAIN_CHECK(dwte.shape.ndim == 2 && dout.numel() == tokens.numel() * dwte.shape.dims[1],
               "embedding_backward: dwte " << dwte.shape.str() << " dout " << dout.shape.str() << " tokens "
                                           << tokens.shape.str());
  OpScope op(*this, {"embedding_backward", OpFamily::kEmbedding, -1, 0, dwte.shape});
  embedding_backward_impl(dwte, dout, tokens);
}

inline void Backend::rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight,
                                     float eps) {
  const int64_t C = weight.numel(), N = C > 0 ? inp.numel() / C : 0;
  LTRAIN_CHECK(C > 0 && inp.numel() == N * C && out.numel() == inp.numel() && rstd.numel() == N,
               "rmsnorm_forward shapes: out " << out.shape.str() << " rstd " << rstd.shape.str() << " inp "
                                              << inp.shape.str() << " weight " << weight.shape.str());
  backend_check::same_dtype({&out, &weight}, inp, "rmsnorm_forward");
  backend_check::dtype_is(rstd, master_dtype(), "rmsnorm_forward", "rstd");
  OpScope op(*this, {"rmsnorm_forward", OpFamily::kRmsnorm,
                     backend_check::bytes_of({&out, &rstd, &inp, &weight}), 0, out.shape});
  rmsnorm_forward_impl(out, rstd, inp, weight, eps);
}
inline void Backend::rmsnorm_backward(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                                      const Tensor& weight, const Tensor& rstd) {
  const int64_t C = weight.numel(), N = C > 0 ? inp.numel() / C : 0;
  LTRAIN_CHECK(C > 0 && inp.numel() == N * C && dinp.numel() == inp.numel() && dout.numel() == inp.numel() &&
                   dweight.numel() == C && rstd.numel() == N,
               "rmsnorm_backward shapes: dinp " << dinp.shape.str() << " dweight " << dweight.shape.str()
                                                << " dout " << dout.shape.str() << " inp " << inp.shape.str()
                                                << " rstd " << rstd.shape.str());
  backend_check::same_dtype({&dinp, &dout, &weight}, inp, "rmsnorm_backward");
  backend_check::dtype_is(dweight, master_dtype(), "rmsnorm_backward", "dweight");
  backend_check::dtype_is(rstd, master_dtype(), "rmsnorm_backward", "rstd");
  // dinp and dweight accumulate: read and written.
  const double bytes = backend_check::bytes_of({&dout, &inp, &weight, &rstd}) +
                       2 * backend_check::bytes_of({&dinp, &dweight});
  OpScope op(*this, {"rmsnorm_backward", OpFamily::kRmsnorm, bytes, 0, dinp.shape});
  rmsnorm_backward_impl(dinp, dweight, dout, inp, weight, rstd);
}

inline void Backend::rope_forward(Tensor out, const Tensor& inp, const Tensor& freqs) {
  backend_check::rope(out, inp, freqs, master_dtype(), "rope_forward");
  OpScope op(*this, {"rope_forward", OpFamily::kRope, backend_check::bytes_of({&out, &inp}), 0, out.shape});
  rope_impl(out, inp, freqs, +1);
}
inline void Backend::rope_backward(Tensor dinp, const Tensor& dout, const Tensor& freqs) {
  backend_check::rope(dinp, dout, freqs, master_dtype(), "rope_backward");
  OpScope op(*this, {"rope_backward", OpFamily::kRope, backend_check::bytes_of({&dinp, &dout}), 0, dinp.shape});
  rope_impl(dinp, dout, freqs, -1);
}

inline void Backend::attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k,
                                       const Tensor& v) {
  backend_check::attention(q, k, v, "attention_forward");
  const auto& s = q.shape;
  LTRAIN_CHECK(out.shape == q.shape && lse.numel() == s.dims[0] * s.dims[2] * s.dims[1],
               "attention_forward shapes: out " << out.shape.str() << " lse " << lse.shape.str() << " q "
                                                << s.str());
  backend_check::same_dtype({&out}, q, "attention_forward");
  backend_check::dtype_is(lse, master_dtype(), "attention_forward", "lse");
  OpScope op(*this, {"attention_forward", OpFamily::kAttention, -1, 0, q.shape});
  attention_forward_impl(out, lse, q, k, v);
}
inline void Backend::attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                                        const Tensor& k, const Tensor& v, const Tensor& out,
                                        const Tensor& lse) {
  backend_check::attention(q, k, v, "attention_backward");
  const auto& s = q.shape;
  LTRAIN_CHECK(dq.shape == q.shape && dk.shape == k.shape && dv.shape == v.shape && dout.shape == q.shape &&
                   out.shape == q.shape && lse.numel() == s.dims[0] * s.dims[2] * s.dims[1],
               "attention_backward shapes: q " << s.str() << " k " << k.shape.str() << " dq " << dq.shape.str()
                                               << " dk " << dk.shape.str() << " dv " << dv.shape.str()
                                               << " dout " << dout.shape.str() << " out " << out.shape.str());
  backend_check::same_dtype({&dq, &dk, &dv, &dout, &out}, q, "attention_backward");
  backend_check::dtype_is(lse, master_dtype(), "attention_backward", "lse");
  OpScope op(*this, {"attention_backward", OpFamily::kAttention, -1, 0, q.shape});
  attention_backward_impl(dq, dk, dv, dout, q, k, v, out, lse);
}

inline void Backend::swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up) {
  LTRAIN_CHECK(out.numel() == gate.numel() && up.numel() == gate.numel(),
               "swiglu_forward: out " << out.shape.str() << " gate " << gate.shape.str() << " up "
                                      << up.shape.str());
  backend_check::same_dtype({&out, &up}, gate, "swiglu_forward");
  OpScope op(*this, {"swiglu_forward", OpFamily::kSwiglu, backend_check::bytes_of({&out, &gate, &up}), 0,
                     out.shape});
  swiglu_forward_impl(out, gate, up);
}
inline void Backend::swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                                     const Tensor& up) {
  LTRAIN_CHECK(dgate.numel() == gate.numel() && dup.numel() == gate.numel() && dout.numel() == gate.numel() &&
                   up.numel() == gate.numel(),
               "swiglu_backward: every tensor has gate's " << gate.numel() << " elements");
  backend_check::same_dtype({&dgate, &dup, &dout, &up}, gate, "swiglu_backward");
  OpScope op(*this, {"swiglu_backward", OpFamily::kSwiglu,
                     backend_check::bytes_of({&dgate, &dup, &dout, &gate, &up}), 0, dgate.shape});
  swiglu_backward_impl(dgate, dup, dout, gate, up);
}

inline void Backend::add(Tensor out, const Tensor& a, const Tensor& b) {
  LTRAIN_CHECK(a.numel() == out.numel() && b.numel() == out.numel(),
               "add: out " << out.shape.str() << " a " << a.shape.str() << " b " << b.shape.str());
  backend_check::same_dtype({&out, &b}, a, "add");
  OpScope op(*this, {"add", OpFamily::kAdd, backend_check::bytes_of({&out, &a, &b}), 0, out.shape});
  add_impl(out, a, b);
}

inline void Backend::cross_entropy(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& targets,
                                   float dloss) {
  backend_check::dtype_is(targets, DType::kI32, "cross_entropy", "targets");
  backend_check::dtype_is(losses, master_dtype(), "cross_entropy", "losses");
  const int64_t V = backend_check::last_dim(logits), N = targets.numel();
  LTRAIN_CHECK(logits.numel() == N * V && losses.numel() == N &&
                   (!dlogits.defined() || dlogits.numel() == logits.numel()),
               "cross_entropy shapes: logits " << logits.shape.str() << " targets " << targets.shape.str()
                                               << " losses " << losses.shape.str());
  if (dlogits.defined()) backend_check::same_dtype({&dlogits}, logits, "cross_entropy");
  OpScope op(*this, {"cross_entropy", OpFamily::kCrossEntropy,
                     backend_check::bytes_of({&losses, &dlogits, &logits, &targets}), 0, logits.shape});
  cross_entropy_impl(losses, dlogits, logits, targets, dloss);
}
inline void Backend::logsumexp_rows(Tensor lse, const Tensor& logits) {
  backend_check::dtype_is(lse, master_dtype(), "logsumexp_rows", "lse");
  LTRAIN_CHECK(logits.numel() == lse.numel() * backend_check::last_dim(logits),
               "logsumexp_rows shapes: lse " << lse.shape.str() << " logits " << logits.shape.str());
  OpScope op(*this, {"logsumexp_rows", OpFamily::kCrossEntropy, backend_check::bytes_of({&lse, &logits}), 0,
                     logits.shape});
  logsumexp_rows_impl(lse, logits);
}
inline void Backend::cross_entropy_with_lse(Tensor losses, Tensor dlogits, const Tensor& logits,
                                            const Tensor& lse, const Tensor& targets, int vocab_offset,
                                            float dloss) {
  backend_check::dtype_is(targets, DType::kI32, "cross_entropy_with_lse", "targets");
  backend_check::dtype_is(losses, master_dtype(), "cross_entropy_with_lse", "losses");
  backend_check::dtype_is(lse, master_dtype(), "cross_entropy_with_lse", "lse");
  const int64_t V = backend_check::last_dim(logits), N = targets.numel();
  LTRAIN_CHECK(logits.numel() == N * V && losses.numel() == N && lse.numel() == N &&
                   (!dlogits.defined() || dlogits.numel() == logits.numel()),
               "cross_entropy_with_lse shapes: logits " << logits.shape.str() << " targets "
                                                        << targets.shape.str() << " lse " << lse.shape.str()
                                                        << " losses " << losses.shape.str());
  if (dlogits.defined()) backend_check::same_dtype({&dlogits}, logits, "cross_entropy_with_lse");
  OpScope op(*this, {"cross_entropy_with_lse", OpFamily::kCrossEntropy,
                     backend_check::bytes_of({&losses, &dlogits, &logits, &lse, &targets}), 0, logits.shape});
  cross_entropy_with_lse_impl(losses, dlogits, logits, lse, targets, vocab_offset, dloss);
}

inline double Backend::sum_squares(const std::vector<Tensor>& tensors) {
  double bytes = 0;
  for (const Tensor& t : tensors) bytes += backend_check::bytes_of({&t});
  OpScope op(*this, {"sum_squares", OpFamily::kOptimizer, bytes, 0, Shape{int64_t(tensors.size())}});
  return sum_squares_impl(tensors);
}
inline void Backend::adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWStep& s) {
  LTRAIN_CHECK(grad.numel() == param.numel() && m.numel() == param.numel() && v.numel() == param.numel(),
               "adamw_update: param " << param.shape.str() << " grad " << grad.shape.str() << " m "
                                      << m.shape.str() << " v " << v.shape.str());
  for (const Tensor* t : std::initializer_list<const Tensor*>{&param, &grad, &m, &v})
    backend_check::dtype_is(*t, master_dtype(), "adamw_update", "param/grad/m/v");
  // param, m and v are read and written, grad read.
  const double bytes = 2 * backend_check::bytes_of({&param, &m, &v}) + backend_check::bytes_of({&grad});
  OpScope op(*this, {"adamw_update", OpFamily::kOptimizer, bytes, 0, param.shape});
  adamw_update_impl(param, grad, m, v, s);
}

// The CPU backend in fp32 (training) or fp64 (the test oracle).
std::unique_ptr<Backend> make_cpu_backend(DType dtype = DType::kF32);

}  // namespace ltrain
