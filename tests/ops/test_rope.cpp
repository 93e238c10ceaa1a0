// rope: rotates each (even, odd) pair of a head by the table's angle for its position; the
// backward is the inverse rotation. CPU: the backward against finite differences, position 0 the
// identity, norms kept. GPU: forward and backward, out of place and in place.
#include "op_test_util.h"

namespace ltrain {
namespace {

using namespace test;

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

// ---- GPU against the double oracle -------------------------------------------------------------

void check_rope(int B, int T, int NH, int HD, DType dt, uint64_t seed) {
  GpuScope s;
  const size_t n = size_t(B) * T * NH * HD;
  // The table may be longer than T; the GPU reads it in fp32.
  Vec x = random_in(dt, n, seed), f = round_all(DType::kF32, rope_table(T + 3, HD));
  Tensor t_x = s.put({B, T, NH, HD}, dt, x), t_f = s.put({T + 3, HD / 2, 2}, DType::kF32, f);
  std::ostringstream what;
  what << "rope B " << B << " T " << T << " NH " << NH << " HD " << HD << " " << dtype_name(dt);
  for (int sign : {+1, -1}) {
    Tensor out = s.poisoned({B, T, NH, HD}, dt);
    if (sign > 0) gpu().rope_forward(out, t_x, t_f);
    else gpu().rope_backward(out, t_x, t_f);
    Vec ref(n);
    cpu::rope_rotate(ref.data(), x.data(), f.data(), B, T, NH, HD, sign);
    expect_close(what.str() + (sign > 0 ? " forward" : " backward"), get(out), ref, tol_for(dt));
    // In place, as the model calls it.
    Tensor inplace = s.put({B, T, NH, HD}, dt, x);
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

}  // namespace
}  // namespace ltrain
