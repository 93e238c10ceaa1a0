// The tensor-core product's self-test: kernels/common/mma.cuh's m16n8k16 bf16 mma, for random
// fragments against a plain matrix product in double, and for single-element operands, which pin
// every register and half of the fragment layout. The same source runs in both builds:
//  - under the CUDA emulator (-DLTRAIN_CUDA_EMU=ON), where mma.cuh is the emulator's warp
//    collective written from the PTX ISA's fragment figures;
//  - on a real GPU (the nvcc build; scripts/gpu_check.sh), where it is the inline PTX.
// Passing on both is the proof that the emulation matches the hardware.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/launch.cuh"
#include "common/mma.cuh"

namespace {

using ltrain::cuda::launch_kernel;

// One warp: each lane gathers its fragments from row-major A (16x16), B (16x8, k x n) and C (16x8)
// by the PTX ISA's layout (written here from the ISA, independently of the attention kernels) and stores D.
__global__ void mma_from_row_major(float* d, const uint16_t* a, const uint16_t* b, const float* c) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair = [](uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); };
  uint32_t af[4];
  af[0] = pair(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
  af[1] = pair(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
  af[2] = pair(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
  af[3] = pair(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
  const uint32_t b0 = pair(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]);
  const uint32_t b1 = pair(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]);
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  ltrain::cuda::mma_bf16_16x8x16(acc, af, b0, b1);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// bf16 bits of x rounded to nearest even, and back (cuda_bf16.h's host conversions).
uint16_t bf16_bits(float x) {
  const __nv_bfloat16 h = __float2bfloat16_rn(x);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}
double bf16_value(uint16_t bits) {
  __nv_bfloat16_raw raw;
  raw.x = bits;
  return __bfloat162float(__nv_bfloat16(raw));
}

class MmaSelfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      cudaGetLastError();
      GTEST_SKIP() << "no CUDA device";
    }
    ASSERT_EQ(cudaMalloc(&da_, 256 * 2), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&db_, 128 * 2), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dc_, 128 * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dd_, 128 * 4), cudaSuccess);
  }
  void TearDown() override {
    for (void* p : {(void*)da_, (void*)db_, (void*)dc_, (void*)dd_})
      if (p) cudaFree(p);
  }
  std::vector<float> run(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, const std::vector<float>& c) {
    EXPECT_EQ(cudaMemcpy(da_, a.data(), 256 * 2, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(db_, b.data(), 128 * 2, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dc_, c.data(), 128 * 4, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemset(dd_, 0xFF, 128 * 4), cudaSuccess);  // NaN until written
    launch_kernel(mma_from_row_major, dim3(1), dim3(32), 0, nullptr, dd_, da_, db_, dc_);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    std::vector<float> d(128);
    EXPECT_EQ(cudaMemcpy(d.data(), dd_, 128 * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return d;
  }
  uint16_t *da_ = nullptr, *db_ = nullptr;
  float *dc_ = nullptr, *dd_ = nullptr;
};

TEST_F(MmaSelfTest, RandomFragmentsMatchAPlainMatrixProduct) {
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<uint16_t> a(256), b(128);
    std::vector<float> c(128);
    for (auto& x : a) x = bf16_bits(u(rng));
    for (auto& x : b) x = bf16_bits(u(rng));
    for (auto& x : c) x = u(rng);
    const std::vector<float> d = run(a, b, c);
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j) {
        double ref = c[i * 8 + j];
        for (int k = 0; k < 16; ++k) ref += bf16_value(a[i * 16 + k]) * bf16_value(b[k * 8 + j]);
        // bf16 products are exact in fp32; 17 fp32 additions of values up to 4
        ASSERT_NEAR(d[i * 8 + j], ref, 2e-5 * (1 + std::fabs(ref))) << "trial " << trial << " D(" << i << "," << j << ")";
      }
  }
}

// A = one 1 at (i, k), B = one 2 at (k, j): D has a single 2 at (i, j). A swapped register, row
// half or 16-bit half moves it.
TEST_F(MmaSelfTest, SingleElementsLandWhereThePtxIsaSays) {
  const std::vector<float> zero(128, 0.f);
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k)
      for (int j = 0; j < 8; j += 3) {
        std::vector<uint16_t> a(256, 0), b(128, 0);
        a[i * 16 + k] = bf16_bits(1.f);
        b[k * 8 + j] = bf16_bits(2.f);
        const std::vector<float> d = run(a, b, zero);
        for (int r = 0; r < 16; ++r)
          for (int cc = 0; cc < 8; ++cc)
            ASSERT_EQ(d[r * 8 + cc], (r == i && cc == j) ? 2.f : 0.f)
                << "A(" << i << "," << k << ") B(" << k << "," << j << ") -> D(" << r << "," << cc << ")";
      }
}

// C passes through: D = C when A = 0.
TEST_F(MmaSelfTest, AccumulatorPassesThrough) {
  std::vector<float> c(128);
  for (int i = 0; i < 128; ++i) c[i] = float(i) - 64.f;
  const std::vector<float> d = run(std::vector<uint16_t>(256, 0), std::vector<uint16_t>(128, bf16_bits(1.f)), c);
  for (int i = 0; i < 128; ++i) ASSERT_EQ(d[i], c[i]) << i;
}

}  // namespace
