// Pipeline parallelism: the schedule of one optimizer step over P stages, and the stage's part
// in running it (docs/distributed.md, "Pipeline parallelism").
//
// The schedules are Megatron-LM's. 1F1B (PipeDream-Flush): stage p runs P - p - 1 warm-up
// forwards, then alternates one forward and one backward, then the remaining backwards. The
// interleaved schedule gives each stage V chunks of layers (global chunk v * P + p) and walks the
// micro-batches through them in groups of P, with (P - p - 1) * 2 + (V - 1) * P warm-up forwards;
// the bubble shrinks by V. The last chunk computes the loss and the head's backward inside its
// forward, so its backward follows without waiting for anyone.
//
// How it runs: every rank simulates every stage's order with one tick per forward or backward
// (plan_pipeline), which gives each rank the same global order of events. In a tick a stage runs
// at most one op, then exchanges its messages as one send_recv batch: an activation arrives in the
// exchange right before the forward that needs it, a gradient in the exchange of the backward that
// made it. Both ends of every message know its tick and its place in the batch, so messages match
// in order, and no rank waits on a message that is not being sent. The simulation also counts the
// activation slots each chunk needs (the micro-batches in flight): P - p on stage p under 1F1B.
#pragma once
#include <cstdint>
#include <vector>

#include "ltrain/model/llama.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/grad_reducer.h"

namespace ltrain {

// One forward or backward of micro-batch `micro` through chunk `chunk` (this stage's v).
struct PipeOp {
  bool forward;
  int chunk, micro;
};

// Stage `stage`'s ops for one step of m micro-batches (V chunks per stage; interleaved needs
// m % P == 0 and V >= 1; 1F1B needs V == 1).
std::vector<PipeOp> pipeline_order(int P, int V, int stage, int m, bool interleaved);

// Stage `stage`'s part of a step: its ticks in order (ticks where it has nothing to do are left
// out) and the activation slots its chunks need.
struct PipelineProgram {
  struct Message {
    int chunk, slot;   // this stage's chunk and slot whose buffer is sent or received into
    bool activation;   // the chunk's input/output, else the gradient
    bool send;
    int peer;          // stage
  };
  struct Tick {
    int tick;
    bool has_op = false;
    PipeOp op{};
    int slot = -1;  // the op's slot
    std::vector<Message> messages;
  };
  std::vector<Tick> ticks;
  std::vector<int> slots;  // per chunk
  int total_ticks = 0;     // of the whole schedule
  int busy_ticks = 0;      // this stage's ops: busy / total is its share of the step
};
PipelineProgram plan_pipeline(int P, int V, int stage, int m, bool interleaved);

// Runs a stage's program for a model built from PipelineStage{split, stage, program.slots}.
class Pipeline {
 public:
  // comm: the pipeline group (ranks = stages; NCCL on the GPU). host: the same ranks for host
  // scalars. The model's stage must come from the same program.
  Pipeline(LlamaModel& model, PipelineProgram program, Communicator& comm, Communicator& host);
  ~Pipeline();

  // Forward and backward of the step's micro-batches (consecutive (B, T) arrays). reducer (data
  // parallelism) is armed for the stage's last backward, so its buckets overlap it.
  void run(const int32_t* inputs, const int32_t* targets, int B, int T, double dloss, GradReducer* reducer);
  // Tied embeddings: the first stage's embedding gradient and the last stage's copy's are summed
  // on both (after the data-parallel reduction), so both update alike. No-op otherwise.
  void sum_tied_grads();
  // The step's loss sum over the stages (only the last has one).
  double loss_sum(double local) { return host_.sum(local); }
  // The ideal bubble of this schedule: the share of the step's ticks this stage is idle.
  double ideal_bubble() const;

 private:
  LlamaModel& model_;
  PipelineProgram program_;
  Communicator& comm_;
  Communicator& host_;
  Tensor tied_tmp_;  // the other stage's tied gradient
  int tied_peer_ = -1;
};

}  // namespace ltrain
