// `ltrain bench --attention` (include/ltrain/bench/bench.h): causal attention alone, forward and
// backward timed with the backend's event timer.
#include <algorithm>
#include <cmath>
#include <random>

#include "bench/bench_util.h"
#include "ltrain/backends/factory.h"
#include "ltrain/bench/bench.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

nlohmann::json run_attention_bench(const Config& cfg, const BenchOptions& opt, ParallelContext& par) {
  if (opt.steps < 1) user_error("ltrain bench: --steps must be >= 1, got ", opt.steps);
  if (opt.warmup < 0) user_error("ltrain bench: --warmup must be >= 0, got ", opt.warmup);
  const ModelConfig& m = cfg.model;
  const int tp = std::max(1, cfg.parallel.tensor);
  if (m.num_attention_heads % tp || m.kv_heads() % tp)
    user_error("ltrain bench --attention: parallel.tensor ", tp, " does not divide the ", m.num_attention_heads,
               " heads and ", m.kv_heads(), " KV heads");
  const int B = cfg.train.micro_batch_size, T = cfg.train.seq_len, H = m.num_attention_heads / tp,
            KV = m.kv_heads() / tp, HD = m.head_dim();
  auto be = make_backend(cfg.device, par.local_rank(), cfg.deterministic);
  const DType dt = be->compute_dtype();
  std::vector<Tensor> owned;
  auto make = [&](Shape s, DType d, uint64_t seed) {
    Tensor t = be->alloc(s, d);
    if (seed) {
      std::vector<float> x(size_t(t.numel()));
      std::mt19937_64 rng(seed);
      std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
      for (float& v : x) v = uniform(rng);
      be->from_host(t, x.data(), DType::kF32);
    }
    owned.push_back(t);
    return t;
  };
  Tensor q = make({B, T, H, HD}, dt, 1), k = make({B, T, KV, HD}, dt, 2), v = make({B, T, KV, HD}, dt, 3);
  Tensor dout = make({B, T, H, HD}, dt, 4), out = make({B, T, H, HD}, dt, 0), lse = make({B, H, T}, DType::kF32, 0);
  Tensor dq = make({B, T, H, HD}, dt, 0), dk = make({B, T, KV, HD}, dt, 0), dv = make({B, T, KV, HD}, dt, 0);
  auto timer = be->make_event_timer();
  std::vector<double> fwd, bwd;
  for (int i = 0; i < opt.warmup + opt.steps; ++i) {
    const int a = timer->record();
    be->attention_forward(out, lse, q, k, v);
    const int b = timer->record();
    be->attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
    const int c = timer->record();
    if (i >= opt.warmup) {
      fwd.push_back(timer->seconds_between(a, b));
      bwd.push_back(timer->seconds_between(b, c));
    }
    timer->clear();
  }
  be->synchronize();
  for (Tensor& t : owned) be->free(t);
  const double f_s = bench_util::median(fwd), b_s = bench_util::median(bwd);
  const double f_flops = attention_forward_flops(B, T, H, HD), b_flops = 2.5 * f_flops;
  nlohmann::json r;
  r["device"] = describe_device(*be);
  r["shape"] = {{"batch", B}, {"seq_len", T}, {"heads", H}, {"kv_heads", KV}, {"head_dim", HD}, {"causal", true}};
  r["timing"] = be->make_event_timer()->method();
  r["steps"] = opt.steps;
  r["warmup"] = opt.warmup;
  r["forward_ms"] = f_s * 1e3;
  r["backward_ms"] = b_s * 1e3;
  r["forward_flops"] = f_flops;
  r["backward_flops"] = b_flops;
  r["forward_tflops"] = bench_util::num_or_null(f_s > 0 ? f_flops / f_s / 1e12 : NAN);
  r["backward_tflops"] = bench_util::num_or_null(b_s > 0 ? b_flops / b_s / 1e12 : NAN);
  r["total_tflops"] = bench_util::num_or_null(f_s + b_s > 0 ? (f_flops + b_flops) / (f_s + b_s) / 1e12 : NAN);
  return r;
}

std::string format_attention_report(const nlohmann::json& r) {
  const auto& s = r["shape"];
  auto num = [](const nlohmann::json& j) { return j.is_number() ? j.get<double>() : NAN; };
  std::string out = strfmt("attention on %s | B %d, T %d, H %d, KV %d, HD %d, causal | median of %d after %d warm-up\n",
                           r["device"].get<std::string>().c_str(), s["batch"].get<int>(), s["seq_len"].get<int>(),
                           s["heads"].get<int>(), s["kv_heads"].get<int>(), s["head_dim"].get<int>(),
                           r["steps"].get<int>(), r["warmup"].get<int>());
  out += strfmt("  forward   %9.3f ms  %8.2f TFLOP/s\n", num(r["forward_ms"]), num(r["forward_tflops"]));
  out += strfmt("  backward  %9.3f ms  %8.2f TFLOP/s\n", num(r["backward_ms"]), num(r["backward_tflops"]));
  out += strfmt("  total     %9.3f ms  %8.2f TFLOP/s (FLOPs as FlashAttention-2 counts them)\n",
                num(r["forward_ms"]) + num(r["backward_ms"]), num(r["total_tflops"]));
  return out;
}

}  // namespace ltrain
