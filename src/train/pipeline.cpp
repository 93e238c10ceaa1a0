#include "ltrain/train/pipeline.h"

#include <algorithm>

#include "ltrain/core/check.h"

namespace ltrain {

std::vector<PipeOp> pipeline_order(int P, int V, int stage, int m, bool interleaved) {
  LTRAIN_CHECK(P >= 1 && V >= 1 && stage >= 0 && stage < P && m >= 1, "pipeline_order arguments");
  LTRAIN_CHECK(interleaved ? m % P == 0 : V == 1, "pipeline_order: interleaved needs m % P == 0, 1F1B V == 1");
  const int total = m * V;
  // The k-th forward (backward) of the stage: micro-batches go through the chunks in groups of P.
  auto micro = [&](int k) { return interleaved ? (k / (P * V)) * P + k % P : k; };
  auto fchunk = [&](int k) { return interleaved ? (k / P) % V : 0; };
  auto bchunk = [&](int k) { return V - 1 - fchunk(k); };
  const int warmup = std::min(total, interleaved ? (P - stage - 1) * 2 + (V - 1) * P : P - stage - 1);
  std::vector<PipeOp> ops;
  for (int k = 0; k < warmup; ++k) ops.push_back({true, fchunk(k), micro(k)});
  for (int i = 0; i < total - warmup; ++i) {
    ops.push_back({true, fchunk(warmup + i), micro(warmup + i)});
    ops.push_back({false, bchunk(i), micro(i)});
  }
  for (int i = total - warmup; i < total; ++i) ops.push_back({false, bchunk(i), micro(i)});
  return ops;
}

PipelineProgram plan_pipeline(int P, int V, int stage, int m, bool interleaved) {
  const int G = P * V;
  std::vector<std::vector<PipeOp>> order(static_cast<size_t>(P));
  for (int p = 0; p < P; ++p) order[size_t(p)] = pipeline_order(P, V, p, m, interleaved);
  // Per global chunk and micro-batch: the tick its forward / backward ran (-1: not yet), and the
  // slot it occupies in its stage's chunk.
  std::vector<std::vector<int>> fdone(static_cast<size_t>(G), std::vector<int>(static_cast<size_t>(m), -1)), bdone = fdone, slot = fdone;
  std::vector<std::vector<int>> free_slots(static_cast<size_t>(G));
  std::vector<int> used(static_cast<size_t>(G), 0);
  auto take = [&](int g, int mi) {
    auto& f = free_slots[size_t(g)];
    int s;
    if (f.empty()) {
      s = used[size_t(g)]++;
    } else {
      s = *std::min_element(f.begin(), f.end());
      f.erase(std::find(f.begin(), f.end(), s));
    }
    slot[size_t(g)][size_t(mi)] = s;
  };
  std::vector<size_t> pos(static_cast<size_t>(P), 0);
  PipelineProgram prog;
  for (int t = 0;; ++t) {
    struct Ran { int p, g; PipeOp op; };
    std::vector<Ran> ran;
    bool left = false;
    for (int p = 0; p < P; ++p) {
      if (pos[size_t(p)] == order[size_t(p)].size()) continue;
      left = true;
      const PipeOp op = order[size_t(p)][pos[size_t(p)]];
      const int g = op.chunk * P + p, mi = op.micro;
      auto before = [&](int tick) { return tick >= 0 && tick < t; };
      const bool ready = op.forward ? (g == 0 || before(fdone[size_t(g) - 1][size_t(mi)]))
                                    : before(fdone[size_t(g)][size_t(mi)]) &&
                                          (g == G - 1 || before(bdone[size_t(g) + 1][size_t(mi)]));
      if (ready) ran.push_back({p, g, op});
    }
    if (!left) {
      prog.total_ticks = t;
      break;
    }
    LTRAIN_CHECK(!ran.empty(), "pipeline schedule deadlocks at tick " << t);
    PipelineProgram::Tick mine;
    mine.tick = t;
    // The ops of the tick; the embedding chunk's forward takes a slot (others got theirs when
    // their input arrived).
    for (const Ran& r : ran) {
      if (r.op.forward && r.g == 0) take(r.g, r.op.micro);
      (r.op.forward ? fdone : bdone)[size_t(r.g)][size_t(r.op.micro)] = t;
      ++pos[size_t(r.p)];
      if (r.p == stage) {
        mine.has_op = true;
        mine.op = r.op;
        mine.slot = slot[size_t(r.g)][size_t(r.op.micro)];
        ++prog.busy_ticks;
      }
    }
    // What the ops produced for other stages: a forward's output is the next chunk's input (which
    // takes a slot there), a backward's input gradient the previous chunk's output gradient.
    for (const Ran& r : ran) {
      const int mi = r.op.micro, to_g = r.op.forward ? r.g + 1 : r.g - 1;
      if (to_g < 0 || to_g >= G) continue;
      if (r.op.forward) take(to_g, mi);
      const int to_p = to_g % P;
      if (r.p == stage)
        mine.messages.push_back({r.op.chunk, slot[size_t(r.g)][size_t(mi)], r.op.forward, true, to_p});
      if (to_p == stage)
        mine.messages.push_back({to_g / P, slot[size_t(to_g)][size_t(mi)], r.op.forward, false, r.p});
    }
    // A backward frees its slot once its gradient is sent.
    for (const Ran& r : ran)
      if (!r.op.forward) free_slots[size_t(r.g)].push_back(slot[size_t(r.g)][size_t(r.op.micro)]);
    if (mine.has_op || !mine.messages.empty()) prog.ticks.push_back(std::move(mine));
  }
  for (int v = 0; v < V; ++v) prog.slots.push_back(std::max(1, used[size_t(v * P + stage)]));
  return prog;
}

Pipeline::Pipeline(LlamaModel& model, PipelineProgram program, Communicator& comm, Communicator& host)
    : model_(model), program_(std::move(program)), comm_(comm), host_(host) {
  const int P = comm_.size(), stage = comm_.rank();
  if (P < 2 || !model_.config().tie_word_embeddings) return;
  for (const auto& g : model_.grads())
    if (g.name == "model.embed_tokens.weight") {
      // Stage 0 holds the embedding, the last stage its copy as lm_head.
      tied_peer_ = stage == 0 ? P - 1 : 0;
      tied_tmp_ = model_.backend().alloc(g.tensor.shape, g.tensor.dtype);
    }
}

Pipeline::~Pipeline() { model_.backend().free(tied_tmp_); }

double Pipeline::ideal_bubble() const {
  return program_.total_ticks > 0 ? 1.0 - double(program_.busy_ticks) / program_.total_ticks : 0.0;
}

void Pipeline::run(const int32_t* inputs, const int32_t* targets, int B, int T, double dloss, GradReducer* reducer) {
  const size_t per = size_t(B) * T;
  size_t last_backward = 0;
  for (size_t i = 0; i < program_.ticks.size(); ++i)
    if (program_.ticks[i].has_op && !program_.ticks[i].op.forward) last_backward = i;
  std::vector<Communicator::P2p> ops;
  for (size_t i = 0; i < program_.ticks.size(); ++i) {
    const PipelineProgram::Tick& tick = program_.ticks[i];
    if (tick.has_op) {
      const PipeOp& op = tick.op;
      if (op.forward) {
        model_.chunk_forward(op.chunk, tick.slot, inputs + per * size_t(op.micro), targets + per * size_t(op.micro),
                             B, T, dloss, /*train=*/true);
      } else {
        // Data parallelism: the buckets start during the stage's last backward.
        if (reducer) reducer->arm(i == last_backward);
        model_.chunk_backward(op.chunk, tick.slot, B, T);
      }
    }
    if (tick.messages.empty()) continue;
    ops.clear();
    for (const auto& m : tick.messages) {
      Tensor buf = !m.activation ? model_.chunk_grad(m.chunk, m.slot, B, T)
                   : m.send      ? model_.chunk_output(m.chunk, m.slot, B, T)
                                 : model_.chunk_input(m.chunk, m.slot, B, T);
      ops.push_back({buf, m.peer, m.send});
    }
    if (!comm_.orders_after_device_work()) model_.backend().synchronize();
    comm_.send_recv(ops);
  }
}

void Pipeline::sum_tied_grads() {
  if (tied_peer_ < 0) return;
  for (const auto& g : model_.grads()) {
    if (g.name != "model.embed_tokens.weight") continue;
    if (!comm_.orders_after_device_work()) model_.backend().synchronize();
    comm_.send_recv({{g.tensor, tied_peer_, true}, {tied_tmp_, tied_peer_, false}});
    model_.backend().add(g.tensor, g.tensor, tied_tmp_);  // a + b on one stage, b + a on the other: equal
  }
}

}  // namespace ltrain
