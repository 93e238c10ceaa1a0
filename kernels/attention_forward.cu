// Causal grouped-query attention in the FlashAttention-2 style, forward and backward.
//
// Shapes: q (B, T, H, HD), k and v (B, T, KV, HD), out (B, T, H, HD), lse (B, H, T) fp32.
// Query head h reads key/value head h / (H / KV) straight from k and v: no copies. Scale
// 1/sqrt(HD). HD is a template parameter (64 and 128 are instantiated).
//
// Tensor cores: mma.sync.m16n8k16 with bf16 operands and fp32 accumulators (sm_80 and sm_90).
// Each warp owns 16 rows of a tile (the forward: 8 warps, 128 rows). Fragment layout of m16n8k16
// (PTX ISA), with g = lane / 4 and t = lane % 4:
//   A (16x16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16x8, "col"):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16x8, fp32):       c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// Two adjacent C tiles (n 0..15) hold exactly the elements of one A fragment (k 0..15), so
// probabilities computed in registers feed the next product without going through memory.
// Shared-memory tiles feed the products through ldmatrix (common/mma.cuh): rows padded by 16
// bytes (kStride) put the 8 rows of each 8x8 matrix on different banks.
//
// Grids are (B * heads, query or key tiles): x takes the (b, head) pairs, which can number more
// than the 65,535 that y allows (B 2,049 x H 32 does), and y the tiles (T up to 4M).
//
// Forward (FlashAttention-2 style; one block per (128 queries, b, h), the last query tiles,
// which have the most keys, scheduled first). 8 warps, each owning 16 query rows. Q is staged
// once through shared memory with cp.async and kept in registers as A fragments (ldmatrix).
// K and V tiles of 64 keys are double-buffered: the copies of tile j+1 (cp.async, rows past the
// sequence end zero-filled) are in flight while tile j is computed, with one __syncthreads per
// tile. S = Q K^T takes K's B fragments with ldmatrix; an online softmax in the log2 domain
// turns S into P in the same registers, which feed O += P V directly as A fragments, with V's B
// fragments from ldmatrix .trans. O, the running max and sum stay in fp32 registers. Key tiles
// entirely above the diagonal are never loaded; a warp skips a loaded tile that lies entirely
// above its own rows (the second diagonal tile, for the first four warps), and only diagonal
// tiles (and the tile holding T) are masked. O is written back through shared memory with
// 16-byte stores.
//
#include "common/attention_common.cuh"

namespace ltrain::cuda {
namespace {
using namespace attention_detail;

// ---- forward -----------------------------------------------------------------------------------

constexpr int kFwdWarps = 8;
constexpr int kFwdThreads = kFwdWarps * 32;
constexpr int kFwdQueries = kFwdWarps * kRowsPerWarp;  // 128 queries per block
constexpr int kFwdKeys = 64;                           // keys per K/V tile
static_assert(kFwdQueries == 2 * kFwdKeys, "Q is staged in the second K/V buffer (the same size)");

// Dynamic shared memory: two stages of (K tile, V tile), each (kFwdKeys, kStride<HD>) bf16. Q
// (kFwdQueries rows) first occupies stage 1, and O at the end the stage not read last.
template <int HD>
constexpr size_t forward_smem_bytes() {
  return size_t(4) * kFwdKeys * kStride<HD> * sizeof(bf16);
}

// Blocks per SM the register allocation must allow: two at HD 64 (at most 128 registers per
// thread, met without spills); one at HD 128, whose O accumulators and Q fragments alone take
// 96 registers.
template <int HD>
constexpr int kFwdMinBlocks = HD <= 64 ? 2 : 1;

template <int HD>
__global__ void __launch_bounds__(kFwdThreads, kFwdMinBlocks<HD>)
    attention_forward_flash(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                            int Tn, int H, int KV, float scale_log2) {
  constexpr int S = kStride<HD>, BQ = kFwdQueries, BK = kFwdKeys;
  constexpr int kStage = 2 * BK * S;  // elements per stage (K then V)
  LTRAIN_DYNAMIC_SHARED(unsigned char, smem_raw);
  bf16* const smem = reinterpret_cast<bf16*>(smem_raw);

  const int qtile = gridDim.y - 1 - blockIdx.y;  // the last query tiles, which see the most keys, first
  const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KV);
  const int q0 = qtile * BQ;
  const int64_t ldq = int64_t(H) * HD, ldk = int64_t(KV) * HD;
  const bf16* K = k + int64_t(b) * Tn * ldk + kvh * HD;
  const bf16* V = v + int64_t(b) * Tn * ldk + kvh * HD;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = warp * kRowsPerWarp;

  // Key tiles 0 .. the one holding this block's last query (the causal mask hides the rest).
  const int n_tiles = min((Tn + BK - 1) / BK, (q0 + BQ - 1) / BK + 1);
  auto load_kv = [&](int kt) {
    bf16* sK = smem + (kt & 1) * kStage;
    const int k0 = kt * BK;
    cp_async_tile<BK, HD, kFwdThreads>(sK, K + k0 * ldk, ldk, min(BK, Tn - k0));
    cp_async_tile<BK, HD, kFwdThreads>(sK + BK * S, V + k0 * ldk, ldk, min(BK, Tn - k0));
  };

