// The training loop: data -> forward/backward over micro-batches -> clip + AdamW -> log,
// validate and save. run_training() is what `ltrain train` runs after the config is loaded.
#pragma once
#include <string>

#include "ltrain/config/config.h"
#include "ltrain/data/dataset.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/grad_reducer.h"

#include <functional>
#include <memory>
#include <vector>

namespace ltrain {

// The collectives of this rank's layout: NCCL on device buffers when the backend is CUDA, the
// MPI groups of the ParallelContext otherwise. tp is null without tensor parallelism.
// Each is wrapped in a watchdog (parallel.timeout_s). tp_host is the tensor-parallel group for
// host-side values (MPI).
struct ParallelComms {
  std::unique_ptr<Communicator> dp_nccl, tp_nccl;
  std::vector<std::unique_ptr<Communicator>> watched;
  Communicator* dp = nullptr;
  Communicator* tp = nullptr;
  Communicator* tp_host = nullptr;
};
ParallelComms make_parallel_comms(Backend& backend, int dp_size, int tp_size, double timeout_s = 0);

// The gradients of one optimizer step: zero them, forward and backward over `accum`
// micro-batches, the data-parallel reduction (bucketed; ZeRO-1's happens in AdamW) and the
// tensor-parallel reduction of replicated gradients. Returns the global mean loss.
double compute_gradients(LlamaModel& model, GradReducer* reducer, Communicator& dp, int accum,
                         int B, int T, const std::function<void(int32_t* inputs, int32_t* targets)>& next_batch);

// One optimizer step, as `ltrain bench` runs it: zero the gradients, forward
// and backward over `accum` micro-batches (next_batch fills each (B, T) input and target), the
// data-parallel reduction (reducer, or ZeRO-1 inside AdamW), the tensor-parallel reduction of
// replicated gradients, then clipping and AdamW. Returns the global mean loss; *stats gets the
// optimizer's figures.
double train_step(LlamaModel& model, AdamW& opt, GradReducer* reducer, Communicator& dp, int accum,
                  int B, int T, int step, double lr,
                  const std::function<void(int32_t* inputs, int32_t* targets)>& next_batch,
                  StepStats* stats = nullptr);

// resume: "" (a fresh run), "auto" (the newest valid checkpoint of train.run_dir, or a fresh run
// when there is none) or a checkpoint/run directory. Returns the last validation loss.
double run_training(const Config& cfg, const std::string& resume = "");

// Mean loss over `max_batches` micro-batches of the loader from its start (0 = one full epoch).
// counted_out: the number of counted targets (for averaging over ranks).
double evaluate(LlamaModel& model, DataLoader& loader, int B, int T, int max_batches,
                double* counted_out = nullptr);

// Raises a UserError when the data's vocabulary does not fit the model.
void check_data_matches_model(const DatasetMeta& meta, const ModelConfig& model);

}  // namespace ltrain
