// Helpers of the op tests: one file per op family (tests/ops/test_*.cpp), each with two halves.
//  - CPU: the op's backward against central finite differences in double (check_fd, with a
//    scalar loss L = sum(out * R) for a random R, so the analytic gradient of an input is the
//    backward applied to dout = R), and the fp32 CPU backend against the double oracle
//    (BackendPair).
//  - GPU: the CUDA op against the double CPU oracle (src/cpu/ops.h) on seeded random inputs
//    rounded to the kernel's dtype, outputs poisoned before the launch, with the tolerance table
//    of cuda_test_util.h. These cases are named Cuda*, skip without a CUDA device, and the
//    production-size ones (*.ProductionSizes) run only on a real GPU (ctest label gpu-only).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ops.h"
#include "cuda_test_util.h"
#include "ltrain/core/backend.h"

namespace ltrain::test {

// The activation dtypes every GPU op is tested in.
constexpr DType kActDtypes[] = {DType::kBF16, DType::kF32};

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks the analytic gradient `grad` of loss() w.r.t. every element of x by central differences.
inline void check_fd(const char* what, Vec& x, const Vec& grad, const std::function<double()>& loss,
                     double h = 1e-5, double atol = 1e-8, double rtol = 1e-6) {
  Vec num(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double old = x[i];
    x[i] = old + h;
    const double lp = loss();
    x[i] = old - h;
    const double lm = loss();
    x[i] = old;
    num[i] = (lp - lm) / (2 * h);
  }
  std::string err = compare(grad.data(), num.data(), x.size(), atol, rtol);
  EXPECT_TRUE(err.empty()) << what << ": " << err;
}

// The fp32 CPU backend and the double one side by side: the same inputs uploaded to both,
// outputs poisoned on both, and the fp32 result compared against the double oracle's.
class BackendPair {
 public:
  using Pair = std::pair<Tensor, Tensor>;  // (fp32, double)
  BackendPair() : f32_(make_cpu_backend(DType::kF32)), f64_(make_cpu_backend(DType::kF64)) {}
  // Uploads the same double data to both backends (none: left as allocated).
  Pair tensor(Shape s, const Vec& data) {
    Tensor a = f32_->alloc(s, DType::kF32), b = f64_->alloc(s, DType::kF64);
    if (!data.empty()) {
      f32_->from_host(a, data.data(), DType::kF64);
      f64_->from_host(b, data.data(), DType::kF64);
    }
    return {a, b};
  }
  Pair ints(Shape s, const std::vector<int32_t>& data) {
    Tensor a = f32_->alloc(s, DType::kI32), b = f64_->alloc(s, DType::kI32);
    f32_->from_host(a, data.data(), DType::kI32);
    f64_->from_host(b, data.data(), DType::kI32);
    return {a, b};
  }
  // An output filled with NaN on both sides.
  Pair poisoned(Shape s) {
    Pair t = tensor(s, {});
    Vec p(size_t(t.first.numel()), NAN);
    f32_->from_host(t.first, p.data(), DType::kF64);
    f64_->from_host(t.second, p.data(), DType::kF64);
    return t;
  }
  std::string compare_outputs(const Pair& t, double atol, double rtol) {
    Vec a(size_t(t.first.numel())), b(a.size());
    f32_->to_host(a.data(), DType::kF64, t.first);
    f64_->to_host(b.data(), DType::kF64, t.second);
    return compare(a.data(), b.data(), a.size(), atol, rtol);
  }
  Backend& f32() { return *f32_; }
  Backend& f64() { return *f64_; }

 private:
  std::unique_ptr<Backend> f32_, f64_;
};

// RoPE's (T, HD/2, 2) table of cos and sin, in double (round it for a GPU input).
inline Vec rope_table(int T, int HD, double theta = 10000.0) {
  Vec f(size_t(T) * HD);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < HD / 2; ++i) {
      const double a = t * std::pow(theta, -2.0 * i / HD);
      f[size_t(t) * HD + 2 * i] = std::cos(a);
      f[size_t(t) * HD + 2 * i + 1] = std::sin(a);
    }
  return f;
}

// Seeded token ids in [0, V), with repeats (a backward must sum them).
inline std::vector<int32_t> random_tokens(int N, int V, uint64_t seed) {
  Vec r = random_vector(N, seed, 0.0, 1.0);
  std::vector<int32_t> t(N);
  for (int i = 0; i < N; ++i) t[i] = std::min(V - 1, int(r[i] * V));
  for (int i = 3; i < N; i += 5) t[i] = t[i - 3];
  return t;
}

inline Tensor put_tokens(GpuScope& s, const std::vector<int32_t>& t) {
  Vec d(t.begin(), t.end());
  return s.put({int64_t(t.size())}, DType::kI32, d);
}

}  // namespace ltrain::test
