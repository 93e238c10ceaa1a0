// The optimizer's ops: sum_squares (the gradient norm, deterministic) and adamw_update. GPU
// against the double oracle; the CPU AdamW itself is checked against its definition in
// tests/test_optim.cpp.
#include "op_test_util.h"

namespace ltrain {
namespace {

using namespace test;

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
  expect_close(what.str() + " param", get(tp), p, kTolF32);
  expect_close(what.str() + " m", get(tm), m, kTolF32);
  expect_close(what.str() + " v", get(tv), v, kTolF32);
}

TEST(CudaOptim, AdamWAgainstTheDefinition) {
  LTRAIN_SKIP_WITHOUT_GPU();
  check_adamw(7, 1, 0.1, 1.0, 1);
  check_adamw(4099, 10, 0.0, 0.5, 2);   // vector part and a tail, no decay, clipped
  check_adamw(1 << 22, 1000, 0.1, 1.0, 3);
}

}  // namespace
}  // namespace ltrain
