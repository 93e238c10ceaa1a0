// ltrain bench --config FILE [key=value ...] [--warmup N] [--steps N] [--json FILE] [--profile]
//              [--peak-tflops X] [--baseline FILE]
// Real training steps on synthetic tokens, timed; docs/benchmarking.md explains every figure.
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "ltrain/bench/bench.h"
#include "ltrain/config/config.h"
#include "ltrain/core/args.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

int cmd_bench(int argc, char** argv, ParallelContext& par) {
  ArgParser args("bench");
  args.add_flag("config", "YAML or JSON config (configs/bench/ has benchmark shapes); data.path is not needed");
  args.add_flag("warmup", "untimed warm-up steps (default 3)");
  args.add_flag("steps", "timed steps (default 10)");
  args.add_flag("json", "also write the figures as JSON to this file");
  args.add_flag("profile", "time each op family on extra steps (CUDA events on the GPU), with bandwidth and copy bandwidth", true);
  args.add_flag("peak-tflops", "peak dense bf16 TFLOP/s per GPU for MFU (default: the table by device name)");
  args.add_flag("baseline", "the --json file of a one-rank bench: scaling efficiency against it");
  args.add_flag("attention", "time causal attention alone (one layer, forward and backward) at the config's shape, in TFLOP/s", true);
  args.parse(argc, argv);
  if (args.help_requested()) {
    std::printf("%s  key=value ...           config overrides, e.g. train.micro_batch_size=4 parallel.data=2\n",
                args.usage().c_str());
    return 0;
  }
  BenchOptions o;
  o.config_path = args.get("config");
  o.overrides = args.positionals();
  o.warmup = int(args.get_int("warmup", 3));
  o.steps = int(args.get_int("steps", 10));
  o.profile = args.get_bool("profile");
  o.peak_tflops = args.get_double("peak-tflops", 0);
  if (o.steps < 1) user_error("ltrain bench: --steps must be >= 1, got ", args.get("steps"));
  if (o.warmup < 0) user_error("ltrain bench: --warmup must be >= 0, got ", args.get("warmup"));
  if (args.has("peak-tflops") && !(o.peak_tflops > 0 && std::isfinite(o.peak_tflops)))
    user_error("ltrain bench: --peak-tflops must be a positive number of TFLOP/s, got ", args.get("peak-tflops"));
  const std::string json_path = args.get("json", "");
  if (args.has("json")) {
    const std::string dir = dirname_of(json_path);
    if (json_path.empty() || (!dir.empty() && !is_directory(dir)))
      user_error("ltrain bench: --json '", json_path, "': directory '", dir, "' does not exist");
  }

  Config cfg = load_config(o.config_path, o.overrides);
  if (args.get_bool("attention")) {
    if (args.has("baseline") || o.profile)
      user_error("ltrain bench --attention: --baseline and --profile are for whole training steps");
    const nlohmann::json r = run_attention_bench(cfg, o, par);
    if (par.is_main()) {
      std::fputs(format_attention_report(r).c_str(), stdout);
      if (!json_path.empty()) {
        write_text_file_atomic(json_path, r.dump(2) + "\n");
        std::printf("wrote %s\n", json_path.c_str());
      }
    }
    return 0;
  }
  // Layout and config errors before anything is printed (run_bench checks again).
  check_bench_layout(cfg, par.world_size());
  // The baseline is read (and checked) by rank 0 only, before any step, so a bad file fails fast.
  if (args.has("baseline") && par.is_main()) {
    read_bench_baseline(args.get("baseline"), o);
    const double fpt = flops_per_token(cfg.model, cfg.train.seq_len);
    if (o.baseline_flops_per_token && std::fabs(*o.baseline_flops_per_token - fpt) > 1e-9 * fpt)
      user_error("--baseline '", o.baseline_path, "' was measured on another model shape or seq_len (",
                 *o.baseline_flops_per_token, " FLOPs/token, this run ", fpt, "); compare like with like");
  }
  if (par.is_main()) {
    std::printf("ltrain bench: %s | %d warm-up + %d timed steps%s on %d rank%s ...\n", o.config_path.c_str(),
                o.warmup, o.steps, o.profile ? " + as many profiled" : "", par.world_size(),
                par.world_size() > 1 ? "s" : "");
    std::fflush(stdout);
  }

  const nlohmann::json r = run_bench(cfg, o, par);
  if (par.is_main()) {
    std::fputs(format_bench_report(r).c_str(), stdout);
    if (!json_path.empty()) {
      write_text_file_atomic(json_path, r.dump(2) + "\n");
      std::printf("wrote %s\n", json_path.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace ltrain
