// `ltrain estimate`: GPU-hours, wall-clock days, energy, emissions and cost of a training run, and a
// projection of tokens/s/GPU on a cluster from one GPU's throughput. docs/estimates.md describes
// the command and the energy method, docs/scaling.md the scaling model and its assumptions.
//
// Conventions: SI units throughout (seconds, bytes, bytes/s, watts); "GB/s" in the tables means
// 1e9 bytes/s. Every function here is pure (no I/O), so the tests check it against the LLaMA
// papers' published figures and against hand-computed cases.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/config/config.h"
#include "ltrain/model/layout.h"
#include "ltrain/train/memory_plan.h"

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

// ---- pipeline parallelism ----------------------------------------------------------------------
// The ideal bubble of a pipeline of P stages, V chunks per stage, m micro-batches per step: the
// share of the step a stage is idle when forward and backward ops take their share of the time
// and nothing else waits. 1F1B: (P-1)/(m+P-1); interleaved divides the fill and drain by V:
// ((P-1)/V) / (m + (P-1)/V). The step is the busy time x (1 + (P-1)/(V m)).
double pipeline_bubble_fraction(int P, int V, int m);

// The device memory of one GPU of pipeline stage `stage` with m micro-batches per step (by
// default the CUDA backend's dtypes): the memory plan of that stage (train/memory_plan.h, which
// counts the stage's parameters, its AdamW state and the activations of the micro-batches it keeps
// in flight, as LlamaModel and AdamW allocate them), plus the slots of each of its chunks. With one
// stage (split.stages == 1) it is memory_plan()'s whole model on one tensor rank.
struct StageMemory {
  int stage = 0;
  int64_t param_elements = 0;  // of the flat buffers, padded for ZeRO-1
  int64_t weights = 0, gradients = 0, optimizer = 0, activations = 0, workspace = 0, reserve = 0;
  std::vector<int> slots;      // micro-batches in flight per chunk of the stage
  int allocations = 0;
  int64_t total() const { return weights + gradients + optimizer + activations + workspace + reserve; }
};
StageMemory stage_memory(const Config& cfg, const PipelineSplit& split, int stage, int data, int micro_batches,
                         const MemoryPlanOptions& options = {});

// ---- scaling projection --------------------------------------------------------------------------
struct ClusterSpec {
  int nodes = 1;
  int gpus_per_node = 8;
  std::string interconnect = "ib200";
  double nvlink_gb_per_s = 300;  // A100 NVLink 3: 12 links x 25 GB/s per direction
  double gpu_memory_gib = 80;    // A100-80GB, H100 80GB; H200: 141
};

struct ScalingOptions {
  double single_gpu_tokens_per_sec = 0;  // the whole model on one GPU, no communication
  double backward_fraction = 2.0 / 3.0;  // backward's share of a micro-batch's compute
  double dp_overlap = 0.8;               // fraction of that backward the gradient reduction can hide
  int grad_bytes = 4;                    // ltrain reduces its fp32 gradient buffer; 2 = a bf16 variant
};

struct ScalingProjection {
  int world = 0, tensor = 0, data = 0;
  int pipeline = 1, virtual_stages = 1;
  std::string schedule = "1f1b";
  int data_per_node = 0;        // data-parallel ranks inside one node (hierarchical reduction)
  int grad_accum = 0;           // micro-batches per optimizer step per data-parallel rank (m)
  int64_t tokens_per_step = 0;
  // per optimizer step, seconds, on the busiest stage (the whole model without a pipeline)
  double compute_s = 0;         // its share of the FLOPs: tokens_per_step / (world * single-GPU
                                // throughput) without a pipeline, x P x its FLOP share with one
  double tp_s = 0;              // tensor-parallel collectives, not overlapped
  double pp_s = 0;              // point-to-point transfers between stages, not overlapped
  double busy_s = 0;            // compute + tp + pp
  double bubble = 0;            // ideal bubble fraction of the pipeline's part of the step
  double bubble_s = 0;          // busy x (P-1)/(V m)
  double dp_s = 0;              // the whole gradient reduction (of the stage whose is exposed most)
  double dp_window_s = 0;       // backward time it can hide behind (last micro-batch, last chunk)
  double dp_last_bucket_s = 0;  // the last bucket starts when backward ends: always exposed
  double dp_exposed_s = 0;
  double step_s = 0;
  // the pieces
  int busiest_stage = 0;        // the stage with the most busy time
  std::vector<int> stage_layers;  // layers per stage (all its chunks)
  std::vector<double> stage_flop_share;  // each stage's share of the FLOPs per token
  int tp_collectives_per_micro_batch = 0;  // on the busiest stage
  double tp_message_bytes = 0;  // one all-gather/reduce-scatter: B*T*C bf16 values
  double tp_collective_s = 0;
  bool pp_crosses_nodes = false;  // a stage boundary on the inter-node fabric
  double pp_message_bytes = 0;  // one GPU's share of a boundary's rows: B*T*C/tensor bf16 values
  double pp_message_s = 0;
  int pp_messages_per_step = 0;  // on the busiest stage: 2 m V (forward activations, backward gradients)
  double grad_bytes_per_rank = 0;
  std::vector<double> bucket_bytes;  // in the order they are reduced
  // memory: every stage's total, and the largest stage's breakdown
  std::vector<int64_t> stage_memory_bytes;
  StageMemory memory;
  double gpu_memory_bytes = 0;
  bool fits = true;
  // results
  double tokens_per_sec_per_gpu = 0;
  double efficiency = 0;        // tokens_per_sec_per_gpu / single-GPU throughput
};

