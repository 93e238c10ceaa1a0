// Causal grouped-query attention in the FlashAttention-2 style, backward.
//
// Shapes: q (B, T, H, HD), k and v (B, T, KV, HD), out (B, T, H, HD), lse (B, H, T) fp32.
// Query head h reads key/value head h / (H / KV) straight from k and v: no copies. Scale
// 1/sqrt(HD). HD is a template parameter (64 and 128 are instantiated).
//
// Tensor cores: mma.sync.m16n8k16 with bf16 operands and fp32 accumulators (sm_80 and sm_90).
// Each warp owns 16 rows of a 64-row tile; a block is 4 warps. Fragment layout of m16n8k16
// (PTX ISA), with g = lane / 4 and t = lane % 4:
//   A (16x16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16x8, "col"):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16x8, fp32):       c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// Two adjacent C tiles (n 0..15) hold exactly the elements of one A fragment (k 0..15), so
// probabilities computed in registers feed the next product without going through memory.
//
// Grids are (B * heads, query or key tiles): x takes the (b, head) pairs, which can number more
// than the 65,535 that y allows (B 2,049 x H 32 does), and y the tiles (T up to 4M).
//
// Backward, three kernels, no atomics (deterministic):
//   1. D = rowsum(dO * O) (B, H, T) fp32, one warp per row;
//   2. dK, dV: one block per (64 keys, b, kv head) loops over the query heads of its group and
//      the query tiles at or below the diagonal, recomputing P^T = exp(K Q^T * scale - lse) and
//      accumulating dV += P^T dO and dK += dS^T Q (dS = P * (dP - D), dP = dO V^T) in registers;
//      summing the group's heads inside one block is what makes GQA's dK and dV deterministic;
//   3. dQ: one block per (64 queries, b, h) loops over key tiles, recomputes P and dS, and
//      accumulates dQ = dS K in registers. This recomputes two of the five products instead of
//      adding dQ with atomics (FlashAttention-2's choice), trading speed for reproducibility.
// P and dS are rounded to bf16 as the operands of the products that consume them, as in
// FlashAttention-2; all sums are fp32.
#include "common/attention_common.cuh"

