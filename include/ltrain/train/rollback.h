// What the trainer does with a step the guard refuses (src/train/guard.cpp decides). A skipped
// step is retried on the next data. A rollback goes back to the newest valid checkpoint, lowers
// the learning rate, and skips the data since the first refused step of this run of refusals:
// the skipped ranges are kept in RUN_DIR/skipped_samples.jsonl and read back whenever a run
// starts in that directory (a resume, or a rerun with the file copied in), so the same data is
// skipped again.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/config/config.h"
#include "ltrain/data/dataset.h"
#include "ltrain/metrics/logger.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/train/guard.h"

namespace ltrain {

// A range of training data skipped after a rollback: [from, to) in loader positions.
struct SkipRange {
  LoaderState from, to;
  int step;  // the optimizer step at which the rollback happened
};

// RUN_DIR/skipped_samples.jsonl: one JSON record per line; none when the file does not exist.
std::vector<SkipRange> read_skip_ranges(const std::string& path);
void append_skip_range(const std::string& path, const SkipRange& r);

class Rollbacks {
 public:
  // Loads a checkpoint's weights and moments into the model and the optimizer.
  using LoadState = std::function<void(const CheckpointInfo&)>;

  // Reads the skipped ranges of cfg.train.run_dir. Only the main rank writes the file.
  Rollbacks(const Config& cfg, BatchStream& data, MetricsLogger& log, bool main_rank);

  // Fills one micro-batch, jumping over the recorded ranges first.
  void next_batch(int32_t* inputs, int32_t* targets);
  // Before each attempt of a step: where its data begins.
  void before_step() { data_before_ = data_.state(); }
  void accepted() { in_spike_window_ = false; }
  // The factor on the learning rate: rollback_lr_factor per rollback so far.
  double lr_scale() const { return lr_scale_; }
  int rollbacks() const { return rollbacks_; }

  // A refused attempt of `step`: logs it and, for a rollback, loads the newest valid checkpoint
  // of the run (collective over `world`, whose ranks share its verification) through `load`,
  // restores its data position and resets the guard. Returns the step to attempt next.
  // RunStopped when rollbacks do not help or there is no checkpoint to go back to.
  int refused(int step, const StepGuard::Decision& verdict, StepGuard& guard, Communicator& world,
              const LoadState& load);

 private:
  const Config& cfg_;
  BatchStream& data_;
  MetricsLogger& log_;
  bool main_rank_;
  std::string skip_file_;
  std::vector<SkipRange> skips_;
  int rollbacks_ = 0;
  double lr_scale_ = 1.0;
  LoaderState data_before_;
  LoaderState spike_window_start_;  // where the data of the current run of spikes began
  bool in_spike_window_ = false;
};

}  // namespace ltrain
