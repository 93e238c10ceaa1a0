// The backend factory: the one place that knows every backend (the CPU backend of core and the
// CUDA backend of src/cuda/). It lives above core so that core does not depend on the CUDA backend.
#pragma once
#include <memory>
#include <string>

#include "ltrain/core/backend.h"

namespace ltrain {

bool cuda_backend_available();
// device: "auto" (CUDA when available, else CPU), "cpu" or "cuda". With CUDA, local_rank (the
// rank within the node) selects the GPU. deterministic (config key `deterministic`): see
// make_cuda_backend; the CPU backend is deterministic either way.
std::unique_ptr<Backend> make_backend(const std::string& device, int local_rank = 0, bool deterministic = false);

}  // namespace ltrain
