#include "ltrain/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <vector>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/backends/factory.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/cuda/cuda_backend.h"
#include "ltrain/metrics/logger.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/grad_reducer.h"
#include "ltrain/parallel/launch.h"
#include "ltrain/train/fault_injection.h"
#include "ltrain/train/guard.h"
#include "ltrain/train/memory_plan.h"
#include "ltrain/train/rollback.h"
#include "ltrain/train/stop.h"
#include "ltrain/train/train_data.h"

namespace ltrain {

void check_data_matches_model(const DatasetMeta& meta, const ModelConfig& model) {
  if (meta.vocab_size > model.vocab_size)
    user_error("data '", meta.dir, "' was tokenized with a vocabulary of ", meta.vocab_size,
               " tokens, more than model.vocab_size = ", model.vocab_size,
               "; set model.vocab_size >= ", meta.vocab_size);
}

EvalSums evaluate(LlamaModel& model, DataLoader& loader, uint64_t max_windows) {
  const int B = loader.batch_size(), T = loader.seq_len();
  const uint64_t n = max_windows > 0 ? std::min(loader.num_windows(), max_windows) : loader.num_windows();
  const uint64_t global = uint64_t(loader.world()) * B;
  EvalSums r;
  r.batches = (n + global - 1) / global;
  r.short_split = n < global;
  std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
  for (uint64_t first = 0; first < n; first += global) {
    const uint64_t lo = std::min(n, first + uint64_t(loader.rank()) * B), rows = std::min(n, lo + B) - lo;
    if (rows == 0) break;  // this rank's rows lie past the end, in this batch and every later one
    for (uint64_t b = 0; b < rows; ++b) loader.read_window(0, lo + b, &in[b * T], &tg[b * T]);
    // Padding rows: any token in, no target (the loss counts targets >= 0 only).
    std::fill(in.begin() + ptrdiff_t(rows * T), in.end(), 0);
    std::fill(tg.begin() + ptrdiff_t(rows * T), tg.end(), -1);
    double c = 0;
    for (int32_t t : tg) c += t >= 0;
    r.loss_sum += model.forward_loss(in.data(), tg.data(), B, T) * c;
    r.counted += c;
    r.windows += rows;
  }
  return r;
}

std::string describe_eval(uint64_t windows, uint64_t batches, bool short_split, int world, int B) {
  std::string s = strfmt("%llu window%s in %llu batch%s", (unsigned long long)windows, windows == 1 ? "" : "s",
                         (unsigned long long)batches, batches == 1 ? "" : "es");
  if (short_split)
    s += world > 1 ? strfmt(": fewer than one full batch per rank (%d ranks x %d windows)", world, B)
                   : strfmt(": fewer than one full batch (%d windows)", B);
  return s;
}

namespace {

// Chooses the checkpoint to resume from: `auto` is the newest one in the run directory that
// verifies (none: a fresh start), anything else is a checkpoint or run directory that must verify.
// Every rank of `world` must load a checkpoint it trusts; the ranks share the reading of the
// checksums.
std::optional<CheckpointInfo> pick_resume(const std::string& resume, const std::string& run_dir,
                                          std::vector<std::string>& warnings, Communicator& world) {
  if (resume.empty()) return std::nullopt;
  if (resume == "auto") return find_latest_valid_checkpoint(run_dir, &warnings, &world);
  return open_verified_checkpoint(resume, world);
}

// One run of `ltrain train`: what it builds (the constructor), and its loop (run).
class Training {
 public:
  Training(const Config& cfg, ParallelContext& par, const std::string& resume);
  double run();

 private:
  void open_run(const std::string& resume);
  void build();
  void load_start();
  void describe();
  void log_step(int step, double lr, const StepResult& r, double t0);
  void check_replicas(int step);
  double validate(int step);
  void save(int step);
  nlohmann::json blend_drawn() const;
  Communicator& dp() { return *comms_.dp; }

