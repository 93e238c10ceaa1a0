// Helpers for the CUDA tests (the GPU cases of tests/ops/test_*.cpp, test_cuda_model.cpp, ...): a
// shared GPU backend, host-side rounding to a dtype, upload/download in double, poisoned outputs,
// the tolerance table, and the flash-attention-style comparison against a plain low-precision
// baseline.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "ltrain/core/backend.h"
#include "ltrain/cuda/cuda_backend.h"
#include "test_util.h"

namespace ltrain::test {

using Vec = std::vector<double>;

// Skips the test (and every GPU call in it) on machines without a CUDA device, and in builds
// without the CUDA backend (cuda_device_count() is 0 there).
#define LTRAIN_SKIP_WITHOUT_GPU()                                                  \
  do {                                                                             \
    if (::ltrain::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";      \
  } while (0)

// One CUDA backend for the whole test binary (a cuBLASLt handle and workspace each).
inline Backend& gpu() {
  static std::unique_ptr<Backend> be = make_cuda_backend(0);
  return *be;
}

inline double round_bf16(double x) {
  float f = float(x);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7FFF + ((bits >> 16) & 1);
  bits &= 0xFFFF0000u;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline double round_to(DType dt, double x) {
  if (dt == DType::kBF16) return round_bf16(x);
  if (dt == DType::kF32) return double(float(x));
  return x;
}

// Seeded random values in [lo, hi), already rounded to dt, so the oracle sees what the GPU sees.
inline Vec random_in(DType dt, size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Vec x = random_vector(n, seed, lo, hi);
  for (double& v : x) v = round_to(dt, v);
  return x;
}

inline Vec round_all(DType dt, Vec x) {
  for (double& v : x) v = round_to(dt, v);
  return x;
}

// GPU tensors freed at the end of the scope.
class GpuScope {
 public:
  ~GpuScope() {
    for (Tensor& t : owned_) gpu().free(t);
  }
  Tensor put(Shape s, DType dt, const Vec& x) {
    Tensor t = gpu().alloc(s, dt);
    EXPECT_EQ(size_t(t.numel()), x.size());
    gpu().from_host(t, x.data(), DType::kF64);
    owned_.push_back(t);
    return t;
  }
  // An output filled with NaN: an element the kernel does not write fails the comparison.
  Tensor poisoned(Shape s, DType dt) {
    Tensor t = gpu().alloc(s, dt);
    Vec nan(size_t(t.numel()), std::numeric_limits<double>::quiet_NaN());
    gpu().from_host(t, nan.data(), DType::kF64);
    owned_.push_back(t);
    return t;
  }

 private:
  std::vector<Tensor> owned_;
};

inline Vec get(const Tensor& t) {
  Vec x(size_t(t.numel()));
  gpu().to_host(x.data(), DType::kF64, t);
  return x;
}

// Tolerance table. A kernel computes in fp32 from the same rounded inputs as the double oracle
// and rounds its output once, so its error is about one rounding of the output dtype:
//   output bf16 (8-bit mantissa, half an ulp = 2^-9 relative): rtol 1.6e-2 (two ulps, so fp32
//     noise on top of the rounding never flips a case), atol 1e-3;
//   output bf16 accumulated (+=, two roundings): rtol 2.4e-2, atol 2e-3;
//   output fp32 computed elementwise (rstd, lse, losses, AdamW): rtol 1e-5, atol 1e-5;
//   output fp32 summed over many rows (dweight, dwte, fp32 matmul): rtol 1e-4, atol 1e-4.
// atol is relative to the reference's largest magnitude, so one table serves all scales (the
// cross-entropy gradient is ~1/V, a matmul output ~sqrt(K)).
struct Tol {
  double atol, rtol;
};
constexpr Tol kTolBF16{1e-3, 1.6e-2};
constexpr Tol kTolBF16Accum{2e-3, 2.4e-2};
constexpr Tol kTolF32{1e-5, 1e-5};
constexpr Tol kTolF32Sum{1e-4, 1e-4};
inline Tol tol_for(DType dt) { return dt == DType::kBF16 ? kTolBF16 : kTolF32; }

inline double max_abs(const Vec& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::fabs(v));
  return m;
}

inline void expect_close(const std::string& what, const Vec& got, const Vec& ref, Tol tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const std::string err = compare(got.data(), ref.data(), got.size(), tol.atol * max_abs(ref), tol.rtol);
  EXPECT_TRUE(err.empty()) << what << ": " << err;
}

inline void expect_bitwise_equal(const std::string& what, const Vec& a, const Vec& b) {
  ASSERT_EQ(a.size(), b.size());
  size_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += std::memcmp(&a[i], &b[i], sizeof(double)) != 0;
  EXPECT_EQ(diff, 0u) << what << ": two runs differ in " << diff << " of " << a.size() << " elements";
}

// The flash-attention tests' criterion: the kernel's max abs error against the double oracle is
// at most `factor` times that of a plain low-precision implementation on the same inputs (plus
// atol_rel * max|ref| for cases where the baseline happens to be exact). NaN fails; so does an
// all-zero reference.
inline void expect_within_baseline(const std::string& what, const Vec& got, const Vec& ref,
                                   const Vec& baseline, double factor = 2.0, double atol_rel = 1e-3) {
  ASSERT_EQ(got.size(), ref.size());
  ASSERT_EQ(baseline.size(), ref.size());
  double err = 0, base_err = 0, norm = 0;
  bool nan = false;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(got[i])) nan = true;
    err = std::max(err, std::fabs(got[i] - ref[i]));
    base_err = std::max(base_err, std::fabs(baseline[i] - ref[i]));
    norm += ref[i] * ref[i];
  }
  const double bound = factor * base_err + atol_rel * max_abs(ref);
  std::ostringstream os;
  os << what << ": max abs error " << err << ", baseline's " << base_err << ", bound " << bound
     << ", max |ref| " << max_abs(ref);
  EXPECT_FALSE(nan) << os.str() << " (NaN in the output)";
  EXPECT_GT(norm, 0.0) << os.str() << " (reference is all zeros)";
  EXPECT_LE(err, bound) << os.str();
  std::cout << "[          ] " << os.str() << "\n";
}

}  // namespace ltrain::test
