// Every CPU op's backward against central finite differences in double precision, and the fp32
// CPU backend against the double oracle. Each check uses a scalar loss L = sum(out * R) with a
// random R, so the analytic gradient of an input is the op's backward applied to dout = R.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "cpu/ops.h"
#include "ltrain/core/backend.h"
#include "test_util.h"

namespace ltrain {
namespace {

using test::compare;
using test::random_vector;
using Vec = std::vector<double>;

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks analytic gradient `grad` of loss() w.r.t. every element of x by central differences.
void check_fd(const char* what, Vec& x, const Vec& grad, const std::function<double()>& loss,
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

TEST(OpsFiniteDiff, Matmul) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int M = 5, N = 7, K = 3;
      Vec a = random_vector(M * K, 1), b = random_vector(K * N, 2), r = random_vector(M * N, 3);
      auto loss = [&] {
        Vec out(M * N);
        cpu::gemm(out.data(), a.data(), b.data(), M, N, K, ta, tb, 1.0, 0.0);
        return dot(out, r);
      };
      // dA = R @ op(B)^T (laid out as A), dB likewise; computed with the same gemm.
      Vec da(M * K), db(K * N);
      if (!ta) cpu::gemm(da.data(), r.data(), b.data(), M, K, N, false, !tb, 1.0, 0.0);
      else cpu::gemm(da.data(), b.data(), r.data(), K, M, N, tb, true, 1.0, 0.0);
      if (!tb) cpu::gemm(db.data(), a.data(), r.data(), K, N, M, !ta, false, 1.0, 0.0);
      else cpu::gemm(db.data(), r.data(), a.data(), N, K, M, true, ta, 1.0, 0.0);
      check_fd("matmul dA", a, da, loss);
      check_fd("matmul dB", b, db, loss);
    }
}

TEST(OpsFiniteDiff, Embedding) {
  const int V = 6, C = 5, N = 9;
  std::vector<int32_t> tok = {0, 3, 3, 5, 1, 0, 2, 3, 4};  // repeated tokens accumulate
  Vec wte = random_vector(V * C, 4), r = random_vector(N * C, 5);
  auto loss = [&] {
    Vec out(N * C);
    cpu::embedding_forward(out.data(), tok.data(), wte.data(), N, C);
    return dot(out, r);
  };
  Vec dwte = random_vector(V * C, 6), base = dwte;  // += semantics: start from non-zero
  cpu::embedding_backward(dwte.data(), r.data(), tok.data(), N, C);
  for (size_t i = 0; i < dwte.size(); ++i) dwte[i] -= base[i];
  check_fd("embedding dwte", wte, dwte, loss);
}

TEST(OpsFiniteDiff, RmsNorm) {
  const int N = 7, C = 13;
  Vec x = random_vector(N * C, 7, -2, 2), w = random_vector(C, 8, 0.5, 1.5), r = random_vector(N * C, 9);
  const double eps = 1e-5;
  auto loss = [&] {
    Vec out(N * C), rstd(N);
    cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    return dot(out, r);
  };
  Vec out(N * C), rstd(N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  Vec dx0 = random_vector(N * C, 10), dx = dx0, dw0 = random_vector(C, 11), dw = dw0;
  cpu::rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= dx0[i];  // both accumulate
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= dw0[i];
  check_fd("rmsnorm dinp", x, dx, loss);
  check_fd("rmsnorm dweight", w, dw, loss);
}

Vec rope_table(int T, int HD, double theta) {
  Vec f(size_t(T) * HD);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < HD / 2; ++i) {
      double a = t * std::pow(theta, -2.0 * i / HD);
      f[size_t(t) * HD + 2 * i] = std::cos(a);
      f[size_t(t) * HD + 2 * i + 1] = std::sin(a);
    }
  return f;
}

TEST(OpsFiniteDiff, Rope) {
  const int B = 2, T = 7, NH = 3, HD = 6;
  const size_t n = size_t(B) * T * NH * HD;
  Vec x = random_vector(n, 12), r = random_vector(n, 13), f = rope_table(T, HD, 10000.0);
  auto loss = [&] {
    Vec out(n);
    cpu::rope_rotate(out.data(), x.data(), f.data(), B, T, NH, HD, +1);
    return dot(out, r);
  };
  Vec dx(n);
  cpu::rope_rotate(dx.data(), r.data(), f.data(), B, T, NH, HD, -1);
  check_fd("rope dinp", x, dx, loss);
  // Position 0 is the identity; the rotation preserves norms.
  Vec out(n);
  cpu::rope_rotate(out.data(), x.data(), f.data(), B, T, NH, HD, +1);
  for (int h = 0; h < NH * HD; ++h) EXPECT_DOUBLE_EQ(out[h], x[h]);
  EXPECT_NEAR(dot(out, out), dot(x, x), 1e-9);
}

struct AttnShape {
  int B, T, H, KV, HD;
};

class AttentionFD : public ::testing::TestWithParam<AttnShape> {};

TEST_P(AttentionFD, Backward) {
  const auto [B, T, H, KV, HD] = GetParam();
  const size_t nq = size_t(B) * T * H * HD, nk = size_t(B) * T * KV * HD;
  Vec q = random_vector(nq, 14, -1.5, 1.5), k = random_vector(nk, 15, -1.5, 1.5),
      v = random_vector(nk, 16), r = random_vector(nq, 17);
  auto loss = [&] {
    Vec out(nq), lse(size_t(B) * H * T);
    cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, KV, HD);
    return dot(out, r);
  };
  Vec out(nq), lse(size_t(B) * H * T);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, KV, HD);
  Vec dq(nq, 7.0), dk(nk, 7.0), dv(nk, 7.0);  // poisoned: the op must overwrite
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), r.data(), q.data(), k.data(), v.data(),
                          out.data(), lse.data(), B, T, H, KV, HD);
  check_fd("attention dq", q, dq, loss);
  check_fd("attention dk", k, dk, loss);
  check_fd("attention dv", v, dv, loss);
}

