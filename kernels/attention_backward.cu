// Causal grouped-query attention in the FlashAttention-2 style, backward.
//
// Shapes: q (B, T, H, HD), k and v (B, T, KV, HD), out (B, T, H, HD), lse (B, H, T) fp32.
// Query head h reads key/value head h / (H / KV) straight from k and v: no copies. Scale
// 1/sqrt(HD). HD is a template parameter (64 and 128 are instantiated). The mma fragment layout
// is described in attention_forward.cu and common/mma.cuh.
//
// One pass, five products per (query tile, key tile) pair at or below the diagonal:
//   S = Q K^T, dP = dO V^T, P = exp(S * scale - lse), dS = P * (dP - D),
//   dV += P^T dO, dK += dS^T Q, dQ += dS K,
// with D = rowsum(dO * O). Kernels, none with atomics:
//   1. D (B, H, T) fp32, one warp per row;
//   2. the main kernel, one block per (b, query head, split): grid (B * H, splits), where splits
//      = min(key tiles, ceil(264 / (B * H))) from the shape alone (about two blocks per SM of a
//      132-SM GPU even at B 1 with few heads, and the same grid, hence the same sums, on every
//      GPU). Split s takes the key tiles s, 2S-1-s, 2S+s, 4S-1-s, ... (S splits, ascending:
//      the heaviest first; pairing a heavy tile with a light one balances the splits). For each
//      key tile of BK keys, K and V stay in shared memory and dK, dV accumulate in registers
//      while the block walks the query tiles (BQ queries) from the diagonal to the end. Each
//      warp owns 16 keys: it computes its rows of S^T = K Q^T and dP^T = V dO^T, turns them
//      into P^T and dS^T in registers, which are the A operands of dV += P^T dO and
//      dK += dS^T Q. dS^T goes to shared memory (bf16) for dQ = dS K, for which the warps split
//      the (BQ x HD) output instead; the block adds it into its own fp32 partial dq_accum[s]
//      (B, T, H, HD) by plain read-modify-write (the split's first key tile writes it), so the
//      sum over a split's key tiles has a fixed order. dK, dV of the key tile are written once:
//      as bf16 straight into dk, dv when a KV head has one query head, else as fp32 per query
//      head (B, T, H, HD);
//   3. dq = scale * sum of dq_accum over the splits that reached the row (split s's rows start
//      at its first key tile), in split order, as bf16;
//   4. under GQA, dk = scale * sum and dv = sum of the per-query-head partials over the group's
//      heads, in head order, as bf16.
// Every sum has an order fixed by the shape: bitwise identical results from run to run and
// whatever order the blocks run in. P and dS are rounded to bf16 as the operands of the products
// that consume them, as in FlashAttention-2; all sums are fp32.
//
// Tiles (FlashAttention-2's for the backward): BK = 128 keys, 8 warps of 16 keys; BQ = 128
// queries for HD 64 and 64 for HD 128. A lane holds HD/2 floats of dK and of dV across the
// query loop; S^T and dP^T are computed in passes of QS = 64 (HD 64) or 32 (HD 128) queries,
// QS/2 floats each, so at most HD + QS = 160 (HD 128) or 128 (HD 64) accumulators are live,
// which fits one 256-thread block per SM (255 registers) without spilling; the HD loop of the
// passes is kept rolled (unrolled, the compiler loads ahead and spills).
// Shared-memory fragments come from ldmatrix (.trans for the k-major operands: dO and Q in
// P^T dO and dS^T Q, dS^T and K in dS K); K, V and the double-buffered Q, dO tiles arrive by
// cp.async, the next query tile's copies in flight during the current tile's products.
// Shared memory: K, V (BK x HD), 2 x Q, dO (BQ x HD), dS^T (BK x BQ), bf16 rows padded by 16
// bytes, and 2 x lse, D (BQ) fp32: 158,720 bytes at HD 128, 147,456 at HD 64 (A100: 166,912).

#include "common/attention_common.cuh"

