// Every CUDA op, forward and backward, against the double CPU oracle (src/cpu/ops.h) on seeded
// random inputs rounded to the kernel's dtype first. Outputs are poisoned (NaN) before each
// launch; comparisons are per element with the tolerance table of cuda_test_util.h, or, for
// attention, the flash-attention criterion against a plain bf16 implementation. Shapes: tiny,
// odd (not multiples of the vector width or the 64-row tile), and production sizes. Every test
// skips without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/ops.h"
#include "cuda_test_util.h"
#ifdef LTRAIN_CUDA_EMU
#include "emu_control.h"
#endif

namespace ltrain {
namespace {

using test::expect_bitwise_equal;
using test::expect_close;
using test::expect_within_baseline;
using test::get;
using test::GpuScope;
using test::gpu;
using test::random_in;
using test::round_all;
using test::Tol;
using test::tol_for;
using test::Vec;

const char* name(DType dt) { return dtype_name(dt); }
constexpr DType kActDtypes[] = {DType::kBF16, DType::kF32};

// ---- memory and conversions --------------------------------------------------------------------

TEST(CudaMemory, HostRoundTripCopyConvertAndZero) {
  LTRAIN_SKIP_WITHOUT_GPU();
  GpuScope s;
  const int n = 1000 + 3;  // not a multiple of anything
  Vec x = test::random_vector(n, 1, -100.0, 100.0);
  const size_t before = gpu().bytes_allocated();
  Tensor f = s.put({n}, DType::kF32, x);
  EXPECT_GE(gpu().bytes_allocated(), before + n * 4);
  expect_close("f32 round trip", get(f), round_all(DType::kF32, x), {0, 0});
  Tensor b = s.poisoned({n}, DType::kBF16);
  gpu().copy(b, f);  // fp32 -> bf16 on the device, round to nearest even
  expect_close("f32 -> bf16 copy", get(b), round_all(DType::kBF16, round_all(DType::kF32, x)), {0, 0});
  Tensor f2 = s.poisoned({n}, DType::kF32);
  gpu().copy(f2, b);  // bf16 -> fp32 is exact
  expect_close("bf16 -> f32 copy", get(f2), get(b), {0, 0});
  Tensor b2 = s.poisoned({n}, DType::kBF16);
  gpu().copy(b2, b);
  expect_close("bf16 -> bf16 copy", get(b2), get(b), {0, 0});
  gpu().zero(f2);
  for (double v : get(f2)) ASSERT_EQ(v, 0.0);
  // from_host from a bf16 host buffer, to_host into f32.
  std::vector<float> host(n);
  gpu().to_host(host.data(), DType::kF32, b);
  Tensor f3 = s.poisoned({n}, DType::kF32);
  gpu().from_host(f3, host.data(), DType::kF32);
  expect_close("to_host f32 / from_host f32", get(f3), get(b), {0, 0});
}

// ---- matmul ------------------------------------------------------------------------------------

// separate_c: beta * c comes from a tensor other than out (out poisoned), which must stay as it was.
void check_matmul(int M, int N, int K, bool ta, bool tb, DType out_dt, float alpha, float beta,
                  uint64_t seed, bool separate_c = false) {
  GpuScope s;
  Vec a = random_in(DType::kBF16, size_t(M) * K, seed), b = random_in(DType::kBF16, size_t(K) * N, seed + 1);
  Vec c0 = random_in(out_dt, size_t(M) * N, seed + 2);
  Tensor ta_ = s.put(ta ? Shape{K, M} : Shape{M, K}, DType::kBF16, a);
  Tensor tb_ = s.put(tb ? Shape{N, K} : Shape{K, N}, DType::kBF16, b);
  Tensor out = beta != 0 && !separate_c ? s.put({M, N}, out_dt, c0) : s.poisoned({M, N}, out_dt);
  Tensor c = separate_c ? s.put({M, N}, out_dt, c0) : Tensor{};
  gpu().matmul(out, ta_, tb_, ta, tb, alpha, beta, c);
  if (separate_c) expect_close("matmul: c after the product", get(c), c0, test::kTolF32);
  Vec ref = beta != 0 ? c0 : Vec(size_t(M) * N, 0.0);
  cpu::gemm(ref.data(), a.data(), b.data(), M, N, K, ta, tb, double(alpha), double(beta));
  const Tol tol = out_dt == DType::kBF16 ? (beta != 0 ? test::kTolBF16Accum : test::kTolBF16) : test::kTolF32Sum;
  std::ostringstream what;
  what << "matmul M " << M << " N " << N << " K " << K << " ta " << ta << " tb " << tb << " out "
       << name(out_dt) << " alpha " << alpha << " beta " << beta << (separate_c ? " separate c" : "");
  expect_close(what.str(), get(out), ref, tol);
}

TEST(CudaMatmul, AllTransposesOutputsAndBeta) {
  LTRAIN_SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (DType out : {DType::kBF16, DType::kF32})
        for (float beta : {0.f, 1.f}) {
          check_matmul(64, 72, 40, ta, tb, out, 1.f, beta, seed += 3);
          check_matmul(24, 8, 16, ta, tb, out, 0.5f, beta, seed += 3);
          check_matmul(24, 40, 16, ta, tb, out, 1.f, beta, seed += 3, true);
        }
}

#ifdef LTRAIN_CUDA_EMU
// When cuBLASLt's heuristic finds no algorithm, the product runs on the fallback kernel instead
// of aborting. Only the emulator can make the heuristic come back empty on demand. Shapes of their
// own, so that no cached plan hides the heuristic.
TEST(CudaMatmul, FallbackWhenCublasLtHasNoAlgorithm) {
  LTRAIN_SKIP_WITHOUT_GPU();
  cuda_emu::set_cublaslt_finds_no_algorithm(true);
  uint64_t seed = 300;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (DType out : {DType::kBF16, DType::kF32})
        for (float beta : {0.f, 1.f}) {
          check_matmul(37, 21, 19, ta, tb, out, 0.75f, beta, seed += 3);
          check_matmul(37, 21, 19, ta, tb, out, 0.75f, beta, seed += 3, true);
        }
  cuda_emu::set_cublaslt_finds_no_algorithm(false);
}
#endif

TEST(CudaMatmul, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  // (N tokens, C) @ (FF, C)^T; the weight gradient (FF, C) += dout^T @ inp; dinp = dout @ W.
  check_matmul(2048, 4096, 4096, false, true, DType::kBF16, 1.f, 0.f, 100);
  check_matmul(1024, 4096, 2048, true, false, DType::kF32, 1.f, 1.f, 101);
  check_matmul(2048, 4096, 1024, false, false, DType::kBF16, 1.f, 1.f, 102);
}

// ---- embedding ---------------------------------------------------------------------------------

std::vector<int32_t> random_tokens(int N, int V, uint64_t seed) {
  Vec r = test::random_vector(N, seed, 0.0, 1.0);
  std::vector<int32_t> t(N);
  for (int i = 0; i < N; ++i) t[i] = std::min(V - 1, int(r[i] * V));
  // Repeats: the backward must sum them.
  for (int i = 3; i < N; i += 5) t[i] = t[i - 3];
  return t;
}

Tensor put_tokens(GpuScope& s, const std::vector<int32_t>& t) {
  Vec d(t.begin(), t.end());
  return s.put({int64_t(t.size())}, DType::kI32, d);
}

// other_shard: some tokens are -1 (owned by another vocabulary shard under tensor parallelism):
// zero rows forward, no gradient backward.
void check_embedding(int N, int C, int V, DType dt, uint64_t seed, bool other_shard = false) {
  GpuScope s;
  std::vector<int32_t> tok = random_tokens(N, V, seed);
  if (other_shard)
    for (int i = 1; i < N; i += 3) tok[i] = -1;
  Vec wte = random_in(dt, size_t(V) * C, seed + 1), dout = random_in(dt, size_t(N) * C, seed + 2);
  Vec dwte0 = random_in(DType::kF32, size_t(V) * C, seed + 3);
  Tensor t_tok = put_tokens(s, tok);
  Tensor t_wte = s.put({V, C}, dt, wte), out = s.poisoned({N, C}, dt);
  gpu().embedding_forward(out, t_tok, t_wte);
  Vec ref(size_t(N) * C);
  cpu::embedding_forward(ref.data(), tok.data(), wte.data(), N, C);
  std::ostringstream what;
  what << "embedding N " << N << " C " << C << " V " << V << " " << name(dt) << (other_shard ? " other-shard ids" : "");
  expect_close(what.str() + " forward", get(out), ref, {0, 0});  // a copy: exact

  Tensor t_dout = s.put({N, C}, dt, dout), dwte = s.put({V, C}, DType::kF32, dwte0);
  gpu().embedding_backward(dwte, t_dout, t_tok);
  Vec dref = dwte0;
  cpu::embedding_backward(dref.data(), dout.data(), tok.data(), N, C);
  const Vec got = get(dwte);
  expect_close(what.str() + " backward (+=)", got, dref, test::kTolF32Sum);
  // Deterministic: the same call on the same start gives the same bits.
  gpu().from_host(dwte, dwte0.data(), DType::kF64);
  gpu().embedding_backward(dwte, t_dout, t_tok);
  expect_bitwise_equal(what.str() + " backward determinism", get(dwte), got);
}

TEST(CudaEmbedding, ForwardBackwardShapes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_embedding(7, 72, 11, dt, 1);
    check_embedding(33, 75, 50, dt, 2);        // C not a multiple of the vector width
    check_embedding(20, 72, 11, dt, 4, true);  // vocabulary-parallel: ids of another shard
    check_embedding(20, 75, 11, dt, 5, true);
    // Rows past one sort chunk (2048), a length that is no power of two, and tokens repeated
    // thousands of times: the device sort's merge stages across chunks.
    check_embedding(9000, 16, 37, dt, 6);
    check_embedding(5000, 8, 3, dt, 7, true);
  }
}

// Production sizes: run on a real GPU (ctest label gpu-only), left out of the emulator's run.
TEST(CudaEmbedding, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) check_embedding(2048, 4096, 32000, dt, 3);
}

