// The subset of the CUDA runtime API that the CUDA backend, the kernels' launchers, bench and the
// tests call, for the CUDA emulator. The declarations are NVIDIA's (cuda_runtime_api.h), so the
// signatures cannot drift from the real library's.
//
//  - Device memory is host heap memory (256-byte aligned), filled with 0xFF bytes (NaN in fp32
//    and bf16) at cudaMalloc, and listed in an allocation table: kernels' accesses, copies,
//    memsets and cuBLASLt operands are checked against it byte for byte.
//  - Streams run in order: work runs when it is enqueued, so every stream is always idle;
//    events record the host clock.
//  - One device, with the properties of an H100 SXM (default) or an A100 SXM
//    (LTRAIN_EMU_DEVICE=h100|a100).
//  - Errors: configuration errors are returned once; a failed kernel (cudaErrorLaunchFailure)
//    is sticky as on a GPU: every later call returns it until cuda_emu::clear_error().
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>

#include "emu_control.h"
#include "emu_runtime.h"

namespace cuda_emu {
namespace {

struct State {
  std::mutex mu;
  std::map<uintptr_t, size_t> allocs;  // base -> requested bytes
  std::map<uintptr_t, size_t> pinned;  // page-locked host memory (cudaMallocHost): base -> bytes
  size_t allocated = 0;
  std::set<cudaStream_t> streams;
  struct Event {
    bool timing = true;
    bool recorded = false;
    double t = 0;
  };
  std::map<cudaEvent_t, Event> events;
  cudaError_t last = cudaSuccess;   // returned (and cleared, unless sticky) by cudaGetLastError
  cudaError_t sticky = cudaSuccess;
  std::string message;              // the report of the most recent error, of code message_code
  cudaError_t message_code = cudaSuccess;
  uint64_t syncs = 0;
  int device = 0;
};

// Never destroyed: a static backend (a test's) frees its memory after static destructors ran.
State& st() {
  static State* s = new State;
  return *s;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

cudaDeviceProp make_props(bool a100) {
  cudaDeviceProp p;
  std::memset(&p, 0, sizeof(p));
  std::snprintf(p.name, sizeof(p.name), "%s", a100 ? "NVIDIA A100-SXM4-80GB (ltrain CUDA emulator)"
                                                  : "NVIDIA H100 80GB HBM3 (ltrain CUDA emulator)");
  p.totalGlobalMem = size_t(80) << 30;
  p.sharedMemPerBlock = 48 * 1024;
  p.regsPerBlock = 65536;
  p.warpSize = 32;
  p.memPitch = size_t(1) << 31;
  p.maxThreadsPerBlock = 1024;
  p.maxThreadsDim[0] = 1024;
  p.maxThreadsDim[1] = 1024;
  p.maxThreadsDim[2] = 64;
  p.maxGridSize[0] = 2147483647;
  p.maxGridSize[1] = 65535;
  p.maxGridSize[2] = 65535;
  p.totalConstMem = 65536;
  p.major = a100 ? 8 : 9;
  p.minor = 0;
  p.multiProcessorCount = a100 ? 108 : 132;
  p.concurrentKernels = 1;
  p.unifiedAddressing = 1;
  p.memoryBusWidth = a100 ? 5120 : 5120;
  p.l2CacheSize = a100 ? 40 * 1024 * 1024 : 50 * 1024 * 1024;
  p.maxThreadsPerMultiProcessor = 2048;
  p.sharedMemPerMultiprocessor = a100 ? 167936 : 233472;
  p.regsPerMultiprocessor = 65536;
  p.sharedMemPerBlockOptin = a100 ? 166912 : 232448;
  p.maxBlocksPerMultiProcessor = 32;
  p.reservedSharedMemPerBlock = 1024;
  p.asyncEngineCount = 2;
  return p;
}

// A failed kernel poisons the context, as on a GPU.
#define LTRAIN_EMU_STICKY()                        \
  do {                                             \
    if (st().sticky != cudaSuccess) return st().sticky; \
  } while (0)

cudaError_t fail(cudaError_t err, const std::string& msg) {
  set_error(err, msg);
  std::fprintf(stderr, "%s\n", msg.c_str());
  return err;
}

bool valid_stream(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread || st().streams.count(s) > 0;
}

}  // namespace

const cudaDeviceProp& device_properties() {
  static const cudaDeviceProp p = [] {
    const char* d = std::getenv("LTRAIN_EMU_DEVICE");
    const std::string v = d ? d : "h100";
    if (v != "h100" && v != "a100") {
      std::fprintf(stderr, "cuda_emu: LTRAIN_EMU_DEVICE=%s: use h100 or a100\n", d);
      std::exit(2);
    }
    return make_props(v == "a100");
  }();
  return p;
}

bool find_allocation(const void* ptr, uintptr_t* base, size_t* size) {
  std::lock_guard<std::mutex> lock(st().mu);
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  auto it = st().allocs.upper_bound(p);
  if (it == st().allocs.begin()) return false;
  --it;
  if (p >= it->first + std::max<size_t>(it->second, 1)) return false;
  *base = it->first;
  *size = it->second;
  return true;
}

std::string check_device_range(const void* ptr, size_t bytes, const char* what) {
  std::lock_guard<std::mutex> lock(st().mu);
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  auto it = st().allocs.upper_bound(p);
  std::ostringstream os;
  if (it != st().allocs.begin()) {
    auto prev = std::prev(it);
    if (p >= prev->first && p < prev->first + std::max<size_t>(prev->second, 1)) {
      if (p + bytes <= prev->first + prev->second) return "";
      os << what << ": " << ptr << " (+" << bytes << " bytes) runs " << (p + bytes - prev->first - prev->second)
         << " bytes past the end of the device allocation at " << reinterpret_cast<void*>(prev->first) << " ("
         << prev->second << " bytes)";
      return os.str();
    }
    const uintptr_t gap = p - prev->first - prev->second;
    if (gap < (uintptr_t(1) << 20)) {
      os << what << ": " << ptr << " (+" << bytes << " bytes) is out of bounds: it starts " << gap
         << " bytes past the end of the device allocation at " << reinterpret_cast<void*>(prev->first) << " ("
         << prev->second << " bytes)";
      return os.str();
    }
  }
  os << what << ": " << ptr << " (+" << bytes << " bytes) is not inside a device allocation (a host pointer or a freed buffer?)";
  return os.str();
}

void set_error(cudaError_t err, const std::string& message) {
  State& s = st();
  s.last = err;
  s.message = message;
  s.message_code = err;
  if (err == cudaErrorLaunchFailure || err == cudaErrorIllegalAddress) s.sticky = err;
}

const std::string& last_error_message() { return st().message; }

void clear_error() {
  st().last = cudaSuccess;
  st().sticky = cudaSuccess;
  st().message.clear();
  st().message_code = cudaSuccess;
}

uint64_t host_sync_count() { return st().syncs; }
void count_host_sync() { ++st().syncs; }

namespace {
// LTRAIN_EMU_REPORT=1: one line of totals on stderr at exit (launches, mma, global bytes, syncs).
const bool g_report_at_exit = [] {
  const char* r = std::getenv("LTRAIN_EMU_REPORT");
  if (r && std::atoi(r) != 0)
    std::atexit([] {
      const LaunchStats t = total_launch_stats();
      std::fprintf(stderr,
                   "cuda_emu: %llu launches, %llu mma.m16n8k16 (per warp), %.3f GB read and %.3f GB written "
                   "by kernels, %llu host synchronizations\n",
                   (unsigned long long)t.launches, (unsigned long long)t.mma, double(t.global_bytes_read) * 1e-9,
                   double(t.global_bytes_written) * 1e-9, (unsigned long long)host_sync_count());
    });
  return true;
}();
}  // namespace

}  // namespace cuda_emu

using cuda_emu::st;
using cuda_emu::valid_stream;

namespace {
// Whether [p, p + n) lies in page-locked memory from cudaMallocHost / cudaHostAlloc.
bool is_pinned(const void* p, size_t n) {
  std::lock_guard<std::mutex> lock(st().mu);
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = st().pinned.upper_bound(a);
  if (it == st().pinned.begin()) return false;
  --it;
  return a + n <= it->first + it->second;
}
}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  LTRAIN_EMU_STICKY();
  if (device != 0) return cuda_emu::fail(cudaErrorInvalidDevice, "cuda_emu: cudaSetDevice(" + std::to_string(device) + "): the emulator has one device, 0");
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = st().device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  *prop = cuda_emu::device_properties();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  const cudaDeviceProp& p = cuda_emu::device_properties();
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(p.sharedMemPerBlockOptin); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(p.sharedMemPerBlock); break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  LTRAIN_EMU_STICKY();
  std::lock_guard<std::mutex> lock(st().mu);
  *total_bytes = cuda_emu::device_properties().totalGlobalMem;
  *free_bytes = *total_bytes - std::min(*total_bytes, st().allocated);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  LTRAIN_EMU_STICKY();
  *ptr = nullptr;
  std::lock_guard<std::mutex> lock(st().mu);
  if (st().allocated + bytes > cuda_emu::device_properties().totalGlobalMem) {
    cuda_emu::set_error(cudaErrorMemoryAllocation, "cuda_emu: cudaMalloc of " + std::to_string(bytes) + " bytes: out of device memory");
    return cudaErrorMemoryAllocation;
  }
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  void* p = std::aligned_alloc(256, rounded);
  if (!p) {
    cuda_emu::set_error(cudaErrorMemoryAllocation, "cuda_emu: cudaMalloc of " + std::to_string(bytes) + " bytes: the host is out of memory");
    return cudaErrorMemoryAllocation;
  }
  std::memset(p, 0xFF, rounded);  // NaN in fp32 and bf16: unwritten outputs show
  st().allocs[reinterpret_cast<uintptr_t>(p)] = bytes;
  st().allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  LTRAIN_EMU_STICKY();
  if (!ptr) return cudaSuccess;
  std::unique_lock<std::mutex> lock(st().mu);
  auto it = st().allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == st().allocs.end()) {
    lock.unlock();
    std::ostringstream os;
    os << "cuda_emu: cudaFree(" << ptr << "): not the start of a live device allocation";
    return cuda_emu::fail(cudaErrorInvalidValue, os.str());
  }
  st().allocated -= it->second;
  st().allocs.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  LTRAIN_EMU_STICKY();
  void* p = std::aligned_alloc(4096, (std::max<size_t>(bytes, 1) + 4095) / 4096 * 4096);
  if (!p) return cuda_emu::fail(cudaErrorMemoryAllocation, "cuda_emu: cudaMallocHost of " + std::to_string(bytes) + " bytes failed");
  std::lock_guard<std::mutex> lock(st().mu);
  st().pinned[reinterpret_cast<uintptr_t>(p)] = bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) { return cudaMallocHost(ptr, bytes); }

