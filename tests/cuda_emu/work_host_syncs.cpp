// Host synchronizations in a training step on the CUDA backend, counted by the emulator (stream,
// event and device syncs, and copies between the device and pageable host memory, which wait on
// a GPU too). A step queues its micro-batches without waiting; the host waits twice: for the
// gradient norm, which the guard's verdict and the clipping need before the update, and for the
// step's loss. Neither count may grow with the micro-batches or the layers.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "emu_control.h"
#include "ltrain/cuda/cuda_backend.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/train/step.h"

namespace ltrain {
namespace {

ModelConfig small_model(int layers) {
  ModelConfig m;
  m.hidden_size = 128;
  m.num_attention_heads = 2;
  m.num_key_value_heads = 1;
  m.intermediate_size = 192;
  m.num_hidden_layers = layers;
  m.vocab_size = 256;
  m.max_position_embeddings = 64;
  return m;
}

// Host syncs of each of `steps` optimizer steps (TrainStep: gradients, the norm, the update), as
// the trainer runs them.
std::vector<uint64_t> syncs_per_step(int layers, int accum, int steps) {
  constexpr int B = 2, T = 64;
  auto be = make_cuda_backend(0);
  LlamaModel model(small_model(layers), *be, B, T);
  model.init_weights(7);
  OptimConfig oc;
  oc.grad_clip = 1.0;
  AdamW opt(oc, model.parameters());
  auto dp = make_single_communicator();
  std::mt19937_64 rng(11);
  auto next_batch = [&](int32_t* in, int32_t* tg) {
    for (int i = 0; i < B * T; ++i) {
      in[i] = int32_t(rng() % 256);
      tg[i] = i % 17 == 0 ? -1 : int32_t(rng() % 256);  // a few masked targets, as in SFT data
    }
  };
  TrainStep train_step(model, opt, nullptr, *dp, accum, B, T);
  std::vector<uint64_t> out;
  for (int step = 1; step <= steps; ++step) {
    const uint64_t before = cuda_emu::host_sync_count();
    const StepResult r = train_step.run(step, 1e-3, next_batch);
    out.push_back(cuda_emu::host_sync_count() - before);
    EXPECT_TRUE(std::isfinite(r.loss) && r.loss > 0) << r.loss;
    EXPECT_TRUE(std::isfinite(r.grad_norm) && r.grad_norm > 0) << r.grad_norm;
  }
  return out;
}

TEST(WorkHostSyncs, TwoPerOptimizerStepWhateverTheMicroBatchesAndLayers) {
  for (int layers : {1, 3})
    for (int accum : {1, 4}) {
      const std::vector<uint64_t> s = syncs_per_step(layers, accum, 3);
      // Step 1 also sizes the kernels' scratch; from step 2 on nothing is allocated.
      for (size_t i = 1; i < s.size(); ++i)
        EXPECT_EQ(s[i], 2u) << "layers " << layers << " accum " << accum << " step " << i + 1
                            << ": host synchronizations (the norm's and the loss's readbacks)";
    }
}

}  // namespace
}  // namespace ltrain
