// The measuring pieces of `ltrain bench`, usable (and tested) on their own:
//  - OpProfiler: an op observer (Backend::set_observer) that, when enabled, records a mark of the
//    backend's EventTimer before and after each op (CUDA events on the GPU, the host clock on the
//    CPU) and adds the time between them to the op's family, with the bytes the op moves and the
//    FLOPs of the matrix products and attention;
//  - measure_copy_bandwidth: the device-to-device copy bandwidth the memory-bound families are
//    compared with;
//  - TimingCommunicator: a Communicator decorator that adds up the wall time of every call.
// docs/benchmarking.md describes every figure and how it is measured.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ltrain/core/backend.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

// ---- OpProfiler ----------------------------------------------------------------------------------
// Observes `backend` (which must outlive it) from construction to destruction; the backend runs
// its ops as before. Disabled, it records nothing. Enabled, every op is bracketed by two marks of
// the backend's EventTimer: on the CUDA backend CUDA events on its stream, so nothing synchronizes
// per op and the step keeps its overlap of host launches with GPU work; on the CPU the host clock
// (its ops are synchronous). The time between an op's marks goes to its family when the marks are
// read: at every synchronize() of the backend (the step's end, a gradient bucket's launch), at
// flush(), and every kMaxPendingOps ops.
// An op's time is its span on the stream: it includes GPU idle time inside the op (host work such
// as embedding_backward's grouping); gaps between ops are in no family.
class OpProfiler final : public OpObserver {
 public:
  static constexpr size_t kMaxPendingOps = size_t(1) << 15;
  explicit OpProfiler(Backend& backend);
  ~OpProfiler() override;
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;

  Backend& backend() { return be_; }
  void set_enabled(bool on);  // turning it off flushes
  bool enabled() const { return enabled_; }
  void reset();               // zero every figure and drop unread marks
  void flush();               // synchronize the backend and read the marks of every timed op
  // Figures since reset(), complete after flush() or the backend's synchronize().
  double seconds(OpFamily f) const { return seconds_[size_t(f)]; }
  int64_t calls(OpFamily f) const { return calls_[size_t(f)]; }
  // Bytes the family's ops read and wrote (OpInfo::bytes), or -1 when one of its ops has no count.
  double bytes(OpFamily f) const { return bytes_[size_t(f)]; }
  // FLOPs of matmul (2MNK) and attention (causal: 4 * B * H * HD * T(T+1)/2 forward, 2.5 times that
  // backward, as FlashAttention counts); 0 for the other families.
  double flops(OpFamily f) const { return flops_[size_t(f)]; }
  double total_seconds() const;
  std::string method();       // how ops are timed (the backend's EventTimer)

  void op_begin(const OpInfo& op) override;
  void op_end(const OpInfo& op) override;
  void synchronized() override;

 private:
  void read_marks();  // the backend has synchronized: every pending op's time is known
  struct PendingOp {
    OpFamily family;
    int start, end;  // marks
  };
  Backend& be_;
  bool enabled_ = false;
  int start_mark_ = -1;  // of the op in progress, -1 when none is timed
  std::unique_ptr<EventTimer> timer_;
  std::vector<PendingOp> pending_;
  std::array<double, kNumOpFamilies> seconds_{};
  std::array<int64_t, kNumOpFamilies> calls_{};
  std::array<double, kNumOpFamilies> bytes_{};
  std::array<double, kNumOpFamilies> flops_{};
};

// The backend's device-to-device copy bandwidth in GB/s (1e9 bytes): Backend::copy of an fp32
// buffer of `bytes` into another, `reps` times after one untimed copy, timed with the backend's
// EventTimer; each copy counts its read and its write (2 * bytes), the convention of the
// families' bandwidth. Allocates and frees the two buffers.
double measure_copy_bandwidth(Backend& backend, size_t bytes, int reps = 10);

// ---- TimingCommunicator --------------------------------------------------------------------------
// Wraps `inner` (which must outlive it), forwards every call and adds up the host wall time spent
// inside the calls: for a non-blocking all-reduce that is the launch plus the wait, i.e. the
// communication the step waits for, not what overlaps the backward.
class TimingCommunicator final : public Communicator {
 public:
  explicit TimingCommunicator(Communicator& inner) : inner_(inner) {}
  double seconds() const { return seconds_; }
  int64_t calls() const { return calls_; }
  void reset() { seconds_ = 0, calls_ = 0; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string name() const override { return inner_.name(); }
  bool orders_after_device_work() const override { return inner_.orders_after_device_work(); }
  void all_reduce_sum(Tensor buf) override;
  void all_reduce_max(Tensor buf) override;
  void reduce_scatter_sum(Tensor out, const Tensor& in) override;
  void all_gather(Tensor out, const Tensor& in) override;
  void broadcast(Tensor buf, int root) override;
  int send_recv_start(const std::vector<P2p>& ops) override;
  int all_reduce_sum_start(Tensor buf) override;
  void wait(int ticket) override;
  void wait_on_stream(int ticket) override;
  double sum(double x) override;
  double max(double x) override;
  void barrier() override;

 private:
  template <class F>
  auto timed(F&& fn) -> decltype(fn());
  Communicator& inner_;
  double seconds_ = 0;
  int64_t calls_ = 0;
};

}  // namespace ltrain
