// Tests of the CUDA emulator's cuBLASLt subset (cublaslt_emu.cpp) against double-precision
// references on seeded bf16 inputs. Every output buffer is poisoned with 0xFF bytes (NaN) before
// a call; gaps (ld padding, batch padding) in inputs hold NaN too, so reading anything outside the
// described matrices, or C when beta == 0, shows up as NaN.
// Device memory comes from the emulator runtime (cudaMalloc / cudaFree / cudaMemcpy).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr uint16_t kBf16NaN = 0xFFFF;

float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  const __nv_bfloat16 h = __float2bfloat16_rn(f);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

bool all_ff(const std::vector<unsigned char>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](unsigned char c) { return c == 0xFF; });
}

// A device allocation, uploaded and read back with cudaMemcpy.
class DevBuf {
 public:
  // At least 4 bytes: an empty operand (k == 0) still gets a real allocation.
  explicit DevBuf(size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&p_, std::max<size_t>(bytes, 4)), cudaSuccess);
  }
  ~DevBuf() { cudaFree(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  unsigned char* get() const { return static_cast<unsigned char*>(p_); }
  size_t bytes() const { return bytes_; }
  void upload(const void* src, size_t n) {
    if (n == 0) return;
    ASSERT_EQ(cudaMemcpy(p_, src, n, cudaMemcpyHostToDevice), cudaSuccess);
  }
  void poison() {
    std::vector<unsigned char> ff(bytes_, 0xFF);
    upload(ff.data(), bytes_);
  }
  std::vector<unsigned char> download() const {
    std::vector<unsigned char> out(bytes_);
    if (bytes_ == 0) return out;
    EXPECT_EQ(cudaMemcpy(out.data(), p_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }

 private:
  void* p_ = nullptr;
  size_t bytes_;
};

// RAII wrappers so a failed ASSERT leaks nothing.
struct Handle {
  cublasLtHandle_t h = nullptr;
  Handle() { EXPECT_EQ(cublasLtCreate(&h), CUBLAS_STATUS_SUCCESS); }
  ~Handle() { EXPECT_EQ(cublasLtDestroy(h), CUBLAS_STATUS_SUCCESS); }
};
struct Desc {
  cublasLtMatmulDesc_t d = nullptr;
  Desc(bool ta, bool tb, cublasComputeType_t ct = CUBLAS_COMPUTE_32F, cudaDataType_t st = CUDA_R_32F) {
    EXPECT_EQ(cublasLtMatmulDescCreate(&d, ct, st), CUBLAS_STATUS_SUCCESS);
    const int32_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof(oa)), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof(ob)), CUBLAS_STATUS_SUCCESS);
  }
  ~Desc() { EXPECT_EQ(cublasLtMatmulDescDestroy(d), CUBLAS_STATUS_SUCCESS); }
};
struct Lay {
  cublasLtMatrixLayout_t l = nullptr;
  Lay(cudaDataType_t t, uint64_t rows, uint64_t cols, int64_t ld, int32_t batch = 1, int64_t stride = 0) {
    EXPECT_EQ(cublasLtMatrixLayoutCreate(&l, t, rows, cols, ld), CUBLAS_STATUS_SUCCESS);
    if (batch != 1) {
      EXPECT_EQ(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)),
                CUBLAS_STATUS_SUCCESS);
      EXPECT_EQ(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                 sizeof(stride)),
                CUBLAS_STATUS_SUCCESS);
    }
  }
  ~Lay() { EXPECT_EQ(cublasLtMatrixLayoutDestroy(l), CUBLAS_STATUS_SUCCESS); }
};
struct Pref {
  cublasLtMatmulPreference_t p = nullptr;
  explicit Pref(uint32_t align = 16, uint64_t workspace = 0) {
    EXPECT_EQ(cublasLtMatmulPreferenceCreate(&p), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                   sizeof(workspace)),
              CUBLAS_STATUS_SUCCESS);
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(p, attr, &align, sizeof(align)), CUBLAS_STATUS_SUCCESS);
  }
  ~Pref() { EXPECT_EQ(cublasLtMatmulPreferenceDestroy(p), CUBLAS_STATUS_SUCCESS); }
};

// The heuristic's first algorithm, or found = 0.
cublasStatus_t heuristic(const Handle& h, const Desc& op, const Lay& a, const Lay& b, const Lay& c, const Lay& d,
                         const Pref& pref, cublasLtMatmulAlgo_t* algo, int* found) {
  cublasLtMatmulHeuristicResult_t r{};
  *found = -1;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h.h, op.d, a.l, b.l, c.l, d.l, pref.p, 1, &r, found);
  if (st == CUBLAS_STATUS_SUCCESS && *found > 0) {
    EXPECT_EQ(r.state, CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(r.workspaceSize, 0u);
    *algo = r.algo;
  }
  return st;
}

