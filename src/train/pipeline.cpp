#include "ltrain/train/pipeline.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

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
  // 1. When each op runs: one tick per op, as soon as its input exists (a forward needs the
  // previous chunk's forward of the micro-batch, a backward the next chunk's backward).
  std::vector<std::vector<int>> fdone(static_cast<size_t>(G), std::vector<int>(static_cast<size_t>(m), -1));
  std::vector<std::vector<int>> bdone = fdone;
  std::vector<size_t> pos(static_cast<size_t>(P), 0);
  int ticks = 0;
  for (int t = 0;; ++t) {
    std::vector<std::pair<int, PipeOp>> ran;  // (stage, op)
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
      if (ready) ran.push_back({p, op});
    }
    if (!left) {
      ticks = t;
      break;
    }
    LTRAIN_CHECK(!ran.empty(), "pipeline schedule deadlocks at tick " << t);
    for (const auto& [p, op] : ran) {
      (op.forward ? fdone : bdone)[size_t(op.chunk * P + p)][size_t(op.micro)] = t;
      ++pos[size_t(p)];
    }
  }
  // 2. Messages: an activation arrives in the exchange right before the forward that needs it
  // (so it takes a slot no earlier than needed: P - p slots on stage p under 1F1B); under the
  // interleaved schedule one tick earlier when it was made by then, so that its transfer overlaps
  // the op in between (Megatron-LM receives ahead too). A gradient arrives in the exchange of the
  // backward that made it (its slot exists since the forward). Slots, per
  // tick: an embedding forward takes one, a backward frees its own, then arriving activations take
  // one (a freed slot's input buffer is not the buffer its gradient leaves from).
  struct Event {
    int tick, kind;  // 0 embedding forward takes, 1 backward frees, 2 activation arrives
    int g, micro;
  };
  struct Msg {
    int tick, from, to, g_to, micro;
    bool activation;
  };
  std::vector<Event> events;
  std::vector<Msg> msgs;
  for (int g = 0; g < G; ++g)
    for (int mi = 0; mi < m; ++mi) {
      if (g == 0) events.push_back({fdone[0][size_t(mi)], 0, g, mi});
      else {
        const int need = fdone[size_t(g)][size_t(mi)], made = fdone[size_t(g) - 1][size_t(mi)];
        const int arrive = interleaved ? std::max(made, need - 2) : need - 1;
        events.push_back({arrive, 2, g, mi});
        msgs.push_back({arrive, (g - 1) % P, g % P, g, mi, true});
      }
      events.push_back({bdone[size_t(g)][size_t(mi)], 1, g, mi});
      if (g + 1 < G) msgs.push_back({bdone[size_t(g) + 1][size_t(mi)], (g + 1) % P, g % P, g, mi, false});
    }
  std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    return std::tie(a.tick, a.kind, a.g, a.micro) < std::tie(b.tick, b.kind, b.g, b.micro);
  });
  std::vector<std::vector<int>> slot(static_cast<size_t>(G), std::vector<int>(static_cast<size_t>(m), -1));
  std::vector<std::vector<int>> free_slots(static_cast<size_t>(G));
  std::vector<int> used(static_cast<size_t>(G), 0);
  for (const Event& e : events) {
    auto& f = free_slots[size_t(e.g)];
    if (e.kind == 1) {
      f.push_back(slot[size_t(e.g)][size_t(e.micro)]);
      continue;
    }
    int s;
    if (f.empty()) {
      s = used[size_t(e.g)]++;
    } else {
      s = *std::min_element(f.begin(), f.end());
      f.erase(std::find(f.begin(), f.end(), s));
    }
    slot[size_t(e.g)][size_t(e.micro)] = s;
  }
  // 3. This stage's ticks: its op, and the messages it sends or receives, in an order both ends
  // agree on (two messages between the same pair in one exchange match in posting order).
  std::sort(msgs.begin(), msgs.end(), [](const Msg& a, const Msg& b) {
    return std::tie(a.tick, a.from, a.to, a.activation, a.micro, a.g_to) <
           std::tie(b.tick, b.from, b.to, b.activation, b.micro, b.g_to);
  });
  std::map<int, PipelineProgram::Tick> by_tick;
  for (const PipeOp& op : order[size_t(stage)]) {
    const int g = op.chunk * P + stage;
    const int t = (op.forward ? fdone : bdone)[size_t(g)][size_t(op.micro)];
    PipelineProgram::Tick& tick = by_tick[t];
    tick.tick = t;
    tick.has_op = true;
    tick.op = op;
    tick.slot = slot[size_t(g)][size_t(op.micro)];
  }
  for (const Msg& msg : msgs) {
    // An activation goes from chunk g_to - 1 to g_to; a gradient from g_to + 1 to g_to; both
    // occupy micro-batch `micro`'s slot at each end.
    const int g_from = msg.activation ? msg.g_to - 1 : msg.g_to + 1;
    if (msg.from == stage) {
      PipelineProgram::Tick& tick = by_tick[msg.tick];
      tick.tick = msg.tick;
      tick.messages.push_back({g_from / P, slot[size_t(g_from)][size_t(msg.micro)], msg.activation, true, msg.to});
    }
    if (msg.to == stage) {
      PipelineProgram::Tick& tick = by_tick[msg.tick];
      tick.tick = msg.tick;
      tick.messages.push_back({msg.g_to / P, slot[size_t(msg.g_to)][size_t(msg.micro)], msg.activation, false, msg.from});
    }
  }
  PipelineProgram prog;
  for (auto& [t, tick] : by_tick) prog.ticks.push_back(std::move(tick));
  // 4. When each exchange completes: before the first later op on one of its (chunk, slot)
  // buffers. Messages touch only the input, output and output-gradient buffers of their slot,
  // and an op only its own slot's (and buffers no message uses), so this is the first op that
  // reads what was received or overwrites what was sent.
  struct Pending {
    int tick;
    std::vector<std::pair<int, int>> bufs;  // (chunk, slot)
    bool overlapped = false;
  };
  std::vector<Pending> pending;
  for (size_t i = 0; i < prog.ticks.size(); ++i) {
    PipelineProgram::Tick& tick = prog.ticks[i];
    if (tick.has_op) {
      const std::pair<int, int> mine{tick.op.chunk, tick.slot};
      for (auto it = pending.begin(); it != pending.end();) {
        if (std::find(it->bufs.begin(), it->bufs.end(), mine) != it->bufs.end()) {
          tick.settle.push_back(it->tick);
          prog.overlapped_exchanges += it->overlapped;
          it = pending.erase(it);
        } else {
          it->overlapped = true;  // this op runs while the exchange is in flight
          ++it;
        }
      }
    }
    if (tick.messages.empty()) continue;
    Pending p{int(i), {}, false};
    for (const auto& msg : tick.messages) p.bufs.push_back({msg.chunk, msg.slot});
    pending.push_back(std::move(p));
    ++prog.exchanges;
  }
  for (const Pending& p : pending) prog.overlapped_exchanges += p.overlapped;
  prog.total_ticks = ticks;
  prog.busy_ticks = int(order[size_t(stage)].size());
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
  // Each chunk's last backward: its gradients are final after it.
  std::vector<size_t> last_backward(size_t(model_.num_chunks()), 0);
  for (size_t i = 0; i < program_.ticks.size(); ++i)
    if (program_.ticks[i].has_op && !program_.ticks[i].op.forward) last_backward[size_t(program_.ticks[i].op.chunk)] = i;
  std::vector<int> ticket(program_.ticks.size(), -1);  // each started exchange's, until completed
  std::vector<Communicator::P2p> ops;
  // Completes an exchange, on the stream or on the host; bench's marks time the wait.
  auto complete = [&](int t, bool on_stream) {
    const int mark = wait_timer_ ? wait_timer_->record() : -1;
    if (on_stream) comm_.wait_on_stream(t);
    else comm_.wait(t);
    if (wait_timer_) wait_marks_.push_back({mark, wait_timer_->record()});
  };
  for (size_t i = 0; i < program_.ticks.size(); ++i) {
    const PipelineProgram::Tick& tick = program_.ticks[i];
    if (tick.has_op) {
      // The exchanges this op depends on complete first: on the GPU the stream waits for them,
      // the host does not.
      for (int j : tick.settle) {
        complete(ticket[size_t(j)], /*on_stream=*/true);
        ticket[size_t(j)] = -1;
      }
      const PipeOp& op = tick.op;
      if (op.forward) {
        model_.chunk_forward(op.chunk, tick.slot, inputs + per * size_t(op.micro), targets + per * size_t(op.micro),
                             B, T, dloss, /*train=*/true);
      } else {
        // Data parallelism: a bucket starts during the last backward of the chunk that finishes
        // it (under the interleaved schedule the later chunks' buckets start before the last
        // backward of chunk 0).
        if (reducer) reducer->arm(i == last_backward[size_t(op.chunk)]);
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
    ticket[i] = comm_.send_recv_start(ops);
  }
  // The step ends with every message delivered, on the host: a stage that stalls is caught here
  // by the watchdog at the latest.
  for (int t : ticket)
    if (t >= 0) complete(t, /*on_stream=*/false);
  // On the GPU the exchanges completed on the stream were not waited for by the host, and the
  // stage's last ops may wait on them: an empty exchange, ordered after all of that, is.
  if (comm_.orders_after_device_work()) comm_.wait(comm_.send_recv_start({}));
}

double Pipeline::loss_sum(double local) {
  const double t0 = wait_timer_ ? wall_time_seconds() : 0;
  const double sum = host_.sum(local);
  if (wait_timer_) host_wait_seconds_ += wall_time_seconds() - t0;
  return sum;
}

void Pipeline::measure_waits(bool on) {
  take_wait_seconds();
  if (on && !wait_timer_) wait_timer_ = model_.backend().make_event_timer();
  if (!on) wait_timer_.reset();
}

double Pipeline::take_wait_seconds() {
  double s = host_wait_seconds_;
  if (wait_timer_) {
    for (const auto& [a, b] : wait_marks_) s += wait_timer_->seconds_between(a, b);
    wait_timer_->clear();
  }
  wait_marks_.clear();
  host_wait_seconds_ = 0;
  return s;
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