TEST_P(AttentionFD, CausalAndNaive) {
  // Against a naive softmax(QK^T/sqrt(d) + mask) V, and: changing a future key leaves the past alone.
  const auto [B, T, H, KV, HD] = GetParam();
  const size_t nq = size_t(B) * T * H * HD, nk = size_t(B) * T * KV * HD;
  Vec q = random_vector(nq, 18), k = random_vector(nk, 19), v = random_vector(nk, 20);
  Vec out(nq, NAN), lse(size_t(B) * H * T, NAN);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, KV, HD);
  Vec ref(nq, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t) {
        const int kvh = h / (H / KV);
        std::vector<double> s(T + 1, -INFINITY);
        double m = -INFINITY, z = 0;
        for (int j = 0; j <= t; ++j) {
          double acc = 0;
          for (int d = 0; d < HD; ++d)
            acc += q[((size_t(b) * T + t) * H + h) * HD + d] * k[((size_t(b) * T + j) * KV + kvh) * HD + d];
          s[j] = acc / std::sqrt(double(HD));
          m = std::max(m, s[j]);
        }
        for (int j = 0; j <= t; ++j) z += std::exp(s[j] - m);
        for (int j = 0; j <= t; ++j)
          for (int d = 0; d < HD; ++d)
            ref[((size_t(b) * T + t) * H + h) * HD + d] +=
                std::exp(s[j] - m) / z * v[((size_t(b) * T + j) * KV + kvh) * HD + d];
      }
  std::string err = compare(out.data(), ref.data(), nq, 1e-12, 1e-10);
  EXPECT_TRUE(err.empty()) << err;
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionFD,
                         ::testing::Values(AttnShape{2, 7, 2, 2, 4},    // MHA (ratio 1)
                                           AttnShape{1, 9, 4, 1, 6},    // all heads on one KV
                                           AttnShape{2, 5, 8, 2, 4},    // ratio 4
                                           AttnShape{1, 2, 2, 1, 2},    // the shortest sequence with a gradient on q
                                           AttnShape{1, 131, 2, 1, 4}));  // crosses a query block