// ---- column-major products against a double reference ------------------------------------------

struct Case {
  int m, n, k;
  bool ta, tb;
  bool out_fp32;
  float alpha, beta;
  int pad = 0;        // ld = rows + pad for A, B, C/D
  int batch = 1;
  int batch_gap = 0;  // elements between batch matrices (beyond ld * cols)
  bool in_place = false;  // C == D (as kernels/matmul.cu calls it)
};

std::string describe(const Case& c) {
  return "m " + std::to_string(c.m) + " n " + std::to_string(c.n) + " k " + std::to_string(c.k) + " ta " +
         std::to_string(c.ta) + " tb " + std::to_string(c.tb) + (c.out_fp32 ? " fp32" : " bf16") + " alpha " +
         std::to_string(c.alpha) + " beta " + std::to_string(c.beta) + " pad " + std::to_string(c.pad) +
         " batch " + std::to_string(c.batch) + (c.in_place ? " in-place" : "");
}

void run_case(const Case& cs, uint32_t seed) {
  SCOPED_TRACE(describe(cs));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int m = cs.m, n = cs.n, k = cs.k;
  const int64_t ar = cs.ta ? k : m, ac = cs.ta ? m : k, lda = ar + cs.pad;
  const int64_t br = cs.tb ? n : k, bc = cs.tb ? k : n, ldb = br + cs.pad;
  const int64_t ldc = m + cs.pad;
  const int64_t sa = lda * ac + cs.batch_gap, sb = ldb * bc + cs.batch_gap, sc = ldc * n + cs.batch_gap;
  const size_t na = size_t(sa * cs.batch), nb = size_t(sb * cs.batch), nc = size_t(sc * cs.batch);
  const size_t es = cs.out_fp32 ? 4 : 2;

  // Inputs: bf16 values inside the matrices, NaN in every gap.
  std::vector<uint16_t> ha(na, kBf16NaN), hb(nb, kBf16NaN);
  for (int bi = 0; bi < cs.batch; ++bi) {
    for (int64_t c = 0; c < ac; ++c)
      for (int64_t r = 0; r < ar; ++r) ha[size_t(bi * sa + r + c * lda)] = float_to_bf16(dist(rng));
    for (int64_t c = 0; c < bc; ++c)
      for (int64_t r = 0; r < br; ++r) hb[size_t(bi * sb + r + c * ldb)] = float_to_bf16(dist(rng));
  }
  // C: representable values when beta != 0, else all NaN bytes.
  std::vector<unsigned char> hc(nc * es, 0xFF);
  std::vector<double> cval(nc, 0.0);
  if (cs.beta != 0.0f) {
    for (int bi = 0; bi < cs.batch; ++bi)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < m; ++i) {
          const size_t idx = size_t(bi * sc + i + j * ldc);
          const float v = dist(rng) * 2.0f;
          if (cs.out_fp32) {
            std::memcpy(&hc[idx * 4], &v, 4);
            cval[idx] = v;
          } else {
            const uint16_t h = float_to_bf16(v);
            std::memcpy(&hc[idx * 2], &h, 2);
            cval[idx] = bf16_to_float(h);
          }
        }
  }

  DevBuf da(na * 2), db(nb * 2), dc(nc * es), dd(nc * es);
  da.upload(ha.data(), na * 2);
  db.upload(hb.data(), nb * 2);
  dc.upload(hc.data(), nc * es);
  dd.poison();
  // In place: D is C's buffer; when beta == 0 it holds only NaN bytes.
  DevBuf& out = cs.in_place ? dc : dd;

  Handle h;
  Desc op(cs.ta, cs.tb);
  const cudaDataType_t ot = cs.out_fp32 ? CUDA_R_32F : CUDA_R_16BF;
  Lay la(CUDA_R_16BF, ar, ac, lda, cs.batch, sa), lb(CUDA_R_16BF, br, bc, ldb, cs.batch, sb);
  Lay lc(ot, m, n, ldc, cs.batch, sc), ld(ot, m, n, ldc, cs.batch, sc);
  Pref pref(16);
  cublasLtMatmulAlgo_t algo{};
  int found = 0;
  ASSERT_EQ(heuristic(h, op, la, lb, lc, ld, pref, &algo, &found), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(found, 1);
  ASSERT_EQ(cublasLtMatmul(h.h, op.d, &cs.alpha, da.get(), la.l, db.get(), lb.l, &cs.beta, dc.get(), lc.l,
                           out.get(), ld.l, &algo, nullptr, 0, nullptr),
            CUBLAS_STATUS_SUCCESS);
  const std::vector<unsigned char> got = out.download();

  auto A = [&](int bi, int64_t i, int64_t kk) {
    return double(bf16_to_float(ha[size_t(bi * sa + (cs.ta ? kk + i * lda : i + kk * lda))]));
  };
  auto B = [&](int bi, int64_t kk, int64_t j) {
    return double(bf16_to_float(hb[size_t(bi * sb + (cs.tb ? j + kk * ldb : kk + j * ldb))]));
  };
  std::vector<double> ref(nc, 0.0);
  double max_ref = 0.0;
  for (int bi = 0; bi < cs.batch; ++bi)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) {
        double s = 0.0;
        for (int64_t kk = 0; kk < k; ++kk) s += A(bi, i, kk) * B(bi, kk, j);
        const size_t idx = size_t(bi * sc + i + j * ldc);
        ref[idx] = double(cs.alpha) * s + (cs.beta != 0.0f ? double(cs.beta) * cval[idx] : 0.0);
        max_ref = std::max(max_ref, std::fabs(ref[idx]));
      }
  const double atol = 1e-5 * max_ref * 4 + 1e-30;
  const double rtol = cs.out_fp32 ? 1e-5 : 1.6e-2;
  int bad = 0;
  for (int bi = 0; bi < cs.batch; ++bi)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) {
        const size_t idx = size_t(bi * sc + i + j * ldc);
        double v;
        if (cs.out_fp32) {
          float f;
          std::memcpy(&f, &got[idx * 4], 4);
          v = f;
        } else {
          uint16_t hh;
          std::memcpy(&hh, &got[idx * 2], 2);
          v = bf16_to_float(hh);
        }
        if (!(std::fabs(v - ref[idx]) <= atol + rtol * std::fabs(ref[idx])) && bad++ < 5)
          ADD_FAILURE() << "batch " << bi << " (" << i << ", " << j << "): got " << v << ", want " << ref[idx];
      }
  EXPECT_EQ(bad, 0);
  // Gaps of D (ld padding, batch gaps) are untouched.
  if (!cs.in_place) {
    std::vector<bool> inside(nc, false);
    for (int bi = 0; bi < cs.batch; ++bi)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < m; ++i) inside[size_t(bi * sc + i + j * ldc)] = true;
    for (size_t idx = 0; idx < nc; ++idx) {
      if (inside[idx]) continue;
      for (size_t b = 0; b < es; ++b) ASSERT_EQ(got[idx * es + b], 0xFF) << "gap element " << idx << " written";
    }
  }
}

