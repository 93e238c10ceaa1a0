#include "ltrain/train/trainer.h"

#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdlib>
#include <optional>
#include <cstdio>
#include <vector>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/backend_factory.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/metrics/logger.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/grad_reducer.h"
#include "ltrain/parallel/nccl_communicator.h"

namespace ltrain {

void check_data_matches_model(const DatasetMeta& meta, const ModelConfig& model) {
  if (meta.vocab_size > model.vocab_size)
    user_error("data '", meta.dir, "' was tokenized with a vocabulary of ", meta.vocab_size,
               " tokens, more than model.vocab_size = ", model.vocab_size,
               "; set model.vocab_size >= ", meta.vocab_size);
}

double evaluate(LlamaModel& model, DataLoader& loader, int B, int T, int max_batches) {
  loader.reset();
  const uint64_t avail = loader.batches_per_epoch();
  const uint64_t n = max_batches > 0 ? std::min<uint64_t>(avail, uint64_t(max_batches)) : avail;
  std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
  double sum = 0;
  for (uint64_t i = 0; i < n; ++i) {
    loader.next_batch(in.data(), tg.data());
    sum += model.forward_loss(in.data(), tg.data(), B, T);
  }
  return n ? sum / double(n) : NAN;
}

ParallelComms make_parallel_comms(Backend& backend, int dp_size, int tp_size) {
  ParallelContext& par = ParallelContext::get();
  ParallelComms c;
  if (backend.name().rfind("cuda", 0) == 0) {
    const int gpu = cuda_device_for_rank(par.local_rank());
    if (dp_size > 1) c.dp_nccl = make_nccl_communicator(par.data(), gpu);
    if (tp_size > 1) c.tp_nccl = make_nccl_communicator(par.tensor(), gpu);
  }
  c.dp = c.dp_nccl ? c.dp_nccl.get() : &par.data();
  c.tp = tp_size > 1 ? (c.tp_nccl ? c.tp_nccl.get() : &par.tensor()) : nullptr;
  return c;
}

double train_step(LlamaModel& model, AdamW& opt, GradReducer* reducer, Communicator& dp, int dp_size,
                  int accum, int B, int T, int step, double lr,
                  const std::function<void(int32_t*, int32_t*)>& next_batch, StepStats* stats) {
  thread_local std::vector<int32_t> in, tg;
  in.resize(size_t(B) * T);
  tg.resize(size_t(B) * T);
  model.zero_grads();
  double loss = 0;
  for (int micro = 0; micro < accum; ++micro) {
    next_batch(in.data(), tg.data());
    if (reducer) reducer->arm(micro == accum - 1);
    // The scale divides by every token of the global batch, so summing over ranks gives the mean.
    loss += model.forward_backward(in.data(), tg.data(), B, T, 1.0 / (double(accum) * B * T * dp_size));
  }
  if (reducer) reducer->finish();
  model.reduce_replicated_grads();  // tensor parallelism: the norms' gradients over the group
  loss = dp.sum(loss / accum) / dp_size;
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

// Chooses the checkpoint to resume from: `auto` is the newest one in the run directory that
// verifies (none: a fresh start), anything else is a checkpoint or run directory that must verify.
std::optional<CheckpointInfo> pick_resume(const std::string& resume, const std::string& run_dir,
                                          std::vector<std::string>& warnings) {
  if (resume.empty()) return std::nullopt;
  if (resume == "auto") return find_latest_valid_checkpoint(run_dir, &warnings);
  CheckpointInfo info = open_checkpoint(resume);
  verify_checkpoint(info);
  return info;
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

  if (cfg.data.path.empty())
    user_error("config key 'data.path' is required: a directory written by `ltrain prepare`");
  const DatasetMeta meta = load_dataset_meta(cfg.data.path);
  check_data_matches_model(meta, cfg.model);
  const int B = tc.micro_batch_size, T = tc.seq_len;
  // Each data-parallel rank reads its own slice of every global batch.
  DataLoader train_data(meta, Split::kTrain, B, T, cfg.data.shuffle, tc.seed, dp_rank, dp_size, cfg.data.verify);
  DataLoader val_data(meta, Split::kVal, B, T, false, tc.seed, dp_rank, dp_size, cfg.data.verify);

  std::vector<std::string> resume_warnings;
  const std::optional<CheckpointInfo> ck = pick_resume(resume, tc.run_dir, resume_warnings);
  if (ck && ck->step >= tc.steps)
    user_error("checkpoint '", ck->dir, "' is at step ", ck->step, ", not before train.steps = ",
               tc.steps, "; raise train.steps to train further");
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

  auto backend = make_backend(cfg.device, par.local_rank());
  // The data-parallel communicator: MPI on host buffers for the CPU backend, NCCL on device
  // buffers (bootstrapped through the MPI group) for the CUDA backend; the same for the
  // tensor-parallel group, whose collectives move activations.
  const int tp_size = cfg.parallel.tensor;
  ParallelComms comms = make_parallel_comms(*backend, dp_size, tp_size);
  Communicator& dp = *comms.dp;
  const bool zero = cfg.parallel.zero == 1 && dp_size > 1;
  LlamaModel model(cfg.model, *backend, B, T, parse_recompute(tc.recompute), zero ? 64 * dp_size : 1,
                   comms.tp, &par.tensor());
  model.init_weights(tc.seed);  // every rank draws the same whole tensors and keeps its part
  AdamW opt(cfg.optim, model, &dp, zero, &par.tensor());
  int start_step = 0;
  if (ck) {
    // Weights, moments and the data position; the schedule continues from the step. The
    // checkpoint holds whole tensors, so any data x tensor layout (with or without ZeRO) reads it.
    load_checkpoint_training_state(*ck, model, opt);
    if (!ck->meta.contains("data") || !ck->meta["data"].contains("train"))
      user_error(path_join(ck->dir, "meta.json"), ": has no data loader position to resume from");
    train_data.restore(LoaderState::from_json(ck->meta["data"]["train"]));
    start_step = ck->step;
    log.info(strfmt("resumed from %s at step %d", ck->dir.c_str(), start_step));
  } else if (!tc.init_from.empty()) {
    // Continued pretraining: weights only; the optimizer, the schedule and the data start fresh.
    CheckpointInfo init = open_checkpoint(tc.init_from);
    verify_checkpoint(init);
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
               (unsigned long long)train_data.num_windows(), (unsigned long long)val_data.num_windows()));

  auto validate = [&](int step) {
    double t0 = wall_time_seconds();
    // train.val_batches counts micro-batches of the whole job: each data-parallel rank evaluates
    // its share of them (the same windows a single process would see), and the mean of the
    // ranks' means is the global mean.
    const int per_rank = (tc.val_batches + dp_size - 1) / dp_size;
    double vl = dp.sum(evaluate(model, val_data, B, T, per_rank)) / dp_size;
    log.info(strfmt("step %6d | val_loss %.4f | val_ppl %.2f | %.1fs", step, vl, std::exp(vl),
                 wall_time_seconds() - t0));
    log.record({{"step", step}, {"val_loss", vl}, {"val_ppl", std::exp(vl)}});
    return vl;
  };
  auto save = [&](int step) {
    double t0 = wall_time_seconds();
    // Whole fp32 tensors: gathered over ZeRO shards (export_*) and tensor-parallel parts
    // (export_full), so that the checkpoint does not depend on the layout.
    const Shape shape = model.param_buffer().shape;
    Tensor w = backend->alloc(shape, backend->master_dtype()), m = backend->alloc(shape, backend->master_dtype()),
           v = backend->alloc(shape, backend->master_dtype());
    opt.export_weights(w);
    opt.export_moments(m, v);
    const auto weights = model.export_full(w), exp_avg = model.export_full(m), exp_avg_sq = model.export_full(v);
    backend->free(w);
    if (main_rank) {
      TrainState state;
      state.step = step;
      state.tokens = int64_t(step) * tc.global_batch_tokens;
      state.data = {{"train", train_data.state().to_json()}};
      state.layout = {{"data", dp_size}, {"tensor", tp_size}, {"zero", zero ? 1 : 0}};
      std::string dir = save_checkpoint(tc.run_dir, state, cfg, weights, &exp_avg, &exp_avg_sq, meta.tokenizer_path);
      log.info(strfmt("step %6d | saved %s (%.1fs)", step, dir.c_str(), wall_time_seconds() - t0));
      for (const auto& gone : prune_checkpoints(tc.run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every))
        log.info("removed old checkpoint " + gone);
    }
    backend->free(m);
    backend->free(v);
    dp.barrier();
  };

  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) std::signal(sig, on_stop_signal);
  double last_val = ck ? NAN : validate(0);
  for (int step = start_step + 1; step <= tc.steps; ++step) {
    const double t0 = wall_time_seconds();
    const double lr = lr_at(cfg.optim, tc.steps, step);
    StepStats st;
    const double loss = train_step(model, opt, reducer.get(), dp, dp_size, accum, B, T, step, lr,
                                   [&](int32_t* in, int32_t* tg) { train_data.next_batch(in, tg); }, &st);
    const double dt = wall_time_seconds() - t0;
    const double tok_s = double(tc.global_batch_tokens) / dt;
    if (!std::isfinite(loss))
      user_error("training diverged: loss is ", loss, " at step ", step,
                 "; lower optim.lr or raise optim.warmup_steps");
    if (step % tc.log_every == 0 || step == start_step + 1 || step == tc.steps) {
      log.info(strfmt("step %6d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s (%.0f /rank) | %.1f ms",
                   step, tc.steps, loss, lr, st.grad_norm, tok_s, tok_s / par.world_size(), dt * 1e3));
      log.record({{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", st.grad_norm},
                  {"tokens_per_sec", tok_s}, {"tokens_per_sec_per_rank", tok_s / par.world_size()},
                  {"ms_per_step", dt * 1e3}, {"tokens", int64_t(step) * tc.global_batch_tokens}});
    }
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
  }
  return last_val;
}

}  // namespace ltrain
