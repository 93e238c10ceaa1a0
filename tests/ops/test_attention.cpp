// attention: causal grouped-query attention, forward (out and the rows' logsumexp) and backward
// (dq, dk, dv from out and lse). CPU: every gradient against finite differences, the forward
// against a naive softmax(QK^T/sqrt(d) + mask) V, the fp32 backend against the double oracle.
// GPU: the flash-attention criterion against a plain bf16 implementation (PlainAttention), a
// loose per-element bound, and bitwise determinism of the backward.
#include "op_test_util.h"

namespace ltrain {
namespace {

using namespace test;

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

TEST(CpuBackend, AttentionFp32MatchesOracle) {
  BackendPair p;
  const int B = 2, T = 9, H = 4, KV = 2, HD = 8, N = B * T;
  auto q = p.tensor({B, T, H, HD}, random_vector(N * H * HD, 32));
  auto k = p.tensor({B, T, KV, HD}, random_vector(N * KV * HD, 33));
  auto v = p.tensor({B, T, KV, HD}, random_vector(N * KV * HD, 34));
  auto o = p.poisoned({B, T, H, HD}), lse = p.poisoned({B, H, T});
  p.f32().attention_forward(o.first, lse.first, q.first, k.first, v.first);
  p.f64().attention_forward(o.second, lse.second, q.second, k.second, v.second);
  EXPECT_EQ(p.compare_outputs(o, 1e-5, 1e-5), "");
  EXPECT_EQ(p.compare_outputs(lse, 1e-5, 1e-5), "");
}

// ---- GPU against the double oracle -------------------------------------------------------------

std::string str(const AttnShape& a) {
  std::ostringstream os;
  os << "attention B " << a.B << " T " << a.T << " H " << a.H << " KV " << a.KV << " HD " << a.HD;
  return os.str();
}

// One head's (T, HD) slice of a (B, T, NH, HD) tensor, and back.
std::vector<float> gather_head(const Vec& x, int b, int h, int T, int NH, int HD) {
  std::vector<float> out(size_t(T) * HD);
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < HD; ++d) out[size_t(t) * HD + d] = float(x[((size_t(b) * T + t) * NH + h) * HD + d]);
  return out;
}
void scatter_head(Vec& x, const std::vector<float>& hd, int b, int h, int T, int NH, int HD) {
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < HD; ++d)
      x[((size_t(b) * T + t) * NH + h) * HD + d] = test::round_bf16(hd[size_t(t) * HD + d]);
}
void round_bf16_inplace(std::vector<float>& x) {
  for (float& v : x) v = float(test::round_bf16(v));
}