// ---- rmsnorm -----------------------------------------------------------------------------------

void check_rmsnorm(int N, int C, DType dt, uint64_t seed) {
  GpuScope s;
  const float eps = 1e-5f;
  Vec x = random_in(dt, size_t(N) * C, seed, -2, 2), w = random_in(dt, C, seed + 1, 0.5, 1.5);
  Tensor t_x = s.put({N, C}, dt, x), t_w = s.put({C}, dt, w);
  Tensor out = s.poisoned({N, C}, dt), rstd = s.poisoned({N}, DType::kF32);
  gpu().rmsnorm_forward(out, rstd, t_x, t_w, eps);
  Vec ref(size_t(N) * C), rref(N);
  cpu::rmsnorm_forward(ref.data(), rref.data(), x.data(), w.data(), N, C, eps);
  std::ostringstream what;
  what << "rmsnorm N " << N << " C " << C << " " << name(dt);
  expect_close(what.str() + " out", get(out), ref, tol_for(dt));
  expect_close(what.str() + " rstd", get(rstd), rref, test::kTolF32);

  // Backward with the oracle's rstd (rounded to fp32) as the saved statistic for both.
  Vec r = round_all(DType::kF32, rref);
  Vec dout = random_in(dt, size_t(N) * C, seed + 2);
  Vec dinp0 = random_in(dt, size_t(N) * C, seed + 3), dw0 = random_in(DType::kF32, C, seed + 4);
  Tensor t_dout = s.put({N, C}, dt, dout), t_r = s.put({N}, DType::kF32, r);
  Tensor dinp = s.put({N, C}, dt, dinp0), dw = s.put({C}, DType::kF32, dw0);
  gpu().rmsnorm_backward(dinp, dw, t_dout, t_x, t_w, t_r);
  Vec dinp_ref = dinp0, dw_ref = dw0;
  cpu::rmsnorm_backward(dinp_ref.data(), dw_ref.data(), dout.data(), x.data(), w.data(), r.data(), N, C);
  expect_close(what.str() + " dinp (+=)", get(dinp), dinp_ref,
               dt == DType::kBF16 ? test::kTolBF16Accum : test::kTolF32);
  const Vec got_dw = get(dw);
  expect_close(what.str() + " dweight (+=)", got_dw, dw_ref, test::kTolF32Sum);
  gpu().from_host(dw, dw0.data(), DType::kF64);
  gpu().from_host(dinp, dinp0.data(), DType::kF64);
  gpu().rmsnorm_backward(dinp, dw, t_dout, t_x, t_w, t_r);
  expect_bitwise_equal(what.str() + " dweight determinism", get(dw), got_dw);
}

