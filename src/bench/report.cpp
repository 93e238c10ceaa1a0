// bench's report (include/ltrain/bench/bench.h): the --baseline file of an earlier run and the
// human-readable report of a run_bench() result.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "ltrain/bench/bench.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

void read_bench_baseline(const std::string& path, BenchOptions& o) {
  const std::string text = read_text_file(path);  // UserError naming the file when unreadable
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    user_error("--baseline '", path, "' is not JSON written by `ltrain bench --json`: ", e.what());
  }
  if (!j.is_object() || !j.contains("tokens_per_sec_per_rank") || !j["tokens_per_sec_per_rank"].is_number() ||
      !(j["tokens_per_sec_per_rank"].get<double>() > 0))
    user_error("--baseline '", path, "' has no positive tokens_per_sec_per_rank; give the --json file of an "
               "earlier `ltrain bench` run");
  o.baseline_tokens_per_sec_per_rank = j["tokens_per_sec_per_rank"].get<double>();
  if (j.contains("flops_per_token") && j["flops_per_token"].is_number())
    o.baseline_flops_per_token = j["flops_per_token"].get<double>();
  o.baseline_path = path;
}

namespace {

std::string thousands(double x) {
  if (!std::isfinite(x)) return "n/a";
  long long v = llround(x);
  std::string s = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return (v < 0 ? "-" : "") + out;
}

std::string human(double x, const char* unit) {
  const char* pre[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (std::fabs(x) >= 1000 && i < 5) x /= 1000, ++i;
  return strfmt("%.3g %s%s", x, pre[i], unit);
}

std::string mib(double bytes) {
  return bytes >= 1024.0 * 1048576 ? strfmt("%.2f GiB", bytes / (1024.0 * 1048576)) : strfmt("%.1f MiB", bytes / 1048576);
}

double num(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

}  // namespace

std::string format_bench_report(const nlohmann::json& r) {
  std::ostringstream os;
  auto row = [&](const char* what, const std::string& v) { os << strfmt("  %-14s %s\n", what, v.c_str()); };
  const auto& m = r["model"];
  const int world = r["world_size"], dp = r["data_parallel"], tp = r["tensor_parallel"];
  row("device", r["backend"].get<std::string>() + ": " + r["device_name"].get<std::string>());
  row("model", strfmt("%.2fM params (%.2fM in matrix products) | L=%d C=%d H=%d KV=%d HD=%d FF=%d V=%d",
                   m["params"].get<double>() / 1e6, m["matmul_params"].get<double>() / 1e6,
                   m["layers"].get<int>(), m["hidden_size"].get<int>(), m["heads"].get<int>(),
                   m["kv_heads"].get<int>(), m["head_dim"].get<int>(), m["ffn_dim"].get<int>(),
                   m["vocab_size"].get<int>()));
  const auto& pipe = r.contains("pipeline") ? r["pipeline"] : nlohmann::json(nullptr);
  const int pp = pipe.is_object() ? pipe["stages"].get<int>() : 1;
  row("layout", strfmt("%d rank%s = data %d x pipeline %d x tensor %d | ZeRO-1 %s", world, world > 1 ? "s" : "", dp,
                    pp, tp, r["zero"].get<int>() ? "on" : "off"));
  row("tokens/step", strfmt("%s = %d micro-batch%s x %d seqs x %d tokens x %d data ranks | recompute %s",
                         thousands(num(r, "tokens_per_step")).c_str(), r["grad_accum_steps"].get<int>(),
                         r["grad_accum_steps"].get<int>() > 1 ? "es" : "", r["micro_batch_size"].get<int>(),
                         r["seq_len"].get<int>(), dp, r["recompute"].get<std::string>().c_str()));
  row("steps", strfmt("%d warm-up + %d timed", r["warmup_steps"].get<int>(), r["steps"].get<int>()));
  row("step time", strfmt("%.1f ms median (min %.1f, max %.1f)", num(r, "step_ms"), num(r, "step_ms_min"),
                       num(r, "step_ms_max")));
  row("tokens/s", strfmt("%s total | %s per rank", thousands(num(r, "tokens_per_sec")).c_str(),
                      thousands(num(r, "tokens_per_sec_per_rank")).c_str()));
  std::string memory = mib(num(r, "memory_bytes")) + " peak allocated by the backend";
  if (r["device_memory_used_bytes"].is_number())
    memory += " | " + mib(num(r, "device_memory_used_bytes")) + " in use on the device (cudaMemGetInfo)";
  row("memory", memory);
  if (r.contains("memory_plan") && r["memory_plan"].is_object()) {
    const auto& mp = r["memory_plan"];
    row("memory plan", mib(num(mp, "resident_bytes")) + " resident (weights " + mib(num(mp, "weights_bytes")) +
                           ", gradients " + mib(num(mp, "gradients_bytes")) + ", optimizer " +
                           mib(num(mp, "optimizer_bytes")) + ", activations " + mib(num(mp, "activations_bytes")) +
                           ", workspace " + mib(num(mp, "workspace_bytes")) + ") + " + mib(num(mp, "reserve_bytes")) +
                           " reserve");
  }
  row("FLOPs/token", human(num(r, "flops_per_token"), "FLOP") + " causal | " +
                         human(num(r, "flops_per_token_palm"), "FLOP") + " PaLM");
  row("achieved", strfmt("%.4g TFLOP/s per rank (causal) | %.4g (PaLM)", num(r, "tflops_per_rank"),
                      num(r, "tflops_per_rank_palm")));
  if (r["mfu"].is_number()) {
    row("MFU", strfmt("%.1f%% (causal) | %.1f%% PaLM | peak %.4g TFLOP/s (%s)", 100 * num(r, "mfu"),
                   100 * num(r, "mfu_palm"), num(r, "peak_tflops_per_rank"),
                   r["peak_source"].get<std::string>().c_str()));
  } else {
    row("MFU", "n/a: no peak known for '" + r["device_name"].get<std::string>() +
                   "'; pass --peak-tflops X (dense bf16 TFLOP/s per GPU)");
  }
  if (world > 1) {
    std::string per;
    const auto& pr = r["per_rank_tokens_per_sec"];
    for (size_t i = 0; i < pr.size(); ++i) per += (i ? ", " : "") + thousands(pr[i].get<double>());
    row("per rank", "tokens/s " + per);
    const double step = num(r, "step_ms_mean"), comm = num(r, "comm_ms_per_step");
    row("comm/compute", strfmt("%.1f ms communication (%.1f%%) | %.1f ms compute per step (mean over ranks)", comm,
                            100 * num(r, "comm_fraction"), step - comm));
  }
  if (pipe.is_object()) {
    row("pipeline", strfmt("%s, %d stages x %d chunks, %d micro-batches | bubble %.1f%% measured (waits for "
                           "other stages over the step, mean over ranks) | ideal %.1f%% | %lld of %lld exchanges overlap an op",
                           pipe["schedule"].get<std::string>().c_str(), pp, pipe["virtual_stages"].get<int>(),
                           pipe["micro_batches"].get<int>(), 100 * num(pipe, "bubble"), 100 * num(pipe, "ideal_bubble"),
                           (long long)pipe["overlapped_exchanges"].get<int64_t>(), (long long)pipe["exchanges"].get<int64_t>()));
  }
  if (r["scaling_efficiency"].is_number()) {
    row("scaling", strfmt("%.1f%% of %s tokens/s per rank in %s", 100 * num(r, "scaling_efficiency"),
                       thousands(r["baseline"]["tokens_per_sec_per_rank"].get<double>()).c_str(),
                       r["baseline"]["file"].get<std::string>().c_str()));
  }
  row("loss", strfmt("%.4f -> %.4f (synthetic tokens; ln V = %.4f)", num(r, "loss_first"), num(r, "loss_last"),
                  std::log(num(r["model"], "vocab_size"))));
  const auto& p = r["profile"];
  if (p.is_object()) {
    os << strfmt("\n  profile (rank %d, %d extra steps, %.1f ms/step; %s)\n", p["rank"].get<int>(),
                 p["steps"].get<int>(), num(p, "step_ms"), p["method"].get<std::string>().c_str());
    const double copy = num(p, "copy_bandwidth_gb_per_s");
    if (std::isfinite(copy))
      os << strfmt("  device-to-device copy: %.1f GB/s (Backend::copy of %s, read + write counted)\n", copy,
                   mib(num(p, "copy_bytes")).c_str());
    os << strfmt("  %-16s %12s %8s %10s %10s %8s %9s\n", "family", "ms/step", "%", "calls/step", "GB/s", "% copy",
                 "TFLOP/s");
    std::vector<nlohmann::json> fams(p["families"].begin(), p["families"].end());
    std::stable_sort(fams.begin(), fams.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
      return a["ms_per_step"].get<double>() > b["ms_per_step"].get<double>();
    });
    auto cell = [](double x, const char* fmt, int width) {
      return std::isfinite(x) ? strfmt(fmt, width, x) : strfmt("%*s", width, "-");
    };
    for (const auto& f : fams)
      if (num(f, "calls_per_step") > 0)  // families the model never calls (e.g. add, fused away)
        os << strfmt("  %-16s %12.3f %7.1f%% %10.0f %s %s %s\n", f["name"].get<std::string>().c_str(),
                     num(f, "ms_per_step"), num(f, "percent"), num(f, "calls_per_step"),
                     cell(num(f, "gb_per_s"), "%*.1f", 10).c_str(),
                     cell(num(f, "percent_of_copy_bandwidth"), "%*.0f%%", 7).c_str(),
                     cell(num(f, "tflops"), "%*.2f", 9).c_str());
    os << strfmt("  %-16s %12.3f %7.1f%%\n", "communication", num(p, "communication_ms_per_step"),
              num(p, "communication_percent"));
    os << strfmt("  %-16s %12.3f %7.1f%%\n", "other (host)", num(p, "other_ms_per_step"), num(p, "other_percent"));
  }
  return os.str();
}

}  // namespace ltrain
