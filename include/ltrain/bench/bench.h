// `ltrain bench`: real training steps (forward, backward, clipping, AdamW, and under mpirun the
// data-parallel gradient reduction) on synthetic tokens, timed, with FLOP accounting and MFU.
//
// FLOP formulas and the peak table are in ltrain/model/flops.h; the op profiler, the copy
// bandwidth and the communication timer in ltrain/bench/profiler.h. The sources follow the
// concerns: src/bench/run.cpp (the timed steps and the figures), report.cpp (the baseline file and
// the human-readable report), attention_bench.cpp (`--attention`), profiler.cpp.
// docs/benchmarking.md describes every figure and how it is measured.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/bench/profiler.h"
#include "ltrain/config/config.h"
#include "ltrain/core/backend.h"
#include "ltrain/model/flops.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

// ---- the benchmark -------------------------------------------------------------------------------
struct BenchOptions {
  std::string config_path;              // recorded in the result
  std::vector<std::string> overrides;   // recorded in the result
  int warmup = 3;
  int steps = 10;
  bool profile = false;
  double peak_tflops = 0;               // > 0 overrides the peak table (per GPU/rank, TFLOP/s)
  // tokens_per_sec_per_rank of an earlier (one-rank) bench for the scaling efficiency; only rank 0
  // uses it. baseline_path is recorded in the result.
  std::optional<double> baseline_tokens_per_sec_per_rank;
  std::optional<double> baseline_flops_per_token;
  std::string baseline_path;
};

// Reads an earlier `--json` result for --baseline: fills the baseline fields of `o`. UserError
// naming the file when it is unreadable or lacks tokens_per_sec_per_rank.
void read_bench_baseline(const std::string& path, BenchOptions& o);

// The device the backend runs on, for the report and the peak table: Backend::device_info()'s
// name (the CUDA device's name, or the CPU model with the thread count).
std::string describe_device(const Backend& backend);

// Resolves the parallel layout for `world_size` ranks and validates the config for it (what
// run_bench does first); returns the data-parallel size. UserError for layouts bench cannot run.
int check_bench_layout(const Config& cfg, int world_size);

// Runs the benchmark on the process grid `par` (every rank must call it; the layout is
// resolved and the config validated first). Returns the figures (docs/benchmarking.md lists the
// fields) on every rank; the per-rank lists and the baseline efficiency are complete on rank 0.
nlohmann::json run_bench(const Config& cfg, const BenchOptions& opt, ParallelContext& par);

// The human-readable report of a run_bench() result.
std::string format_bench_report(const nlohmann::json& r);

// `ltrain bench --attention`: causal attention alone, one layer at the config's shape (B = the
// micro-batch, T = seq_len, the model's heads, KV heads and head dim; tensor parallelism divides
// the heads), forward and backward timed separately with the backend's event timer over `steps`
// calls after `warmup`, on seeded random inputs. FLOPs as FlashAttention-2 counts them: forward
// 4 B H HD T(T+1)/2, backward 2.5 x that. Fields: device, shape, forward_ms, backward_ms (medians),
// forward_tflops, backward_tflops, total_tflops.
nlohmann::json run_attention_bench(const Config& cfg, const BenchOptions& opt, ParallelContext& par);
std::string format_attention_report(const nlohmann::json& r);

}  // namespace ltrain
