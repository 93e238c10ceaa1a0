#include "ltrain/train/step.h"

namespace ltrain {

StepParts build_step_parts(const Config& cfg, Backend& backend, const StepComms& c) {
  const TrainConfig& tc = cfg.train;
  const int dp_size = c.dp->size(), pp_size = c.pp ? c.pp->size() : 1;
  const bool zero = cfg.parallel.zero == 1 && dp_size > 1;
  StepParts parts;
  // Pipeline parallelism: this stage's part of the schedule, and the activation slots it needs.
  PipelineProgram program;
  PipelineStage stage;
  if (pp_size > 1) {
    const PipelineSplit split = llama_pipeline_split(cfg.model, tc.seq_len, pp_size, cfg.parallel.virtual_stages,
                                                     cfg.parallel.pipeline_layers);
    program = plan_pipeline(pp_size, split.virtual_stages, c.pp->rank(), cfg.grad_accum_steps(dp_size),
                            cfg.parallel.schedule == "interleaved");
    stage = PipelineStage{split, c.pp->rank(), program.slots, c.pp, c.pp_host};
  }
  parts.model = std::make_unique<LlamaModel>(cfg.model, backend, tc.micro_batch_size, tc.seq_len,
                                             parse_recompute(tc.recompute), zero ? 64 * dp_size : 1, c.tp, c.tp_host,
                                             pp_size > 1 ? &stage : nullptr);
  parts.model->init_weights(tc.seed);  // each rank draws its part of the same whole tensors
  parts.opt = std::make_unique<AdamW>(cfg.optim, parts.model->parameters(), c.dp, zero, c.tp_host, c.pp_host);
  if (dp_size > 1 && !zero)
    parts.reducer = std::make_unique<GradReducer>(parts.model->parameters(), *c.dp, cfg.parallel.bucket_mb);
  if (pp_size > 1) parts.pipeline = std::make_unique<Pipeline>(*parts.model, std::move(program), *c.pp, *c.pp_host);
  return parts;
}

TrainStep::TrainStep(LlamaModel& model, AdamW& opt, GradReducer* reducer, Communicator& dp, int accum, int B,
                     int T, Pipeline* pipeline)
    : model_(model), opt_(opt), reducer_(reducer), dp_(dp), pipeline_(pipeline), accum_(accum), B_(B), T_(T),
      inputs_(size_t(B) * T * size_t(accum)), targets_(inputs_.size()) {}

// All of the step's micro-batches; returns the counted targets over every data rank.
double TrainStep::read_micro_batches(const NextBatch& next_batch) {
  const size_t per = size_t(B_) * T_;
  double local = 0;
  for (int micro = 0; micro < accum_; ++micro) {
    next_batch(inputs_.data() + per * micro, targets_.data() + per * micro);
    for (size_t i = 0; i < per; ++i) local += targets_[per * micro + i] >= 0;
  }
  return dp_.sum(local);
}

StepResult TrainStep::run(int step, double lr, const NextBatch& next_batch, const Verdict& verdict) {
  StepResult r;
  const size_t per = size_t(B_) * T_;
  const double counted = read_micro_batches(next_batch);
  const double dloss = counted > 0 ? 1.0 / counted : 0.0;

  model_.zero_grads();
  // The losses stay on the device until every micro-batch is queued: one readback per step.
  if (pipeline_) {
    pipeline_->run(inputs_.data(), targets_.data(), B_, T_, dloss, reducer_);  // this stage's ops
  } else {
    for (int micro = 0; micro < accum_; ++micro) {
      if (reducer_) reducer_->arm(micro == accum_ - 1);  // data parallel: buckets start during backward
      model_.forward_backward_accumulate(inputs_.data() + per * micro, targets_.data() + per * micro, B_, T_, dloss);
    }
  }
  if (reducer_) reducer_->finish();  // data parallel: the last buckets, and wait for all
  if (pipeline_) pipeline_->sum_tied_grads();  // pipeline, tied embeddings: first + last stage
  model_.reduce_replicated_grads();  // tensor parallel: the norms' gradients over the group
  const double loss_sum = pipeline_ ? pipeline_->loss_sum(model_.take_loss_sum())  // the last stage's
                                    : model_.take_loss_sum();
  r.loss = counted > 0 ? dp_.sum(loss_sum) / counted : 0.0;
  if (after_backward_) after_backward_(step);

  opt_.reduce_scatter_grads();  // ZeRO-1: each data rank gets its shard's sum
  r.grad_norm = opt_.grad_norm();
  r.clip_scale = opt_.clip_scale(r.grad_norm);
  if (verdict && !verdict(r.loss, r.grad_norm)) return r;  // refused: nothing changes
  opt_.apply(step, lr, r.grad_norm);  // clip and update
  r.applied = true;
  return r;
}

}  // namespace ltrain
