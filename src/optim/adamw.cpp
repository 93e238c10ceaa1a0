#include "ltrain/optim/adamw.h"

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

AdamW::AdamW(const OptimConfig& cfg, LlamaModel& model)
    : cfg_(cfg), model_(model), be_(model.backend()) {
  const Tensor p = model.param_buffer();
  m_ = be_.alloc(p.shape, be_.master_dtype());
  v_ = be_.alloc(p.shape, be_.master_dtype());
  if (p.dtype != be_.master_dtype()) {
    master_ = be_.alloc(p.shape, be_.master_dtype());
    be_.copy(master_, p);
  }
}

AdamW::~AdamW() {
  be_.free(m_);
  be_.free(v_);
  be_.free(master_);
}

void AdamW::sync_master_from_model() {
  if (master_.defined()) be_.copy(master_, model_.param_buffer());
}

Tensor AdamW::view_like(const Tensor& buf, const Tensor& param) const {
  const Tensor base = model_.param_buffer();
  const int64_t offset = (static_cast<const char*>(param.data) - static_cast<const char*>(base.data)) /
                         int64_t(dtype_size(base.dtype));
  Tensor t = buf;
  t.data = static_cast<char*>(buf.data) + offset * int64_t(dtype_size(buf.dtype));
  t.shape = param.shape;
  return t;
}

double AdamW::grad_norm() { return std::sqrt(be_.sum_squares({model_.grad_buffer()})); }

StepStats AdamW::step(int step, double lr) {
  StepStats s{};
  s.lr = lr;
  s.grad_norm = grad_norm();
  s.clip_scale = 1.0;
  if (cfg_.grad_clip > 0 && s.grad_norm > cfg_.grad_clip) s.clip_scale = cfg_.grad_clip / s.grad_norm;
  const auto& params = model_.params();
  const auto& grads = model_.grads();
  for (size_t i = 0; i < params.size(); ++i) {
    AdamWStep a;
    a.lr = lr;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    a.eps = cfg_.eps;
    a.weight_decay = params[i].decay ? cfg_.weight_decay : 0.0;
    a.grad_scale = s.clip_scale;
    a.step = step;
    Tensor target = master_.defined() ? view_like(master_, params[i].tensor) : params[i].tensor;
    be_.adamw_update(target, grads[i].tensor, view_like(m_, params[i].tensor),
                     view_like(v_, params[i].tensor), a);
  }
  if (master_.defined()) be_.copy(model_.param_buffer(), master_);
  return s;
}

}  // namespace ltrain
