// cross_entropy (the fused loss and logits gradient, target -1 ignored) and its vocabulary-parallel
// pieces, logsumexp_rows and cross_entropy_with_lse. CPU: the gradient against finite
// differences, the fp32 backend against the double oracle. GPU: losses and gradient, in place
// and not, the streaming kernel past the register tiles, and a shard's pieces.
#include "op_test_util.h"

namespace ltrain {
namespace {

using namespace test;

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

TEST(CpuBackend, CrossEntropyFp32MatchesOracle) {
  BackendPair p;
  const int N = 18, V = 19;
  auto logits = p.tensor({N, V}, random_vector(N * V, 37, -4, 4)), losses = p.poisoned({N});
  std::vector<int32_t> tg(N);
  for (int i = 0; i < N; ++i) tg[i] = (i * 7) % V;
  auto targets = p.ints({N}, tg);
  p.f32().cross_entropy(losses.first, logits.first, logits.first, targets.first, 0.5f);
  p.f64().cross_entropy(losses.second, logits.second, logits.second, targets.second, 0.5f);
  EXPECT_EQ(p.compare_outputs(losses, 1e-5, 1e-5), "");
  EXPECT_EQ(p.compare_outputs(logits, 1e-6, 1e-5), "");
}

// ---- GPU against the double oracle -------------------------------------------------------------

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
  what << "cross_entropy N " << N << " V " << V << " " << dtype_name(dt) << (in_place ? " in place" : "");
  expect_close(what.str() + " losses", get(losses), lref, kTolF32);
  expect_close(what.str() + " dlogits", get(dx), dref, tol_for(dt));
  // Forward only (no gradient).
  Tensor t_x2 = s.put({N, V}, dt, x), losses2 = s.poisoned({N}, DType::kF32);
  gpu().cross_entropy(losses2, Tensor{}, t_x2, t_t, dloss);
  expect_close(what.str() + " losses without gradient", get(losses2), lref, kTolF32);
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
  what << "cross_entropy shard N " << N << " V " << V << " offset " << offset << " " << dtype_name(dt);
  Tensor t_x = s.put({N, V}, dt, x), t_t = put_tokens(s, tgt);
  Tensor lse = s.poisoned({N}, DType::kF32);
  gpu().logsumexp_rows(lse, t_x);
  Vec lref(N);
  cpu::logsumexp_rows(lref.data(), x.data(), N, V);
  expect_close(what.str() + " logsumexp", get(lse), lref, kTolF32);
  Tensor t_lse = s.put({N}, DType::kF32, lse_full), losses = s.poisoned({N}, DType::kF32);
  gpu().cross_entropy_with_lse(losses, t_x, t_x, t_lse, t_t, offset, dloss);  // in place
  Vec loss_ref(N), dref(size_t(N) * V);
  cpu::cross_entropy_with_lse(loss_ref.data(), dref.data(), x.data(), lse_full.data(), tgt.data(), N, V,
                              offset, dloss);
  expect_close(what.str() + " losses", get(losses), loss_ref, kTolF32);
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

}  // namespace
}  // namespace ltrain
