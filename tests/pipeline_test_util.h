// A pipeline run inside one process, for tests of the model's chunks: the stages of a split are
// separate LlamaModels on one backend, and the messages between them are copies through the
// host. One micro-batch goes forward through the stages and back; the gradients are then
// gathered by tensor name (a tied embedding: the first stage's plus the last stage's copy's).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ltrain/model/llama.h"

namespace ltrain::test {

struct StagedResult {
  double loss_sum = 0;
  std::map<std::string, std::vector<double>> grads;
};

inline std::vector<double> host_values(Backend& be, const Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  be.to_host(v.data(), DType::kF64, t);
  return v;
}

inline void copy_through_host(Backend& be, Tensor dst, const Tensor& src) {
  const std::vector<double> v = host_values(be, src);
  be.from_host(dst, v.data(), DType::kF64);
}

// `whole` gives the weights (by name); P stages of one chunk each (split by FLOPs).
inline StagedResult run_staged(const LlamaModel& whole, Backend& be, int P, const int32_t* tokens,
                               const int32_t* targets, int B, int T, double dloss, Recompute rc = Recompute::kNone) {
  const ModelConfig& cfg = whole.config();
  const PipelineSplit split = llama_pipeline_split(cfg, T, P, 1);
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<std::unique_ptr<LlamaModel>> stages;
  for (int p = 0; p < P; ++p) {
    comms.push_back(make_single_communicator());
    const PipelineStage st{split, p, {1}, comms.back().get(), comms.back().get()};
    stages.push_back(std::make_unique<LlamaModel>(cfg, be, B, T, rc, 1, nullptr, nullptr, &st));
    for (const auto& mine : stages.back()->params())
      for (const auto& w : whole.params())
        if (w.name == mine.name) {
          const std::vector<double> v = host_values(const_cast<LlamaModel&>(whole).backend(), w.tensor);
          be.from_host(mine.tensor, v.data(), DType::kF64);
        }
    stages.back()->zero_grads();
  }
  for (int p = 0; p < P; ++p) {
    if (p > 0) copy_through_host(be, stages[size_t(p)]->chunk_input(0, 0, B, T), stages[size_t(p) - 1]->chunk_output(0, 0, B, T));
    stages[size_t(p)]->chunk_forward(0, 0, tokens, targets, B, T, dloss, /*train=*/true);
  }
  for (int p = P - 1; p >= 0; --p) {
    stages[size_t(p)]->chunk_backward(0, 0, B, T);
    if (p > 0) copy_through_host(be, stages[size_t(p) - 1]->chunk_grad(0, 0, B, T), stages[size_t(p)]->chunk_grad(0, 0, B, T));
  }
  StagedResult r;
  r.loss_sum = stages.back()->take_loss_sum();
  for (const auto& s : stages)
    for (const auto& g : s->grads()) {
      std::vector<double> v = host_values(be, g.tensor);
      auto& dst = r.grads[g.name];
      if (dst.empty()) dst = std::move(v);
      else
        for (size_t i = 0; i < v.size(); ++i) dst[i] += v[i];  // the tied copy's part
    }
  return r;
}

}  // namespace ltrain::test
