// One optimizer step, as `ltrain train` and `ltrain bench` run it. TrainStep::run
// (src/train/step.cpp) names every phase, and every reduction is one of them:
//   1. the step's micro-batches, and the number of counted targets over every data rank (the
//      loss is their mean, so the count is needed before the first backward);
//   2. zero the gradients;
//   3. forward and backward over the micro-batches; data parallelism's gradient buckets are armed
//      on the last one, so their all-reduce overlaps its backward (GradReducer). Under pipeline
//      parallelism the stage runs its part of the schedule instead (train/pipeline.h), sending
//      activations and gradients to its neighbours;
//   4. finish the data-parallel reduction; pipeline with tied embeddings: sum the first and last
//      stages' embedding gradients;
//   5. tensor parallelism: sum the gradients of the replicated tensors (the norms) over the group;
//   6. ZeRO-1: reduce-scatter the gradients to their data-parallel shards;
//   7. the global gradient norm;
//   8. the verdict (the trainer's guard): a refused step changes no weight and no moment;
//   9. clip and update (AdamW).
// Only the loss and the norm are read back to the host: two synchronizations per step.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/grad_reducer.h"
#include "ltrain/train/pipeline.h"

namespace ltrain {

struct StepResult {
  double loss = 0;        // global mean over the step's counted targets
  double grad_norm = 0;   // global L2 norm before clipping
  double clip_scale = 1;  // factor applied to the gradients (1 when not clipped)
  bool applied = false;   // false: the verdict refused the update
};

// What a rank's steps run on, built the same way by `train` and `bench`: the model (under
// pipeline parallelism, this stage's chunks with the activation slots of its schedule), AdamW, the
// data-parallel gradient reducer (data parallelism without ZeRO-1) and the stage's schedule.
struct StepParts {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<AdamW> opt;
  std::unique_ptr<GradReducer> reducer;
  std::unique_ptr<Pipeline> pipeline;
};
// The groups of the rank's layout (parallel/parallel_comms.h; bench may wrap them to time them).
// dp is always set; tp, pp null without tensor / pipeline parallelism.
struct StepComms {
  Communicator* dp = nullptr;
  Communicator* tp = nullptr;
  Communicator* tp_host = nullptr;
  Communicator* pp = nullptr;
  Communicator* pp_host = nullptr;
};
// Weights from init_weights(train.seed); the caller loads a checkpoint over them if it has one.
StepParts build_step_parts(const Config& cfg, Backend& backend, const StepComms& comms);

class TrainStep {
 public:
  // Fills one micro-batch: (B, T) inputs and targets (-1 = not counted).
  using NextBatch = std::function<void(int32_t* inputs, int32_t* targets)>;
  // Sees the loss and the norm before anything changes; false refuses the update.
  using Verdict = std::function<bool(double loss, double grad_norm)>;

  // reducer: the data-parallel bucketed all-reduce; null with one data rank and under ZeRO-1,
  // whose reduction is AdamW's reduce-scatter. dp: the data-parallel group (the counted targets
  // and the loss are summed over it).
  // pipeline: this stage's part of the schedule (null without pipeline parallelism).
  TrainStep(LlamaModel& model, AdamW& opt, GradReducer* reducer, Communicator& dp, int accum, int B, int T,
            Pipeline* pipeline = nullptr);

  // Tests' fault injection (src/train/fault_injection.h): runs after the gradients are reduced,
  // before the ZeRO reduce-scatter and the norm, with the step number.
  void set_after_backward(std::function<void(int step)> hook) { after_backward_ = std::move(hook); }

  // The step's phases, in order. The device may still be running the update on return; the
  // caller synchronizes when it needs the time.
  StepResult run(int step, double lr, const NextBatch& next_batch, const Verdict& verdict = {});

 private:
  double read_micro_batches(const NextBatch& next_batch);
  LlamaModel& model_;
  AdamW& opt_;
  GradReducer* reducer_;
  Communicator& dp_;
  Pipeline* pipeline_;
  int accum_, B_, T_;
  std::vector<int32_t> inputs_, targets_;  // the step's micro-batches, one after another
  std::function<void(int)> after_backward_;
};

}  // namespace ltrain