  // Q into stage 1 (group 1), K/V tile 0 into stage 0 (group 2); wait for Q only.
  cp_async_tile<BQ, HD, kFwdThreads>(smem + kStage, q + (int64_t(b) * Tn + q0) * ldq + h * HD, ldq,
                                     min(BQ, Tn - q0));
  cp_async_commit();
  load_kv(0);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  uint32_t qf[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) ldsm_a_fragment<S>(qf[kk], smem + kStage, r0, 16 * kk, lane);

  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  // The warp's rows: none past T (else it has no work), and the key tiles up to its last row.
  const bool warp_active = q0 + r0 < Tn;
  const int warp_last_row = q0 + r0 + kRowsPerWarp - 1;

  for (int kt = 0; kt < n_tiles; ++kt) {
    // This thread's copies of tile kt have landed; after the barrier everyone's have, and every
    // warp is done with the other stage (tile kt-1, or Q), which the copies of tile kt+1 refill.
    cp_async_wait<0>();
    __syncthreads();
    if (kt + 1 < n_tiles) load_kv(kt + 1);
    cp_async_commit();

    const int k0 = kt * BK;
    if (!warp_active || k0 > warp_last_row) continue;  // warp-uniform
    const bf16* sK = smem + (kt & 1) * kStage;
    const bf16* sV = sK + BK * S;

    float s[BK / 8][4];
#pragma unroll
    for (int j = 0; j < BK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
      for (int j = 0; j < BK / 8; j += 2) {
        uint32_t kb[4];
        ldsm_b_fragments_nk<S>(kb, sK, 8 * j, 16 * kk, lane);
        mma_bf16_16x8x16(s[j], qf[kk], kb[0], kb[1]);
        mma_bf16_16x8x16(s[j + 1], qf[kk], kb[2], kb[3]);
      }

    // Scale into the log2 domain; mask keys after the query (and past the sequence end).
    const bool masked = k0 + BK - 1 > q0 + r0 || k0 + BK > Tn;
#pragma unroll
    for (int j = 0; j < BK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * t + (e & 1);
        float x = s[j][e] * scale_log2;
        if (masked && (key > q0 + r0 + g + 8 * (e / 2) || key >= Tn)) x = -INFINITY;
        s[j][e] = x;
      }

    // Online softmax: rows g and g+8 of this warp; the 4 lanes of a quad share a row.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < BK / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a fully masked row stays at 0
      const float alpha = exp2f(m[r] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < BK / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - m_use);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_use);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }

    // O += P V, P straight from the score registers, V's fragments through ldmatrix .trans.
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t a[4];
      c_tiles_to_a_fragment(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < HD / 8; n += 2) {
        uint32_t vb[4];
        ldsm_b_fragments_kn<S>(vb, sV, 16 * kk, 8 * n, lane);
        mma_bf16_16x8x16(o[n], a, vb[0], vb[1]);
        mma_bf16_16x8x16(o[n + 1], a, vb[2], vb[3]);
      }
    }
  }

  // O / l as bf16 into the stage no warp read in the last iteration (it was last read before
  // that iteration's barrier), then out in 16-byte row pieces.
  bf16* sO = smem + (n_tiles & 1) * kStage;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float inv = 1.f / l[r];
    bf16* dst = sO + (r0 + g + 8 * r) * S + 2 * t;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      *reinterpret_cast<uint32_t*>(dst + 8 * n) = pack_bf16x2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    const int qrow = q0 + r0 + g + 8 * r;
    if (t == 0 && qrow < Tn) lse[(int64_t(b) * H + h) * Tn + qrow] = (m[r] + log2f(l[r])) * kLn2;
  }
  __syncthreads();
  constexpr int kChunks = HD / 8;
#pragma unroll
  for (int i = 0; i < BQ * kChunks / kFwdThreads; ++i) {
    const int c = int(threadIdx.x) + i * kFwdThreads;
    const int r = c / kChunks, col = c % kChunks * 8;
    if (q0 + r < Tn)
      *reinterpret_cast<uint4*>(out + (int64_t(b) * Tn + q0 + r) * ldq + h * HD + col) =
          *reinterpret_cast<const uint4*>(sO + r * S + col);
  }
}

template <int HD>
void forward_hd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tn,
                int H, int KV, cudaStream_t stream) {
  const float scale_log2 = kLog2e / sqrtf(float(HD));
  launch_with_smem_threads(attention_forward_flash<HD>, dim3(B * H, ceil_div(Tn, kFwdQueries)), kFwdThreads,
                           forward_smem_bytes<HD>(), stream, out, lse, q, k, v, Tn, H, KV, scale_log2);
}

}  // namespace

AttentionForwardTile attention_forward_tile(int HD) {
  (void)HD;  // the same tile for 64 and 128
  return {kFwdQueries, kFwdKeys, kRowsPerWarp};
}

bool attention_supports_head_dim(int HD) { return HD == 64 || HD == 128; }

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B,
                       int Tn, int H, int KV, int HD, cudaStream_t stream) {
  if (B == 0 || Tn == 0) return;
  LTRAIN_CHECK(H % KV == 0, "attention: H " << H << " is not a multiple of KV " << KV);
  check_aligned({out, q, k, v});
  if (HD == 64) forward_hd<64>(out, lse, q, k, v, B, Tn, H, KV, stream);
  else if (HD == 128) forward_hd<128>(out, lse, q, k, v, B, Tn, H, KV, stream);
  else LTRAIN_CHECK(false, "attention: head dim " << HD << " is not supported (64, 128)");
}

}  // namespace ltrain::cuda
