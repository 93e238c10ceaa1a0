// Error checking for CUDA runtime and cuBLASLt calls, usable from .cu and plain .cpp files.
//   CUDA_CHECK(cudaMalloc(...));     CUBLAS_CHECK(cublasLtMatmul(...));
//   launch<<<...>>>(...); CUDA_CHECK_LAUNCH();   // after every kernel launch
// Every failure goes through one [[noreturn]] reporter that adds the device and the library's
// message, then ltrain::fatal_error prints rank, file:line, function and expression and aborts
// every rank.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "ltrain/core/check.h"

namespace ltrain::cuda {

[[noreturn]] inline void report_library_error(const char* file, int line, const char* func,
                                              const char* expr, const char* library,
                                              const char* name, const char* msg) {
  int device = -1;
  cudaGetDevice(&device);  // may itself fail once the context is broken; -1 then
  std::string text = std::string(library) + " error " + name + ": " + msg + " (device " +
                     std::to_string(device) + ")";
  ::ltrain::fatal_error(file, line, func, expr, text);
}

}  // namespace ltrain::cuda

#define CUDA_CHECK(expr)                                                                        \
  do {                                                                                          \
    const cudaError_t ltrain_err_ = (expr);                                                     \
    if (ltrain_err_ != cudaSuccess)                                                             \
      ::ltrain::cuda::report_library_error(__FILE__, __LINE__, __func__, #expr, "CUDA",         \
                                           cudaGetErrorName(ltrain_err_),                       \
                                           cudaGetErrorString(ltrain_err_));                    \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                      \
  do {                                                                                          \
    const cublasStatus_t ltrain_st_ = (expr);                                                   \
    if (ltrain_st_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::ltrain::cuda::report_library_error(__FILE__, __LINE__, __func__, #expr, "cuBLASLt",     \
                                           cublasLtGetStatusName(ltrain_st_),                   \
                                           cublasLtGetStatusString(ltrain_st_));                \
  } while (0)

// Launch errors (bad configuration, too much shared memory) surface at the next runtime call;
// checking right after the launch names the kernel that caused them.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