TEST(CudaRmsNorm, ForwardBackwardShapes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_rmsnorm(7, 72, dt, 1);
    check_rmsnorm(300, 75, dt, 2);    // scalar path, more rows than chunks
    // 48 KiB of dweight partials exactly, over the limit with the kernel's static scratch (before
    // the next case, whose cudaFuncSetAttribute opt-in would otherwise cover it for the process)
    check_rmsnorm(3, 12288, dt, 5);
    check_rmsnorm(5, 20000, dt, 3);   // dweight partials above 48 KiB of shared memory
  }
}

TEST(CudaRmsNorm, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) check_rmsnorm(2048, 4096, dt, 4);
}

// ---- rope --------------------------------------------------------------------------------------

Vec rope_table(int Tn, int HD) {
  Vec f(size_t(Tn) * HD);
  for (int t = 0; t < Tn; ++t)
    for (int i = 0; i < HD / 2; ++i) {
      const double a = t * std::pow(10000.0, -2.0 * i / HD);
      f[size_t(t) * HD + 2 * i] = std::cos(a);
      f[size_t(t) * HD + 2 * i + 1] = std::sin(a);
    }
  return round_all(DType::kF32, f);
}

void check_rope(int B, int Tn, int NH, int HD, DType dt, uint64_t seed) {
  GpuScope s;
  const size_t n = size_t(B) * Tn * NH * HD;
  Vec x = random_in(dt, n, seed), f = rope_table(Tn + 3, HD);  // the table may be longer than T
  Tensor t_x = s.put({B, Tn, NH, HD}, dt, x), t_f = s.put({Tn + 3, HD / 2, 2}, DType::kF32, f);
  std::ostringstream what;
  what << "rope B " << B << " T " << Tn << " NH " << NH << " HD " << HD << " " << name(dt);
  for (int sign : {+1, -1}) {
    Tensor out = s.poisoned({B, Tn, NH, HD}, dt);
    if (sign > 0) gpu().rope_forward(out, t_x, t_f);
    else gpu().rope_backward(out, t_x, t_f);
    Vec ref(n);
    cpu::rope_rotate(ref.data(), x.data(), f.data(), B, Tn, NH, HD, sign);
    expect_close(what.str() + (sign > 0 ? " forward" : " backward"), get(out), ref, tol_for(dt));
    // In place, as the model calls it.
    Tensor inplace = s.put({B, Tn, NH, HD}, dt, x);
    if (sign > 0) gpu().rope_forward(inplace, inplace, t_f);
    else gpu().rope_backward(inplace, inplace, t_f);
    expect_close(what.str() + " in place", get(inplace), ref, tol_for(dt));
  }
}

