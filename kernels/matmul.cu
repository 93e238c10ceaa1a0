// Matrix products through cuBLASLt: bf16 inputs, fp32 accumulation (CUBLAS_COMPUTE_32F), output
// bf16 (activations) or fp32 (parameter gradients, accumulated with beta = 1).
//
// Row-major to column-major: a row-major (r, c) matrix is the column-major (c, r) matrix with
// leading dimension c. So row-major out (M, N) = op(a) op(b) is computed as the column-major
// out^T (N, M) = op(b)^T-view * op(a)^T-view: cuBLAS's "A" is our b and its "B" is our a, with the
// same transpose flags, and m = N, n = M.
//
// Descriptors and the heuristic's first algorithm are cached per (M, N, K, flags, out type,
// pointer alignments): the model calls a few dozen distinct shapes, each many times. When the
// heuristic has no algorithm (CUBLAS_STATUS_NOT_SUPPORTED), the shape runs on matmul_fallback, a
// plain kernel, with a warning.
//
// Reproducibility: cuBLAS gives the same bits on every run for a given toolkit, GPU architecture
// and SM count when one stream uses the handle with a workspace of its own, which is the case
// here; the heuristic is a function of the shape, alignments, workspace size and device, and its
// first answer is kept for the whole run. With `deterministic` the heuristic may only return
// algorithms without split-K or with the in-place split-K reduction (partial sums added into the
// output in a fixed sequence, counters in the workspace), never the schemes that reduce partials
// in a separate pass through the workspace.
#include <algorithm>
#include <cstdio>
#include <map>
#include <tuple>

#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {

namespace {

// Largest power of two (at most 256) dividing the address: cuBLASLt picks kernels by alignment.
int alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool fallback = false;  // cuBLASLt had no algorithm: matmul_fallback below
};

// The product when cuBLASLt's heuristic offers no algorithm for a shape, alignment and
// reduction-scheme combination: one thread per output element of row-major out (M, N), a dot
// product over K in fp32 in increasing k (deterministic), then alpha * acc + beta * c (c not
// read when beta = 0, as in cuBLAS). Slow, but correct; the first use prints a warning.
template <class TOut>
__global__ void matmul_fallback(TOut* out, const TOut* c, const bf16* a, const bf16* b, int M, int N,
                                int K, bool trans_a, bool trans_b, float alpha, float beta) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(M) * N) return;
  const int m = int(i / N), n = int(i % N);
  // op(a)[m, k] and op(b)[k, n] of row-major a (M, K) or (K, M) and b (K, N) or (N, K)
  const int64_t a_row = trans_a ? 1 : K, a_k = trans_a ? M : 1;
  const int64_t b_k = trans_b ? 1 : N, b_col = trans_b ? K : 1;
  float acc = 0.f;
  for (int k = 0; k < K; ++k)
    acc += to_float(a[m * a_row + k * a_k]) * to_float(b[k * b_k + n * b_col]);
  const float prev = beta != 0.f ? to_float(c[i]) : 0.f;
  out[i] = from_float<TOut>(alpha * acc + beta * prev);
}

}  // namespace

struct LtMatmul::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool deterministic = false;
  // key: M, N, K, trans_a, trans_b, out_fp32, align(out), align(a), align(b)
  using Key = std::tuple<int, int, int, bool, bool, bool, int, int, int>;
  std::map<Key, Plan> plans;

  const Plan& plan_for(const Key& key) {
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    const auto [M, N, K, ta, tb, out_fp32, al_out, al_a, al_b] = key;
    Plan p;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    // cuBLAS A := our b, cuBLAS B := our a (see the file header).
    const cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    // Stored (rows, cols, ld) in column-major terms.
    // our b: row-major (K, N) -> col-major (N, K) ld N; transposed: row-major (N, K) -> (K, N) ld K.
    if (!tb) CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, N, K, N));
    else CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, K, N, K));
    // our a: row-major (M, K) -> col-major (K, M) ld K; transposed: row-major (K, M) -> (M, K) ld M.
    if (!ta) CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, K, M, K));
    else CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, M, K, M));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out_fp32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
    if (deterministic) {
      const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE;
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                        &schemes, sizeof(schemes)));
    }
    const uint32_t align_a = uint32_t(al_b), align_b = uint32_t(al_a), align_c = uint32_t(al_out);
    auto set_alignment = [&](cublasLtMatmulPreferenceAttributes_t attr, const uint32_t& bytes) {
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &bytes, sizeof(bytes)));
    };
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    // "Nothing fits" is CUBLAS_STATUS_NOT_SUPPORTED with found = 0: not an error, a fallback.
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.c, p.c, pref, 1,
                                                             &result, &found);
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(st);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || found == 0) {
      p.fallback = true;
      std::fprintf(stderr,
                   "ltrain: warning: cuBLASLt has no algorithm for out (%d, %d) %s, K %d, trans_a %d, trans_b %d, "
                   "alignments %d/%d/%d%s; using the (slow) fallback kernel for this shape\n",
                   M, N, out_fp32 ? "fp32" : "bf16", K, int(ta), int(tb), al_out, al_a, al_b,
                   deterministic ? " (deterministic: no split-K reduction passes)" : "");
    } else {
      p.algo = result.algo;
    }
    return plans.emplace(key, p).first->second;
  }
};

LtMatmul::LtMatmul(size_t workspace_bytes, bool deterministic) : impl_(std::make_unique<Impl>()) {
  CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  impl_->workspace_bytes = workspace_bytes;
  impl_->deterministic = deterministic;
  if (workspace_bytes) CUDA_CHECK(cudaMalloc(&impl_->workspace, workspace_bytes));
}

LtMatmul::~LtMatmul() {
  for (auto& [key, p] : impl_->plans) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  }
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t LtMatmul::workspace_bytes() const { return impl_->workspace_bytes; }

void LtMatmul::run(void* out, bool out_fp32, const bf16* a, const bf16* b, int M, int N, int K,
                   bool trans_a, bool trans_b, float alpha, float beta, cudaStream_t stream,
                   const void* c) {
  if (M == 0 || N == 0) return;
  LTRAIN_CHECK(K > 0, "matmul with K = 0");
  if (!c) c = out;
  // C and D share one layout and the alignment promised to the heuristic: the smaller of theirs.
  const Impl::Key key{M, N, K, trans_a, trans_b, out_fp32, std::min(alignment_of(out), alignment_of(c)),
                      alignment_of(a), alignment_of(b)};
  const Plan& p = impl_->plan_for(key);
  if (p.fallback) {
    const unsigned blocks = ceil_div(int64_t(M) * N, 256);
    if (out_fp32)
      launch_kernel(matmul_fallback<float>, blocks, 256, 0, stream, static_cast<float*>(out),
                    static_cast<const float*>(c), a, b, M, N, K, trans_a, trans_b, alpha, beta);
    else
      launch_kernel(matmul_fallback<bf16>, blocks, 256, 0, stream, static_cast<bf16*>(out),
                    static_cast<const bf16*>(c), a, b, M, N, K, trans_a, trans_b, alpha, beta);
    CUDA_CHECK_LAUNCH();
    return;
  }
  CUBLAS_CHECK(cublasLtMatmul(impl_->handle, p.op, &alpha, b, p.a, a, p.b, &beta, c, p.c, out,
                              p.c, &p.algo, impl_->workspace, impl_->workspace_bytes, stream));
}

}  // namespace ltrain::cuda