namespace ltrain::cuda {
namespace {
using namespace attention_detail;

// ---- backward ----------------------------------------------------------------------------------

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

// dK, dV for 64 keys of one (b, kv head), summed over the group's query heads. BQ queries per
// step (64 for HD 64; 32 for HD 128 to keep the fp32 accumulators in registers).
template <int HD, int BQ>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dk_dv(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                             const bf16* v, const float* lse, const float* D, int Tn, int H, int KV,
                             float scale, float scale_log2) {
  constexpr int S = kStride<HD>;
  LTRAIN_DYNAMIC_SHARED(unsigned char, smem_raw);
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // (64, S)
  bf16* sV = sK + kTile * S;                      // (64, S)
  bf16* sQ = sV + kTile * S;                      // (BQ, S)
  bf16* sdO = sQ + BQ * S;                        // (BQ, S)
  float* sL = reinterpret_cast<float*>(sdO + BQ * S);  // (BQ) lse * log2(e); +inf past the end
  float* sD = sL + BQ;                                 // (BQ)

  const int ktile = blockIdx.y;  // the first key tiles, which see the most queries, first
  const int b = blockIdx.x / KV, kvh = blockIdx.x % KV, group = H / KV;
  const int k0 = ktile * kTile;
  const int64_t ldq = int64_t(H) * HD, ldk = int64_t(KV) * HD;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = warp * kRowsPerWarp;
  const int key[2] = {k0 + r0 + g, k0 + r0 + g + 8};

  const int64_t kv_off = (int64_t(b) * Tn + k0) * ldk + kvh * HD;
  load_tile<kTile, HD>(sK, k + kv_off, ldk, min(kTile, Tn - k0));
  load_tile<kTile, HD>(sV, v + kv_off, ldk, min(kTile, Tn - k0));

  float dK[HD / 8][4], dV[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dK[n][e] = dV[n][e] = 0.f;

  const int q_begin = k0 / BQ * BQ;  // queries before k0 see none of these keys
  for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
    const float* L = lse + (int64_t(b) * H + h) * Tn;
    const float* Dh = D + (int64_t(b) * H + h) * Tn;
    for (int q0 = q_begin; q0 < Tn; q0 += BQ) {
      __syncthreads();  // the previous Q and dO tiles are consumed (and K, V are loaded)
      const int64_t q_off = (int64_t(b) * Tn + q0) * ldq + h * HD;
      load_tile<BQ, HD>(sQ, q + q_off, ldq, min(BQ, Tn - q0));
      load_tile<BQ, HD>(sdO, dout + q_off, ldq, min(BQ, Tn - q0));
      for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
        const bool valid = q0 + i < Tn;
        sL[i] = valid ? L[q0 + i] * kLog2e : INFINITY;
        sD[i] = valid ? Dh[q0 + i] : 0.f;
      }
      __syncthreads();

      // S^T (16 keys x BQ queries) = K Q^T and dP^T = V dO^T.
      float s[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
      for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t kf[4], vf[4];
        lds_a_fragment<S>(kf, sK, r0, 16 * kk, g, t);
        lds_a_fragment<S>(vf, sV, r0, 16 * kk, g, t);
#pragma unroll
        for (int j = 0; j < BQ / 8; ++j) {
          const bf16* pq = sQ + (8 * j + g) * S + 16 * kk + 2 * t;
          const bf16* pd = sdO + (8 * j + g) * S + 16 * kk + 2 * t;
          mma_bf16_16x8x16(s[j], kf, lds_pair(pq), lds_pair(pq + 8));
          mma_bf16_16x8x16(dp[j], vf, lds_pair(pd), lds_pair(pd + 8));
        }
      }
      // P^T = exp(S^T * scale - lse) where query >= key; dS^T = P^T * (dP^T - D).
#pragma unroll
      for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = 8 * j + 2 * t + (e & 1);
          const float p = q0 + qi >= key[e / 2] ? exp2f(s[j][e] * scale_log2 - sL[qi]) : 0.f;
          s[j][e] = p;
          dp[j][e] = p * (dp[j][e] - sD[qi]);
        }
      // dV += P^T dO and dK += dS^T Q (scaled at the end), over BQ queries in steps of 16.
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk) {
        uint32_t pa[4], dsa[4];
        c_tiles_to_a_fragment(pa, s[2 * kk], s[2 * kk + 1]);
        c_tiles_to_a_fragment(dsa, dp[2 * kk], dp[2 * kk + 1]);
        const bf16* pd = sdO + (16 * kk + 2 * t) * S + g;
        const bf16* pq = sQ + (16 * kk + 2 * t) * S + g;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
          mma_bf16_16x8x16(dV[n], pa, lds_column_pair(pd + 8 * n, S),
                           lds_column_pair(pd + 8 * S + 8 * n, S));
          mma_bf16_16x8x16(dK[n], dsa, lds_column_pair(pq + 8 * n, S),
                           lds_column_pair(pq + 8 * S + 8 * n, S));
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= Tn) continue;
    const int64_t off = (int64_t(b) * Tn + key[r]) * ldk + kvh * HD + 2 * t;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dk + off + 8 * n) =
          pack_bf16x2(dK[n][2 * r] * scale, dK[n][2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + off + 8 * n) = pack_bf16x2(dV[n][2 * r], dV[n][2 * r + 1]);
    }
  }
}

