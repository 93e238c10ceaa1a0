#include "ltrain/train/trainer.h"

#include <cmath>
#include <chrono>
#include <csignal>
#include <thread>
#include <cstdarg>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <cstdio>
#include <vector>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/backends/factory.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/metrics/logger.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/grad_reducer.h"
#include "ltrain/parallel/nccl_communicator.h"
#include "ltrain/parallel/watchdog.h"
#include "ltrain/train/guard.h"
#include "ltrain/train/memory_plan.h"
#include "ltrain/train/train_data.h"

namespace ltrain {

void check_data_matches_model(const DatasetMeta& meta, const ModelConfig& model) {
  if (meta.vocab_size > model.vocab_size)
    user_error("data '", meta.dir, "' was tokenized with a vocabulary of ", meta.vocab_size,
               " tokens, more than model.vocab_size = ", model.vocab_size,
               "; set model.vocab_size >= ", meta.vocab_size);
}

double evaluate(LlamaModel& model, DataLoader& loader, int B, int T, int max_batches, double* counted_out) {
  loader.reset();
  const uint64_t avail = loader.batches_per_epoch();
  const uint64_t n = max_batches > 0 ? std::min<uint64_t>(avail, uint64_t(max_batches)) : avail;
  std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
  double sum = 0, counted = 0;
  for (uint64_t i = 0; i < n; ++i) {
    loader.next_batch(in.data(), tg.data());
    double c = 0;
    for (int32_t t : tg) c += t >= 0;
    sum += model.forward_loss(in.data(), tg.data(), B, T) * c;
    counted += c;
  }
  if (counted_out) *counted_out = counted;
  return counted > 0 ? sum / counted : NAN;
}

ParallelComms make_parallel_comms(Backend& backend, int dp_size, int tp_size, double timeout_s) {
  ParallelContext& par = ParallelContext::get();
  ParallelComms c;
  if (backend.is_cuda()) {
    const int gpu = cuda_device_for_rank(par.local_rank());
    if (dp_size > 1) c.dp_nccl = make_nccl_communicator(par.data(), gpu, &backend);
    if (tp_size > 1) c.tp_nccl = make_nccl_communicator(par.tensor(), gpu, &backend);
  }
  // Every collective of the step goes through a watchdog (parallel.timeout_s).
  const int rank = par.world_rank();
  c.watched.push_back(with_watchdog(c.dp_nccl ? *c.dp_nccl : par.data(), timeout_s, rank, "data-parallel"));
  c.dp = c.watched.back().get();
  c.watched.push_back(with_watchdog(par.tensor(), timeout_s, rank, "tensor-parallel (host)"));
  c.tp_host = c.watched.back().get();
  if (tp_size > 1) {
    c.watched.push_back(with_watchdog(c.tp_nccl ? *c.tp_nccl : par.tensor(), timeout_s, rank, "tensor-parallel"));
    c.tp = c.watched.back().get();
  }
  return c;
}

double compute_gradients(LlamaModel& model, GradReducer* reducer, Communicator& dp, int accum,
                         int B, int T, const std::function<void(int32_t*, int32_t*)>& next_batch) {
  // The whole step's micro-batches first: the loss is the mean over the step's counted targets
  // (all of them in pretraining; the answer tokens in SFT data), over every micro-batch and data
  // rank, so that count is needed before the first backward.
  thread_local std::vector<int32_t> in, tg;
  const size_t per = size_t(B) * T;
  in.resize(per * size_t(accum));
  tg.resize(per * size_t(accum));
  double local = 0;
  for (int micro = 0; micro < accum; ++micro) {
    next_batch(in.data() + per * micro, tg.data() + per * micro);
    for (size_t i = 0; i < per; ++i) local += tg[per * micro + i] >= 0;
  }
  const double counted = dp.sum(local);
  const double dloss = counted > 0 ? 1.0 / counted : 0.0;
  model.zero_grads();
  // The losses stay on the device until every micro-batch is queued: one readback per step.
  for (int micro = 0; micro < accum; ++micro) {
    if (reducer) reducer->arm(micro == accum - 1);
    model.forward_backward_accumulate(in.data() + per * micro, tg.data() + per * micro, B, T, dloss);
  }
  if (reducer) reducer->finish();
  model.reduce_replicated_grads();  // tensor parallelism: the norms' gradients over the group
  const double loss = model.take_loss_sum();
  return counted > 0 ? dp.sum(loss) / counted : 0.0;
}

double train_step(LlamaModel& model, AdamW& opt, GradReducer* reducer, Communicator& dp, int accum,
                  int B, int T, int step, double lr,
                  const std::function<void(int32_t*, int32_t*)>& next_batch, StepStats* stats) {
  const double loss = compute_gradients(model, reducer, dp, accum, B, T, next_batch);
  const StepStats st = opt.step(step, lr);
  model.backend().synchronize();
  if (stats) *stats = st;
  return loss;
}

namespace {

// Stop requests from SIGTERM, SIGINT and SIGUSR1 (preemption, Ctrl-C, Slurm's warning signal):
// the loop finishes its step, saves and exits 0.
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// A range of training data skipped after a rollback: [from, to) in loader positions.
struct SkipRange {
  LoaderState from, to;
  int step;  // the optimizer step at which the rollback happened
};

std::vector<SkipRange> read_skip_ranges(const std::string& path) {
  std::vector<SkipRange> out;
  if (!file_exists(path)) return out;
  std::istringstream in(read_text_file(path));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    try {
      auto j = nlohmann::json::parse(line);
      SkipRange r{LoaderState::from_json(j.at("from")), LoaderState::from_json(j.at("to")), j.at("step").get<int>()};
      // A range written by hand names no shuffle order: it means this run's.
      if (!j.at("to").contains("order")) r.from.order = r.to.order = kWindowOrderName;
      out.push_back(r);
    } catch (const nlohmann::json::exception& e) {
      user_error(path, ":", n, ": not a skipped-range record (", e.what(), ")");
    }
  }
  return out;
}

void append_skip_range(const std::string& path, const SkipRange& r) {
  const std::string old = file_exists(path) ? read_text_file(path) : "";
  const nlohmann::json j = {{"step", r.step}, {"from", r.from.to_json()}, {"to", r.to.to_json()}};
  write_text_file_atomic(path, old + j.dump() + "\n");
}

// Data-parallel replicas must hold the same weights. Each compares a hash (the sum of squares of
// its parameter buffer, reduced in a fixed order) with rank 0's.
void check_replicas(LlamaModel& model, Communicator& dp, int dp_rank, int step, MetricsLogger& log) {
  const double mine = model.backend().sum_squares({model.param_buffer()});
  const double ref = dp.sum(dp_rank == 0 ? mine : 0.0);
  const double bad = dp.sum(mine != ref ? 1.0 : 0.0);
  // The lowest disagreeing rank, known to all.
  const double first_bad = -dp.max(mine != ref ? -double(dp_rank) : -1e9);
  log.record({{"step", step}, {"event", "replica_check"}, {"ok", bad == 0}});
  if (bad > 0)
    throw RunStopped(strfmt("replica check at step %d: %d data-parallel rank(s) hold different weights than rank 0 "
                            "(first: data rank %d, hash %.17g vs %.17g); stopping",
                            step, int(bad), int(first_bad), dp_rank == int(first_bad) ? mine : ref, ref));
}

// Test hooks (tests/scripts/test_guard_cli.sh), inert unless their variable is set:
//   LTRAIN_TEST_NAN_AT_STEP=k       a NaN in the gradients on the first attempt of step k
//   LTRAIN_TEST_SPIKE_STEPS=a-b[,x] gradients x1000 at every attempt of steps a..b, in the first x+1
//                                   rounds (x rollbacks; default 0; "inf" = always)
//   LTRAIN_TEST_PERTURB_RANK=r@k    world rank r nudges one weight after step k's backward
//   LTRAIN_TEST_HANG_RANK=r@k       world rank r stalls for 60 s after step k's backward
void test_hooks_after_backward(LlamaModel& model, int step, int rollbacks, int world_rank) {
  static int nan_done = 0;
  Backend& be = model.backend();
  auto scale_grads = [&](double factor) {
    std::vector<double> g(size_t(model.grad_buffer().numel()));
    be.to_host(g.data(), DType::kF64, model.grad_buffer());
    for (auto& x : g) x *= factor;
    be.from_host(model.grad_buffer(), g.data(), DType::kF64);
  };
  if (const char* v = std::getenv("LTRAIN_TEST_NAN_AT_STEP"); v && std::atoi(v) == step && !nan_done) {
    nan_done = 1;
    scale_grads(NAN);
  }
  if (const char* v = std::getenv("LTRAIN_TEST_SPIKE_STEPS")) {
    int a = 0, b = 0;
    char rounds[16] = "0";
    if (std::sscanf(v, "%d-%d,%15s", &a, &b, rounds) >= 2 && step >= a && step <= b &&
        (std::string(rounds) == "inf" || rollbacks <= std::atoi(rounds)))
      scale_grads(1000.0);
  }
  if (const char* v = std::getenv("LTRAIN_TEST_HANG_RANK")) {  // r@k: world rank r stalls at step k
    int r = -1, k = -1;
    if (std::sscanf(v, "%d@%d", &r, &k) == 2 && r == world_rank && k == step)
      std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if (const char* v = std::getenv("LTRAIN_TEST_PERTURB_RANK")) {
    int r = -1, k = -1;
    if (std::sscanf(v, "%d@%d", &r, &k) == 2 && r == world_rank && k == step) {
      Tensor p = model.param_buffer();
      p.shape = Shape{1};
      const double one = 1.0;
      be.from_host(p, &one, DType::kF64);
    }
  }
}

// Chooses the checkpoint to resume from: `auto` is the newest one in the run directory that
// verifies (none: a fresh start), anything else is a checkpoint or run directory that must verify.
std::optional<CheckpointInfo> pick_resume(const std::string& resume, const std::string& run_dir,
                                          std::vector<std::string>& warnings) {
  if (resume.empty()) return std::nullopt;
  // Every rank must load a checkpoint it trusts; the ranks share the reading of the checksums.
  Communicator& world = ParallelContext::get().world();
  if (resume == "auto") return find_latest_valid_checkpoint(run_dir, &warnings, &world);
  return open_verified_checkpoint(resume, world);
}

}  // namespace

double run_training(const Config& cfg, const std::string& resume) {
  const auto& tc = cfg.train;
  ParallelContext& par = ParallelContext::get();
  const int dp_size = resolve_parallel_layout(cfg, par.world_size());
  validate_config(cfg, dp_size);
  par.setup_grid(dp_size, cfg.parallel.tensor);
  const int dp_rank = par.data_rank();
  const bool main_rank = par.is_main();
  const double start_time = wall_time_seconds();

  const int B = tc.micro_batch_size, T = tc.seq_len;
  // One dataset (data.path) or a blend (data.blend); each data-parallel rank reads its own slice
  // of every global batch. Validation reads each source's val split.
  TrainData data = open_train_data(cfg, dp_rank, dp_size);
  BatchStream& train_data = *data.train;
  const DatasetMeta& meta = data.sources.front().meta;  // the tokenizer copied into checkpoints

  std::vector<std::string> resume_warnings;
  const std::optional<CheckpointInfo> ck = pick_resume(resume, tc.run_dir, resume_warnings);
  if (ck && ck->step >= tc.steps)
    user_error("checkpoint '", ck->dir, "' is at step ", ck->step, ", not before train.steps = ",
               tc.steps, "; raise train.steps to train further");
  if (ck) {  // the data position, restored before anything is built, so a mismatch fails fast
    if (!ck->meta.contains("data") || !ck->meta["data"].contains("train"))
      user_error(path_join(ck->dir, "meta.json"), ": has no data loader position to resume from");
    train_data.restore(LoaderState::from_json(ck->meta["data"]["train"]));
  }
  // Without resuming, a run directory that already holds checkpoints belongs to another run:
  // refuse rather than mix its logs and checkpoints with this one's.
  if (!ck && file_exists(path_join(tc.run_dir, "checkpoints/latest")))
    user_error("train.run_dir '", tc.run_dir, "' already holds a run (checkpoints/latest); resume it with "
               "--resume auto, choose another train.run_dir, or remove the old run");
  par.data().barrier();  // every rank has checked before rank 0 creates anything
  if (main_rank) {
    make_dirs(tc.run_dir);
    write_text_file_atomic(path_join(tc.run_dir, "config.json"), config_to_json(cfg).dump(2) + "\n");
  }
  MetricsLogger log(tc.run_dir, main_rank, /*append=*/ck.has_value());
  for (const auto& w : resume_warnings) log.info("WARNING: corrupt or incomplete checkpoint: " + w);
  log.info("ltrain train: resolved config (saved to " + path_join(tc.run_dir, "config.json") + ")");
  log.info(config_to_text(cfg));

  auto backend = make_backend(cfg.device, par.local_rank(), cfg.deterministic);
  // The data-parallel communicator: MPI on host buffers for the CPU backend, NCCL on device
  // buffers (bootstrapped through the MPI group) for the CUDA backend; the same for the
  // tensor-parallel group, whose collectives move activations.
  const int tp_size = cfg.parallel.tensor;
  ParallelComms comms = make_parallel_comms(*backend, dp_size, tp_size, cfg.parallel.timeout_s);
  Communicator& dp = *comms.dp;
  const bool zero = cfg.parallel.zero == 1 && dp_size > 1;
  // Refused here, before anything large is allocated, when the run cannot fit (memory_plan.h).
  log.info("memory plan per rank: " + check_run_memory(cfg, dp_size, tp_size, *backend).breakdown());
  LlamaModel model(cfg.model, *backend, B, T, parse_recompute(tc.recompute), zero ? 64 * dp_size : 1,
                   comms.tp, comms.tp_host);
  model.init_weights(tc.seed);  // every rank draws the same whole tensors and keeps its part
  AdamW opt(cfg.optim, model, &dp, zero, comms.tp_host);
  int start_step = 0;
  if (ck) {
    // Weights and moments; the schedule continues from the step. Each rank
    // reads its slice from the shard files, so any data x tensor layout (with or without ZeRO)
    // reads a checkpoint written under any other.
    load_checkpoint_training_state(*ck, model, opt);  // the data position was restored above
    start_step = ck->step;
    log.info(strfmt("resumed from %s at step %d", ck->dir.c_str(), start_step));
  } else if (!tc.init_from.empty()) {
    // Continued pretraining: weights only; the optimizer, the schedule and the data start fresh.
    CheckpointInfo init = open_verified_checkpoint(tc.init_from, par.world());
    load_checkpoint_training_state(init, model, opt, /*with_moments=*/false);
    log.info(strfmt("initialized the weights from %s (step %d of its run)", init.dir.c_str(), init.step));
  }
  std::unique_ptr<GradReducer> reducer;
  if (dp_size > 1 && !zero) reducer = std::make_unique<GradReducer>(model, dp, cfg.parallel.bucket_mb);
  const int accum = cfg.grad_accum_steps(dp_size);
  log.info(strfmt("model: %.2fM parameters, %d layers, hidden %d, heads %d/%d kv, ffn %d, vocab %d | "
               "backend %s | activations %.1f MiB",
               model.num_params() / 1e6, cfg.model.num_hidden_layers, cfg.model.hidden_size,
               cfg.model.num_attention_heads, cfg.model.kv_heads(), cfg.model.ffn_dim(),
               cfg.model.vocab_size, backend->name().c_str(), model.activation_bytes() / 1048576.0));
  log.info(strfmt("parallel: %d ranks = data %d x tensor %d%s%s", par.world_size(), dp_size,
               cfg.parallel.tensor, zero ? " | ZeRO-1" : "",
               reducer ? strfmt(" | %d gradient buckets", reducer->num_buckets()).c_str() : ""));
  log.info(strfmt("batch: %lld tokens/step = %d micro-batches x %d seqs x %d tokens x %d data ranks | "
               "data: %llu train windows, %llu val windows",
               (long long)tc.global_batch_tokens, accum, B, T, dp_size,
               (unsigned long long)train_data.num_windows(), (unsigned long long)data.sources.front().val->num_windows()));
  for (const auto& line : data.describe(run_samples(cfg))) log.info(line);
  // A blend: the share of the samples drawn from each source so far (all ranks together).
  auto blend_drawn = [&]() {
    nlohmann::json j = nlohmann::json::object();
    if (!data.blend) return j;
    const std::vector<uint64_t> drawn = data.blend->drawn();
    uint64_t total = 0;
    for (auto n : drawn) total += n;
    for (size_t i = 0; i < drawn.size(); ++i) j[data.blend->name(i)] = total ? double(drawn[i]) / double(total) : 0.0;
    return j;
  };

  StepGuard guard(cfg.guard);  // src/train/guard.cpp; its history travels in checkpoints
  if (ck && ck->meta.contains("guard")) guard.restore(ck->meta["guard"]);

  auto validate = [&](int step) {
    double t0 = wall_time_seconds();
    // train.val_batches counts micro-batches of the whole job: each data-parallel rank evaluates
    // its share of them (the same windows a single process would see), and the mean of the
    // ranks' means is the global mean. A blend splits them over its sources' val splits and
    // reports the share-weighted mean, with each source's loss beside it.
    const int S = int(data.sources.size());
    const int budget = tc.val_batches == 0 ? 0 : std::max(1, tc.val_batches / S);
    const int per_rank = (budget + dp_size - 1) / dp_size;
    double vl = 0;
    nlohmann::json by_source = nlohmann::json::object();
    std::string parts;
    for (auto& src : data.sources) {
      double counted = 0;
      const double mean = evaluate(model, *src.val, B, T, per_rank, &counted);
      const double total = dp.sum(counted);
      const double l = total > 0 ? dp.sum(counted > 0 ? mean * counted : 0.0) / total : NAN;
      vl += src.share * l;
      if (S > 1) by_source[src.name] = l, parts += strfmt(" %s %.4f", src.name.c_str(), l);
    }
    log.info(strfmt("step %6d | val_loss %.4f | val_ppl %.2f%s%s | %.1fs", step, vl, std::exp(vl),
                    S > 1 ? " | by source:" : "", parts.c_str(), wall_time_seconds() - t0));
    nlohmann::json rec = {{"step", step}, {"val_loss", vl}, {"val_ppl", std::exp(vl)}};
    if (S > 1) rec["val_loss_by_source"] = by_source;
    if (S > 1 && step > 0) {
      const nlohmann::json drawn = blend_drawn();
      std::string mix;
      for (size_t i = 0; i < data.sources.size(); ++i)
        mix += strfmt(" %s %.3f (planned %.3f)", data.sources[i].name.c_str(),
                      drawn[data.sources[i].name].get<double>(), data.sources[i].share);
      log.info(strfmt("step %6d | blend drawn so far:%s", step, mix.c_str()));
      rec["blend_drawn"] = drawn;
    }
    log.record(rec);
    return vl;
  };
  auto save = [&](int step) {
    double t0 = wall_time_seconds();
    // Every rank writes its own slice of the fp32 master weights and the moments (data rank 0 of
    // each tensor group without ZeRO, every rank with it); rank 0 writes the manifest last. Any
    // data x tensor layout reads it back (docs/checkpoint-format.md).
    TrainState state;
    state.step = step;
    state.tokens = int64_t(step) * tc.global_batch_tokens;
    state.data = {{"train", train_data.state().to_json()}};
    state.layout = {{"data", dp_size}, {"tensor", tp_size}, {"zero", zero ? 1 : 0}};
    state.guard = guard.to_json();
    const std::string dir = save_checkpoint(tc.run_dir, state, cfg, model, opt, par.world(), meta.tokenizer_path);
    if (main_rank) {
      log.info(strfmt("step %6d | saved %s (%.1fs)", step, dir.c_str(), wall_time_seconds() - t0));
      for (const auto& gone : prune_checkpoints(tc.run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every))
        log.info("removed old checkpoint " + gone);
    }
    dp.barrier();
  };

  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) std::signal(sig, on_stop_signal);

