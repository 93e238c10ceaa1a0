// Internal interface between the parts of the CUDA emulator (tests/cuda_emu/): the device
// allocation table kept by the runtime (runtime.cpp), used by the kernel access checks
// (emu_core.cpp) and by the cuBLASLt subset (cublaslt_emu.cpp). Not included by kernels.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace cuda_emu {

// Empty when [p, p + bytes) lies inside one live device allocation; otherwise a one-line
// description of what is wrong ("<what>: 0x... (+N bytes) is not inside a device allocation"),
// naming the nearest allocation.
std::string check_device_range(const void* p, size_t bytes, const char* what);

// The allocation holding p: its base and size, or false.
bool find_allocation(const void* p, uintptr_t* base, size_t* size);

// Sets the sticky error that cudaGetLastError / cudaPeekAtLastError / the next synchronizing
// call return, and remembers `message` (printed to stderr by the caller) for last_error_message().
void set_error(cudaError_t err, const std::string& message);
const std::string& last_error_message();

// The emulated device: "a100" or "h100" (LTRAIN_EMU_DEVICE, default h100).
const cudaDeviceProp& device_properties();

// Host synchronizations (stream/device/event syncs, blocking copies) since the start.
uint64_t host_sync_count();
void count_host_sync();

}  // namespace cuda_emu
