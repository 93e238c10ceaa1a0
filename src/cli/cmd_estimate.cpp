// ltrain estimate: GPU-hours, days, energy, emissions and cost of a run, and a cluster scaling
// projection. Two inputs (docs/estimates.md):
//   --gpu-hours H
//   --tokens N --gpus G and a throughput: --tokens-per-sec-per-gpu X | --bench-json FILE |
//     --mfu F with --gpu NAME or --peak-tflops X (needs --config)
// --nodes N [--gpus-per-node G] [--interconnect NAME] projects the single-GPU throughput onto a
// cluster with the config's parallel layout (docs/scaling.md); the estimate then uses the projection.
// --search projects every layout ltrain can run there (tensor, pipeline, schedule, micro-batch,
// ZeRO-1; the config keys given as overrides stay pinned) and uses the fastest that fits in
// --gpu-memory-gib.
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>
#include <string>

#include "cli/commands.h"
#include "ltrain/model/flops.h"
#include "ltrain/model/layout.h"
#include "ltrain/config/config.h"
#include "ltrain/core/args.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/estimate/estimate.h"

namespace ltrain {

namespace {

// 1720320 -> "1,720,320" (rounded to an integer).
std::string group_digits(double x) {
  std::string s = strfmt("%.0f", std::fabs(x)), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return (x < 0 ? "-" : "") + out;
}

// 1.4e12 -> "1.40T", 5e8 -> "500.00M".
std::string human_count(double x) {
  if (x >= 1e12) return strfmt("%.2fT", x / 1e12);
  if (x >= 1e9) return strfmt("%.2fB", x / 1e9);
  if (x >= 1e6) return strfmt("%.2fM", x / 1e6);
  return group_digits(x);
}

double number_flag(const ArgParser& args, const std::string& name, double fallback, bool allow_zero) {
  const double x = args.get_double(name, fallback);
  if (!std::isfinite(x) || x < 0 || (!allow_zero && x == 0))
    user_error("ltrain estimate: --", name, " must be a ", allow_zero ? "non-negative" : "positive",
               " number, got '", args.get(name, ""), "'");
  return x;
}

int count_flag(const ArgParser& args, const std::string& name, int fallback) {
  const long long n = args.get_int(name, fallback);
  if (n < 1 || n > 10000000) user_error("ltrain estimate: --", name, " must be a positive integer, got '", args.get(name, ""), "'");
  return int(n);
}

struct Throughput {
  double tokens_per_sec_per_gpu = 0;
  std::string source;
  std::optional<double> peak_flops;  // for the MFU line, when known
};

Throughput read_bench_json(const std::string& path, const Config* cfg, std::string* note) {
  const std::string text = read_text_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    user_error("ltrain estimate: --bench-json '", path, "' is not JSON; give the file of `ltrain bench --json FILE`");
  }
  if (!j.is_object() || !j.contains("tokens_per_sec_per_rank") || !j["tokens_per_sec_per_rank"].is_number() ||
      !(j["tokens_per_sec_per_rank"].get<double>() > 0))
    user_error("ltrain estimate: --bench-json '", path,
               "' has no positive tokens_per_sec_per_rank; give the file of `ltrain bench --json FILE`");
  Throughput t;
  t.tokens_per_sec_per_gpu = j["tokens_per_sec_per_rank"].get<double>();
  t.source = "bench " + path;
  if (j.contains("peak_tflops_per_rank") && j["peak_tflops_per_rank"].is_number())
    t.peak_flops = j["peak_tflops_per_rank"].get<double>() * 1e12;
  if (j.contains("world_size") && j["world_size"].is_number() && j["world_size"].get<int>() > 1)
    *note += strfmt("note: %s was measured on %d ranks: its figure includes that run's communication\n", path.c_str(),
                    j["world_size"].get<int>());
  // A bench of another shape (e.g. a few layers of the model): same achieved FLOP/s, so the
  // throughput scales with the inverse of FLOPs/token.
  if (cfg && j.contains("flops_per_token") && j["flops_per_token"].is_number()) {
    const double bench_fpt = j["flops_per_token"].get<double>();
    const double fpt = flops_per_token(cfg->model, cfg->train.seq_len);
    if (bench_fpt > 0 && std::fabs(bench_fpt - fpt) > 1e-9 * fpt) {
      t.tokens_per_sec_per_gpu *= bench_fpt / fpt;
      *note += strfmt("note: %s measured another shape (%.3g FLOPs/token, this config %.3g): throughput scaled to "
                      "the same achieved FLOP/s\n", path.c_str(), bench_fpt, fpt);
    }
  }
  return t;
}

}  // namespace