// The yardstick: attention as a plain bf16 framework computes it. fp32 arithmetic (BLAS), every
// materialized tensor rounded to bf16: S = scale Q K^T, P = softmax(S), O = P V; backward
// dP = dO V^T, dS = P (dP - D), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO (dK and dV summed
// over the group in fp32, then rounded).
struct PlainAttention {
  AttnShape a;
  // Returns P (T, T) for head (b, h), masked and rounded.
  std::vector<float> probs(const std::vector<float>& Q, const std::vector<float>& K) const {
    const int T = a.T;
    std::vector<float> S(size_t(T) * T);
    cpu::gemm<float>(S.data(), Q.data(), K.data(), T, T, a.HD, false, true, float(1.0 / std::sqrt(a.HD)), 0.f);
    round_bf16_inplace(S);
    for (int i = 0; i < T; ++i) {
      float* row = S.data() + size_t(i) * T;
      float m = -INFINITY, l = 0;
      for (int j = 0; j <= i; ++j) m = std::max(m, row[j]);
      for (int j = 0; j <= i; ++j) l += row[j] = std::exp(row[j] - m);
      for (int j = 0; j <= i; ++j) row[j] /= l;
      for (int j = i + 1; j < T; ++j) row[j] = 0;
    }
    round_bf16_inplace(S);
    return S;
  }
  Vec forward(const Vec& q, const Vec& k, const Vec& v) const {
    Vec out(q.size());
    const int G = a.H / a.KV;
    for (int b = 0; b < a.B; ++b)
      for (int h = 0; h < a.H; ++h) {
        auto Q = gather_head(q, b, h, a.T, a.H, a.HD), K = gather_head(k, b, h / G, a.T, a.KV, a.HD),
             V = gather_head(v, b, h / G, a.T, a.KV, a.HD);
        auto P = probs(Q, K);
        std::vector<float> O(size_t(a.T) * a.HD);
        cpu::gemm<float>(O.data(), P.data(), V.data(), a.T, a.HD, a.T, false, false, 1.f, 0.f);
        scatter_head(out, O, b, h, a.T, a.H, a.HD);
      }
    return out;
  }
  void backward(const Vec& q, const Vec& k, const Vec& v, const Vec& out, const Vec& dout, Vec& dq,
                Vec& dk, Vec& dv) const {
    const int G = a.H / a.KV, T = a.T, HD = a.HD;
    const float scale = float(1.0 / std::sqrt(HD));
    dq.assign(q.size(), 0);
    dk.assign(k.size(), 0);
    dv.assign(v.size(), 0);
    for (int b = 0; b < a.B; ++b)
      for (int kvh = 0; kvh < a.KV; ++kvh) {
        auto K = gather_head(k, b, kvh, T, a.KV, HD), V = gather_head(v, b, kvh, T, a.KV, HD);
        std::vector<float> dK(size_t(T) * HD, 0.f), dV(size_t(T) * HD, 0.f);
        for (int h = kvh * G; h < (kvh + 1) * G; ++h) {
          auto Q = gather_head(q, b, h, T, a.H, HD), O = gather_head(out, b, h, T, a.H, HD),
               dO = gather_head(dout, b, h, T, a.H, HD);
          auto P = probs(Q, K);
          std::vector<float> dP(size_t(T) * T), dQ(size_t(T) * HD);
          cpu::gemm<float>(dP.data(), dO.data(), V.data(), T, T, HD, false, true, 1.f, 0.f);
          round_bf16_inplace(dP);
          for (int i = 0; i < T; ++i) {
            float D = 0;
            for (int d = 0; d < HD; ++d) D += dO[size_t(i) * HD + d] * O[size_t(i) * HD + d];
            for (int j = 0; j < T; ++j) dP[size_t(i) * T + j] = P[size_t(i) * T + j] * (dP[size_t(i) * T + j] - D);
          }
          round_bf16_inplace(dP);  // now dS
          cpu::gemm<float>(dQ.data(), dP.data(), K.data(), T, HD, T, false, false, scale, 0.f);
          cpu::gemm<float>(dK.data(), dP.data(), Q.data(), T, HD, T, true, false, scale, 1.f);
          cpu::gemm<float>(dV.data(), P.data(), dO.data(), T, HD, T, true, false, 1.f, 1.f);
          scatter_head(dq, dQ, b, h, T, a.H, HD);
        }
        scatter_head(dk, dK, b, kvh, T, a.KV, HD);
        scatter_head(dv, dV, b, kvh, T, a.KV, HD);
      }
  }
};

