// Energy, carbon and cost estimates, and the cluster scaling model (docs/scaling.md).
#include "ltrain/estimate/estimate.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/layout.h"

namespace ltrain {

// ---- energy --------------------------------------------------------------------------------------

EnergyEstimate estimate_energy(const EnergyInputs& in) {
  EnergyEstimate e;
  e.gpu_hours = in.gpu_hours;
  e.energy_mwh = in.gpu_hours * in.gpu_power_w * in.pue / 1e6;  // Wh -> MWh
  e.tco2eq = e.energy_mwh * in.kg_co2_per_kwh;                  // kg/kWh == t/MWh
  e.cost_usd = in.gpu_hours * in.price_per_gpu_hour;
  return e;
}

double gpu_hours_for_tokens(double tokens, double tokens_per_sec_per_gpu) {
  return tokens / tokens_per_sec_per_gpu / 3600.0;
}

double wall_days_for_tokens(double tokens, double tokens_per_sec_per_gpu, int64_t gpus) {
  return tokens / (tokens_per_sec_per_gpu * double(gpus)) / 86400.0;
}

double parse_token_count(const std::string& text, const std::string& flag) {
  std::string s = text;
  double scale = 1;
  if (!s.empty()) {
    switch (s.back()) {
      case 'k': case 'K': scale = 1e3; break;
      case 'M': scale = 1e6; break;
      case 'B': case 'b': case 'G': case 'g': scale = 1e9; break;
      case 'T': case 't': scale = 1e12; break;
      default: break;
    }
    if (scale != 1) s.pop_back();
  }
  char* end = nullptr;
  const double x = s.empty() ? NAN : std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(x) || !(x > 0))
    user_error("ltrain estimate: ", flag, " must be a positive number of tokens (e.g. 2e12 or 1.4T), got '", text, "'");
  return x * scale;
}

// ---- collectives ---------------------------------------------------------------------------------

double ring_all_reduce_seconds(double bytes, int n, double bw, double latency) {
  if (n <= 1) return 0;
  return 2.0 * (n - 1) / n * bytes / bw + 2.0 * (n - 1) * latency;
}

double ring_all_gather_seconds(double bytes, int n, double bw, double latency) {
  if (n <= 1) return 0;
  return double(n - 1) / n * bytes / bw + double(n - 1) * latency;
}

// ---- interconnects -------------------------------------------------------------------------------
// Line rates are the standards' (HDR InfiniBand 200 Gb/s, NDR 400 Gb/s, 200/400 GbE), per GPU:
// DGX-class nodes have one NIC per GPU on its own rail. Efficiencies and latencies are
// assumptions, not measurements of a particular fabric; docs/scaling.md gives the reasoning.
const std::vector<LinkSpec>& interconnect_table() {
  static const std::vector<LinkSpec> table = {
      {"ib200", 25, 0.90, 5.0, "HDR InfiniBand 200 Gb/s per GPU (DGX A100 / LLaMA RSC cluster)"},
      {"ib400", 50, 0.90, 5.0, "NDR InfiniBand 400 Gb/s per GPU (DGX H100)"},
      {"roce200", 25, 0.80, 6.0, "RoCE v2 on 200 GbE per GPU (LLaMA 2 production cluster)"},
      {"roce400", 50, 0.80, 6.0, "RoCE v2 on 400 GbE per GPU"},
      {"nvlink-only", 0, 0, 0, "one node: every collective on NVLink, no inter-node fabric"},
  };
  return table;
}

const LinkSpec& lookup_interconnect(const std::string& name) {
  std::string known;
  for (const auto& l : interconnect_table()) {
    if (l.name == name) return l;
    known += (known.empty() ? "" : ", ") + l.name;
  }
  user_error("ltrain estimate: unknown --interconnect '", name, "' (known: ", known, ")");
}

LinkSpec nvlink_spec(double gb_per_s) {
  // 80% of the per-direction NVLink rate is what NCCL's ring collectives typically reach on
  // 8-GPU NVSwitch nodes for large messages; 2 us per ring step.
  return {"nvlink", gb_per_s, 0.80, 2.0, "NVLink/NVSwitch inside a node"};
}

