// Work count of the attention backward (kernels/attention_backward.cu): the tensor-core products
// the emulator counted for one call against FlashAttention-2's five per tile pair.
//
// For every (b, query head) and every (query tile, key tile) pair at or below the causal
// diagonal, the backward needs S = Q K^T, dP = dO V^T, dV += P^T dO, dK += dS^T Q and
// dQ += dS K: five products of queries x keys x HD multiply-adds each. One m16n8k16 mma is
// 16 * 8 * 16 of them, so
//   mma * 2048 == 5 * HD * queries * keys * (visited pairs summed over b and h).
// A backward that recomputes S and dP for dQ in a second kernel (the one before issue 13) does
// 7 products per pair and fails. Padding rows past T count: the tiles are multiplied whole.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/ops.h"
#include "emu_control.h"
#include "kernels.h"
#include "work_util.h"
#include "test_util.h"

namespace {

using ltrain::cuda::bf16;

using Shape = ltrain::test::AttentionShape;
using ltrain::test::device_random_bf16;

// Visited (query tile, key tile) pairs of one (b, head): key tile kt meets the query tiles from
// the one holding its first key to the last.
int64_t visited_pairs(int Tn, int BQ, int BK) {
  const int64_t n_q = (Tn + BQ - 1) / BQ, n_k = (Tn + BK - 1) / BK;
  int64_t pairs = 0;
  for (int64_t kt = 0; kt < n_k; ++kt) pairs += n_q - kt * BK / BQ;
  return pairs;
}

template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

std::vector<double> to_double(const std::vector<bf16>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = double(__bfloat162float(x[i]));
  return y;
}

// Runs the forward then the backward on seeded inputs. Returns the backward's mma count; with
// `check`, also compares dq, dk and dv with the double-precision CPU backward (src/cpu/ops.h) on
// the same bf16 inputs and the GPU's out and lse, per element within the op tests' loose bound.
uint64_t backward_mma(const Shape& s, uint32_t seed, bool check = false) {
  const size_t nq = size_t(s.B) * s.Tn * s.H * s.HD, nk = size_t(s.B) * s.Tn * s.KV * s.HD;
  const size_t nl = size_t(s.B) * s.H * s.Tn;
  bf16* q = device_random_bf16(nq, seed, -2, 2);
  bf16* k = device_random_bf16(nk, seed + 1, -2, 2);
  bf16* v = device_random_bf16(nk, seed + 2, -1, 1);
  bf16* dout = device_random_bf16(nq, seed + 3, -1, 1);
  bf16 *out = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *lse = nullptr, *scratch = nullptr;
  EXPECT_EQ(cudaMalloc(&out, nq * sizeof(bf16)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dq, nq * sizeof(bf16)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dk, nk * sizeof(bf16)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dv, nk * sizeof(bf16)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&lse, nl * sizeof(float)), cudaSuccess);
  const size_t scratch_floats =
      ltrain::cuda::attention_backward_scratch_floats(s.B, s.Tn, s.H, s.KV, s.HD);
  EXPECT_EQ(cudaMalloc(&scratch, scratch_floats * sizeof(float)), cudaSuccess);
  // A real out and lse (the forward's), so that the backward runs on its true inputs.
  ltrain::cuda::attention_forward(out, lse, q, k, v, s.B, s.Tn, s.H, s.KV, s.HD, nullptr);
  const uint64_t before = cuda_emu::total_launch_stats().mma;
  ltrain::cuda::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scratch, s.B, s.Tn, s.H,
                                   s.KV, s.HD, nullptr);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cuda_emu::last_error_message();
  const uint64_t mma = cuda_emu::total_launch_stats().mma - before;
  if (check) {
    const auto hq = to_double(to_host(q, nq)), hk = to_double(to_host(k, nk)),
               hv = to_double(to_host(v, nk)), hdo = to_double(to_host(dout, nq)),
               ho = to_double(to_host(out, nq));
    const auto lf = to_host(lse, nl);
    const std::vector<double> hl(lf.begin(), lf.end());
    std::vector<double> rq(nq), rk(nk), rv(nk);
    ltrain::cpu::attention_backward<double, double>(rq.data(), rk.data(), rv.data(), hdo.data(),
                                                    hq.data(), hk.data(), hv.data(), ho.data(),
                                                    hl.data(), s.B, s.Tn, s.H, s.KV, s.HD);
    const std::pair<const char*, std::pair<std::vector<double>, std::vector<double>>> outs[] = {
        {"dq", {to_double(to_host(dq, nq)), rq}},
        {"dk", {to_double(to_host(dk, nk)), rk}},
        {"dv", {to_double(to_host(dv, nk)), rv}}};
    for (const auto& [name, gr] : outs)
      EXPECT_EQ(ltrain::test::compare(gr.first.data(), gr.second.data(), gr.first.size(), 1e-2, 6e-2), "")
          << name;
  }
  for (void* p : {(void*)q, (void*)k, (void*)v, (void*)dout, (void*)out, (void*)dq, (void*)dk,
                  (void*)dv, (void*)lse, (void*)scratch})
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  return mma;
}

