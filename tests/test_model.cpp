// The whole model: gradients against finite differences in double, recomputation modes against
// each other, tied embeddings, and the layout table's gradient units and tensor slices.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <map>
#include <random>

#include "ltrain/core/hash.h"
#include "ltrain/model/llama.h"
#include "size_only_comm.h"
#include "test_util.h"

namespace ltrain {
namespace {

// Odd sizes, GQA (3 query heads on 1 KV head), and an intermediate size that is not a multiple
// of anything in particular.
ModelConfig tiny_config() {
  ModelConfig m;
  m.hidden_size = 12;
  m.num_attention_heads = 3;
  m.num_key_value_heads = 1;
  m.intermediate_size = 19;
  m.num_hidden_layers = 2;
  m.vocab_size = 11;
  m.max_position_embeddings = 16;
  m.rope_theta = 100.0;  // large angles at short positions, so RoPE matters in the check
  return m;
}

struct Batch {
  int B = 2, T = 5;
  std::vector<int32_t> tokens, targets;
  explicit Batch(int V, uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (int i = 0; i < B * T; ++i) {
      tokens.push_back(int32_t(rng() % V));
      targets.push_back(int32_t(rng() % V));
    }
  }
};

// Weights with some spread so that every path carries a visible gradient.
void randomize(LlamaModel& m, uint64_t seed) {
  m.init_weights(seed);
  for (const auto& p : m.params()) {
    std::vector<double> host(size_t(p.tensor.numel()));
    m.backend().to_host(host.data(), DType::kF64, p.tensor);
    auto noise = test::random_vector(host.size(), seed + host.size(), -0.3, 0.3);
    for (size_t i = 0; i < host.size(); ++i) host[i] = p.decay ? host[i] * 10 + noise[i] : 1 + noise[i];
    m.backend().from_host(p.tensor, host.data(), DType::kF64);
  }
}

std::vector<double> get(Backend& be, const Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  be.to_host(v.data(), DType::kF64, t);
  return v;
}

// masked: some targets are -1 (SFT prompt tokens): they carry no loss, and the loss is the mean
// over the rest, so the gradient scale is 1 / (number of counted targets).
void check_model_gradients(const ModelConfig& cfg, bool masked = false) {
  auto be = make_cpu_backend(DType::kF64);
  Batch batch(cfg.vocab_size, 7);
  if (masked)
    for (size_t i = 0; i < batch.targets.size(); i += 3) batch.targets[i] = -1;
  int counted = 0;
  for (int32_t t : batch.targets) counted += t >= 0;
  LlamaModel model(cfg, *be, batch.B, batch.T);
  randomize(model, 3);
  model.zero_grads();
  model.forward_backward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T, 1.0 / counted);
  auto loss = [&] { return model.forward_loss(batch.tokens.data(), batch.targets.data(), batch.B, batch.T); };
  const double h = 1e-5;
  std::mt19937_64 rng(11);
  for (size_t pi = 0; pi < model.params().size(); ++pi) {
    const auto& p = model.params()[pi];
    std::vector<double> w = get(*be, p.tensor), g = get(*be, model.grads()[pi].tensor);
    double gnorm = 0;
    for (double x : g) gnorm += x * x;
    EXPECT_GT(gnorm, 0) << p.name << " has an all-zero gradient";
    // Every element of small tensors, a random sample of larger ones.
    std::vector<size_t> idx;
    for (size_t i = 0; i < w.size(); ++i) idx.push_back(i);
    if (idx.size() > 24) {
      std::shuffle(idx.begin(), idx.end(), rng);
      idx.resize(24);
    }
    std::vector<double> num, ana;
    for (size_t i : idx) {
      const double old = w[i];
      w[i] = old + h;
      be->from_host(p.tensor, w.data(), DType::kF64);
      const double lp = loss();
      w[i] = old - h;
      be->from_host(p.tensor, w.data(), DType::kF64);
      const double lm = loss();
      w[i] = old;
      be->from_host(p.tensor, w.data(), DType::kF64);
      num.push_back((lp - lm) / (2 * h));
      ana.push_back(g[i]);
    }
    // The norm check above covers all-zero gradients; here a sampled zero reference is fine.
    std::string err = test::compare(ana.data(), num.data(), ana.size(), 1e-8, 1e-5);
    if (err.rfind("reference is all zeros", 0) == 0) err.clear();
    EXPECT_TRUE(err.empty()) << p.name << ": " << err;
  }
}

TEST(ModelGradient, MatchesFiniteDifferencesGQA) { check_model_gradients(tiny_config()); }

TEST(ModelGradient, MaskedTargetsMatchFiniteDifferences) { check_model_gradients(tiny_config(), true); }

TEST(ModelForward, MaskedLossIsTheMeanOverCountedTargets) {
  // Masking a target removes exactly its term: the masked mean times the count equals the full
  // sum minus the masked tokens' losses.
  ModelConfig cfg = tiny_config();
  auto be = make_cpu_backend(DType::kF64);
  Batch batch(cfg.vocab_size, 21);
  LlamaModel model(cfg, *be, batch.B, batch.T);
  randomize(model, 4);
  const int N = batch.B * batch.T;
  const double full = model.forward_loss(batch.tokens.data(), batch.targets.data(), batch.B, batch.T) * N;
  std::vector<int32_t> only(N, -1), masked = batch.targets;
  double removed = 0;
  for (int i = 0; i < N; i += 4) {
    only.assign(N, -1);
    only[i] = batch.targets[i];
    removed += model.forward_loss(batch.tokens.data(), only.data(), batch.B, batch.T);
    masked[i] = -1;
  }
  const int counted = N - (N + 3) / 4;
  const double got = model.forward_loss(batch.tokens.data(), masked.data(), batch.B, batch.T) * counted;
  EXPECT_NEAR(got, full - removed, 1e-10 * full);
  std::vector<int32_t> none(N, -1);
  EXPECT_EQ(model.forward_loss(batch.tokens.data(), none.data(), batch.B, batch.T), 0.0);
}

TEST(ModelGradient, MatchesFiniteDifferencesTiedMHA) {
  ModelConfig cfg = tiny_config();
  cfg.num_key_value_heads = 3;
  cfg.tie_word_embeddings = true;
  check_model_gradients(cfg);
}

TEST(ModelGradient, TiedEmbeddingsShareOneTensor) {
  ModelConfig cfg = tiny_config();
  cfg.tie_word_embeddings = true;
  auto be = make_cpu_backend(DType::kF64);
  LlamaModel model(cfg, *be, 1, 4);
  for (const auto& p : model.params()) EXPECT_NE(p.name, "lm_head.weight");
  EXPECT_EQ(model.num_params(), llama_num_params(cfg));
  cfg.tie_word_embeddings = false;
  LlamaModel untied(cfg, *be, 1, 4);
  EXPECT_EQ(untied.num_params(), llama_num_params(cfg));
  EXPECT_EQ(untied.num_params() - model.num_params(), int64_t(cfg.vocab_size) * cfg.hidden_size);
}

TEST(ModelRecompute, SelectiveAndFullGiveTheSameGradients) {
  ModelConfig cfg = tiny_config();
  cfg.num_hidden_layers = 3;
  auto be = make_cpu_backend(DType::kF64);
  Batch batch(cfg.vocab_size, 9);
  std::vector<std::vector<double>> grads;
  std::vector<double> losses;
  for (Recompute r : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
    LlamaModel model(cfg, *be, batch.B, batch.T, r);
    randomize(model, 5);
    model.zero_grads();
    losses.push_back(model.forward_backward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T, 0.1));
    grads.push_back(get(*be, model.grad_buffer()));
  }
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(losses[i], losses[0]);
    EXPECT_EQ(test::compare(grads[i].data(), grads[0].data(), grads[0].size(), 0, 1e-12), "");
  }
}

