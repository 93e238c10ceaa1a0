// Work count of the attention forward (kernels/attention_forward.cu): the tensor-core products
// and global bytes the emulator counted for one call, against the minimum at the kernel's tile
// granularity (ltrain::cuda::attention_forward_tile).
//
// Products. A warp owns warp_rows query rows and needs key tile kt (keys kt*keys ..) exactly when
// the tile holds a key at or before one of its rows, i.e. kt*keys <= min(last row, T-1), and
// nothing when its first row is past T. Per (warp, needed key tile) the forward computes
// S = Q K^T and O += P V: two products of warp_rows x keys x HD multiply-adds. One m16n8k16 mma
// is 16 * 8 * 16 of them, so
//   mma * 2048 == 2 * HD * warp_rows * keys * (needed (warp, key tile) pairs over b, h, query tiles).
// Visiting a tile above a warp's diagonal (or above the block's), or recomputing a product,
// makes the count larger and fails.
//
// Bytes. Each block reads its Q rows once and the K and V rows of the key tiles its queries
// need (kt*keys <= min(q0 + queries - 1, T-1)); rows past T are zero-filled, not read. It writes
// out (bf16) and lse (fp32) once. So global reads and writes are exact, and a key tile above
// the block's diagonal is never loaded.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "emu_control.h"
#include "kernels.h"
#include "work_util.h"

namespace {

using ltrain::cuda::bf16;

using Shape = ltrain::test::AttentionShape;
using ltrain::test::device_random_bf16;

struct Expected {
  int64_t warp_tile_pairs = 0;  // needed (warp, key tile) pairs of one (b, h)
  int64_t bytes_read = 0;       // global bytes of one (b, h)
};

Expected expected_work(int Tn, int HD, const ltrain::cuda::AttentionForwardTile& tile) {
  Expected e;
  const int warps = tile.queries / tile.warp_rows;
  for (int q0 = 0; q0 < Tn; q0 += tile.queries) {
    // the block: its valid Q rows, and K and V rows of the key tiles its queries need
    const int last_key_block = std::min(q0 + tile.queries - 1, Tn - 1);
    e.bytes_read += int64_t(std::min(tile.queries, Tn - q0)) * HD * 2;
    for (int k0 = 0; k0 <= last_key_block; k0 += tile.keys)
      e.bytes_read += 2 * int64_t(std::min(tile.keys, Tn - k0)) * HD * 2;
    for (int w = 0; w < warps; ++w) {
      const int first = q0 + w * tile.warp_rows;
      if (first >= Tn) continue;
      const int last_key = std::min(first + tile.warp_rows - 1, Tn - 1);
      e.warp_tile_pairs += last_key / tile.keys + 1;
    }
  }
  return e;
}

void expect_forward_work(const Shape& s, uint32_t seed) {
  const auto tile = ltrain::cuda::attention_forward_tile(s.HD);
  ASSERT_GT(tile.queries, 0);
  ASSERT_GT(tile.keys, 0);
  ASSERT_GT(tile.warp_rows, 0);
  ASSERT_EQ(tile.queries % tile.warp_rows, 0);
  const size_t nq = size_t(s.B) * s.Tn * s.H * s.HD, nk = size_t(s.B) * s.Tn * s.KV * s.HD;
  bf16* q = device_random_bf16(nq, seed, -2, 2);
  bf16* k = device_random_bf16(nk, seed + 1, -2, 2);
  bf16* v = device_random_bf16(nk, seed + 2, -1, 1);
  bf16* out = nullptr;
  float* lse = nullptr;
  ASSERT_EQ(cudaMalloc(&out, nq * sizeof(bf16)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&lse, size_t(s.B) * s.H * s.Tn * sizeof(float)), cudaSuccess);
  const cuda_emu::LaunchStats before = cuda_emu::total_launch_stats();
  ltrain::cuda::attention_forward(out, lse, q, k, v, s.B, s.Tn, s.H, s.KV, s.HD, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cuda_emu::last_error_message();
  const cuda_emu::LaunchStats after = cuda_emu::total_launch_stats();
  const uint64_t launches = after.launches - before.launches;
  const uint64_t mma = after.mma - before.mma;
  const uint64_t bytes_read = after.global_bytes_read - before.global_bytes_read;
  const uint64_t bytes_written = after.global_bytes_written - before.global_bytes_written;
  for (void* p : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)lse}) EXPECT_EQ(cudaFree(p), cudaSuccess);

  const Expected e = expected_work(s.Tn, s.HD, tile);
  const int64_t heads = int64_t(s.B) * s.H;
  const int64_t macs = 2 * int64_t(s.HD) * tile.warp_rows * tile.keys * e.warp_tile_pairs * heads;
  EXPECT_EQ(launches, 1u);
  EXPECT_EQ(int64_t(mma) * 16 * 8 * 16, macs)
      << "B " << s.B << " T " << s.Tn << " H " << s.H << " KV " << s.KV << " HD " << s.HD << ": tile "
      << tile.queries << " queries (" << tile.warp_rows << " per warp) x " << tile.keys << " keys, "
      << e.warp_tile_pairs * heads << " (warp, key tile) pairs; counted " << mma << " mma = "
      << double(mma) * 2048 / (double(s.HD) * tile.warp_rows * tile.keys * e.warp_tile_pairs * heads)
      << " products per pair";
  EXPECT_EQ(int64_t(bytes_read), e.bytes_read * heads) << "global bytes read, T " << s.Tn << " HD " << s.HD;
  EXPECT_EQ(int64_t(bytes_written), heads * s.Tn * (int64_t(s.HD) * 2 + 4)) << "out and lse, once each";
}

TEST(AttentionForwardWork, TwoProductsPerWarpKeyTilePairHeadDim64) {
  expect_forward_work({1, 256, 2, 2, 64}, 1);  // T a multiple of the tiles, GQA 1
  expect_forward_work({1, 200, 4, 1, 64}, 2);  // T not a multiple, GQA 4
  expect_forward_work({2, 130, 8, 2, 64}, 3);  // B 2, GQA 4, one row into the second query tile
  expect_forward_work({1, 7, 2, 1, 64}, 4);    // one partial tile
}

TEST(AttentionForwardWork, TwoProductsPerWarpKeyTilePairHeadDim128) {
  expect_forward_work({1, 256, 2, 2, 128}, 5);
  expect_forward_work({1, 200, 4, 1, 128}, 6);
  expect_forward_work({2, 130, 8, 1, 128}, 7);  // H / KV = 8 on one KV head
  expect_forward_work({1, 320, 1, 1, 128}, 8);  // three query tiles, the last one partial
}

// The minimum at tile granularity is close to the causal minimum: the (row, key) pairs the
// products cover exceed the T (T + 1) / 2 causal ones only by each warp's one diagonal tile.
TEST(AttentionForwardWork, TileGranularityOverheadIsTheDiagonalOnly) {
  const auto tile = ltrain::cuda::attention_forward_tile(64);
  const int Tn = 1024;
  const Expected e = expected_work(Tn, 64, tile);
  const double pairs = double(e.warp_tile_pairs) * tile.warp_rows * tile.keys;
  const double causal = double(Tn) * (Tn + 1) / 2;
  // every (warp, diagonal key tile) adds at most warp_rows x keys pairs beyond the causal ones
  EXPECT_GE(pairs, causal);
  EXPECT_LE(pairs, causal + double(Tn / tile.warp_rows) * tile.warp_rows * tile.keys);
}

}  // namespace