namespace ltrain::cuda {
namespace {
using namespace attention_detail;

// ---- D = rowsum(dO * O) ------------------------------------------------------------------------

// D (B, H, T) = rowsum(dout * out), one warp per (b, t, h) row.
template <int HD>
__global__ void attention_backward_dot_do_o(float* D, const bf16* dout, const bf16* out, int Tn,
                                            int H, int64_t rows) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const bf16* a = dout + r * HD;
  const bf16* o = out + r * HD;
  float s = 0.f;
#pragma unroll
  for (int d = 2 * lane; d < HD; d += 64) {
    const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(a + d));
    const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o + d));
    s += x.x * y.x + x.y * y.y;
  }
  s = warp_sum(s);
  if (lane == 0) {
    const int h = int(r % H);
    const int64_t bt = r / H;
    const int b = int(bt / Tn), t = int(bt % Tn);
    D[(int64_t(b) * H + h) * Tn + t] = s;
  }
}

// ---- the main kernel ---------------------------------------------------------------------------

template <int HD>
struct BackwardTile;
template <>
struct BackwardTile<64> {
  static constexpr int kQueries = 128, kKeys = 128, kPass = 64;
};
template <>
struct BackwardTile<128> {
  static constexpr int kQueries = 64, kKeys = 128, kPass = 32;
};
constexpr int kBackwardKeys = kAttentionBackwardKeys;  // BK of every head dim (the split count depends on it)

template <int HD>
constexpr int backward_threads() {
  return BackwardTile<HD>::kKeys / 16 * 32;
}

__host__ __device__ inline int64_t key_tiles(int Tn) { return (int64_t(Tn) + kBackwardKeys - 1) / kBackwardKeys; }


// The first query row that split s's partial dq holds (the first query tile of its first key
// tile, s); rows before it are neither written nor summed.
template <int HD>
__device__ __host__ __forceinline__ int split_first_row(int s) {
  constexpr int BQ = BackwardTile<HD>::kQueries, BK = BackwardTile<HD>::kKeys;
  return s * BK / BQ * BQ;
}

// ---- shared-memory fragments ------------------------------------------------------------------
// ldmatrix helpers of common/attention_common.cuh, and the one the backward adds:

// The A fragment of rows r0..r0+15, k k0..k0+15 from a tile stored transposed (row = k, column
// = row of A, row stride ST elements, a multiple of 8): dS^T as the A operand of dS K. Lane l
// addresses row k0 + l % 8 + 8 (l / 16), column r0 + 8 ((l / 8) % 2), so that the four 8x8
// matrices, transposed, are a0 (rows 0-7, k 0-7), a1 (rows 8-15), a2 (k 8-15), a3.
template <int ST>
__device__ __forceinline__ void ldsm_a_fragment_trans(uint32_t a[4], const bf16* tile, int r0, int k0, int lane) {
  ldmatrix_x4_trans(a, tile + (k0 + lane % 8 + 8 * (lane / 16)) * ST + r0 + 8 * (lane / 8 % 2));
}

template <int HD>
constexpr size_t backward_smem_bytes() {
  constexpr int BQ = BackwardTile<HD>::kQueries, BK = BackwardTile<HD>::kKeys;
  return (size_t(2) * BK + 4 * BQ) * kStride<HD> * sizeof(bf16) + size_t(BK) * (BQ + 8) * sizeof(bf16) +
         4 * BQ * sizeof(float);
}

