// Error checks for the libraries ltrain calls: the CUDA runtime, cuBLASLt, NCCL and MPI, one
// family, all reporting through ltrain::fatal_error (rank, file:line, function, the failing call,
// then abort every rank).
//   CUDA_CHECK(cudaMalloc(...));   CUBLAS_CHECK(cublasLtMatmul(...));
//   launch<<<...>>>(...); CUDA_CHECK_LAUNCH();   // after every kernel launch
//   NCCL_CHECK(ncclAllReduce(...));   MPI_CHECK(MPI_Allreduce(...));
// Usable from .cu and plain .cpp files, and in builds without CUDA, NCCL or MPI: the header
// includes no library header, so a macro only needs its library where it is used (the file that
// calls cudaMalloc includes cuda_runtime.h anyway; kernels get both CUDA headers through
// kernels/common/cuda_check.cuh).
#pragma once
#include <string>

#include "ltrain/core/check.h"

namespace ltrain {

// `library` ("CUDA", "cuBLASLt"), the library's name for the error and its message, and the
// device the calling thread was on (-1 when not known): one line for fatal_error.
[[noreturn]] inline void report_library_error(const char* file, int line, const char* func, const char* expr,
                                              const char* library, const char* name, const char* msg,
                                              int device) {
  std::string text = std::string(library) + " error " + name + ": " + msg + " (device " +
                     std::to_string(device) + ")";
  fatal_error(file, line, func, expr, text);
}

// The device of the calling thread for a CUDA error report. cudaGetDevice may itself fail once the
// context is broken; -1 then.
#define LTRAIN_CUDA_CURRENT_DEVICE_()                                                           \
  ([] {                                                                                         \
    int ltrain_dev_ = -1;                                                                       \
    cudaGetDevice(&ltrain_dev_);                                                                \
    return ltrain_dev_;                                                                         \
  }())

}  // namespace ltrain

#define CUDA_CHECK(expr)                                                                        \
  do {                                                                                          \
    const cudaError_t ltrain_err_ = (expr);                                                     \
    if (ltrain_err_ != cudaSuccess)                                                             \
      ::ltrain::report_library_error(__FILE__, __LINE__, __func__, #expr, "CUDA",               \
                                     cudaGetErrorName(ltrain_err_), cudaGetErrorString(ltrain_err_), \
                                     LTRAIN_CUDA_CURRENT_DEVICE_());                            \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                      \
  do {                                                                                          \
    const cublasStatus_t ltrain_st_ = (expr);                                                   \
    if (ltrain_st_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::ltrain::report_library_error(__FILE__, __LINE__, __func__, #expr, "cuBLASLt",           \
                                     cublasLtGetStatusName(ltrain_st_),                         \
                                     cublasLtGetStatusString(ltrain_st_), LTRAIN_CUDA_CURRENT_DEVICE_()); \
  } while (0)

// Launch errors (bad configuration, too much shared memory) surface at the next runtime call;
// checking right after the launch names the kernel that caused them.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// NCCL's message alone (its error strings name the library already).
#define NCCL_CHECK(call)                                                                        \
  do {                                                                                          \
    const ncclResult_t ltrain_nccl_rc_ = (call);                                                \
    if (ltrain_nccl_rc_ != ncclSuccess)                                                         \
      ::ltrain::fatal_error(__FILE__, __LINE__, __func__, #call, ncclGetErrorString(ltrain_nccl_rc_)); \
  } while (0)

// MPI's message for the error code.
#define MPI_CHECK(call)                                                                         \
  do {                                                                                          \
    const int ltrain_mpi_rc_ = (call);                                                          \
    if (ltrain_mpi_rc_ != MPI_SUCCESS) {                                                        \
      char ltrain_mpi_msg_[MPI_MAX_ERROR_STRING];                                               \
      int ltrain_mpi_len_ = 0;                                                                  \
      MPI_Error_string(ltrain_mpi_rc_, ltrain_mpi_msg_, &ltrain_mpi_len_);                      \
      ::ltrain::fatal_error(__FILE__, __LINE__, __func__, #call, ltrain_mpi_msg_);              \
    }                                                                                           \
  } while (0)