TEST(CublasLtEmu, AllTransposesSmall) {
  uint32_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool fp32 : {true, false}) run_case({7, 5, 9, ta, tb, fp32, 1.0f, 0.0f}, seed++);
}

TEST(CublasLtEmu, AllTransposesPaddedLd) {
  uint32_t seed = 100;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool fp32 : {true, false}) {
        Case c{33, 17, 24, ta, tb, fp32, 0.75f, 0.0f};
        c.pad = 3;
        run_case(c, seed++);
      }
}

TEST(CublasLtEmu, AlphaBetaCombinations) {
  uint32_t seed = 200;
  const float ab[][2] = {{1.0f, 1.0f}, {0.5f, -1.5f}, {-2.0f, 0.25f}, {1.0f, 0.0f}, {0.0f, 1.0f}};
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool fp32 : {true, false})
        for (const auto& v : ab) {
          Case c{33, 17, 24, ta, tb, fp32, v[0], v[1]};
          c.pad = 2;
          run_case(c, seed++);
        }
}

TEST(CublasLtEmu, InPlaceAccumulateAndBetaZeroOverNaN) {
  uint32_t seed = 300;
  for (bool fp32 : {true, false})
    for (float beta : {0.0f, 1.0f}) {
      Case c{33, 17, 24, true, false, fp32, 1.0f, beta};
      c.in_place = true;
      run_case(c, seed++);
    }
}

TEST(CublasLtEmu, StridedBatchOfThree) {
  uint32_t seed = 400;
  for (bool fp32 : {true, false})
    for (float beta : {0.0f, 0.5f}) {
      Case c{7, 5, 9, false, true, fp32, 1.25f, beta};
      c.batch = 3;
      c.batch_gap = 5;
      c.pad = 1;
      run_case(c, seed++);
    }
  Case c{33, 17, 24, true, true, true, 1.0f, 1.0f};
  c.batch = 3;
  run_case(c, seed++);
}

TEST(CublasLtEmu, KZeroGivesBetaC) {
  Case c{4, 3, 0, false, false, true, 1.0f, 0.5f};
  run_case(c, 500);
}

