#include "ltrain/train/guard.h"

#include <cmath>

#include "ltrain/core/io.h"

namespace ltrain {

StepGuard::Stats StepGuard::stats(const std::deque<double>& xs) const {
  double mean = 0, var = 0;
  for (double x : xs) mean += x;
  mean /= double(xs.size());
  for (double x : xs) var += (x - mean) * (x - mean);
  return {mean, std::sqrt(var / double(xs.size()))};
}

StepGuard::Decision StepGuard::check(double loss, double grad_norm) {
  ++attempt_;
  if (!cfg_.enabled) return {Verdict::kAccept, ""};
  while (!spikes_.empty() && spikes_.front() <= attempt_ - cfg_.window) spikes_.pop_front();

  if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
    ++skipped_total_;
    ++skipped_in_a_row_;
    const std::string why = strfmt("non-finite step (loss %g, grad norm %g)", loss, grad_norm);
    if (skipped_in_a_row_ >= cfg_.max_skipped_in_a_row)
      return {Verdict::kRollback, why + strfmt(", %d in a row", skipped_in_a_row_)};
    return {Verdict::kSkip, why};
  }
  if (int(losses_.size()) >= cfg_.min_history) {
    // A floor under the deviation keeps a perfectly flat history from calling noise a spike.
    const Stats l = stats(losses_), g = stats(norms_);
    const double l_limit = l.mean + cfg_.spike_sigma * std::max(l.stddev, 1e-3 * std::fabs(l.mean));
    const double g_limit = g.mean + cfg_.spike_sigma * std::max(g.stddev, 1e-3 * std::fabs(g.mean));
    if (loss > l_limit || grad_norm > g_limit) {
      ++skipped_total_;
      ++skipped_in_a_row_;
      spikes_.push_back(attempt_);
      const std::string why =
          loss > l_limit ? strfmt("loss spike (%.4f > %.4f = mean %.4f + %.1f sigma)", loss, l_limit, l.mean, cfg_.spike_sigma)
                         : strfmt("grad-norm spike (%.4g > %.4g = mean %.4g + %.1f sigma)", grad_norm, g_limit, g.mean,
                                  cfg_.spike_sigma);
      if (int(spikes_.size()) >= cfg_.rollback_after)
        return {Verdict::kRollback, why + strfmt(", %zu spikes within %d attempts", spikes_.size(), cfg_.window)};
      return {Verdict::kSkip, why};
    }
  }
  skipped_in_a_row_ = 0;
  losses_.push_back(loss);
  norms_.push_back(grad_norm);
  if (int(losses_.size()) > cfg_.window) {
    losses_.pop_front();
    norms_.pop_front();
  }
  return {Verdict::kAccept, ""};
}

nlohmann::json StepGuard::to_json() const {
  return {{"losses", losses_}, {"grad_norms", norms_}, {"skipped_total", skipped_total_}};
}

void StepGuard::restore(const nlohmann::json& j) {
  losses_ = j.at("losses").get<std::deque<double>>();
  norms_ = j.at("grad_norms").get<std::deque<double>>();
  skipped_total_ = j.at("skipped_total").get<int>();
  spikes_.clear();
  skipped_in_a_row_ = 0;
}

void StepGuard::reset() {
  // The history of accepted steps stays: it describes healthy training at about the weights the
  // rollback returns to, and without it a spike right after a rollback would go unnoticed.
  spikes_.clear();
  skipped_in_a_row_ = 0;
}

}  // namespace ltrain
