// The subset of cuBLASLt that kernels/matmul.cu uses, implemented on the CPU for the CUDA
// emulator (tests/cuda_emu/). Test infrastructure only, never a product path: the emulator build
// links this file instead of libcublasLt. The functions are defined with the signatures of the
// real <cublasLt.h>, so they cannot drift from what the kernels compile against.
//
// Semantics (cuBLASLt's documented column-major ones):
//   D = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T (CUBLASLT_MATMUL_DESC_TRANSA/B);
//   after op, A is m x k, B is k x n, C and D are m x n. A layout (type, rows, cols, ld) is
//   column-major: element (r, c) of batch b is at index b * batch_stride + r + c * ld.
//   Strided batches: CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT (equal on all four layouts) and
//   CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET (elements).
// Supported: A, B CUDA_R_16BF; C, D CUDA_R_16BF or CUDA_R_32F (the same for both, and C and D
// layouts identical); CUBLAS_COMPUTE_32F with scale type CUDA_R_32F; host pointer mode; epilogue
// DEFAULT only. Anything else is CUBLAS_STATUS_NOT_SUPPORTED (the heuristic then finds nothing).
//
// Arithmetic: each D element is acc = sum over k, in increasing k order, of the products of the
// bf16 inputs, accumulated in float (the products are exact in float, so fused or not gives the
// same bits); then alpha * acc + beta * C in float, each product rounded, then the sum (no fused
// multiply-add); bf16 outputs are rounded to nearest even. With beta == 0, C is never read (it
// may hold NaN), as cuBLAS documents. Alpha and beta are host floats.
//
// Checks (what a GPU run would get wrong silently becomes a status here, with a line on stderr):
//  - INVALID_VALUE, nothing written: op(A), op(B), C, D dimensions that disagree; C and D layouts
//    that differ; ld < rows or negative; batch counts < 1 or disagreeing; negative batch stride;
//    missing descriptors or pointers; an algo that is not from this heuristic or is for another
//    output type; workspace needed larger than given; a pointer not aligned to its element size
//    or to the alignment the preference promised (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES,
//    recorded in the algo by the heuristic); an operand whose whole strided extent is not inside
//    one device allocation (cuda_emu::check_device_range; C only when beta != 0).
//  - NOT_INITIALIZED: a null or destroyed handle. Destroyed or unknown descriptors: INVALID_VALUE.
//  - Attribute setters check the value size (INVALID_VALUE) and refuse, with NOT_SUPPORTED,
//    values that would change the semantics above (CUBLAS_OP_C, other epilogues, ...).
// The heuristic returns one algorithm (workspace 0, no split-K: allowed by any reduction scheme
// mask) when the problem is supported and valid, else found = 0 with NOT_SUPPORTED (or
// INVALID_VALUE for an invalid problem).
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "emu_runtime.h"

namespace {

bool g_finds_no_algorithm = false;

}  // namespace

namespace cuda_emu {
void set_cublaslt_finds_no_algorithm(bool on) { g_finds_no_algorithm = on; }
}  // namespace cuda_emu

namespace {

// ---- objects behind the opaque handles ----------------------------------------------------------

struct LtContext {
  int unused = 0;
};

struct MatmulDesc {
  int32_t compute_type = 0;
  int32_t scale_type = 0;
  int32_t trans_a = CUBLAS_OP_N;
  int32_t trans_b = CUBLAS_OP_N;
};

struct Layout {
  uint32_t type = 0;
  int32_t order = CUBLASLT_ORDER_COL;
  uint64_t rows = 0;
  uint64_t cols = 0;
  int64_t ld = 0;
  int32_t batch_count = 1;
  int64_t batch_stride = 0;
  int64_t plane_offset = 0;
  uint32_t batch_mode = CUBLASLT_BATCH_MODE_STRIDED;
};

struct Preference {
  uint32_t search_mode = CUBLASLT_SEARCH_BEST_FIT;
  uint64_t max_workspace = 0;
  uint32_t reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
  uint32_t min_align[4] = {256, 256, 256, 256};  // A, B, C, D
};

// Live objects of one kind: using a destroyed or foreign pointer is reported, not dereferenced.
template <class T>
class Registry {
 public:
  T* create() {
    T* p = new T();
    std::lock_guard<std::mutex> lock(mu_);
    live_.insert(p);
    return p;
  }
  bool destroy(const void* p) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (live_.erase(p) == 0) return false;
    }
    delete static_cast<const T*>(p);
    return true;
  }
  T* find(const void* p) {
    if (p == nullptr) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    return live_.count(p) ? static_cast<T*>(const_cast<void*>(p)) : nullptr;
  }

 private:
  std::mutex mu_;
  std::unordered_set<const void*> live_;
};

