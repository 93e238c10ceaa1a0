// The training loop: build, then per step: the step (src/train/step.cpp), the guard's verdict,
// log, maybe validate, maybe save. run_training() is what `ltrain train` runs after the config
// is loaded.
#pragma once
#include <cstdint>
#include <string>

#include "ltrain/config/config.h"
#include "ltrain/data/dataset.h"
#include "ltrain/model/llama.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/parallel_comms.h"
#include "ltrain/train/step.h"

namespace ltrain {

// resume: "" (a fresh run), "auto" (the newest valid checkpoint of train.run_dir, or a fresh run
// when there is none) or a checkpoint/run directory. par: the process grid the CLI created; its
// data x tensor grid is set up here from the config. Returns the last validation loss.
double run_training(const Config& cfg, ParallelContext& par, const std::string& resume = "");

// What one rank's evaluation saw, as sums, so that the ranks' shares add up to the whole.
struct EvalSums {
  double loss_sum = 0;   // the summed loss of the counted targets
  double counted = 0;    // targets counted (an SFT mask leaves some out)
  uint64_t windows = 0;  // windows this rank evaluated
  uint64_t batches = 0;  // global batches of up to world*B windows (the same on every rank)
  bool short_split = false;  // fewer windows than one full batch per rank
};

// This rank's share of the first `max_windows` windows of the loader's split, in order (0 = all
// of them), read in global batches of world*B windows as training reads them: rank r takes rows
// r*B..(r+1)*B-1 of each. The last global batch may be partial, down to fewer windows than one
// batch per rank: a rank's partial batch is padded with rows that count no target, and a rank
// left without a window does no work (it still takes part in the caller's reductions). So the
// ranks' sums add up to one process's over the same windows with the same B, batch for batch.
EvalSums evaluate(LlamaModel& model, DataLoader& loader, uint64_t max_windows);

// "3 windows in 1 batch", and when they were fewer than one full batch per rank, a note saying so.
std::string describe_eval(uint64_t windows, uint64_t batches, bool short_split, int world, int B);

// Raises a UserError when the data's vocabulary does not fit the model.
void check_data_matches_model(const DatasetMeta& meta, const ModelConfig& model);

}  // namespace ltrain
