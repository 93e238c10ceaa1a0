// The training loop: build, then per step: the step (src/train/step.cpp), the guard's verdict,
// log, maybe validate, maybe save. run_training() is what `ltrain train` runs after the config
// is loaded.
#pragma once
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

// Mean loss over `max_batches` micro-batches of the loader from its start (0 = one full epoch).
// counted_out: the number of counted targets (for averaging over ranks).
double evaluate(LlamaModel& model, DataLoader& loader, int B, int T, int max_batches,
                double* counted_out = nullptr);

// Raises a UserError when the data's vocabulary does not fit the model.
void check_data_matches_model(const DatasetMeta& meta, const ModelConfig& model);

}  // namespace ltrain