Registry<LtContext>& contexts() {
  static auto* r = new Registry<LtContext>;  // never destroyed: static backends outlive it otherwise
  return *r;
}
Registry<MatmulDesc>& descs() {
  static auto* r = new Registry<MatmulDesc>;  // never destroyed: static backends outlive it otherwise
  return *r;
}
Registry<Layout>& layouts() {
  static auto* r = new Registry<Layout>;  // never destroyed: static backends outlive it otherwise
  return *r;
}
Registry<Preference>& preferences() {
  static auto* r = new Registry<Preference>;  // never destroyed: static backends outlive it otherwise
  return *r;
}

// ---- the algo value ----------------------------------------------------------------------------

constexpr uint64_t kAlgoMagic = 0x4c54454d55414c47ull;  // "LTEMUALG"
enum AlgoField { kMagic = 0, kAlignAB = 1, kAlignCD = 2, kWorkspace = 3, kOutType = 4 };

// ---- helpers -----------------------------------------------------------------------------------

cublasStatus_t fail(cublasStatus_t st, const char* fn, const std::string& why) {
  std::fprintf(stderr, "cuBLASLt emulator: %s: %s: %s\n", fn, cublasLtGetStatusName(st), why.c_str());
  return st;
}

template <class V>
bool read_value(const void* buf, size_t size, V* out) {
  if (buf == nullptr || size != sizeof(V)) return false;
  std::memcpy(out, buf, sizeof(V));
  return true;
}

size_t element_size(uint32_t type) {
  switch (type) {
    case CUDA_R_16BF: return 2;
    case CUDA_R_32F: return 4;
    default: return 0;
  }
}

bool is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

struct Problem {
  const MatmulDesc* op = nullptr;
  const Layout* a = nullptr;
  const Layout* b = nullptr;
  const Layout* c = nullptr;
  const Layout* d = nullptr;
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;
  size_t out_size = 0;  // bytes of one C/D element
};

