#include "ltrain/train/trainer.h"

#include <cmath>
#include <cstdarg>
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

namespace {

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

}  // namespace

double run_training(const Config& cfg) {
  const auto& tc = cfg.train;
  ParallelContext& par = ParallelContext::get();
  const int dp_size = resolve_parallel_layout(cfg, par.world_size());
  validate_config(cfg, dp_size);
  par.setup_grid(dp_size, cfg.parallel.tensor);
  const int dp_rank = par.data_rank();
  const bool main_rank = par.is_main();

  if (cfg.data.path.empty())
    user_error("config key 'data.path' is required: a directory written by `ltrain prepare`");
  const DatasetMeta meta = load_dataset_meta(cfg.data.path);
  check_data_matches_model(meta, cfg.model);
  const int B = tc.micro_batch_size, T = tc.seq_len;
  // Each data-parallel rank reads its own slice of every global batch.
  DataLoader train_data(meta, Split::kTrain, B, T, cfg.data.shuffle, tc.seed, dp_rank, dp_size, cfg.data.verify);
  DataLoader val_data(meta, Split::kVal, B, T, false, tc.seed, dp_rank, dp_size, cfg.data.verify);

  // A run directory that already holds checkpoints belongs to another run: refuse rather than mix
  // its logs and checkpoints with this one's.
  if (file_exists(path_join(tc.run_dir, "checkpoints/latest")))
    user_error("train.run_dir '", tc.run_dir, "' already holds a run (checkpoints/latest); choose another "
               "train.run_dir or remove the old run");
  par.data().barrier();  // every rank has checked before rank 0 creates anything
  if (main_rank) {
    make_dirs(tc.run_dir);
    write_text_file_atomic(path_join(tc.run_dir, "config.json"), config_to_json(cfg).dump(2) + "\n");
  }
  MetricsLogger log(tc.run_dir, main_rank);
  log.info("ltrain train: resolved config (saved to " + path_join(tc.run_dir, "config.json") + ")");
  log.info(config_to_text(cfg));

  auto backend = make_backend(cfg.device, par.local_rank());
  // The data-parallel communicator: MPI on host buffers for the CPU backend, NCCL on device
  // buffers (bootstrapped through the MPI group) for the CUDA backend.
  std::unique_ptr<Communicator> nccl;
  if (backend->name().rfind("cuda", 0) == 0 && dp_size > 1)
    nccl = make_nccl_communicator(par.data(), cuda_device_for_rank(par.local_rank()));
  Communicator& dp = nccl ? *nccl : par.data();
  const bool zero = cfg.parallel.zero == 1 && dp_size > 1;
  LlamaModel model(cfg.model, *backend, B, T, parse_recompute(tc.recompute), zero ? 64 * dp_size : 1);
  model.init_weights(tc.seed);  // the same seed on every rank: identical initial weights
  AdamW opt(cfg.optim, model, &dp, zero);
  std::unique_ptr<GradReducer> reducer;
  if (dp_size > 1 && !zero) reducer = std::make_unique<GradReducer>(model, dp, cfg.parallel.bucket_mb);
  const int accum = cfg.grad_accum_steps(dp_size);
  log.info(fmt("model: %.2fM parameters, %d layers, hidden %d, heads %d/%d kv, ffn %d, vocab %d | "
               "backend %s | activations %.1f MiB",
               model.num_params() / 1e6, cfg.model.num_hidden_layers, cfg.model.hidden_size,
               cfg.model.num_attention_heads, cfg.model.kv_heads(), cfg.model.ffn_dim(),
               cfg.model.vocab_size, backend->name().c_str(), model.activation_bytes() / 1048576.0));
  log.info(fmt("parallel: %d ranks = data %d x tensor %d%s%s", par.world_size(), dp_size,
               cfg.parallel.tensor, zero ? " | ZeRO-1" : "",
               reducer ? fmt(" | %d gradient buckets", reducer->num_buckets()).c_str() : ""));
  log.info(fmt("batch: %lld tokens/step = %d micro-batches x %d seqs x %d tokens x %d data ranks | "
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
    log.info(fmt("step %6d | val_loss %.4f | val_ppl %.2f | %.1fs", step, vl, std::exp(vl),
                 wall_time_seconds() - t0));
    log.record({{"step", step}, {"val_loss", vl}, {"val_ppl", std::exp(vl)}});
    return vl;
  };
  auto save = [&](int step) {
    double t0 = wall_time_seconds();
    Tensor m = backend->alloc(model.param_buffer().shape, backend->master_dtype());
    Tensor v = backend->alloc(model.param_buffer().shape, backend->master_dtype());
    opt.export_moments(m, v);  // collective under ZeRO
    if (main_rank) {
      std::string dir = save_checkpoint(tc.run_dir, step, cfg, model, &m, &v,
                                        {{"train", train_data.state().to_json()}}, meta.tokenizer_path);
      log.info(fmt("step %6d | saved %s (%.1fs)", step, dir.c_str(), wall_time_seconds() - t0));
    }
    backend->free(m);
    backend->free(v);
    dp.barrier();
  };

  std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
  double last_val = validate(0);
  for (int step = 1; step <= tc.steps; ++step) {
    const double t0 = wall_time_seconds();
    model.zero_grads();
    double loss = 0;
    for (int micro = 0; micro < accum; ++micro) {
      train_data.next_batch(in.data(), tg.data());
      if (reducer) reducer->arm(micro == accum - 1);
      // The scale divides by every token of the global batch, so summing over ranks gives the mean.
      loss += model.forward_backward(in.data(), tg.data(), B, T, 1.0 / (double(accum) * B * T * dp_size));
    }
    if (reducer) reducer->finish();
    loss = dp.sum(loss / accum) / dp_size;
    const double lr = lr_at(cfg.optim, tc.steps, step);
    const StepStats st = opt.step(step, lr);
    backend->synchronize();
    const double dt = wall_time_seconds() - t0;
    const double tok_s = double(tc.global_batch_tokens) / dt;
    if (!std::isfinite(loss))
      user_error("training diverged: loss is ", loss, " at step ", step,
                 "; lower optim.lr or raise optim.warmup_steps");
    if (step % tc.log_every == 0 || step == 1 || step == tc.steps) {
      log.info(fmt("step %6d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s (%.0f /rank) | %.1f ms",
                   step, tc.steps, loss, lr, st.grad_norm, tok_s, tok_s / par.world_size(), dt * 1e3));
      log.record({{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", st.grad_norm},
                  {"tokens_per_sec", tok_s}, {"tokens_per_sec_per_rank", tok_s / par.world_size()},
                  {"ms_per_step", dt * 1e3}, {"tokens", int64_t(step) * tc.global_batch_tokens}});
    }
    if ((tc.val_every > 0 && step % tc.val_every == 0) || step == tc.steps) last_val = validate(step);
    if ((tc.save_every > 0 && step % tc.save_every == 0) || step == tc.steps) save(step);
  }
  return last_val;
}

}  // namespace ltrain