TEST(OpsFiniteDiff, SwiGLU) {
  const int n = 37;
  Vec g = random_vector(n, 21, -3, 3), u = random_vector(n, 22, -2, 2), r = random_vector(n, 23);
  auto loss = [&] {
    Vec out(n);
    cpu::swiglu_forward(out.data(), g.data(), u.data(), n);
    return dot(out, r);
  };
  Vec dg(n, NAN), du(n, NAN);
  cpu::swiglu_backward(dg.data(), du.data(), r.data(), g.data(), u.data(), n);
  check_fd("swiglu dgate", g, dg, loss);
  check_fd("swiglu dup", u, du, loss);
}

TEST(OpsFiniteDiff, CrossEntropy) {
  const int N = 6, V = 11;
  Vec x = random_vector(N * V, 24, -3, 3);
  std::vector<int32_t> tgt = {3, 0, 10, -1, 7, 3};  // -1 is ignored
  const double dloss = 0.37;
  auto loss = [&] {
    Vec l(N);
    cpu::cross_entropy(l.data(), (double*)nullptr, x.data(), tgt.data(), N, V, 0.0);
    double s = 0;
    for (double v : l) s += v;
    return s * dloss;
  };
  Vec l(N), dx = x;  // in place, as the model uses it
  cpu::cross_entropy(l.data(), dx.data(), dx.data(), tgt.data(), N, V, dloss);
  EXPECT_EQ(l[3], 0.0);
  for (int i = 0; i < V; ++i) EXPECT_EQ(dx[3 * V + i], 0.0);
  // loss = logsumexp - x[target], checked directly for row 0
  double m = -INFINITY, z = 0;
  for (int i = 0; i < V; ++i) m = std::max(m, x[i]);
  for (int i = 0; i < V; ++i) z += std::exp(x[i] - m);
  EXPECT_NEAR(l[0], m + std::log(z) - x[3], 1e-12);
  check_fd("cross_entropy dlogits", x, dx, loss);
}

// ---- the fp32 backend against the double oracle --------------------------------------------

