// Energy, carbon and cost estimates, and the cluster scaling model (docs/scaling.md).
#include "ltrain/estimate/estimate.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/flops.h"
#include "ltrain/model/layout.h"
#include "ltrain/train/memory_plan.h"

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

// ---- pipeline stages -----------------------------------------------------------------------------

double pipeline_bubble_fraction(int P, int V, int m) {
  LTRAIN_CHECK(P >= 1 && V >= 1 && m >= 1, "pipeline_bubble_fraction: P " << P << " V " << V << " m " << m);
  const double fill = double(P - 1) / V;  // the fill and drain, in micro-batches of the stage's work
  return fill / (m + fill);
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

StageMemory stage_memory(const Config& cfg, const PipelineSplit& split, int stage, int data, int micro_batches,
                         const MemoryPlanOptions& o) {
  // The memory plan of that stage (train/memory_plan.h counts a stage buffer by buffer, as the
  // model allocates it), for the config with this cut and m micro-batches per step.
  Config c = cfg;
  c.parallel.pipeline = split.stages;
  c.parallel.virtual_stages = split.virtual_stages;
  c.parallel.pipeline_layers.clear();
  for (int g = 0; g < split.chunks(); ++g) c.parallel.pipeline_layers.push_back(split.layers(g));
  c.train.global_batch_tokens = int64_t(micro_batches) * c.train.micro_batch_size * c.train.seq_len * data;
  const MemoryPlan plan = memory_plan(c, data, cfg.parallel.tensor, o, stage);
  StageMemory s;
  s.stage = stage;
  s.param_elements = plan.param_elements;
  s.weights = plan.weights;
  s.gradients = plan.gradients;
  s.optimizer = plan.optimizer;
  s.activations = plan.activations;
  s.workspace = plan.workspace;
  s.reserve = plan.reserve;
  s.allocations = plan.allocations;
  s.slots = plan.slots;
  return s;
}

// ---- scaling -------------------------------------------------------------------------------------

std::vector<int64_t> gradient_bucket_elements(const ParamLayout& layout, bool tied_whole_model, double bucket_mb) {
  // Each gradient unit's elements on one rank (the alignment gaps aside), from the layout table:
  // weight matrices split over the tensor-parallel ranks, norms replicated.
  std::vector<int64_t> units;
  for (size_t i = 0; i < layout.params.size(); ++i) {
    const int u = layout.params[i].unit;
    if (size_t(u) >= units.size()) units.resize(size_t(u) + 1, 0);
    units[size_t(u)] += layout.local_shape(i).numel();
  }
  // A tied table of the whole model is counted with the head (its lm_head use), not as a last
  // embedding unit. (A pipeline's last stage holds its own copy, in its head unit.)
  if (tied_whole_model) {
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

std::vector<int64_t> gradient_bucket_elements(const ModelConfig& m, int tensor, double bucket_mb) {
  return gradient_bucket_elements(llama_param_layout(m, tensor), m.tie_word_embeddings, bucket_mb);
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
  if (!(cluster.gpu_memory_gib > 0 && std::isfinite(cluster.gpu_memory_gib)))
    user_error("ltrain estimate: --gpu-memory-gib must be a positive number of GiB, got ", cluster.gpu_memory_gib);
  if (!(opt.single_gpu_tokens_per_sec > 0 && std::isfinite(opt.single_gpu_tokens_per_sec)))
    user_error("ltrain estimate: the single-GPU throughput must be positive, got ", opt.single_gpu_tokens_per_sec);
  if (!(opt.dp_overlap >= 0 && opt.dp_overlap <= 1))
    user_error("ltrain estimate: --dp-overlap must be in [0, 1], got ", opt.dp_overlap);
  if (opt.grad_bytes != 2 && opt.grad_bytes != 4)
    user_error("ltrain estimate: gradients are reduced in fp32 (4 bytes) or bf16 (2), got ", opt.grad_bytes);

  ScalingProjection p;
  const int G = cluster.gpus_per_node;
  p.world = cluster.nodes * G;
  p.tensor = cfg.parallel.tensor;
  if (p.tensor > G || (p.tensor >= 1 && G % p.tensor != 0))
    user_error("ltrain estimate: parallel.tensor (", p.tensor, ") must divide --gpus-per-node (", G,
               "): tensor-parallel groups stay inside a node, on NVLink");
  Config c = cfg;
  c.parallel.data = 0;  // derived from the cluster
  p.data = resolve_parallel_layout(c, p.world);
  validate_config(c, p.data);
  p.pipeline = c.parallel.pipeline;
  p.virtual_stages = c.parallel.virtual_stages;
  p.schedule = c.parallel.schedule;
  const int P = p.pipeline, V = p.virtual_stages;
  // Ranks: tensor innermost, then pipeline, then data. A pipeline either fits in a node (several
  // per node) or fills whole nodes; anything else splits a stage's tensor group or a pipeline
  // unevenly across nodes.
  const int tp_pp = p.tensor * P;
  if (cluster.nodes > 1 && G % tp_pp != 0 && tp_pp % G != 0)
    user_error("ltrain estimate: parallel.pipeline (", P, ") x parallel.tensor (", p.tensor, ") = ", tp_pp,
               " must divide --gpus-per-node (", G, ") or be a multiple of it, so that pipelines fill nodes evenly");
  p.data_per_node = cluster.nodes > 1 ? std::max(1, G / tp_pp) : p.data;
  const auto& t = c.train;
  const int64_t tokens_per_micro = int64_t(t.micro_batch_size) * t.seq_len;  // N = B*T
  const int m = c.grad_accum_steps(p.data);
  p.grad_accum = m;
  p.tokens_per_step = t.global_batch_tokens;
  const PipelineSplit split = llama_pipeline_split(c.model, t.seq_len, P, V, c.parallel.pipeline_layers);
  const int last_stage = split.stage_of(split.chunks() - 1);

  // Compute: the tensor group shares a micro-batch's work, and a pipeline stage does its share of
  // the FLOPs (its layers, the head on the last), so each GPU computes at the single-GPU rate:
  // tokens_per_step / world GPUs for a whole model's share of 1/P.
  const double whole_s = double(p.tokens_per_step) / (double(p.world) * opt.single_gpu_tokens_per_sec);
  const double layer_flops = layer_flops_per_token(c.model, t.seq_len), head_flops = head_flops_per_token(c.model);
  const double total_flops = c.model.num_hidden_layers * layer_flops + head_flops;
  p.stage_layers.assign(size_t(P), 0);
  for (int g = 0; g < split.chunks(); ++g) p.stage_layers[size_t(split.stage_of(g))] += split.layers(g);
  for (int s = 0; s < P; ++s)
    p.stage_flop_share.push_back((p.stage_layers[size_t(s)] * layer_flops + (s == last_stage ? head_flops : 0)) /
                                 total_flops);

  // Tensor parallelism with sequence parallelism (docs/distributed.md): per layer, forward has
  // two all-gathers (entering attention and MLP) and two reduce-scatters (leaving them); backward
  // the mirror images. Recomputation repeats forward collectives: selective re-gathers the two
  // normed inputs, full recomputes the layer's four. The embedding's reduce-scatter and the final
  // norm's all-gather add 2 forward and 2 backward per micro-batch, on the stages that hold them.
  // Each moves the full (N, C) activation in bf16 over NVLink, and nothing overlaps them.
  const LinkSpec nvl = nvlink_spec(cluster.nvlink_gb_per_s);
  const int recompute_extra = t.recompute == "full" ? 4 : t.recompute == "selective" ? 2 : 0;
  p.tp_message_bytes = double(tokens_per_micro) * c.model.hidden_size * 2.0;
  p.tp_collective_s = ring_all_gather_seconds(p.tp_message_bytes, p.tensor, nvl.bytes_per_s(), nvl.latency_s());

  // Pipeline: every forward sends its output rows to the next chunk's stage and every backward
  // its input gradient to the previous one, this GPU's sequence-parallel share (N/tensor, C) in
  // bf16, on its own link (each tensor rank has its NIC). All are counted as exposed: in the
  // steady state each exchange carries what the stage's next op needs (train/pipeline.h), so
  // only the warm-up's and part of the interleaved schedule's overlap compute, which this leaves
  // out (an upper bound). Stage boundaries cross nodes once a pipeline spans nodes; the slowest
  // boundary paces every tick.
  p.pp_crosses_nodes = cluster.nodes > 1 && tp_pp > G;
  const LinkSpec& pp_link = p.pp_crosses_nodes ? fabric : nvl;
  if (P > 1) {
    p.pp_message_bytes = double(ceil_div(tokens_per_micro, p.tensor)) * c.model.hidden_size * 2.0;
    p.pp_message_s = p.pp_message_bytes / pp_link.bytes_per_s() + pp_link.latency_s();
    p.pp_messages_per_step = 2 * m * V;
  }
  std::vector<double> compute(static_cast<size_t>(P)), tp(static_cast<size_t>(P)), busy(static_cast<size_t>(P));
  for (int s = 0; s < P; ++s) {
    compute[size_t(s)] = whole_s * P * p.stage_flop_share[size_t(s)];
    const int colls = p.tensor > 1 ? p.stage_layers[size_t(s)] * (8 + recompute_extra) + (s == 0 ? 2 : 0) +
                                         (s == last_stage ? 2 : 0)
                                   : 0;
    tp[size_t(s)] = double(m) * colls * p.tp_collective_s;
    busy[size_t(s)] = compute[size_t(s)] + tp[size_t(s)] + p.pp_messages_per_step * p.pp_message_s;
    if (busy[size_t(s)] > busy[size_t(p.busiest_stage)]) p.busiest_stage = s;
  }
  const size_t b = size_t(p.busiest_stage);
  p.compute_s = compute[b];
  p.tp_s = tp[b];
  p.tp_collectives_per_micro_batch = p.tensor > 1 ? int(std::lround(tp[b] / (m * p.tp_collective_s))) : 0;
  p.pp_s = p.pp_messages_per_step * p.pp_message_s;
  p.busy_s = busy[b];
  // The bubble: the pipeline's fill and drain, (P-1)/V micro-batches' worth of the busy time.
  p.bubble = P > 1 ? pipeline_bubble_fraction(P, V, m) : 0;
  p.bubble_s = p.busy_s * (P - 1) / (double(V) * m);

  // Data parallelism: a stage's gradient buffer on one tensor-parallel rank, reduced over the
  // data ranks. Inside a node over NVLink, across nodes hierarchically: reduce-scatter over the
  // node's data ranks, all-reduce of each 1/k shard across the nodes of the data group (each GPU
  // on its own NIC, in parallel), all-gather inside the node. Every stage reduces its own
  // gradients after its last backward; the step waits for the one exposed the longest.
  const int k = p.data_per_node, ring_nodes = std::max(1, p.data / k);
  auto reduce_seconds = [&](double bytes) {
    if (cluster.nodes == 1) return ring_all_reduce_seconds(bytes, p.data, nvl.bytes_per_s(), nvl.latency_s());
    return ring_all_reduce_seconds(bytes, k, nvl.bytes_per_s(), nvl.latency_s()) +
           ring_all_reduce_seconds(bytes / k, ring_nodes, fabric.bytes_per_s(), fabric.latency_s());
  };
  p.dp_exposed_s = -1;
  for (int s = 0; s < P; ++s) {
    const ParamLayout layout =
        P > 1 ? llama_stage_param_layout(c.model, p.tensor, split, s) : llama_param_layout(c.model, p.tensor);
    const std::vector<int64_t> buckets =
        gradient_bucket_elements(layout, P == 1 && c.model.tie_word_embeddings, c.parallel.bucket_mb);
    double elems = 0;
    for (int64_t e : buckets) elems += double(e);
    ScalingProjection d;  // this stage's reduction
    d.grad_bytes_per_rank = elems * opt.grad_bytes;
    // Only the last micro-batch's backward through the stage's last chunk (chunk 0) reduces.
    const double backward_last = opt.backward_fraction * compute[size_t(s)] / (double(m) * V);
    if (p.data > 1 && c.parallel.zero == 1) {
      // ZeRO-1: one reduce-scatter and one all-gather of the whole buffer inside the optimizer
      // (together an all-reduce's cost and one set of latencies), after backward: not overlapped.
      d.bucket_bytes = {d.grad_bytes_per_rank};
      d.dp_s = reduce_seconds(d.grad_bytes_per_rank);
      d.dp_last_bucket_s = d.dp_s;
      d.dp_exposed_s = d.dp_s;
    } else if (p.data > 1) {
      // Buckets start as backward of the last micro-batch finishes their layers (only the last
      // micro-batch of a step reduces), so they can hide behind at most that backward, times the
      // overlap fraction; the last bucket is ready only when backward ends.
      for (int64_t e : buckets) {
        d.bucket_bytes.push_back(double(e) * opt.grad_bytes);
        d.dp_s += reduce_seconds(d.bucket_bytes.back());
      }
      d.dp_last_bucket_s = reduce_seconds(d.bucket_bytes.back());
      d.dp_window_s = opt.dp_overlap * backward_last;
      d.dp_exposed_s = std::max(d.dp_s - d.dp_window_s, d.dp_last_bucket_s);
    }
    if (d.dp_exposed_s > p.dp_exposed_s) {
      p.dp_exposed_s = d.dp_exposed_s;
      p.dp_s = d.dp_s;
      p.dp_window_s = d.dp_window_s;
      p.dp_last_bucket_s = d.dp_last_bucket_s;
      p.grad_bytes_per_rank = d.grad_bytes_per_rank;
      p.bucket_bytes = d.bucket_bytes;
    }
  }
  p.step_s = p.busy_s + p.bubble_s + p.dp_exposed_s;
  p.tokens_per_sec_per_gpu = double(p.tokens_per_step) / (p.step_s * p.world);
  p.efficiency = p.tokens_per_sec_per_gpu / opt.single_gpu_tokens_per_sec;

  // Memory: every stage; the largest decides whether the layout fits.
  p.gpu_memory_bytes = cluster.gpu_memory_gib * double(int64_t(1) << 30);
  for (int s = 0; s < P; ++s) {
    StageMemory sm = stage_memory(c, split, s, p.data, m);
    p.stage_memory_bytes.push_back(sm.total());
    if (s == 0 || sm.total() > p.memory.total()) p.memory = std::move(sm);
  }
  p.fits = double(p.memory.total()) <= p.gpu_memory_bytes;
  return p;
}

// ---- search --------------------------------------------------------------------------------------

LayoutSearch search_layouts(const Config& cfg, const ClusterSpec& cluster, const ScalingOptions& opt,
                            const std::set<std::string>& pinned) {
  auto pin = [&](const char* key) { return pinned.count(key) > 0; };
  const ModelConfig& m = cfg.model;
  const int L = m.num_hidden_layers, G = cluster.gpus_per_node;
  const bool fixed_split = pin("parallel.pipeline_layers") || !cfg.parallel.pipeline_layers.empty();
  std::vector<int> tensors, pipelines, batches, zeros;
  if (pin("parallel.tensor")) tensors = {cfg.parallel.tensor};
  else for (int t = 1; t <= G; t *= 2) if (G % t == 0) tensors.push_back(t);
  if (pin("parallel.pipeline") || fixed_split) pipelines = {cfg.parallel.pipeline};
  else for (int P = 1; P <= L; ++P) if (L % P == 0) pipelines.push_back(P);
  if (pin("train.micro_batch_size")) batches = {cfg.train.micro_batch_size};
  else for (int b = 1; b <= 64; b *= 2) batches.push_back(b);
  if (pin("parallel.zero")) zeros = {cfg.parallel.zero};
  else zeros = {0, 1};

  LayoutSearch out;
  int64_t smallest = -1;
  std::string smallest_overrides;
  for (int P : pipelines) {
    // (schedule, V) pairs for this pipeline size.
    std::vector<std::pair<std::string, int>> schedules;
    if (fixed_split || (pin("parallel.schedule") && pin("parallel.virtual_stages"))) {
      schedules = {{cfg.parallel.schedule, cfg.parallel.virtual_stages}};
    } else {
      const bool only_1f1b = pin("parallel.schedule") && cfg.parallel.schedule == "1f1b";
      const bool only_interleaved = pin("parallel.schedule") && cfg.parallel.schedule == "interleaved";
      for (int V = 1; P * V <= L; ++V) {
        if (pin("parallel.virtual_stages") && V != cfg.parallel.virtual_stages) continue;
        if (V == 1 && !only_interleaved) schedules.push_back({"1f1b", 1});
        if (P > 1 && L % (P * V) == 0 && !only_1f1b && (V > 1 || only_interleaved))
          schedules.push_back({"interleaved", V});
      }
    }
    for (int t : tensors)
      for (const auto& [schedule, V] : schedules)
        for (int b : batches)
          for (int z : zeros) {
            Config c = cfg;
            c.parallel.tensor = t;
            c.parallel.pipeline = P;
            c.parallel.schedule = schedule;
            c.parallel.virtual_stages = V;
            c.parallel.zero = z;
            c.parallel.data = 0;
            c.train.micro_batch_size = b;
            ScalingProjection proj;
            try {
              proj = project_scaling(c, cluster, opt);
            } catch (const UserError&) {
              continue;  // a layout ltrain cannot run here
            }
            if (z == 1 && proj.data == 1) continue;  // ZeRO-1 over one rank is the same layout
            ++out.considered;
            std::string o = strfmt("parallel.tensor=%d parallel.pipeline=%d", t, P);
            if (P > 1) o += " parallel.schedule=" + schedule;
            if (V > 1) o += strfmt(" parallel.virtual_stages=%d", V);
            o += strfmt(" parallel.zero=%d train.micro_batch_size=%d", z, b);
            if (!proj.fits) {
              if (smallest < 0 || proj.memory.total() < smallest) {
                smallest = proj.memory.total();
                smallest_overrides = o;
              }
              continue;
            }
            out.fitting.push_back({c, proj, o});
          }
  }
  if (out.considered == 0)
    user_error("ltrain estimate: --search found no layout ltrain can run on ", cluster.nodes, " x ", G,
               " GPUs with the pinned keys (tensor sizes must divide --gpus-per-node, pipeline sizes the ", L,
               " layers, and train.global_batch_tokens the micro-batches of every data rank); unpin a key or change "
               "the cluster");
  if (out.fitting.empty())
    user_error("ltrain estimate: no layout fits in ", cluster.gpu_memory_gib, " GiB per GPU: the smallest (",
               smallest_overrides, ") needs ", strfmt("%.1f", double(smallest) / double(int64_t(1) << 30)),
               " GiB; add nodes, set train.recompute=full, or give a larger --gpu-memory-gib");
  std::stable_sort(out.fitting.begin(), out.fitting.end(), [](const LayoutCandidate& a, const LayoutCandidate& b) {
    const ScalingProjection &x = a.projection, &y = b.projection;
    if (x.tokens_per_sec_per_gpu != y.tokens_per_sec_per_gpu) return x.tokens_per_sec_per_gpu > y.tokens_per_sec_per_gpu;
    if (x.pipeline != y.pipeline) return x.pipeline < y.pipeline;
    return x.tensor < y.tensor;
  });
  return out;
}

nlohmann::json projection_to_json(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o) {
  const LinkSpec& f = lookup_interconnect(c.interconnect);
  const StageMemory& mem = p.memory;
  return {{"nodes", c.nodes},
          {"gpus_per_node", c.gpus_per_node},
          {"interconnect", {{"name", f.name}, {"gb_per_s", f.gb_per_s}, {"efficiency", f.efficiency},
                            {"latency_us", f.latency_us}}},
          {"nvlink_gb_per_s", c.nvlink_gb_per_s},
          {"world", p.world},
          {"tensor_parallel", p.tensor},
          {"pipeline_parallel", p.pipeline},
          {"schedule", p.schedule},
          {"virtual_stages", p.virtual_stages},
          {"data_parallel", p.data},
          {"data_parallel_per_node", p.data_per_node},
          {"grad_accum_steps", p.grad_accum},
          {"tokens_per_step", p.tokens_per_step},
          {"single_gpu_tokens_per_sec", o.single_gpu_tokens_per_sec},
          {"backward_fraction", o.backward_fraction},
          {"dp_overlap", o.dp_overlap},
          {"grad_bytes_per_element", o.grad_bytes},
          {"busiest_stage", p.busiest_stage},
          {"stage_layers", p.stage_layers},
          {"stage_flop_share", p.stage_flop_share},
          {"compute_s", p.compute_s},
          {"tp_s", p.tp_s},
          {"tp_collectives_per_micro_batch", p.tp_collectives_per_micro_batch},
          {"tp_message_bytes", p.tp_message_bytes},
          {"pp_s", p.pp_s},
          {"pp_messages_per_step", p.pp_messages_per_step},
          {"pp_message_bytes", p.pp_message_bytes},
          {"pp_crosses_nodes", p.pp_crosses_nodes},
          {"busy_s", p.busy_s},
          {"bubble", p.bubble},
          {"bubble_s", p.bubble_s},
          {"dp_s", p.dp_s},
          {"dp_buckets", p.bucket_bytes.size()},
          {"grad_bytes_per_rank", p.grad_bytes_per_rank},
          {"dp_window_s", p.dp_window_s},
          {"dp_exposed_s", p.dp_exposed_s},
          {"step_s", p.step_s},
          {"memory", {{"largest_stage", mem.stage},
                      {"weights_bytes", mem.weights},
                      {"gradients_bytes", mem.gradients},
                      {"optimizer_bytes", mem.optimizer},
                      {"activations_bytes", mem.activations},
                      {"workspace_bytes", mem.workspace},
                      {"reserve_bytes", mem.reserve},
                      {"total_bytes", mem.total()},
                      {"slots", mem.slots},
                      {"stage_total_bytes", p.stage_memory_bytes},
                      {"gpu_memory_bytes", p.gpu_memory_bytes},
                      {"fits", p.fits}}},
          {"tokens_per_sec_per_gpu", p.tokens_per_sec_per_gpu},
          {"efficiency", p.efficiency}};
}

std::string format_projection(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o) {
  const LinkSpec& f = lookup_interconnect(c.interconnect);
  std::ostringstream os;
  auto pct = [&](double s) { return 100.0 * s / p.step_s; };
  auto gib = [](double bytes) { return bytes / double(int64_t(1) << 30); };
  os << strfmt("  cluster          %d nodes x %d GPUs = %d, %s (%.0f GB/s x %.2f, %.1f us/step), NVLink %.0f GB/s\n",
               c.nodes, c.gpus_per_node, p.world, f.name.c_str(), f.gb_per_s, f.efficiency, f.latency_us,
               c.nvlink_gb_per_s);
  std::string pipe;
  if (p.pipeline > 1) {
    pipe = strfmt(" x pipeline %d (%s", p.pipeline, p.schedule.c_str());
    if (p.virtual_stages > 1) pipe += strfmt(", %d chunks per stage", p.virtual_stages);
    pipe += ")";
  }
  os << strfmt("  layout           tensor %d%s x data %d (%d per node), %d micro-batch%s per step\n", p.tensor,
               pipe.c_str(), p.data, p.data_per_node, p.grad_accum, p.grad_accum > 1 ? "es" : "");
  std::string stage;
  if (p.pipeline > 1) {
    stage = strfmt(", stage %d of layers [", p.busiest_stage);
    for (size_t i = 0; i < p.stage_layers.size(); ++i) stage += strfmt("%s%d", i ? " " : "", p.stage_layers[i]);
    stage += strfmt("], %.1f%% of the FLOPs", 100.0 * p.stage_flop_share[size_t(p.busiest_stage)]);
  }
  os << strfmt("  compute          %9.1f ms/step  %5.1f%%  (%.1f tokens/s/GPU alone%s)\n", p.compute_s * 1e3,
               pct(p.compute_s), o.single_gpu_tokens_per_sec, stage.c_str());
  os << strfmt("  tensor parallel  %9.1f ms/step  %5.1f%%  (%d collectives/micro-batch of %.1f MB, %.3f ms each)\n",
               p.tp_s * 1e3, pct(p.tp_s), p.tp_collectives_per_micro_batch, p.tp_message_bytes / 1e6,
               p.tp_collective_s * 1e3);
  if (p.pipeline > 1) {
    os << strfmt("  pipeline p2p     %9.1f ms/step  %5.1f%%  (%d transfers of %.1f MB, %s)\n", p.pp_s * 1e3,
                 pct(p.pp_s), p.pp_messages_per_step, p.pp_message_bytes / 1e6,
                 p.pp_crosses_nodes ? (f.name + ": stages cross nodes").c_str() : "NVLink: stages inside a node");
    os << strfmt("  pipeline bubble  %9.1f ms/step  %5.1f%%  (ideal bubble %.1f%% = (P-1)/V / (m + (P-1)/V), P %d, V %d, "
                 "m %d)\n",
                 p.bubble_s * 1e3, pct(p.bubble_s), 100.0 * p.bubble, p.pipeline, p.virtual_stages, p.grad_accum);
  }
  os << strfmt("  data parallel    %9.1f ms/step  %5.1f%%  exposed of %.1f ms (%s gradients %.2f GB/rank, %zu bucket%s,"
               " %.1f ms of backward to hide behind)\n",
               p.dp_exposed_s * 1e3, pct(p.dp_exposed_s), p.dp_s * 1e3, o.grad_bytes == 4 ? "fp32" : "bf16",
               p.grad_bytes_per_rank / 1e9, p.bucket_bytes.size(), p.bucket_bytes.size() == 1 ? "" : "s",
               p.dp_window_s * 1e3);
  const StageMemory& m = p.memory;
  std::string slots;
  for (size_t i = 0; i < m.slots.size(); ++i) slots += strfmt("%s%d", i ? "+" : "", m.slots[i]);
  os << strfmt("  memory           %.1f GiB per GPU%s: weights %.1f, gradients %.1f, optimizer %.1f, activations %.1f "
               "(%s micro-batch%s in flight), workspace+reserve %.1f; %s %.0f GiB\n",
               gib(double(m.total())), p.pipeline > 1 ? strfmt(" on stage %d, the largest", m.stage).c_str() : "",
               gib(double(m.weights)), gib(double(m.gradients)), gib(double(m.optimizer)), gib(double(m.activations)),
               slots.c_str(), slots == "1" ? "" : "es", gib(double(m.workspace + m.reserve)),
               p.fits ? "fits in" : "DOES NOT FIT in", c.gpu_memory_gib);
  os << strfmt("  projected        %.1f tokens/s/GPU (%.1f%% of one GPU), step %.1f ms\n", p.tokens_per_sec_per_gpu,
               100.0 * p.efficiency, p.step_s * 1e3);
  return os.str();
}

}  // namespace ltrain
