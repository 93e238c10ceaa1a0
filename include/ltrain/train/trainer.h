// The training loop: data -> forward/backward over micro-batches -> clip + AdamW -> log,
// validate and save. run_training() is what `ltrain train` runs after the config is loaded.
#pragma once
#include <string>

#include "ltrain/config/config.h"
#include "ltrain/data/dataset.h"
#include "ltrain/model/llama.h"

namespace ltrain {

// resume: "" (a fresh run), "auto" (the newest valid checkpoint of train.run_dir, or a fresh run
// when there is none) or a checkpoint/run directory. Returns the last validation loss.
double run_training(const Config& cfg, const std::string& resume = "");

// Mean loss over `max_batches` micro-batches of the loader from its start (0 = one full epoch).
double evaluate(LlamaModel& model, DataLoader& loader, int B, int T, int max_batches);

// Raises a UserError when the data's vocabulary does not fit the model.
void check_data_matches_model(const DatasetMeta& meta, const ModelConfig& model);

}  // namespace ltrain
