// Causal grouped-query attention in the FlashAttention-2 style, forward and backward.
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
// Forward (one block per (64 queries, b, h); the last query tiles, which have the most keys,
// are scheduled first): Q stays in registers; K and V tiles of 64 keys are staged in shared
// memory; scores, an online softmax in the log2 domain, and O accumulate in fp32 registers.
// Key tiles entirely above the diagonal are never loaded; only the diagonal tile is masked.
//
#include "common/attention_common.cuh"

namespace ltrain::cuda {
namespace {
using namespace attention_detail;

// ---- forward -----------------------------------------------------------------------------------

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_forward_flash(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                            int Tn, int H, int KV, float scale_log2) {
  constexpr int S = kStride<HD>, BK = kTile;
  LTRAIN_DYNAMIC_SHARED(unsigned char, smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // (64, S)
  bf16* sK = sQ + kTile * S;                      // (BK, S)
  bf16* sV = sK + BK * S;                         // (BK, S)

  const int qtile = gridDim.y - 1 - blockIdx.y;  // the last query tiles, which see the most keys, first
  const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KV);
  const int q0 = qtile * kTile;
  const int64_t ldq = int64_t(H) * HD, ldk = int64_t(KV) * HD;
  const bf16* K = k + int64_t(b) * Tn * ldk + kvh * HD;
  const bf16* V = v + int64_t(b) * Tn * ldk + kvh * HD;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = warp * kRowsPerWarp;

  load_tile<kTile, HD>(sQ, q + (int64_t(b) * Tn + q0) * ldq + h * HD, ldq, min(kTile, Tn - q0));
  __syncthreads();
  uint32_t qf[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) lds_a_fragment<S>(qf[kk], sQ, r0, 16 * kk, g, t);

  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row[2] = {q0 + r0 + g, q0 + r0 + g + 8};

  // Key tiles 0 .. the one holding this block's last query (the causal mask hides the rest).
  const int n_tiles = min((Tn + BK - 1) / BK, (q0 + kTile - 1) / BK + 1);
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();  // every warp is done with the previous K and V tiles
    load_tile<BK, HD>(sK, K + k0 * ldk, ldk, min(BK, Tn - k0));
    load_tile<BK, HD>(sV, V + k0 * ldk, ldk, min(BK, Tn - k0));
    __syncthreads();

    float s[BK / 8][4];
#pragma unroll
    for (int j = 0; j < BK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
      for (int j = 0; j < BK / 8; ++j) {
        const bf16* p = sK + (8 * j + g) * S + 16 * kk + 2 * t;
        mma_bf16_16x8x16(s[j], qf[kk], lds_pair(p), lds_pair(p + 8));
      }

    // Scale into the log2 domain; mask keys after the query (and past the sequence end).
    const bool masked = k0 + BK - 1 > q0 + r0 || k0 + BK > Tn;
#pragma unroll
    for (int j = 0; j < BK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * t + (e & 1);
        float x = s[j][e] * scale_log2;
        if (masked && (key > row[e / 2] || key >= Tn)) x = -INFINITY;
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

    // O += P V, P straight from the score registers.
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t a[4];
      c_tiles_to_a_fragment(a, s[2 * kk], s[2 * kk + 1]);
      const bf16* p = sV + (16 * kk + 2 * t) * S + g;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
        mma_bf16_16x8x16(o[n], a, lds_column_pair(p + 8 * n, S), lds_column_pair(p + 8 * S + 8 * n, S));
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= Tn) continue;
    const float inv = 1.f / l[r];
    bf16* dst = out + (int64_t(b) * Tn + row[r]) * ldq + h * HD + 2 * t;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      *reinterpret_cast<uint32_t*>(dst + 8 * n) = pack_bf16x2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    if (t == 0) lse[(int64_t(b) * H + h) * Tn + row[r]] = (m[r] + log2f(l[r])) * kLn2;
  }
}

template <int HD>
void forward_hd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tn,
                int H, int KV, cudaStream_t stream) {
  const size_t smem = size_t(3) * kTile * kStride<HD> * sizeof(bf16);
  const float scale_log2 = kLog2e / sqrtf(float(HD));
  launch_with_smem(attention_forward_flash<HD>, dim3(B * H, ceil_div(Tn, kTile)), smem, stream, out,
                   lse, q, k, v, Tn, H, KV, scale_log2);
}

}  // namespace

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
