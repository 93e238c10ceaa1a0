// The CUDA backend: bf16 compute (weights, activations, activation gradients), fp32 master
// (statistics, losses, RoPE tables, parameter gradients, master weights, AdamW moments).
// Kernels live in kernels/, matrix products go through cuBLASLt. Declared in every build; without
// CUDA (LTRAIN_WITH_CUDA undefined) cuda_device_count() is 0 and make_cuda_backend() refuses.
#pragma once
#include <memory>

#include "ltrain/core/backend.h"

namespace ltrain {

// CUDA devices this process can use; 0 without a driver, a device, or CUDA support in the build.
int cuda_device_count();

// The backend on `device`; a UserError when there is no such device.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

}  // namespace ltrain