// The documented arithmetic exactly: float accumulation in increasing k, then alpha * acc + beta * c
// with each product rounded, bf16 output rounded to nearest even.
TEST(CublasLtEmu, BitExactFloatAccumulation) {
  const int m = 9, n = 6, k = 40;
  std::mt19937 rng(600);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  std::vector<uint16_t> ha(size_t(m * k)), hb(size_t(k * n));
  for (auto& v : ha) v = float_to_bf16(dist(rng));
  for (auto& v : hb) v = float_to_bf16(dist(rng));
  std::vector<float> hc(size_t(m * n));
  for (auto& v : hc) v = dist(rng);
  const float alpha = 0.3f, beta = -0.7f;
  for (bool fp32 : {true, false}) {
    SCOPED_TRACE(fp32 ? "fp32" : "bf16");
    const size_t es = fp32 ? 4 : 2;
    std::vector<unsigned char> cbytes(size_t(m * n) * es);
    for (size_t i = 0; i < hc.size(); ++i) {
      if (fp32) {
        std::memcpy(&cbytes[i * 4], &hc[i], 4);
      } else {
        const uint16_t h = float_to_bf16(hc[i]);
        std::memcpy(&cbytes[i * 2], &h, 2);
      }
    }
    DevBuf da(ha.size() * 2), db(hb.size() * 2), dcd(cbytes.size());
    da.upload(ha.data(), ha.size() * 2);
    db.upload(hb.data(), hb.size() * 2);
    dcd.upload(cbytes.data(), cbytes.size());
    Handle h;
    Desc op(false, false);
    const cudaDataType_t ot = fp32 ? CUDA_R_32F : CUDA_R_16BF;
    Lay la(CUDA_R_16BF, m, k, m), lb(CUDA_R_16BF, k, n, k), lc(ot, m, n, m);
    ASSERT_EQ(cublasLtMatmul(h.h, op.d, &alpha, da.get(), la.l, db.get(), lb.l, &beta, dcd.get(), lc.l, dcd.get(),
                             lc.l, nullptr, nullptr, 0, nullptr),
              CUBLAS_STATUS_SUCCESS);
    const std::vector<unsigned char> got = dcd.download();
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (int kk = 0; kk < k; ++kk)
          acc += bf16_to_float(ha[size_t(i + kk * m)]) * bf16_to_float(hb[size_t(kk + j * k)]);
        const size_t idx = size_t(i + j * m);
        float c;
        if (fp32) {
          c = hc[idx];
        } else {
          c = bf16_to_float(float_to_bf16(hc[idx]));
        }
        volatile float pa = alpha * acc;
        volatile float pc = beta * c;
        const float want = pa + pc;
        if (fp32) {
          float v;
          std::memcpy(&v, &got[idx * 4], 4);
          ASSERT_EQ(std::memcmp(&v, &want, 4), 0) << "(" << i << ", " << j << ") " << v << " vs " << want;
        } else {
          uint16_t v, w = float_to_bf16(want);
          std::memcpy(&v, &got[idx * 2], 2);
          ASSERT_EQ(v, w) << "(" << i << ", " << j << ")";
        }
      }
  }
}

// ---- the row-major mapping of kernels/matmul.cu --------------------------------------------------

int alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

// How kernels/matmul.cu calls cuBLASLt: row-major out (M, N) = op(a) op(b), computed as the
// column-major out^T = op(b)^T op(a)^T with cuBLAS A := b, B := a, m = N, n = M.
cublasStatus_t matmul_cu_run(void* out, bool out_fp32, const void* a, const void* b, int M, int N, int K, bool ta,
                             bool tb, float alpha, float beta, void* workspace, size_t workspace_bytes) {
  Handle h;
  Desc op(tb, ta);
  Lay la(CUDA_R_16BF, tb ? K : N, tb ? N : K, tb ? K : N);
  Lay lb(CUDA_R_16BF, ta ? M : K, ta ? K : M, ta ? M : K);
  Lay lc(out_fp32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N);
  cublasLtMatmulPreference_t pref;
  EXPECT_EQ(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                 sizeof(workspace_bytes)),
            CUBLAS_STATUS_SUCCESS);
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE;
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                 sizeof(schemes)),
            CUBLAS_STATUS_SUCCESS);
  const uint32_t align_a = uint32_t(alignment_of(b)), align_b = uint32_t(alignment_of(a)),
                 align_c = uint32_t(alignment_of(out));
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, 4),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, 4),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, 4),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, 4),
            CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h.h, op.d, la.l, lb.l, lc.l, lc.l, pref, 1, &result, &found);
  EXPECT_EQ(cublasLtMatmulPreferenceDestroy(pref), CUBLAS_STATUS_SUCCESS);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (found < 1) return CUBLAS_STATUS_NOT_SUPPORTED;
  return cublasLtMatmul(h.h, op.d, &alpha, b, la.l, a, lb.l, &beta, out, lc.l, out, lc.l, &result.algo, workspace,
                        workspace_bytes, nullptr);
}

