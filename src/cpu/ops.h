// CPU implementations of every op, templated on the float type: float is the CPU backend, double is
// the oracle the tests compare everything against (finite differences, CUDA kernels).
//
// Conventions (the same as include/ltrain/core/backend.h): raw row-major pointers with shape
// comments; activation gradients use `=`, parameter gradients and the residual gradient of
// rmsnorm_backward use `+=`. Loops are parallelized with OpenMP over independent rows or heads;
// where several rows write the same parameter gradient, the work is split by columns instead, so
// no two threads write the same element and results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace ltrain::cpu {

// out (M, N) = alpha * op(a) @ op(b) + beta * out, through BLAS; a is (M, K) or (K, M) if trans_a.
// The _ld form takes the row strides of out, a and b as stored (for slices of larger tensors).
void gemm_ld(float* out, int ldo, const float* a, int lda, const float* b, int ldb, int M, int N,
             int K, bool trans_a, bool trans_b, float alpha, float beta);
void gemm_ld(double* out, int ldo, const double* a, int lda, const double* b, int ldb, int M, int N,
             int K, bool trans_a, bool trans_b, double alpha, double beta);
template <class T>
void gemm(T* out, const T* a, const T* b, int M, int N, int K, bool trans_a, bool trans_b, T alpha,
          T beta) {
  gemm_ld(out, N, a, trans_a ? M : K, b, trans_b ? K : N, M, N, K, trans_a, trans_b, alpha, beta);
}

// Splits [0, n) into contiguous chunks, one per OpenMP thread, and calls f(begin, end).
template <class F>
void parallel_chunks(int64_t n, F f) {
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t begin = n * tid / nt, end = n * (tid + 1) / nt;
    if (begin < end) f(begin, end);
  }
}

// ---- embedding ---------------------------------------------------------------------------------

template <class T>
void embedding_forward(T* out,               // (N, C)
                       const int32_t* tokens,  // (N), negative: a zero row
                       const T* wte,           // (V, C)
                       int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    if (tokens[n] < 0) std::fill_n(out + int64_t(n) * C, C, T(0));
    else std::copy_n(wte + int64_t(tokens[n]) * C, C, out + int64_t(n) * C);
  }
}

