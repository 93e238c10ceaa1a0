// AdamW, clipping and the learning-rate schedule against closed forms.
#include <gtest/gtest.h>

#include <cmath>

#include "cpu/ops.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "test_util.h"

namespace ltrain {
namespace {

TEST(Schedule, WarmupThenCosineToMinimum) {
  OptimConfig o;
  o.lr = 1e-3;
  o.min_lr_ratio = 0.1;
  o.warmup_steps = 10;
  const int steps = 110;
  EXPECT_DOUBLE_EQ(lr_at(o, steps, 1), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(o, steps, 5), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(o, steps, 10), 1e-3);
  EXPECT_NEAR(lr_at(o, steps, 60), 0.5 * (1e-3 + 1e-4), 1e-15);  // half-way down the cosine
  // progress 1/4 of the cosine: min + (max-min) * (1 + cos(pi/4)) / 2
  EXPECT_NEAR(lr_at(o, steps, 35), 1e-4 + 9e-4 * 0.5 * (1 + std::cos(M_PI / 4)), 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(o, steps, 110), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(o, steps, 500), 1e-4);
  for (int s = 11; s < 110; ++s) EXPECT_LT(lr_at(o, steps, s + 1), lr_at(o, steps, s));
  o.decay_steps = 60;  // the cosine ends early
  EXPECT_DOUBLE_EQ(lr_at(o, steps, 60), 1e-4);
  EXPECT_NEAR(lr_at(o, steps, 35), 0.5 * (1e-3 + 1e-4), 1e-15);
}

TEST(AdamWUpdate, ConstantGradientClosedForm) {
  // With a constant gradient g the bias-corrected moments are exactly g and g^2, so each step is
  // p <- p - lr * (wd * p + g / (|g| + eps)).
  const int n = 5;
  std::vector<double> p = {0.5, -1.0, 2.0, 0.1, -0.3}, g = {0.2, -0.7, 1e-3, 3.0, -0.05};
  std::vector<double> m(n, 0.0), v(n, 0.0), expect = p;
  const double lr = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-5, wd = 0.1;
  for (int step = 1; step <= 7; ++step) {
    cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, 1.0, step);
    for (int i = 0; i < n; ++i) expect[i] -= lr * (wd * expect[i] + g[i] / (std::fabs(g[i]) + eps));
  }
  EXPECT_EQ(test::compare(p.data(), expect.data(), n, 1e-14, 1e-12), "");
}

TEST(AdamWUpdate, RandomGradientsAgainstTheDefinition) {
  const int n = 64;
  auto p = test::random_vector(n, 1), ref = p;
  std::vector<double> m(n, 0.0), v(n, 0.0), mr(n, 0.0), vr(n, 0.0);
  const double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-5, wd = 0.1, scale = 0.25;
  for (int step = 1; step <= 5; ++step) {
    auto g = test::random_vector(n, 100 + step);
    cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, scale, step);
    for (int i = 0; i < n; ++i) {
      const double gi = g[i] * scale;
      mr[i] = b1 * mr[i] + (1 - b1) * gi;
      vr[i] = b2 * vr[i] + (1 - b2) * gi * gi;
      const double mhat = mr[i] / (1 - std::pow(b1, step)), vhat = vr[i] / (1 - std::pow(b2, step));
      ref[i] = ref[i] * (1 - lr * wd) - lr * mhat / (std::sqrt(vhat) + eps);  // PyTorch's order
    }
  }
  EXPECT_EQ(test::compare(p.data(), ref.data(), n, 1e-14, 1e-12), "");
}

TEST(AdamW, ClipsToTheGlobalNormAndSkipsDecayOnNorms) {
  ModelConfig cfg;
  cfg.hidden_size = 8;
  cfg.num_attention_heads = 2;
  cfg.intermediate_size = 12;
  cfg.num_hidden_layers = 1;
  cfg.vocab_size = 10;
  cfg.max_position_embeddings = 4;
  auto be = make_cpu_backend(DType::kF64);
  LlamaModel model(cfg, *be, 1, 4);
  model.init_weights(1);
  OptimConfig o;
  o.grad_clip = 1.0;
  o.weight_decay = 0.5;
  AdamW opt(o, model.parameters());
  // Known gradients: 0.1 everywhere -> norm = 0.1 * sqrt(n).
  const int64_t n = model.num_params();
  std::vector<double> gbuf(size_t(model.grad_buffer().numel()), 0.0);
  for (const auto& g : model.grads()) {
    std::vector<double> host(size_t(g.tensor.numel()), 0.1);
    be->from_host(g.tensor, host.data(), DType::kF64);
  }
  std::vector<std::vector<double>> before;
  for (const auto& p : model.params()) {
    std::vector<double> h(size_t(p.tensor.numel()));
    be->to_host(h.data(), DType::kF64, p.tensor);
    before.push_back(h);
  }
  StepStats st = opt.step(1, 1e-2);
  EXPECT_NEAR(st.grad_norm, 0.1 * std::sqrt(double(n)), 1e-12);
  EXPECT_NEAR(st.clip_scale, 1.0 / st.grad_norm, 1e-15);
  // Step 1 with any positive gradient moves each weight by lr * (1 + wd * p) (norms: lr).
  for (size_t i = 0; i < model.params().size(); ++i) {
    const auto& p = model.params()[i];
    std::vector<double> after(size_t(p.tensor.numel()));
    be->to_host(after.data(), DType::kF64, p.tensor);
    for (size_t j = 0; j < after.size(); ++j) {
      const double g = 0.1 / st.grad_norm;
      const double expect = before[i][j] - 1e-2 * ((p.decay ? 0.5 : 0.0) * before[i][j] + g / (g + 1e-5));
      ASSERT_NEAR(after[j], expect, 1e-12) << p.name;
    }
  }
}

}  // namespace
}  // namespace ltrain
