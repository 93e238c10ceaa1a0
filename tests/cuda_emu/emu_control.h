// The CUDA emulator's controls and counters, for tests and the emulator's runtime. Plain C++:
// included by the emulator's own tests, never by product code.
//
// Environment (read at the first launch):
//   LTRAIN_EMU_SCHEDULE=round-robin|reverse|random|random:SEED   order of blocks and of threads
//                                                               between barriers (default round-robin)
//   LTRAIN_EMU_GLOBAL_RACES=1   also report global-memory races between the blocks of a launch
//   LTRAIN_EMU_DEVICE=h100|a100 the device profile (default h100)
//   LTRAIN_EMU_QUIET=1          do not print reports to stderr (they are still returned)
//   LTRAIN_EMU_REPORT=1         print the totals below (launches, mma, bytes, host syncs) at exit
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace cuda_emu {

enum class Schedule { kRoundRobin, kReverse, kRandom };
void set_schedule(Schedule s, uint64_t seed = 1);
Schedule schedule();
void set_global_race_check(bool on);
void set_quiet(bool on);

// The report of the last failed launch or runtime call, and clearing the sticky error (what a
// process would do by resetting the device) so that a test can go on after a provoked failure.
const std::string& last_error_message();
void clear_error();

struct LaunchStats {
  uint64_t mma = 0;                   // m16n8k16 products executed (per warp)
  uint64_t global_bytes_read = 0;
  uint64_t global_bytes_written = 0;
  uint64_t launches = 0;
};
LaunchStats last_launch_stats();
LaunchStats total_launch_stats();

// Fault injection: cublasLtMatmulAlgoGetHeuristic finds no algorithm (CUBLAS_STATUS_NOT_SUPPORTED,
// found = 0), as the real library does for an unsupported combination.
void set_cublaslt_finds_no_algorithm(bool on);

// Host synchronizations so far (stream, event and device syncs, blocking copies).
uint64_t host_sync_count();

// Static __shared__ bytes of a kernel (from the executable's symbol table).
size_t static_shared_bytes(const void* kernel);
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

}  // namespace cuda_emu
