// The CUDA emulator's own tests. This file is compiled like a kernel source (emu.h first, the
// access hooks on), so its kernels run exactly as kernels/*.cu do under the emulator.
//  - (the mma emulation has its own test, test_mma_selftest.cu, which also runs on a real GPU);
//  - warp shuffles and block barriers compute what CUDA defines;
//  - each defect class is reported with kernel, block, thread and line: a shared-memory race, a
//    missing barrier, a divergent barrier, a barrier after an early exit, a collective missing a
//    lane, an out-of-bounds shared or global access, a misaligned 16-byte access, a read of
//    unwritten shared memory, a deadlock, and launch limits (threads, grid, shared memory);
//  - ldmatrix and cp.async (their results are in test_mma_selftest.cu): a misaligned or
//    non-shared ldmatrix row, a read of a cp.async destination before the wait that retires it
//    (by the issuing thread, or by another after only a __syncthreads), a read by another thread
//    after the wait without a __syncthreads, copies still pending at exit, a source outside
//    device memory;
//  - schedules: a schedule-dependent kernel gives different results under two orders, a correct
//    one the same.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/launch.cuh"
#include "common/mma.cuh"
#include "emu_control.h"

namespace {

using ltrain::cuda::launch_kernel;

// ---- helpers -----------------------------------------------------------------------------------

template <class T>
T* dev_alloc(size_t n) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}

template <class T>
void upload(T* d, const std::vector<T>& h) {
  ASSERT_EQ(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}

template <class T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

// Runs f (which launches), expects the launch to fail with `err` and the report to contain every
// one of `parts`; then clears the sticky error so the next test can run.
template <class F>
void expect_report(F f, cudaError_t err, std::initializer_list<const char*> parts) {
  cuda_emu::set_quiet(true);
  f();
  const cudaError_t got = cudaGetLastError();
  const std::string msg = cuda_emu::last_error_message();
  cuda_emu::clear_error();
  cuda_emu::set_quiet(false);
  EXPECT_EQ(got, err) << cudaGetErrorName(got) << ": " << msg;
  for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "report lacks '" << p << "':\n" << msg;
  std::printf("[ report   ] %s\n", msg.c_str());
}

// ---- collectives and barriers that are right -----------------------------------------------------

__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  const int x = __shfl_xor_sync(0xffffffffu, lane * 10, 3);
  const int y = __shfl_sync(0xffffffffu, lane * 10, 5);
  const float z = __shfl_down_sync(0xffffffffu, float(lane), 4);
  const float w = __shfl_up_sync(0xffffffffu, float(lane), 2);
  const unsigned bal = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[threadIdx.x * 5 + 0] = x;
  out[threadIdx.x * 5 + 1] = y;
  out[threadIdx.x * 5 + 2] = int(z);
  out[threadIdx.x * 5 + 3] = int(w);
  out[threadIdx.x * 5 + 4] = int(bal);
}

TEST(EmuCollectives, ShufflesAndBallotFollowCuda) {
  int* d = dev_alloc<int>(64 * 5);
  launch_kernel(shuffles, dim3(1), dim3(64), 0, nullptr, d);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << cuda_emu::last_error_message();
  const std::vector<int> h = download(d, 64 * 5);
  unsigned bal = 0;
  for (int l = 0; l < 32; ++l)
    if (l % 3 == 0) bal |= 1u << l;
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    EXPECT_EQ(h[t * 5 + 0], (lane ^ 3) * 10);
    EXPECT_EQ(h[t * 5 + 1], 50);
    EXPECT_EQ(h[t * 5 + 2], lane + 4 < 32 ? lane + 4 : lane);
    EXPECT_EQ(h[t * 5 + 3], lane >= 2 ? lane - 2 : lane);
    EXPECT_EQ(unsigned(h[t * 5 + 4]), bal);
  }
  cudaFree(d);
}