template <int HD>
__global__ void __launch_bounds__(backward_threads<HD>(), 1)
    attention_backward_main(float* dq_accum, float* dk_part, float* dv_part, bf16* dk, bf16* dv,
                            const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                            const float* lse, const float* D, int B, int Tn, int H, int KV,
                            float scale, float scale_log2) {
  constexpr int BQ = BackwardTile<HD>::kQueries, BK = BackwardTile<HD>::kKeys;
  constexpr int NT = backward_threads<HD>();
  constexpr int NW = BK / 16;               // warps: 16 keys each
  constexpr int RG = BQ / 16;               // row groups of dQ
  constexpr int NC = NW / RG;               // column parts of dQ per row group
  constexpr int HDW = HD / NC;              // dQ columns per warp
  static_assert(NW % RG == 0 && HDW % 16 == 0, "dQ warp partition");
  constexpr int S = kStride<HD>;
  constexpr int SS = BQ + 8;                // sdS row stride
  constexpr int QS = BackwardTile<HD>::kPass;
  static_assert(BQ % QS == 0 && QS % 16 == 0, "query passes");
  LTRAIN_DYNAMIC_SHARED(unsigned char, smem_raw);
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // (BK, S)
  bf16* sV = sK + BK * S;                         // (BK, S)
  bf16* sQbuf = sV + BK * S;                      // 2 x (BQ, S), double-buffered
  bf16* sdObuf = sQbuf + 2 * BQ * S;              // 2 x (BQ, S)
  bf16* sdS = sdObuf + 2 * BQ * S;                // (BK, SS): dS^T, keys x queries
  float* sLbuf = reinterpret_cast<float*>(sdS + BK * SS);  // 2 x (BQ) lse * log2(e); +inf past T
  float* sDbuf = sLbuf + 2 * BQ;                           // 2 x (BQ)

  const int b = blockIdx.x / H, h = blockIdx.x % H, group = H / KV, kvh = h / group;
  const int split = blockIdx.y, splits = gridDim.y;
  const int64_t ldq = int64_t(H) * HD, ldk = int64_t(KV) * HD;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = warp * 16;                      // this warp's keys in the key tile
  const int rg = warp % RG, col0 = warp / RG * HDW;  // this warp's part of dQ
  const int n_kt = int(key_tiles(Tn)), n_qt = (Tn + BQ - 1) / BQ;

  // Query tile qt into buffer `buf`: Q and dO by cp.async (the caller commits), lse and D by
  // plain loads. Addresses from the kernel's parameters each time: fewer live registers.
  auto load_query_tile = [&](int qt, int buf) {
    const int q0 = qt * BQ;
    const int64_t off = (int64_t(b) * Tn + q0) * ldq + h * HD;
    cp_async_tile<BQ, HD, NT>(sQbuf + buf * BQ * S, q + off, ldq, min(BQ, Tn - q0));
    cp_async_tile<BQ, HD, NT>(sdObuf + buf * BQ * S, dout + off, ldq, min(BQ, Tn - q0));
    const int64_t row = (int64_t(b) * H + h) * Tn + q0;
    for (int i = threadIdx.x; i < BQ; i += NT) {
      const bool valid = q0 + i < Tn;
      sLbuf[buf * BQ + i] = valid ? lse[row + i] * kLog2e : INFINITY;
      sDbuf[buf * BQ + i] = valid ? D[row + i] : 0.f;
    }
  };

  for (int base = 0; base < n_kt; base += 2 * splits)
    for (int half = 0; half < 2; ++half) {
      const int kt = half == 0 ? base + split : base + 2 * splits - 1 - split;
      if (kt >= n_kt) break;
      const bool first = base == 0 && half == 0;  // the split's first key tile writes dq_accum
      const int k0 = kt * BK, qt0 = k0 / BQ;
      const int key[2] = {k0 + r0 + g, k0 + r0 + g + 8};

      __syncthreads();  // the previous key tile's K, Q and dO buffers are consumed
      const int64_t kv_off = (int64_t(b) * Tn + k0) * ldk + kvh * HD;
      cp_async_tile<BK, HD, NT>(sK, k + kv_off, ldk, min(BK, Tn - k0));
      cp_async_tile<BK, HD, NT>(sV, v + kv_off, ldk, min(BK, Tn - k0));
      load_query_tile(qt0, 0);
      cp_async_commit();

      float dK[HD / 8][4], dV[HD / 8][4];
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dK[n][e] = dV[n][e] = 0.f;

      for (int qt = qt0; qt < n_qt; ++qt) {
        const int q0 = qt * BQ, buf = (qt - qt0) & 1;
        // The next query tile into the other buffer (consumed: its last readers, the products
        // of the tile before, finished before the barrier that preceded dQ), then wait for this one.
        if (qt + 1 < n_qt) {
          load_query_tile(qt + 1, buf ^ 1);
          cp_async_commit();
          cp_async_wait<1>();
        } else {
          cp_async_wait<0>();
        }
        __syncthreads();  // this tile's copies visible to all; the previous dQ done with dS^T
        const bf16* sQ = sQbuf + buf * BQ * S;
        const bf16* sdO = sdObuf + buf * BQ * S;
        const float* sL = sLbuf + buf * BQ;
        const float* sD = sDbuf + buf * BQ;

        // In passes of QS queries (fewer live accumulators than the whole tile at once):
#pragma unroll 1
        for (int qs = 0; qs < BQ; qs += QS) {
          // S^T (16 keys x QS queries) = K Q^T and dP^T = V dO^T.
          float s[QS / 8][4], dp[QS / 8][4];
#pragma unroll
          for (int j = 0; j < QS / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll 1  // rolled: see the header
          for (int kk = 0; kk < HD / 16; ++kk) {
            uint32_t kf[4], vf[4];
            ldsm_a_fragment<S>(kf, sK, r0, 16 * kk, lane);
            ldsm_a_fragment<S>(vf, sV, r0, 16 * kk, lane);
#pragma unroll
            for (int j = 0; j < QS / 16; ++j) {
              uint32_t qb[4], ob[4];
              ldsm_b_fragments_nk<S>(qb, sQ, qs + 16 * j, 16 * kk, lane);
              ldsm_b_fragments_nk<S>(ob, sdO, qs + 16 * j, 16 * kk, lane);
              mma_bf16_16x8x16(s[2 * j], kf, qb[0], qb[1]);
              mma_bf16_16x8x16(s[2 * j + 1], kf, qb[2], qb[3]);
              mma_bf16_16x8x16(dp[2 * j], vf, ob[0], ob[1]);
              mma_bf16_16x8x16(dp[2 * j + 1], vf, ob[2], ob[3]);
            }
          }
          // P^T = exp(S^T * scale - lse) where query >= key; dS^T = P^T * (dP^T - D). Both as
          // bf16 pairs (the A operands of the next products); dS^T also to shared memory for dQ.
          uint32_t pb[QS / 8][2], dsb[QS / 8][2];
#pragma unroll
          for (int j = 0; j < QS / 8; ++j) {
            float p[4], ds[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int qi = qs + 8 * j + 2 * t + (e & 1);
              p[e] = q0 + qi >= key[e / 2] ? exp2f(s[j][e] * scale_log2 - sL[qi]) : 0.f;
              ds[e] = p[e] * (dp[j][e] - sD[qi]);
            }
            pb[j][0] = pack_bf16x2(p[0], p[1]);
            pb[j][1] = pack_bf16x2(p[2], p[3]);
            dsb[j][0] = pack_bf16x2(ds[0], ds[1]);
            dsb[j][1] = pack_bf16x2(ds[2], ds[3]);
            bf16* ps = sdS + (r0 + g) * SS + qs + 8 * j + 2 * t;
            *reinterpret_cast<uint32_t*>(ps) = dsb[j][0];
            *reinterpret_cast<uint32_t*>(ps + 8 * SS) = dsb[j][1];
          }
          // dV += P^T dO and dK += dS^T Q (scaled at the end), over the QS queries in steps of 16.
#pragma unroll
          for (int kk = 0; kk < QS / 16; ++kk) {
            const uint32_t pa[4] = {pb[2 * kk][0], pb[2 * kk][1], pb[2 * kk + 1][0], pb[2 * kk + 1][1]};
            const uint32_t dsa[4] = {dsb[2 * kk][0], dsb[2 * kk][1], dsb[2 * kk + 1][0], dsb[2 * kk + 1][1]};
#pragma unroll
            for (int n = 0; n < HD / 16; ++n) {
              uint32_t ob[4], qb[4];
              ldsm_b_fragments_kn<S>(ob, sdO, qs + 16 * kk, 16 * n, lane);
              ldsm_b_fragments_kn<S>(qb, sQ, qs + 16 * kk, 16 * n, lane);
              mma_bf16_16x8x16(dV[2 * n], pa, ob[0], ob[1]);
              mma_bf16_16x8x16(dV[2 * n + 1], pa, ob[2], ob[3]);
              mma_bf16_16x8x16(dK[2 * n], dsa, qb[0], qb[1]);
              mma_bf16_16x8x16(dK[2 * n + 1], dsa, qb[2], qb[3]);
            }
          }
        }
        __syncthreads();  // dS^T complete; Q and dO of this tile consumed

        // dQ (16 queries x HDW columns of this warp) = dS K over the BK keys.
        float dQ[HDW / 8][4];
#pragma unroll
        for (int n = 0; n < HDW / 8; ++n) dQ[n][0] = dQ[n][1] = dQ[n][2] = dQ[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          uint32_t a[4];
          ldsm_a_fragment_trans<SS>(a, sdS, 16 * rg, 16 * kk, lane);
#pragma unroll
          for (int n = 0; n < HDW / 16; ++n) {
            uint32_t kb[4];
            ldsm_b_fragments_kn<S>(kb, sK, 16 * kk, col0 + 16 * n, lane);
            mma_bf16_16x8x16(dQ[2 * n], a, kb[0], kb[1]);
            mma_bf16_16x8x16(dQ[2 * n + 1], a, kb[2], kb[3]);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = q0 + 16 * rg + g + 8 * r;
          if (row >= Tn) continue;
          float* dst = dq_accum + ((int64_t(split) * B + b) * Tn + row) * ldq + h * HD + col0 + 2 * t;
#pragma unroll
          for (int n = 0; n < HDW / 8; ++n) {
            float2 x = make_float2(dQ[n][2 * r], dQ[n][2 * r + 1]);
            if (!first) {
              const float2 y = *reinterpret_cast<const float2*>(dst + 8 * n);
              x.x = y.x + x.x;
              x.y = y.y + x.y;
            }
            *reinterpret_cast<float2*>(dst + 8 * n) = x;
          }
        }
      }

      // dK, dV of this key tile for query head h.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (key[r] >= Tn) continue;
        if (group == 1) {
          const int64_t off = (int64_t(b) * Tn + key[r]) * ldk + kvh * HD + 2 * t;
#pragma unroll
          for (int n = 0; n < HD / 8; ++n) {
            *reinterpret_cast<uint32_t*>(dk + off + 8 * n) =
                pack_bf16x2(dK[n][2 * r] * scale, dK[n][2 * r + 1] * scale);
            *reinterpret_cast<uint32_t*>(dv + off + 8 * n) = pack_bf16x2(dV[n][2 * r], dV[n][2 * r + 1]);
          }
        } else {
          const int64_t off = (int64_t(b) * Tn + key[r]) * ldq + h * HD + 2 * t;
#pragma unroll
          for (int n = 0; n < HD / 8; ++n) {
            *reinterpret_cast<float2*>(dk_part + off + 8 * n) = make_float2(dK[n][2 * r], dK[n][2 * r + 1]);
            *reinterpret_cast<float2*>(dv_part + off + 8 * n) = make_float2(dV[n][2 * r], dV[n][2 * r + 1]);
          }
        }
      }
    }
}

// ---- the final sums ----------------------------------------------------------------------------

__device__ __forceinline__ void store_bf16x4(bf16* dst, float4 x) {
  uint2 u;
  u.x = pack_bf16x2(x.x, x.y);
  u.y = pack_bf16x2(x.z, x.w);
  *reinterpret_cast<uint2*>(dst) = u;
}

__device__ __forceinline__ void add4(float4& a, const float4& b) {
  a.x += b.x;
  a.y += b.y;
  a.z += b.z;
  a.w += b.w;
}

// dq (B, T, H, HD) = scale * sum over the splits s (in order) whose rows reach t of dq_accum[s].
// Four elements per thread.
template <int HD>
__global__ void attention_backward_dq_sum(bf16* dq, const float* dq_accum, int Tn, int H,
                                          int splits, int64_t n, float scale) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  const int t = int(i / (int64_t(H) * HD) % Tn);
  float4 x = *reinterpret_cast<const float4*>(dq_accum + i);
  for (int s = 1; s < splits && split_first_row<HD>(s) <= t; ++s)
    add4(x, *reinterpret_cast<const float4*>(dq_accum + int64_t(s) * n + i));
  store_bf16x4(dq + i, make_float4(x.x * scale, x.y * scale, x.z * scale, x.w * scale));
}