  // What a rollback needs: skipped sample ranges are kept in
  // RUN_DIR/skipped_samples.jsonl and read back whenever a run starts in that directory (a
  // resume, or a rerun with the file copied in), so the same data is skipped again.
  const std::string skip_file = path_join(tc.run_dir, "skipped_samples.jsonl");
  std::vector<SkipRange> skips = read_skip_ranges(skip_file);
  if (!skips.empty()) log.info(strfmt("skipping %zu data range(s) listed in %s", skips.size(), skip_file.c_str()));
  int rollbacks = 0;
  double lr_scale = 1.0;
  LoaderState spike_window_start;  // where the data of the current run of spikes began
  bool in_spike_window = false;
  auto next_batch = [&](int32_t* in, int32_t* tg) {
    // Jump over recorded ranges: the data that made an earlier rollback necessary.
    for (bool moved = true; moved;) {
      moved = false;
      const LoaderState at = train_data.state();
      for (const auto& r : skips)
        if (at.epoch == r.from.epoch && at.cursor >= r.from.cursor && (at.epoch < r.to.epoch || at.cursor < r.to.cursor)) {
          train_data.restore(r.to);
          moved = true;
        }
    }
    train_data.next_batch(in, tg);
  };

  double last_val = ck ? NAN : validate(0);
  for (int step = start_step + 1; step <= tc.steps;) {
    const double t0 = wall_time_seconds();
    const double lr = lr_at(cfg.optim, tc.steps, step) * lr_scale;
    const LoaderState data_before = train_data.state();
    const double loss = compute_gradients(model, reducer.get(), dp, accum, B, T, next_batch);
    test_hooks_after_backward(model, step, rollbacks, par.world_rank());
    const double grad_norm = opt.reduce_and_norm();
    const StepGuard::Decision verdict = guard.check(loss, grad_norm);

    if (verdict.verdict != StepGuard::Verdict::kAccept) {
      const LoaderState data_after = train_data.state();
      log.info(strfmt("step %6d | skipped: %s | data epoch %llu windows %llu..%llu", step, verdict.reason.c_str(),
                      (unsigned long long)data_before.epoch, (unsigned long long)data_before.cursor,
                      (unsigned long long)data_after.cursor));
      log.record({{"step", step}, {"event", "skipped_step"}, {"reason", verdict.reason},
                  {"data_from", data_before.to_json()}, {"data_to", data_after.to_json()},
                  {"skipped_steps", guard.skipped_total()}});
      if (!in_spike_window) spike_window_start = data_before, in_spike_window = true;
      if (verdict.verdict == StepGuard::Verdict::kSkip) continue;  // the same step, on the next data
      // Rollback: the newest valid checkpoint, minus the data that caused this.
      if (++rollbacks > cfg.guard.max_rollbacks)
        throw RunStopped(strfmt("guard: %d rollbacks did not help (%s at step %d); stopping. Look at "
                                "%s and consider a lower optim.lr", cfg.guard.max_rollbacks,
                                verdict.reason.c_str(), step, skip_file.c_str()));
      std::vector<std::string> warnings;
      const std::optional<CheckpointInfo> back = find_latest_valid_checkpoint(tc.run_dir, &warnings, &par.world());
      for (const auto& w : warnings) log.info("WARNING: corrupt or incomplete checkpoint: " + w);
      if (!back)
        throw RunStopped(strfmt("guard: %s at step %d, and no checkpoint to roll back to in %s; stopping",
                                verdict.reason.c_str(), step, tc.run_dir.c_str()));
      SkipRange range{spike_window_start, data_after, step};
      skips.push_back(range);
      if (main_rank) append_skip_range(skip_file, range);
      load_checkpoint_training_state(*back, model, opt);
      train_data.restore(LoaderState::from_json(back->meta["data"]["train"]));
      lr_scale *= cfg.guard.rollback_lr_factor;
      guard.reset();
      in_spike_window = false;
      log.info(strfmt("step %6d | ROLLBACK %d/%d to %s (%s); skipping data epoch %llu windows %llu..%llu "
                      "(recorded in %s); lr x %g", step, rollbacks, cfg.guard.max_rollbacks, back->dir.c_str(),
                      verdict.reason.c_str(), (unsigned long long)range.from.epoch,
                      (unsigned long long)range.from.cursor, (unsigned long long)range.to.cursor,
                      skip_file.c_str(), lr_scale));
      log.record({{"step", step}, {"event", "rollback"}, {"reason", verdict.reason}, {"to_step", back->step},
                  {"skipped_data_from", range.from.to_json()}, {"skipped_data_to", range.to.to_json()},
                  {"rollbacks", rollbacks}, {"lr_scale", lr_scale}});
      step = back->step + 1;
      continue;
    }
    in_spike_window = false;
    opt.apply(step, lr, grad_norm);
    const bool log_step = step % tc.log_every == 0 || step == start_step + 1 || step == tc.steps;
    // A logged step waits for the device to finish it, so that its time is the step's; the others
    // go on queueing the next step while the optimizer update runs.
    if (log_step) backend->synchronize();
    const double dt = wall_time_seconds() - t0;
    const double tok_s = double(tc.global_batch_tokens) / dt;
    if (log_step) {
      log.info(strfmt("step %6d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s (%.0f /rank) | %.1f ms",
                      step, tc.steps, loss, lr, grad_norm, tok_s, tok_s / par.world_size(), dt * 1e3));
      nlohmann::json rec = {{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                            {"tokens_per_sec", tok_s}, {"tokens_per_sec_per_rank", tok_s / par.world_size()},
                            {"ms_per_step", dt * 1e3}, {"tokens", int64_t(step) * tc.global_batch_tokens},
                            {"skipped_steps", guard.skipped_total()}};
      if (data.blend) rec["blend_drawn"] = blend_drawn();
      log.record(rec);
    }
    if (cfg.guard.replica_check_interval > 0 && dp_size > 1 && step % cfg.guard.replica_check_interval == 0)
      check_replicas(model, dp, par.data_rank(), step, log);
    // Every rank must stop at the same step: a signal or the time limit on any rank stops all.
    const bool out_of_time = tc.max_runtime_minutes > 0 &&
                             wall_time_seconds() - start_time > tc.max_runtime_minutes * 60.0;
    // Test hook: behave as if SIGTERM arrived during step N (deterministic, unlike a real signal).
    if (const char* at = std::getenv("LTRAIN_TEST_STOP_AT_STEP"); at && std::atoi(at) == step)
      g_stop_signal = SIGTERM;
    const int stop = int(dp.max(double(g_stop_signal ? g_stop_signal : (out_of_time ? -1 : 0))));
    if ((tc.val_every > 0 && step % tc.val_every == 0) || step == tc.steps) last_val = validate(step);
    if (stop != 0 && step < tc.steps) {
      log.info(stop > 0 ? strfmt("step %6d | signal %d: saving and stopping", step, stop)
                        : strfmt("step %6d | train.max_runtime_minutes reached: saving and stopping", step));
      save(step);
      break;
    }
    if ((cfg.checkpoint.interval > 0 && step % cfg.checkpoint.interval == 0) || step == tc.steps) save(step);
    ++step;
  }
  return last_val;
}

}  // namespace ltrain
