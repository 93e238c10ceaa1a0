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
// exchange right before the forward that needs it (interleaved: one tick earlier when it exists by
// then, so its transfer overlaps the op in between), a gradient in the exchange of the backward
// that made it. Both ends of every message know its tick and its place in the batch, so messages match
// in order, and no rank waits on a message that is not being sent. The simulation also counts the
// activation slots each chunk needs (the micro-batches in flight): P - p on stage p under 1F1B;
// the early arrivals of the interleaved schedule add up to one per chunk on the stages after the
// first, which keeps the most.
//
// Overlap: an exchange is started, not waited for. It is completed right before the first later
// op of the stage that touches one of its buffers (a received input or gradient it reads, a sent
// output or gradient it overwrites), or at the end of the step. On the GPU that completion is a
// wait of the compute stream on the device (Communicator::wait_on_stream), so the host never
// blocks inside the step, and an exchange proceeds while the next op, on another micro-batch or
// chunk, computes. Under 1F1B that is each stage's warm-up forwards; in the steady state every
// exchange carries what the next op needs (Megatron-LM also overlaps only under the interleaved
// schedule). Interleaved, with the early arrivals: 37 of the 66 exchanges of P = 2, V = 2, m = 8
// (16 of 58 without them).
#pragma once
#include <cstdint>
#include <memory>
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
    // Earlier ticks (indices into ticks) whose exchanges complete before this tick's op.
    std::vector<int> settle;
  };
  std::vector<Tick> ticks;
  std::vector<int> slots;  // per chunk
  int total_ticks = 0;     // of the whole schedule
  int busy_ticks = 0;      // this stage's ops: busy / total is its share of the step
  // Exchanges with at least one of the stage's ops between their start and their completion.
  int overlapped_exchanges = 0, exchanges = 0;
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
  // parallelism) is armed for each chunk's last backward, so its buckets overlap the backwards.
  void run(const int32_t* inputs, const int32_t* targets, int B, int T, double dloss, GradReducer* reducer);
  // Tied embeddings: the first stage's embedding gradient and the last stage's copy's are summed
  // on both (after the data-parallel reduction), so both update alike. No-op otherwise.
  void sum_tied_grads();
  // The step's loss sum over the stages (only the last has one).
  double loss_sum(double local);
  // The ideal bubble of this schedule: the share of the step's ticks this stage is idle.
  double ideal_bubble() const;
  const PipelineProgram& program() const { return program_; }

  // bench: while on, the time this stage waits for its neighbours is measured: its stream's
  // waits for messages (marks of the backend's EventTimer around each one: CUDA events on the
  // GPU), plus the host's wait in loss_sum for the stages still running. take_wait_seconds()
  // returns the total since the last call; the backend must have synchronized.
  void measure_waits(bool on);
  double take_wait_seconds();

 private:
  LlamaModel& model_;
  PipelineProgram program_;
  Communicator& comm_;
  Communicator& host_;
  Tensor tied_tmp_;  // the other stage's tied gradient
  int tied_peer_ = -1;
  std::unique_ptr<EventTimer> wait_timer_;  // measure_waits(); null otherwise
  std::vector<std::pair<int, int>> wait_marks_;
  double host_wait_seconds_ = 0;
};

}  // namespace ltrain
