// matmul: out = alpha * op(a) @ op(b) + beta * c. CPU: the backward against finite differences,
// the fp32 backend against the double oracle (accumulating, and with a separate c). GPU (cuBLASLt,
// and the fallback kernel): every transpose, bf16 and fp32 outputs, beta 0 and 1, odd shapes.
#include "op_test_util.h"
#ifdef LTRAIN_CUDA_EMU
#include "emu_control.h"
#endif

namespace ltrain {
namespace {

using namespace test;

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

TEST(CpuBackend, MatmulFp32MatchesOracle) {
  BackendPair p;
  const int N = 18, C = 32, FF = 24;
  auto x = p.tensor({N, C}, random_vector(N * C, 30, -2, 2));
  auto wm = p.tensor({FF, C}, random_vector(FF * C, 35)), out = p.tensor({N, FF}, random_vector(N * FF, 36));
  p.f32().matmul(out.first, x.first, wm.first, false, true, 1.0f, 1.0f);  // accumulate branch
  p.f64().matmul(out.second, x.second, wm.second, false, true, 1.0f, 1.0f);
  EXPECT_EQ(p.compare_outputs(out, 1e-4, 1e-5), "");
  // A separate c (the residual add in the product): the same as accumulating into a copy of it,
  // and c itself is left alone.
  const Vec rv = random_vector(N * FF, 38);
  auto resid = p.tensor({N, FF}, rv), fused = p.poisoned({N, FF}), twopass = p.tensor({N, FF}, rv);
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
}

// ---- GPU against the double oracle -------------------------------------------------------------

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
  if (separate_c) expect_close("matmul: c after the product", get(c), c0, kTolF32);
  Vec ref = beta != 0 ? c0 : Vec(size_t(M) * N, 0.0);
  cpu::gemm(ref.data(), a.data(), b.data(), M, N, K, ta, tb, double(alpha), double(beta));
  const Tol tol = out_dt == DType::kBF16 ? (beta != 0 ? kTolBF16Accum : kTolBF16) : kTolF32Sum;
  std::ostringstream what;
  what << "matmul M " << M << " N " << N << " K " << K << " ta " << ta << " tb " << tb << " out "
       << dtype_name(out_dt) << " alpha " << alpha << " beta " << beta << (separate_c ? " separate c" : "");
  expect_close(what.str(), get(out), ref, tol);
}

// f(ta, tb, out dtype, beta) for every transpose of a and b, both output dtypes, beta 0 and 1.
void for_each_variant(const std::function<void(bool, bool, DType, float)>& f) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (DType out : {DType::kBF16, DType::kF32})
        for (float beta : {0.f, 1.f}) f(ta, tb, out, beta);
}

TEST(CudaMatmul, AllTransposesOutputsAndBeta) {
  LTRAIN_SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  for_each_variant([&](bool ta, bool tb, DType out, float beta) {
    check_matmul(64, 72, 40, ta, tb, out, 1.f, beta, seed += 3);
    check_matmul(24, 8, 16, ta, tb, out, 0.5f, beta, seed += 3);
    check_matmul(24, 40, 16, ta, tb, out, 1.f, beta, seed += 3, true);
  });
}

#ifdef LTRAIN_CUDA_EMU
// When cuBLASLt's heuristic finds no algorithm, the product runs on the fallback kernel instead
// of aborting. Only the emulator can make the heuristic come back empty on demand. Shapes of their
// own, so that no cached plan hides the heuristic.
TEST(CudaMatmul, FallbackWhenCublasLtHasNoAlgorithm) {
  LTRAIN_SKIP_WITHOUT_GPU();
  cuda_emu::set_cublaslt_finds_no_algorithm(true);
  uint64_t seed = 300;
  for_each_variant([&](bool ta, bool tb, DType out, float beta) {
    check_matmul(37, 21, 19, ta, tb, out, 0.75f, beta, seed += 3);
    check_matmul(37, 21, 19, ta, tb, out, 0.75f, beta, seed += 3, true);
  });
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

// Odd shapes come last: cuBLASLt's support for leading dimensions that are not a multiple of 8 is
// the least certain, and a failure aborts the binary.
TEST(CudaMatmul, OddShapes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) check_matmul(7, 9, 5, ta, tb, DType::kBF16, 1.f, 1.f, seed += 3);
}

}  // namespace
}  // namespace ltrain