TEST(CudaRope, ForwardBackwardShapes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_rope(1, 7, 3, 72, dt, 1);
    check_rope(2, 9, 2, 6, dt, 2);      // HD/2 odd: scalar path
  }
}

TEST(CudaRope, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_rope(2, 2048, 32, 128, dt, 3);  // q
    check_rope(1, 2048, 8, 64, dt, 4);
  }
}

// ---- swiglu and add ----------------------------------------------------------------------------

void check_swiglu(int64_t n, DType dt, uint64_t seed) {
  GpuScope s;
  Vec g = random_in(dt, n, seed, -4, 4), u = random_in(dt, n, seed + 1), dy = random_in(dt, n, seed + 2);
  Tensor t_g = s.put({n}, dt, g), t_u = s.put({n}, dt, u), t_dy = s.put({n}, dt, dy);
  Tensor out = s.poisoned({n}, dt), dg = s.poisoned({n}, dt), du = s.poisoned({n}, dt);
  gpu().swiglu_forward(out, t_g, t_u);
  gpu().swiglu_backward(dg, du, t_dy, t_g, t_u);
  Vec ref(n), dg_ref(n), du_ref(n);
  cpu::swiglu_forward(ref.data(), g.data(), u.data(), n);
  cpu::swiglu_backward(dg_ref.data(), du_ref.data(), dy.data(), g.data(), u.data(), n);
  std::ostringstream what;
  what << "swiglu n " << n << " " << name(dt);
  // __expf costs a few fp32 ulps: still far inside the fp32 tolerance's atol.
  const Tol tol = dt == DType::kBF16 ? test::kTolBF16 : Tol{1e-5, 1e-4};
  expect_close(what.str() + " out", get(out), ref, tol);
  expect_close(what.str() + " dgate", get(dg), dg_ref, tol);
  expect_close(what.str() + " dup", get(du), du_ref, tol);

  Tensor t_a = s.put({n}, dt, u);
  gpu().add(t_a, t_a, t_dy);  // aliasing out and a
  Vec sum(n);
  cpu::add(sum.data(), u.data(), dy.data(), n);
  expect_close(what.str() + " add in place", get(t_a), sum, tol_for(dt));
}