template <class T>
void embedding_backward(T* dwte,              // (V, C) +=
                        const T* dout,        // (N, C)
                        const int32_t* tokens,  // (N)
                        int N, int C) {
  // Split by columns: rows with the same token would race.
  parallel_chunks(C, [&](int64_t c0, int64_t c1) {
    for (int n = 0; n < N; ++n) {
      if (tokens[n] < 0) continue;  // another vocabulary shard's token
      T* dst = dwte + int64_t(tokens[n]) * C;
      const T* src = dout + int64_t(n) * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

// ---- rmsnorm -----------------------------------------------------------------------------------

template <class T, class S>
void rmsnorm_forward(T* out,          // (N, C)
                     S* rstd,         // (N)
                     const T* inp,    // (N, C)
                     const T* weight, // (C)
                     int N, int C, double eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = inp + int64_t(n) * C;
    T* y = out + int64_t(n) * C;
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += double(x[c]) * x[c];
    T r = T(1.0 / std::sqrt(ss / C + eps));
    rstd[n] = S(r);
    for (int c = 0; c < C; ++c) y[c] = x[c] * r * weight[c];
  }
}

template <class T, class S>
void rmsnorm_backward(T* dinp,          // (N, C) +=
                      T* dweight,       // (C) +=
                      const T* dout,    // (N, C)
                      const T* inp,     // (N, C)
                      const T* weight,  // (C)
                      const S* rstd,    // (N)
                      int N, int C) {
  // y = x * r * w with r = (mean(x^2) + eps)^-1/2. With g = dy * w:
  // dx = r * g - x * r^3 * mean(g * x).
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = inp + int64_t(n) * C;
    const T* dy = dout + int64_t(n) * C;
    T* dx = dinp + int64_t(n) * C;
    T r = T(rstd[n]);
    double dot = 0;
    for (int c = 0; c < C; ++c) dot += double(dy[c]) * weight[c] * x[c];
    T k = T(dot / C) * r * r * r;
    for (int c = 0; c < C; ++c) dx[c] += r * dy[c] * weight[c] - x[c] * k;
  }
  parallel_chunks(C, [&](int64_t c0, int64_t c1) {
    for (int n = 0; n < N; ++n) {
      const T* x = inp + int64_t(n) * C;
      const T* dy = dout + int64_t(n) * C;
      T r = T(rstd[n]);
      for (int64_t c = c0; c < c1; ++c) dweight[c] += dy[c] * x[c] * r;
    }
  });
}

// ---- rope --------------------------------------------------------------------------------------

// sign = +1 rotates forward; -1 applies the inverse rotation (the backward pass: the rotation is
// orthogonal, so its Jacobian transpose is the rotation by -angle).
template <class T, class F>
void rope_rotate(T* out,           // (B, T, NH, HD)
                 const T* inp,     // (B, T, NH, HD)
                 const F* freqs,   // (T, HD/2, 2) cos, sin
                 int B, int Tn, int NH, int HD, int sign) {
  const int64_t rows = int64_t(B) * Tn;
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < rows; ++bt) {
    int t = int(bt % Tn);
    const F* f = freqs + int64_t(t) * HD;
    for (int h = 0; h < NH; ++h) {
      const T* x = inp + (bt * NH + h) * HD;
      T* y = out + (bt * NH + h) * HD;
      for (int i = 0; i < HD / 2; ++i) {
        T c = T(f[2 * i]), s = T(sign * f[2 * i + 1]);
        T x0 = x[2 * i], x1 = x[2 * i + 1];
        y[2 * i] = x0 * c - x1 * s;
        y[2 * i + 1] = x0 * s + x1 * c;
      }
    }
  }
}

// ---- attention ---------------------------------------------------------------------------------
// Blocked over queries and computed with BLAS per (batch, head): a block of kAttnBlock queries
// needs only the keys up to its last query, so the causal mask costs at most one block of wasted
// work per row block. Scratch is (kAttnBlock, T) per thread; no (T, T) matrix exists.

constexpr int kAttnBlock = 128;

template <class T, class S>
void attention_forward(T* out,        // (B, T, H, HD)
                       S* lse,        // (B, H, T)
                       const T* q,    // (B, T, H, HD)
                       const T* k,    // (B, T, KV, HD)
                       const T* v,    // (B, T, KV, HD)
                       int B, int Tn, int H, int KV, int HD) {
  const int group = H / KV;
  const int ldq = H * HD, ldk = KV * HD;  // row strides of one head's (T, HD) slice
  const T scale = T(1.0 / std::sqrt(double(HD)));
#pragma omp parallel
  {
    std::vector<T> p(size_t(kAttnBlock) * Tn);
#pragma omp for schedule(dynamic) collapse(2)
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const T* Q = q + int64_t(b) * Tn * ldq + int64_t(h) * HD;
        const T* K = k + int64_t(b) * Tn * ldk + int64_t(h / group) * HD;
        const T* V = v + int64_t(b) * Tn * ldk + int64_t(h / group) * HD;
        T* O = out + int64_t(b) * Tn * ldq + int64_t(h) * HD;
        for (int t0 = 0; t0 < Tn; t0 += kAttnBlock) {
          const int tq = std::min(kAttnBlock, Tn - t0), tk = t0 + tq;  // keys 0..tk-1
          // p (tq, tk) = scale * Q[t0:t0+tq] @ K[0:tk]^T
          gemm_ld(p.data(), tk, Q + int64_t(t0) * ldq, ldq, K, ldk, tq, tk, HD, false, true, scale, T(0));
          for (int i = 0; i < tq; ++i) {
            const int t = t0 + i;
            T* row = p.data() + int64_t(i) * tk;
            T m = -INFINITY;
            for (int j = 0; j <= t; ++j) m = std::max(m, row[j]);
            T l = 0;
            for (int j = 0; j <= t; ++j) l += row[j] = std::exp(row[j] - m);
            const T inv = T(1) / l;
            for (int j = 0; j <= t; ++j) row[j] *= inv;
            for (int j = t + 1; j < tk; ++j) row[j] = 0;  // the causal mask
            lse[(int64_t(b) * H + h) * Tn + t] = S(m + std::log(l));
          }
          // O[t0:t0+tq] = p @ V[0:tk]
          gemm_ld(O + int64_t(t0) * ldq, ldq, p.data(), tk, V, ldk, tq, HD, tk, false, false, T(1), T(0));
        }
      }
  }
}

