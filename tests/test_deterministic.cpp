// `deterministic: true` (docs/cuda-backend.md, "Determinism"): the config key, the CPU backend's
// bitwise-identical runs, and on a GPU two deterministic runs that must agree to the bit (weights,
// gradients, losses over several AdamW steps), the NCCL environment it sets, and agreement with a
// default run (the restricted cuBLASLt algorithms compute the same products).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "cuda_test_util.h"
#include "ltrain/config/config.h"
#include "ltrain/backends/factory.h"
#include "ltrain/core/check.h"
#include "ltrain/cuda/cuda_backend.h"
#include "ltrain/parallel/nccl_communicator.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"

namespace ltrain {
namespace {

TEST(Deterministic, ConfigKey) {
  EXPECT_FALSE(Config{}.deterministic);
  const Config c = config_from_json(nlohmann::json{{"deterministic", true}}, "test");
  EXPECT_TRUE(c.deterministic);
  EXPECT_EQ(config_to_json(c)["deterministic"], true);
  EXPECT_EQ(config_to_json(Config{})["deterministic"], false);
  EXPECT_THROW(config_from_json(nlohmann::json{{"deterministic", "yes please"}}, "test"), UserError);
}

struct TrainRun {
  std::vector<double> losses, norms;
  std::vector<float> weights, grads;
};

// `steps` AdamW steps of a small GQA model (head dim 64, as the CUDA kernels need) from seed 7.
TrainRun train(Backend& be, Recompute rc, int steps) {
  ModelConfig m;
  m.hidden_size = 256;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.intermediate_size = 352;
  m.num_hidden_layers = 2;
  m.vocab_size = 512;
  m.max_position_embeddings = 64;
  const int B = 2, T = 64;
  LlamaModel model(m, be, B, T, rc);
  model.init_weights(7);
  OptimConfig o;
  o.lr = 1e-3;
  o.warmup_steps = 1;
  AdamW opt(o, model.parameters());
  std::mt19937 rng(11);
  std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
  TrainRun r;
  for (int step = 1; step <= steps; ++step) {
    for (size_t i = 0; i < in.size(); ++i) in[i] = int32_t(rng() % 512), tg[i] = int32_t(rng() % 512);
    model.zero_grads();
    r.losses.push_back(model.forward_backward(in.data(), tg.data(), B, T, 1.0 / (B * T)));
    r.norms.push_back(opt.step(step, 1e-3).grad_norm);
  }
  be.synchronize();
  r.weights.resize(size_t(model.param_buffer().numel()));
  r.grads.resize(size_t(model.grad_buffer().numel()));
  be.to_host(r.weights.data(), DType::kF32, model.param_buffer());
  be.to_host(r.grads.data(), DType::kF32, model.grad_buffer());
  return r;
}

void expect_bitwise_equal(const TrainRun& a, const TrainRun& b) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    EXPECT_EQ(a.losses[i], b.losses[i]) << "loss of step " << i + 1;
    EXPECT_EQ(a.norms[i], b.norms[i]) << "gradient norm of step " << i + 1;
  }
  ASSERT_EQ(a.weights.size(), b.weights.size());
  EXPECT_EQ(0, std::memcmp(a.weights.data(), b.weights.data(), a.weights.size() * sizeof(float))) << "weights differ";
  EXPECT_EQ(0, std::memcmp(a.grads.data(), b.grads.data(), a.grads.size() * sizeof(float))) << "gradients differ";
}

TEST(Deterministic, CpuRunsAreBitwiseIdentical) {
  // The CPU backend is deterministic with or without the flag (fixed-order reductions at a fixed
  // thread count); make_backend accepts the flag for it.
  auto a = make_backend("cpu", 0, true), b = make_backend("cpu", 0, false);
  EXPECT_EQ(a->name(), "cpu");
  expect_bitwise_equal(train(*a, Recompute::kSelective, 3), train(*b, Recompute::kSelective, 3));
}

TEST(DeterministicGpu, TwoRunsAreBitwiseIdentical) {
  LTRAIN_SKIP_WITHOUT_GPU();
  const bool algo_unset = std::getenv("NCCL_ALGO") == nullptr, proto_unset = std::getenv("NCCL_PROTO") == nullptr;
  TrainRun first;
  {
    auto be = make_cuda_backend(0, true);
    first = train(*be, Recompute::kNone, 5);
  }
  // The NCCL algorithm and protocol are pinned for communicators created from now on, unless the
  // user chose them (make_nccl_communicator does this for a deterministic backend; NCCL itself is
  // not emulated, so the test calls it directly).
  pin_deterministic_nccl_env();
  if (algo_unset) EXPECT_STREQ(std::getenv("NCCL_ALGO"), "Ring");
  if (proto_unset) EXPECT_STREQ(std::getenv("NCCL_PROTO"), "Simple");
  for (Recompute rc : {Recompute::kNone, Recompute::kFull}) {
    auto be = make_cuda_backend(0, true);  // a fresh backend: new handle, new buffers
    expect_bitwise_equal(first, train(*be, rc, 5));
  }
  for (size_t i = 1; i < first.losses.size(); ++i) EXPECT_TRUE(std::isfinite(first.losses[i]));
}

TEST(DeterministicGpu, AgreesWithTheDefaultAlgorithms) {
  LTRAIN_SKIP_WITHOUT_GPU();
  auto det = make_cuda_backend(0, true), def = make_cuda_backend(0, false);
  const TrainRun a = train(*det, Recompute::kNone, 3), b = train(*def, Recompute::kNone, 3);
  for (size_t i = 0; i < a.losses.size(); ++i) {
    std::cout << "[          ] step " << i + 1 << " loss deterministic " << a.losses[i] << " default " << b.losses[i]
              << "\n";
    EXPECT_NEAR(a.losses[i], b.losses[i], 1e-2 * std::fabs(b.losses[i])) << "step " << i + 1;
    EXPECT_NEAR(a.norms[i], b.norms[i], 2e-2 * std::fabs(b.norms[i])) << "step " << i + 1;
  }
}

}  // namespace
}  // namespace ltrain