class BackendPair {
 public:
  BackendPair() : f32_(make_cpu_backend(DType::kF32)), f64_(make_cpu_backend(DType::kF64)) {}
  // Uploads the same double data to both backends.
  std::pair<Tensor, Tensor> tensor(Shape s, const Vec& data) {
    Tensor a = f32_->alloc(s, DType::kF32), b = f64_->alloc(s, DType::kF64);
    if (!data.empty()) {
      f32_->from_host(a, data.data(), DType::kF64);
      f64_->from_host(b, data.data(), DType::kF64);
    }
    return {a, b};
  }
  std::pair<Tensor, Tensor> ints(Shape s, const std::vector<int32_t>& data) {
    Tensor a = f32_->alloc(s, DType::kI32), b = f64_->alloc(s, DType::kI32);
    f32_->from_host(a, data.data(), DType::kI32);
    f64_->from_host(b, data.data(), DType::kI32);
    return {a, b};
  }
  // Poisons an output on both sides.
  void poison(std::pair<Tensor, Tensor>& t) {
    Vec p(size_t(t.first.numel()), NAN);
    f32_->from_host(t.first, p.data(), DType::kF64);
    f64_->from_host(t.second, p.data(), DType::kF64);
  }
  std::string compare_outputs(const std::pair<Tensor, Tensor>& t, double atol, double rtol) {
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

TEST(CpuBackend, Fp32MatchesOracle) {
  BackendPair p;
  const int B = 2, T = 9, H = 4, KV = 2, HD = 8, C = H * HD, FF = 24, V = 19;
  const int N = B * T;
  auto x = p.tensor({N, C}, random_vector(N * C, 30, -2, 2));
  auto w = p.tensor({C}, random_vector(C, 31, 0.5, 1.5));
  auto y = p.tensor({N, C}, {}), rstd = p.tensor({N}, {});
  p.poison(y);
  p.poison(rstd);
  for (Backend* be : {&p.f32(), &p.f64()}) {
    bool f = be == &p.f32();
    be->rmsnorm_forward(f ? y.first : y.second, f ? rstd.first : rstd.second, f ? x.first : x.second,
                        f ? w.first : w.second, 1e-5f);
  }
  EXPECT_EQ(p.compare_outputs(y, 1e-5, 1e-5), "");

  auto q = p.tensor({B, T, H, HD}, random_vector(N * C, 32)), k = p.tensor({B, T, KV, HD}, random_vector(N * KV * HD, 33));
  auto v = p.tensor({B, T, KV, HD}, random_vector(N * KV * HD, 34));
  auto o = p.tensor({B, T, H, HD}, {}), lse = p.tensor({B, H, T}, {});
  p.poison(o);
  p.poison(lse);
  p.f32().attention_forward(o.first, lse.first, q.first, k.first, v.first);
  p.f64().attention_forward(o.second, lse.second, q.second, k.second, v.second);
  EXPECT_EQ(p.compare_outputs(o, 1e-5, 1e-5), "");
  EXPECT_EQ(p.compare_outputs(lse, 1e-5, 1e-5), "");

  auto wm = p.tensor({FF, C}, random_vector(FF * C, 35)), out = p.tensor({N, FF}, random_vector(N * FF, 36));
  p.f32().matmul(out.first, x.first, wm.first, false, true, 1.0f, 1.0f);  // accumulate branch
  p.f64().matmul(out.second, x.second, wm.second, false, true, 1.0f, 1.0f);
  EXPECT_EQ(p.compare_outputs(out, 1e-4, 1e-5), "");
  // A separate c (the residual add in the product): the same as accumulating into a copy of it,
  // and c itself is left alone.
  const Vec rv = random_vector(N * FF, 38);
  auto resid = p.tensor({N, FF}, rv), fused = p.tensor({N, FF}, {}), twopass = p.tensor({N, FF}, rv);
  p.poison(fused);
  p.f32().matmul(fused.first, x.first, wm.first, false, true, 1.0f, 1.0f, resid.first);
  p.f64().matmul(fused.second, x.second, wm.second, false, true, 1.0f, 1.0f, resid.second);
  p.f64().matmul(twopass.second, x.second, wm.second, false, true, 1.0f, 1.0f);
  EXPECT_EQ(p.compare_outputs(fused, 1e-4, 1e-5), "");
  Vec got(rv.size()), want(rv.size()), c_after(rv.size());
  p.f64().to_host(got.data(), DType::kF64, fused.second);
  p.f64().to_host(want.data(), DType::kF64, twopass.second);
  p.f64().to_host(c_after.data(), DType::kF64, resid.second);
  EXPECT_EQ(got, want);
  EXPECT_EQ(c_after, rv);

  auto logits = p.tensor({N, V}, random_vector(N * V, 37, -4, 4)), losses = p.tensor({N}, {});
  std::vector<int32_t> tg(N);
  for (int i = 0; i < N; ++i) tg[i] = (i * 7) % V;
  auto targets = p.ints({N}, tg);
  p.poison(losses);
  p.f32().cross_entropy(losses.first, logits.first, logits.first, targets.first, 0.5f);
  p.f64().cross_entropy(losses.second, logits.second, logits.second, targets.second, 0.5f);
  EXPECT_EQ(p.compare_outputs(losses, 1e-5, 1e-5), "");
  EXPECT_EQ(p.compare_outputs(logits, 1e-6, 1e-5), "");
}

TEST(CpuBackend, HostTransfersConvert) {
  auto be = make_cpu_backend(DType::kF32);
  Tensor t = be->alloc({3}, DType::kBF16);
  Vec src = {1.0, -2.5, 3.14159};
  be->from_host(t, src.data(), DType::kF64);
  Vec back(3);
  be->to_host(back.data(), DType::kF64, t);
  EXPECT_EQ(back[0], 1.0);
  EXPECT_EQ(back[1], -2.5);
  EXPECT_NEAR(back[2], 3.14159, 3.14159 / 128);  // bf16 keeps 8 bits of mantissa
  EXPECT_NE(back[2], 3.14159);
  be->free(t);
  EXPECT_EQ(be->bytes_allocated(), 0u);
}

}  // namespace
}  // namespace ltrain