// The model (docs/scaling.md): per optimizer step, on the busiest pipeline stage,
//   busy = compute + TP collectives + stage-boundary transfers
//   step = busy x (1 + (P-1)/(V m)) + max(DP reduction - overlap * backward of the last
//          micro-batch's last chunk, last bucket)
// cfg.parallel.tensor, .pipeline, .schedule, .virtual_stages, .pipeline_layers, .zero,
// .bucket_mb and train.* shape the step; parallel.data is derived from the cluster (world =
// data x pipeline x tensor, tensor innermost, then pipeline). UserError for layouts ltrain cannot
// run (the messages of resolve_parallel_layout, validate_config and llama_pipeline_split, tensor
// parallelism that does not fit in a node, pipeline x tensor that neither divides nor is a
// multiple of the GPUs per node). A layout that does not fit in memory is projected, with
// fits = false.
ScalingProjection project_scaling(const Config& cfg, const ClusterSpec& cluster, const ScalingOptions& opt);

// The gradient buckets of ltrain's GradReducer for a tensor-parallel rank, in elements: units in
// backward order (head = final norm + lm_head, layers L-1..0, input embedding), grouped until a
// bucket holds at least bucket_mb MiB of fp32 gradients. The layout form takes a pipeline
// stage's parameters (llama_stage_param_layout).
std::vector<int64_t> gradient_bucket_elements(const ModelConfig& m, int tensor, double bucket_mb);
std::vector<int64_t> gradient_bucket_elements(const ParamLayout& layout, bool tied_whole_model, double bucket_mb);

// ---- layout search -------------------------------------------------------------------------------
// Every layout ltrain can run on the cluster, projected: tensor sizes dividing the GPUs per node,
// pipeline sizes dividing the layers (1F1B; interleaved with V chunks where P x V divides the
// layers and the micro-batches divide by P), micro-batch sizes 1, 2, 4, ... dividing the
// sequences per data rank, ZeRO-1 on and off. Keys in `pinned` (config keys given as overrides:
// parallel.tensor, parallel.pipeline, parallel.schedule, parallel.virtual_stages,
// parallel.pipeline_layers, parallel.zero, train.micro_batch_size) keep cfg's value. Returns the
// layouts that fit in the GPU's memory, fastest first (ties: the smaller pipeline, then tensor);
// UserError naming the smallest need when none fits.
struct LayoutCandidate {
  Config cfg;
  ScalingProjection projection;
  std::string overrides;  // "parallel.tensor=8 parallel.pipeline=4 ..." to pin it
};
struct LayoutSearch {
  std::vector<LayoutCandidate> fitting;  // fastest first
  int considered = 0;                    // layouts ltrain can run on the cluster
};
LayoutSearch search_layouts(const Config& cfg, const ClusterSpec& cluster, const ScalingOptions& opt,
                            const std::set<std::string>& pinned);

nlohmann::json projection_to_json(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o);
std::string format_projection(const ScalingProjection& p, const ClusterSpec& c, const ScalingOptions& o);

}  // namespace ltrain
