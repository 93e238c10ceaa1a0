// Pipeline parallelism without MPI: the schedules (every op once, 1F1B's warm-up, the slots and
// the bubble, messages that match between stages), the cut of the layers, and the model's chunks
// run stage by stage in one process against the whole model's gradients. The runs under mpirun
// are tests/scripts/test_pipeline_cli.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include "ltrain/core/check.h"
#include "ltrain/model/flops.h"
#include "ltrain/train/pipeline.h"
#include "pipeline_test_util.h"

namespace ltrain {
namespace {

TEST(PipelineSchedule, EveryOpOnceForwardBeforeBackward) {
  for (const bool interleaved : {false, true})
    for (int P : {1, 2, 3, 4})
      for (int V : interleaved ? std::vector<int>{1, 2, 3} : std::vector<int>{1})
        for (int m : {1, 2, 4, 8, 12}) {
          if (interleaved && m % P) continue;
          for (int p = 0; p < P; ++p) {
            SCOPED_TRACE(::testing::Message() << "P " << P << " V " << V << " m " << m << " stage " << p);
            const auto ops = pipeline_order(P, V, p, m, interleaved);
            ASSERT_EQ(ops.size(), size_t(2 * m * V));
            std::set<std::tuple<bool, int, int>> seen;
            for (size_t i = 0; i < ops.size(); ++i) {
              EXPECT_TRUE(seen.insert({ops[i].forward, ops[i].chunk, ops[i].micro}).second) << "op twice";
              if (!ops[i].forward) EXPECT_TRUE(seen.count({true, ops[i].chunk, ops[i].micro})) << "backward first";
            }
            if (!interleaved) {  // 1F1B: P - p - 1 warm-up forwards, then alternating
              const int warm = std::min(m, P - p - 1);
              for (int i = 0; i < warm; ++i) EXPECT_TRUE(ops[size_t(i)].forward) << i;
              if (warm < m) EXPECT_TRUE(ops[size_t(warm)].forward && !ops[size_t(warm) + 1].forward);
            }
          }
        }
}

TEST(PipelineSchedule, SlotsAndBubbleOf1F1BAndInterleaved) {
  for (int P : {2, 3, 4})
    for (int m : {P, 2 * P, 8}) {
      for (int p = 0; p < P; ++p) {
        const PipelineProgram prog = plan_pipeline(P, 1, p, m, false);
        EXPECT_EQ(prog.slots, std::vector<int>{std::min(m, P - p)}) << "P " << P << " m " << m << " stage " << p;
        // Forward and backward one tick each: the idle share is (P - 1) / (m + P - 1).
        EXPECT_NEAR(1.0 - double(prog.busy_ticks) / prog.total_ticks, double(P - 1) / (m + P - 1), 1e-12);
      }
      if (m % P) continue;
      // Interleaving V chunks: the bubble shrinks to (P - 1) / (V m + P - 1). The first stage keeps
      // the most micro-batches of every chunk (the others' early arrivals do not pass it).
      for (int V : {2, 4}) {
        const PipelineProgram prog = plan_pipeline(P, V, 0, m, true);
        EXPECT_NEAR(1.0 - double(prog.busy_ticks) / prog.total_ticks, double(P - 1) / (V * m + P - 1), 1e-12)
            << "P " << P << " V " << V << " m " << m;
        for (int p = 1; p < P; ++p) {
          const PipelineProgram other = plan_pipeline(P, V, p, m, true);
          for (int v = 0; v < V; ++v)
            EXPECT_LE(other.slots[size_t(v)], prog.slots[size_t(v)]) << "P " << P << " V " << V << " m " << m << " stage " << p;
        }
      }
    }
}

// What stage p sends to q in a tick is what q receives from p in that tick, in the same order,
// the same kind of buffer, and each micro-batch's activation and gradient cross every boundary
// once.
TEST(PipelineSchedule, MessagesMatchBetweenStages) {
  for (const auto& [P, V, m, inter] : std::vector<std::tuple<int, int, int, bool>>{
           {2, 1, 4, false}, {4, 1, 8, false}, {3, 1, 2, false}, {2, 2, 4, true}, {4, 2, 8, true}, {3, 3, 6, true}}) {
    SCOPED_TRACE(::testing::Message() << "P " << P << " V " << V << " m " << m);
    std::vector<PipelineProgram> progs;
    for (int p = 0; p < P; ++p) progs.push_back(plan_pipeline(P, V, p, m, inter));
    std::map<std::tuple<int, int, int>, std::vector<bool>> sent, received;  // (tick, from, to) -> kinds
    int activations = 0, gradients = 0;
    for (int p = 0; p < P; ++p)
      for (const auto& t : progs[size_t(p)].ticks)
        for (const auto& msg : t.messages) {
          if (msg.send) sent[{t.tick, p, msg.peer}].push_back(msg.activation);
          else received[{t.tick, msg.peer, p}].push_back(msg.activation);
          if (msg.send) (msg.activation ? activations : gradients) += 1;
          EXPECT_GE(msg.slot, 0);
          EXPECT_LT(msg.slot, progs[size_t(p)].slots[size_t(msg.chunk)]);
        }
    EXPECT_EQ(sent, received);
    EXPECT_EQ(activations, (P * V - 1) * m);
    EXPECT_EQ(gradients, (P * V - 1) * m);
  }
}

// Overlap: each exchange is started at its tick and completed (Tick::settle) right before the
// first later op of the stage on one of its buffers, never earlier; no op runs on a buffer whose
// exchange is still in flight; what is left completes at the end of the step. Under 1F1B only
// the warm-up forwards overlap their exchanges (in the steady state each one carries what the
// next op needs; Megatron-LM too overlaps only under the interleaved schedule); interleaving
// overlaps more.
TEST(PipelineSchedule, ExchangesCompleteRightBeforeTheirBuffersAreUsed) {
  for (const auto& [P, m] : std::vector<std::pair<int, int>>{{2, 4}, {2, 8}, {3, 6}, {4, 8}}) {
    int overlapped[2] = {0, 0};  // 1F1B, interleaved (V = 2), over all stages
    for (const bool inter : {false, true})
      for (int p = 0; p < P; ++p) {
        SCOPED_TRACE(::testing::Message() << "P " << P << " m " << m << (inter ? " interleaved" : " 1f1b") << " stage " << p);
        const PipelineProgram prog = plan_pipeline(P, inter ? 2 : 1, p, m, inter);
        std::map<int, std::set<std::pair<int, int>>> pending;  // started exchange -> its (chunk, slot)s
        std::map<int, bool> ran_since;                        // an op ran while it was in flight
        int exchanges = 0, overlaps = 0;
        for (size_t i = 0; i < prog.ticks.size(); ++i) {
          const auto& t = prog.ticks[i];
          if (t.has_op) {
            const std::pair<int, int> mine{t.op.chunk, t.slot};
            for (int j : t.settle) {
              ASSERT_TRUE(pending.count(j)) << "tick " << t.tick << " completes exchange " << j << " not in flight";
              EXPECT_TRUE(pending[j].count(mine)) << "exchange " << j << " completed before it is needed";
              overlaps += ran_since[j];
              pending.erase(j);
            }
            for (auto& [j, bufs] : pending) {
              EXPECT_FALSE(bufs.count(mine)) << "tick " << t.tick << " runs on a buffer of exchange " << j << " in flight";
              ran_since[j] = true;
            }
          } else {
            EXPECT_TRUE(t.settle.empty());
          }
          if (t.messages.empty()) continue;
          ++exchanges;
          for (const auto& msg : t.messages) pending[int(i)].insert({msg.chunk, msg.slot});
          ran_since[int(i)] = false;
        }
        for (const auto& [j, bufs] : pending) overlaps += ran_since[j];  // completed at the end
        EXPECT_EQ(prog.exchanges, exchanges);
        EXPECT_EQ(prog.overlapped_exchanges, overlaps);
        if (!inter) EXPECT_EQ(overlaps, std::min(m, P - p - 1));  // one per warm-up forward
        overlapped[inter] += overlaps;
      }
    EXPECT_GT(overlapped[1], overlapped[0]) << "P " << P << " m " << m;
  }
}

TEST(PipelineSplit, BalancesComputeAndRefusesImpossibleCuts) {
  ModelConfig m;
  m.hidden_size = 256;
  m.num_attention_heads = 4;
  m.intermediate_size = 704;
  m.num_hidden_layers = 8;
  m.vocab_size = 32000;  // a heavy head: the last stage gets fewer layers
  m.max_position_embeddings = 64;
  const PipelineSplit s = llama_pipeline_split(m, 64, 2, 1);
  EXPECT_EQ(s.first_layer.front(), 0);
  EXPECT_EQ(s.first_layer.back(), 8);
  EXPECT_GT(s.layers(0), s.layers(1));
  m.vocab_size = 16;  // a negligible head: equal halves
  EXPECT_EQ(llama_pipeline_split(m, 64, 2, 1).layers(0), 4);
  EXPECT_EQ(llama_pipeline_split(m, 64, 2, 2).first_layer, (std::vector<int>{0, 2, 4, 6, 8}));
  EXPECT_EQ(llama_pipeline_split(m, 64, 2, 1, {5, 3}).layers(0), 5);
  // The cut's costs are flops_per_token's terms.
  EXPECT_NEAR(flops_per_token(m, 64), 8 * layer_flops_per_token(m, 64) + head_flops_per_token(m), 1e-6 * flops_per_token(m, 64));
  EXPECT_THROW(llama_pipeline_split(m, 64, 9, 1), UserError);
  EXPECT_THROW(llama_pipeline_split(m, 64, 3, 2), UserError);  // 6 chunks do not divide 8 layers
  EXPECT_THROW(llama_pipeline_split(m, 64, 2, 1, {4, 3}), UserError);
  EXPECT_THROW(llama_pipeline_split(m, 64, 2, 1, {8, 0}), UserError);
}

ModelConfig tiny() {
  ModelConfig m;
  m.hidden_size = 12;
  m.num_attention_heads = 3;
  m.num_key_value_heads = 1;
  m.intermediate_size = 19;
  m.num_hidden_layers = 4;
  m.vocab_size = 11;
  m.max_position_embeddings = 16;
  m.initializer_range = 0.3;
  return m;
}

// Stage by stage (in double, one micro-batch) the model's chunks give the whole model's loss and
// gradients, tied embeddings included.
TEST(PipelineModel, StagesGiveTheWholeModelsGradients) {
  for (const bool tied : {false, true})
    for (const int P : {2, 3, 4})
      for (const Recompute rc : {Recompute::kNone, Recompute::kFull}) {
        SCOPED_TRACE(::testing::Message() << "P " << P << (tied ? " tied" : "") << " recompute " << int(rc));
        ModelConfig cfg = tiny();
        cfg.tie_word_embeddings = tied;
        const int B = 2, T = 5;
        auto be = make_cpu_backend(DType::kF64);
        LlamaModel whole(cfg, *be, B, T, rc);
        whole.init_weights(3);
        std::mt19937_64 rng(5);
        std::vector<int32_t> tokens, targets;
        for (int i = 0; i < B * T; ++i) {
          tokens.push_back(int32_t(rng() % cfg.vocab_size));
          targets.push_back(i % 4 == 1 ? -1 : int32_t(rng() % cfg.vocab_size));
        }
        const double dloss = 1.0 / 7;
        whole.zero_grads();
        whole.forward_backward_accumulate(tokens.data(), targets.data(), B, T, dloss);
        const double loss = whole.take_loss_sum();
        const test::StagedResult staged = test::run_staged(whole, *be, P, tokens.data(), targets.data(), B, T, dloss, rc);
        EXPECT_NEAR(staged.loss_sum, loss, 1e-12 * std::abs(loss));
        ASSERT_EQ(staged.grads.size(), whole.grads().size());
        for (const auto& g : whole.grads()) {
          const std::vector<double> ref = test::host_values(*be, g.tensor), got = staged.grads.at(g.name);
          double err = 0, norm = 0;
          for (size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::abs(got[i] - ref[i])), norm = std::max(norm, std::abs(ref[i]));
          EXPECT_GT(norm, 0.0) << g.name;
          EXPECT_LE(err, 1e-12 * norm) << g.name;
        }
      }
}

}  // namespace
}  // namespace ltrain
