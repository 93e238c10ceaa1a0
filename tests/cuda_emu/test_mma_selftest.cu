// The self-test of kernels/common/mma.cuh's inline-PTX wrappers:
//  - the m16n8k16 bf16 mma, for random fragments against a plain matrix product in double, and
//    for single-element operands, which pin every register and half of the fragment layout;
//  - ldmatrix .x4 / .x2, plain and .trans, from a padded shared tile whose row addresses each
//    lane picks at random, against the PTX ISA's ldmatrix fragment figure applied on the host;
//  - cp.async 16-byte copies, full and zero-filling (src-size), three groups in flight, retired
//    by wait_group 1 and then 0, and wait_all.
// Expected values are computed on the host from the ISA's text, independently of the kernels
// (kernels/attention_*.cu) and of the emulator. The same source runs in both builds:
//  - under the CUDA emulator (-DLTRAIN_CUDA_EMU=ON), where mma.cuh calls the emulator's
//    implementations, written from the PTX ISA;
//  - on a real GPU (the nvcc build; scripts/gpu_check.sh), where it is the inline PTX.
// Passing on both is the proof that the emulation matches the hardware.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/launch.cuh"
#include "common/mma.cuh"

namespace {

using ltrain::cuda::launch_kernel;

// One warp: each lane gathers its fragments from row-major A (16x16), B (16x8, k x n) and C (16x8)
// by the PTX ISA's layout (written here from the ISA, independently of the attention kernels) and stores D.
__global__ void mma_from_row_major(float* d, const uint16_t* a, const uint16_t* b, const float* c) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair = [](uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); };
  uint32_t af[4];
  af[0] = pair(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
  af[1] = pair(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
  af[2] = pair(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
  af[3] = pair(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
  const uint32_t b0 = pair(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]);
  const uint32_t b1 = pair(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]);
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  ltrain::cuda::mma_bf16_16x8x16(acc, af, b0, b1);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// bf16 bits of x rounded to nearest even, and back (cuda_bf16.h's host conversions).
uint16_t bf16_bits(float x) {
  const __nv_bfloat16 h = __float2bfloat16_rn(x);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}
double bf16_value(uint16_t bits) {
  __nv_bfloat16_raw raw;
  raw.x = bits;
  return __bfloat162float(__nv_bfloat16(raw));
}

class MmaSelfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      cudaGetLastError();
      GTEST_SKIP() << "no CUDA device";
    }
    ASSERT_EQ(cudaMalloc(&da_, 256 * 2), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&db_, 128 * 2), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dc_, 128 * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dd_, 128 * 4), cudaSuccess);
  }
  void TearDown() override {
    for (void* p : {(void*)da_, (void*)db_, (void*)dc_, (void*)dd_})
      if (p) cudaFree(p);
  }
  std::vector<float> run(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, const std::vector<float>& c) {
    EXPECT_EQ(cudaMemcpy(da_, a.data(), 256 * 2, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(db_, b.data(), 128 * 2, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dc_, c.data(), 128 * 4, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemset(dd_, 0xFF, 128 * 4), cudaSuccess);  // NaN until written
    launch_kernel(mma_from_row_major, dim3(1), dim3(32), 0, nullptr, dd_, da_, db_, dc_);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    std::vector<float> d(128);
    EXPECT_EQ(cudaMemcpy(d.data(), dd_, 128 * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return d;
  }
  uint16_t *da_ = nullptr, *db_ = nullptr;
  float *dc_ = nullptr, *dd_ = nullptr;
};

TEST_F(MmaSelfTest, RandomFragmentsMatchAPlainMatrixProduct) {
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<uint16_t> a(256), b(128);
    std::vector<float> c(128);
    for (auto& x : a) x = bf16_bits(u(rng));
    for (auto& x : b) x = bf16_bits(u(rng));
    for (auto& x : c) x = u(rng);
    const std::vector<float> d = run(a, b, c);
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j) {
        double ref = c[i * 8 + j];
        for (int k = 0; k < 16; ++k) ref += bf16_value(a[i * 16 + k]) * bf16_value(b[k * 8 + j]);
        // bf16 products are exact in fp32; 17 fp32 additions of values up to 4
        ASSERT_NEAR(d[i * 8 + j], ref, 2e-5 * (1 + std::fabs(ref))) << "trial " << trial << " D(" << i << "," << j << ")";
      }
  }
}

// A = one 1 at (i, k), B = one 2 at (k, j): D has a single 2 at (i, j). A swapped register, row
// half or 16-bit half moves it.
TEST_F(MmaSelfTest, SingleElementsLandWhereThePtxIsaSays) {
  const std::vector<float> zero(128, 0.f);
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k)
      for (int j = 0; j < 8; j += 3) {
        std::vector<uint16_t> a(256, 0), b(128, 0);
        a[i * 16 + k] = bf16_bits(1.f);
        b[k * 8 + j] = bf16_bits(2.f);
        const std::vector<float> d = run(a, b, zero);
        for (int r = 0; r < 16; ++r)
          for (int cc = 0; cc < 8; ++cc)
            ASSERT_EQ(d[r * 8 + cc], (r == i && cc == j) ? 2.f : 0.f)
                << "A(" << i << "," << k << ") B(" << k << "," << j << ") -> D(" << r << "," << cc << ")";
      }
}

