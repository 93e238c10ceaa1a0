// The CUDA runtime and cuBLASLt headers with the library error checks (CUDA_CHECK, CUBLAS_CHECK,
// CUDA_CHECK_LAUNCH), which are defined with NCCL_CHECK and MPI_CHECK in one family in
// include/ltrain/core/check_lib.h.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "ltrain/core/check_lib.h"
