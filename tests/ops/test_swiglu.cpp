// swiglu (out = silu(gate) * up) and add, the elementwise ops. CPU: both swiglu gradients
// against finite differences. GPU: swiglu forward and backward, and add in place.
#include "op_test_util.h"

namespace ltrain {
namespace {

using namespace test;

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

// ---- GPU against the double oracle -------------------------------------------------------------

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
  what << "swiglu n " << n << " " << dtype_name(dt);
  // __expf costs a few fp32 ulps: still far inside the fp32 tolerance's atol.
  const Tol tol = dt == DType::kBF16 ? kTolBF16 : Tol{1e-5, 1e-4};
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

}  // namespace
}  // namespace ltrain