TEST(ModelGradient, AccumulationOverMicroBatchesEqualsOneBigBatch) {
  // Two micro-batches of B=1 with dloss 1/(2T) == one batch of B=2 with dloss 1/(2T).
  ModelConfig cfg = tiny_config();
  auto be = make_cpu_backend(DType::kF64);
  Batch batch(cfg.vocab_size, 13);
  const int T = batch.T;
  LlamaModel model(cfg, *be, 2, T);
  randomize(model, 8);
  model.zero_grads();
  model.forward_backward(batch.tokens.data(), batch.targets.data(), 2, T, 1.0 / (2 * T));
  auto big = get(*be, model.grad_buffer());
  model.zero_grads();
  for (int b = 0; b < 2; ++b)
    model.forward_backward(batch.tokens.data() + b * T, batch.targets.data() + b * T, 1, T, 1.0 / (2 * T));
  auto acc = get(*be, model.grad_buffer());
  EXPECT_EQ(test::compare(acc.data(), big.data(), big.size(), 1e-14, 1e-11), "");
}

// init_weights: each element's draw depends only on the seed, the tensor's name and the element's
// place in the whole tensor. So a tensor-parallel rank's or a pipeline stage's parts are exactly
// the slices of the whole model's tensors (each drawn alone), whatever the thread count, and the
// draws are Normal(0, initializer_range) (output projections / sqrt(2 L)), the norms 1.
TEST(ModelInit, PartsAreSlicesOfTheWholeDrawAndTheDrawIsNormal) {
  ModelConfig cfg = tiny_config();
  cfg.hidden_size = 64;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 4;
  cfg.intermediate_size = 128;
  cfg.num_hidden_layers = 4;
  cfg.vocab_size = 96;
  cfg.initializer_range = 0.05;
  auto be = make_cpu_backend(DType::kF64);
  omp_set_num_threads(1);
  LlamaModel whole(cfg, *be, 1, 4);
  whole.init_weights(42);
  omp_set_num_threads(3);
  std::map<std::string, std::vector<double>> all;
  for (const auto& p : whole.params()) all[p.name] = get(*be, p.tensor);

  // The statistics of the whole draw.
  const double out_std = cfg.initializer_range / std::sqrt(2.0 * cfg.num_hidden_layers);
  for (const auto& p : whole.params()) {
    const auto& v = all[p.name];
    if (!p.decay) {
      for (double x : v) ASSERT_EQ(x, 1.0) << p.name;
      continue;
    }
    const bool out = contains(p.name, "o_proj") || contains(p.name, "down_proj");
    const double sd = out ? out_std : cfg.initializer_range, n = double(v.size());
    double mean = 0, sq = 0;
    for (double x : v) mean += x / n;
    for (double x : v) sq += (x - mean) * (x - mean) / (n - 1);
    EXPECT_NEAR(mean, 0.0, 5 * sd / std::sqrt(n)) << p.name;
    EXPECT_NEAR(std::sqrt(sq), sd, 5 * sd / std::sqrt(2 * n)) << p.name;
  }
  // Distinct tensors draw distinct values; another seed draws others.
  EXPECT_NE(all["model.layers.0.mlp.up_proj.weight"][0], all["model.layers.1.mlp.up_proj.weight"][0]);
  {
    LlamaModel other(cfg, *be, 1, 4);
    other.init_weights(43);
    EXPECT_NE(get(*be, other.params()[0].tensor)[0], all[other.params()[0].name][0]);
  }

  // Tensor-parallel ranks and pipeline stages: their parts are the whole draw's slices.
  auto check_parts = [&](LlamaModel& m, int tp, const char* what) {
    m.init_weights(42);
    for (const auto& p : m.params()) {
      ASSERT_TRUE(all.count(p.name)) << p.name;
      std::vector<double> want(size_t(p.tensor.numel()));
      const TensorSlice sl = m.parameters().local_slice(p);
      extract_slice(all[p.name].data(), p.global_shape, sl, want.data(), sizeof(double));
      EXPECT_EQ(get(*be, p.tensor), want) << what << " tp " << tp << ": " << p.name;
    }
  };
  for (int tp : {2, 4})
    for (int r = 0; r < tp; ++r) {
      test::SizeOnlyCommunicator comm(tp, r);
      LlamaModel part(cfg, *be, 1, 4, Recompute::kNone, 1, &comm, &comm);
      check_parts(part, tp, "tensor rank");
    }
  for (const bool tied : {false, true}) {
    cfg.tie_word_embeddings = tied;
    LlamaModel tied_whole(cfg, *be, 1, 4);
    tied_whole.init_weights(42);
    for (const auto& p : tied_whole.params()) all[p.name] = get(*be, p.tensor);
    const PipelineSplit split = llama_pipeline_split(cfg, 4, 2, 1);
    for (int stage = 0; stage < 2; ++stage) {
      test::SizeOnlyCommunicator pp(2, stage);
      const PipelineStage st{split, stage, {1}, &pp, &pp};
      LlamaModel part(cfg, *be, 1, 4, Recompute::kNone, 1, nullptr, nullptr, &st);
      check_parts(part, 1, tied ? "tied stage" : "stage");
    }
  }
  omp_set_num_threads(std::max(1, omp_get_num_procs()));
}

