// When a run stops early: SIGTERM, SIGINT and SIGUSR1 (preemption, Ctrl-C, Slurm's warning
// signal) and train.max_runtime_minutes. The loop finishes its step, saves and exits 0.
#pragma once
#include <string>

#include "ltrain/parallel/communicator.h"

namespace ltrain {

class StopRequests {
 public:
  // Installs the signal handlers. start_time: when the run began (wall_time_seconds).
  StopRequests(double max_runtime_minutes, double start_time);
  // Behaves as if SIGTERM had arrived (a test's fault injection).
  void request_signal();
  // After a step, collective over `group`: every rank must stop at the same step, so a signal or
  // the time limit on any rank stops all. Returns 0 (go on), a signal number, or -1 (the time
  // limit).
  int agree(Communicator& group) const;
  // The log line of a stop at `step`.
  static std::string describe(int stop, int step);

 private:
  double max_runtime_minutes_, start_time_;
};

}  // namespace ltrain
