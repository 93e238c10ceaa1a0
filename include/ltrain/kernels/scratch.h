// The device scratch the CUDA kernels take beyond their operands, and the grid sizes it follows
// from: functions of the shape alone, in plain host C++. The kernels (kernels/*.cu) and the CUDA
// backend size their scratch with these, and the memory plan (src/train/memory_plan.cpp) counts
// with the same functions, also in builds without CUDA (`ltrain estimate`), so the two cannot
// drift apart.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace ltrain::cuda {

// Grids are fixed by the shape, never by the device they run on, so that every reduction order
// (and so every result) is the same on every GPU. They are sized for an H100 (132 SMs), where
// kFillBlocks blocks are two per SM.
constexpr int kDesignSMs = 132;
constexpr int kFillBlocks = 2 * kDesignSMs;

// RMSNorm backward: blocks of at least kRmsnormBackwardMinRows rows, at most kFillBlocks of them;
// each block writes its partial sums of dweight, one fp32 row of C, and a second kernel adds the
// rows in order.
constexpr int kRmsnormBackwardMinRows = 16;
inline int rmsnorm_backward_blocks(int64_t N) {
  return int(std::min<int64_t>(kFillBlocks, (N + kRmsnormBackwardMinRows - 1) / kRmsnormBackwardMinRows));
}
inline size_t rmsnorm_backward_scratch_floats(int64_t N, int C) {
  return N == 0 ? 0 : size_t(rmsnorm_backward_blocks(N)) * size_t(C);
}

// Embedding backward: one (token << 32 | row) sort key per row.
inline size_t embedding_backward_scratch_bytes(int64_t N) { return size_t(N) * sizeof(uint64_t); }

// Sum of squares: kSumSquaresBlocks fp64 partials (one per block of the largest grid), then the
// total they add up to.
constexpr int kSumSquaresBlocks = 1024;
constexpr size_t kSumSquaresScratchBytes = size_t(kSumSquaresBlocks + 1) * sizeof(double);

// Attention backward: the main kernel's grid is (B * H, splits); each split takes a share of the
// key tiles of kAttentionBackwardKeys keys, and splits = min(key tiles, ceil(kFillBlocks / (B H))).
constexpr int kAttentionBackwardKeys = 128;
inline int attention_backward_splits(int B, int T, int H) {
  const int64_t bh = int64_t(B) * H;
  const int64_t key_tiles = (int64_t(T) + kAttentionBackwardKeys - 1) / kAttentionBackwardKeys;
  const int64_t want = (kFillBlocks + bh - 1) / bh;
  return int(std::max<int64_t>(1, std::min(key_tiles, want)));
}
// Its fp32 scratch, in floats from the start: the dQ partials of every split (splits, B, T, H, HD);
// under GQA (H > KV) dK and dV of every query head (B, T, H, HD) each, summed per group later;
// then D = rowsum(dout * out) (B, H, T).
struct AttentionBackwardScratch {
  int64_t dq_accum, dk_part, dv_part, D, total;
};
inline AttentionBackwardScratch attention_backward_scratch(int B, int T, int H, int KV, int HD) {
  const int64_t per_head = int64_t(B) * T * H * HD;
  const int64_t part = H > KV ? per_head : 0;
  AttentionBackwardScratch l;
  l.dq_accum = 0;
  l.dk_part = per_head * attention_backward_splits(B, T, H);
  l.dv_part = l.dk_part + part;
  l.D = l.dv_part + part;
  l.total = l.D + int64_t(B) * H * T;
  return l;
}
inline size_t attention_backward_scratch_floats(int B, int T, int H, int KV, int HD) {
  return size_t(attention_backward_scratch(B, T, H, KV, HD).total);
}

}  // namespace ltrain::cuda
