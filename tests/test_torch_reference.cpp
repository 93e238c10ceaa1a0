// ltrain against an independent PyTorch implementation (tests/torch_reference.py, run with
// Debian's /usr/bin/python3 and python3-torch on the CPU).
//
// The test builds a small fp32 model (GQA, odd sizes), trains it for 20 optimizer steps with
// AdamW, warmup + cosine and active gradient clipping, and writes into a scratch directory:
//   config.json        model, optimizer and batch settings
//   weights.bin        the initial weights, float32 little-endian, laid out as manifest.json says
//   manifest.json      [{name, shape, offset (elements), decay}] for weights.bin and grads.bin
//   tokens.bin         int32 (steps, B, T); targets.bin likewise
//   grads.bin          the step-1 gradients (mean loss over B*T tokens), float32
//   ltrain.json        step-1 loss, and per step: loss, global grad norm (before clipping), lr
// The script recomputes all of it from the same weights and tokens, prints a comparison table
// and exits non-zero on any mismatch; the tolerances are documented in the script.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "test_util.h"

namespace ltrain {
namespace {

const char* kPython = "/usr/bin/python3";  // Debian's interpreter, where python3-torch lives

std::string script_path() { return std::string(LTRAIN_SOURCE_DIR) + "/tests/torch_reference.py"; }

template <class T>
void write_binary(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}

// Concatenates the tensors (float32) and records where each one starts.
std::vector<float> flatten(Backend& be, const std::vector<NamedTensor>& ts, nlohmann::json* manifest) {
  std::vector<float> out;
  if (manifest) *manifest = nlohmann::json::array();
  for (const auto& t : ts) {
    std::vector<float> host(size_t(t.tensor.numel()));
    be.to_host(host.data(), DType::kF32, t.tensor);
    if (manifest) {
      nlohmann::json shape = nlohmann::json::array();
      for (int d = 0; d < t.tensor.shape.ndim; ++d) shape.push_back(t.tensor.shape.dims[d]);
      manifest->push_back({{"name", t.name}, {"shape", shape}, {"offset", out.size()}, {"decay", t.decay}});
    }
    out.insert(out.end(), host.begin(), host.end());
  }
  return out;
}

// Token streams with structure to learn: each sequence mostly follows t' = (5t + 3) mod V, with
// one token in four drawn at random, and the targets are the next tokens. The loss then falls
// visibly over 20 steps, so the curve is a real training curve rather than noise around ln(V).
void make_batches(int steps, int B, int T, int V, uint64_t seed, std::vector<int32_t>* tokens,
                  std::vector<int32_t>* targets) {
  std::mt19937_64 rng(seed);
  tokens->clear();
  targets->clear();
  for (int s = 0; s < steps * B; ++s) {
    std::vector<int32_t> seq(size_t(T) + 1);
    seq[0] = int32_t(rng() % V);
    for (int t = 1; t <= T; ++t)
      seq[t] = rng() % 4 == 0 ? int32_t(rng() % V) : int32_t((5 * seq[t - 1] + 3) % V);
    tokens->insert(tokens->end(), seq.begin(), seq.end() - 1);
    targets->insert(targets->end(), seq.begin() + 1, seq.end());
  }
}

struct Case {
  const char* name;
  bool tied;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class TorchReference : public ::testing::TestWithParam<Case> {};

TEST_P(TorchReference, LossGradientsAndTwentyStepsAgree) {
  // Fail (not skip) when the reference cannot run: python3-torch is a declared dependency.
  auto probe = test::run_shell(std::string(kPython) + " -c 'import torch, numpy'");
  ASSERT_EQ(probe.exit_code, 0) << kPython << " cannot import torch and numpy (python3-torch and "
                                << "python3-numpy are declared dependencies); run "
                                << "./scripts/install_deps.sh\n" << probe.output;

  const bool tied = GetParam().tied;
  ModelConfig mc;
  mc.hidden_size = 48;
  mc.num_attention_heads = 4;  // head dim 12
  mc.num_key_value_heads = 2;  // two query heads per kv head
  mc.intermediate_size = 72;
  mc.num_hidden_layers = 2;
  mc.vocab_size = 67;
  mc.max_position_embeddings = 16;
  mc.rope_theta = 10000.0;
  mc.rms_norm_eps = 1e-5;
  mc.tie_word_embeddings = tied;
  // Larger than LLaMA's 0.02 so attention is far from uniform and RoPE, GQA and the norms all
  // shape the loss and gradients (with 0.02 a wrong rotation would barely show).
  mc.initializer_range = 0.1;

  OptimConfig oc;
  oc.lr = 1e-2;
  oc.min_lr_ratio = 0.1;
  oc.warmup_steps = 5;
  oc.decay_steps = 0;  // = steps
  oc.beta1 = 0.9;
  oc.beta2 = 0.95;
  oc.eps = 1e-5;
  oc.weight_decay = 0.1;
  oc.grad_clip = 3.5;  // the gradient norms here are 2.5..5.5: clipping is active in some steps

  const int B = 3, T = 16, steps = 20;
  const uint64_t seed = tied ? 11 : 7;

  auto backend = make_cpu_backend(DType::kF32);
  LlamaModel model(mc, *backend, B, T);
  model.init_weights(seed);
  AdamW opt(oc, model.parameters());

  std::vector<int32_t> tokens, targets;
  make_batches(steps, B, T, mc.vocab_size, seed + 1000, &tokens, &targets);

  test::TempDir tmp(std::string("torch_ref_") + GetParam().name);
  // LTRAIN_TORCH_REF_DIR=path keeps the files (in path/untied, path/tied) for rerunning the
  // script by hand, e.g. with --dtype float64.
  std::string dir_path = tmp.path();
  if (const char* keep = std::getenv("LTRAIN_TORCH_REF_DIR")) {
    dir_path = std::string(keep) + "/" + GetParam().name;
    std::filesystem::create_directories(dir_path);
  }
  auto file = [&](const char* name) { return dir_path + "/" + name; };
  nlohmann::json manifest;
  write_binary(file("weights.bin"), flatten(*backend, model.params(), &manifest));
  write_json(file("manifest.json"), manifest);
  write_binary(file("tokens.bin"), tokens);
  write_binary(file("targets.bin"), targets);
  nlohmann::json cfg = {
      {"model",
       {{"hidden_size", mc.hidden_size},
        {"num_attention_heads", mc.num_attention_heads},
        {"num_key_value_heads", mc.num_key_value_heads},
        {"intermediate_size", mc.intermediate_size},
        {"num_hidden_layers", mc.num_hidden_layers},
        {"vocab_size", mc.vocab_size},
        {"rope_theta", mc.rope_theta},
        {"rms_norm_eps", mc.rms_norm_eps},
        {"tie_word_embeddings", mc.tie_word_embeddings}}},
      {"optim",
       {{"lr", oc.lr},
        {"min_lr_ratio", oc.min_lr_ratio},
        {"warmup_steps", oc.warmup_steps},
        {"decay_steps", oc.decay_steps},
        {"beta1", oc.beta1},
        {"beta2", oc.beta2},
        {"eps", oc.eps},
        {"weight_decay", oc.weight_decay},
        {"grad_clip", oc.grad_clip}}},
      {"batch", B},
      {"seq_len", T},
      {"steps", steps}};
  write_json(file("config.json"), cfg);

  // Training: the same calls the trainer makes for one micro-batch per step.
  nlohmann::json losses = nlohmann::json::array(), norms = nlohmann::json::array(),
                 lrs = nlohmann::json::array();
  double step1_loss = 0;
  int clipped = 0;
  for (int s = 1; s <= steps; ++s) {
    const size_t off = size_t(s - 1) * B * T;
    model.zero_grads();
    const double loss =
        model.forward_backward(tokens.data() + off, targets.data() + off, B, T, 1.0 / (B * T));
    if (s == 1) {
      step1_loss = loss;
      write_binary(file("grads.bin"), flatten(*backend, model.grads(), nullptr));
    }
    const double lr = lr_at(oc, steps, s);
    const StepStats st = opt.step(s, lr);
    clipped += st.clip_scale < 1.0;
    losses.push_back(loss);
    norms.push_back(st.grad_norm);
    lrs.push_back(st.lr);
  }
  write_json(file("ltrain.json"),
             {{"step1_loss", step1_loss}, {"loss", losses}, {"grad_norm", norms}, {"lr", lrs}});
  // The setup must exercise clipping both ways, or the clipping check proves nothing.
  EXPECT_GT(clipped, 0) << "grad_clip never active; lower it";
  EXPECT_LT(clipped, steps) << "grad_clip always active; raise it";
  EXPECT_LT(losses.back().get<double>(), losses.front().get<double>() - 0.3)
      << "the loss barely moved; the curve comparison would be weak";

  const auto r = test::run_shell(std::string(kPython) + " '" + script_path() + "' '" + dir_path + "'");
  std::printf("%s", r.output.c_str());
  EXPECT_EQ(r.exit_code, 0) << "the PyTorch reference disagrees with ltrain (table above)";
  EXPECT_NE(r.output.find("torch reference: "), std::string::npos) << "no summary line";
  EXPECT_NE(r.output.find(" 0 failed"), std::string::npos) << "the summary reports failures";
}

INSTANTIATE_TEST_SUITE_P(Fp32Cpu, TorchReference,
                         ::testing::Values(Case{"untied", false}, Case{"tied", true}),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace ltrain