// ---- scaling -------------------------------------------------------------------------------------

std::vector<int64_t> gradient_bucket_elements(const ModelConfig& m, int tensor, double bucket_mb) {
  // Each gradient unit's elements on one rank (the alignment gaps aside), from the model's
  // layout table: weight matrices split over the tensor-parallel ranks, norms replicated.
  const ParamLayout layout = llama_param_layout(m, tensor);
  std::vector<int64_t> units;
  for (size_t i = 0; i < layout.params.size(); ++i) {
    const int u = layout.params[i].unit;
    if (size_t(u) >= units.size()) units.resize(size_t(u) + 1, 0);
    units[size_t(u)] += layout.local_shape(i).numel();
  }
  // A tied table is counted with the head (its lm_head use), not as a last embedding unit.
  if (m.tie_word_embeddings) {
    units.front() += units.back();
    units.pop_back();
  }
  // GradReducer: whole units, grouped until a bucket reaches bucket_mb MiB of fp32 gradients.
  const int64_t min_elems = std::max<int64_t>(1, int64_t(bucket_mb * 1048576.0 / 4.0));
  std::vector<int64_t> buckets;
  int64_t cur = 0;
  for (size_t u = 0; u < units.size(); ++u) {
    cur += units[u];
    if (cur >= min_elems || u + 1 == units.size()) {
      buckets.push_back(cur);
      cur = 0;
    }
  }
  return buckets;
}