// Checks a layout on its own. NOT_SUPPORTED for features outside the subset, INVALID_VALUE for
// impossible values.
cublasStatus_t check_layout(const Layout& l, const char* name, std::string* why) {
  const std::string n(name);
  if (l.order != CUBLASLT_ORDER_COL) {
    *why = n + ": only CUBLASLT_ORDER_COL is supported (order " + std::to_string(l.order) + ")";
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (l.plane_offset != 0) {
    *why = n + ": planar complex layouts are not supported";
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (l.batch_mode != CUBLASLT_BATCH_MODE_STRIDED) {
    *why = n + ": only strided batches are supported";
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  constexpr uint64_t kMaxDim = uint64_t(std::numeric_limits<int32_t>::max());
  if (l.rows > kMaxDim || l.cols > kMaxDim) {
    *why = n + ": rows/cols beyond int32 range (" + std::to_string(l.rows) + " x " +
           std::to_string(l.cols) + ")";
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (l.ld < 0 || uint64_t(l.ld) < l.rows) {
    *why = n + ": ld " + std::to_string(l.ld) + " < rows " + std::to_string(l.rows);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (l.batch_count < 1) {
    *why = n + ": batch count " + std::to_string(l.batch_count) + " < 1";
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (l.batch_stride < 0) {
    *why = n + ": negative batch stride " + std::to_string(l.batch_stride);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// Everything the heuristic and the product share: support, then consistency of the problem.
cublasStatus_t check_problem(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t ad,
                             cublasLtMatrixLayout_t bd, cublasLtMatrixLayout_t cd,
                             cublasLtMatrixLayout_t dd, Problem* p, std::string* why) {
  if (contexts().find(handle) == nullptr) {
    *why = "null or destroyed handle";
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  p->op = descs().find(desc);
  p->a = layouts().find(ad);
  p->b = layouts().find(bd);
  p->c = layouts().find(cd);
  p->d = layouts().find(dd);
  if (p->op == nullptr || p->a == nullptr || p->b == nullptr || p->c == nullptr || p->d == nullptr) {
    *why = "null or destroyed matmul descriptor or matrix layout";
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const MatmulDesc& op = *p->op;
  const Layout &A = *p->a, &B = *p->b, &C = *p->c, &D = *p->d;

  // Support.
  if (op.compute_type != CUBLAS_COMPUTE_32F || op.scale_type != CUDA_R_32F) {
    *why = "only compute type CUBLAS_COMPUTE_32F with scale type CUDA_R_32F is supported (compute " +
           std::to_string(op.compute_type) + ", scale " + std::to_string(op.scale_type) + ")";
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (A.type != CUDA_R_16BF || B.type != CUDA_R_16BF) {
    *why = "A and B must be CUDA_R_16BF (A type " + std::to_string(A.type) + ", B type " +
           std::to_string(B.type) + ")";
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  for (const Layout* l : {&C, &D}) {
    if (l->type != CUDA_R_16BF && l->type != CUDA_R_32F) {
      *why = std::string(l == &C ? "C" : "D") + " must be CUDA_R_16BF or CUDA_R_32F (type " +
             std::to_string(l->type) + ")";
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
  }
  const char* names[4] = {"A", "B", "C", "D"};
  const Layout* all[4] = {&A, &B, &C, &D};
  for (int i = 0; i < 4; ++i) {
    const cublasStatus_t st = check_layout(*all[i], names[i], why);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
  }

  // Consistency.
  if (C.type != D.type || C.rows != D.rows || C.cols != D.cols || C.ld != D.ld ||
      C.batch_count != D.batch_count || C.batch_stride != D.batch_stride) {
    *why = "C and D layouts differ (type " + std::to_string(C.type) + "/" + std::to_string(D.type) +
           ", " + std::to_string(C.rows) + "x" + std::to_string(C.cols) + " ld " + std::to_string(C.ld) +
           " / " + std::to_string(D.rows) + "x" + std::to_string(D.cols) + " ld " + std::to_string(D.ld) +
           ", batch " + std::to_string(C.batch_count) + "/" + std::to_string(D.batch_count) + ", stride " +
           std::to_string(C.batch_stride) + "/" + std::to_string(D.batch_stride) + ")";
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool ta = op.trans_a == CUBLAS_OP_T, tb = op.trans_b == CUBLAS_OP_T;
  const int64_t am = int64_t(ta ? A.cols : A.rows), ak = int64_t(ta ? A.rows : A.cols);
  const int64_t bk = int64_t(tb ? B.cols : B.rows), bn = int64_t(tb ? B.rows : B.cols);
  if (ak != bk || am != int64_t(D.rows) || bn != int64_t(D.cols)) {
    *why = "dimensions disagree: op(A) " + std::to_string(am) + "x" + std::to_string(ak) + ", op(B) " +
           std::to_string(bk) + "x" + std::to_string(bn) + ", C/D " + std::to_string(D.rows) + "x" +
           std::to_string(D.cols);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (A.batch_count != D.batch_count || B.batch_count != D.batch_count) {
    *why = "batch counts disagree: A " + std::to_string(A.batch_count) + ", B " +
           std::to_string(B.batch_count) + ", C/D " + std::to_string(D.batch_count);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  p->m = am;
  p->n = bn;
  p->k = ak;
  p->batch = D.batch_count;
  p->out_size = element_size(D.type);
  return CUBLAS_STATUS_SUCCESS;
}

// Bytes spanned by all batches of a layout (0 when empty); false on overflow.
bool extent_bytes(const Layout& l, size_t* bytes) {
  *bytes = 0;
  if (l.rows == 0 || l.cols == 0) return true;
  uint64_t batches, cols, elems, b;
  if (__builtin_mul_overflow(uint64_t(l.batch_count) - 1, uint64_t(l.batch_stride), &batches) ||
      __builtin_mul_overflow(l.cols - 1, uint64_t(l.ld), &cols) || __builtin_add_overflow(batches, cols, &elems) ||
      __builtin_add_overflow(elems, l.rows, &elems) ||
      __builtin_mul_overflow(elems, uint64_t(element_size(l.type)), &b) ||
      b > uint64_t(std::numeric_limits<size_t>::max() / 2))
    return false;
  *bytes = size_t(b);
  return true;
}

inline float load_bf16(const unsigned char* base, int64_t index) {
  uint16_t h;
  std::memcpy(&h, base + 2 * index, 2);
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float load_out(const unsigned char* base, int64_t index, bool fp32) {
  if (!fp32) return load_bf16(base, index);
  float f;
  std::memcpy(&f, base + 4 * index, 4);
  return f;
}

inline void store_out(unsigned char* base, int64_t index, bool fp32, float v) {
  if (fp32) {
    std::memcpy(base + 4 * index, &v, 4);
  } else {
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    static_assert(sizeof(h) == 2, "bf16 is two bytes");
    std::memcpy(base + 2 * index, &h, 2);
  }
}

// alpha * acc + beta * c with each product rounded to float (no contraction into an FMA).
inline float scale_add(float alpha, float acc, float beta, float c) {
  volatile float pa = alpha * acc;
  volatile float pc = beta * c;
  return pa + pc;
}

// One product of the batch: op(A) is gathered into a k x m panel (column i of D needs row i of
// op(A); the panel keeps, for each k, the m values contiguous), op(B) into an n x k panel; each
// D column is then an axpy sequence over k in increasing order.
void compute_one(const Problem& p, const unsigned char* A, const unsigned char* B, const unsigned char* C,
                 unsigned char* D, float alpha, float beta, std::vector<float>& ap, std::vector<float>& bp,
                 std::vector<float>& acc) {
  const int64_t m = p.m, n = p.n, k = p.k;
  const bool ta = p.op->trans_a == CUBLAS_OP_T, tb = p.op->trans_b == CUBLAS_OP_T;
  const int64_t lda = p.a->ld, ldb = p.b->ld, ldc = p.d->ld;
  const bool fp32 = p.d->type == CUDA_R_32F;
  ap.resize(size_t(m * k));
  bp.resize(size_t(k * n));
  acc.resize(size_t(m));
  // ap[kk * m + i] = op(A)(i, kk); A(r, c) is A[r + c * lda].
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t i = 0; i < m; ++i) ap[size_t(kk * m + i)] = load_bf16(A, ta ? kk + i * lda : i + kk * lda);
  // bp[j * k + kk] = op(B)(kk, j).
  for (int64_t j = 0; j < n; ++j)
    for (int64_t kk = 0; kk < k; ++kk) bp[size_t(j * k + kk)] = load_bf16(B, tb ? j + kk * ldb : kk + j * ldb);
  for (int64_t j = 0; j < n; ++j) {
    float* a_acc = acc.data();
    for (int64_t i = 0; i < m; ++i) a_acc[i] = 0.0f;
    const float* bcol = bp.data() + j * k;
    for (int64_t kk = 0; kk < k; ++kk) {
      const float bv = bcol[kk];
      const float* arow = ap.data() + kk * m;
      for (int64_t i = 0; i < m; ++i) a_acc[i] += arow[i] * bv;
    }
    for (int64_t i = 0; i < m; ++i) {
      const int64_t idx = i + j * ldc;
      const float c = beta != 0.0f ? load_out(C, idx, fp32) : 0.0f;
      store_out(D, idx, fp32, beta != 0.0f ? scale_add(alpha, a_acc[i], beta, c) : alpha * a_acc[i]);
    }
  }
}

}  // namespace

// ---- handle --------------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* lightHandle) {
  if (lightHandle == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtCreate", "null output pointer");
  *lightHandle = reinterpret_cast<cublasLtHandle_t>(contexts().create());
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t lightHandle) {
  if (lightHandle == nullptr) return CUBLAS_STATUS_SUCCESS;
  if (!contexts().destroy(lightHandle))
    return fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy", "unknown or already destroyed handle");
  return CUBLAS_STATUS_SUCCESS;
}

const char* CUBLASWINAPI cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* CUBLASWINAPI cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized (invalid handle)";
    case CUBLAS_STATUS_ALLOC_FAILED: return "resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was passed";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "the device does not support the operation";
    case CUBLAS_STATUS_MAPPING_ERROR: return "access to device memory failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "license error";
  }
  return "unknown status";
}

// ---- matmul descriptor ---------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
                                                     cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType) {
  if (matmulDesc == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescCreate", "null output pointer");
  MatmulDesc* d = descs().create();
  d->compute_type = int32_t(computeType);
  d->scale_type = int32_t(scaleType);
  *matmulDesc = reinterpret_cast<cublasLtMatmulDesc_t>(d);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  if (matmulDesc == nullptr) return CUBLAS_STATUS_SUCCESS;
  if (!descs().destroy(matmulDesc))
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescDestroy", "unknown or already destroyed descriptor");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t sizeInBytes) {
  static const char* fn = "cublasLtMatmulDescSetAttribute";
  MatmulDesc* d = descs().find(matmulDesc);
  if (d == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "null or destroyed descriptor");
  const std::string what = "attribute " + std::to_string(int(attr));
  auto bad_size = [&] {
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, what + ": null buffer or wrong size " + std::to_string(sizeInBytes));
  };
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: {
      int32_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      (attr == CUBLASLT_MATMUL_DESC_COMPUTE_TYPE ? d->compute_type : d->scale_type) = v;
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
      int32_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      if (v == CUBLAS_OP_C || v == CUBLAS_OP_CONJG)
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, what + ": conjugate transpose is not supported");
      if (v != CUBLAS_OP_N && v != CUBLAS_OP_T)
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn, what + ": not a cublasOperation_t: " + std::to_string(v));
      (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->trans_a : d->trans_b) = v;
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
      uint32_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      if (v != CUBLASLT_EPILOGUE_DEFAULT)
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "only CUBLASLT_EPILOGUE_DEFAULT is supported");
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: {
      int32_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      if (v != CUBLASLT_POINTER_MODE_HOST)
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "only CUBLASLT_POINTER_MODE_HOST is supported");
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_TRANSC: {
      int32_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      if (v != CUBLAS_OP_N) return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "TRANSC must be CUBLAS_OP_N");
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_FILL_MODE: {
      int32_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      if (v != CUBLAS_FILL_MODE_FULL) return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "FILL_MODE must be FULL");
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: {  // a performance hint: accepted, ignored
      int32_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: {  // fp8 only: accepted, ignored
      int8_t v;
      if (!read_value(buf, sizeInBytes, &v)) return bad_size();
      return CUBLAS_STATUS_SUCCESS;
    }
    default:
      return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, what + " is outside the emulated subset");
  }
}

// ---- matrix layouts --------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type,
                                                       uint64_t rows, uint64_t cols, int64_t ld) {
  if (matLayout == nullptr)
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutCreate", "null output pointer");
  Layout* l = layouts().create();
  l->type = uint32_t(type);
  l->rows = rows;
  l->cols = cols;
  l->ld = ld;
  *matLayout = reinterpret_cast<cublasLtMatrixLayout_t>(l);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  if (matLayout == nullptr) return CUBLAS_STATUS_SUCCESS;
  if (!layouts().destroy(matLayout))
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutDestroy", "unknown or already destroyed layout");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
                                                             cublasLtMatrixLayoutAttribute_t attr,
                                                             const void* buf, size_t sizeInBytes) {
  static const char* fn = "cublasLtMatrixLayoutSetAttribute";
  Layout* l = layouts().find(matLayout);
  if (l == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "null or destroyed layout");
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: ok = read_value(buf, sizeInBytes, &l->type); break;
    case CUBLASLT_MATRIX_LAYOUT_ORDER: ok = read_value(buf, sizeInBytes, &l->order); break;
    case CUBLASLT_MATRIX_LAYOUT_ROWS: ok = read_value(buf, sizeInBytes, &l->rows); break;
    case CUBLASLT_MATRIX_LAYOUT_COLS: ok = read_value(buf, sizeInBytes, &l->cols); break;
    case CUBLASLT_MATRIX_LAYOUT_LD: ok = read_value(buf, sizeInBytes, &l->ld); break;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: ok = read_value(buf, sizeInBytes, &l->batch_count); break;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: ok = read_value(buf, sizeInBytes, &l->batch_stride); break;
    case CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET: ok = read_value(buf, sizeInBytes, &l->plane_offset); break;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_MODE: ok = read_value(buf, sizeInBytes, &l->batch_mode); break;
    default:
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "unknown attribute " + std::to_string(int(attr)));
  }
  if (!ok)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn,
                "attribute " + std::to_string(int(attr)) + ": null buffer or wrong size " + std::to_string(sizeInBytes));
  return CUBLAS_STATUS_SUCCESS;
}

// ---- preferences ----------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (pref == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceCreate", "null output pointer");
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(preferences().create());
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  if (pref == nullptr) return CUBLAS_STATUS_SUCCESS;
  if (!preferences().destroy(pref))
    return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceDestroy", "unknown or already destroyed preference");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr,
                                                                 const void* buf, size_t sizeInBytes) {
  static const char* fn = "cublasLtMatmulPreferenceSetAttribute";
  Preference* p = preferences().find(pref);
  if (p == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "null or destroyed preference");
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: ok = read_value(buf, sizeInBytes, &p->search_mode); break;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: ok = read_value(buf, sizeInBytes, &p->max_workspace); break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: ok = read_value(buf, sizeInBytes, &p->reduction_mask); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: ok = read_value(buf, sizeInBytes, &p->min_align[0]); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: ok = read_value(buf, sizeInBytes, &p->min_align[1]); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: ok = read_value(buf, sizeInBytes, &p->min_align[2]); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: ok = read_value(buf, sizeInBytes, &p->min_align[3]); break;
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT: {  // accepted, ignored
      float v;
      ok = read_value(buf, sizeInBytes, &v);
      break;
    }
    case CUBLASLT_MATMUL_PREF_IMPL_MASK: {  // accepted, ignored
      uint64_t v;
      ok = read_value(buf, sizeInBytes, &v);
      break;
    }
    default:
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "unknown attribute " + std::to_string(int(attr)));
  }
  if (!ok)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn,
                "attribute " + std::to_string(int(attr)) + ": null buffer or wrong size " + std::to_string(sizeInBytes));
  return CUBLAS_STATUS_SUCCESS;
}

// ---- heuristic ------------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle,
                                                           cublasLtMatmulDesc_t operationDesc,
                                                           cublasLtMatrixLayout_t Adesc,
                                                           cublasLtMatrixLayout_t Bdesc,
                                                           cublasLtMatrixLayout_t Cdesc,
                                                           cublasLtMatrixLayout_t Ddesc,
                                                           cublasLtMatmulPreference_t preference,
                                                           int requestedAlgoCount,
                                                           cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                                           int* returnAlgoCount) {
  static const char* fn = "cublasLtMatmulAlgoGetHeuristic";
  if (returnAlgoCount == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "null returnAlgoCount");
  *returnAlgoCount = 0;
  if (requestedAlgoCount <= 0 || heuristicResultsArray == nullptr)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "requestedAlgoCount <= 0 or null result array");
  const Preference* pref = preferences().find(preference);
  if (pref == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "null or destroyed preference");
  Problem p;
  std::string why;
  const cublasStatus_t st = check_problem(lightHandle, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &p, &why);
  if (st != CUBLAS_STATUS_SUCCESS) return fail(st, fn, why);
  if (pref->search_mode != CUBLASLT_SEARCH_BEST_FIT)
    return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "only CUBLASLT_SEARCH_BEST_FIT is supported");
  // Fault injection (cuda_emu::set_cublaslt_finds_no_algorithm): what the real library answers
  // when no kernel fits a shape, alignment and reduction-scheme combination.
  if (g_finds_no_algorithm) return CUBLAS_STATUS_NOT_SUPPORTED;
  const size_t elem[4] = {2, 2, p.out_size, p.out_size};
  const char* names[4] = {"A", "B", "C", "D"};
  for (int i = 0; i < 4; ++i) {
    if (!is_pow2(pref->min_align[i]) || pref->min_align[i] < elem[i])
      return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn,
                  std::string("no algorithm for a promised ") + names[i] + " alignment of " +
                      std::to_string(pref->min_align[i]) + " bytes (element size " + std::to_string(elem[i]) + ")");
  }
  cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[0];
  std::memset(&r, 0, sizeof(r));
  r.algo.data[kMagic] = kAlgoMagic;
  r.algo.data[kAlignAB] = uint64_t(pref->min_align[0]) | (uint64_t(pref->min_align[1]) << 32);
  r.algo.data[kAlignCD] = uint64_t(pref->min_align[2]) | (uint64_t(pref->min_align[3]) << 32);
  r.algo.data[kWorkspace] = 0;
  r.algo.data[kOutType] = p.d->type;
  r.workspaceSize = 0;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