int cmd_estimate(int argc, char** argv) {
  ArgParser args("estimate");
  args.add_flag("config", "YAML or JSON run config (model shape, train.*, parallel.*); key=value overrides follow");
  args.add_flag("tokens", "tokens to train, e.g. 2e12 or 1.4T");
  args.add_flag("gpus", "GPUs of the run (implied by --nodes x --gpus-per-node)");
  args.add_flag("tokens-per-sec-per-gpu", "measured throughput per GPU (one GPU, or the whole job's per-GPU figure)");
  args.add_flag("bench-json", "the --json file of `ltrain bench`: its tokens_per_sec_per_rank");
  args.add_flag("mfu", "throughput from a model FLOPs utilization (0-1, causal formula), with --gpu or --peak-tflops");
  args.add_flag("gpu", "GPU name for the peak table (A100, H100, H200, ...), for --mfu and the MFU line");
  args.add_flag("peak-tflops", "peak dense bf16 TFLOP/s per GPU (overrides --gpu)");
  args.add_flag("gpu-hours", "GPU-hours directly, instead of --tokens and a throughput");
  args.add_flag("gpu-power-w", "GPU power in W (default 400, the A100 SXM TDP)");
  args.add_flag("pue", "power usage effectiveness (default 1.1)");
  args.add_flag("kg-co2-per-kwh", "carbon intensity in kg CO2eq/kWh (default 0.385, US average)");
  args.add_flag("price-per-gpu-hour", "USD per GPU-hour: adds a cost line");
  args.add_flag("nodes", "project onto a cluster of this many nodes (docs/scaling.md)");
  args.add_flag("gpus-per-node", "GPUs per node (default 8)");
  args.add_flag("interconnect", "inter-node fabric: ib200, ib400, roce200, roce400, nvlink-only (one node)");
  args.add_flag("nvlink-gbs", "NVLink GB/s per GPU and direction (default 300, A100; H100/H200: 450)");
  args.add_flag("dp-overlap", "fraction of backward the gradient reduction hides behind (default 0.8)");
  args.add_flag("grad-dtype", "dtype of the reduced gradients: fp32 (ltrain, default) or bf16");
  args.add_flag("gpu-memory-gib", "GPU memory in GiB for the memory check (default 80: A100-80GB, H100; H200: 141)");
  args.add_flag("search", "project every layout ltrain can run on the cluster and use the fastest that fits; "
                          "layout keys given as overrides stay pinned", true);
  args.add_flag("json", "also write the figures as JSON to this file");
  args.parse(argc, argv);
  if (args.help_requested()) {
    std::printf("%s  key=value ...                config overrides, e.g. parallel.tensor=8 train.micro_batch_size=8\n",
                args.usage().c_str());
    return 0;
  }

  // ---- inputs, all checked before anything is printed ------------------------------------------
  EnergyInputs energy;
  energy.gpu_power_w = number_flag(args, "gpu-power-w", 400, false);
  energy.pue = number_flag(args, "pue", 1.1, false);
  if (energy.pue < 1) user_error("ltrain estimate: --pue must be >= 1 (total facility power / IT power), got ", energy.pue);
  energy.kg_co2_per_kwh = number_flag(args, "kg-co2-per-kwh", 0.385, true);
  energy.price_per_gpu_hour = number_flag(args, "price-per-gpu-hour", 0, true);
  const bool priced = args.has("price-per-gpu-hour");
  const std::string json_path = args.get("json", "");
  if (args.has("json")) {
    const std::string dir = dirname_of(json_path);
    if (json_path.empty() || (!dir.empty() && !is_directory(dir)))
      user_error("ltrain estimate: --json '", json_path, "': directory '", dir, "' does not exist");
  }
  if (!args.positionals().empty() && !args.has("config"))
    user_error("ltrain estimate: '", args.positionals()[0], "' looks like a config override, but there is no --config");

  const bool projecting = args.has("nodes");
  for (const char* f : {"gpus-per-node", "interconnect", "nvlink-gbs", "dp-overlap", "grad-dtype", "gpu-memory-gib",
                        "search"})
    if (args.has(f) && !projecting) user_error("ltrain estimate: --", f, " belongs to the scaling projection: add --nodes N");
  const int n_throughput = int(args.has("tokens-per-sec-per-gpu")) + int(args.has("bench-json")) + int(args.has("mfu"));

  nlohmann::json out;
  std::string notes;
  std::optional<double> gpus_opt;
  if (args.has("gpus")) gpus_opt = count_flag(args, "gpus", 1);

  if (args.has("gpu-hours")) {
    // ---- GPU-hours given: energy, emissions, cost (and days on --gpus) ----------------------------
    if (args.has("tokens") || n_throughput > 0 || projecting || args.has("config"))
      user_error("ltrain estimate: --gpu-hours replaces --config, --tokens, a throughput and --nodes; give one or the other");
    energy.gpu_hours = number_flag(args, "gpu-hours", 0, false);
  } else {
    if (n_throughput == 0)
      user_error("ltrain estimate: give a throughput (--tokens-per-sec-per-gpu X, --bench-json FILE, or --mfu F with "
                 "--gpu NAME) or --gpu-hours H");
    if (n_throughput > 1)
      user_error("ltrain estimate: give one throughput: --tokens-per-sec-per-gpu, --bench-json or --mfu, not several");
    if (!args.has("tokens") && !projecting)
      user_error("ltrain estimate: nothing to estimate: give --tokens N (with --gpus G) and/or --nodes N for a projection");
    if ((projecting || args.has("mfu")) && !args.has("config"))
      user_error("ltrain estimate: ", projecting ? "--nodes" : "--mfu", " needs --config FILE (the model and its parallel layout)");
  }

  std::optional<Config> cfg;
  if (args.has("config")) {
    cfg = load_config(args.get("config"), args.positionals());
    validate_config(*cfg, 1);
    const ModelConfig& m = cfg->model;
    out["config"] = args.get("config");
    out["overrides"] = args.positionals();
    out["model"] = {{"params", llama_num_params(m)},
                    {"matmul_params", llama_num_matmul_params(m)},
                    {"seq_len", cfg->train.seq_len},
                    {"flops_per_token", flops_per_token(m, cfg->train.seq_len)},
                    {"flops_per_token_palm", flops_per_token_palm(m, cfg->train.seq_len)}};
  }

  // Peak FLOP/s, for --mfu and the MFU line.
  std::optional<double> peak;
  std::string peak_source;
  if (args.has("peak-tflops")) {
    peak = number_flag(args, "peak-tflops", 0, false) * 1e12;
    peak_source = strfmt("%.0f TFLOP/s", *peak / 1e12);
  } else if (args.has("gpu")) {
    std::string matched;
    peak = lookup_peak_flops(args.get("gpu"), &matched);
    if (!peak) {
      std::string known;
      for (const auto& e : peak_table()) known += (known.empty() ? "" : ", ") + std::string(e.match);
      user_error("ltrain estimate: --gpu '", args.get("gpu"), "' is not in the peak table (", known,
                 "); give --peak-tflops X");
    }
    peak_source = strfmt("%s %.0f TFLOP/s", matched.c_str(), *peak / 1e12);
  }

  Throughput tp;
  if (!args.has("gpu-hours")) {
    if (args.has("tokens-per-sec-per-gpu")) {
      tp.tokens_per_sec_per_gpu = number_flag(args, "tokens-per-sec-per-gpu", 0, false);
      tp.source = "--tokens-per-sec-per-gpu";
    } else if (args.has("bench-json")) {
      tp = read_bench_json(args.get("bench-json"), cfg ? &*cfg : nullptr, &notes);
    } else {
      const double mfu = number_flag(args, "mfu", 0, false);
      if (mfu > 1) user_error("ltrain estimate: --mfu is a fraction in (0, 1], got ", mfu);
      if (!peak) user_error("ltrain estimate: --mfu needs the GPU's peak: --gpu NAME (e.g. A100) or --peak-tflops X");
      tp.tokens_per_sec_per_gpu = mfu * *peak / flops_per_token(cfg->model, cfg->train.seq_len);
      tp.source = strfmt("MFU %.1f%% of %s", 100 * mfu, peak_source.c_str());
    }
    if (peak) tp.peak_flops = peak;
  }

  // ---- projection --------------------------------------------------------------------------------
  std::optional<ScalingProjection> proj;
  std::string search_table;
  ClusterSpec cluster;
  ScalingOptions sopt;
  if (projecting) {
    cluster.nodes = count_flag(args, "nodes", 1);
    cluster.gpus_per_node = count_flag(args, "gpus-per-node", 8);
    if (args.has("interconnect")) cluster.interconnect = args.get("interconnect");
    else if (cluster.nodes == 1) cluster.interconnect = "nvlink-only";
    else user_error("ltrain estimate: --nodes ", cluster.nodes, " needs --interconnect (ib200, ib400, roce200, roce400)");
    lookup_interconnect(cluster.interconnect);
    cluster.nvlink_gb_per_s = number_flag(args, "nvlink-gbs", 300, false);
    sopt.single_gpu_tokens_per_sec = tp.tokens_per_sec_per_gpu;
    sopt.dp_overlap = number_flag(args, "dp-overlap", 0.8, true);
    const std::string gd = args.get("grad-dtype", "fp32");
    if (gd != "fp32" && gd != "bf16") user_error("ltrain estimate: --grad-dtype must be fp32 or bf16, got '", gd, "'");
    sopt.grad_bytes = gd == "fp32" ? 4 : 2;
    cluster.gpu_memory_gib = number_flag(args, "gpu-memory-gib", 80, false);
    if (args.has("search")) {
      // The layout keys the user gave stay as given.
      std::set<std::string> pinned;
      for (const std::string& o : args.positionals()) {
        const std::string key = o.substr(0, o.find('='));
        for (const char* k : {"parallel.tensor", "parallel.pipeline", "parallel.schedule", "parallel.virtual_stages",
                              "parallel.pipeline_layers", "parallel.zero", "train.micro_batch_size"})
          if (key == k) pinned.insert(key);
      }
      const LayoutSearch found = search_layouts(*cfg, cluster, sopt, pinned);
      search_table = strfmt("  search           %d layouts ltrain can run on %d GPUs, %zu fit in %.0f GiB; the fastest:\n",
                            found.considered, cluster.nodes * cluster.gpus_per_node, found.fitting.size(),
                            cluster.gpu_memory_gib);
      nlohmann::json top = nlohmann::json::array();
      for (size_t i = 0; i < found.fitting.size() && i < 8; ++i) {
        const LayoutCandidate& c = found.fitting[i];
        const ScalingProjection& q = c.projection;
        search_table += strfmt("    %7.1f tokens/s/GPU  %5.1f GiB  bubble %4.1f%%  %s\n", q.tokens_per_sec_per_gpu,
                               double(q.memory.total()) / double(int64_t(1) << 30), 100.0 * q.bubble,
                               c.overrides.c_str());
        top.push_back({{"overrides", c.overrides},
                       {"tokens_per_sec_per_gpu", q.tokens_per_sec_per_gpu},
                       {"memory_bytes", q.memory.total()},
                       {"bubble", q.bubble},
                       {"tensor_parallel", q.tensor},
                       {"pipeline_parallel", q.pipeline},
                       {"schedule", q.schedule},
                       {"virtual_stages", q.virtual_stages},
                       {"data_parallel", q.data},
                       {"zero", c.cfg.parallel.zero},
                       {"micro_batch_size", c.cfg.train.micro_batch_size}});
      }
      out["search"] = {{"considered", found.considered},
                       {"fitting", found.fitting.size()},
                       {"chosen", found.fitting.front().overrides},
                       {"pinned", std::vector<std::string>(pinned.begin(), pinned.end())},
                       {"top", top}};
      search_table += "  chosen           " + found.fitting.front().overrides + "\n";
      *cfg = found.fitting.front().cfg;
      proj = found.fitting.front().projection;
    } else {
      proj = project_scaling(*cfg, cluster, sopt);
    }
    const double gpus = double(proj->world);
    if (gpus_opt && *gpus_opt != gpus)
      user_error("ltrain estimate: --gpus ", *gpus_opt, " disagrees with --nodes x --gpus-per-node = ", proj->world);
    gpus_opt = gpus;
    out["projection"] = projection_to_json(*proj, cluster, sopt);
  } else {
    out["projection"] = nullptr;
  }
  if (!out.contains("search")) out["search"] = nullptr;
  const double run_tok_s = proj ? proj->tokens_per_sec_per_gpu : tp.tokens_per_sec_per_gpu;

  std::optional<double> tokens, days;
  if (!args.has("gpu-hours") && args.has("tokens")) {
    tokens = parse_token_count(args.get("tokens"), "--tokens");
    if (!gpus_opt) user_error("ltrain estimate: --tokens needs --gpus G (or --nodes N for a projection)");
    energy.gpu_hours = gpu_hours_for_tokens(*tokens, run_tok_s);
  }
  if (energy.gpu_hours > 0 && gpus_opt) days = energy.gpu_hours / *gpus_opt / 24.0;

  // ---- report ------------------------------------------------------------------------------------
  std::fputs(notes.c_str(), stdout);
  std::printf("ltrain estimate\n");
  if (cfg) {
    std::printf("  model            %s: %.2fB parameters, %.1f GFLOP/token (causal, T %d)\n", args.get("config").c_str(),
                llama_num_params(cfg->model) / 1e9, flops_per_token(cfg->model, cfg->train.seq_len) / 1e9,
                cfg->train.seq_len);
  }
  nlohmann::json thr = nullptr;
  if (tp.tokens_per_sec_per_gpu > 0) {
    std::string mfu_text;
    nlohmann::json mfu_json = nullptr;
    if (cfg && tp.peak_flops) {
      const double mfu = flops_per_token(cfg->model, cfg->train.seq_len) * tp.tokens_per_sec_per_gpu / *tp.peak_flops;
      if (!args.has("mfu")) mfu_text = strfmt(", MFU %.1f%%", 100 * mfu);
      mfu_json = mfu;
    }
    std::printf("  throughput       %.1f tokens/s/GPU%s%s (%s)\n", tp.tokens_per_sec_per_gpu, proj ? " on one GPU" : "",
                mfu_text.c_str(), tp.source.c_str());
    thr = {{"tokens_per_sec_per_gpu", run_tok_s},
           {"single_gpu_tokens_per_sec", tp.tokens_per_sec_per_gpu},
           {"source", tp.source},
           {"mfu_single_gpu", mfu_json},
           {"peak_tflops", tp.peak_flops ? nlohmann::json(*tp.peak_flops / 1e12) : nlohmann::json(nullptr)}};
  }
  out["throughput"] = thr;
  std::fputs(search_table.c_str(), stdout);
  if (proj) std::fputs(format_projection(*proj, cluster, sopt).c_str(), stdout);
  out["tokens"] = tokens ? nlohmann::json(*tokens) : nlohmann::json(nullptr);
  out["gpus"] = gpus_opt ? nlohmann::json(int64_t(*gpus_opt)) : nlohmann::json(nullptr);
  out["wall_days"] = days ? nlohmann::json(*days) : nlohmann::json(nullptr);
  out["gpu_power_w"] = energy.gpu_power_w;
  out["pue"] = energy.pue;
  out["kg_co2_per_kwh"] = energy.kg_co2_per_kwh;
  if (energy.gpu_hours > 0) {
    const EnergyEstimate e = estimate_energy(energy);
    if (tokens)
      std::printf("  tokens           %s on %s GPUs at %.1f tokens/s/GPU\n", human_count(*tokens).c_str(),
                  group_digits(*gpus_opt).c_str(), run_tok_s);
    if (days) std::printf("  wall clock       %.1f days\n", *days);
    std::printf("  GPU-hours        %s\n", group_digits(e.gpu_hours).c_str());
    std::printf("  energy           %.2f MWh (%.0f W x PUE %.2f)\n", e.energy_mwh, energy.gpu_power_w, energy.pue);
    std::printf("  emissions        %.2f tCO2eq (%.3f kg CO2eq/kWh)\n", e.tco2eq, energy.kg_co2_per_kwh);
    if (priced) std::printf("  cost             $%s (%.2f USD/GPU-hour)\n", group_digits(e.cost_usd).c_str(), energy.price_per_gpu_hour);
    out["gpu_hours"] = e.gpu_hours;
    out["energy_mwh"] = e.energy_mwh;
    out["tco2eq"] = e.tco2eq;
    out["price_per_gpu_hour"] = priced ? nlohmann::json(energy.price_per_gpu_hour) : nlohmann::json(nullptr);
    out["cost_usd"] = priced ? nlohmann::json(e.cost_usd) : nlohmann::json(nullptr);
  } else {
    for (const char* k : {"gpu_hours", "energy_mwh", "tco2eq", "price_per_gpu_hour", "cost_usd"}) out[k] = nullptr;
  }
  if (!json_path.empty()) {
    write_text_file_atomic(json_path, out.dump(2) + "\n");
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace ltrain