template <class T, class S>
void attention_backward(T* dq,          // (B, T, H, HD)
                        T* dk,          // (B, T, KV, HD)
                        T* dv,          // (B, T, KV, HD)
                        const T* dout,  // (B, T, H, HD)
                        const T* q, const T* k, const T* v,
                        const T* out,   // (B, T, H, HD)
                        const S* lse,   // (B, H, T)
                        int B, int Tn, int H, int KV, int HD) {
  // One task per (b, kv head): the query heads of a group all accumulate into the same dk/dv
  // rows, so one thread handles them in a fixed order.
  // With P = softmax rows recomputed from lse, dP = dO V^T, D = rowsum(dO * O):
  //   dS = P * (dP - D);  dQ = scale dS K;  dK += scale dS^T Q;  dV += P^T dO.
  const int group = H / KV;
  const int ldq = H * HD, ldk = KV * HD;
  const T scale = T(1.0 / std::sqrt(double(HD)));
#pragma omp parallel
  {
    std::vector<T> p(size_t(kAttnBlock) * Tn), dp(size_t(kAttnBlock) * Tn);
#pragma omp for schedule(dynamic) collapse(2)
    for (int b = 0; b < B; ++b)
      for (int kvh = 0; kvh < KV; ++kvh) {
        const T* K = k + int64_t(b) * Tn * ldk + int64_t(kvh) * HD;
        const T* V = v + int64_t(b) * Tn * ldk + int64_t(kvh) * HD;
        T* dK = dk + int64_t(b) * Tn * ldk + int64_t(kvh) * HD;
        T* dV = dv + int64_t(b) * Tn * ldk + int64_t(kvh) * HD;
        for (int t = 0; t < Tn; ++t) {
          std::fill_n(dK + int64_t(t) * ldk, HD, T(0));
          std::fill_n(dV + int64_t(t) * ldk, HD, T(0));
        }
        for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
          const int64_t head = int64_t(b) * Tn * ldq + int64_t(h) * HD;
          const T *Q = q + head, *O = out + head, *dO = dout + head;
          T* dQ = dq + head;
          const S* L = lse + (int64_t(b) * H + h) * Tn;
          for (int t0 = 0; t0 < Tn; t0 += kAttnBlock) {
            const int tq = std::min(kAttnBlock, Tn - t0), tk = t0 + tq;
            const int64_t r0 = int64_t(t0) * ldq;
            gemm_ld(p.data(), tk, Q + r0, ldq, K, ldk, tq, tk, HD, false, true, scale, T(0));
            gemm_ld(dp.data(), tk, dO + r0, ldq, V, ldk, tq, tk, HD, false, true, T(1), T(0));
            for (int i = 0; i < tq; ++i) {
              const int t = t0 + i;
              T* prow = p.data() + int64_t(i) * tk;
              T* dsrow = dp.data() + int64_t(i) * tk;
              const T* o = O + int64_t(t) * ldq;
              const T* g = dO + int64_t(t) * ldq;
              T D = 0;
#pragma omp simd reduction(+ : D)
              for (int d = 0; d < HD; ++d) D += g[d] * o[d];
              const T Lt = T(L[t]);
              for (int j = 0; j <= t; ++j) {
                prow[j] = std::exp(prow[j] - Lt);
                dsrow[j] = prow[j] * (dsrow[j] - D);
              }
              for (int j = t + 1; j < tk; ++j) prow[j] = dsrow[j] = 0;
            }
            // dQ[t0:] = scale * dS @ K[0:tk];  dK[0:tk] += scale * dS^T @ Q[t0:];  dV[0:tk] += P^T @ dO[t0:]
            gemm_ld(dQ + r0, ldq, dp.data(), tk, K, ldk, tq, HD, tk, false, false, scale, T(0));
            gemm_ld(dK, ldk, dp.data(), tk, Q + r0, ldq, tk, HD, tq, true, false, scale, T(1));
            gemm_ld(dV, ldk, p.data(), tk, dO + r0, ldq, tk, HD, tq, true, false, T(1), T(1));
          }
        }
      }
  }
}

