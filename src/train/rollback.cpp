#include "ltrain/train/rollback.h"

#include <sstream>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

std::vector<SkipRange> read_skip_ranges(const std::string& path) {
  std::vector<SkipRange> out;
  if (!file_exists(path)) return out;
  std::istringstream in(read_text_file(path));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    try {
      auto j = nlohmann::json::parse(line);
      SkipRange r{LoaderState::from_json(j.at("from")), LoaderState::from_json(j.at("to")), j.at("step").get<int>()};
      // A range written by hand names no shuffle order: it means this run's.
      if (!j.at("to").contains("order")) r.from.order = r.to.order = kWindowOrderName;
      out.push_back(r);
    } catch (const nlohmann::json::exception& e) {
      user_error(path, ":", n, ": not a skipped-range record (", e.what(), ")");
    }
  }
  return out;
}

void append_skip_range(const std::string& path, const SkipRange& r) {
  const std::string old = file_exists(path) ? read_text_file(path) : "";
  const nlohmann::json j = {{"step", r.step}, {"from", r.from.to_json()}, {"to", r.to.to_json()}};
  write_text_file_atomic(path, old + j.dump() + "\n");
}

Rollbacks::Rollbacks(const Config& cfg, BatchStream& data, MetricsLogger& log, bool main_rank)
    : cfg_(cfg), data_(data), log_(log), main_rank_(main_rank),
      skip_file_(path_join(cfg.train.run_dir, "skipped_samples.jsonl")), skips_(read_skip_ranges(skip_file_)) {
  if (!skips_.empty()) log.info(strfmt("skipping %zu data range(s) listed in %s", skips_.size(), skip_file_.c_str()));
}

void Rollbacks::next_batch(int32_t* inputs, int32_t* targets) {
  // Jump over recorded ranges: the data that made an earlier rollback necessary.
  for (bool moved = true; moved;) {
    moved = false;
    const LoaderState at = data_.state();
    for (const auto& r : skips_)
      if (at.epoch == r.from.epoch && at.cursor >= r.from.cursor && (at.epoch < r.to.epoch || at.cursor < r.to.cursor)) {
        data_.restore(r.to);
        moved = true;
      }
  }
  data_.next_batch(inputs, targets);
}

int Rollbacks::refused(int step, const StepGuard::Decision& verdict, StepGuard& guard, Communicator& world,
                       const LoadState& load) {
  const LoaderState data_after = data_.state();
  log_.info(strfmt("step %6d | skipped: %s | data epoch %llu windows %llu..%llu", step, verdict.reason.c_str(),
                   (unsigned long long)data_before_.epoch, (unsigned long long)data_before_.cursor,
                   (unsigned long long)data_after.cursor));
  log_.record({{"step", step}, {"event", "skipped_step"}, {"reason", verdict.reason},
               {"data_from", data_before_.to_json()}, {"data_to", data_after.to_json()},
               {"skipped_steps", guard.skipped_total()}});
  if (!in_spike_window_) spike_window_start_ = data_before_, in_spike_window_ = true;
  if (verdict.verdict == StepGuard::Verdict::kSkip) return step;  // the same step, on the next data

  // Rollback: the newest valid checkpoint, minus the data that caused this.
  const GuardConfig& g = cfg_.guard;
  if (++rollbacks_ > g.max_rollbacks)
    throw RunStopped(strfmt("guard: %d rollbacks did not help (%s at step %d); stopping. Look at "
                            "%s and consider a lower optim.lr", g.max_rollbacks,
                            verdict.reason.c_str(), step, skip_file_.c_str()));
  std::vector<std::string> warnings;
  const std::optional<CheckpointInfo> back = find_latest_valid_checkpoint(cfg_.train.run_dir, &warnings, &world);
  for (const auto& w : warnings) log_.info("WARNING: corrupt or incomplete checkpoint: " + w);
  if (!back)
    throw RunStopped(strfmt("guard: %s at step %d, and no checkpoint to roll back to in %s; stopping",
                            verdict.reason.c_str(), step, cfg_.train.run_dir.c_str()));
  SkipRange range{spike_window_start_, data_after, step};
  skips_.push_back(range);
  if (main_rank_) append_skip_range(skip_file_, range);
  load(*back);
  data_.restore(LoaderState::from_json(back->meta["data"]["train"]));
  lr_scale_ *= g.rollback_lr_factor;
  guard.reset();
  in_spike_window_ = false;
  log_.info(strfmt("step %6d | ROLLBACK %d/%d to %s (%s); skipping data epoch %llu windows %llu..%llu "
                   "(recorded in %s); lr x %g", step, rollbacks_, g.max_rollbacks, back->dir.c_str(),
                   verdict.reason.c_str(), (unsigned long long)range.from.epoch,
                   (unsigned long long)range.from.cursor, (unsigned long long)range.to.cursor,
                   skip_file_.c_str(), lr_scale_));
  log_.record({{"step", step}, {"event", "rollback"}, {"reason", verdict.reason}, {"to_step", back->step},
               {"skipped_data_from", range.from.to_json()}, {"skipped_data_to", range.to.to_json()},
               {"rollbacks", rollbacks_}, {"lr_scale", lr_scale_}});
  return back->step + 1;
}

}  // namespace ltrain
