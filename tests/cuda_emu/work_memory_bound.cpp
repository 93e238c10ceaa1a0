// Work count of the memory-bound kernels (rmsnorm, cross-entropy, sum of squares, convert,
// swiglu, add, rope, AdamW): the global bytes the emulator counted for one call, summed over all
// of its launches, against the minimum the operation needs (every input read once, every output
// written once, a += output read and written once, small per-row side outputs such as rstd and
// lse included). A kernel that reads a row twice, re-reads a weight vector per row, or keeps
// large partial sums in global memory moves more and fails the 10% margin.
//
// The emulator counts every access, cached or not, so this is a bound on the traffic between the
// SMs and L2 as much as on DRAM traffic. The launch geometry (blocks at production shapes) is
// checked against the launchers' own geometry functions (kernels.h), which the launchers use.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "emu_control.h"
#include "kernels.h"

namespace {

namespace lc = ltrain::cuda;
using lc::bf16;

constexpr double kMargin = 1.1;

template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16(float(x));
  else return T(x);
}

// Device buffers freed at the end of a test.
struct Buffers {
  std::vector<void*> ptrs;
  ~Buffers() {
    for (void* p : ptrs) EXPECT_EQ(cudaFree(p), cudaSuccess);
  }
  template <class T>
  T* random(size_t n, uint32_t seed, double lo = -2, double hi = 2) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<T> host(n);
    for (auto& x : host) x = from_double<T>(dist(rng));
    return put(host);
  }
  template <class T>
  T* put(const std::vector<T>& host) {
    T* d = alloc<T>(host.size());
    EXPECT_EQ(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
  }
  template <class T>
  T* alloc(size_t n) {
    void* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, n * sizeof(T) + 16), cudaSuccess);  // + 16: room for a misaligned view
    EXPECT_EQ(cudaMemset(d, 0, n * sizeof(T) + 16), cudaSuccess);
    ptrs.push_back(d);
    return static_cast<T*>(d);
  }
};

// Global bytes (read + written) of everything `call` launches, after checking that it ran.
uint64_t bytes_of(const std::function<void()>& call) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cuda_emu::last_error_message();
  const cuda_emu::LaunchStats before = cuda_emu::total_launch_stats();
  call();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cuda_emu::last_error_message();
  const cuda_emu::LaunchStats after = cuda_emu::total_launch_stats();
  return (after.global_bytes_read - before.global_bytes_read) +
         (after.global_bytes_written - before.global_bytes_written);
}

void expect_near_minimal(const std::string& what, uint64_t measured, double minimal) {
  const double ratio = double(measured) / minimal;
  ::testing::Test::RecordProperty(what, std::to_string(ratio));
  std::printf("[work] %-58s minimal %12.0f measured %12llu  x%.3f\n", what.c_str(), minimal,
              (unsigned long long)measured, ratio);
  EXPECT_LE(double(measured), kMargin * minimal) << what << ": x" << ratio << " the minimal bytes";
  EXPECT_GE(double(measured), minimal) << what << ": fewer bytes than the minimum: the count is wrong";
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, bf16> ? "bf16" : "fp32";
}

template <class T>
std::string label(const char* kernel, const std::string& shape) {
  return std::string(kernel) + " " + type_name<T>() + " " + shape;
}

// ---- rmsnorm -----------------------------------------------------------------------------------

template <class T>
void rmsnorm_case(int N, int C) {
  Buffers b;
  const double s = sizeof(T), NC = double(N) * C;
  T* x = b.random<T>(size_t(N) * C, 1);
  T* w = b.random<T>(C, 2, 0.5, 1.5);
  T* out = b.alloc<T>(size_t(N) * C);
  float* rstd = b.alloc<float>(N);
  const std::string shape = "N " + std::to_string(N) + " C " + std::to_string(C);
  const uint64_t fwd = bytes_of([&] { lc::rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f, nullptr); });
  expect_near_minimal(label<T>("rmsnorm_forward", shape), fwd, NC * s + C * s + NC * s + 4.0 * N);

  T* dout = b.random<T>(size_t(N) * C, 3);
  T* dinp = b.random<T>(size_t(N) * C, 4);
  float* dw = b.random<float>(C, 5);
  float* scratch = b.alloc<float>(lc::rmsnorm_backward_scratch_floats(N, C));
  const uint64_t bwd = bytes_of(
      [&] { lc::rmsnorm_backward(dinp, dw, dout, x, w, rstd, N, C, scratch, nullptr); });
  // dout, inp, weight, rstd read; dinp and dweight read and written.
  expect_near_minimal(label<T>("rmsnorm_backward", shape), bwd,
                      2 * NC * s + C * s + 4.0 * N + 2 * NC * s + 2 * 4.0 * C);
}

TEST(MemoryBoundWork, RmsNorm) {
  rmsnorm_case<bf16>(256, 4096);
  rmsnorm_case<float>(256, 4096);
  rmsnorm_case<bf16>(64, 4096);
  rmsnorm_case<float>(128, 2048);
}

// ---- cross-entropy -----------------------------------------------------------------------------