TEST(CudaSwiGLU, ForwardBackwardAndAdd) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_swiglu(7, dt, 1);
    check_swiglu(7 * 352 + 5, dt, 2);         // vector part plus a scalar tail
  }
}

TEST(CudaSwiGLU, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) check_swiglu(int64_t(2048) * 11008, dt, 3);  // (N, FF)
}

// ---- cross-entropy -----------------------------------------------------------------------------

void check_cross_entropy(int N, int V, DType dt, bool in_place, uint64_t seed) {
  GpuScope s;
  Vec x = random_in(dt, size_t(N) * V, seed, -4, 4);
  std::vector<int32_t> tgt = random_tokens(N, V, seed + 1);
  if (N > 2) tgt[1] = -1;  // ignored
  const float dloss = 1.0f / N;
  Tensor t_x = s.put({N, V}, dt, x), t_t = put_tokens(s, tgt), losses = s.poisoned({N}, DType::kF32);
  Tensor dx = in_place ? t_x : s.poisoned({N, V}, dt);
  gpu().cross_entropy(losses, dx, t_x, t_t, dloss);
  Vec lref(N), dref(size_t(N) * V);
  cpu::cross_entropy(lref.data(), dref.data(), x.data(), tgt.data(), N, V, dloss);
  std::ostringstream what;
  what << "cross_entropy N " << N << " V " << V << " " << name(dt) << (in_place ? " in place" : "");
  expect_close(what.str() + " losses", get(losses), lref, test::kTolF32);
  expect_close(what.str() + " dlogits", get(dx), dref, tol_for(dt));
  // Forward only (no gradient).
  Tensor t_x2 = s.put({N, V}, dt, x), losses2 = s.poisoned({N}, DType::kF32);
  gpu().cross_entropy(losses2, Tensor{}, t_x2, t_t, dloss);
  expect_close(what.str() + " losses without gradient", get(losses2), lref, test::kTolF32);
  expect_close(what.str() + " logits untouched", get(t_x2), x, {0, 0});
}

TEST(CudaCrossEntropy, FusedLossAndGradient) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_cross_entropy(7, 72, dt, false, 1);
    check_cross_entropy(9, 1001, dt, true, 2);    // V odd: scalar path
    // Rows wider than the register tiles hold (V odd: past 4096-8192 scalar columns): the
    // streaming kernel, as LLaMA-3's 128,256 vocabulary takes with 16-byte access.
    check_cross_entropy(3, 9001, dt, false, 3);
    check_cross_entropy(2, 9001, dt, true, 4);
  }
}

