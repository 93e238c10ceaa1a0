// Picks the backend for `device: auto|cpu|cuda`.
#include "ltrain/core/backend_factory.h"

#include "ltrain/core/check.h"

namespace ltrain {

bool cuda_backend_available() {
  // The CUDA backend (issue: CUDA backend) registers here once it exists; until then every build
  // trains on the CPU.
  return false;
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cuda") {
    if (!cuda_backend_available())
      user_error("device: cuda was requested, but this build has no CUDA backend yet; use device=cpu or device=auto");
  } else if (device != "cpu" && device != "auto") {
    user_error("device must be auto, cpu or cuda, got '", device, "'");
  }
  return make_cpu_backend(DType::kF32);
}

}  // namespace ltrain