ScalingProjection project_scaling(const Config& cfg, const ClusterSpec& cluster, const ScalingOptions& opt) {
  const LinkSpec& fabric = lookup_interconnect(cluster.interconnect);
  if (cluster.nodes < 1) user_error("ltrain estimate: --nodes must be >= 1, got ", cluster.nodes);
  if (cluster.gpus_per_node < 1)
    user_error("ltrain estimate: --gpus-per-node must be >= 1, got ", cluster.gpus_per_node);
  if (fabric.name == "nvlink-only" && cluster.nodes != 1)
    user_error("ltrain estimate: --interconnect nvlink-only means one node, got --nodes ", cluster.nodes,
               " (pick ib200, ib400, roce200 or roce400)");
  if (!(cluster.nvlink_gb_per_s > 0 && std::isfinite(cluster.nvlink_gb_per_s)))
    user_error("ltrain estimate: --nvlink-gbs must be a positive number of GB/s, got ", cluster.nvlink_gb_per_s);
  if (!(opt.single_gpu_tokens_per_sec > 0 && std::isfinite(opt.single_gpu_tokens_per_sec)))
    user_error("ltrain estimate: the single-GPU throughput must be positive, got ", opt.single_gpu_tokens_per_sec);
  if (!(opt.dp_overlap >= 0 && opt.dp_overlap <= 1))
    user_error("ltrain estimate: --dp-overlap must be in [0, 1], got ", opt.dp_overlap);
  if (opt.grad_bytes != 2 && opt.grad_bytes != 4)
    user_error("ltrain estimate: gradients are reduced in fp32 (4 bytes) or bf16 (2), got ", opt.grad_bytes);

  ScalingProjection p;
  p.world = cluster.nodes * cluster.gpus_per_node;
  p.tensor = cfg.parallel.tensor;
  if (p.tensor > cluster.gpus_per_node || (p.tensor >= 1 && cluster.gpus_per_node % p.tensor != 0))
    user_error("ltrain estimate: parallel.tensor (", p.tensor, ") must divide --gpus-per-node (", cluster.gpus_per_node,
               "): tensor-parallel groups stay inside a node, on NVLink");
  Config c = cfg;
  c.parallel.data = 0;  // derived from the cluster
  p.data = resolve_parallel_layout(c, p.world);
  validate_config(c, p.data);
  p.data_per_node = cluster.nodes > 1 ? cluster.gpus_per_node / p.tensor : p.data;
  const auto& t = c.train;
  const int64_t tokens_per_micro = int64_t(t.micro_batch_size) * t.seq_len;  // N = B*T
  p.grad_accum = c.grad_accum_steps(p.data);
  p.tokens_per_step = t.global_batch_tokens;

  // Compute: the tensor group shares a micro-batch's work, so each GPU computes at the
  // single-GPU rate: tokens_per_step / world GPUs.
  p.compute_s = double(p.tokens_per_step) / (double(p.world) * opt.single_gpu_tokens_per_sec);

  // Tensor parallelism with sequence parallelism (docs/distributed.md): per layer, forward has
  // two all-gathers (entering attention and MLP) and two reduce-scatters (leaving them); backward
  // the mirror images. Recomputation repeats forward collectives: selective re-gathers the two
  // normed inputs, full recomputes the layer's four. The embedding's reduce-scatter and the final
  // norm's all-gather add 2 forward and 2 backward per micro-batch. Each moves the full (N, C)
  // activation in bf16 over NVLink, and nothing overlaps them.
  const LinkSpec nvl = nvlink_spec(cluster.nvlink_gb_per_s);
  const int L = c.model.num_hidden_layers;
  const int recompute_extra = t.recompute == "full" ? 4 : t.recompute == "selective" ? 2 : 0;
  p.tp_collectives_per_micro_batch = p.tensor > 1 ? L * (8 + recompute_extra) + 4 : 0;
  p.tp_message_bytes = double(tokens_per_micro) * c.model.hidden_size * 2.0;
  p.tp_collective_s = ring_all_gather_seconds(p.tp_message_bytes, p.tensor, nvl.bytes_per_s(), nvl.latency_s());
  p.tp_s = double(p.grad_accum) * p.tp_collectives_per_micro_batch * p.tp_collective_s;

  // Data parallelism: the gradient buffer of one tensor-parallel rank, reduced over the data
  // ranks. Inside a node over NVLink, across nodes hierarchically: reduce-scatter over the node's
  // data ranks, all-reduce of each 1/k shard across nodes (each GPU on its own NIC, in parallel),
  // all-gather inside the node.
  const int k = p.data_per_node;
  auto reduce_seconds = [&](double bytes) {
    if (cluster.nodes == 1) return ring_all_reduce_seconds(bytes, p.data, nvl.bytes_per_s(), nvl.latency_s());
    return ring_all_reduce_seconds(bytes, k, nvl.bytes_per_s(), nvl.latency_s()) +
           ring_all_reduce_seconds(bytes / k, cluster.nodes, fabric.bytes_per_s(), fabric.latency_s());
  };
  const std::vector<int64_t> buckets = gradient_bucket_elements(c.model, p.tensor, c.parallel.bucket_mb);
  double elems = 0;
  for (int64_t b : buckets) elems += double(b);
  p.grad_bytes_per_rank = elems * opt.grad_bytes;
  const double backward_last = opt.backward_fraction * p.compute_s / p.grad_accum;
  if (p.data > 1 && c.parallel.zero == 1) {
    // ZeRO-1: one reduce-scatter and one all-gather of the whole buffer inside the optimizer
    // (together an all-reduce's cost and one set of latencies), after backward: not overlapped.
    p.bucket_bytes = {p.grad_bytes_per_rank};
    p.dp_s = reduce_seconds(p.grad_bytes_per_rank);
    p.dp_window_s = 0;
    p.dp_last_bucket_s = p.dp_s;
    p.dp_exposed_s = p.dp_s;
  } else if (p.data > 1) {
    // Buckets start as backward of the last micro-batch finishes their layers (only the last
    // micro-batch of a step reduces), so they can hide behind at most that backward, times the
    // overlap fraction; the last bucket is ready only when backward ends.
    for (int64_t b : buckets) {
      p.bucket_bytes.push_back(double(b) * opt.grad_bytes);
      p.dp_s += reduce_seconds(p.bucket_bytes.back());
    }
    p.dp_last_bucket_s = reduce_seconds(p.bucket_bytes.back());
    p.dp_window_s = opt.dp_overlap * backward_last;
    p.dp_exposed_s = std::max(p.dp_s - p.dp_window_s, p.dp_last_bucket_s);
  }
  p.step_s = p.compute_s + p.tp_s + p.dp_exposed_s;
  p.tokens_per_sec_per_gpu = double(p.tokens_per_step) / (p.step_s * p.world);
  p.efficiency = p.tokens_per_sec_per_gpu / opt.single_gpu_tokens_per_sec;
  return p;
}