// dk, dv (B, T, KV, HD) = the per-query-head partials (B, T, H, HD) summed over each group's
// heads in order; dk times scale. Four elements per thread.
template <int HD>
__global__ void attention_backward_dkv_sum(bf16* dk, bf16* dv, const float* dk_part,
                                           const float* dv_part, int H, int KV, int64_t n,
                                           float scale) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  const int group = H / KV;
  const int64_t bt = i / (int64_t(KV) * HD);
  const int kvh = int(i / HD % KV), d = int(i % HD);
  const int64_t src = (bt * H + int64_t(kvh) * group) * HD + d;
  float4 a = *reinterpret_cast<const float4*>(dk_part + src);
  float4 c = *reinterpret_cast<const float4*>(dv_part + src);
  for (int j = 1; j < group; ++j) {
    add4(a, *reinterpret_cast<const float4*>(dk_part + src + int64_t(j) * HD));
    add4(c, *reinterpret_cast<const float4*>(dv_part + src + int64_t(j) * HD));
  }
  store_bf16x4(dk + i, make_float4(a.x * scale, a.y * scale, a.z * scale, a.w * scale));
  store_bf16x4(dv + i, c);
}

// ---- launch ------------------------------------------------------------------------------------

// The scratch layout and the split count are include/ltrain/kernels/scratch.h's (the memory plan
// counts with the same functions); D comes last, as its size need not be a multiple of 4.

