// The CUDA backend (include/ltrain/cuda/cuda_backend.h): one device, one stream, a cuBLASLt
// handle and workspace, device memory from cudaMalloc with byte accounting, and the kernels of
// kernels/ behind the Backend interface.
//
// Dtypes: compute is bf16, master is fp32. Ops accept the combinations the model uses (listed
// in each op's check) and activations in fp32 as well (the kernels are instantiated for both, so
// the tests can check an op in fp32 without bf16 rounding); anything else fails a check naming
// the op and the tensor.
//
// Memory: tensors are allocated by the model and optimizer up front. Kernel scratch (rmsnorm's
// partial column sums, attention's backward partials, embedding's sorted keys, the sum of
// squares' partials) depends only on the shapes, so it is sized on first use (embedding's for the
// worst case of its N rows, so it never grows within a run), grows only if a larger shape comes,
// and then is reused every step; bytes_allocated() counts it with the tensors.
// src/train/memory_plan.cpp predicts all of it before the model is built.
//
// Synchronization: ops are asynchronous on the stream, from_host included (through page-locked
// staging buffers); to_host and sum_squares, which return data to the host, synchronize.
//
// Determinism: every kernel reduces in a fixed order (no atomics); with `deterministic`, cuBLASLt
// is restricted to ordered split-K reductions (kernels/matmul.cu), and the NCCL communicators
// built for this backend use the ring algorithm with the simple protocol
// (src/cuda/nccl_communicator.cpp, pin_deterministic_nccl_env).
#include "ltrain/cuda/cuda_backend.h"

#include "ltrain/core/check.h"

#ifdef LTRAIN_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/cuda_check.cuh"
#include "kernels.h"