TEST(CublasLtEmu, MatmulCuRowMajorMapping) {
  const int M = 13, N = 7, K = 10;
  uint32_t seed = 700;
  DevBuf workspace(1 << 16);
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool fp32 : {true, false}) {
        SCOPED_TRACE(std::string("trans_a ") + std::to_string(ta) + " trans_b " + std::to_string(tb) +
                     (fp32 ? " fp32" : " bf16"));
        std::mt19937 rng(seed++);
        std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
        // Row-major a: (M, K), or (K, M) when transposed; b: (K, N), or (N, K).
        std::vector<uint16_t> ha(size_t(M * K)), hb(size_t(K * N));
        for (auto& v : ha) v = float_to_bf16(dist(rng));
        for (auto& v : hb) v = float_to_bf16(dist(rng));
        auto opa = [&](int i, int kk) { return double(bf16_to_float(ta ? ha[size_t(kk * M + i)] : ha[size_t(i * K + kk)])); };
        auto opb = [&](int kk, int j) { return double(bf16_to_float(tb ? hb[size_t(j * K + kk)] : hb[size_t(kk * N + j)])); };
        DevBuf da(ha.size() * 2), db(hb.size() * 2), dout(size_t(M * N) * (fp32 ? 4 : 2));
        da.upload(ha.data(), ha.size() * 2);
        db.upload(hb.data(), hb.size() * 2);
        dout.poison();
        // First a write over NaN (beta = 0), then an accumulation (beta = 1) for fp32.
        ASSERT_EQ(matmul_cu_run(dout.get(), fp32, da.get(), db.get(), M, N, K, ta, tb, 1.0f, 0.0f, workspace.get(),
                                workspace.bytes()),
                  CUBLAS_STATUS_SUCCESS);
        const int passes = fp32 ? 2 : 1;
        if (fp32) {
          ASSERT_EQ(matmul_cu_run(dout.get(), fp32, da.get(), db.get(), M, N, K, ta, tb, 1.0f, 1.0f,
                                  workspace.get(), workspace.bytes()),
                    CUBLAS_STATUS_SUCCESS);
        }
        const std::vector<unsigned char> got = dout.download();
        double max_ref = 0.0;
        std::vector<double> ref(size_t(M * N));
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            double s = 0.0;
            for (int kk = 0; kk < K; ++kk) s += opa(i, kk) * opb(kk, j);
            ref[size_t(i * N + j)] = s * passes;
            max_ref = std::max(max_ref, std::fabs(s * passes));
          }
        const double atol = 1e-5 * max_ref * 4, rtol = fp32 ? 1e-5 : 1.6e-2;
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            const size_t idx = size_t(i * N + j);  // row-major out
            double v;
            if (fp32) {
              float f;
              std::memcpy(&f, &got[idx * 4], 4);
              v = f;
            } else {
              uint16_t hh;
              std::memcpy(&hh, &got[idx * 2], 2);
              v = bf16_to_float(hh);
            }
            ASSERT_LE(std::fabs(v - ref[idx]), atol + rtol * std::fabs(ref[idx])) << "(" << i << ", " << j << ")";
          }
      }
}

// ---- validation ------------------------------------------------------------------------------------

// A valid 8 x 4 x 6 problem (NN, fp32 out) with every buffer a device allocation; tests break one
// thing and check the status and that D still holds its poison.
struct Fixture {
  static constexpr int m = 8, n = 4, k = 6;
  DevBuf a{size_t(m * k) * 2}, b{size_t(k * n) * 2}, c{size_t(m * n) * 4}, d{size_t(m * n) * 4};
  Handle h;
  float alpha = 1.0f, beta = 1.0f;
  Fixture() {
    std::vector<uint16_t> ones(size_t(std::max(m * k, k * n)), float_to_bf16(1.0f));
    a.upload(ones.data(), a.bytes());
    b.upload(ones.data(), b.bytes());
    std::vector<float> zeros(size_t(m * n), 0.0f);
    c.upload(zeros.data(), c.bytes());
    d.poison();
  }
  bool d_untouched() const { return all_ff(d.download()); }
};

TEST(CublasLtEmuValidation, MismatchedK) {
  Fixture f;
  Desc op(false, false);
  Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k - 1, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
  Pref pref;
  cublasLtMatmulAlgo_t algo{};
  int found = 0;
  EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(found, 0);
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
}

