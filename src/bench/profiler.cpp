// bench's measuring pieces (include/ltrain/bench/profiler.h): the op profiler, the copy
// bandwidth and the communication timer.
#include "ltrain/bench/profiler.h"

#include <cmath>
#include <cstring>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/flops.h"

namespace ltrain {

// ---- OpProfiler ----------------------------------------------------------------------------------

OpProfiler::OpProfiler(Backend& backend) : be_(backend) { be_.set_observer(this); }

OpProfiler::~OpProfiler() {
  if (be_.observer() == this) be_.set_observer(nullptr);
}

void OpProfiler::reset() {
  pending_.clear();
  if (timer_) timer_->clear();
  seconds_.fill(0.0);
  calls_.fill(0);
  bytes_.fill(0.0);
  flops_.fill(0.0);
}

void OpProfiler::set_enabled(bool on) {
  if (enabled_ && !on) flush();
  enabled_ = on;
}

void OpProfiler::flush() {
  if (pending_.empty()) return;
  be_.synchronize();  // tells synchronized(), which reads the marks
  read_marks();       // in case another observer has replaced this one since
}

void OpProfiler::synchronized() { read_marks(); }

void OpProfiler::read_marks() {
  if (pending_.empty()) return;
  for (const PendingOp& p : pending_) seconds_[size_t(p.family)] += timer_->seconds_between(p.start, p.end);
  pending_.clear();
  timer_->clear();
}

std::string OpProfiler::method() {
  if (!timer_) timer_ = be_.make_event_timer();
  return timer_->method();
}

double OpProfiler::total_seconds() const {
  double s = 0;
  for (double x : seconds_) s += x;
  return s;
}

void OpProfiler::op_begin(const OpInfo&) {
  if (!enabled_) return;
  if (!timer_) timer_ = be_.make_event_timer();
  start_mark_ = timer_->record();
}

void OpProfiler::op_end(const OpInfo& op) {
  if (start_mark_ < 0) return;  // began while disabled
  const size_t i = size_t(op.family);
  pending_.push_back({op.family, start_mark_, timer_->record()});
  start_mark_ = -1;
  double flops = op.flops;
  if (op.family == OpFamily::kAttention) {
    // q (B, T, H, HD); the backward recomputes the probabilities: 2.5 times the forward.
    const Shape& q = op.shape;
    flops = attention_forward_flops(double(q.dims[0]), double(q.dims[1]), double(q.dims[2]), double(q.dims[3]));
    if (std::strcmp(op.name, "attention_backward") == 0) flops *= 2.5;
  }
  calls_[i] += 1;
  bytes_[i] = op.bytes >= 0 && bytes_[i] >= 0 ? bytes_[i] + op.bytes : -1.0;
  flops_[i] += flops;
  if (pending_.size() >= kMaxPendingOps) flush();
}

double measure_copy_bandwidth(Backend& be, size_t bytes, int reps) {
  LTRAIN_CHECK(bytes >= 4 && reps >= 1, "measure_copy_bandwidth(" << bytes << ", " << reps << ")");
  const int64_t n = int64_t(bytes / 4);
  Tensor a = be.alloc({n}, DType::kF32), b = be.alloc({n}, DType::kF32);
  be.copy(b, a);  // untimed: first touch, lazy initialization
  be.synchronize();
  auto timer = be.make_event_timer();
  const int start = timer->record();
  for (int i = 0; i < reps; ++i) be.copy(b, a);
  const int end = timer->record();
  be.synchronize();
  const double seconds = timer->seconds_between(start, end);
  const double moved = 2.0 * double(a.bytes()) * reps;
  timer.reset();
  be.free(a);
  be.free(b);
  return seconds > 0 ? moved / seconds / 1e9 : NAN;
}

// ---- TimingCommunicator --------------------------------------------------------------------------

template <class F>
auto TimingCommunicator::timed(F&& fn) -> decltype(fn()) {
  struct Account {
    TimingCommunicator* self;
    double t0;
    ~Account() {
      self->seconds_ += wall_time_seconds() - t0;
      self->calls_ += 1;
    }
  } account{this, wall_time_seconds()};
  return fn();
}

void TimingCommunicator::all_reduce_sum(Tensor buf) { timed([&] { inner_.all_reduce_sum(buf); }); }
void TimingCommunicator::all_reduce_max(Tensor buf) { timed([&] { inner_.all_reduce_max(buf); }); }
void TimingCommunicator::reduce_scatter_sum(Tensor out, const Tensor& in) {
  timed([&] { inner_.reduce_scatter_sum(out, in); });
}
void TimingCommunicator::all_gather(Tensor out, const Tensor& in) { timed([&] { inner_.all_gather(out, in); }); }
void TimingCommunicator::broadcast(Tensor buf, int root) { timed([&] { inner_.broadcast(buf, root); }); }
int TimingCommunicator::send_recv_start(const std::vector<P2p>& ops) {
  return timed([&] { return inner_.send_recv_start(ops); });
}
int TimingCommunicator::all_reduce_sum_start(Tensor buf) {
  return timed([&] { return inner_.all_reduce_sum_start(buf); });
}
void TimingCommunicator::wait(int ticket) { timed([&] { inner_.wait(ticket); }); }
void TimingCommunicator::wait_on_stream(int ticket) { timed([&] { inner_.wait_on_stream(ticket); }); }
double TimingCommunicator::sum(double x) { return timed([&] { return inner_.sum(x); }); }
double TimingCommunicator::max(double x) { return timed([&] { return inner_.max(x); }); }
void TimingCommunicator::barrier() { timed([&] { inner_.barrier(); }); }

}  // namespace ltrain
