// The step guard: looks at each step's global loss and gradient norm before the optimizer
// applies it. Non-finite steps and spikes (a value more than guard.spike_sigma running deviations
// above the running mean of the last guard.window accepted steps) are skipped: no update, no
// moment change, the same optimizer step is retried on the next data. Too many non-finite steps
// in a row, or guard.rollback_after spikes within guard.window attempts, ask for a rollback to
// the newest checkpoint. Every rank sees the same global values, so every rank decides alike.
#pragma once
#include <deque>
#include <string>

#include <nlohmann/json.hpp>

#include "ltrain/config/config.h"

namespace ltrain {

class StepGuard {
 public:
  enum class Verdict { kAccept, kSkip, kRollback };
  struct Decision {
    Verdict verdict;
    std::string reason;  // empty when accepted
  };

  explicit StepGuard(const GuardConfig& cfg) : cfg_(cfg) {}
  // Judges one attempt; an accepted step joins the history.
  Decision check(double loss, double grad_norm);
  // After a rollback: forget the spikes and skips that led to it.
  void reset();
  int skipped_total() const { return skipped_total_; }
  // The history, for checkpoints: a resumed run judges its next steps as the original would.
  nlohmann::json to_json() const;
  void restore(const nlohmann::json& j);

 private:
  struct Stats {
    double mean, stddev;
  };
  Stats stats(const std::deque<double>& xs) const;
  GuardConfig cfg_;
  std::deque<double> losses_, norms_;  // the last `window` accepted steps
  std::deque<long> spikes_;            // attempt numbers of recent spikes
  long attempt_ = 0;
  int skipped_in_a_row_ = 0, skipped_total_ = 0;
};

}  // namespace ltrain
