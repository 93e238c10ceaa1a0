// The CPU backend: host memory, the templated ops of src/cpu/ops.h, BLAS for matrix products.
// One class serves fp32 (training) and fp64 (the oracle); compute and master dtypes are equal, so
// the optimizer updates the weights the model computes with, and no copy is needed.
// Backend's public ops have checked the shapes; the _impl methods here check only the CPU's own
// dtype rule (every floating tensor in T) and call the op.
#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include "cpu/ops.h"
#include "ltrain/core/backend.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

namespace cpu {

// OpenBLAS is the OpenMP build where available (CMakeLists.txt), so BLAS and the ops below share
// one thread pool; with the pthread build both pools spin on the same cores.
void gemm_ld(float* out, int ldo, const float* a, int lda, const float* b, int ldb, int M, int N,
             int K, bool trans_a, bool trans_b, float alpha, float beta) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              M, N, K, alpha, a, lda, b, ldb, beta, out, ldo);
}

void gemm_ld(double* out, int ldo, const double* a, int lda, const double* b, int ldb, int M, int N,
             int K, bool trans_a, bool trans_b, double alpha, double beta) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              M, N, K, alpha, a, lda, b, ldb, beta, out, ldo);
}

}  // namespace cpu

namespace {

class HostEventTimer final : public EventTimer {
 public:
  int record() override {
    marks_.push_back(wall_time_seconds());
    return int(marks_.size()) - 1;
  }
  double seconds_between(int from, int to) override {
    LTRAIN_CHECK(from >= 0 && to >= 0 && size_t(from) < marks_.size() && size_t(to) < marks_.size(),
                 "event timer: marks " << from << ", " << to << " of " << marks_.size());
    return marks_[size_t(to)] - marks_[size_t(from)];
  }
  void clear() override { marks_.clear(); }
  const char* method() const override { return "host clock around each op (the ops are synchronous)"; }

 private:
  std::vector<double> marks_;
};

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string s = line.substr(colon + 1);
        s.erase(0, s.find_first_not_of(" \t"));
        return s;
      }
    }
  }
  return "unknown CPU";
}

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::kF32; }
template <>
constexpr DType dtype_of<double>() { return DType::kF64; }

template <class T>
class CpuBackend final : public Backend {
 public:
  std::string name() const override { return dtype_of<T>() == DType::kF32 ? "cpu" : "cpu-f64"; }
  BackendKind kind() const override { return BackendKind::kCpu; }
  DeviceInfo device_info() const override {
    const int threads = omp_get_max_threads();
    return DeviceInfo{cpu_model_name() + strfmt(" (%d thread%s)", threads, threads == 1 ? "" : "s")};
  }
  DType compute_dtype() const override { return dtype_of<T>(); }
  DType master_dtype() const override { return dtype_of<T>(); }
  size_t bytes_allocated() const override { return allocated_; }
  // The ops are synchronous: the host clock at a mark is when the work before it finished.
  std::unique_ptr<EventTimer> make_event_timer() override { return make_host_event_timer(); }

 protected:
  Tensor alloc_impl(Shape shape, DType dtype) override {
    Tensor t;
    t.dtype = dtype;
    t.shape = shape;
    size_t bytes = std::max<size_t>(t.bytes(), 1);
    bytes = (bytes + 63) / 64 * 64;
    t.data = std::aligned_alloc(64, bytes);
    LTRAIN_CHECK(t.data, "out of host memory allocating " << bytes << " bytes");
    std::memset(t.data, 0, bytes);
    allocated_ += t.bytes();
    return t;
  }
  void free_impl(Tensor& t) override {
    if (!t.data) return;
    allocated_ -= t.bytes();
    std::free(t.data);
    t.data = nullptr;
  }
  void from_host_impl(Tensor dst, const void* src, DType src_dtype) override {
    convert_host(dst.data, dst.dtype, src, src_dtype, dst.numel());
  }
  void to_host_impl(void* dst, DType dst_dtype, const Tensor& src) override {
    convert_host(dst, dst_dtype, src.data, src.dtype, src.numel());
  }
  void copy_impl(Tensor dst, const Tensor& src) override {
    if (dst.data != src.data) convert_host(dst.data, dst.dtype, src.data, src.dtype, dst.numel());
  }
  void zero_impl(Tensor t) override { std::memset(t.data, 0, t.bytes()); }

  void matmul_impl(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                   float alpha, float beta, const Tensor& c) override {
    check_dtype({&out, &a, &b});
    // c's shape and dtype are out's (Backend::matmul checked them).
    if (c.defined() && c.data != out.data && beta != 0.0f)
      std::memcpy(out.data, c.data, out.bytes());  // then out = ab + beta out
    const int64_t M = out.shape.dims[0], N = out.shape.dims[1];
    const int64_t K = trans_a ? a.shape.dims[0] : a.shape.dims[1];
    cpu::gemm<T>(out.as<T>(), a.as<T>(), b.as<T>(), int(M), int(N), int(K), trans_a, trans_b, T(alpha),
                 T(beta));
  }

  void embedding_forward_impl(Tensor out, const Tensor& tokens, const Tensor& wte) override {
    check_dtype({&out, &wte});
    cpu::embedding_forward(out.as<T>(), tokens.as<int32_t>(), wte.as<T>(), int(tokens.numel()),
                           int(wte.shape.dims[1]));
  }
  void embedding_backward_impl(Tensor dwte, const Tensor& dout, const Tensor& tokens) override {
    check_dtype({&dwte, &dout});
    cpu::embedding_backward(dwte.as<T>(), dout.as<T>(), tokens.as<int32_t>(), int(tokens.numel()),
                            int(dwte.shape.dims[1]));
  }