// C passes through: D = C when A = 0.
TEST_F(MmaSelfTest, AccumulatorPassesThrough) {
  std::vector<float> c(128);
  for (int i = 0; i < 128; ++i) c[i] = float(i) - 64.f;
  const std::vector<float> d = run(std::vector<uint16_t>(256, 0), std::vector<uint16_t>(128, bf16_bits(1.f)), c);
  for (int i = 0; i < 128; ++i) ASSERT_EQ(d[i], c[i]) << i;
}

bool have_device() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  return true;
}

// ---- ldmatrix ----------------------------------------------------------------------------------

constexpr int kLdRows = 40;    // rows of the shared tile
constexpr int kLdCols = 32;    // columns used (4 blocks of 8)
constexpr int kLdStride = 40;  // row stride in elements: 80 bytes, 16 bytes of padding per row

// One warp: the tile (kLdRows x kLdCols of b16, row-major in global memory) is staged in shared
// memory with row stride kLdStride; lane l then hands ldmatrix the address of row rows[l], column
// block cols[l] (8 elements). mode: 0 x4, 1 x4.trans, 2 x2, 3 x2.trans. out: 4 registers per lane.
__global__ void ldmatrix_kernel(uint32_t* out, const uint16_t* tile, const int* rows, const int* cols, int mode) {
  __shared__ __align__(16) uint16_t s[kLdRows * kLdStride];
  const int lane = threadIdx.x;
  for (int i = lane; i < kLdRows * kLdCols; i += 32) s[i / kLdCols * kLdStride + i % kLdCols] = tile[i];
  __syncthreads();
  const uint16_t* row = s + rows[lane] * kLdStride + 8 * cols[lane];
  uint32_t r[4] = {0u, 0u, 0u, 0u};
  if (mode == 0) ltrain::cuda::ldmatrix_x4(r, row);
  else if (mode == 1) ltrain::cuda::ldmatrix_x4_trans(r, row);
  else if (mode == 2) ltrain::cuda::ldmatrix_x2(r, row);
  else ltrain::cuda::ldmatrix_x2_trans(r, row);
  const int num = mode < 2 ? 4 : 2;
  for (int i = 0; i < num; ++i) out[lane * 4 + i] = r[i];
}

// The ISA's ldmatrix (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): addresses
// addr0..addr7 (threads 0-7) are the rows of the first matrix, addr8..addr15 of the second, and
// so on; "each thread in a warp loads fragments of a row, with thread 0 receiving the first
// fragment in its register r, and so on. A group of four threads loads an entire row": thread l
// holds row l / 4, 16-bit elements 2 (l % 4) and 2 (l % 4) + 1, in register i for matrix i. With
// .trans the matrix is loaded column-major: the same positions of the transposed matrix.
uint32_t ldmatrix_expected(const std::vector<uint16_t>& tile, const std::vector<int>& rows,
                           const std::vector<int>& cols, int lane, int matrix, bool trans) {
  auto elem = [&](int row_of_matrix, int col) {  // element col (0..7) of row row_of_matrix of `matrix`
    const int addr_thread = 8 * matrix + row_of_matrix;
    return uint32_t(tile[rows[addr_thread] * kLdCols + 8 * cols[addr_thread] + col]);
  };
  const int g = lane / 4, t = lane % 4;
  if (!trans) return elem(g, 2 * t) | elem(g, 2 * t + 1) << 16;
  // transposed matrix M'(g, c) = M(c, g)
  return elem(2 * t, g) | elem(2 * t + 1, g) << 16;
}