TEST(CublasLtEmuValidation, LdLessThanRows) {
  Fixture f;
  Desc op(false, false);
  Lay la(CUDA_R_16BF, f.m, f.k, f.m - 1), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
  Pref pref;
  cublasLtMatmulAlgo_t algo{};
  int found = 0;
  EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(found, 0);
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
}

TEST(CublasLtEmuValidation, CTypeDiffersFromDType) {
  Fixture f;
  Desc op(false, false);
  Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k);
  Lay lc(CUDA_R_16BF, f.m, f.n, f.m), ld(CUDA_R_32F, f.m, f.n, f.m);
  Pref pref;
  cublasLtMatmulAlgo_t algo{};
  int found = 0;
  EXPECT_EQ(heuristic(f.h, op, la, lb, lc, ld, pref, &algo, &found), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(found, 0);
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), ld.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
}

TEST(CublasLtEmuValidation, CAndDLdDiffer) {
  Fixture f;
  Desc op(false, false);
  Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k);
  Lay lc(CUDA_R_32F, f.m, f.n, f.m), ld(CUDA_R_32F, f.m, f.n, f.m + 1);
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), ld.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
}

TEST(CublasLtEmuValidation, UnsupportedTypes) {
  Fixture f;
  Pref pref;
  cublasLtMatmulAlgo_t algo{};
  int found = -1;
  {  // fp32 A
    Desc op(false, false);
    Lay la(CUDA_R_32F, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
    EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_NOT_SUPPORTED);
    EXPECT_EQ(found, 0);
    EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                             f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
              CUBLAS_STATUS_NOT_SUPPORTED);
  }
  {  // fp16 output
    Desc op(false, false);
    Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_16F, f.m, f.n, f.m);
    EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_NOT_SUPPORTED);
    EXPECT_EQ(found, 0);
  }
  {  // another compute type
    Desc op(false, false, CUBLAS_COMPUTE_32F_FAST_TF32);
    Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
    EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_NOT_SUPPORTED);
    EXPECT_EQ(found, 0);
  }
  {  // row-major order
    Desc op(false, false);
    Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
    const int32_t order = CUBLASLT_ORDER_ROW;
    ASSERT_EQ(cublasLtMatrixLayoutSetAttribute(la.l, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof(order)),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_NOT_SUPPORTED);
    EXPECT_EQ(found, 0);
    EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                             f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
              CUBLAS_STATUS_NOT_SUPPORTED);
  }
  EXPECT_TRUE(f.d_untouched());
}

TEST(CublasLtEmuValidation, MisalignedPointers) {
  // m multiple of 8 so an offset view still fits in the allocation when we shrink the problem.
  Fixture f;
  Desc op(false, false);
  // A view one element (2 bytes) into the A allocation: m - 1 rows fit.
  Lay la(CUDA_R_16BF, f.m - 1, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m - 1, f.n, f.m);
  Pref pref(16);
  cublasLtMatmulAlgo_t algo{};
  int found = 0;
  ASSERT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(found, 1);
  // Aligned to its element but not to the promised 16 bytes.
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get() + 2, la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), lc.l, &algo, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  // D off by 4 bytes against the promised 16.
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get() + 4, lc.l, &algo, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  // Without an algo only the element size is required: 2 bytes into A is fine, 1 byte is not.
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get() + 1, la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get() + 2, la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_SUCCESS);
  // A promise below the element size has no algorithm.
  Pref loose(1);
  EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, loose, &algo, &found), CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(found, 0);
}

TEST(CublasLtEmuValidation, ExtentPastAllocation) {
  Fixture f;
  Desc op(false, false);
  Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
  // D's ld one larger: the last column runs n - 1 elements past the allocation.
  Lay lwide(CUDA_R_32F, f.m, f.n, f.m + 1);
  testing::internal::CaptureStderr();
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lwide.l,
                           f.d.get(), lwide.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("cublasLtMatmul"), std::string::npos) << err;
  EXPECT_TRUE(f.d_untouched());
  // A one column longer than its allocation.
  Lay la_long(CUDA_R_16BF, f.m, f.k + 1, f.m), lb_long(CUDA_R_16BF, f.k + 1, f.n, f.k + 1);
  DevBuf b_long(size_t((f.k + 1) * f.n) * 2);
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la_long.l, b_long.get(), lb_long.l, &f.beta,
                           f.c.get(), lc.l, f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  // A host pointer is not device memory.
  std::vector<uint16_t> host_a(size_t(f.m * f.k), float_to_bf16(1.0f));
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, host_a.data(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  // A batch whose last matrix runs past the allocation.
  Lay la_b(CUDA_R_16BF, f.m, f.k, f.m, 2, f.m * f.k), lb_b(CUDA_R_16BF, f.k, f.n, f.k, 2, 0),
      lc_b(CUDA_R_32F, f.m, f.n, f.m, 2, 0);
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la_b.l, f.b.get(), lb_b.l, &f.beta, f.c.get(), lc_b.l,
                           f.d.get(), lc_b.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  // With beta == 0, C is not read: a null C is accepted.
  const float zero = 0.0f;
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &zero, nullptr, lc.l, f.d.get(),
                           lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_SUCCESS);
  const std::vector<unsigned char> got = f.d.download();
  for (int i = 0; i < f.m * f.n; ++i) {
    float v;
    std::memcpy(&v, &got[size_t(i) * 4], 4);
    EXPECT_EQ(v, float(f.k));
  }
}

