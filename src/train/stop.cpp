#include "ltrain/train/stop.h"

#include <csignal>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

namespace {

// The signal handler can only set a flag of this type; the loop reads it after each step.
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

}  // namespace

StopRequests::StopRequests(double max_runtime_minutes, double start_time)
    : max_runtime_minutes_(max_runtime_minutes), start_time_(start_time) {
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) std::signal(sig, on_stop_signal);
}

void StopRequests::request_signal() { g_stop_signal = SIGTERM; }

int StopRequests::agree(Communicator& group) const {
  const bool out_of_time = max_runtime_minutes_ > 0 && wall_time_seconds() - start_time_ > max_runtime_minutes_ * 60.0;
  return int(group.max(double(g_stop_signal ? g_stop_signal : (out_of_time ? -1 : 0))));
}

std::string StopRequests::describe(int stop, int step) {
  return stop > 0 ? strfmt("step %6d | signal %d: saving and stopping", step, stop)
                  : strfmt("step %6d | train.max_runtime_minutes reached: saving and stopping", step);
}

}  // namespace ltrain