// The vocabulary-parallel pieces (tensor parallelism): a shard's row logsumexp, then the loss
// and gradient of the shard given the full rows' lse, in place, for targets inside, before and
// after this shard's columns [offset, offset + V) and ignored ones.
void check_cross_entropy_shard(int N, int V, int offset, DType dt, uint64_t seed) {
  GpuScope s;
  Vec x = random_in(dt, size_t(N) * V, seed, -4, 4);
  std::vector<int32_t> tgt = random_tokens(N, 3 * V, seed + 1);  // full vocabulary of 3 shards
  tgt[0] = offset + 3;                                             // owned here
  tgt[1] = -1;                                                     // ignored
  tgt[2] = offset + V - 1;                                         // owned: the shard's last column
  tgt[3] = offset + V;                                             // the next shard's first
  tgt[4] = offset > 0 ? offset - 1 : 2 * V;                        // another shard's
  Vec lse_full = random_in(DType::kF32, N, seed + 2, 5, 7);       // stands for the all-reduced lse
  const float dloss = 1.0f / N;
  std::ostringstream what;
  what << "cross_entropy shard N " << N << " V " << V << " offset " << offset << " " << name(dt);
  Tensor t_x = s.put({N, V}, dt, x), t_t = put_tokens(s, tgt);
  Tensor lse = s.poisoned({N}, DType::kF32);
  gpu().logsumexp_rows(lse, t_x);
  Vec lref(N);
  cpu::logsumexp_rows(lref.data(), x.data(), N, V);
  expect_close(what.str() + " logsumexp", get(lse), lref, test::kTolF32);
  Tensor t_lse = s.put({N}, DType::kF32, lse_full), losses = s.poisoned({N}, DType::kF32);
  gpu().cross_entropy_with_lse(losses, t_x, t_x, t_lse, t_t, offset, dloss);  // in place
  Vec loss_ref(N), dref(size_t(N) * V);
  cpu::cross_entropy_with_lse(loss_ref.data(), dref.data(), x.data(), lse_full.data(), tgt.data(), N, V,
                              offset, dloss);
  expect_close(what.str() + " losses", get(losses), loss_ref, test::kTolF32);
  expect_close(what.str() + " dlogits", get(t_x), dref, tol_for(dt));
}

TEST(CudaCrossEntropy, VocabularyParallelPieces) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_cross_entropy_shard(9, 72, 72, dt, 1);     // the middle shard of three
    check_cross_entropy_shard(7, 1001, 0, dt, 2);    // the first shard, V odd: scalar path
  }
}

TEST(CudaCrossEntropy, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) check_cross_entropy(512, 32000, dt, true, 3);  // in place like the model
}

// ---- optimizer ---------------------------------------------------------------------------------

TEST(CudaOptim, SumSquaresDeterministic) {
  LTRAIN_SKIP_WITHOUT_GPU();
  GpuScope s;
  Vec a = random_in(DType::kF32, 7, 1), b = random_in(DType::kF32, 3000017, 2), c = random_in(DType::kBF16, 4099, 3);
  Tensor ta = s.put({7}, DType::kF32, a), tb = s.put({3000017}, DType::kF32, b), tc = s.put({4099}, DType::kBF16, c);
  const double got = gpu().sum_squares({ta, tb, tc});
  const double ref = cpu::sum_squares(a.data(), 7) + cpu::sum_squares(b.data(), 3000017) +
                     cpu::sum_squares(c.data(), 4099);
  EXPECT_NEAR(got, ref, 1e-5 * ref);
  EXPECT_EQ(gpu().sum_squares({ta, tb, tc}), got);  // bitwise
}

void check_adamw(int64_t n, int step, double wd, double scale, uint64_t seed) {
  GpuScope s;
  Vec p = random_in(DType::kF32, n, seed), g = random_in(DType::kF32, n, seed + 1);
  Vec m = random_in(DType::kF32, n, seed + 2, -0.1, 0.1), v = random_in(DType::kF32, n, seed + 3, 0.0, 0.01);
  Tensor tp = s.put({n}, DType::kF32, p), tg = s.put({n}, DType::kF32, g);
  Tensor tm = s.put({n}, DType::kF32, m), tv = s.put({n}, DType::kF32, v);
  AdamWStep st{1e-3, 0.9, 0.95, 1e-8, wd, scale, step};
  gpu().adamw_update(tp, tg, tm, tv, st);
  cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, st.lr, st.beta1, st.beta2, st.eps,
                    st.weight_decay, st.grad_scale, st.step);
  std::ostringstream what;
  what << "adamw n " << n << " step " << step << " wd " << wd << " scale " << scale;
  expect_close(what.str() + " param", get(tp), p, test::kTolF32);
  expect_close(what.str() + " m", get(tm), m, test::kTolF32);
  expect_close(what.str() + " v", get(tv), v, test::kTolF32);
}

TEST(CudaOptim, AdamWAgainstTheDefinition) {
  LTRAIN_SKIP_WITHOUT_GPU();
  check_adamw(7, 1, 0.1, 1.0, 1);
  check_adamw(4099, 10, 0.0, 0.5, 2);   // vector part and a tail, no decay, clipped
  check_adamw(1 << 22, 1000, 0.1, 1.0, 3);
}

// ---- attention ---------------------------------------------------------------------------------