// ---- the product ----------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                                           const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc,
                                           const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                                           const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                                           cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo,
                                           void* workspace, size_t workspaceSizeInBytes, cudaStream_t stream) {
  (void)stream;  // the emulator is synchronous: the product is done when this returns
  static const char* fn = "cublasLtMatmul";
  Problem p;
  std::string why;
  const cublasStatus_t st = check_problem(lightHandle, computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &p, &why);
  if (st != CUBLAS_STATUS_SUCCESS) return fail(st, fn, why);
  if (alpha == nullptr || beta == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "null alpha or beta");
  float alpha_v, beta_v;
  std::memcpy(&alpha_v, alpha, sizeof(float));
  std::memcpy(&beta_v, beta, sizeof(float));
  const bool read_c = beta_v != 0.0f;

  // The algo: from this heuristic, for this output type; it carries the promised alignments.
  uint64_t align[4] = {1, 1, 1, 1};
  if (algo != nullptr) {
    if (algo->data[kMagic] != kAlgoMagic)
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "algo was not returned by cublasLtMatmulAlgoGetHeuristic");
    if (algo->data[kOutType] != p.d->type)
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn,
                  "algo was chosen for output type " + std::to_string(algo->data[kOutType]) + ", D is type " +
                      std::to_string(p.d->type));
    align[0] = algo->data[kAlignAB] & 0xffffffffu;
    align[1] = algo->data[kAlignAB] >> 32;
    align[2] = algo->data[kAlignCD] & 0xffffffffu;
    align[3] = algo->data[kAlignCD] >> 32;
    if (algo->data[kWorkspace] > workspaceSizeInBytes)
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn,
                  "algo needs " + std::to_string(algo->data[kWorkspace]) + " workspace bytes, " +
                      std::to_string(workspaceSizeInBytes) + " given");
  }
  if (workspaceSizeInBytes > 0 && workspace == nullptr)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "null workspace with a nonzero workspace size");

  // Pointers and alignment.
  const void* ptrs[4] = {A, B, C, D};
  const Layout* lays[4] = {p.a, p.b, p.c, p.d};
  const char* names[4] = {"A", "B", "C", "D"};
  size_t extent[4];
  for (int i = 0; i < 4; ++i) {
    if (!extent_bytes(*lays[i], &extent[i]))
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn, std::string(names[i]) + ": extent overflows");
    const bool needed = i == 2 ? read_c : extent[i] > 0;
    if (ptrs[i] == nullptr) {
      if (needed) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, std::string("null ") + names[i]);
      continue;
    }
    const uintptr_t addr = reinterpret_cast<uintptr_t>(ptrs[i]);
    const size_t es = element_size(lays[i]->type);
    if (addr % es != 0 || addr % align[i] != 0)
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn,
                  std::string(names[i]) + " pointer " + std::to_string(addr) + " is not aligned to " +
                      std::to_string(addr % es != 0 ? uint64_t(es) : align[i]) +
                      (addr % es != 0 ? " bytes (its element size)" : " bytes (promised to the heuristic)"));
  }
  // Device memory: the whole strided extent of every operand that is read or written.
  for (int i = 0; i < 4; ++i) {
    if ((i == 2 && !read_c) || extent[i] == 0) continue;
    const std::string msg = cuda_emu::check_device_range(ptrs[i], extent[i], names[i]);
    if (!msg.empty()) {
      std::fprintf(stderr, "cuBLASLt emulator: cublasLtMatmul: %s\n", msg.c_str());
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  if (workspaceSizeInBytes > 0) {
    const std::string msg = cuda_emu::check_device_range(workspace, workspaceSizeInBytes, "workspace");
    if (!msg.empty()) {
      std::fprintf(stderr, "cuBLASLt emulator: cublasLtMatmul: %s\n", msg.c_str());
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }

  if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
  std::vector<float> ap, bp, acc;
  const auto* a = static_cast<const unsigned char*>(A);
  const auto* b = static_cast<const unsigned char*>(B);
  const auto* c = static_cast<const unsigned char*>(C);
  auto* d = static_cast<unsigned char*>(D);
  // Batch bi of an operand (null stays null: an empty A or B with k == 0 may be null).
  auto at = [](const unsigned char* base, int64_t bi, int64_t stride, size_t es) {
    return base == nullptr ? nullptr : base + int64_t(es) * bi * stride;
  };
  for (int64_t bi = 0; bi < p.batch; ++bi) {
    compute_one(p, at(a, bi, p.a->batch_stride, 2), at(b, bi, p.b->batch_stride, 2),
                read_c ? at(c, bi, p.c->batch_stride, p.out_size) : nullptr,
                d + int64_t(p.out_size) * bi * p.d->batch_stride, alpha_v, beta_v, ap, bp, acc);
  }
  return CUBLAS_STATUS_SUCCESS;
}
