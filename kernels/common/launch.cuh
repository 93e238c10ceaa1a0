// How the kernels are launched, and where their dynamic shared memory comes from: the two
// things that differ between a real GPU and the CUDA emulator (tests/cuda_emu/,
// -DLTRAIN_CUDA_EMU=ON), which compiles these same kernel sources as host C++.
//
//   launch_kernel(kernel, grid, block, smem, stream, args...)   instead of kernel<<<...>>>(args...)
//   LTRAIN_DYNAMIC_SHARED(float, name);                         instead of extern __shared__ float name[]
//
// With nvcc both expand to the plain CUDA forms, so the GPU build is unchanged. The third hook,
// the inline-PTX wrappers, are in common/mma.cuh.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace ltrain::cuda {

template <class... P, class... A>
inline void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, A&&... args) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::launch(kernel, grid, block, smem, stream, std::forward<A>(args)...);
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
#endif
}

}  // namespace ltrain::cuda

#ifdef LTRAIN_CUDA_EMU
#define LTRAIN_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::cuda_emu::dynamic_shared())
#else
#define LTRAIN_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