struct AttnShape {
  int B, Tn, H, KV, HD;
};

std::string str(const AttnShape& a) {
  std::ostringstream os;
  os << "attention B " << a.B << " T " << a.Tn << " H " << a.H << " KV " << a.KV << " HD " << a.HD;
  return os.str();
}

// One head's (T, HD) slice of a (B, T, NH, HD) tensor, and back.
std::vector<float> gather_head(const Vec& x, int b, int h, int Tn, int NH, int HD) {
  std::vector<float> out(size_t(Tn) * HD);
  for (int t = 0; t < Tn; ++t)
    for (int d = 0; d < HD; ++d) out[size_t(t) * HD + d] = float(x[((size_t(b) * Tn + t) * NH + h) * HD + d]);
  return out;
}
void scatter_head(Vec& x, const std::vector<float>& hd, int b, int h, int Tn, int NH, int HD) {
  for (int t = 0; t < Tn; ++t)
    for (int d = 0; d < HD; ++d)
      x[((size_t(b) * Tn + t) * NH + h) * HD + d] = test::round_bf16(hd[size_t(t) * HD + d]);
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
    const int Tn = a.Tn;
    std::vector<float> S(size_t(Tn) * Tn);
    cpu::gemm<float>(S.data(), Q.data(), K.data(), Tn, Tn, a.HD, false, true, float(1.0 / std::sqrt(a.HD)), 0.f);
    round_bf16_inplace(S);
    for (int i = 0; i < Tn; ++i) {
      float* row = S.data() + size_t(i) * Tn;
      float m = -INFINITY, l = 0;
      for (int j = 0; j <= i; ++j) m = std::max(m, row[j]);
      for (int j = 0; j <= i; ++j) l += row[j] = std::exp(row[j] - m);
      for (int j = 0; j <= i; ++j) row[j] /= l;
      for (int j = i + 1; j < Tn; ++j) row[j] = 0;
    }
    round_bf16_inplace(S);
    return S;
  }
  Vec forward(const Vec& q, const Vec& k, const Vec& v) const {
    Vec out(q.size());
    const int G = a.H / a.KV;
    for (int b = 0; b < a.B; ++b)
      for (int h = 0; h < a.H; ++h) {
        auto Q = gather_head(q, b, h, a.Tn, a.H, a.HD), K = gather_head(k, b, h / G, a.Tn, a.KV, a.HD),
             V = gather_head(v, b, h / G, a.Tn, a.KV, a.HD);
        auto P = probs(Q, K);
        std::vector<float> O(size_t(a.Tn) * a.HD);
        cpu::gemm<float>(O.data(), P.data(), V.data(), a.Tn, a.HD, a.Tn, false, false, 1.f, 0.f);
        scatter_head(out, O, b, h, a.Tn, a.H, a.HD);
      }
    return out;
  }
  void backward(const Vec& q, const Vec& k, const Vec& v, const Vec& out, const Vec& dout, Vec& dq,
                Vec& dk, Vec& dv) const {
    const int G = a.H / a.KV, Tn = a.Tn, HD = a.HD;
    const float scale = float(1.0 / std::sqrt(HD));
    dq.assign(q.size(), 0);
    dk.assign(k.size(), 0);
    dv.assign(v.size(), 0);
    for (int b = 0; b < a.B; ++b)
      for (int kvh = 0; kvh < a.KV; ++kvh) {
        auto K = gather_head(k, b, kvh, Tn, a.KV, HD), V = gather_head(v, b, kvh, Tn, a.KV, HD);
        std::vector<float> dK(size_t(Tn) * HD, 0.f), dV(size_t(Tn) * HD, 0.f);
        for (int h = kvh * G; h < (kvh + 1) * G; ++h) {
          auto Q = gather_head(q, b, h, Tn, a.H, HD), O = gather_head(out, b, h, Tn, a.H, HD),
               dO = gather_head(dout, b, h, Tn, a.H, HD);
          auto P = probs(Q, K);
          std::vector<float> dP(size_t(Tn) * Tn), dQ(size_t(Tn) * HD);
          cpu::gemm<float>(dP.data(), dO.data(), V.data(), Tn, Tn, HD, false, true, 1.f, 0.f);
          round_bf16_inplace(dP);
          for (int i = 0; i < Tn; ++i) {
            float D = 0;
            for (int d = 0; d < HD; ++d) D += dO[size_t(i) * HD + d] * O[size_t(i) * HD + d];
            for (int j = 0; j < Tn; ++j) dP[size_t(i) * Tn + j] = P[size_t(i) * Tn + j] * (dP[size_t(i) * Tn + j] - D);
          }
          round_bf16_inplace(dP);  // now dS
          cpu::gemm<float>(dQ.data(), dP.data(), K.data(), Tn, HD, Tn, false, false, scale, 0.f);
          cpu::gemm<float>(dK.data(), dP.data(), Q.data(), Tn, HD, Tn, true, false, scale, 1.f);
          cpu::gemm<float>(dV.data(), P.data(), dO.data(), Tn, HD, Tn, true, false, 1.f, 1.f);
          scatter_head(dq, dQ, b, h, Tn, a.H, HD);
        }
        scatter_head(dk, dK, b, kvh, Tn, a.KV, HD);
        scatter_head(dv, dV, b, kvh, Tn, a.KV, HD);
      }
  }
};