// ---- swiglu ------------------------------------------------------------------------------------

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {  // all (N, FF)
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T g = gate[i];
    T sig = T(1) / (T(1) + std::exp(-g));
    out[i] = g * sig * up[i];
  }
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T g = gate[i];
    T sig = T(1) / (T(1) + std::exp(-g));
    T silu = g * sig;
    T dsilu = sig * (T(1) + g * (T(1) - sig));
    T u = up[i], dy = dout[i];
    dgate[i] = dy * u * dsilu;
    dup[i] = dy * silu;
  }
}

template <class T>
void add(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// ---- cross-entropy -----------------------------------------------------------------------------

template <class T, class S>
void cross_entropy(S* losses,              // (N)
                   T* dlogits,             // (N, V) or nullptr; may alias logits
                   const T* logits,        // (N, V)
                   const int32_t* targets, // (N), negative = ignored
                   int N, int V, double dloss) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits + int64_t(n) * V;
    const int tgt = targets[n];
    double m = -INFINITY;
    for (int i = 0; i < V; ++i) m = std::max(m, double(x[i]));
    double sum = 0;
    for (int i = 0; i < V; ++i) sum += std::exp(double(x[i]) - m);
    const double lse = m + std::log(sum);
    losses[n] = tgt < 0 ? S(0) : S(lse - double(x[tgt]));
    if (!dlogits) continue;
    T* dx = dlogits + int64_t(n) * V;
    if (tgt < 0) {
      std::fill_n(dx, V, T(0));
      continue;
    }
    for (int i = 0; i < V; ++i) {
      double p = std::exp(double(x[i]) - lse);
      dx[i] = T((p - (i == tgt ? 1.0 : 0.0)) * dloss);
    }
  }
}

// Vocabulary-parallel pieces (see Backend::logsumexp_rows and cross_entropy_with_lse).
template <class T, class S>
void logsumexp_rows(S* lse, const T* logits, int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits + int64_t(n) * V;
    double m = -INFINITY, sum = 0;
    for (int i = 0; i < V; ++i) m = std::max(m, double(x[i]));
    for (int i = 0; i < V; ++i) sum += std::exp(double(x[i]) - m);
    lse[n] = S(m + std::log(sum));
  }
}

template <class T, class S>
void cross_entropy_with_lse(S* losses, T* dlogits, const T* logits, const S* lse,
                            const int32_t* targets, int N, int V, int vocab_offset, double dloss) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits + int64_t(n) * V;
    const int tgt = targets[n] - vocab_offset;  // this shard's column, if it owns the target
    const bool ignored = targets[n] < 0, owned = !ignored && tgt >= 0 && tgt < V;
    const double L = double(lse[n]);
    losses[n] = owned ? S(L - double(x[tgt])) : S(0);
    if (!dlogits) continue;
    T* dx = dlogits + int64_t(n) * V;
    for (int i = 0; i < V; ++i) {
      const double g = ignored ? 0.0 : (std::exp(double(x[i]) - L) - (i == tgt && owned ? 1.0 : 0.0)) * dloss;
      dx[i] = T(g);
    }
  }
}

// ---- optimizer ---------------------------------------------------------------------------------

// Per-thread partial sums added in thread order: an OpenMP reduction combines partials in the
// order threads arrive, which changes the last bits from run to run (and exact resume needs
// bitwise-reproducible steps).
template <class T>
double sum_squares(const T* x, int64_t n) {
  std::vector<double> partial(size_t(omp_get_max_threads()), 0.0);
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    double s = 0;
    for (int64_t i = b; i < e; ++i) s += double(x[i]) * double(x[i]);
    partial[size_t(omp_get_thread_num())] = s;
  });
  double s = 0;
  for (double p : partial) s += p;
  return s;
}

// Decoupled weight decay as in PyTorch's AdamW: p -= lr * (wd * p + mhat / (sqrt(vhat) + eps)).
template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, double grad_scale, int step) {
  const double bc1 = 1.0 - std::pow(beta1, step), bc2 = 1.0 - std::pow(beta2, step);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T g = T(grad[i] * grad_scale);
    m[i] = T(beta1 * m[i] + (1 - beta1) * g);
    v[i] = T(beta2 * v[i] + (1 - beta2) * g * g);
    T mhat = T(m[i] / bc1), vhat = T(v[i] / bc2);
    param[i] -= T(lr * (weight_decay * param[i] + mhat / (std::sqrt(vhat) + eps)));
  }
}

}  // namespace ltrain::cpu
