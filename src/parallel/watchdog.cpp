#include "ltrain/parallel/watchdog.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "ltrain/core/io.h"

namespace ltrain {

namespace {

class WatchedCommunicator;

// One thread watches every wrapper of the process.
struct Registry {
  std::mutex mu;
  std::vector<WatchedCommunicator*> watched;
  bool thread_started = false;
};
Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: the thread may outlive static teardown
  return *r;
}
void watch_loop();

class WatchedCommunicator final : public Communicator {
 public:
  WatchedCommunicator(Communicator& inner, double timeout_s, int world_rank, std::string host,
                      std::string group)
      : inner_(inner), timeout_s_(timeout_s), world_rank_(world_rank), host_(std::move(host)),
        group_(std::move(group)) {
    if (timeout_s_ <= 0) return;
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.watched.push_back(this);
    if (!r.thread_started) {
      r.thread_started = true;
      std::thread(watch_loop).detach();
    }
  }
  ~WatchedCommunicator() override {
    if (timeout_s_ <= 0) return;
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (auto& w : r.watched)
      if (w == this) w = nullptr;
  }

  int rank() const override { return inner_.rank(); }
  bool orders_after_device_work() const override { return inner_.orders_after_device_work(); }
  int size() const override { return inner_.size(); }
  std::string name() const override { return inner_.name(); }
  void all_reduce_sum(Tensor buf) override { timed("all_reduce_sum", [&] { inner_.all_reduce_sum(buf); }); }
  void all_reduce_max(Tensor buf) override { timed("all_reduce_max", [&] { inner_.all_reduce_max(buf); }); }
  void reduce_scatter_sum(Tensor out, const Tensor& in) override {
    timed("reduce_scatter_sum", [&] { inner_.reduce_scatter_sum(out, in); });
  }
  void all_gather(Tensor out, const Tensor& in) override { timed("all_gather", [&] { inner_.all_gather(out, in); }); }
  void broadcast(Tensor buf, int root) override { timed("broadcast", [&] { inner_.broadcast(buf, root); }); }
  int send_recv_start(const std::vector<P2p>& ops) override {
    int t = 0;
    timed("send_recv (start)", [&] { t = inner_.send_recv_start(ops); });
    return started(t, "send_recv (wait)");
  }
  int all_reduce_sum_start(Tensor buf) override {
    int t = 0;
    timed("all_reduce_sum (start)", [&] { t = inner_.all_reduce_sum_start(buf); });
    return started(t, "all_reduce_sum (wait)");
  }
  void wait(int ticket) override { timed(waited(ticket), [&] { inner_.wait(ticket); }); }
  void wait_on_stream(int ticket) override { timed(waited(ticket), [&] { inner_.wait_on_stream(ticket); }); }
  double sum(double x) override {
    double y = 0;
    timed("sum", [&] { y = inner_.sum(x); });
    return y;
  }
  double max(double x) override {
    double y = 0;
    timed("max", [&] { y = inner_.max(x); });
    return y;
  }
  void barrier() override { timed("barrier", [&] { inner_.barrier(); }); }

  // Called by the watch thread.
  void check(double now) const {
    const double start = started_.load();
    if (start <= 0 || now - start < timeout_s_) return;
    std::fprintf(stderr,
                 "ltrain: error: [rank %d on host %s] collective %s on the %s group (%d ranks) did not finish within "
                 "parallel.timeout_s = %g s; a peer is dead, stuck or unreachable. Exiting with code %d\n",
                 world_rank_, host_.c_str(), op_.load(), group_.c_str(), inner_.size(), timeout_s_,
                 kExitCollectiveTimeout);
    std::fflush(stderr);
    std::_Exit(kExitCollectiveTimeout);  // not exit(): the main thread is blocked inside MPI or NCCL
  }

 private:
  template <class F>
  void timed(const char* op, F f) {
    if (timeout_s_ <= 0) return f();
    op_.store(op);
    started_.store(wall_time_seconds());
    f();
    started_.store(0);
  }
  // The name of each started operation, by ticket, for the message of a wait that times out.
  int started(int ticket, const char* wait_name) {
    if (size_t(ticket) >= wait_names_.size()) wait_names_.resize(size_t(ticket) + 1, "wait");
    wait_names_[size_t(ticket)] = wait_name;
    return ticket;
  }
  const char* waited(int ticket) const {
    return ticket >= 0 && size_t(ticket) < wait_names_.size() ? wait_names_[size_t(ticket)] : "wait";
  }
  Communicator& inner_;
  std::vector<const char*> wait_names_;
  double timeout_s_;
  int world_rank_;
  std::string host_, group_;
  std::atomic<double> started_{0};
  std::atomic<const char*> op_{""};
};

void watch_loop() {
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    const double now = wall_time_seconds();
    for (const auto* w : r.watched)
      if (w) w->check(now);
  }
}

}  // namespace

std::unique_ptr<Communicator> with_watchdog(Communicator& inner, double timeout_s, int world_rank,
                                            std::string host, std::string group) {
  return std::make_unique<WatchedCommunicator>(inner, timeout_s, world_rank, std::move(host),
                                               std::move(group));
}

}  // namespace ltrain
