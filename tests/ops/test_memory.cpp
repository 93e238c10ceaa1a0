// The memory ops: alloc and free, host transfers with dtype conversion, copy between dtypes, zero.
#include "op_test_util.h"

namespace ltrain {
namespace {

using namespace test;

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

TEST(CudaMemory, HostRoundTripCopyConvertAndZero) {
  LTRAIN_SKIP_WITHOUT_GPU();
  GpuScope s;
  const int n = 1000 + 3;  // not a multiple of anything
  Vec x = random_vector(n, 1, -100.0, 100.0);
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

}  // namespace
}  // namespace ltrain