  void rmsnorm_forward_impl(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight,
                            float eps) override {
    check_dtype({&out, &rstd, &inp, &weight});
    const int C = int(weight.numel());
    cpu::rmsnorm_forward(out.as<T>(), rstd.as<T>(), inp.as<T>(), weight.as<T>(),
                         int(inp.numel() / C), C, eps);
  }
  void rmsnorm_backward_impl(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                             const Tensor& weight, const Tensor& rstd) override {
    check_dtype({&dinp, &dweight, &dout, &inp, &weight, &rstd});
    const int C = int(weight.numel());
    cpu::rmsnorm_backward(dinp.as<T>(), dweight.as<T>(), dout.as<T>(), inp.as<T>(), weight.as<T>(),
                          rstd.as<T>(), int(inp.numel() / C), C);
  }

  void rope_impl(Tensor out, const Tensor& inp, const Tensor& freqs, int sign) override {
    check_dtype({&out, &inp, &freqs});
    const auto& s = inp.shape;
    cpu::rope_rotate(out.as<T>(), inp.as<T>(), freqs.as<T>(), int(s.dims[0]), int(s.dims[1]),
                     int(s.dims[2]), int(s.dims[3]), sign);
  }

  void attention_forward_impl(Tensor out, Tensor lse, const Tensor& q, const Tensor& k,
                              const Tensor& v) override {
    check_dtype({&out, &lse, &q, &k, &v});
    const auto& s = q.shape;
    cpu::attention_forward(out.as<T>(), lse.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(), int(s.dims[0]),
                           int(s.dims[1]), int(s.dims[2]), int(k.shape.dims[2]), int(s.dims[3]));
  }
  void attention_backward_impl(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out,
                               const Tensor& lse) override {
    check_dtype({&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse});
    const auto& s = q.shape;
    cpu::attention_backward(dq.as<T>(), dk.as<T>(), dv.as<T>(), dout.as<T>(), q.as<T>(), k.as<T>(),
                            v.as<T>(), out.as<T>(), lse.as<T>(), int(s.dims[0]), int(s.dims[1]),
                            int(s.dims[2]), int(k.shape.dims[2]), int(s.dims[3]));
  }

  void swiglu_forward_impl(Tensor out, const Tensor& gate, const Tensor& up) override {
    check_dtype({&out, &gate, &up});
    cpu::swiglu_forward(out.as<T>(), gate.as<T>(), up.as<T>(), out.numel());
  }
  void swiglu_backward_impl(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                            const Tensor& up) override {
    check_dtype({&dgate, &dup, &dout, &gate, &up});
    cpu::swiglu_backward(dgate.as<T>(), dup.as<T>(), dout.as<T>(), gate.as<T>(), up.as<T>(),
                         dout.numel());
  }
  void add_impl(Tensor out, const Tensor& a, const Tensor& b) override {
    check_dtype({&out, &a, &b});
    cpu::add(out.as<T>(), a.as<T>(), b.as<T>(), out.numel());
  }

  void cross_entropy_impl(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& targets,
                          float dloss) override {
    check_dtype({&losses, &logits});
    const int V = int(logits.shape.dims[logits.shape.ndim - 1]);
    cpu::cross_entropy(losses.as<T>(), dlogits.defined() ? dlogits.as<T>() : nullptr,
                       logits.as<T>(), targets.as<int32_t>(), int(targets.numel()), V, dloss);
  }

  void logsumexp_rows_impl(Tensor lse, const Tensor& logits) override {
    check_dtype({&lse, &logits});
    const int V = int(logits.shape.dims[logits.shape.ndim - 1]);
    cpu::logsumexp_rows(lse.as<T>(), logits.as<T>(), int(lse.numel()), V);
  }
  void cross_entropy_with_lse_impl(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& lse,
                                   const Tensor& targets, int vocab_offset, float dloss) override {
    check_dtype({&losses, &logits, &lse});
    const int V = int(logits.shape.dims[logits.shape.ndim - 1]);
    cpu::cross_entropy_with_lse(losses.as<T>(), dlogits.defined() ? dlogits.as<T>() : nullptr,
                                logits.as<T>(), lse.as<T>(), targets.as<int32_t>(),
                                int(targets.numel()), V, vocab_offset, dloss);
  }

  double sum_squares_impl(const std::vector<Tensor>& tensors) override {
    double s = 0;
    for (const auto& t : tensors) s += cpu::sum_squares(t.as<T>(), t.numel());
    return s;
  }
  void adamw_update_impl(Tensor param, const Tensor& grad, Tensor m, Tensor v,
                         const AdamWStep& s) override {
    check_dtype({&param, &grad, &m, &v});
    cpu::adamw_update(param.as<T>(), grad.as<T>(), m.as<T>(), v.as<T>(), param.numel(), s.lr,
                      s.beta1, s.beta2, s.eps, s.weight_decay, s.grad_scale, s.step);
  }

 private:
  static void check_dtype(std::initializer_list<const Tensor*> ts) {
    for (const Tensor* t : ts)
      LTRAIN_CHECK(t->dtype == dtype_of<T>(), "cpu backend got a " << dtype_name(t->dtype)
                                                                   << " tensor " << t->shape.str());
  }
  size_t allocated_ = 0;
};

}  // namespace

std::unique_ptr<EventTimer> make_host_event_timer() { return std::make_unique<HostEventTimer>(); }

std::unique_ptr<Backend> make_cpu_backend(DType dtype) {
  if (dtype == DType::kF64) return std::make_unique<CpuBackend<double>>();
  LTRAIN_CHECK(dtype == DType::kF32, "the CPU backend computes in f32 or f64");
  return std::make_unique<CpuBackend<float>>();
}

}  // namespace ltrain
