// `ltrain bench` (include/ltrain/bench/bench.h): the benchmark loop and its figures. The step is
// the trainer's (src/train/trainer.cpp): zero the gradients, forward+backward over the
// micro-batches with the global-batch loss scale, the bucketed gradient all-reduce under data
// parallelism, the global loss sum, AdamW with clipping, and a synchronize so the step's device
// work is inside its time. Only the data differ: seeded random token ids instead of a DataLoader.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "bench/bench_util.h"
#include "ltrain/backends/factory.h"
#include "ltrain/bench/bench.h"
#include "ltrain/core/check.h"
#include "ltrain/core/hash.h"
#include "ltrain/core/io.h"
#include "ltrain/model/layout.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/grad_reducer.h"
#include "ltrain/parallel/launch.h"
#include "ltrain/train/memory_plan.h"
#include "ltrain/train/step.h"
#include "ltrain/train/trainer.h"

namespace ltrain {

using bench_util::mean;
using bench_util::median;
using bench_util::num_or_null;

namespace {

// Every rank's x, in rank order, on every rank (the communicator only sums scalars).
std::vector<double> gather_scalar(Communicator& c, double x) {
  std::vector<double> v(size_t(c.size()));
  for (int i = 0; i < c.size(); ++i) v[size_t(i)] = c.sum(c.rank() == i ? x : 0.0);
  return v;
}

}  // namespace

std::string describe_device(const Backend& backend) { return backend.device_info().name; }

int check_bench_layout(const Config& cfg, int world_size) {
  const int dp_size = resolve_parallel_layout(cfg, world_size);
  validate_config(cfg, dp_size);
  return dp_size;
}

nlohmann::json run_bench(const Config& cfg, const BenchOptions& opt, ParallelContext& par) {
  if (opt.steps < 1) user_error("ltrain bench: --steps must be >= 1, got ", opt.steps);
  if (opt.warmup < 0) user_error("ltrain bench: --warmup must be >= 0, got ", opt.warmup);
  const auto& tc = cfg.train;
  const int world = par.world_size();
  const int dp_size = check_bench_layout(cfg, world);
  const int pp_size = cfg.parallel.pipeline;
  llama_pipeline_split(cfg.model, tc.seq_len, pp_size, cfg.parallel.virtual_stages, cfg.parallel.pipeline_layers);
  par.setup_grid(dp_size, pp_size, cfg.parallel.tensor);
  check_tensor_groups_on_hosts(par, cfg.parallel.allow_cross_node_tensor);
  const int dp_rank = par.data_rank();
  const int B = tc.micro_batch_size, T = tc.seq_len;
  const int accum = cfg.grad_accum_steps(dp_size);

  // As in the trainer: the backend of this rank's GPU (or the CPU), NCCL for data parallelism on
  // CUDA, the MPI group otherwise. The profiler observes the backend's ops and records nothing
  // until --profile's extra steps enable it.
  auto raw = make_backend(cfg.device, par.local_rank(), cfg.deterministic);
  OpProfiler prof(*raw);
  const int tp_size = cfg.parallel.tensor;
  ParallelComms comms = make_parallel_comms(par, *raw, dp_size, tp_size, cfg.parallel.timeout_s);
  // As in the trainer: refused before the model is built when it cannot fit. Bench loads no
  // checkpoint, so no staging is planned.
  const MemoryPlan plan = check_run_memory(cfg, dp_size, tp_size, *raw, par.pipeline_rank());
  // --profile: the device-to-device copy bandwidth the memory-bound families are compared with,
  // measured before the model takes the memory.
  const size_t copy_bytes = size_t(raw->is_cuda() ? 256 : 32) << 20;
  const double copy_gbps = opt.profile ? measure_copy_bandwidth(*raw, copy_bytes) : NAN;
  // Every collective of the step goes through a timing wrapper: communication vs compute. The
  // pipeline measures its own waits for the neighbouring stages (Pipeline::measure_waits): its
  // messages overlap the compute, so their time inside the calls says nothing on the GPU.
  TimingCommunicator dp(*comms.dp);
  std::unique_ptr<TimingCommunicator> tp;
  if (comms.tp) tp = std::make_unique<TimingCommunicator>(*comms.tp);
  const bool zero = cfg.parallel.zero == 1 && dp_size > 1;
  StepParts parts = build_step_parts(cfg, *raw, {&dp, tp.get(), comms.tp_host, comms.pp, comms.pp_host});
  LlamaModel& model = *parts.model;
  auto comm_seconds = [&] { return dp.seconds() + (tp ? tp->seconds() : 0.0); };
  if (parts.pipeline) parts.pipeline->measure_waits(true);
  auto p2p_seconds = [&] { return parts.pipeline ? parts.pipeline->take_wait_seconds() : 0.0; };

  // Synthetic tokens: seeded uniform ids < vocab, different on each data-parallel rank; targets
  // are the next ids of the same stream. A few distinct micro-batches are cycled through, built
  // before the clock starts.
  const int pool = std::max(1, std::min(accum, 4));
  std::vector<std::vector<int32_t>> ins(static_cast<size_t>(pool)), tgs(static_cast<size_t>(pool));
  uint64_t rng = tc.seed * 0x2545F4914F6CDD1Dull + uint64_t(dp_rank) * 0x9E3779B97F4A7C15ull + 1;
  const uint64_t V = uint64_t(cfg.model.vocab_size);
  for (int p = 0; p < pool; ++p) {
    ins[size_t(p)].resize(size_t(B) * T);
    tgs[size_t(p)].resize(size_t(B) * T);
    for (int b = 0; b < B; ++b) {
      int32_t prev = int32_t(splitmix64_next(rng) % V);
      for (int t = 0; t < T; ++t) {
        const int32_t next = int32_t(splitmix64_next(rng) % V);
        ins[size_t(p)][size_t(b) * T + t] = prev;
        tgs[size_t(p)][size_t(b) * T + t] = next;
        prev = next;
      }
    }
  }

  const int total_steps = opt.warmup + opt.steps * (opt.profile ? 2 : 1);
  int step_no = 0, next_batch = 0;
  size_t peak_bytes = raw->bytes_allocated();
  // One optimizer step, exactly as `ltrain train` runs it (TrainStep, src/train/step.cpp).
  TrainStep train_step(model, *parts.opt, parts.reducer.get(), dp, accum, B, T, parts.pipeline.get());
  auto bench_step = [&]() {
    ++step_no;
    const double loss = train_step.run(step_no, lr_at(cfg.optim, total_steps, step_no), [&](int32_t* in, int32_t* tg) {
                                     const int p = next_batch++ % pool;
                                     std::copy(ins[size_t(p)].begin(), ins[size_t(p)].end(), in);
                                     std::copy(tgs[size_t(p)].begin(), tgs[size_t(p)].end(), tg);
                                   }).loss;
    raw->synchronize();
    peak_bytes = std::max(peak_bytes, raw->bytes_allocated());
    return loss;
  };

  for (int i = 0; i < opt.warmup; ++i) bench_step();
  raw->synchronize();
  par.world().barrier();  // the ranks start the timed steps together

  std::vector<double> step_ms, comm_ms, p2p_ms, losses;
  for (int i = 0; i < opt.steps; ++i) {
    const double c0 = comm_seconds();
    p2p_seconds();  // drop the waits of earlier steps
    const double t0 = wall_time_seconds();
    losses.push_back(bench_step());
    const double dt = wall_time_seconds() - t0;
    step_ms.push_back(dt * 1e3);
    comm_ms.push_back((comm_seconds() - c0) * 1e3);
    p2p_ms.push_back(p2p_seconds() * 1e3);  // bench_step synchronized the backend
  }

  if (parts.pipeline) parts.pipeline->measure_waits(false);

  // --profile: as many extra steps with every op timed by the backend's event timer.
  nlohmann::json profile = nullptr;
  if (opt.profile) {
    raw->synchronize();
    par.world().barrier();
    prof.reset();
    prof.set_enabled(true);
    std::vector<double> prof_ms;
    const double c0 = comm_seconds();
    for (int i = 0; i < opt.steps; ++i) {
      const double t0 = wall_time_seconds();
      bench_step();
      prof_ms.push_back((wall_time_seconds() - t0) * 1e3);
    }
    prof.set_enabled(false);  // reads the last marks
    const double n = opt.steps;
    const double prof_mean = mean(prof_ms);
    const double comm = (comm_seconds() - c0) * 1e3 / n;
    nlohmann::json fams = nlohmann::json::array();
    double attributed = 0;
    for (int f = 0; f < kNumOpFamilies; ++f) {
      const OpFamily fam = OpFamily(f);
      const double ms = prof.seconds(fam) * 1e3 / n;
      attributed += ms;
      const double bytes = prof.calls(fam) > 0 && prof.bytes(fam) >= 0 ? prof.bytes(fam) / n : NAN;
      const double flops = prof.flops(fam) > 0 ? prof.flops(fam) / n : NAN;
      const double gbps = ms > 0 ? bytes / (ms * 1e-3) / 1e9 : NAN;
      fams.push_back({{"name", op_family_name(fam)},
                      {"ms_per_step", ms},
                      {"percent", 100.0 * ms / prof_mean},
                      {"calls_per_step", double(prof.calls(fam)) / n},
                      {"bytes_per_step", num_or_null(bytes)},
                      {"gb_per_s", num_or_null(gbps)},
                      {"percent_of_copy_bandwidth", num_or_null(100.0 * gbps / copy_gbps)},
                      {"flops_per_step", num_or_null(flops)},
                      {"tflops", num_or_null(ms > 0 ? flops / (ms * 1e-3) / 1e12 : NAN)}});
    }
    const double other = std::max(0.0, prof_mean - attributed - comm);
    profile = {{"steps", opt.steps},
               {"rank", par.world_rank()},
               {"step_ms", prof_mean},
               {"families", fams},
               {"communication_ms_per_step", comm},
               {"communication_percent", 100.0 * comm / prof_mean},
               {"other_ms_per_step", other},
               {"other_percent", 100.0 * other / prof_mean},
               {"method", prof.method()},
               {"copy_bytes", double(copy_bytes)},
               {"copy_bandwidth_gb_per_s", num_or_null(copy_gbps)}};
  }

  // ---- figures ----
  Communicator& w = par.world();
  const double my_median = median(step_ms);
  const double my_min = *std::min_element(step_ms.begin(), step_ms.end());
  const double my_max = *std::max_element(step_ms.begin(), step_ms.end());
  const double my_mean = mean(step_ms);
  const double my_comm = mean(comm_ms);
  const std::vector<double> rank_median = gather_scalar(w, my_median);
  const std::vector<double> rank_comm = gather_scalar(w, my_comm);
  const std::vector<double> rank_mean = gather_scalar(w, my_mean);
  const double job_median = *std::max_element(rank_median.begin(), rank_median.end());
  const double job_min = -w.max(-my_min), job_max = w.max(my_max);
  const double tokens_per_step = double(tc.global_batch_tokens);
  const double tokens_per_rank = tokens_per_step / world;  // each token once, whatever the layout
  std::vector<double> rank_tok_s;
  for (double ms : rank_median) rank_tok_s.push_back(tokens_per_rank / (ms / 1e3));
  const double tok_s = tokens_per_step / (job_median / 1e3);
  const double tok_s_rank = tok_s / world;
  const double comm_mean = mean(rank_comm);
  const double step_mean = mean(rank_mean);

  const double fpt = flops_per_token(cfg.model, T), fpt_palm = flops_per_token_palm(cfg.model, T);
  const double achieved = fpt * tok_s_rank, achieved_palm = fpt_palm * tok_s_rank;
  const std::string device_name = describe_device(*raw);
  double peak = NAN;
  std::string peak_source;
  if (opt.peak_tflops > 0) {
    peak = opt.peak_tflops * 1e12;
    peak_source = "--peak-tflops";
  } else if (raw->is_cuda()) {
    std::string matched;
    if (auto p = lookup_peak_flops(device_name, &matched)) {
      peak = *p;
      peak_source = "table: " + matched;
    }
  }
  const double peak_mem = w.max(double(peak_bytes));
  // Bytes in use on the device (all processes and the context included), or -1 when unknown.
  const DeviceInfo dev = raw->device_info();
  const double dev_mem = w.max(dev.total_bytes >= 0 ? double(dev.total_bytes - dev.free_bytes) : -1.0);

  nlohmann::json r;
  r["config"] = opt.config_path;
  r["overrides"] = opt.overrides;
  r["backend"] = raw->name();
  r["device_name"] = device_name;
  r["world_size"] = world;
  r["data_parallel"] = dp_size;
  r["tensor_parallel"] = cfg.parallel.tensor;
  r["pipeline_parallel"] = pp_size;
  r["zero"] = zero ? 1 : 0;
  r["model"] = {{"params", llama_num_params(cfg.model)},
                {"matmul_params", llama_num_matmul_params(cfg.model)},
                {"layers", cfg.model.num_hidden_layers},
                {"hidden_size", cfg.model.hidden_size},
                {"heads", cfg.model.num_attention_heads},
                {"kv_heads", cfg.model.kv_heads()},
                {"head_dim", cfg.model.head_dim()},
                {"ffn_dim", cfg.model.ffn_dim()},
                {"vocab_size", cfg.model.vocab_size}};
  r["seq_len"] = T;
  r["micro_batch_size"] = B;
  r["grad_accum_steps"] = accum;
  r["recompute"] = tc.recompute;
  r["tokens_per_step"] = tc.global_batch_tokens;
  r["warmup_steps"] = opt.warmup;
  r["steps"] = opt.steps;
  r["step_ms"] = job_median;
  r["step_ms_min"] = job_min;
  r["step_ms_max"] = job_max;
  r["step_ms_mean"] = step_mean;
  r["step_ms_all"] = step_ms;  // this rank's (rank 0's in the file)
  r["tokens_per_sec"] = tok_s;
  r["tokens_per_sec_per_rank"] = tok_s_rank;
  r["per_rank_tokens_per_sec"] = rank_tok_s;
  r["per_rank_step_ms"] = rank_median;
  r["flops_per_token"] = fpt;
  r["flops_per_token_palm"] = fpt_palm;
  r["tflops_per_rank"] = achieved / 1e12;
  r["tflops_per_rank_palm"] = achieved_palm / 1e12;
  r["peak_tflops_per_rank"] = num_or_null(peak / 1e12);
  r["peak_source"] = peak_source.empty() ? nlohmann::json(nullptr) : nlohmann::json(peak_source);
  r["mfu"] = num_or_null(achieved / peak);
  r["mfu_palm"] = num_or_null(achieved_palm / peak);
  r["memory_bytes"] = peak_mem;
  // What memory_plan() predicted for this rank: resident_bytes is what the backend should hold
  // after the first step (memory_bytes), total_bytes adds the reserve the check keeps free.
  r["memory_plan"] = {{"weights_bytes", plan.weights},        {"gradients_bytes", plan.gradients},
                      {"optimizer_bytes", plan.optimizer},    {"activations_bytes", plan.activations},
                      {"workspace_bytes", plan.workspace},    {"reserve_bytes", plan.reserve},
                      {"resident_bytes", plan.resident()},    {"total_bytes", plan.total()}};
  r["deterministic"] = cfg.deterministic;
  r["device_memory_used_bytes"] = dev_mem >= 0 ? nlohmann::json(dev_mem) : nlohmann::json(nullptr);
  r["comm_ms_per_step"] = comm_mean;
  r["compute_ms_per_step"] = step_mean - comm_mean;
  r["comm_fraction"] = step_mean > 0 ? comm_mean / step_mean : 0.0;
  r["per_rank_comm_ms_per_step"] = rank_comm;
  // Pipeline: the measured bubble is the share of each rank's step it waits for its neighbours:
  // its stream's waits for messages (their transfers included) and its wait for the other stages
  // in the step's loss sum; the ideal one counts idle ticks of the schedule, one tick per forward
  // or backward: (P - 1) / (m + P - 1) under 1F1B, (P - 1) / (V m + P - 1) interleaved.
  r["pipeline"] = nullptr;
  if (parts.pipeline) {
    const std::vector<double> rank_bubble = gather_scalar(w, mean(p2p_ms) / my_mean);
    // Exchanges (each a stage's batch of messages in one tick) with an op of the stage between
    // their start and their completion, over every rank.
    const PipelineProgram& prog = parts.pipeline->program();
    const std::vector<double> overlapped = gather_scalar(w, prog.overlapped_exchanges);
    const std::vector<double> exchanges = gather_scalar(w, prog.exchanges);
    auto total = [](const std::vector<double>& v) { return int64_t(std::llround(std::accumulate(v.begin(), v.end(), 0.0))); };
    r["pipeline"] = {{"stages", pp_size},
                     {"schedule", cfg.parallel.schedule},
                     {"virtual_stages", cfg.parallel.virtual_stages},
                     {"micro_batches", accum},
                     {"ideal_bubble", parts.pipeline->ideal_bubble()},
                     {"bubble", mean(rank_bubble)},
                     {"per_rank_bubble", rank_bubble},
                     {"wait_ms_per_step", mean(p2p_ms)},
                     {"overlapped_exchanges", total(overlapped)},
                     {"exchanges", total(exchanges)}};
  }
  r["loss_first"] = num_or_null(losses.front());
  r["loss_last"] = num_or_null(losses.back());
  r["baseline"] = nullptr;
  r["scaling_efficiency"] = nullptr;
  if (opt.baseline_tokens_per_sec_per_rank) {
    r["baseline"] = {{"file", opt.baseline_path}, {"tokens_per_sec_per_rank", *opt.baseline_tokens_per_sec_per_rank}};
    r["scaling_efficiency"] = tok_s_rank / *opt.baseline_tokens_per_sec_per_rank;
  }
  r["profile"] = profile;
  return r;
}

}  // namespace ltrain