TEST(CublasLtEmuValidation, BatchCountsDisagree) {
  Fixture f;
  Desc op(false, false);
  Lay la(CUDA_R_16BF, f.m, f.k, f.m, 2, 0), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
  Pref pref;
  cublasLtMatmulAlgo_t algo{};
  int found = 0;
  EXPECT_EQ(heuristic(f.h, op, la, lb, lc, lc, pref, &algo, &found), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(found, 0);
  EXPECT_EQ(cublasLtMatmul(f.h.h, op.d, &f.alpha, f.a.get(), la.l, f.b.get(), lb.l, &f.beta, f.c.get(), lc.l,
                           f.d.get(), lc.l, nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
}

TEST(CublasLtEmuValidation, NullArgumentsAndForeignAlgo) {
  Fixture f;
  Desc op(false, false);
  Lay la(CUDA_R_16BF, f.m, f.k, f.m), lb(CUDA_R_16BF, f.k, f.n, f.k), lc(CUDA_R_32F, f.m, f.n, f.m);
  auto call = [&](cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void* alpha, const void* a, const void* b,
                  const void* beta, const void* c, void* out, cublasLtMatrixLayout_t ldesc,
                  const cublasLtMatmulAlgo_t* algo) {
    return cublasLtMatmul(h, d, alpha, a, la.l, b, lb.l, beta, c, lc.l, out, ldesc, algo, nullptr, 0, nullptr);
  };
  EXPECT_EQ(call(nullptr, op.d, &f.alpha, f.a.get(), f.b.get(), &f.beta, f.c.get(), f.d.get(), lc.l, nullptr),
            CUBLAS_STATUS_NOT_INITIALIZED);
  EXPECT_EQ(call(f.h.h, nullptr, &f.alpha, f.a.get(), f.b.get(), &f.beta, f.c.get(), f.d.get(), lc.l, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call(f.h.h, op.d, nullptr, f.a.get(), f.b.get(), &f.beta, f.c.get(), f.d.get(), lc.l, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call(f.h.h, op.d, &f.alpha, nullptr, f.b.get(), &f.beta, f.c.get(), f.d.get(), lc.l, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call(f.h.h, op.d, &f.alpha, f.a.get(), f.b.get(), &f.beta, nullptr, f.d.get(), lc.l, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call(f.h.h, op.d, &f.alpha, f.a.get(), f.b.get(), &f.beta, f.c.get(), f.d.get(), nullptr, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  cublasLtMatmulAlgo_t junk{};
  EXPECT_EQ(call(f.h.h, op.d, &f.alpha, f.a.get(), f.b.get(), &f.beta, f.c.get(), f.d.get(), lc.l, &junk),
            CUBLAS_STATUS_INVALID_VALUE);
  // An algo chosen for a bf16 output used with an fp32 output.
  Lay lc16(CUDA_R_16BF, f.m, f.n, f.m);
  Pref pref;
  cublasLtMatmulAlgo_t algo16{};
  int found = 0;
  ASSERT_EQ(heuristic(f.h, op, la, lb, lc16, lc16, pref, &algo16, &found), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(call(f.h.h, op.d, &f.alpha, f.a.get(), f.b.get(), &f.beta, f.c.get(), f.d.get(), lc.l, &algo16),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  // A destroyed layout.
  cublasLtMatrixLayout_t gone;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&gone, CUDA_R_32F, f.m, f.n, f.m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutDestroy(gone), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(call(f.h.h, op.d, &f.alpha, f.a.get(), f.b.get(), &f.beta, f.c.get(), f.d.get(), gone, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_TRUE(f.d_untouched());
  // Heuristic argument checks.
  cublasLtMatmulHeuristicResult_t r{};
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(f.h.h, op.d, la.l, lb.l, lc.l, lc.l, pref.p, 0, &r, &found),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(f.h.h, op.d, la.l, lb.l, lc.l, lc.l, nullptr, 1, &r, &found),
            CUBLAS_STATUS_INVALID_VALUE);
}

TEST(CublasLtEmuValidation, AttributeSetters) {
  cublasLtMatmulDesc_t d;
  ASSERT_EQ(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  const int32_t op_t = CUBLAS_OP_T, op_c = CUBLAS_OP_C;
  const int64_t wide = CUBLAS_OP_T;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof(wide)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, nullptr, sizeof(op_t)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &op_c, sizeof(op_c)),
            CUBLAS_STATUS_NOT_SUPPORTED);
  const uint32_t epi_default = CUBLASLT_EPILOGUE_DEFAULT, epi_relu = CUBLASLT_EPILOGUE_RELU;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi_default, sizeof(epi_default)),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi_relu, sizeof(epi_relu)),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cublasLtMatmulDescDestroy(d), CUBLAS_STATUS_SUCCESS);

  cublasLtMatrixLayout_t l;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&l, CUDA_R_16BF, 4, 4, 4), CUBLAS_STATUS_SUCCESS);
  const int64_t batch64 = 2;
  EXPECT_EQ(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch64, sizeof(batch64)),
            CUBLAS_STATUS_INVALID_VALUE);
  const int32_t batch32 = 2;
  EXPECT_EQ(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch32, sizeof(batch32)),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch32,
                                             sizeof(batch32)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatrixLayoutDestroy(l), CUBLAS_STATUS_SUCCESS);

  cublasLtMatmulPreference_t p;
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&p), CUBLAS_STATUS_SUCCESS);
  const uint32_t ws32 = 1024;
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws32, sizeof(ws32)),
            CUBLAS_STATUS_INVALID_VALUE);
  const uint64_t align64 = 16;
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align64,
                                                 sizeof(align64)),
            CUBLAS_STATUS_INVALID_VALUE);
  const float waves = 2.0f;
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT, &waves, sizeof(waves)),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulPreferenceDestroy(p), CUBLAS_STATUS_SUCCESS);
}

