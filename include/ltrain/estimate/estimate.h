// `ltrain estimate`: GPU-hours, wall-clock days, energy, emissions and cost of a training run, and a
// projection of tokens/s/GPU on a cluster from one GPU's throughput. docs/estimates.md describes
// the command and the energy method, docs/scaling.md the scaling model and its assumptions.
//
// Conventions: SI units throughout (seconds, bytes, bytes/s, watts); "GB/s" in the tables means
// 1e9 bytes/s. Every function here is pure (no I/O), so the tests check it against the LLaMA
// papers' published figures and against hand-computed cases.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/config/config.h"

namespace ltrain {

// ---- energy and carbon: the method of the LLaMA 1 and LLaMA 2 papers ---------------------------
//   energy (Wh)       = GPU-hours x GPU power (W, the TDP) x PUE
//   emissions (tCO2e) = energy (MWh) x carbon intensity (kg/kWh, numerically t/MWh)
struct EnergyInputs {
  double gpu_hours = 0;
  double gpu_power_w = 400;         // A100 SXM TDP; the LLaMA 2 RoCE cluster ran 350 W parts
  double pue = 1.1;                 // power usage effectiveness of the data centre
  double kg_co2_per_kwh = 0.385;    // US national average (the papers' figure)
  double price_per_gpu_hour = 0;    // USD; 0 = no cost line
};

struct EnergyEstimate {
  double gpu_hours = 0;
  double energy_mwh = 0;
  double tco2eq = 0;
  double cost_usd = 0;  // 0 when no price was given
};

EnergyEstimate estimate_energy(const EnergyInputs& in);

// GPU-hours to train `tokens` at `tokens_per_sec_per_gpu` (each token counted once, as
// `ltrain bench` and `ltrain train` count it), and the wall-clock days on `gpus` GPUs.
double gpu_hours_for_tokens(double tokens, double tokens_per_sec_per_gpu);
double wall_days_for_tokens(double tokens, double tokens_per_sec_per_gpu, int64_t gpus);

// "2e12", "1.4T", "500B", "300M", "64k" (suffixes k, M, B or G, T; case-insensitive but for M).
// UserError naming `flag` unless it is a finite number > 0.
double parse_token_count(const std::string& text, const std::string& flag);

// ---- collective costs ---------------------------------------------------------------------------
// Ring algorithms on n ranks, `bytes` the size of the whole buffer, `bw` the achieved bytes/s of one
// rank's link in one direction, `latency` seconds per ring step:
//   all-reduce:                  2(n-1)/n * bytes / bw + 2(n-1) * latency
//   all-gather, reduce-scatter:   (n-1)/n * bytes / bw +  (n-1) * latency
// Zero for n = 1.
double ring_all_reduce_seconds(double bytes, int n, double bw, double latency);
double ring_all_gather_seconds(double bytes, int n, double bw, double latency);

// ---- interconnects ------------------------------------------------------------------------------
struct LinkSpec {
  std::string name;
  double gb_per_s;      // line rate per GPU, one direction, 1e9 bytes/s (one NIC per GPU)
  double efficiency;    // fraction of the line rate a large NCCL collective achieves
  double latency_us;    // per ring step
  std::string note;     // where the figures come from
  double bytes_per_s() const { return gb_per_s * 1e9 * efficiency; }
  double latency_s() const { return latency_us * 1e-6; }
};

// Inter-node fabrics: ib200, ib400, roce200, roce400, nvlink-only (one node, no fabric).
const std::vector<LinkSpec>& interconnect_table();
// UserError listing the known names when `name` is not in the table.
const LinkSpec& lookup_interconnect(const std::string& name);
// NVLink inside a node at `gb_per_s` per GPU and direction (A100: 300, H100/H200: 450).
LinkSpec nvlink_spec(double gb_per_s);

// ---- scaling projection --------------------------------------------------------------------------
struct ClusterSpec {
  int nodes = 1;
  int gpus_per_node = 8;
  std::string interconnect = "ib200";
  double nvlink_gb_per_s = 300;  // A100 NVLink 3: 12 links x 25 GB/s per direction
};

struct ScalingOptions {
  double single_gpu_tokens_per_sec = 0;  // the whole model on one GPU, no communication
  double backward_fraction = 2.0 / 3.0;  // backward's share of a micro-batch's compute
  double dp_overlap = 0.8;               // fraction of that backward the gradient reduction can hide
  int grad_bytes = 4;                    // ltrain reduces its fp32 gradient buffer; 2 = a bf16 variant
};

struct ScalingProjection {
  int world = 0, tensor = 0, data = 0;
  int data_per_node = 0;        // data-parallel ranks inside one node (hierarchical reduction)
  int grad_accum = 0;           // micro-batches per optimizer step per data-parallel rank
  int64_t tokens_per_step = 0;
  // per optimizer step, seconds
  double compute_s = 0;         // tokens_per_step / (world * single-GPU throughput)
  double tp_s = 0;              // tensor-parallel collectives, not overlapped
  double dp_s = 0;              // the whole gradient reduction
  double dp_window_s = 0;       // backward time it can hide behind (last micro-batch only)
  double dp_last_bucket_s = 0;  // the last bucket starts when backward ends: always exposed
  double dp_exposed_s = 0;
  double step_s = 0;
  // the pieces
  int tp_collectives_per_micro_batch = 0;
  double tp_message_bytes = 0;  // one all-gather/reduce-scatter: B*T*C bf16 values
  double tp_collective_s = 0;
  double grad_bytes_per_rank = 0;
  std::vector<double> bucket_bytes;  // in the order they are reduced
  // results
  double tokens_per_sec_per_gpu = 0;
  double efficiency = 0;        // tokens_per_sec_per_gpu / single-GPU throughput
};

// The model (docs/scaling.md): per optimizer step,
//   step = compute + TP collectives + max(DP reduction - overlap * backward of the last
//          micro-batch, last bucket)
// cfg.parallel.tensor and .zero, .bucket_mb, train.* shape the step; parallel.data is derived from
// the cluster. UserError for layouts ltrain cannot run (the messages of resolve_parallel_layout and
// validate_config, and tensor parallelism that does not fit in a node).
ScalingProjection project_scaling(const Config& cfg, const ClusterSpec& cluster, const ScalingOptions& opt);

// The gradient buckets of ltrain's GradReducer for a tensor-parallel rank, in elements: units in
// backward order (head = final norm + lm_head, layers L-1..0, input embedding), grouped until a
// bucket holds at least bucket_mb MiB of fp32 gradients.
std::vector<int64_t> gradient_bucket_elements(const ModelConfig& m, int tensor, double bucket_mb);

nlohmann::json projection_to_json(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o);
std::string format_projection(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o);

}  // namespace ltrain