template <class T>
void cross_entropy_case(int N, int V) {
  Buffers b;
  const double s = sizeof(T), NV = double(N) * V;
  T* logits = b.random<T>(size_t(N) * V, 1, -4, 4);
  std::vector<int32_t> tgt(N);
  std::mt19937 rng(2);
  for (auto& t : tgt) t = int32_t(rng() % uint32_t(V));
  tgt[1] = -1;  // ignored
  int32_t* targets = b.put(tgt);
  float* losses = b.alloc<float>(N);
  float* lse = b.random<float>(N, 3, 10, 11);
  T* dlogits = b.alloc<T>(size_t(N) * V);
  const std::string shape = "N " + std::to_string(N) + " V " + std::to_string(V);

  // Fused loss and gradient: logits and targets read, gradient and losses written.
  uint64_t m = bytes_of([&] { lc::cross_entropy(losses, dlogits, logits, targets, N, V, 1.f / N, nullptr); });
  expect_near_minimal(label<T>("cross_entropy", shape), m, NV * s + 4.0 * N + NV * s + 4.0 * N);
  // The loss alone.
  m = bytes_of([&] { lc::cross_entropy(losses, static_cast<T*>(nullptr), logits, targets, N, V, 1.f / N, nullptr); });
  expect_near_minimal(label<T>("cross_entropy (no gradient)", shape), m, NV * s + 4.0 * N + 4.0 * N);
  // Vocabulary-parallel pieces.
  m = bytes_of([&] { lc::logsumexp_rows(lse, logits, N, V, nullptr); });
  expect_near_minimal(label<T>("logsumexp_rows", shape), m, NV * s + 4.0 * N);
  m = bytes_of([&] {
    lc::cross_entropy_with_lse(losses, dlogits, logits, lse, targets, N, V, 0, 1.f / N, nullptr);
  });
  expect_near_minimal(label<T>("cross_entropy_with_lse", shape), m, NV * s + 8.0 * N + NV * s + 4.0 * N);
  // In place, as the model calls it.
  m = bytes_of([&] { lc::cross_entropy(losses, logits, logits, targets, N, V, 1.f / N, nullptr); });
  expect_near_minimal(label<T>("cross_entropy (in place)", shape), m, NV * s + 4.0 * N + NV * s + 4.0 * N);
}

TEST(MemoryBoundWork, CrossEntropy) {
  cross_entropy_case<bf16>(64, 32000);
  cross_entropy_case<float>(32, 32000);
}

// ---- sum of squares, convert -------------------------------------------------------------------

template <class T>
void sum_squares_case(int64_t n) {
  Buffers b;
  T* x = b.random<T>(size_t(n), 1);
  double* partials = b.alloc<double>(lc::kSumSquaresBlocks + 1);
  const std::string shape = "n " + std::to_string(n);
  // The tensor read once, and (at least) one partial, a += output, read and written.
  const uint64_t m = bytes_of([&] { lc::sum_squares_accumulate(partials, x, n, nullptr); });
  expect_near_minimal(label<T>("sum_squares_accumulate", shape), m, double(n) * sizeof(T) + 16);
}

TEST(MemoryBoundWork, SumSquaresAndConvert) {
  sum_squares_case<float>((1 << 20) + 3);
  sum_squares_case<bf16>((1 << 21) + 5);
  Buffers b;
  double* partials = b.random<double>(lc::kSumSquaresBlocks + 1, 1);
  const uint64_t m = bytes_of([&] { lc::sum_partials(partials + lc::kSumSquaresBlocks, partials, nullptr); });
  expect_near_minimal("sum_partials", m, 8.0 * lc::kSumSquaresBlocks + 8);

  const int64_t n = (1 << 20) + 7;
  float* f = b.random<float>(size_t(n), 2);
  bf16* h = b.alloc<bf16>(size_t(n));
  uint64_t c = bytes_of([&] { lc::convert(h, f, n, nullptr); });
  expect_near_minimal("convert fp32 -> bf16 n " + std::to_string(n), c, double(n) * 6);
  c = bytes_of([&] { lc::convert(f, h, n, nullptr); });
  expect_near_minimal("convert bf16 -> fp32 n " + std::to_string(n), c, double(n) * 6);
}

// ---- swiglu, add -------------------------------------------------------------------------------

template <class T>
void elementwise_case(int64_t n) {
  Buffers b;
  const double s = sizeof(T);
  T* g = b.random<T>(size_t(n), 1, -4, 4);
  T* u = b.random<T>(size_t(n), 2);
  T* dy = b.random<T>(size_t(n), 3);
  T* out = b.alloc<T>(size_t(n));
  T* dg = b.alloc<T>(size_t(n));
  const std::string shape = "n " + std::to_string(n);
  uint64_t m = bytes_of([&] { lc::swiglu_forward(out, g, u, n, nullptr); });
  expect_near_minimal(label<T>("swiglu_forward", shape), m, 3 * n * s);
  m = bytes_of([&] { lc::swiglu_backward(dg, out, dy, g, u, n, nullptr); });
  expect_near_minimal(label<T>("swiglu_backward", shape), m, 5 * n * s);
  m = bytes_of([&] { lc::add(u, u, dy, n, nullptr); });
  expect_near_minimal(label<T>("add", shape), m, 3 * n * s);
}