// A block reversal through shared memory with the barrier in place: correct under every order.
__global__ void reverse_block(int* out, const int* in) {
  __shared__ int buf[256];
  buf[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

TEST(EmuSchedules, ACorrectKernelGivesTheSameResultUnderEveryOrder) {
  const int n = 4 * 256;
  std::vector<int> in(n);
  for (int i = 0; i < n; ++i) in[i] = i * 7 + 1;
  int* di = dev_alloc<int>(n);
  int* dout = dev_alloc<int>(n);
  upload(di, in);
  for (auto s : {cuda_emu::Schedule::kRoundRobin, cuda_emu::Schedule::kReverse, cuda_emu::Schedule::kRandom}) {
    cuda_emu::set_schedule(s, 99);
    launch_kernel(reverse_block, dim3(4), dim3(256), 0, nullptr, dout, di);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess) << cuda_emu::last_error_message();
    const std::vector<int> h = download(dout, n);
    for (int i = 0; i < n; ++i) ASSERT_EQ(h[i], in[i / 256 * 256 + 255 - i % 256]);
  }
  cuda_emu::set_schedule(cuda_emu::Schedule::kRoundRobin);
  cudaFree(di);
  cudaFree(dout);
}

// ---- defects the emulator must report ----------------------------------------------------------

// Each thread updates its element and then reads its neighbour's, with the barrier between the
// two dropped: thread 1 writes buf[1] after thread 0 read it in the same interval.
__global__ void missing_barrier(int* out) {
  __shared__ int buf[64];
  buf[threadIdx.x] = int(threadIdx.x);
  __syncthreads();
  buf[threadIdx.x] *= 2;
  // __syncthreads();  <- missing
  out[threadIdx.x] = buf[(threadIdx.x + 1) % 64];
}

// Without any barrier, the neighbour's element may not be written yet at all.
__global__ void no_barrier_at_all(int* out) {
  __shared__ int buf[64];
  buf[threadIdx.x] = int(threadIdx.x);
  out[threadIdx.x] = buf[(threadIdx.x + 1) % 64];
}

TEST(EmuChecks, MissingBarrierIsARace) {
  int* d = dev_alloc<int>(64);
  for (auto s : {cuda_emu::Schedule::kRoundRobin, cuda_emu::Schedule::kReverse, cuda_emu::Schedule::kRandom}) {
    cuda_emu::set_schedule(s, 3);
    expect_report([&] { launch_kernel(missing_barrier, dim3(1), dim3(64), 0, nullptr, d); }, cudaErrorLaunchFailure,
                  {"missing_barrier", "shared-memory race", "buf", "test_emu.cpp:", "block (0,0,0)", "thread ("});
  }
  cuda_emu::set_schedule(cuda_emu::Schedule::kRoundRobin);
  expect_report([&] { launch_kernel(no_barrier_at_all, dim3(1), dim3(64), 0, nullptr, d); },
                cudaErrorLaunchFailure, {"no_barrier_at_all", "nothing in this block has written", "test_emu.cpp:"});
  cudaFree(d);
}

// Every thread adds into one shared counter: a write-write race.
__global__ void racy_counter(int* out) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  count += 1;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = count;
}

TEST(EmuChecks, RacyKernelIsCaught) {
  int* d = dev_alloc<int>(1);
  expect_report([&] { launch_kernel(racy_counter, dim3(1), dim3(32), 0, nullptr, d); }, cudaErrorLaunchFailure,
                {"racy_counter", "shared-memory race", "count", "test_emu.cpp:"});
  cudaFree(d);
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = 1;
    __syncthreads();
  } else {
    __syncthreads();
    out[threadIdx.x] = 2;
  }
}

TEST(EmuChecks, DivergentBarrierIsReported) {
  int* d = dev_alloc<int>(64);
  expect_report([&] { launch_kernel(divergent_barrier, dim3(1), dim3(64), 0, nullptr, d); },
                cudaErrorLaunchFailure, {"divergent_barrier", "divergent __syncthreads", "test_emu.cpp:"});
  cudaFree(d);
}

