// The CUDA emulator's kernel-side header. The -DLTRAIN_CUDA_EMU=ON build force-includes it
// (g++ -include) into every kernel source (kernels/*.cu, compiled as C++) and into the
// emulator's own test kernels. It makes CUDA C++ device code valid host C++:
//  - the qualifiers __global__, __device__, __host__ are empty, __shared__ is `static` (one
//    instance per kernel, reset to NaN bytes at each block start: the emulator runs one block
//    at a time on one OS thread);
//  - threadIdx, blockIdx, blockDim, gridDim read the current fiber's coordinates;
//  - __syncthreads and the warp intrinsics are calls into the emulator's scheduler
//    (emu_core.cpp), which checks them;
//  - the real CUDA headers (cuda_runtime.h, cuda_bf16.h) are included first, so the types and
//    host functions are NVIDIA's own.
// The kernel sources use three hooks of their own (kernels/common/launch.cuh and common/mma.cuh's
// inline-PTX wrappers): launch_kernel, LTRAIN_DYNAMIC_SHARED, and the instructions below
// (cuda_emu::mma_m16n8k16_bf16, ldmatrix_m8n8, cp_async_16 and its group operations).
//
// Test infrastructure only: nothing in src/ or the nvcc build includes this file.
#pragma once

#ifndef LTRAIN_CUDA_EMU
#error "tests/cuda_emu/emu.h is for the -DLTRAIN_CUDA_EMU=ON build only"
#endif

#define __global__
#define __device__
#define __host__
#define __shared__ static
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#undef __launch_bounds__
#define __launch_bounds__(...)

namespace cuda_emu {

// The coordinates of the thread now running (set by the scheduler before each switch).
struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern ThreadCoords* g_coords;

// ---- launches ----------------------------------------------------------------------------------
// Runs `body(closure)` once per thread of every block of the grid, after the checks a GPU makes
// at launch (block size, grid size, shared memory). Returns the launch's error (also left as the
// sticky error for cudaGetLastError, with a report on stderr).
// `params` (params_bytes) holds the converted arguments: the launch's parameter space, which
// the threads may read (to copy their arguments) but not write.
cudaError_t launch_raw(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
                       cudaStream_t stream, void (*body)(void*), void* closure, size_t closure_bytes,
                       const void* params, size_t params_bytes);

// kernel<<<grid, block, smem, stream>>>(args...): the arguments are converted to the kernel's
// parameter types once, as in a launch, and every thread receives its own copy.
template <class... P, class... A>
cudaError_t launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  using Params = std::tuple<std::decay_t<P>...>;
  struct Closure {
    void (*kernel)(P...);
    const Params* params;
  };
  const Params params(std::forward<A>(args)...);
  Closure closure{kernel, &params};
  auto body = [](void* c) {
    const Closure* cl = static_cast<const Closure*>(c);
    Params copy = *cl->params;
    std::apply(cl->kernel, copy);
  };
  return launch_raw(reinterpret_cast<const void*>(kernel), grid, block, smem, stream, body, &closure,
                    sizeof(closure), &params, sizeof(params));
}

// The current block's dynamic shared memory: a heap buffer of exactly the launch's size.
void* dynamic_shared();

// ---- device intrinsics -------------------------------------------------------------------------
void syncthreads();
[[noreturn]] void trap();
float shfl_xor(unsigned mask, float v, int lane_mask, int width);
double shfl_xor(unsigned mask, double v, int lane_mask, int width);
int shfl_xor(unsigned mask, int v, int lane_mask, int width);
unsigned shfl_xor(unsigned mask, unsigned v, int lane_mask, int width);
float shfl_idx(unsigned mask, float v, int src_lane, int width);
int shfl_idx(unsigned mask, int v, int src_lane, int width);
float shfl_down(unsigned mask, float v, unsigned delta, int width);
float shfl_up(unsigned mask, float v, unsigned delta, int width);
unsigned ballot(unsigned mask, int predicate);
void syncwarp(unsigned mask);

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c with d = c (in place): a warp
// collective. Fragment layout from the PTX ISA; see emu_core.cpp.
void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 r, [row]: a warp collective (all 32
// lanes). num matrices (1, 2, 4); lanes 8i..8i+7 give the 16-byte-aligned shared-memory
// addresses of the 8 rows of matrix i (the other lanes' addresses are ignored). Lane l receives
// in r[i] elements (row l/4, columns 2(l%4), 2(l%4)+1) of matrix i, or of its transpose with
// trans. Each row read is checked as a shared-memory read of the lane that addressed it.
void ldmatrix_m8n8(uint32_t* r, const void* row, int num, bool trans);

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: reads src_bytes (0..16) from global
// memory now (checked and counted) and records the copy; the 16 destination bytes (the rest
// zero) are written only when a wait retires its group. Until then any access to them is an
// error, as is a copy still pending when its thread exits.
void cp_async_16(void* dst, const void* src, int src_bytes);
// cp.async.commit_group: the thread's uncommitted copies become one group (possibly empty).
void cp_async_commit_group();
// cp.async.wait_group n: performs the copies of every committed group but the n most recent.
void cp_async_wait_group(int n);
// cp.async.wait_all: commit_group, then wait_group 0.
void cp_async_wait_all();

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::g_coords->thread_idx)
#define blockIdx (::cuda_emu::g_coords->block_idx)
#define blockDim (::cuda_emu::g_coords->block_dim)
#define gridDim (::cuda_emu::g_coords->grid_dim)

__attribute__((always_inline)) inline void __syncthreads() { ::cuda_emu::syncthreads(); }
__attribute__((always_inline)) inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cuda_emu::syncwarp(mask); }
[[noreturn]] __attribute__((always_inline)) inline void __trap() { ::cuda_emu::trap(); }
template <class T>
__attribute__((always_inline)) inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::cuda_emu::shfl_xor(mask, v, lane_mask, width);
}
template <class T>
__attribute__((always_inline)) inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return ::cuda_emu::shfl_idx(mask, v, src_lane, width);
}
template <class T>
__attribute__((always_inline)) inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::cuda_emu::shfl_down(mask, v, delta, width);
}
template <class T>
__attribute__((always_inline)) inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::cuda_emu::shfl_up(mask, v, delta, width);
}
__attribute__((always_inline)) inline unsigned __ballot_sync(unsigned mask, int predicate) { return ::cuda_emu::ballot(mask, predicate); }

// Device math that has no host declaration. Fast-math intrinsics are computed exactly here
// (the hardware's approximations are within the kernels' tolerances by design).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }

// The runtime's typed overloads, which cuda_runtime.h declares for nvcc only.
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}
template <class T>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* entry) {
  return ::cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(entry));
}
