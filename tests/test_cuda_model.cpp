// The whole model on the GPU against the CPU: one training step (loss and every parameter
// gradient) against the double oracle on the same bf16-rounded weights; bitwise reproducibility
// and recomputation modes; and a 50-step AdamW loss curve against the CPU fp32 backend from the
// same initial weights and data. Skips without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <random>

#include "cuda_test_util.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "pipeline_test_util.h"

namespace ltrain {
namespace {

using test::gpu;
using test::Vec;

// GQA (4 query heads on 2 KV heads), head dim 64 (the attention kernels take 64 and 128),
// an FF that is not a multiple of 64, a sequence of exactly one attention tile.
ModelConfig tiny_gpu_config() {
  ModelConfig m;
  m.hidden_size = 256;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.intermediate_size = 352;
  m.num_hidden_layers = 2;
  m.vocab_size = 512;
  m.max_position_embeddings = 64;
  // Larger than the usual 0.02, so that attention is far from uniform and every path carries a
  // visible gradient.
  m.initializer_range = 0.1;
  return m;
}

constexpr int kB = 2, kT = 64;

// Learnable data: each sequence follows t -> (7t + 3) mod V from a random start, and the target
// is the next token, so the loss falls quickly and the curve has a shape to compare.
struct Batch {
  std::vector<int32_t> tokens, targets;
  Batch(int V, uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (int b = 0; b < kB; ++b) {
      int32_t t = int32_t(rng() % V);
      for (int i = 0; i < kT; ++i) {
        tokens.push_back(t);
        t = (7 * t + 3) % V;
        targets.push_back(t);
      }
    }
  }
};

Vec get(Backend& be, const Tensor& t) {
  Vec v(size_t(t.numel()));
  be.to_host(v.data(), DType::kF64, t);
  return v;
}

// Copies every parameter of `from` into `to` (through double; the GPU's bf16 values are exact).
void copy_weights(LlamaModel& from, LlamaModel& to) {
  for (size_t i = 0; i < from.params().size(); ++i) {
    Vec w = get(from.backend(), from.params()[i].tensor);
    to.backend().from_host(to.params()[i].tensor, w.data(), DType::kF64);
  }
}

double rel_l2(const Vec& got, const Vec& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = got[i] - ref[i];
    num += std::isnan(d) ? INFINITY : d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// Gradients of a bf16 model against the double model on the same weights: activations and their
// gradients are rounded to bf16 at every op, so each gradient tensor carries about a percent of
// noise. The bound: relative L2 error (||g - ref|| / ||ref||) <= 5e-2 per tensor, and the loss
// within 1%. Each tensor's error is printed, so a GPU run shows the margins.
void check_step(const ModelConfig& cfg) {
  LlamaModel gm(cfg, gpu(), kB, kT);
  gm.init_weights(7);
  auto cpu = make_cpu_backend(DType::kF64);
  LlamaModel cm(cfg, *cpu, kB, kT);
  copy_weights(gm, cm);
  Batch batch(cfg.vocab_size, 11);
  const double dloss = 1.0 / (kB * kT);
  gm.zero_grads();
  cm.zero_grads();
  const double gl = gm.forward_backward(batch.tokens.data(), batch.targets.data(), kB, kT, dloss);
  const double cl = cm.forward_backward(batch.tokens.data(), batch.targets.data(), kB, kT, dloss);
  std::cout << "[          ] loss gpu " << gl << " cpu(f64) " << cl << "\n";
  EXPECT_NEAR(gl, cl, 1e-2 * cl);
  for (size_t i = 0; i < gm.grads().size(); ++i) {
    const auto& name = gm.grads()[i].name;
    const Vec g = get(gpu(), gm.grads()[i].tensor), r = get(*cpu, cm.grads()[i].tensor);
    const double err = rel_l2(g, r);
    double norm = 0;
    for (double x : r) norm += x * x;
    std::cout << "[          ] " << name << " rel L2 error " << err << " (|ref| " << std::sqrt(norm) << ")\n";
    EXPECT_GT(norm, 0.0) << name;
    EXPECT_LE(err, 5e-2) << name;
  }
}

TEST(CudaModel, TrainingStepMatchesDoubleCpuGQA) {
  LTRAIN_SKIP_WITHOUT_GPU();
  check_step(tiny_gpu_config());
}

TEST(CudaModel, TrainingStepMatchesDoubleCpuTiedMHA) {
  LTRAIN_SKIP_WITHOUT_GPU();
  ModelConfig cfg = tiny_gpu_config();
  cfg.num_key_value_heads = 4;
  cfg.tie_word_embeddings = true;
  check_step(cfg);
}

// Pipeline stages on the GPU: the model's chunks, run stage by stage with the activations and
// gradients passed between them, give the whole model's loss and gradients. The same kernels run
// on the same inputs, so only the tied embedding's gradient, which two stages hold and add up,
// may differ in its last bits.
TEST(CudaModel, PipelineStagesGiveTheWholeModelsGradients) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (const bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    ModelConfig cfg = tiny_gpu_config();
    cfg.tie_word_embeddings = tied;
    LlamaModel gm(cfg, gpu(), kB, kT);
    gm.init_weights(7);
    Batch batch(cfg.vocab_size, 11);
    const double dloss = 1.0 / (kB * kT);
    gm.zero_grads();
    gm.forward_backward_accumulate(batch.tokens.data(), batch.targets.data(), kB, kT, dloss);
    const double loss = gm.take_loss_sum();
    const test::StagedResult staged =
        test::run_staged(gm, gpu(), 2, batch.tokens.data(), batch.targets.data(), kB, kT, dloss);
    EXPECT_NEAR(staged.loss_sum, loss, 1e-6 * loss);
    ASSERT_EQ(staged.grads.size(), gm.grads().size());
    for (const auto& g : gm.grads()) {
      const double err = rel_l2(staged.grads.at(g.name), get(gpu(), g.tensor));
      EXPECT_LE(err, tied && g.name == "model.embed_tokens.weight" ? 1e-6 : 0.0) << g.name;
    }
  }
}

// No atomics anywhere: two steps from the same state give the same bits, and recomputation
// (which reruns the same kernels on the same inputs) changes nothing.
TEST(CudaModel, GradientsAreBitwiseReproducibleAcrossRunsAndRecompute) {
  LTRAIN_SKIP_WITHOUT_GPU();
  const ModelConfig cfg = tiny_gpu_config();
  Batch batch(cfg.vocab_size, 12);
  const double dloss = 1.0 / (kB * kT);
  std::vector<Vec> first;
  for (Recompute rc : {Recompute::kNone, Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
    LlamaModel m(cfg, gpu(), kB, kT, rc);
    m.init_weights(7);
    m.zero_grads();
    m.forward_backward(batch.tokens.data(), batch.targets.data(), kB, kT, dloss);
    Vec g = get(gpu(), m.grad_buffer());
    if (first.empty()) {
      first.push_back(g);
      continue;
    }
    test::expect_bitwise_equal("gradients, recompute mode " + std::to_string(int(rc)), g, first[0]);
  }
}

// 50 AdamW steps from the same weights on the same data. The GPU keeps fp32 master weights and
// computes in bf16; the CPU computes in fp32. The bound: each step's loss within 0.05 + 3% of
// the CPU's, and both curves fall by more than 1 nat (so the comparison is not between two flat
// lines).
TEST(CudaModel, FiftyStepLossCurveFollowsCpu) {
  LTRAIN_SKIP_WITHOUT_GPU();
  const ModelConfig cfg = tiny_gpu_config();
  OptimConfig o;
  o.lr = 3e-3;
  o.warmup_steps = 5;
  o.weight_decay = 0.1;
  o.grad_clip = 1.0;
  const int steps = 50;
  std::vector<Batch> data;
  for (int i = 0; i < 4; ++i) data.emplace_back(cfg.vocab_size, 100 + i);

  LlamaModel gm(cfg, gpu(), kB, kT);
  gm.init_weights(3);
  auto cpu = make_cpu_backend(DType::kF32);
  LlamaModel cm(cfg, *cpu, kB, kT);
  copy_weights(gm, cm);
  AdamW gopt(o, gm.parameters()), copt(o, cm.parameters());
  const double dloss = 1.0 / (kB * kT);
  std::vector<double> gl, cl;
  for (int step = 1; step <= steps; ++step) {
    const Batch& b = data[(step - 1) % data.size()];
    const double lr = lr_at(o, steps, step);
    gm.zero_grads();
    cm.zero_grads();
    gl.push_back(gm.forward_backward(b.tokens.data(), b.targets.data(), kB, kT, dloss));
    cl.push_back(cm.forward_backward(b.tokens.data(), b.targets.data(), kB, kT, dloss));
    const StepStats gs = gopt.step(step, lr), cs = copt.step(step, lr);
    std::cout << "[          ] step " << step << " loss gpu " << gl.back() << " cpu " << cl.back()
              << " grad norm gpu " << gs.grad_norm << " cpu " << cs.grad_norm << "\n";
    EXPECT_NEAR(gl.back(), cl.back(), 0.05 + 0.03 * cl.back()) << "step " << step;
  }
  EXPECT_LT(cl.back(), cl.front() - 1.0) << "the CPU curve should fall; the comparison needs a shape";
  EXPECT_LT(gl.back(), gl.front() - 1.0);
}

}  // namespace
}  // namespace ltrain
