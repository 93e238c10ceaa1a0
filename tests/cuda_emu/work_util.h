// Shared by the attention work tests (tests/cuda_emu/work_attention_*.cpp): the shape of one
// attention call and seeded random bf16 inputs on the device.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

namespace ltrain::test {

struct AttentionShape {
  int B, Tn, H, KV, HD;
};

// Seeded random bf16 in [lo, hi), on the device (cudaFree it).
inline __nv_bfloat16* device_random_bf16(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<__nv_bfloat16> host(n);
  for (auto& x : host) x = __float2bfloat16(dist(rng));
  __nv_bfloat16* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, n * sizeof(__nv_bfloat16)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, host.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice), cudaSuccess);
  return d;
}

}  // namespace ltrain::test
