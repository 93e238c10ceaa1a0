// Checkpoints: RUN_DIR/checkpoints/step_NNNNNNNN/ holding
//   meta.json       format, version, step, the full run config, the data loader's position, and
//                   for every tensor its name, shape, dtype, file, byte offset and CRC-32;
//   model_00000.bin the weights in fp32, in the order meta.json lists them;
//   optim_00000.bin the AdamW moments (exp_avg then exp_avg_sq for each tensor), fp32;
//   tokenizer.model a copy of the run's tokenizer, so eval and generate need nothing else.
// The `_00000` suffix is the shard index: a single-process run writes one shard; meta.json lists
// the files, which leaves room for per-rank shards.
// A checkpoint is written into `step_NNNNNNNN.tmp` and renamed when complete; RUN_DIR/checkpoints/
// latest (a one-line file) is replaced last. An interrupted save never damages an older one.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/config/config.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"

namespace ltrain {

struct CheckpointInfo {
  std::string dir;
  int step = 0;
  Config config;
  nlohmann::json meta;
};

// Where training stands, beyond the weights.
struct TrainState {
  int step = 0;               // optimizer steps done; the learning-rate schedule continues from here
  int64_t tokens = 0;         // tokens trained on
  nlohmann::json data;        // the data loader's position (a global window index)
  nlohmann::json layout;      // the parallel layout that wrote the checkpoint
  nlohmann::json guard;       // the step guard's history (StepGuard::to_json)
};

// Writes whole tensors (LlamaModel::export_full): the weights and, when given, the AdamW moments.
// Returns the checkpoint directory written. One process writes; the others only gathered.
std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            const std::vector<HostTensor>& weights, const std::vector<HostTensor>* exp_avg,
                            const std::vector<HostTensor>* exp_avg_sq, const std::string& tokenizer_path);

// Checks every file's size and CRC-32 against meta.json; UserError naming the file.
void verify_checkpoint(const CheckpointInfo& info);
// Steps of the complete checkpoints in RUN_DIR/checkpoints, newest first.
std::vector<int> list_checkpoint_steps(const std::string& run_dir);
// The newest checkpoint that opens and verifies; each one skipped adds a warning.
std::optional<CheckpointInfo> find_latest_valid_checkpoint(const std::string& run_dir,
                                                           std::vector<std::string>* warnings);
// Removes all but the newest keep_last checkpoints, sparing steps that are multiples of
// keep_every. keep_last 0 keeps everything. Returns the directories removed.
std::vector<std::string> prune_checkpoints(const std::string& run_dir, int keep_last, int keep_every);

// `path` is a checkpoint directory (with meta.json) or a run directory (its latest checkpoint).
// Validates meta.json; UserError naming the file otherwise.
CheckpointInfo open_checkpoint(const std::string& path);

// Every tensor of a section ("tensors": the weights, "optimizer": the moments), whole, in file
// order, checksums verified.
std::vector<HostTensor> read_checkpoint_tensors(const CheckpointInfo& info, const std::string& section);

// Loads the weights into a model built from info.config.model (any tensor-parallel layout: each
// rank keeps its part). Checks every shape and checksum; UserError naming the file and tensor.
void load_checkpoint_weights(const CheckpointInfo& info, LlamaModel& model);
// For training: the fp32 weights into the optimizer's master copy and the model, and (for
// resuming) the moments.
void load_checkpoint_training_state(const CheckpointInfo& info, LlamaModel& model, AdamW& optimizer,
                                    bool with_moments = true);

}  // namespace ltrain