void check_attention(const AttnShape& a, uint64_t seed) {
  GpuScope s;
  const DType bf = DType::kBF16;
  const size_t nq = size_t(a.B) * a.Tn * a.H * a.HD, nk = size_t(a.B) * a.Tn * a.KV * a.HD;
  // Wider q and k than [-1, 1] make the softmax peaked, not flat.
  Vec q = random_in(bf, nq, seed, -2, 2), k = random_in(bf, nk, seed + 1, -2, 2),
      v = random_in(bf, nk, seed + 2), dout = random_in(bf, nq, seed + 3);
  Shape sq{a.B, a.Tn, a.H, a.HD}, skv{a.B, a.Tn, a.KV, a.HD};
  Tensor tq = s.put(sq, bf, q), tk = s.put(skv, bf, k), tv = s.put(skv, bf, v);
  Tensor out = s.poisoned(sq, bf), lse = s.poisoned({a.B, a.H, a.Tn}, DType::kF32);
  gpu().attention_forward(out, lse, tq, tk, tv);
  Vec out_ref(nq), lse_ref(size_t(a.B) * a.H * a.Tn);
  cpu::attention_forward(out_ref.data(), lse_ref.data(), q.data(), k.data(), v.data(), a.B, a.Tn, a.H, a.KV, a.HD);
  PlainAttention plain{a};
  const std::string what = str(a);
  expect_within_baseline(what + " out", get(out), out_ref, plain.forward(q, k, v));
  expect_close(what + " out (per element, loose)", get(out), out_ref, {1e-2, 6e-2});
  expect_close(what + " lse", get(lse), lse_ref, {1e-5, 1e-4});

  // Backward from the oracle's out and lse (rounded as the GPU stores them), so it is tested
  // apart from the forward.
  Vec out_b = round_all(bf, out_ref), lse_b = round_all(DType::kF32, lse_ref);
  Tensor to = s.put(sq, bf, out_b), tl = s.put({a.B, a.H, a.Tn}, DType::kF32, lse_b), tdo = s.put(sq, bf, dout);
  Tensor dq = s.poisoned(sq, bf), dk = s.poisoned(skv, bf), dv = s.poisoned(skv, bf);
  gpu().attention_backward(dq, dk, dv, tdo, tq, tk, tv, to, tl);
  Vec dq_ref(nq), dk_ref(nk), dv_ref(nk), dq_p, dk_p, dv_p;
  cpu::attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout.data(), q.data(), k.data(),
                          v.data(), out_b.data(), lse_b.data(), a.B, a.Tn, a.H, a.KV, a.HD);
  plain.backward(q, k, v, out_b, dout, dq_p, dk_p, dv_p);
  const Vec got_dq = get(dq), got_dk = get(dk), got_dv = get(dv);
  if (a.Tn == 1) {
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

// Odd matmul shapes come last: cuBLASLt's support for leading dimensions that are not a
// multiple of 8 is the least certain, and a failure aborts the binary.
TEST(CudaMatmul, OddShapes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) check_matmul(7, 9, 5, ta, tb, DType::kBF16, 1.f, 1.f, seed += 3);
}

}  // namespace
}  // namespace ltrain