void expect_five_products_per_pair(const Shape& s, uint32_t seed, bool check = false) {
  const auto tile = ltrain::cuda::attention_backward_tile(s.HD);
  ASSERT_GT(tile.queries, 0);
  ASSERT_GT(tile.keys, 0);
  const int64_t pairs = int64_t(s.B) * s.H * visited_pairs(s.Tn, tile.queries, tile.keys);
  const int64_t macs = 5 * int64_t(s.HD) * tile.queries * tile.keys * pairs;
  const uint64_t mma = backward_mma(s, seed, check);
  EXPECT_EQ(int64_t(mma) * 16 * 8 * 16, macs)
      << "B " << s.B << " T " << s.Tn << " H " << s.H << " KV " << s.KV << " HD " << s.HD << ": tile "
      << tile.queries << " x " << tile.keys << ", " << pairs << " pairs; counted " << mma
      << " mma = " << double(mma) * 2048 / (double(s.HD) * tile.queries * tile.keys * pairs)
      << " products per pair";
}

TEST(AttentionBackwardWork, FiveProductsPerTilePairHeadDim64) {
  expect_five_products_per_pair({1, 256, 2, 2, 64}, 1);  // T a multiple of the tiles, GQA 1
  expect_five_products_per_pair({1, 200, 4, 1, 64}, 2);  // T not a multiple, GQA 4
  expect_five_products_per_pair({2, 130, 8, 1, 64}, 3);  // H / KV = 8 on one KV head, B 2
}

TEST(AttentionBackwardWork, FiveProductsPerTilePairHeadDim128) {
  expect_five_products_per_pair({1, 256, 2, 2, 128}, 4);
  expect_five_products_per_pair({1, 200, 4, 1, 128}, 5);
  expect_five_products_per_pair({2, 130, 8, 1, 128}, 6);
  expect_five_products_per_pair({1, 7, 8, 2, 128}, 7);  // one partial tile
}

// Blocks that take more than one key tile (splits below the key tiles: many (b, head) pairs),
// whose dQ partial is read, added to and written back: the op tests' shapes give every split a
// single key tile. Counted and checked against the CPU.
TEST(AttentionBackwardWork, SplitsOfSeveralKeyTiles) {
  // B x H 264: one split, both key tiles in one block (the second of the pair s, 2S-1-s); GQA 4.
  const Shape a{2, 256, 132, 33, 64};
  EXPECT_EQ(ltrain::cuda::attention_backward_splits(a.B, a.Tn, a.H), 1);
  expect_five_products_per_pair(a, 8, true);
  // B x H 132: two splits over three key tiles (split 1 takes tiles 1 and 2).
  const Shape b{1, 257, 132, 132, 128};
  EXPECT_EQ(ltrain::cuda::attention_backward_splits(b.B, b.Tn, b.H), 2);
  expect_five_products_per_pair(b, 9, true);
}

// The grid: min(key tiles, ceil(264 / (B H))) splits per (b, head), about two blocks per SM of a
// 132-SM GPU where there are enough key tiles.
TEST(AttentionBackwardWork, SplitsFillTheGpu) {
  using ltrain::cuda::attention_backward_splits;
  EXPECT_EQ(attention_backward_splits(1, 2048, 32), 9);    // 288 blocks
  EXPECT_EQ(attention_backward_splits(1, 2048, 4), 16);    // TP 8: 16 key tiles, 64 blocks
  EXPECT_EQ(attention_backward_splits(1, 8192, 4), 64);    // 256 blocks
  EXPECT_EQ(attention_backward_splits(8, 2048, 32), 2);    // 512 blocks
  EXPECT_EQ(attention_backward_splits(16, 2048, 32), 1);   // 512 blocks
  EXPECT_EQ(attention_backward_splits(1, 100, 1), 1);      // one key tile
}

}  // namespace
