// The NCCL communicator, and the NCCL environment that deterministic runs pin.
#include "ltrain/parallel/nccl_communicator.h"

#include <strings.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "ltrain/core/check.h"
#include "ltrain/cuda/cuda_backend.h"

namespace ltrain {

// NCCL reads its environment when a communicator is created, so the variables are set here,
// right before the first one, for the rest of the process. Ring all-reduce with the simple
// protocol adds the ranks' contributions in an order fixed by the ring; tree, NVLS and CollNet
// algorithms (which NCCL picks by message size and topology, or a site's /etc/nccl.conf) use
// other orders. A variable the user set is left alone, with a warning when it differs.
void pin_deterministic_nccl_env() {
  for (auto [key, want] : {std::pair<const char*, const char*>{"NCCL_ALGO", "Ring"}, {"NCCL_PROTO", "Simple"}}) {
    const char* have = std::getenv(key);
    if (!have) {
      setenv(key, want, 0);
    } else if (strcasecmp(have, want) != 0) {  // NCCL reads the names case-insensitively
      std::fprintf(stderr, "ltrain: warning: deterministic: true, but %s=%s is set; %s=%s gives a fixed reduction "
                   "order across runs\n", key, have, key, want);
    }
  }
}

}  // namespace ltrain

#ifdef LTRAIN_WITH_NCCL

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <vector>

#include "common/cuda_check.cuh"

