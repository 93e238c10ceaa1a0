// Checkpoints (docs/checkpoint-format.md, format version 2): RUN_DIR/checkpoints/step_NNNNNNNN/
// holding
//   model_RRRRR.bin  the fp32 (master) weights one rank holds: its tensor-parallel slice of every
//                    tensor, or under ZeRO-1 its element range of that slice;
//   optim_RRRRR.bin  the same rank's AdamW moments (every exp_avg, then every exp_avg_sq), fp32;
//   meta.json        format, version, step, the full run config, the data loader's position, the
//                    parallel layout, every tensor's global shape and dtype, which slice of which
//                    tensor each file holds (and where, with a CRC-32), and every file's CRC-32;
//   tokenizer.model  a copy of the run's tokenizer, so eval and generate need nothing else.
// RRRRR is the world rank that wrote the file. Without ZeRO the data-parallel replicas are
// identical and only data rank 0 of each tensor-parallel group writes; with ZeRO every rank does.
// A checkpoint is written into `step_NNNNNNNN.tmp` (every rank its own files, rank 0 meta.json
// last) and renamed when complete; RUN_DIR/checkpoints/latest (a one-line file) is replaced last.
// An interrupted save never damages an older one. Readers assemble any slice from the files, so a
// checkpoint resumes under any data x tensor layout, with or without ZeRO. Version 1 checkpoints
// (whole tensors in model_00000.bin / optim_00000.bin) are read too.
//
// What a checkpoint holds comes in named sections (checkpoint/state_sections.h): the weights and
// the optimizer's moments from a ShardedState (the optimizer), the data position and the guard
// as JSON (TrainState). This layer knows neither the model nor the optimizer.
// The code: manifest.cpp (meta.json), shard_io.cpp (shard files), checkpoint.cpp (save, open,
// verify, find, prune, load).
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/checkpoint/state_sections.h"
#include "ltrain/config/config.h"
#include "ltrain/core/param_set.h"
#include "ltrain/parallel/communicator.h"

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
  nlohmann::json layout;      // the parallel layout that writes the checkpoint: {data, tensor, zero}
  nlohmann::json guard;       // the step guard's history (StepGuard::to_json)
};

// Tests' fault injection (src/train/fault_injection.h), called by every rank of a save with its
// step: `between_files` between its two shard files (also on a rank that writes none), where the
// kill hook dies; `fail_write`, when it returns true, makes this rank's moments file fail in the
// middle of its write as on a full disk (ENOSPC).
struct SaveHooks {
  std::function<void(int step)> between_files;
  std::function<bool(int step)> fail_write;
};

// Training: collective over `world`, every rank of the job (host collectives), whose ranks follow
// ParallelContext's grid (world rank = data rank * tensor size + tensor rank). Each writing rank
// writes its own shard files (its slice of the fp32 master weights and of the AdamW moments:
// sharded.export_shard, no gathering of tensors); their sizes and checksums are gathered to
// rank 0, which writes meta.json last, renames the directory and updates `latest`. Returns the
// checkpoint directory on every rank, once it is complete.
// A failure on any rank (a full disk) is agreed on by every rank once all have stopped writing:
// rank 0 removes step_NNNNNNNN.tmp, then every rank throws the same UserError naming the failing
// rank and its error. Older checkpoints and `latest` are untouched.
std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            ShardedState& sharded, Communicator& world, const std::string& tokenizer_path,
                            const SaveHooks& hooks = {});

// One process with whole tensors (import-hf, tests): the weights and, when given, the AdamW
// moments, as the single rank of a 1 x 1 layout.
std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            const std::vector<HostTensor>& weights, const std::vector<HostTensor>* exp_avg,
                            const std::vector<HostTensor>* exp_avg_sq, const std::string& tokenizer_path,
                            const SaveHooks& hooks = {});

// Checks every file's size and CRC-32 against meta.json, and that the shard files' slices cover
// every tensor exactly once; UserError naming the file.
// With parts > 1, only the CRCs of the files whose index (in name order) is part mod parts are
// computed (sizes and slices are checked for all): the ranks of a job split the reading.
void verify_checkpoint(const CheckpointInfo& info, int part = 0, int parts = 1);
// Opens and verifies `dir` together with every rank of `group` (each reads 1/size of the files);
// every rank gets the same verdict. On failure, the UserError naming the file (every rank reads
// the failing checkpoint fully to name it, identically).
CheckpointInfo open_verified_checkpoint(const std::string& dir, Communicator& group);
// Steps of the complete checkpoints in RUN_DIR/checkpoints, newest first.
std::vector<int> list_checkpoint_steps(const std::string& run_dir);
// The newest checkpoint that opens and verifies; each one skipped adds a warning.
// With a group, its ranks share the verification (open_verified_checkpoint) and agree.
std::optional<CheckpointInfo> find_latest_valid_checkpoint(const std::string& run_dir,
                                                           std::vector<std::string>* warnings,
                                                           Communicator* group = nullptr);
// The step_NNNNNNNN.tmp directories an interrupted save (a kill, a node failure) left in
// RUN_DIR/checkpoints: those without meta.json are removed and returned. One with meta.json got as
// far as its manifest, so it may be complete: it is left in place and added to `kept`.
std::vector<std::string> remove_partial_saves(const std::string& run_dir, std::vector<std::string>* kept);
// Removes all but the newest keep_last checkpoints, sparing steps that are multiples of
// keep_every. keep_last 0 keeps everything. Returns the directories removed.
std::vector<std::string> prune_checkpoints(const std::string& run_dir, int keep_last, int keep_every);

// `path` is a checkpoint directory (with meta.json) or a run directory (its latest checkpoint).
// Validates meta.json; UserError naming the file otherwise.
CheckpointInfo open_checkpoint(const std::string& path);

// Every tensor of a section ("tensors": the weights, "optimizer": the moments, named NAME.exp_avg
// and NAME.exp_avg_sq), whole (assembled from every shard file), in manifest order, checksums
// verified.
std::vector<HostTensor> read_checkpoint_tensors(const CheckpointInfo& info, const std::string& section);

// Loads the weights into the parameters of a model built from info.config.model (any
// tensor-parallel layout: each rank reads only its slice). Checks every shape and checksum;
// UserError naming the file and tensor.
void load_checkpoint_weights(const CheckpointInfo& info, ParameterSet& params);
// For training: the fp32 weights into the optimizer's master copy and the model, and (for
// resuming) the moments, through the ShardedState (the optimizer). Each rank reads its
// tensor-parallel slice of every tensor, whatever the layout that wrote the checkpoint; not
// collective.
void load_checkpoint_training_state(const CheckpointInfo& info, ShardedState& sharded, bool with_moments = true);

}  // namespace ltrain