void check_attention(const AttnShape& a, uint64_t seed) {
  GpuScope s;
  const DType bf = DType::kBF16;
  const size_t nq = size_t(a.B) * a.T * a.H * a.HD, nk = size_t(a.B) * a.T * a.KV * a.HD;
  // Wider q and k than [-1, 1] make the softmax peaked, not flat.
  Vec q = random_in(bf, nq, seed, -2, 2), k = random_in(bf, nk, seed + 1, -2, 2),
      v = random_in(bf, nk, seed + 2), dout = random_in(bf, nq, seed + 3);
  Shape sq{a.B, a.T, a.H, a.HD}, skv{a.B, a.T, a.KV, a.HD};
  Tensor tq = s.put(sq, bf, q), tk = s.put(skv, bf, k), tv = s.put(skv, bf, v);
  Tensor out = s.poisoned(sq, bf), lse = s.poisoned({a.B, a.H, a.T}, DType::kF32);
  gpu().attention_forward(out, lse, tq, tk, tv);
  Vec out_ref(nq), lse_ref(size_t(a.B) * a.H * a.T);
  cpu::attention_forward(out_ref.data(), lse_ref.data(), q.data(), k.data(), v.data(), a.B, a.T, a.H, a.KV, a.HD);
  PlainAttention plain{a};
  const std::string what = str(a);
  expect_within_baseline(what + " out", get(out), out_ref, plain.forward(q, k, v));
  expect_close(what + " out (per element, loose)", get(out), out_ref, {1e-2, 6e-2});
  expect_close(what + " lse", get(lse), lse_ref, {1e-5, 1e-4});

  // Backward from the oracle's out and lse (rounded as the GPU stores them), so it is tested
  // apart from the forward.
  Vec out_b = round_all(bf, out_ref), lse_b = round_all(DType::kF32, lse_ref);
  Tensor to = s.put(sq, bf, out_b), tl = s.put({a.B, a.H, a.T}, DType::kF32, lse_b), tdo = s.put(sq, bf, dout);
  Tensor dq = s.poisoned(sq, bf), dk = s.poisoned(skv, bf), dv = s.poisoned(skv, bf);
  gpu().attention_backward(dq, dk, dv, tdo, tq, tk, tv, to, tl);
  Vec dq_ref(nq), dk_ref(nk), dv_ref(nk), dq_p, dk_p, dv_p;
  cpu::attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout.data(), q.data(), k.data(),
                          v.data(), out_b.data(), lse_b.data(), a.B, a.T, a.H, a.KV, a.HD);
  plain.backward(q, k, v, out_b, dout, dq_p, dk_p, dv_p);
  const Vec got_dq = get(dq), got_dk = get(dk), got_dv = get(dv);
  if (a.T == 1) {
    // One key: P = 1 and dS = P (dP - D) = 0 exactly, so dq and dk are zero (up to the fp32
    // difference of two orders of summing dO . V); the comparisons below need a non-zero norm.
    EXPECT_LE(test::max_abs(got_dq), 1e-4) << what << " dq";
    EXPECT_LE(test::max_abs(got_dk), 1e-4) << what << " dk";
  } else {
    expect_within_baseline(what + " dq", got_dq, dq_ref, dq_p);
    expect_within_baseline(what + " dk", got_dk, dk_ref, dk_p);
    expect_close(what + " dq (per element, loose)", got_dq, dq_ref, {1e-2, 6e-2});
    expect_close(what + " dk (per element, loose)", got_dk, dk_ref, {1e-2, 6e-2});
  }
  expect_within_baseline(what + " dv", got_dv, dv_ref, dv_p);
  expect_close(what + " dv (per element, loose)", got_dv, dv_ref, {1e-2, 6e-2});

  // Deterministic: no atomics anywhere.
  gpu().attention_backward(dq, dk, dv, tdo, tq, tk, tv, to, tl);
  expect_bitwise_equal(what + " dq determinism", get(dq), got_dq);
  expect_bitwise_equal(what + " dk determinism", get(dk), got_dk);
  expect_bitwise_equal(what + " dv determinism", get(dv), got_dv);
}

TEST(CudaAttention, TinyAndOddSequenceLengths) {
  LTRAIN_SKIP_WITHOUT_GPU();
  check_attention({1, 1, 1, 1, 64}, 1);     // one token
  check_attention({1, 7, 2, 1, 64}, 2);     // T = 7, GQA 2
  check_attention({2, 100, 4, 1, 128}, 3);  // T not a multiple of 64; all heads on one KV head
  check_attention({1, 130, 4, 4, 128}, 4);  // GQA 1 (plain multi-head)
  check_attention({2, 257, 8, 2, 64}, 5);   // GQA 4
}

TEST(CudaAttention, GroupRatiosAndHeadDims) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (int HD : {64, 128})
    for (int KV : {8, 2, 1})  // ratios 1, 4, 8 (all on one head)
      check_attention({1, 512, 8, KV, HD}, 10 + HD + KV);
}

TEST(CudaAttention, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  check_attention({1, 2048, 32, 8, 128}, 20);   // GQA 4, LLaMA-2-70B-like head layout
  check_attention({2, 2048, 32, 32, 128}, 21);  // B 2, MHA, head dim 128
  check_attention({1, 2048, 32, 4, 64}, 22);    // TinyLlama: 32 heads, 4 KV heads, head dim 64
}

// B * H over 65,535: more (b, head) pairs than a grid's y dimension takes (the kernels put them in
// x). Many blocks: a real GPU's case (label gpu-only), too slow for the emulator.
TEST(CudaAttentionManyHeads, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  check_attention({2049, 3, 32, 8, 64}, 30);
}

}  // namespace
}  // namespace ltrain