namespace ltrain {

namespace {

using cuda::bf16;


void expect(const Tensor& t, DType want, const char* op, const char* what) {
  LTRAIN_CHECK(t.dtype == want, "cuda " << op << ": " << what << " must be " << dtype_name(want)
                                        << ", got " << dtype_name(t.dtype) << " " << t.shape.str());
}

// Calls f(T{}) with T = bf16 or float for an activation dtype.
template <class F>
void dispatch_act(DType t, const char* op, F f) {
  if (t == DType::kBF16) f(bf16{});
  else if (t == DType::kF32) f(float{});
  else LTRAIN_CHECK(false, "cuda " << op << ": activations must be bf16 or f32, got " << dtype_name(t));
}

// A device buffer that only grows (kernel scratch).
class Scratch {
 public:
  void* get(size_t bytes, size_t& accounted) {
    if (bytes > bytes_) {
      if (ptr_) {
        CUDA_CHECK(cudaFree(ptr_));  // synchronizes: no kernel still uses the old buffer
        accounted -= bytes_;
      }
      bytes_ = std::max(bytes, bytes_ * 2);
      CUDA_CHECK(cudaMalloc(&ptr_, bytes_));
      accounted += bytes_;
    }
    return ptr_;
  }
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host buffers for host-to-device copies. A copy from pageable memory may wait for
// the stream; from a page-locked buffer it is queued and the call returns at once. A buffer is
// reused only when the event recorded after its last copy has completed (asked without waiting);
// otherwise another one is taken, so an upload never synchronizes the host with the stream.
class PinnedStaging {
 public:
  ~PinnedStaging() {
    for (Block& b : blocks_) {
      cudaEventSynchronize(b.done);
      cudaEventDestroy(b.done);
      cudaFreeHost(b.ptr);
    }
  }
  // A buffer of at least `bytes` that no queued copy still reads.
  void* acquire(size_t bytes) {
    for (Block& b : blocks_)
      if (b.bytes >= bytes && cudaEventQuery(b.done) == cudaSuccess) return b.ptr;
    Block b;
    b.bytes = std::max<size_t>(bytes, 64 * 1024);
    CUDA_CHECK(cudaMallocHost(&b.ptr, b.bytes));
    CUDA_CHECK(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
    blocks_.push_back(b);
    return b.ptr;
  }
  // After queueing a copy from `ptr` (from acquire) on `stream`.
  void queued(void* ptr, cudaStream_t stream) {
    for (Block& b : blocks_)
      if (b.ptr == ptr) CUDA_CHECK(cudaEventRecord(b.done, stream));
  }

 private:
  struct Block {
    void* ptr = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;
  };
  std::vector<Block> blocks_;
};

// CUDA events on one stream, created as needed and reused after clear().
class CudaEventTimer final : public EventTimer {
 public:
  explicit CudaEventTimer(cudaStream_t stream) : stream_(stream) {}
  ~CudaEventTimer() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  int record() override {
    if (used_ == events_.size()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    CUDA_CHECK(cudaEventRecord(events_[used_], stream_));
    return int(used_++);
  }
  double seconds_between(int from, int to) override {
    LTRAIN_CHECK(from >= 0 && to >= 0 && size_t(from) < used_ && size_t(to) < used_,
                 "event timer: marks " << from << ", " << to << " of " << used_);
    CUDA_CHECK(cudaEventSynchronize(events_[size_t(to)]));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, events_[size_t(from)], events_[size_t(to)]));
    return double(ms) * 1e-3;
  }
  void clear() override { used_ = 0; }
  const char* method() const override {
    return "CUDA events recorded on the backend's stream around each op, read at synchronization points";
  }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, bool deterministic) : device_(device), deterministic_(deterministic) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    matmul_ = std::make_unique<cuda::LtMatmul>(kCudaMatmulWorkspaceBytes, deterministic);
    allocated_ += matmul_->workspace_bytes();
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (Scratch* s : {&float_scratch_, &int_scratch_, &double_scratch_, &attn_scratch_}) s->release();
    matmul_.reset();
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  BackendKind kind() const override { return BackendKind::kCuda; }
  cudaStream_t stream() const { return stream_; }
  bool deterministic() const { return deterministic_; }
  DType compute_dtype() const override { return DType::kBF16; }
  DType master_dtype() const override { return DType::kF32; }
  size_t bytes_allocated() const override { return allocated_; }
  std::unique_ptr<EventTimer> make_event_timer() override {
    return std::make_unique<CudaEventTimer>(stream_);
  }
  // The device's name (for the report and the peak table) and its memory as cudaMemGetInfo sees
  // it: every process and context on the device counted, not only this backend's tensors.
  DeviceInfo device_info() const override {
    DeviceInfo d;
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device_) == cudaSuccess) {
      d.name = prop.name;
    } else {
      cudaGetLastError();
      d.name = "unknown CUDA device";
    }
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      d.free_bytes = int64_t(free_b);
      d.total_bytes = int64_t(total_b);
    } else {
      cudaGetLastError();
    }
    return d;
  }

  // ---- memory ---------------------------------------------------------------------------------
 protected:
  Tensor alloc_impl(Shape shape, DType dtype) override {
    Tensor t;
    t.dtype = dtype;
    t.shape = shape;
    const size_t bytes = (std::max<size_t>(t.bytes(), 1) + 255) / 256 * 256;
    const cudaError_t err = cudaMalloc(&t.data, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      LTRAIN_CHECK(false, "out of GPU memory allocating " << shape.str() << " " << dtype_name(dtype)
                              << " (" << bytes << " bytes); this backend holds " << allocated_
                              << " bytes, the device has " << free_b << " of " << total_b << " free");
    }
    CUDA_CHECK(cudaMemsetAsync(t.data, 0, bytes, stream_));
    allocated_ += t.bytes();
    return t;
  }
  void free_impl(Tensor& t) override {
    if (!t.data) return;
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    CUDA_CHECK(cudaFree(t.data));
    allocated_ -= t.bytes();
    t.data = nullptr;
  }
  void from_host_impl(Tensor dst, const void* src, DType src_dtype) override {
    if (dst.bytes() == 0) return;
    void* stage = pinned_.acquire(dst.bytes());
    if (src_dtype != dst.dtype) convert_host(stage, dst.dtype, src, src_dtype, dst.numel());
    else std::memcpy(stage, src, dst.bytes());
    CUDA_CHECK(cudaMemcpyAsync(dst.data, stage, dst.bytes(), cudaMemcpyHostToDevice, stream_));
    pinned_.queued(stage, stream_);
  }
  // Through a page-locked buffer: one wait for the stream (a copy into pageable memory would
  // wait as well).
  void to_host_impl(void* dst, DType dst_dtype, const Tensor& src) override {
    if (src.bytes() == 0) return;
    void* stage = pinned_.acquire(src.bytes());
    CUDA_CHECK(cudaMemcpyAsync(stage, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (dst_dtype != src.dtype) convert_host(dst, dst_dtype, stage, src.dtype, src.numel());
    else std::memcpy(dst, stage, src.bytes());
  }
  void copy_impl(Tensor dst, const Tensor& src) override {
    if (dst.dtype == src.dtype) {
      if (dst.data != src.data)
        CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, dst.bytes(), cudaMemcpyDeviceToDevice, stream_));
    } else if (dst.dtype == DType::kBF16 && src.dtype == DType::kF32) {
      cuda::convert(dst.as<bf16>(), src.as<float>(), dst.numel(), stream_);
    } else if (dst.dtype == DType::kF32 && src.dtype == DType::kBF16) {
      cuda::convert(dst.as<float>(), src.as<bf16>(), dst.numel(), stream_);
    } else {
      LTRAIN_CHECK(false, "cuda copy converts only between f32 and bf16, got " << dtype_name(src.dtype)
                              << " -> " << dtype_name(dst.dtype));
    }
  }
  void zero_impl(Tensor t) override { CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.bytes(), stream_)); }
  void synchronize_impl() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  // ---- matrix products ------------------------------------------------------------------------
  // Backend's public ops have checked the shapes and the shared dtype rules (activations in one
  // dtype, statistics and parameter gradients in fp32); what is checked here is the CUDA backend's
  // own rule: activations in bf16 or fp32 (dispatch_act), bf16 only for the tensor-core products.
  void matmul_impl(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha,
                   float beta, const Tensor& c) override {
    expect(a, DType::kBF16, "matmul", "a");
    const int M = int(out.shape.dims[0]), N = int(out.shape.dims[1]);
    const int K = int(trans_a ? a.shape.dims[0] : a.shape.dims[1]);
    matmul_->run(out.data, out.dtype == DType::kF32, a.as<bf16>(), b.as<bf16>(), M, N, K, trans_a, trans_b,
                 alpha, beta, stream_, c.defined() ? c.data : nullptr);
  }

  // ---- transformer ops ------------------------------------------------------------------------
  void embedding_forward_impl(Tensor out, const Tensor& tokens, const Tensor& wte) override {
    const int C = int(wte.shape.dims[1]), V = int(wte.shape.dims[0]);
    dispatch_act(wte.dtype, "embedding_forward", [&](auto tag) {
      using T = decltype(tag);
      cuda::embedding_forward(out.as<T>(), tokens.as<int32_t>(), wte.as<T>(), int(tokens.numel()), C,
                              V, stream_);
    });
  }

  void embedding_backward_impl(Tensor dwte, const Tensor& dout, const Tensor& tokens) override {
    const int N = int(tokens.numel()), V = int(dwte.shape.dims[0]), C = int(dwte.shape.dims[1]);
    if (N == 0) return;
    // Rows are grouped by token on the device (a sort of (token, row) keys): no host round trip.
    // The scratch is sized by N alone, so it is allocated at the first step and then reused.
    void* keys = int_scratch_.get(cuda::embedding_backward_scratch_bytes(N), allocated_);
    dispatch_act(dout.dtype, "embedding_backward", [&](auto tag) {
      using T = decltype(tag);
      cuda::embedding_backward(dwte.as<float>(), dout.as<T>(), tokens.as<int32_t>(), keys, N, C, V, stream_);
    });
  }

  void rmsnorm_forward_impl(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight,
                            float eps) override {
    const int C = int(weight.numel()), N = int(inp.numel() / C);
    dispatch_act(inp.dtype, "rmsnorm_forward", [&](auto tag) {
      using T = decltype(tag);
      cuda::rmsnorm_forward(out.as<T>(), rstd.as<float>(), inp.as<T>(), weight.as<T>(), N, C, eps,
                            stream_);
    });
  }

  void rmsnorm_backward_impl(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                             const Tensor& weight, const Tensor& rstd) override {
    const int C = int(weight.numel()), N = int(inp.numel() / C);
    auto* scratch = static_cast<float*>(
        float_scratch_.get(cuda::rmsnorm_backward_scratch_floats(N, C) * sizeof(float), allocated_));
    dispatch_act(inp.dtype, "rmsnorm_backward", [&](auto tag) {
      using T = decltype(tag);
      cuda::rmsnorm_backward(dinp.as<T>(), dweight.as<float>(), dout.as<T>(), inp.as<T>(),
                             weight.as<T>(), rstd.as<float>(), N, C, scratch, stream_);
    });
  }

  void rope_impl(Tensor out, const Tensor& inp, const Tensor& freqs, int sign) override {
    const auto& s = inp.shape;
    dispatch_act(inp.dtype, "rope", [&](auto tag) {
      using T = decltype(tag);
      cuda::rope_rotate(out.as<T>(), inp.as<T>(), freqs.as<float>(), int(s.dims[0]), int(s.dims[1]),
                        int(s.dims[2]), int(s.dims[3]), sign, stream_);
    });
  }

  void attention_forward_impl(Tensor out, Tensor lse, const Tensor& q, const Tensor& k,
                              const Tensor& v) override {
    const auto [B, Tn, H, KV, HD] = attention_dims(q, k, "attention_forward");
    cuda::attention_forward(out.as<bf16>(), lse.as<float>(), q.as<bf16>(), k.as<bf16>(),
                            v.as<bf16>(), B, Tn, H, KV, HD, stream_);
  }

  void attention_backward_impl(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out,
                               const Tensor& lse) override {
    const auto [B, Tn, H, KV, HD] = attention_dims(q, k, "attention_backward");
    auto* scratch = static_cast<float*>(attn_scratch_.get(
        cuda::attention_backward_scratch_floats(B, Tn, H, KV, HD) * sizeof(float), allocated_));
    cuda::attention_backward(dq.as<bf16>(), dk.as<bf16>(), dv.as<bf16>(), dout.as<bf16>(),
                             q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), out.as<bf16>(),
                             lse.as<float>(), scratch, B, Tn, H, KV, HD, stream_);
  }

  void swiglu_forward_impl(Tensor out, const Tensor& gate, const Tensor& up) override {
    dispatch_act(gate.dtype, "swiglu_forward", [&](auto tag) {
      using T = decltype(tag);
      cuda::swiglu_forward(out.as<T>(), gate.as<T>(), up.as<T>(), out.numel(), stream_);
    });
  }
  void swiglu_backward_impl(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                            const Tensor& up) override {
    dispatch_act(gate.dtype, "swiglu_backward", [&](auto tag) {
      using T = decltype(tag);
      cuda::swiglu_backward(dgate.as<T>(), dup.as<T>(), dout.as<T>(), gate.as<T>(), up.as<T>(),
                            gate.numel(), stream_);
    });
  }
  void add_impl(Tensor out, const Tensor& a, const Tensor& b) override {
    dispatch_act(a.dtype, "add", [&](auto tag) {
      using T = decltype(tag);
      cuda::add(out.as<T>(), a.as<T>(), b.as<T>(), out.numel(), stream_);
    });
  }

  void cross_entropy_impl(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& targets,
                          float dloss) override {
    const int V = int(logits.shape.dims[logits.shape.ndim - 1]), N = int(targets.numel());
    dispatch_act(logits.dtype, "cross_entropy", [&](auto tag) {
      using T = decltype(tag);
      cuda::cross_entropy(losses.as<float>(), dlogits.defined() ? dlogits.as<T>() : nullptr,
                          logits.as<T>(), targets.as<int32_t>(), N, V, dloss, stream_);
    });
  }
  void logsumexp_rows_impl(Tensor lse, const Tensor& logits) override {
    const int V = int(logits.shape.dims[logits.shape.ndim - 1]), N = int(lse.numel());
    dispatch_act(logits.dtype, "logsumexp_rows", [&](auto tag) {
      using T = decltype(tag);
      cuda::logsumexp_rows(lse.as<float>(), logits.as<T>(), N, V, stream_);
    });
  }
  void cross_entropy_with_lse_impl(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& lse,
                                   const Tensor& targets, int vocab_offset, float dloss) override {
    const int V = int(logits.shape.dims[logits.shape.ndim - 1]), N = int(targets.numel());
    dispatch_act(logits.dtype, "cross_entropy_with_lse", [&](auto tag) {
      using T = decltype(tag);
      cuda::cross_entropy_with_lse(losses.as<float>(), dlogits.defined() ? dlogits.as<T>() : nullptr,
                                   logits.as<T>(), lse.as<float>(), targets.as<int32_t>(), N, V,
                                   vocab_offset, dloss, stream_);
    });
  }

  // ---- optimizer ------------------------------------------------------------------------------
  double sum_squares_impl(const std::vector<Tensor>& tensors) override {
    auto* partials = static_cast<double*>(
        double_scratch_.get(cuda::kSumSquaresScratchBytes, allocated_));
    CUDA_CHECK(cudaMemsetAsync(partials, 0, cuda::kSumSquaresBlocks * sizeof(double), stream_));
    for (const Tensor& t : tensors)
      dispatch_act(t.dtype, "sum_squares", [&](auto tag) {
        using T = decltype(tag);
        cuda::sum_squares_accumulate(partials, t.as<T>(), t.numel(), stream_);
      });
    double* result = partials + cuda::kSumSquaresBlocks;
    cuda::sum_partials(result, partials, stream_);
    double host = 0;
    to_host(&host, DType::kF64, Tensor{result, DType::kF64, Shape{1}});
    return host;
  }

  void adamw_update_impl(Tensor param, const Tensor& grad, Tensor m, Tensor v,
                         const AdamWStep& s) override {
    const double bc1 = 1.0 - std::pow(s.beta1, s.step), bc2 = 1.0 - std::pow(s.beta2, s.step);
    cuda::adamw_update(param.as<float>(), grad.as<float>(), m.as<float>(), v.as<float>(),
                       param.numel(), float(s.lr), float(s.beta1), float(s.beta2), float(s.eps),
                       float(s.weight_decay), float(s.grad_scale), float(bc1), float(bc2), stream_);
  }

 private:
  struct AttnDims {
    int B, Tn, H, KV, HD;
  };
  // Backend checked that q, k and v match; the kernels add limits of their own (bf16, head dims).
  static AttnDims attention_dims(const Tensor& q, const Tensor& k, const char* op) {
    expect(q, DType::kBF16, op, "q/k/v/out and their gradients");
    const AttnDims d{int(q.shape.dims[0]), int(q.shape.dims[1]), int(q.shape.dims[2]),
                     int(k.shape.dims[2]), int(q.shape.dims[3])};
    LTRAIN_CHECK(cuda::attention_supports_head_dim(d.HD),
                 "the CUDA attention kernels support head dims 64 and 128, got " << d.HD);
    return d;
  }

  int device_;
  bool deterministic_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::LtMatmul> matmul_;
  size_t allocated_ = 0;
  Scratch float_scratch_, int_scratch_, double_scratch_, attn_scratch_;
  PinnedStaging pinned_;  // from_host's page-locked buffers
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device, bool deterministic) {
  const int n = cuda_device_count();
  if (n == 0)
    user_error("device: cuda was requested, but no CUDA GPU is visible (check nvidia-smi and ",
               "CUDA_VISIBLE_DEVICES), or use device=cpu");
  if (device < 0 || device >= n) user_error("CUDA device ", device, " does not exist; this machine has ", n);
  return std::make_unique<CudaBackend>(device, deterministic);
}

void* cuda_backend_stream(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda ? static_cast<void*>(cuda->stream()) : nullptr;
}

bool cuda_backend_deterministic(const Backend& backend) {
  auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda && cuda->deterministic();
}

bool cuda_memory_info(size_t* free_bytes, size_t* total_bytes) {
  if (cudaMemGetInfo(free_bytes, total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}

}  // namespace ltrain

#else  // !LTRAIN_WITH_CUDA

namespace ltrain {

int cuda_device_count() { return 0; }

std::unique_ptr<Backend> make_cuda_backend(int, bool) {
  user_error("device: cuda was requested, but this build has no CUDA backend (nvcc was not ",
             "found at configure time); use device=cpu or device=auto");
}

void* cuda_backend_stream(Backend&) { return nullptr; }
bool cuda_backend_deterministic(const Backend&) { return false; }
bool cuda_memory_info(size_t*, size_t*) { return false; }

}  // namespace ltrain

#endif