__global__ void barrier_after_exit(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(EmuChecks, BarrierThatAnExitedThreadNeverReachesIsReported) {
  int* d = dev_alloc<int>(64);
  expect_report([&] { launch_kernel(barrier_after_exit, dim3(1), dim3(64), 0, nullptr, d); },
                cudaErrorLaunchFailure, {"barrier_after_exit", "exited", "__syncthreads", "test_emu.cpp:"});
  cudaFree(d);
}

__global__ void shuffle_missing_lane(float* out) {
  float x = float(threadIdx.x);
  if (threadIdx.x != 7) x += __shfl_xor_sync(0xffffffffu, x, 1);
  out[threadIdx.x] = x;
}

TEST(EmuChecks, CollectiveMissingALaneIsReported) {
  float* d = dev_alloc<float>(32);
  expect_report([&] { launch_kernel(shuffle_missing_lane, dim3(1), dim3(32), 0, nullptr, d); },
                cudaErrorLaunchFailure, {"shuffle_missing_lane", "__shfl_xor_sync", "lane 7"});
  cudaFree(d);
}

__global__ void shuffle_partial_warp(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

TEST(EmuChecks, FullMaskOnAPartialWarpIsReported) {
  float* d = dev_alloc<float>(48);
  expect_report([&] { launch_kernel(shuffle_partial_warp, dim3(1), dim3(48), 0, nullptr, d); },
                cudaErrorLaunchFailure, {"names lanes that do not exist", "warp 1 has 16 threads"});
  cudaFree(d);
}

__global__ void barrier_vs_shuffle(float* out) {
  float x = float(threadIdx.x);
  if (threadIdx.x % 32 < 16) __syncthreads();
  else x = __shfl_xor_sync(0xffffffffu, x, 1);
  out[threadIdx.x] = x;
}

TEST(EmuChecks, DeadlockPrintsWhereEveryThreadStands) {
  float* d = dev_alloc<float>(32);
  expect_report([&] { launch_kernel(barrier_vs_shuffle, dim3(1), dim3(32), 0, nullptr, d); },
                cudaErrorLaunchFailure, {"deadlock", "lane 0", "__syncthreads at", "__shfl_xor_sync mask 0xffffffff at"});
  cudaFree(d);
}

__global__ void shared_out_of_bounds(float* out, int n) {
  LTRAIN_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = 1.f;  // threadIdx.x reaches n: one past the end
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

TEST(EmuChecks, OutOfBoundsSharedAccessIsReported) {
  float* d = dev_alloc<float>(33);
  expect_report([&] { launch_kernel(shared_out_of_bounds, dim3(1), dim3(33), 32 * sizeof(float), nullptr, d, 32); },
                cudaErrorLaunchFailure, {"shared_out_of_bounds", "offset 128 of dynamic shared memory, which has 128 bytes", "thread (32,0,0)", "test_emu.cpp:"});
  cudaFree(d);
}

__global__ void global_out_of_bounds(float* out, int n) {
  out[threadIdx.x] = float(n);  // 65 threads, 64 elements
}

TEST(EmuChecks, OutOfBoundsGlobalAccessIsReported) {
  float* d = dev_alloc<float>(64);
  expect_report([&] { launch_kernel(global_out_of_bounds, dim3(1), dim3(65), 0, nullptr, d, 64); },
                cudaErrorLaunchFailure, {"global_out_of_bounds", "thread (64,0,0)", "out of bounds", "256 bytes", "test_emu.cpp:"});
  // a host pointer is not device memory either
  std::vector<float> host(64);
  expect_report([&] { launch_kernel(global_out_of_bounds, dim3(1), dim3(1), 0, nullptr, host.data(), 64); },
                cudaErrorLaunchFailure, {"not inside a device allocation"});
  cudaFree(d);
}

__global__ void misaligned_vector(uint4* out, const unsigned char* in) {
  out[threadIdx.x] = *reinterpret_cast<const uint4*>(in + 8 + 16 * threadIdx.x);
}

TEST(EmuChecks, MisalignedVectorAccessIsReported) {
  uint4* d = dev_alloc<uint4>(4);
  unsigned char* s = dev_alloc<unsigned char>(128);
  expect_report([&] { launch_kernel(misaligned_vector, dim3(1), dim3(4), 0, nullptr, d, s); },
                cudaErrorLaunchFailure, {"misaligned_vector", "16 bytes", "not 16-byte aligned"});
  cudaFree(d);
  cudaFree(s);
}

__global__ void big_shared(float* out) {
  LTRAIN_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = 1.f;
  out[threadIdx.x] = buf[threadIdx.x];
}

__global__ void static_and_dynamic_shared(float* out) {
  __shared__ float fixed[256];  // 1 KiB of static shared memory
  LTRAIN_DYNAMIC_SHARED(float, buf);
  fixed[threadIdx.x] = 1.f;
  buf[threadIdx.x] = fixed[threadIdx.x];
  out[threadIdx.x] = buf[threadIdx.x];
}

TEST(EmuChecks, SharedMemoryOverTheLimitIsRefused) {
  float* d = dev_alloc<float>(32);
  // over 48 KiB without the opt-in
  expect_report([&] { launch_kernel(big_shared, dim3(1), dim3(32), 64 * 1024, nullptr, d); },
                cudaErrorInvalidValue, {"big_shared", "65536 bytes of dynamic shared memory", "cudaFuncSetAttribute"});
  // with the opt-in it runs
  ASSERT_EQ(cudaFuncSetAttribute(big_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024), cudaSuccess);
  launch_kernel(big_shared, dim3(1), dim3(32), 64 * 1024, nullptr, d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << cuda_emu::last_error_message();
  // beyond the device's maximum the opt-in itself is refused
  expect_report([&] { cudaFuncSetAttribute(big_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024); },
                cudaErrorInvalidValue, {"big_shared", "allows at most"});
  // static shared memory counts: 47 KiB dynamic + 1 KiB static is 48 KiB, 1 byte more is over
  EXPECT_EQ(cuda_emu::static_shared_bytes(reinterpret_cast<const void*>(&static_and_dynamic_shared)), 1024u);
  float* d256 = dev_alloc<float>(256);
  launch_kernel(static_and_dynamic_shared, dim3(1), dim3(256), 47 * 1024, nullptr, d256);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << cuda_emu::last_error_message();
  cudaFree(d256);
  expect_report([&] { launch_kernel(static_and_dynamic_shared, dim3(1), dim3(32), 47 * 1024 + 4, nullptr, d); },
                cudaErrorInvalidValue, {"static_and_dynamic_shared", "1024 static"});
  cudaFree(d);
}

TEST(EmuChecks, LaunchLimitsAreRefused) {
  float* d = dev_alloc<float>(32);
  expect_report([&] { launch_kernel(big_shared, dim3(1), dim3(1025), 0, nullptr, d); },
                cudaErrorInvalidConfiguration, {"big_shared", "1025 threads"});
  expect_report([&] { launch_kernel(big_shared, dim3(1, 65536), dim3(32), 0, nullptr, d); },
                cudaErrorInvalidConfiguration, {"grid (1,65536,1)"});
  cudaFree(d);
}

__global__ void trapping(int* out) {
  if (threadIdx.x == 3) __trap();
  out[threadIdx.x] = 1;
}

TEST(EmuChecks, TrapIsReportedAndSticky) {
  int* d = dev_alloc<int>(32);
  cuda_emu::set_quiet(true);
  launch_kernel(trapping, dim3(1), dim3(32), 0, nullptr, d);
  cuda_emu::set_quiet(false);
  EXPECT_NE(cuda_emu::last_error_message().find("__trap"), std::string::npos);
  // sticky, as on a GPU: later calls fail until the context is reset
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  cuda_emu::clear_error();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(d);
}

// Block 1 reads what block 0 writes in the same launch: ordered on no GPU.
__global__ void cross_block(int* data) {
  if (blockIdx.x == 0) data[threadIdx.x] = 5;
  else data[32 + threadIdx.x] = data[threadIdx.x];
}

TEST(EmuChecks, GlobalRaceAcrossBlocksIsReportedInTheOptionalMode) {
  int* d = dev_alloc<int>(64);
  launch_kernel(cross_block, dim3(2), dim3(32), 0, nullptr, d);  // not checked by default
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  cuda_emu::set_global_race_check(true);
  expect_report([&] { launch_kernel(cross_block, dim3(2), dim3(32), 0, nullptr, d); }, cudaErrorLaunchFailure,
                {"cross_block", "global-memory race", "test_emu.cpp:"});
  cuda_emu::set_global_race_check(false);
  cudaFree(d);
}

// Within a block: thread 0 reads an element that thread 5 overwrites in place, with no barrier
// (the in-place gradient of a loss kernel that reads its target logit is this shape).
__global__ void in_place_without_barrier(float* x, float* loss) {
  if (threadIdx.x == 0) loss[0] = x[5];
  x[threadIdx.x] = 2.f * x[threadIdx.x];
}

TEST(EmuChecks, GlobalRaceWithinABlockIsReportedInTheOptionalMode) {
  float* x = dev_alloc<float>(32);
  float* loss = dev_alloc<float>(1);
  cudaMemset(x, 0, 32 * sizeof(float));
  cuda_emu::set_global_race_check(true);
  expect_report([&] { launch_kernel(in_place_without_barrier, dim3(1), dim3(32), 0, nullptr, x, loss); },
                cudaErrorLaunchFailure, {"in_place_without_barrier", "global-memory race", "of this block read it", "thread (5,0,0)"});
  cuda_emu::set_global_race_check(false);
  cudaFree(x);
  cudaFree(loss);
}

// ---- ldmatrix and cp.async ---------------------------------------------------------------------

// Lane 5's row starts 8 bytes into a row: ldmatrix needs 16-byte aligned rows.
__global__ void ldmatrix_misaligned(uint32_t* out) {
  __shared__ __align__(16) uint16_t s[32 * 16];
  for (int i = threadIdx.x; i < 32 * 16; i += 32) s[i] = uint16_t(i);
  __syncthreads();
  const int lane = threadIdx.x;
  uint32_t r[4];
  ltrain::cuda::ldmatrix_x4(r, s + lane * 16 + (lane == 5 ? 4 : 0));
  out[lane] = r[0] + r[1] + r[2] + r[3];
}

// ldmatrix reads shared memory only; lane 0 hands it a device (global) pointer.
__global__ void ldmatrix_global(uint32_t* out, const uint16_t* g) {
  __shared__ __align__(16) uint16_t s[32 * 8];
  for (int i = threadIdx.x; i < 32 * 8; i += 32) s[i] = uint16_t(i);
  __syncthreads();
  const int lane = threadIdx.x;
  uint32_t r[2];
  ltrain::cuda::ldmatrix_x2(r, lane == 0 ? static_cast<const void*>(g) : static_cast<const void*>(s + lane * 8));
  out[lane] = r[0] + r[1];
}

// A row nobody wrote (the rows of lanes 8..15 start in the unwritten second half).
__global__ void ldmatrix_unwritten(uint32_t* out) {
  __shared__ __align__(16) uint16_t s[32 * 8];
  for (int i = threadIdx.x; i < 16 * 8; i += 32) s[i] = uint16_t(i);
  __syncthreads();
  const int lane = threadIdx.x;
  uint32_t r[2];
  ltrain::cuda::ldmatrix_x2_trans(r, s + (lane < 8 ? lane : 16 + lane) * 8);
  out[lane] = r[0] + r[1];
}

TEST(EmuChecks, LdmatrixRowAddressesAreChecked) {
  uint32_t* d = dev_alloc<uint32_t>(32);
  uint16_t* g = dev_alloc<uint16_t>(64);
  expect_report([&] { launch_kernel(ldmatrix_misaligned, dim3(1), dim3(32), 0, nullptr, d); }, cudaErrorLaunchFailure,
                {"ldmatrix_misaligned", "block (0,0,0)", "thread (5,0,0)", "ldmatrix", "not 16-byte aligned",
                 "test_emu.cpp:"});
  expect_report([&] { launch_kernel(ldmatrix_global, dim3(1), dim3(32), 0, nullptr, d, g); }, cudaErrorLaunchFailure,
                {"ldmatrix_global", "thread (0,0,0)", "not in the block's shared memory", "test_emu.cpp:"});
  expect_report([&] { launch_kernel(ldmatrix_unwritten, dim3(1), dim3(32), 0, nullptr, d); }, cudaErrorLaunchFailure,
                {"ldmatrix_unwritten", "thread (8,0,0)", "which nothing in this block has written"});
  cudaFree(d);
  cudaFree(g);
}

// The issuing thread reads its copy's destination before waiting for it.
__global__ void cp_async_read_before_wait(uint4* out, const uint4* in) {
  __shared__ uint4 s[32];
  ltrain::cuda::cp_async_16(&s[threadIdx.x], &in[threadIdx.x]);
  ltrain::cuda::cp_async_commit();
  out[threadIdx.x] = s[threadIdx.x];
  ltrain::cuda::cp_async_wait<0>();
}

// __syncthreads does not complete cp.async: thread 1 reads thread 0's destination after the
// barrier, but thread 0 has not waited.
__global__ void cp_async_barrier_only(uint4* out, const uint4* in) {
  __shared__ uint4 s[32];
  ltrain::cuda::cp_async_16(&s[threadIdx.x], &in[threadIdx.x]);
  ltrain::cuda::cp_async_commit();
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x ^ 1];
  ltrain::cuda::cp_async_wait<0>();
}

// Waited for by the issuer, but read by another thread with no __syncthreads after the wait (in
// round-robin order thread 0 has waited when thread 1 reads its destination).
__global__ void cp_async_wait_without_barrier(uint4* out, const uint4* in) {
  __shared__ uint4 s[32];
  ltrain::cuda::cp_async_16(&s[threadIdx.x], &in[threadIdx.x]);
  ltrain::cuda::cp_async_commit();
  __syncthreads();
  ltrain::cuda::cp_async_wait_all();
  if (threadIdx.x % 2 == 1) out[threadIdx.x] = s[threadIdx.x - 1];
}

// wait_group 1 leaves the most recent group in flight; the thread then reads it.
__global__ void cp_async_wait_group_too_shallow(uint4* out, const uint4* in) {
  __shared__ uint4 a[32], b[32];
  ltrain::cuda::cp_async_16(&a[threadIdx.x], &in[threadIdx.x]);
  ltrain::cuda::cp_async_commit();
  ltrain::cuda::cp_async_16(&b[threadIdx.x], &in[threadIdx.x]);
  ltrain::cuda::cp_async_commit();
  ltrain::cuda::cp_async_wait<1>();
  out[threadIdx.x] = a[threadIdx.x];  // fine: group 1 has landed
  out[threadIdx.x] = b[threadIdx.x];  // group 2 has not
  ltrain::cuda::cp_async_wait<0>();
}

// Copies still in flight when the thread ends (committed, or never committed).
__global__ void cp_async_pending_at_exit(const uint4* in, int commit) {
  __shared__ uint4 s[32];
  ltrain::cuda::cp_async_16(&s[threadIdx.x], &in[threadIdx.x]);
  if (commit) ltrain::cuda::cp_async_commit();
  ltrain::cuda::cp_async_wait<1>();  // retires nothing: the only group is the most recent
}

// The last thread's source runs past the end of its allocation; and a zero-fill copy of 0
// bytes reads nothing (no report for it).
__global__ void cp_async_source_out_of_bounds(uint4* out, const uint4* in, int n) {
  __shared__ uint4 s[32];
  ltrain::cuda::cp_async_16_zfill(&s[threadIdx.x], &in[threadIdx.x], int(threadIdx.x) < n ? 16 : 0);
  ltrain::cuda::cp_async_wait_all();
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(EmuChecks, CpAsyncDestinationsAreOffLimitsUntilWaitedFor) {
  uint4* out = dev_alloc<uint4>(32);
  uint4* in = dev_alloc<uint4>(32);
  upload(in, std::vector<uint4>(32, uint4{1, 2, 3, 4}));
  expect_report([&] { launch_kernel(cp_async_read_before_wait, dim3(1), dim3(32), 0, nullptr, out, in); },
                cudaErrorLaunchFailure,
                {"cp_async_read_before_wait", "thread (0,0,0)", "reads __shared__", "the destination of a cp.async",
                 "not yet waited for", "test_emu.cpp:"});
  expect_report([&] { launch_kernel(cp_async_barrier_only, dim3(1), dim3(32), 0, nullptr, out, in); },
                cudaErrorLaunchFailure,
                {"cp_async_barrier_only", "thread (0,0,0)", "cp.async by thread (1,0,0)", "not yet waited for"});
  expect_report([&] { launch_kernel(cp_async_wait_without_barrier, dim3(1), dim3(32), 0, nullptr, out, in); },
                cudaErrorLaunchFailure,
                {"cp_async_wait_without_barrier", "shared-memory race", "thread (1,0,0)", "no __syncthreads"});
  expect_report([&] { launch_kernel(cp_async_wait_group_too_shallow, dim3(1), dim3(32), 0, nullptr, out, in); },
                cudaErrorLaunchFailure, {"cp_async_wait_group_too_shallow", "__shared__", "b", "not yet waited for"});
  expect_report([&] { launch_kernel(cp_async_pending_at_exit, dim3(1), dim3(32), 0, nullptr, in, 1); },
                cudaErrorLaunchFailure,
                {"cp_async_pending_at_exit", "thread (0,0,0)", "exited with 1 cp.async copy not waited for",
                 "test_emu.cpp:"});
  expect_report([&] { launch_kernel(cp_async_pending_at_exit, dim3(1), dim3(32), 0, nullptr, in, 0); },
                cudaErrorLaunchFailure, {"cp_async_pending_at_exit", "never committed"});
  // in bounds, with zero-fill copies that read nothing: runs, and the zero-filled rows are zeros
  launch_kernel(cp_async_source_out_of_bounds, dim3(1), dim3(32), 0, nullptr, out, in + 8, 24);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << cuda_emu::last_error_message();
  const std::vector<uint4> h = download(out, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(h[i].x, i < 24 ? 1u : 0u) << i;
  expect_report([&] { launch_kernel(cp_async_source_out_of_bounds, dim3(1), dim3(32), 0, nullptr, out, in + 8, 25); },
                cudaErrorLaunchFailure, {"cp_async_source_out_of_bounds", "thread (24,0,0)", "issues cp.async reading 16 bytes",
                 "past the end of the device allocation"});
  cudaFree(out);
  cudaFree(in);
}

// Thread order leaks into the result through an unsynchronized last-writer-wins: the schedules
// expose it (the race detector would too; it is off for this kernel's global memory).
__global__ void last_writer(int* out) { out[0] = int(threadIdx.x); }

TEST(EmuSchedules, OrderDependentResultsDifferBetweenSchedules) {
  int* d = dev_alloc<int>(1);
  cuda_emu::set_schedule(cuda_emu::Schedule::kRoundRobin);
  launch_kernel(last_writer, dim3(1), dim3(64), 0, nullptr, d);
  const int rr = download(d, 1)[0];
  cuda_emu::set_schedule(cuda_emu::Schedule::kReverse);
  launch_kernel(last_writer, dim3(1), dim3(64), 0, nullptr, d);
  const int rev = download(d, 1)[0];
  cuda_emu::set_schedule(cuda_emu::Schedule::kRoundRobin);
  EXPECT_EQ(rr, 63);
  EXPECT_EQ(rev, 0);
  cudaFree(d);
}

}  // namespace