cudaError_t cudaFreeHost(void* ptr) {
  LTRAIN_EMU_STICKY();
  if (!ptr) return cudaSuccess;
  std::unique_lock<std::mutex> lock(st().mu);
  auto it = st().pinned.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == st().pinned.end()) {
    lock.unlock();
    std::ostringstream os;
    os << "cuda_emu: cudaFreeHost(" << ptr << "): not the start of a live cudaMallocHost allocation";
    return cuda_emu::fail(cudaErrorInvalidValue, os.str());
  }
  st().pinned.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

// Streams run in order at the call, so an asynchronous copy is complete when it returns. A copy
// between the device and pageable host memory counts as a host synchronization, as on a GPU:
// device -> pageable returns only once the copy is done, and pageable -> device may wait for the
// stream (CUDA runtime API, "API synchronization behavior"). Page-locked memory does neither.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  LTRAIN_EMU_STICKY();
  if (count == 0) return cudaSuccess;
  if (!valid_stream(stream)) return cuda_emu::fail(cudaErrorInvalidResourceHandle, "cuda_emu: cudaMemcpyAsync on a destroyed or unknown stream");
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyHostToHost) {
    std::memmove(dst, src, count);
    return cudaSuccess;
  }
  std::string err;
  if (kind == cudaMemcpyDefault) {
    // unified addressing: the table tells which side each pointer is on
  } else {
    if (dst_dev) err = cuda_emu::check_device_range(dst, count, "cudaMemcpy destination");
    if (err.empty() && src_dev) err = cuda_emu::check_device_range(src, count, "cudaMemcpy source");
  }
  if (!err.empty()) return cuda_emu::fail(cudaErrorInvalidValue, "cuda_emu: " + err);
  if ((kind == cudaMemcpyDeviceToHost && !is_pinned(dst, count)) ||
      (kind == cudaMemcpyHostToDevice && !is_pinned(src, count)))
    cuda_emu::count_host_sync();
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  const bool pageable = (kind == cudaMemcpyDeviceToHost && !is_pinned(dst, count)) ||
                        (kind == cudaMemcpyHostToDevice && !is_pinned(src, count));
  if (!pageable) cuda_emu::count_host_sync();  // cudaMemcpyAsync counts the pageable ones
  return cudaMemcpyAsync(dst, src, count, kind, nullptr);
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  LTRAIN_EMU_STICKY();
  if (count == 0) return cudaSuccess;
  if (!valid_stream(stream)) return cuda_emu::fail(cudaErrorInvalidResourceHandle, "cuda_emu: cudaMemsetAsync on a destroyed or unknown stream");
  const std::string err = cuda_emu::check_device_range(ptr, count, "cudaMemset");
  if (!err.empty()) return cuda_emu::fail(cudaErrorInvalidValue, "cuda_emu: " + err);
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  cuda_emu::count_host_sync();
  return cudaMemsetAsync(ptr, value, count, nullptr);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  LTRAIN_EMU_STICKY();
  static int counter = 0;
  *stream = reinterpret_cast<cudaStream_t>(new int(++counter));
  st().streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!st().streams.erase(stream)) return cudaErrorInvalidResourceHandle;
  delete reinterpret_cast<int*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  LTRAIN_EMU_STICKY();
  if (!valid_stream(stream)) return cudaErrorInvalidResourceHandle;
  cuda_emu::count_host_sync();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  LTRAIN_EMU_STICKY();
  cuda_emu::count_host_sync();
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  LTRAIN_EMU_STICKY();
  if (!valid_stream(stream) || !st().events.count(event)) return cudaErrorInvalidResourceHandle;
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  LTRAIN_EMU_STICKY();
  return valid_stream(stream) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  LTRAIN_EMU_STICKY();
  static int counter = 0;
  *event = reinterpret_cast<cudaEvent_t>(new int(++counter));
  st().events[*event].timing = !(flags & cudaEventDisableTiming);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!st().events.erase(event)) return cudaErrorInvalidResourceHandle;
  delete reinterpret_cast<int*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  LTRAIN_EMU_STICKY();
  auto it = st().events.find(event);
  if (it == st().events.end() || !valid_stream(stream)) return cudaErrorInvalidResourceHandle;
  it->second.recorded = true;
  it->second.t = cuda_emu::now_ms();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  LTRAIN_EMU_STICKY();
  if (!st().events.count(event)) return cudaErrorInvalidResourceHandle;
  cuda_emu::count_host_sync();
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  LTRAIN_EMU_STICKY();
  return st().events.count(event) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  LTRAIN_EMU_STICKY();
  auto a = st().events.find(start), b = st().events.find(end);
  if (a == st().events.end() || b == st().events.end()) return cudaErrorInvalidResourceHandle;
  if (!a->second.timing || !b->second.timing) return cudaErrorInvalidResourceHandle;
  if (!a->second.recorded || !b->second.recorded) return cudaErrorInvalidResourceHandle;
  *ms = float(b->second.t - a->second.t);
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  LTRAIN_EMU_STICKY();
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) return cuda_emu::set_max_dynamic_shared(func, value);
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
    return value >= -1 && value <= 100 ? cudaSuccess : cudaErrorInvalidValue;
  return cudaErrorInvalidValue;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  LTRAIN_EMU_STICKY();
  std::memset(attr, 0, sizeof(*attr));
  attr->sharedSizeBytes = cuda_emu::static_shared_bytes(func);
  attr->maxThreadsPerBlock = 1024;
  attr->maxDynamicSharedSizeBytes = int(cuda_emu::device_properties().sharedMemPerBlock - attr->sharedSizeBytes);
  attr->ptxVersion = cuda_emu::device_properties().major * 10;
  attr->binaryVersion = attr->ptxVersion;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = st().last;
  if (st().sticky == cudaSuccess) st().last = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return st().last; }

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorUnknown";
  }
}

// The emulator's report for the last error (kernel, block, thread, line) when there is one.
const char* cudaGetErrorString(cudaError_t err) {
  if (err != cudaSuccess && err == st().message_code && !st().message.empty()) return st().message.c_str();
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "unknown error";
  }
}

cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}

}  // extern "C"