TEST(LdmatrixSelfTest, RandomRowAddressesMatchThePtxIsaLayout) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int> bits(0, 0x7F7F);  // finite bf16 patterns, never 0xFFFF
  std::uniform_int_distribution<int> row_dist(0, kLdRows - 1), col_dist(0, kLdCols / 8 - 1);
  uint16_t* dtile = nullptr;
  int *drows = nullptr, *dcols = nullptr;
  uint32_t* dout = nullptr;
  ASSERT_EQ(cudaMalloc(&dtile, kLdRows * kLdCols * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&drows, 32 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dcols, 32 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, 32 * 4 * 4), cudaSuccess);
  for (int trial = 0; trial < 8; ++trial) {
    std::vector<uint16_t> tile(kLdRows * kLdCols);
    for (auto& x : tile) x = uint16_t(bits(rng));
    std::vector<int> rows(32), cols(32);
    for (int l = 0; l < 32; ++l) {
      rows[l] = row_dist(rng);
      cols[l] = col_dist(rng);
    }
    if (trial == 0)  // the A-fragment pattern of a 16x16 tile at (8, 8)
      for (int l = 0; l < 32; ++l) {
        rows[l] = 8 + l % 16;
        cols[l] = 1 + l / 16;
      }
    ASSERT_EQ(cudaMemcpy(dtile, tile.data(), tile.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(drows, rows.data(), 32 * 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dcols, cols.data(), 32 * 4, cudaMemcpyHostToDevice), cudaSuccess);
    for (int mode = 0; mode < 4; ++mode) {
      ASSERT_EQ(cudaMemset(dout, 0xFF, 32 * 4 * 4), cudaSuccess);  // poison
      launch_kernel(ldmatrix_kernel, dim3(1), dim3(32), 0, nullptr, dout, dtile, drows, dcols, mode);
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      std::vector<uint32_t> out(32 * 4);
      ASSERT_EQ(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      const int num = mode < 2 ? 4 : 2;
      const bool trans = mode % 2 == 1;
      for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 4; ++i) {
          const uint32_t want = i < num ? ldmatrix_expected(tile, rows, cols, l, i, trans) : 0xFFFFFFFFu;
          ASSERT_EQ(out[l * 4 + i], want) << "trial " << trial << " mode " << mode << " lane " << l << " register " << i;
        }
    }
  }
  for (void* p : {(void*)dtile, (void*)drows, (void*)dcols, (void*)dout}) cudaFree(p);
}

// ---- cp.async ----------------------------------------------------------------------------------

constexpr int kCpThreads = 64;