TEST(ModelForward, LossAtInitIsNearLogV) {
  // Small init gives near-uniform predictions: loss ~ ln(V).
  ModelConfig cfg = tiny_config();
  cfg.vocab_size = 97;
  cfg.initializer_range = 0.002;
  auto be = make_cpu_backend(DType::kF32);
  Batch batch(cfg.vocab_size, 1);
  LlamaModel model(cfg, *be, batch.B, batch.T);
  model.init_weights(1);
  double loss = model.forward_loss(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
  EXPECT_NEAR(loss, std::log(97.0), 0.01);
}

// The layout table: gradient units tile the padded buffer in backward order (the head last in
// memory, the embedding first), and every view lies inside its own unit.
TEST(ModelLayout, GradientUnitsTileTheBufferInBackwardOrder) {
  for (bool tied : {false, true}) {
    ModelConfig cfg = tiny_config();
    cfg.tie_word_embeddings = tied;
    const ParamLayout layout = llama_param_layout(cfg);
    const int64_t padded = layout.elements + 100;
    const auto units = layout.unit_ranges(padded);
    ASSERT_EQ(int(units.size()), cfg.num_hidden_layers + 2);
    EXPECT_EQ(units.front().second, padded);
    EXPECT_EQ(units.back().first, 0);
    for (size_t u = 1; u < units.size(); ++u) EXPECT_EQ(units[u].second, units[u - 1].first) << u;
    for (size_t i = 0; i < layout.params.size(); ++i) {
      const auto& r = units[size_t(layout.params[i].unit)];
      EXPECT_GE(layout.offsets[i], r.first) << layout.params[i].name;
      EXPECT_LE(layout.offsets[i] + layout.local_shape(i).numel(), r.second) << layout.params[i].name;
    }
  }
}

// extract_slice and insert_slice (core/param_set.h): every rank's part of a 3-D tensor split on
// each dimension, put back together, is the whole tensor again.
TEST(ModelLayout, SlicesOfEveryRankRebuildTheWhole) {
  const Shape shape{4, 6, 2};
  std::vector<float> whole(size_t(shape.numel()));
  for (size_t i = 0; i < whole.size(); ++i) whole[i] = float(i);
  const int P = 2;
  for (int dim = 0; dim < 3; ++dim) {
    std::vector<float> rebuilt(whole.size(), -1.0f);
    const int64_t len = shape.dims[dim] / P;
    for (int q = 0; q < P; ++q) {
      const TensorSlice s{dim, q * len, len};
      std::vector<float> part(whole.size() / P);
      extract_slice(whole.data(), shape, s, part.data(), sizeof(float));
      // The part's first element is the whole's at index q * len of `dim`, 0 elsewhere.
      int64_t stride = 1;
      for (int d = dim + 1; d < 3; ++d) stride *= shape.dims[d];
      EXPECT_EQ(part[0], float(q * len * stride)) << dim;
      insert_slice(rebuilt.data(), shape, s, part.data(), sizeof(float));
    }
    EXPECT_EQ(rebuilt, whole) << "dim " << dim;
  }
}

}  // namespace
}  // namespace ltrain