template <int HD>
void backward_hd(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                 const bf16* v, const bf16* out, const float* lse, float* scratch, int B, int Tn,
                 int H, int KV, cudaStream_t stream) {
  static_assert(BackwardTile<HD>::kKeys == kBackwardKeys, "attention_backward_splits assumes BK");
  const float scale = 1.f / sqrtf(float(HD)), scale_log2 = kLog2e * scale;
  const AttentionBackwardScratch l = attention_backward_scratch(B, Tn, H, KV, HD);
  float* dq_accum = scratch + l.dq_accum;
  float* dk_part = scratch + l.dk_part;
  float* dv_part = scratch + l.dv_part;
  float* D = scratch + l.D;
  const int64_t rows = int64_t(B) * Tn * H;
  launch_kernel(attention_backward_dot_do_o<HD>, ceil_div(rows * 32, 256), 256, 0, stream, D, dout, out, Tn, H, rows);
  CUDA_CHECK_LAUNCH();

  const int splits = attention_backward_splits(B, Tn, H);
  constexpr size_t smem = backward_smem_bytes<HD>();
  launch_with_smem_threads(attention_backward_main<HD>, dim3(B * H, splits), backward_threads<HD>(), smem,
                  stream, dq_accum, dk_part, dv_part, dk, dv, dout, q, k, v, lse, (const float*)D, B,
                  Tn, H, KV, scale, scale_log2);

  const int64_t nq = int64_t(B) * Tn * H * HD;
  launch_kernel(attention_backward_dq_sum<HD>, ceil_div(nq / 4, 256), 256, 0, stream, dq,
                (const float*)dq_accum, Tn, H, splits, nq, scale);
  CUDA_CHECK_LAUNCH();
  if (H > KV) {
    const int64_t nk = int64_t(B) * Tn * KV * HD;
    launch_kernel(attention_backward_dkv_sum<HD>, ceil_div(nk / 4, 256), 256, 0, stream, dk, dv,
                  (const float*)dk_part, (const float*)dv_part, H, KV, nk, scale);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

AttentionBackwardTile attention_backward_tile(int HD) {
  if (HD == 64) return {BackwardTile<64>::kQueries, BackwardTile<64>::kKeys};
  if (HD == 128) return {BackwardTile<128>::kQueries, BackwardTile<128>::kKeys};
  return {0, 0};
}

void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                        const bf16* k, const bf16* v, const bf16* out, const float* lse,
                        float* scratch, int B, int Tn, int H, int KV, int HD, cudaStream_t stream) {
  if (B == 0 || Tn == 0) return;
  LTRAIN_CHECK(H % KV == 0, "attention: H " << H << " is not a multiple of KV " << KV);
  check_aligned({dq, dk, dv, dout, q, k, v, out, scratch});
  if (HD == 64) backward_hd<64>(dq, dk, dv, dout, q, k, v, out, lse, scratch, B, Tn, H, KV, stream);
  else if (HD == 128) backward_hd<128>(dq, dk, dv, dout, q, k, v, out, lse, scratch, B, Tn, H, KV, stream);
  else LTRAIN_CHECK(false, "attention: head dim " << HD << " is not supported (64, 128)");
}

}  // namespace ltrain::cuda