// Each thread copies three 16-byte chunks into shared memory, one group each:
//   group 1: chunk src_a[tid] (16 bytes);
//   group 2: chunk src_b[tid] with src-size bytes[tid] (0..16), the rest zero-filled;
//   group 3: chunk src_c[tid] (16 bytes).
// After wait_group 1 (groups 1 and 2 landed, group 3 may be in flight) the thread reads its
// first two destinations; after wait_group 0 the third. Then, after a __syncthreads, it reads
// the destinations of thread (tid + 17) % kCpThreads, and copies once more with wait_all.
// out per thread: 6 chunks of 16 bytes (own a, b, c; the other thread's a, b, c) + 1 (wait_all).
__global__ void cp_async_kernel(uint4* out, const uint4* src, const int* src_a, const int* src_b,
                                const int* src_c, const int* bytes) {
  __shared__ __align__(16) uint4 sa[kCpThreads], sb[kCpThreads], sc[kCpThreads], sd[kCpThreads];
  const int tid = threadIdx.x;
  ltrain::cuda::cp_async_16(&sa[tid], &src[src_a[tid]]);
  ltrain::cuda::cp_async_commit();
  ltrain::cuda::cp_async_16_zfill(&sb[tid], &src[src_b[tid]], bytes[tid]);
  ltrain::cuda::cp_async_commit();
  ltrain::cuda::cp_async_16(&sc[tid], &src[src_c[tid]]);
  ltrain::cuda::cp_async_commit();
  ltrain::cuda::cp_async_wait<1>();
  out[tid * 7 + 0] = sa[tid];
  out[tid * 7 + 1] = sb[tid];
  ltrain::cuda::cp_async_wait<0>();
  out[tid * 7 + 2] = sc[tid];
  __syncthreads();
  const int other = (tid + 17) % kCpThreads;
  out[tid * 7 + 3] = sa[other];
  out[tid * 7 + 4] = sb[other];
  out[tid * 7 + 5] = sc[other];
  ltrain::cuda::cp_async_16(&sd[tid], &src[src_c[other]]);
  ltrain::cuda::cp_async_wait_all();
  out[tid * 7 + 6] = sd[tid];
}

TEST(CpAsyncSelfTest, GroupsRetireInOrderAndSrcSizeZeroFills) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  constexpr int kChunks = 512;
  std::mt19937 rng(77);
  std::vector<uint8_t> src(kChunks * 16);
  for (auto& b : src) b = uint8_t(rng() & 0xFF);
  std::vector<int> a(kCpThreads), b(kCpThreads), c(kCpThreads), bytes(kCpThreads);
  for (int t = 0; t < kCpThreads; ++t) {
    a[t] = int(rng() % kChunks);
    b[t] = int(rng() % kChunks);
    c[t] = int(rng() % kChunks);
    bytes[t] = t % 9 * 2;  // 0, 2, ..., 16
  }
  uint8_t* dsrc = nullptr;
  int *da = nullptr, *db = nullptr, *dc = nullptr, *dbytes = nullptr;
  uint8_t* dout = nullptr;
  const size_t out_bytes = size_t(kCpThreads) * 7 * 16;
  ASSERT_EQ(cudaMalloc(&dsrc, src.size()), cudaSuccess);
  for (int** p : {&da, &db, &dc, &dbytes}) ASSERT_EQ(cudaMalloc(p, kCpThreads * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, out_bytes), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dsrc, src.data(), src.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(da, a.data(), kCpThreads * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(db, b.data(), kCpThreads * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dc, c.data(), kCpThreads * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dbytes, bytes.data(), kCpThreads * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(dout, 0xA5, out_bytes), cudaSuccess);  // poison
  launch_kernel(cp_async_kernel, dim3(1), dim3(kCpThreads), 0, nullptr, reinterpret_cast<uint4*>(dout),
                reinterpret_cast<const uint4*>(dsrc), da, db, dc, dbytes);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<uint8_t> out(out_bytes);
  ASSERT_EQ(cudaMemcpy(out.data(), dout, out_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  // ISA: the src-size bytes come from the source, the rest of the cp-size bytes are zeros.
  auto chunk = [&](int index, int n) {
    std::vector<uint8_t> v(16, 0);
    std::memcpy(v.data(), &src[size_t(index) * 16], size_t(n));
    return v;
  };
  for (int t = 0; t < kCpThreads; ++t) {
    const int o = (t + 17) % kCpThreads;
    const std::vector<uint8_t> want[7] = {chunk(a[t], 16), chunk(b[t], bytes[t]), chunk(c[t], 16),
                                          chunk(a[o], 16), chunk(b[o], bytes[o]), chunk(c[o], 16),
                                          chunk(c[o], 16)};
    for (int k = 0; k < 7; ++k)
      ASSERT_EQ(std::memcmp(&out[(size_t(t) * 7 + k) * 16], want[k].data(), 16), 0)
          << "thread " << t << " chunk " << k << " (src-size " << (k % 3 == 1 ? bytes[k < 3 ? t : o] : 16) << ")";
  }
  for (void* p : {(void*)dsrc, (void*)da, (void*)db, (void*)dc, (void*)dbytes, (void*)dout}) cudaFree(p);
}

}  // namespace
