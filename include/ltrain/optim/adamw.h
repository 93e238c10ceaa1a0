// AdamW with global-norm gradient clipping, and the learning-rate schedule.
//
// The optimizer keeps its state in flat buffers laid out like the model's parameter buffer:
// first and second moments, and fp32 master weights when the model computes in a lower precision
// (on the CPU the model's fp32 weights are the master weights, so there is no copy).
// Weight decay applies to the tensors the model marks as decaying (weight matrices and
// embeddings), never to RMSNorm weights.
//
// Data parallelism: without ZeRO the gradients arrive already summed over the data-parallel ranks
// (GradReducer), and every rank runs the same update. With ZeRO-1 (`zero`), the flat buffers are
// split into equal shards, one per data-parallel rank: step() reduce-scatters the gradients, each
// rank updates its shard of the master weights and moments, and the updated weights are
// all-gathered.
//
// For checkpoints the optimizer is the ShardedState of a run (checkpoint/state_sections.h): it
// holds the fp32 master weights and the moments of its range of the flat layout.
#pragma once
#include "ltrain/checkpoint/state_sections.h"
#include "ltrain/config/config.h"
#include "ltrain/core/backend.h"
#include "ltrain/core/param_set.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

// Learning rate for optimizer step `step` (1-based): linear warmup from lr/warmup to lr over
// warmup_steps, then a cosine from lr down to min_lr_ratio*lr at decay_steps (train.steps when
// 0), then flat.
double lr_at(const OptimConfig& o, int total_steps, int step);

struct StepStats {
  double grad_norm;   // global L2 norm before clipping
  double clip_scale;  // factor applied to the gradients (1 when not clipped)
  double lr;
};

class AdamW final : public ShardedState {
 public:
  // params: the model's trainable tensors (LlamaModel::parameters()), on params.backend().
  // dp: the data-parallel communicator (nullptr = one rank). With zero, the flat buffers must be
  // padded to a multiple of dp->size() (LlamaModel's buffer_multiple). tp: the tensor-parallel
  // group, for the global gradient norm over sharded tensors (host scalars). pp: the pipeline
  // group (host scalars): the norm adds up over the stages, a tied copy counted once.
  AdamW(const OptimConfig& cfg, ParameterSet& params, Communicator* dp = nullptr, bool zero = false,
        Communicator* tp = nullptr, Communicator* pp = nullptr);
  ~AdamW() override;
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update from the gradients in the parameter set's gradient buffer. `step` is 1-based.
  StepStats step(int step, double lr);
  // The same in three phases, so that the training step shows its reductions and a guard can
  // look at the norm before anything changes (src/train/step.cpp):
  // reduce_scatter_grads: ZeRO-1 only, each data rank receives the summed gradients of its shard
  // (collective; nothing otherwise, the gradients arrive reduced);
  // grad_norm: the global L2 norm of the gradients (collective over the tensor group, and the
  // data group under ZeRO);
  // apply: clips with that norm and updates weights and moments (under ZeRO, all-gathers the
  // updated weights).
  void reduce_scatter_grads();
  double grad_norm();
  void apply(int step, double lr, double grad_norm);
  double clip_scale(double grad_norm) const;

  // From buffers laid out like the parameters (each rank keeps its shard of the moments;
  // import_weights sets both the master copy and the model's weights). Not collective.
  void import_moments(const Tensor& m_full, const Tensor& v_full);
  void import_weights(const Tensor& w_full);

  // The part of the flat buffers this rank updates: [shard_begin, shard_begin + shard_size) of
  // the parameter layout; all of it, or its ZeRO shard.
  const ParameterSet& parameters() const override { return params_; }
  bool zero() const override { return zero_; }
  int64_t shard_begin() const override { return shard_begin_; }
  int64_t shard_size() const override { return shard_n_; }
  // For checkpoints written per rank: copies that range of the fp32 master weights (the model's
  // own where they are the master copy) and of both moments to host arrays of shard_size()
  // floats. Not collective.
  void export_shard(float* w, float* m, float* v) override;
  // For loading checkpoints without staging whole buffers on the device: host values of the
  // flat parameter layout [begin, begin + n). kWeights sets the model's weights there and the
  // master copy where it overlaps this rank's shard; the moments take their overlap. Not
  // collective: every rank imports what it holds.
  using State = ShardedState::Buffer;
  void import_host_range(State which, int64_t begin, const float* values, int64_t n) override;

 private:
  OptimConfig cfg_;
  ParameterSet& params_;
  Backend& be_;
  Communicator* dp_;
  bool zero_;
  Communicator* tp_;
  Communicator* pp_;
  bool tied_copy_ = false;  // the parameters hold a pipeline stage's tied copy of the embedding
  int64_t shard_begin_ = 0, shard_n_ = 0;
  Tensor m_, v_;       // (shard_n) moments
  Tensor master_;      // (shard_n) fp32 master weights; undefined when the model's are the master
  Tensor grad_shard_;  // (shard_n) reduce-scattered gradients (ZeRO only)
};

}  // namespace ltrain
