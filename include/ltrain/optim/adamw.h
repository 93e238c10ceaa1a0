// AdamW with global-norm gradient clipping, and the learning-rate schedule.
//
// The optimizer keeps its state in flat buffers laid out like the model's parameter buffer:
// first and second moments, and fp32 master weights when the model computes in a lower precision
// (on the CPU the model's fp32 weights are the master weights, so there is no copy).
// Weight decay applies to the tensors the model marks as decaying (weight matrices and
// embeddings), never to RMSNorm weights.
#pragma once
#include "ltrain/config/config.h"
#include "ltrain/model/llama.h"

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

class AdamW {
 public:
  AdamW(const OptimConfig& cfg, LlamaModel& model);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update from the gradients in the model's gradient buffer. `step` is 1-based.
  StepStats step(int step, double lr);
  // Global L2 norm of the model's gradients.
  double grad_norm();

  Tensor exp_avg() const { return m_; }     // same layout as model.param_buffer()
  Tensor exp_avg_sq() const { return v_; }
  // Call after loading weights into the model, so the master copy (if any) follows them.
  void sync_master_from_model();

 private:
  Tensor view_like(const Tensor& buf, const Tensor& param) const;
  OptimConfig cfg_;
  LlamaModel& model_;
  Backend& be_;
  Tensor m_, v_, master_;  // master_ undefined when the model's weights are the master weights
};

}  // namespace ltrain