// dQ for 64 queries of one (b, h): loops over the key tiles at or below the diagonal.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                          const float* lse, const float* D, int Tn, int H, int KV, float scale,
                          float scale_log2) {
  constexpr int S = kStride<HD>, BK = kTile;
  LTRAIN_DYNAMIC_SHARED(unsigned char, smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // (64, S)
  bf16* sdO = sQ + kTile * S;                     // (64, S)
  bf16* sK = sdO + kTile * S;                     // (BK, S)
  bf16* sV = sK + BK * S;                         // (BK, S)

  const int qtile = gridDim.y - 1 - blockIdx.y;  // the last query tiles, which see the most keys, first
  const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KV);
  const int q0 = qtile * kTile;
  const int64_t ldq = int64_t(H) * HD, ldk = int64_t(KV) * HD;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = warp * kRowsPerWarp;
  const int row[2] = {q0 + r0 + g, q0 + r0 + g + 8};
  float Lr[2], Dr[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool valid = row[r] < Tn;
    Lr[r] = valid ? lse[(int64_t(b) * H + h) * Tn + row[r]] * kLog2e : INFINITY;
    Dr[r] = valid ? D[(int64_t(b) * H + h) * Tn + row[r]] : 0.f;
  }

  const int64_t q_off = (int64_t(b) * Tn + q0) * ldq + h * HD;
  load_tile<kTile, HD>(sQ, q + q_off, ldq, min(kTile, Tn - q0));
  load_tile<kTile, HD>(sdO, dout + q_off, ldq, min(kTile, Tn - q0));
  const bf16* K = k + int64_t(b) * Tn * ldk + kvh * HD;
  const bf16* V = v + int64_t(b) * Tn * ldk + kvh * HD;

  float dQ[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) dQ[n][0] = dQ[n][1] = dQ[n][2] = dQ[n][3] = 0.f;

  const int n_tiles = min((Tn + BK - 1) / BK, (q0 + kTile - 1) / BK + 1);
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();
    load_tile<BK, HD>(sK, K + k0 * ldk, ldk, min(BK, Tn - k0));
    load_tile<BK, HD>(sV, V + k0 * ldk, ldk, min(BK, Tn - k0));
    __syncthreads();

    float s[BK / 8][4], dp[BK / 8][4];
#pragma unroll
    for (int j = 0; j < BK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t qf[4], of[4];
      lds_a_fragment<S>(qf, sQ, r0, 16 * kk, g, t);
      lds_a_fragment<S>(of, sdO, r0, 16 * kk, g, t);
#pragma unroll
      for (int j = 0; j < BK / 8; ++j) {
        const bf16* pk = sK + (8 * j + g) * S + 16 * kk + 2 * t;
        const bf16* pv = sV + (8 * j + g) * S + 16 * kk + 2 * t;
        mma_bf16_16x8x16(s[j], qf, lds_pair(pk), lds_pair(pk + 8));
        mma_bf16_16x8x16(dp[j], of, lds_pair(pv), lds_pair(pv + 8));
      }
    }
#pragma unroll
    for (int j = 0; j < BK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * t + (e & 1);
        const float p = key <= row[e / 2] && key < Tn ? exp2f(s[j][e] * scale_log2 - Lr[e / 2]) : 0.f;
        dp[j][e] = p * (dp[j][e] - Dr[e / 2]);
      }
    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t a[4];
      c_tiles_to_a_fragment(a, dp[2 * kk], dp[2 * kk + 1]);
      const bf16* pk = sK + (16 * kk + 2 * t) * S + g;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
        mma_bf16_16x8x16(dQ[n], a, lds_column_pair(pk + 8 * n, S), lds_column_pair(pk + 8 * S + 8 * n, S));
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= Tn) continue;
    bf16* dst = dq + (int64_t(b) * Tn + row[r]) * ldq + h * HD + 2 * t;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      *reinterpret_cast<uint32_t*>(dst + 8 * n) = pack_bf16x2(dQ[n][2 * r] * scale, dQ[n][2 * r + 1] * scale);
  }
}

template <int HD, int BQ>
void backward_hd(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                 const bf16* v, const bf16* out, const float* lse, float* D, int B, int Tn, int H,
                 int KV, cudaStream_t stream) {
  const float scale = 1.f / sqrtf(float(HD)), scale_log2 = kLog2e * scale;
  const int64_t rows = int64_t(B) * Tn * H;
  launch_kernel(attention_backward_dot_do_o<HD>, ceil_div(rows * 32, 256), 256, 0, stream, D, dout, out, Tn, H, rows);
  CUDA_CHECK_LAUNCH();
  const size_t smem_kv = (size_t(2) * kTile + 2 * BQ) * kStride<HD> * sizeof(bf16) + 2 * BQ * sizeof(float);
  launch_with_smem(attention_backward_dk_dv<HD, BQ>, dim3(B * KV, ceil_div(Tn, kTile)), smem_kv,
                   stream, dk, dv, dout, q, k, v, lse, (const float*)D, Tn, H, KV, scale, scale_log2);
  const size_t smem_q = size_t(4) * kTile * kStride<HD> * sizeof(bf16);
  launch_with_smem(attention_backward_dq<HD>, dim3(B * H, ceil_div(Tn, kTile)), smem_q, stream, dq,
                   dout, q, k, v, lse, (const float*)D, Tn, H, KV, scale, scale_log2);
}

}  // namespace

size_t attention_backward_scratch_floats(int B, int Tn, int H) { return size_t(B) * H * Tn; }

void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                        const bf16* k, const bf16* v, const bf16* out, const float* lse,
                        float* scratch, int B, int Tn, int H, int KV, int HD, cudaStream_t stream) {
  if (B == 0 || Tn == 0) return;
  LTRAIN_CHECK(H % KV == 0, "attention: H " << H << " is not a multiple of KV " << KV);
  check_aligned({dq, dk, dv, dout, q, k, v, out});
  if (HD == 64) backward_hd<64, 64>(dq, dk, dv, dout, q, k, v, out, lse, scratch, B, Tn, H, KV, stream);
  else if (HD == 128) backward_hd<128, 32>(dq, dk, dv, dout, q, k, v, out, lse, scratch, B, Tn, H, KV, stream);
  else LTRAIN_CHECK(false, "attention: head dim " << HD << " is not supported (64, 128)");
}

}  // namespace ltrain::cuda
