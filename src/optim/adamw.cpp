#include "ltrain/optim/adamw.h"

#include <algorithm>

#include <cmath>

#include "ltrain/core/check.h"

namespace ltrain {

double lr_at(const OptimConfig& o, int total_steps, int step) {
  const int warmup = o.warmup_steps;
  const int decay_end = o.decay_steps > 0 ? o.decay_steps : total_steps;
  const double min_lr = o.lr * o.min_lr_ratio;
  if (step <= warmup) return o.lr * double(step) / double(warmup);
  if (step >= decay_end) return min_lr;
  const double progress = double(step - warmup) / double(decay_end - warmup);
  return min_lr + (o.lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

AdamW::AdamW(const OptimConfig& cfg, ParameterSet& params, Communicator* dp, bool zero, Communicator* tp,
             Communicator* pp)
    : cfg_(cfg), params_(params), be_(params.backend()), dp_(dp), zero_(zero && dp && dp->size() > 1),
      tp_(tp && tp->size() > 1 ? tp : nullptr), pp_(pp && pp->size() > 1 ? pp : nullptr) {
  for (const auto& p : params.params()) tied_copy_ = tied_copy_ || p.tied_copy;
  const Tensor p = params.param_buffer();
  const DType md = be_.master_dtype();
  if (zero_) {
    LTRAIN_CHECK(p.numel() % dp_->size() == 0, "ZeRO needs the parameter buffer padded to the data size");
    shard_n_ = p.numel() / dp_->size();
    shard_begin_ = shard_n_ * dp_->rank();
    grad_shard_ = be_.alloc({shard_n_}, md);
  } else {
    shard_n_ = p.numel();
  }
  m_ = be_.alloc({shard_n_}, md);
  v_ = be_.alloc({shard_n_}, md);
  if (p.dtype != md) {
    master_ = be_.alloc({shard_n_}, md);
    be_.copy(master_, flat_range(p, shard_begin_, shard_n_));
  }
}

AdamW::~AdamW() {
  be_.free(m_);
  be_.free(v_);
  be_.free(master_);
  be_.free(grad_shard_);
}

void AdamW::export_shard(float* w, float* m, float* v) {
  be_.synchronize();
  be_.to_host(w, DType::kF32, master_.defined() ? master_ : flat_range(params_.param_buffer(), shard_begin_, shard_n_));
  be_.to_host(m, DType::kF32, m_);
  be_.to_host(v, DType::kF32, v_);
}

void AdamW::import_host_range(State which, int64_t begin, const float* values, int64_t n) {
  LTRAIN_CHECK(begin >= 0 && n >= 0 && begin + n <= params_.param_buffer().numel(), "import range " << begin << "+" << n);
  if (which == State::kWeights) be_.from_host(flat_range(params_.param_buffer(), begin, n), values, DType::kF32);
  const int64_t lo = std::max(begin, shard_begin_), hi = std::min(begin + n, shard_begin_ + shard_n_);
  const Tensor& dst = which == State::kWeights ? master_ : which == State::kExpAvg ? m_ : v_;
  if (lo >= hi || !dst.defined()) return;  // outside the shard, or the model's weights are the master
  be_.from_host(flat_range(dst, lo - shard_begin_, hi - lo), values + (lo - begin), DType::kF32);
}

void AdamW::import_weights(const Tensor& w_full) {
  be_.copy(params_.param_buffer(), w_full);
  if (master_.defined()) be_.copy(master_, flat_range(w_full, shard_begin_, shard_n_));
}

void AdamW::import_moments(const Tensor& m_full, const Tensor& v_full) {
  be_.copy(m_, flat_range(m_full, shard_begin_, shard_n_));
  be_.copy(v_, flat_range(v_full, shard_begin_, shard_n_));
}

StepStats AdamW::step(int step, double lr) {
  reduce_scatter_grads();
  const double norm = grad_norm();
  apply(step, lr, norm);
  return StepStats{norm, clip_scale(norm), lr};
}

double AdamW::clip_scale(double grad_norm) const {
  return cfg_.grad_clip > 0 && grad_norm > cfg_.grad_clip ? cfg_.grad_clip / grad_norm : 1.0;
}

void AdamW::reduce_scatter_grads() {
  if (!zero_) return;
  if (!dp_->orders_after_device_work()) be_.synchronize();
  dp_->reduce_scatter_sum(grad_shard_, params_.grad_buffer());
}

double AdamW::grad_norm() {
  // This rank's gradients: its ZeRO shard (reduce_scatter_grads), or the whole buffer.
  const Tensor grads = zero_ ? grad_shard_ : params_.grad_buffer();
  const int64_t lo = shard_begin_, hi = shard_begin_ + shard_n_;
  double sumsq;
  if (!tp_ && !tied_copy_) {
    sumsq = be_.sum_squares({grads});
  } else {
    // Tensor parallelism: a sharded tensor's squares add up over the ranks; a replicated one
    // (a norm, identical on every rank) must count once, so each rank adds 1/P of it. Two sums
    // over lists of tensors: two readbacks, whatever the number of layers. A pipeline stage's
    // tied copy of the embedding is the first stage's tensor again: not counted.
    std::vector<Tensor> sharded, replicated;
    for (const auto& p : params_.params()) {
      if (p.tied_copy) continue;
      const int64_t off = params_.offset(p);
      const int64_t b = std::max(lo, off), e = std::min(hi, off + p.tensor.numel());
      if (b >= e) continue;
      (p.shard_dim < 0 ? replicated : sharded).push_back(zero_ ? flat_range(grads, b - lo, e - b) : flat_range(grads, b, e - b));
    }
    const int tp_size = tp_ ? tp_->size() : 1;
    sumsq = (sharded.empty() ? 0.0 : be_.sum_squares(sharded)) +
            (replicated.empty() ? 0.0 : be_.sum_squares(replicated)) / tp_size;
    if (tp_) sumsq = tp_->sum(sumsq);
  }
  if (zero_) sumsq = dp_->sum(sumsq);  // each data-parallel rank holds one shard; otherwise all the same
  if (pp_) sumsq = pp_->sum(sumsq);    // each stage holds its layers
  return std::sqrt(sumsq);
}

void AdamW::apply(int step, double lr, double grad_norm) {
  const Tensor pbuf = params_.param_buffer();
  const Tensor grads = zero_ ? grad_shard_ : params_.grad_buffer();
  const int64_t lo = shard_begin_, hi = shard_begin_ + shard_n_;
  const double scale = clip_scale(grad_norm);
  // One fused update per tensor, restricted to this rank's shard; weight decay is per tensor.
  for (const auto& p : params_.params()) {
    const int64_t off = params_.offset(p);
    const int64_t b = std::max(lo, off), e = std::min(hi, off + p.tensor.numel());
    if (b >= e) continue;
    AdamWStep a;
    a.lr = lr;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    a.eps = cfg_.eps;
    a.weight_decay = p.decay ? cfg_.weight_decay : 0.0;
    a.grad_scale = scale;
    a.step = step;
    Tensor target = master_.defined() ? flat_range(master_, b - lo, e - b) : flat_range(pbuf, b, e - b);
    Tensor g = zero_ ? flat_range(grads, b - lo, e - b) : flat_range(grads, b, e - b);
    be_.adamw_update(target, g, flat_range(m_, b - lo, e - b), flat_range(v_, b - lo, e - b), a);
  }
  Tensor own = flat_range(pbuf, lo, shard_n_);
  if (master_.defined()) be_.copy(own, master_);
  if (zero_) {
    if (!dp_->orders_after_device_work()) be_.synchronize();
    dp_->all_gather(pbuf, own);
  }
}

}  // namespace ltrain