  const Config& cfg_;
  const TrainConfig& tc_;
  ParallelContext& par_;
  const double start_time_;
  int dp_size_ = 1, tp_size_ = 1, pp_size_ = 1, B_, T_, accum_ = 1;
  PipelineSplit split_;  // the layers' cut into pipeline chunks (one chunk without pipeline)
  bool main_rank_ = false, zero_ = false;
  TrainData data_;
  std::optional<CheckpointInfo> ck_;
  std::vector<std::string> resume_warnings_;
  std::unique_ptr<MetricsLogger> log_;
  std::unique_ptr<Backend> backend_;
  ParallelComms comms_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<GradReducer> reducer_;
  std::unique_ptr<Pipeline> pipeline_;
  int start_step_ = 0;
  StepGuard guard_;  // src/train/guard.cpp; its history travels in checkpoints
  FaultInjection faults_;
};

Training::Training(const Config& cfg, ParallelContext& par, const std::string& resume)
    : cfg_(cfg), tc_(cfg.train), par_(par), start_time_(wall_time_seconds()), B_(cfg.train.micro_batch_size),
      T_(cfg.train.seq_len), guard_(cfg.guard), faults_(FaultInjection::from_env(par.world_rank())) {
  dp_size_ = resolve_parallel_layout(cfg, par.world_size());
  validate_config(cfg, dp_size_);
  par.setup_grid(dp_size_, cfg.parallel.pipeline, cfg.parallel.tensor);
  check_tensor_groups_on_hosts(par, cfg.parallel.allow_cross_node_tensor);
  tp_size_ = cfg.parallel.tensor;
  pp_size_ = cfg.parallel.pipeline;
  accum_ = cfg.grad_accum_steps(dp_size_);
  // Refused here, before anything is written, when the layers cannot be cut so.
  split_ = llama_pipeline_split(cfg.model, T_, pp_size_, cfg.parallel.virtual_stages, cfg.parallel.pipeline_layers);
  main_rank_ = par.is_main();
  zero_ = cfg.parallel.zero == 1 && dp_size_ > 1;
  // One dataset (data.path) or a blend (data.blend); each data-parallel rank reads its own slice
  // of every global batch. Validation reads each source's val split.
  data_ = open_train_data(cfg, par.data_rank(), dp_size_);
  open_run(resume);
  build();
  load_start();
  describe();
  if (ck_ && ck_->meta.contains("guard")) guard_.restore(ck_->meta["guard"]);
}

// The checkpoint to resume from, the run directory and the log.
void Training::open_run(const std::string& resume) {
  ck_ = pick_resume(resume, tc_.run_dir, resume_warnings_, par_.world());
  if (ck_ && ck_->step >= tc_.steps)
    user_error("checkpoint '", ck_->dir, "' is at step ", ck_->step, ", not before train.steps = ",
               tc_.steps, "; raise train.steps to train further");
  if (ck_) {  // the data position, restored before anything is built, so a mismatch fails fast
    if (!ck_->meta.contains("data") || !ck_->meta["data"].contains("train"))
      user_error(path_join(ck_->dir, "meta.json"), ": has no data loader position to resume from");
    data_.train->restore(LoaderState::from_json(ck_->meta["data"]["train"]));
  }
  // Without resuming, a run directory that already holds checkpoints belongs to another run:
  // refuse rather than mix its logs and checkpoints with this one's.
  if (!ck_ && file_exists(path_join(tc_.run_dir, "checkpoints/latest")))
    user_error("train.run_dir '", tc_.run_dir, "' already holds a run (checkpoints/latest); resume it with "
               "--resume auto, choose another train.run_dir, or remove the old run");
  par_.data().barrier();  // every rank has checked before rank 0 creates anything
  std::vector<std::string> removed, kept;  // what saves that a kill interrupted left behind
  if (main_rank_) {
    make_dirs(tc_.run_dir);
    write_text_file_atomic(path_join(tc_.run_dir, "config.json"), config_to_json(cfg_).dump(2) + "\n");
    removed = remove_partial_saves(tc_.run_dir, &kept);
  }
  log_ = std::make_unique<MetricsLogger>(tc_.run_dir, main_rank_, /*append=*/ck_.has_value());
  for (const auto& w : resume_warnings_) log_->info("WARNING: corrupt or incomplete checkpoint: " + w);
  for (const auto& dir : removed) log_->info("removed " + dir + ", the partial checkpoint of an interrupted save");
  for (const auto& dir : kept)
    log_->info("WARNING: left " + dir + " in place: an interrupted save wrote its meta.json, so it may be complete "
               "(check it with `ltrain ckpt verify`, then rename it to drop .tmp, or remove it)");
  log_->info("ltrain train: resolved config (saved to " + path_join(tc_.run_dir, "config.json") + ")");
  log_->info(config_to_text(cfg_));
}

// The backend, the communicators, the model and the optimizer.
void Training::build() {
  backend_ = make_backend(cfg_.device, par_.local_rank(), cfg_.deterministic);
  // The data-parallel communicator: MPI on host buffers for the CPU backend, NCCL on device
  // buffers (bootstrapped through the MPI group) for the CUDA backend; the same for the
  // tensor-parallel group, whose collectives move activations.
  comms_ = make_parallel_comms(par_, *backend_, dp_size_, tp_size_, cfg_.parallel.timeout_s);
  // Refused here, before anything large is allocated, when the run cannot fit (memory_plan.h).
  log_->info("memory plan per rank: " + check_run_memory(cfg_, dp_size_, tp_size_, *backend_, par_.pipeline_rank()).breakdown());
  StepParts parts = build_step_parts(cfg_, *backend_, {comms_.dp, comms_.tp, comms_.tp_host, comms_.pp, comms_.pp_host});
  model_ = std::move(parts.model);
  opt_ = std::move(parts.opt);
  reducer_ = std::move(parts.reducer);
  pipeline_ = std::move(parts.pipeline);
}

// Where the weights come from: a checkpoint to resume, one to start from, or the init above.
void Training::load_start() {
  if (ck_) {
    // Weights and moments; the schedule continues from the step. Each rank
    // reads its slice from the shard files, so any data x tensor layout (with or without ZeRO)
    // reads a checkpoint written under any other.
    load_checkpoint_training_state(*ck_, *opt_);  // the data position was restored above
    start_step_ = ck_->step;
    log_->info(strfmt("resumed from %s at step %d", ck_->dir.c_str(), start_step_));
  } else if (!tc_.init_from.empty()) {
    // Continued pretraining: weights only; the optimizer, the schedule and the data start fresh.
    CheckpointInfo init = open_verified_checkpoint(tc_.init_from, par_.world());
    load_checkpoint_training_state(init, *opt_, /*with_moments=*/false);
    log_->info(strfmt("initialized the weights from %s (step %d of its run)", init.dir.c_str(), init.step));
  }
}

void Training::describe() {
  const ModelConfig& m = cfg_.model;
  log_->info(strfmt("model: %.2fM parameters, %d layers, hidden %d, heads %d/%d kv, ffn %d, vocab %d | "
                    "backend %s | activations %.1f MiB",
                    model_->num_params() / 1e6, m.num_hidden_layers, m.hidden_size, m.num_attention_heads,
                    m.kv_heads(), m.ffn_dim(), m.vocab_size, backend_->name().c_str(),
                    model_->activation_bytes() / 1048576.0));
  log_->info(strfmt("parallel: %d ranks = data %d x pipeline %d x tensor %d%s%s", par_.world_size(), dp_size_,
                    pp_size_, cfg_.parallel.tensor, zero_ ? " | ZeRO-1" : "",
                    reducer_ ? strfmt(" | %d gradient buckets", reducer_->num_buckets()).c_str() : ""));
  if (pp_size_ > 1) {
    std::string cut;
    for (int g = 0; g < split_.chunks(); ++g)
      cut += strfmt("%s%d", g ? "," : "", split_.layers(g));
    log_->info(strfmt("pipeline: %s schedule, %d stages x %d chunks, layers per chunk [%s] | ideal bubble %.1f%% "
                      "(%d micro-batches)",
                      cfg_.parallel.schedule.c_str(), pp_size_, split_.virtual_stages, cut.c_str(),
                      100.0 * pipeline_->ideal_bubble(), accum_));
  }
  const int device = backend_->is_cuda() ? cuda_device_for_rank(par_.local_rank()) : -1;
  for (const auto& line : rank_map_lines(par_, device)) log_->info(line);
  log_->info(strfmt("batch: %lld tokens/step = %d micro-batches x %d seqs x %d tokens x %d data ranks | "
                    "data: %llu train windows, %llu val windows",
                    (long long)tc_.global_batch_tokens, accum_, B_, T_, dp_size_,
                    (unsigned long long)data_.train->num_windows(),
                    (unsigned long long)data_.sources.front().val->num_windows()));
  for (const auto& line : data_.describe(run_samples(cfg_))) log_->info(line);
}

double Training::run() {
  StopRequests stop(tc_.max_runtime_minutes, start_time_);
  Rollbacks rollbacks(cfg_, *data_.train, *log_, main_rank_);
  TrainStep train_step(*model_, *opt_, reducer_.get(), dp(), accum_, B_, T_, pipeline_.get());
  train_step.set_after_backward(
      [&](int step) { faults_.after_backward(model_->parameters(), step, rollbacks.rollbacks()); });
  auto next_batch = [&](int32_t* in, int32_t* tg) { rollbacks.next_batch(in, tg); };
  auto load = [&](const CheckpointInfo& back) { load_checkpoint_training_state(back, *opt_); };

  double last_val = ck_ ? NAN : validate(0);
  for (int step = start_step_ + 1; step <= tc_.steps;) {
    const double t0 = wall_time_seconds();
    const double lr = lr_at(cfg_.optim, tc_.steps, step) * rollbacks.lr_scale();
    rollbacks.before_step();
    StepGuard::Decision verdict;
    const StepResult r = train_step.run(step, lr, next_batch, [&](double loss, double grad_norm) {
      verdict = guard_.check(loss, grad_norm);
      return verdict.verdict == StepGuard::Verdict::kAccept;
    });
    if (!r.applied) {  // skipped: the same step on the next data; or rolled back to a checkpoint
      step = rollbacks.refused(step, verdict, guard_, par_.world(), load);
      continue;
    }
    rollbacks.accepted();
    log_step(step, lr, r, t0);
    if (cfg_.guard.replica_check_interval > 0 && dp_size_ > 1 && step % cfg_.guard.replica_check_interval == 0)
      check_replicas(step);
    if (faults_.stop_at(step)) stop.request_signal();
    const int stop_now = stop.agree(dp());
    if ((tc_.val_every > 0 && step % tc_.val_every == 0) || step == tc_.steps) last_val = validate(step);
    if (stop_now != 0 && step < tc_.steps) {
      log_->info(StopRequests::describe(stop_now, step));
      save(step);
      break;
    }
    if ((cfg_.checkpoint.interval > 0 && step % cfg_.checkpoint.interval == 0) || step == tc_.steps) save(step);
    ++step;
  }
  return last_val;
}

void Training::log_step(int step, double lr, const StepResult& r, double t0) {
  if (!(step % tc_.log_every == 0 || step == start_step_ + 1 || step == tc_.steps)) return;
  // A logged step waits for the device to finish it, so that its time is the step's; the others
  // go on queueing the next step while the optimizer update runs.
  backend_->synchronize();
  const double dt = wall_time_seconds() - t0;
  const double tok_s = double(tc_.global_batch_tokens) / dt;
  log_->info(strfmt("step %6d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s (%.0f /rank) | %.1f ms",
                    step, tc_.steps, r.loss, lr, r.grad_norm, tok_s, tok_s / par_.world_size(), dt * 1e3));
  nlohmann::json rec = {{"step", step}, {"loss", r.loss}, {"lr", lr}, {"grad_norm", r.grad_norm},
                        {"tokens_per_sec", tok_s}, {"tokens_per_sec_per_rank", tok_s / par_.world_size()},
                        {"ms_per_step", dt * 1e3}, {"tokens", int64_t(step) * tc_.global_batch_tokens},
                        {"skipped_steps", guard_.skipped_total()}};
  if (data_.blend) rec["blend_drawn"] = blend_drawn();
  log_->record(rec);
}

// Data-parallel replicas must hold the same weights. Each compares a hash (the sum of squares of
// its parameter buffer, reduced in a fixed order) with rank 0's.
void Training::check_replicas(int step) {
  const int dp_rank = par_.data_rank();
  const double mine = backend_->sum_squares({model_->param_buffer()});
  const double ref = dp().sum(dp_rank == 0 ? mine : 0.0);
  const double bad = dp().sum(mine != ref ? 1.0 : 0.0);
  // The lowest disagreeing rank, known to all.
  const double first_bad = -dp().max(mine != ref ? -double(dp_rank) : -1e9);
  log_->record({{"step", step}, {"event", "replica_check"}, {"ok", bad == 0}});
  if (bad > 0)
    throw RunStopped(strfmt("replica check at step %d: %d data-parallel rank(s) hold different weights than rank 0 "
                            "(first: data rank %d, hash %.17g vs %.17g); stopping",
                            step, int(bad), int(first_bad), dp_rank == int(first_bad) ? mine : ref, ref));
}

// A blend: the share of the samples drawn from each source so far (all ranks together).
nlohmann::json Training::blend_drawn() const {
  nlohmann::json j = nlohmann::json::object();
  if (!data_.blend) return j;
  const std::vector<uint64_t> drawn = data_.blend->drawn();
  uint64_t total = 0;
  for (auto n : drawn) total += n;
  for (size_t i = 0; i < drawn.size(); ++i) j[data_.blend->name(i)] = total ? double(drawn[i]) / double(total) : 0.0;
  return j;
}

double Training::validate(int step) {
  double t0 = wall_time_seconds();
  // train.val_batches counts micro-batches of the whole job: the first val_batches x B windows of
  // the val split (of each source's, a blend sharing them out), shared by the data-parallel ranks
  // in global batches as training data is. The loss is the mean over the counted targets of those
  // windows, the same as one process's. A blend reports the share-weighted mean, with each
  // source's loss beside it.
  const int S = int(data_.sources.size());
  const uint64_t budget = tc_.val_batches == 0 ? 0 : uint64_t(std::max(1, tc_.val_batches / S)) * uint64_t(B_);
  double vl = 0;
  uint64_t windows = 0, batches = 0;
  bool short_split = false;
  nlohmann::json by_source = nlohmann::json::object();
  std::string parts;
  for (auto& src : data_.sources) {
    const EvalSums mine = evaluate(*model_, *src.val, budget);
    // Every rank takes part, with or without windows of its own.
    const double loss_sum = dp().sum(mine.loss_sum), counted = dp().sum(mine.counted);
    const double l = counted > 0 ? loss_sum / counted : NAN;
    windows += uint64_t(dp().sum(double(mine.windows)));
    batches += mine.batches;
    short_split = short_split || mine.short_split;
    vl += src.share * l;
    if (S > 1) by_source[src.name] = l, parts += strfmt(" %s %.4f", src.name.c_str(), l);
  }
  const std::string counts = describe_eval(windows, batches, short_split, dp_size_, B_);
  log_->info(strfmt("step %6d | val_loss %.4f | val_ppl %.2f%s%s | %s | %.1fs", step, vl, std::exp(vl),
                    S > 1 ? " | by source:" : "", parts.c_str(), counts.c_str(), wall_time_seconds() - t0));
  nlohmann::json rec = {{"step", step}, {"val_loss", vl}, {"val_ppl", std::exp(vl)},
                        {"val_windows", windows}, {"val_batches", batches}};
  if (S > 1) rec["val_loss_by_source"] = by_source;
  if (S > 1 && step > 0) {
    const nlohmann::json drawn = blend_drawn();
    std::string mix;
    for (size_t i = 0; i < data_.sources.size(); ++i)
      mix += strfmt(" %s %.3f (planned %.3f)", data_.sources[i].name.c_str(),
                    drawn[data_.sources[i].name].get<double>(), data_.sources[i].share);
    log_->info(strfmt("step %6d | blend drawn so far:%s", step, mix.c_str()));
    rec["blend_drawn"] = drawn;
  }
  log_->record(rec);
  return vl;
}

void Training::save(int step) {
  double t0 = wall_time_seconds();
  // Every rank writes its own slice of the fp32 master weights and the moments (data rank 0 of
  // each tensor group without ZeRO, every rank with it); rank 0 writes the manifest last. Any
  // data x tensor layout reads it back (docs/checkpoint-format.md).
  TrainState state;
  state.step = step;
  state.tokens = int64_t(step) * tc_.global_batch_tokens;
  state.data = {{"train", data_.train->state().to_json()}};
  state.layout = {{"data", dp_size_}, {"tensor", tp_size_}, {"zero", zero_ ? 1 : 0}};
  if (pp_size_ > 1) state.layout["pipeline"] = pp_size_;
  state.guard = guard_.to_json();
  const std::string& tokenizer = data_.sources.front().meta.tokenizer_path;  // copied into checkpoints
  const std::string dir = save_checkpoint(tc_.run_dir, state, cfg_, *opt_, par_.world(), tokenizer,
                                          faults_.save_hooks());
  if (main_rank_) {
    log_->info(strfmt("step %6d | saved %s (%.1fs)", step, dir.c_str(), wall_time_seconds() - t0));
    for (const auto& gone : prune_checkpoints(tc_.run_dir, cfg_.checkpoint.keep_last, cfg_.checkpoint.keep_every))
      log_->info("removed old checkpoint " + gone);
  }
  dp().barrier();
}

}  // namespace

double run_training(const Config& cfg, ParallelContext& par, const std::string& resume) {
  Training training(cfg, par, resume);
  return training.run();
}

}  // namespace ltrain
