// Picks the backend for `device: auto|cpu|cuda`: auto is CUDA when this build has the CUDA
// backend and a GPU is visible, the CPU otherwise.
#include "ltrain/backends/factory.h"

#include "ltrain/core/check.h"
#include "ltrain/cuda/cuda_backend.h"

namespace ltrain {

bool cuda_backend_available() {
#ifdef LTRAIN_WITH_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& device, int local_rank, bool deterministic) {
  // One GPU per rank of a node: the local rank selects it.
  const int gpu = cuda_device_for_rank(local_rank);
  if (device == "cuda") return make_cuda_backend(gpu, deterministic);  // a clear UserError without a GPU
  if (device == "auto")
    return cuda_backend_available() ? make_cuda_backend(gpu, deterministic) : make_cpu_backend(DType::kF32);
  if (device != "cpu") user_error("device must be auto, cpu or cuda, got '", device, "'");
  return make_cpu_backend(DType::kF32);
}

}  // namespace ltrain