nlohmann::json projection_to_json(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o) {
  const LinkSpec& f = lookup_interconnect(c.interconnect);
  return {{"nodes", c.nodes},
          {"gpus_per_node", c.gpus_per_node},
          {"interconnect", {{"name", f.name}, {"gb_per_s", f.gb_per_s}, {"efficiency", f.efficiency},
                            {"latency_us", f.latency_us}}},
          {"nvlink_gb_per_s", c.nvlink_gb_per_s},
          {"world", p.world},
          {"tensor_parallel", p.tensor},
          {"data_parallel", p.data},
          {"data_parallel_per_node", p.data_per_node},
          {"grad_accum_steps", p.grad_accum},
          {"tokens_per_step", p.tokens_per_step},
          {"single_gpu_tokens_per_sec", o.single_gpu_tokens_per_sec},
          {"backward_fraction", o.backward_fraction},
          {"dp_overlap", o.dp_overlap},
          {"grad_bytes_per_element", o.grad_bytes},
          {"compute_s", p.compute_s},
          {"tp_s", p.tp_s},
          {"tp_collectives_per_micro_batch", p.tp_collectives_per_micro_batch},
          {"tp_message_bytes", p.tp_message_bytes},
          {"dp_s", p.dp_s},
          {"dp_buckets", p.bucket_bytes.size()},
          {"grad_bytes_per_rank", p.grad_bytes_per_rank},
          {"dp_window_s", p.dp_window_s},
          {"dp_exposed_s", p.dp_exposed_s},
          {"step_s", p.step_s},
          {"tokens_per_sec_per_gpu", p.tokens_per_sec_per_gpu},
          {"efficiency", p.efficiency}};
}

std::string format_projection(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o) {
  const LinkSpec& f = lookup_interconnect(c.interconnect);
  std::ostringstream os;
  auto pct = [&](double s) { return 100.0 * s / p.step_s; };
  os << strfmt("  cluster          %d nodes x %d GPUs = %d, %s (%.0f GB/s x %.2f, %.1f us/step), NVLink %.0f GB/s\n",
               c.nodes, c.gpus_per_node, p.world, f.name.c_str(), f.gb_per_s, f.efficiency, f.latency_us,
               c.nvlink_gb_per_s);
  os << strfmt("  layout           tensor %d x data %d (%d per node), %d micro-batch%s per step\n", p.tensor, p.data,
               p.data_per_node, p.grad_accum, p.grad_accum > 1 ? "es" : "");
  os << strfmt("  compute          %9.1f ms/step  %5.1f%%  (%.1f tokens/s/GPU alone)\n", p.compute_s * 1e3,
               pct(p.compute_s), o.single_gpu_tokens_per_sec);
  os << strfmt("  tensor parallel  %9.1f ms/step  %5.1f%%  (%d collectives/micro-batch of %.1f MB, %.3f ms each)\n",
               p.tp_s * 1e3, pct(p.tp_s), p.tp_collectives_per_micro_batch, p.tp_message_bytes / 1e6,
               p.tp_collective_s * 1e3);
  os << strfmt("  data parallel    %9.1f ms/step  %5.1f%%  exposed of %.1f ms (%s gradients %.2f GB/rank, %zu bucket%s,"
               " %.1f ms of backward to hide behind)\n",
               p.dp_exposed_s * 1e3, pct(p.dp_exposed_s), p.dp_s * 1e3, o.grad_bytes == 4 ? "fp32" : "bf16",
               p.grad_bytes_per_rank / 1e9, p.bucket_bytes.size(), p.bucket_bytes.size() == 1 ? "" : "s",
               p.dp_window_s * 1e3);
  os << strfmt("  projected        %.1f tokens/s/GPU (%.1f%% of one GPU), step %.1f ms\n", p.tokens_per_sec_per_gpu,
               100.0 * p.efficiency, p.step_s * 1e3);
  return os.str();
}

}  // namespace ltrain