TEST(CublasLtEmu, StatusNames) {
  EXPECT_STREQ(cublasLtGetStatusName(CUBLAS_STATUS_SUCCESS), "CUBLAS_STATUS_SUCCESS");
  EXPECT_STREQ(cublasLtGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
  EXPECT_STREQ(cublasLtGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED), "CUBLAS_STATUS_NOT_SUPPORTED");
  EXPECT_STRNE(cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED), "");
  EXPECT_STRNE(cublasLtGetStatusString(CUBLAS_STATUS_INVALID_VALUE), cublasLtGetStatusString(CUBLAS_STATUS_SUCCESS));
}

// 512^3 must be quick (the model tests run many products); spot-check a few entries too.
TEST(CublasLtEmu, Speed512) {
  const int n = 512;
  std::mt19937 rng(800);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> ha(size_t(n * n)), hb(size_t(n * n));
  for (auto& v : ha) v = float_to_bf16(dist(rng));
  for (auto& v : hb) v = float_to_bf16(dist(rng));
  DevBuf da(ha.size() * 2), db(hb.size() * 2), dd(size_t(n * n) * 2);
  da.upload(ha.data(), ha.size() * 2);
  db.upload(hb.data(), hb.size() * 2);
  dd.poison();
  Handle h;
  Desc op(true, false);
  Lay la(CUDA_R_16BF, n, n, n), lb(CUDA_R_16BF, n, n, n), lc(CUDA_R_16BF, n, n, n);
  const float alpha = 1.0f, beta = 0.0f;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(cublasLtMatmul(h.h, op.d, &alpha, da.get(), la.l, db.get(), lb.l, &beta, dd.get(), lc.l, dd.get(), lc.l,
                           nullptr, nullptr, 0, nullptr),
            CUBLAS_STATUS_SUCCESS);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("512 x 512 x 512 bf16 product: %.3f s\n", secs);
  EXPECT_LT(secs, 2.0);  // about 0.05 s at -O2; generous for sanitizer builds
  const std::vector<unsigned char> got = dd.download();
  for (int t = 0; t < 20; ++t) {
    const int i = int(rng() % n), j = int(rng() % n);
    double s = 0.0, mag = 0.0;
    for (int kk = 0; kk < n; ++kk) {
      const double p = double(bf16_to_float(ha[size_t(kk + i * n)])) * bf16_to_float(hb[size_t(kk + j * n)]);
      s += p;
      mag += std::fabs(p);
    }
    uint16_t hh;
    std::memcpy(&hh, &got[size_t(i + j * n) * 2], 2);
    EXPECT_NEAR(bf16_to_float(hh), s, 1.6e-2 * std::fabs(s) + 1e-5 * mag) << "(" << i << ", " << j << ")";
  }
}

}  // namespace
