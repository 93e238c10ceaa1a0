// The CUDA backend: bf16 compute (weights, activations, activation gradients), fp32 master
// (statistics, losses, RoPE tables, parameter gradients, master weights, AdamW moments).
// Kernels live in kernels/, matrix products go through cuBLASLt. Declared in every build; without
// CUDA (LTRAIN_WITH_CUDA undefined) cuda_device_count() is 0 and make_cuda_backend() refuses.
#pragma once
#include <cstddef>
#include <memory>

#include "ltrain/core/backend.h"

namespace ltrain {

// The cuBLASLt workspace every CUDA backend allocates when it is created (what cuBLAS recommends
// for Hopper). src/train/memory_plan.cpp counts it.
constexpr size_t kCudaMatmulWorkspaceBytes = size_t(32) << 20;

// CUDA devices this process can use; 0 without a driver, a device, or CUDA support in the build.
int cuda_device_count();
// The GPU of a rank: the ranks of a node take its devices in turn by local rank.
inline int cuda_device_for_rank(int local_rank) {
  const int n = cuda_device_count();
  return n > 0 ? local_rank % n : 0;
}

// The backend on `device`; a UserError when there is no such device.
// deterministic (config key `deterministic`): cuBLASLt may only choose algorithms without split-K
// or with the in-place (ordered) split-K reduction; the NCCL communicators made for the backend
// pin NCCL's algorithm (make_nccl_communicator, docs/cuda-backend.md, "Determinism"). Creating
// the backend changes nothing in the process's environment.
std::unique_ptr<Backend> make_cuda_backend(int device = 0, bool deterministic = false);

// The cudaStream_t a CUDA backend queues its work on (for communicators that order their own
// device work after it); nullptr for any other backend.
void* cuda_backend_stream(Backend& backend);

// Whether `backend` is a CUDA backend made with deterministic = true (its communicators must
// reduce in a fixed order too); false for any other backend.
bool cuda_backend_deterministic(const Backend& backend);

// cudaMemGetInfo of the current device (the one the backend selected): false without a device.
bool cuda_memory_info(size_t* free_bytes, size_t* total_bytes);

}  // namespace ltrain
