#pragma once
#include <memory>
#include <string>

#include "ltrain/core/backend.h"

namespace ltrain {

bool cuda_backend_available();
// device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace ltrain