TEST(MemoryBoundWork, SwiGLUAndAdd) {
  elementwise_case<bf16>(int64_t(64) * 11008 + 5);
  elementwise_case<float>(int64_t(64) * 11008 + 3);
}

// ---- rope --------------------------------------------------------------------------------------

template <class T>
void rope_case(int B, int Tn, int NH, int HD) {
  Buffers b;
  const double n = double(B) * Tn * NH * HD, s = sizeof(T);
  T* x = b.random<T>(size_t(n), 1);
  float* freqs = b.random<float>(size_t(Tn) * HD, 2, -1, 1);
  T* out = b.alloc<T>(size_t(n));
  const std::string shape = "B " + std::to_string(B) + " T " + std::to_string(Tn) + " NH " +
                            std::to_string(NH) + " HD " + std::to_string(HD);
  // The rows of (B, T, NH) read and written once, the table's T rows read once.
  const double minimal = 2 * n * s + double(Tn) * HD * 4;
  uint64_t m = bytes_of([&] { lc::rope_rotate(out, x, freqs, B, Tn, NH, HD, +1, nullptr); });
  expect_near_minimal(label<T>("rope_rotate", shape), m, minimal);
  m = bytes_of([&] { lc::rope_rotate(x, x, freqs, B, Tn, NH, HD, -1, nullptr); });  // in place
  expect_near_minimal(label<T>("rope_rotate (in place, backward)", shape), m, minimal);
}

TEST(MemoryBoundWork, Rope) {
  rope_case<bf16>(2, 128, 32, 128);  // q
  rope_case<bf16>(2, 128, 8, 128);   // k under GQA
  rope_case<float>(2, 64, 8, 64);
  rope_case<float>(1, 64, 32, 128);
}

// ---- adamw -------------------------------------------------------------------------------------

TEST(MemoryBoundWork, AdamW) {
  Buffers b;
  for (int64_t n : {int64_t(1) << 20, (int64_t(1) << 20) + 3}) {
    float* p = b.random<float>(size_t(n), 1);
    float* g = b.random<float>(size_t(n), 2);
    float* m = b.random<float>(size_t(n), 3, 0, 0.1);
    float* v = b.random<float>(size_t(n), 4, 0, 0.1);
    const uint64_t bytes = bytes_of([&] {
      lc::adamw_update(p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.f, 0.1f, 0.05f, nullptr);
    });
    // param, m and v read and written, grad read.
    expect_near_minimal("adamw_update n " + std::to_string(n), bytes, 28.0 * double(n));
  }
}

// ---- grids at production shapes ----------------------------------------------------------------
// An H100 has 132 SMs; a memory-bound kernel needs several resident blocks per SM (or a grid
// stride that reaches them) to keep enough loads in flight. The launchers use these functions.
constexpr int64_t kSMs = 132;

TEST(MemoryBoundWork, ProductionGridsFillTheDevice) {
  // RMSNorm at N = 8192 rows of C = 4096: the forward 4 blocks per SM, the backward 2 (its
  // dweight partials grow with the blocks), each exactly one wave of 256-thread blocks at the
  // occupancy their registers allow (scripts/kernel_resources.sh: 4 and 2 blocks per SM).
  for (auto g : {lc::rmsnorm_forward_grid<bf16>(8192, 4096), lc::rmsnorm_forward_grid<float>(8192, 4096)}) {
    EXPECT_EQ(g.blocks, 4 * kSMs);
    EXPECT_EQ(g.threads, 256);
  }
  for (auto g : {lc::rmsnorm_backward_grid<bf16>(8192, 4096), lc::rmsnorm_backward_grid<float>(8192, 4096)}) {
    EXPECT_EQ(g.blocks, 2 * kSMs);
    EXPECT_EQ(g.threads, 256);
  }
  // Cross-entropy: a block per row, the row in registers.
  for (auto g : {lc::cross_entropy_grid<bf16>(8192, 32000), lc::cross_entropy_grid<float>(8192, 32000)}) {
    EXPECT_EQ(g.blocks, 8192);
    EXPECT_LE(g.threads, 512);
  }
  EXPECT_EQ(lc::cross_entropy_grid<bf16>(8192, 32000).threads, 512);  // 2 blocks per SM
  // Sum of squares over 7e9 elements: the full fixed grid, ~8 blocks of 256 threads per SM.
  EXPECT_EQ(lc::sum_squares_grid<bf16>(int64_t(7e9)).blocks, lc::kSumSquaresBlocks);
  EXPECT_GE(int64_t(lc::kSumSquaresBlocks), 7 * kSMs);
  // RoPE at B T = 8192 for 32 query heads and 8 key heads.
  EXPECT_GE(lc::rope_grid<bf16>(4, 2048, 32).blocks, 4 * kSMs);
  EXPECT_GE(lc::rope_grid<bf16>(4, 2048, 8).blocks, 4 * kSMs);
}

}  // namespace