namespace ltrain {

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kF32: return ncclFloat32;
    case DType::kF64: return ncclFloat64;
    case DType::kBF16: return ncclBfloat16;
    case DType::kI32: return ncclInt32;
  }
  return ncclFloat32;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, int device, cudaStream_t producer)
      : boot_(bootstrap), device_(device), producer_(producer) {
    CUDA_CHECK(cudaSetDevice(device_));
    ncclUniqueId id;
    if (boot_.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    // The id travels as int32 words through the MPI bootstrap group.
    std::vector<int32_t> words((sizeof(id) + 3) / 4, 0);
    std::memcpy(words.data(), &id, sizeof(id));
    Tensor t;
    t.data = words.data();
    t.dtype = DType::kI32;
    t.shape = Shape{int64_t(words.size())};
    boot_.broadcast(t, 0);
    std::memcpy(&id, words.data(), sizeof(id));
    NCCL_CHECK(ncclCommInitRank(&comm_, boot_.size(), id, boot_.rank()));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (producer_) CUDA_CHECK(cudaEventCreateWithFlags(&produced_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    for (auto e : events_) cudaEventDestroy(e);
    if (produced_) cudaEventDestroy(produced_);
    cudaStreamDestroy(stream_);
    ncclCommDestroy(comm_);
  }
  int rank() const override { return boot_.rank(); }
  int size() const override { return boot_.size(); }
  std::string name() const override { return "nccl"; }
  bool orders_after_device_work() const override { return producer_ != nullptr; }

  void all_reduce_sum(Tensor buf) override { wait(all_reduce_sum_start(buf)); }
  void all_reduce_max(Tensor buf) override {
    after_producer();
    NCCL_CHECK(ncclAllReduce(buf.data, buf.data, size_t(buf.numel()), nccl_type(buf.dtype), ncclMax, comm_, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void reduce_scatter_sum(Tensor out, const Tensor& in) override {
    LTRAIN_CHECK(in.numel() == out.numel() * size() && in.dtype == out.dtype, "reduce_scatter sizes");
    after_producer();
    NCCL_CHECK(ncclReduceScatter(in.data, out.data, size_t(out.numel()), nccl_type(out.dtype), ncclSum, comm_, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void all_gather(Tensor out, const Tensor& in) override {
    LTRAIN_CHECK(out.numel() == in.numel() * size() && in.dtype == out.dtype, "all_gather sizes");
    // In place when `in` is this rank's chunk of `out`, which NCCL supports directly.
    after_producer();
    NCCL_CHECK(ncclAllGather(in.data, out.data, size_t(in.numel()), nccl_type(in.dtype), comm_, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void broadcast(Tensor buf, int root) override {
    after_producer();
    NCCL_CHECK(ncclBroadcast(buf.data, buf.data, size_t(buf.numel()), nccl_type(buf.dtype), root, comm_, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  int send_recv_start(const std::vector<P2p>& ops) override {
    after_producer();
    // One group: ranks that send to each other do not deadlock.
    NCCL_CHECK(ncclGroupStart());
    for (const P2p& op : ops) {
      if (op.send) NCCL_CHECK(ncclSend(op.buf.data, size_t(op.buf.numel()), nccl_type(op.buf.dtype), op.peer, comm_, stream_));
      else NCCL_CHECK(ncclRecv(op.buf.data, size_t(op.buf.numel()), nccl_type(op.buf.dtype), op.peer, comm_, stream_));
    }
    NCCL_CHECK(ncclGroupEnd());
    return record_ticket();
  }
  int all_reduce_sum_start(Tensor buf) override {
    after_producer();
    NCCL_CHECK(ncclAllReduce(buf.data, buf.data, size_t(buf.numel()), nccl_type(buf.dtype), ncclSum, comm_, stream_));
    return record_ticket();
  }
  void wait(int ticket) override {
    LTRAIN_CHECK(ticket >= 0 && ticket < int(events_.size()), "unknown ticket " << ticket);
    CUDA_CHECK(cudaEventSynchronize(events_[ticket]));
    finish(ticket);
  }
  void wait_on_stream(int ticket) override {
    if (!producer_) return wait(ticket);
    LTRAIN_CHECK(ticket >= 0 && ticket < int(events_.size()), "unknown ticket " << ticket);
    // The producer's stream waits on the device; the host goes on queueing.
    CUDA_CHECK(cudaStreamWaitEvent(producer_, events_[ticket], 0));
    finish(ticket);
  }
  double sum(double x) override { return boot_.sum(x); }
  double max(double x) override { return boot_.max(x); }
  void barrier() override {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    boot_.barrier();
  }

 private:
  // An event after the work just queued on the communicator's stream: the ticket.
  int record_ticket() {
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(e, stream_));
    events_.push_back(e);
    done_.push_back(false);
    return int(events_.size()) - 1;
  }
  void finish(int ticket) {
    // NCCL reports errors of asynchronous operations here rather than at launch.
    ncclResult_t async_err;
    NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_err));
    NCCL_CHECK(async_err);
    done_[size_t(ticket)] = true;
    // Tickets are reused once every outstanding operation has completed (destroying an event a
    // stream still waits on is allowed: it is released when it completes).
    bool all_done = true;
    for (bool d : done_) all_done = all_done && d;
    if (all_done) {
      for (auto e : events_) cudaEventDestroy(e);
      events_.clear();
      done_.clear();
    }
  }
  // The communicator's stream waits for the work queued so far on the producer's stream.
  void after_producer() {
    if (!producer_) return;
    CUDA_CHECK(cudaEventRecord(produced_, producer_));
    CUDA_CHECK(cudaStreamWaitEvent(stream_, produced_, 0));
  }

  Communicator& boot_;
  int device_;
  cudaStream_t producer_ = nullptr;
  cudaEvent_t produced_ = nullptr;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
  std::vector<bool> done_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, Backend* producer) {
  cudaStream_t stream = producer ? static_cast<cudaStream_t>(cuda_backend_stream(*producer)) : nullptr;
  LTRAIN_CHECK(!producer || stream, "make_nccl_communicator: the producer must be a CUDA backend");
  // A deterministic backend's gradients are reduced in a fixed order too.
  if (producer && cuda_backend_deterministic(*producer)) pin_deterministic_nccl_env();
  return std::make_unique<NcclCommunicator>(bootstrap, device, stream);
}

}  // namespace ltrain

#else  // no NCCL in this build (no CUDA, or the CUDA emulator)

namespace ltrain {
std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, int, Backend*) {
  user_error("NCCL needs the CUDA backend built with nvcc, which this build does not have (NCCL is not emulated)");
}
}  // namespace ltrain

#endif
