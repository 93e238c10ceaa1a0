// The device memory a run needs, computed from the config before anything is allocated, and the
// check that refuses a run that cannot fit (docs/cuda-backend.md, "Memory").
//
// memory_plan() mirrors what the code allocates, buffer by buffer: LlamaModel's flat parameter and
// gradient buffers (views aligned to 64 elements, padded for ZeRO-1) and its activation buffers
// for train.micro_batch_size x train.seq_len under train.recompute and tensor parallelism (both
// counted from model/layout.h's tables, which the model allocates from), AdamW's
// moments, fp32 master weights and ZeRO-1 gradient shard, the RoPE table, and on the CUDA backend
// the cuBLASLt workspace and the kernels' scratch. tests/test_memory_plan.cpp checks it against the
// bytes the model and optimizer really allocate. check_memory_fits() turns a plan that does not fit
// into a one-line UserError with the breakdown and the config changes that would make it fit.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ltrain/config/config.h"
#include "ltrain/core/backend.h"

namespace ltrain {

struct MemoryPlanOptions {
  DType compute = DType::kBF16;    // the backend's compute_dtype() (weights, activations)
  DType master = DType::kF32;      // its master_dtype() (gradients, optimizer state, statistics)
  bool cuda = true;                // the CUDA backend: cuBLASLt workspace, kernel scratch, reserve
};

// Bytes on one rank (one GPU), by category.
struct MemoryPlan {
  int64_t weights = 0;      // the compute-dtype parameter buffer
  int64_t gradients = 0;    // the master-dtype gradient buffer (+ ZeRO-1's reduce-scattered shard)
  int64_t optimizer = 0;    // AdamW moments m and v (+ fp32 master weights when compute is not fp32); ZeRO-1 shards
  int64_t activations = 0;  // LlamaModel's activation buffers (= LlamaModel::activation_bytes())
  int64_t workspace = 0;    // RoPE table, cuBLASLt workspace, kernel scratch (first step)
  int64_t reserve = 0;      // headroom the code does not allocate itself (below)

  // Details.
  int64_t param_elements = 0;  // of the flat parameter/gradient buffers
  int64_t shard_elements = 0;  // the optimizer's part of them (param_elements / dp under ZeRO-1)
  int64_t rope_bytes = 0, matmul_workspace_bytes = 0, scratch_bytes = 0;
  int allocations = 0;         // device allocations of the model, optimizer and backend
  std::vector<int> slots{1};   // micro-batches in flight per chunk of the stage (train/pipeline.h)

  // The inputs, for the hint of a refusal.
  Config config;
  int dp = 1, tp = 1;
  int pp = 1, stage = 0;  // pipeline stages (parallel.pipeline) and the stage planned
  MemoryPlanOptions options;

  int64_t total() const {
    return weights + gradients + optimizer + activations + workspace + reserve;
  }
  // What the model, optimizer and backend hold during training (without the reserve);
  // the CUDA backend's bytes_allocated() reaches this after the first step.
  int64_t resident() const { return weights + gradients + optimizer + activations + workspace; }
  // "weights 2.05 GiB, gradients 4.10 GiB, ..., total 12.3 GiB"
  std::string breakdown() const;
};

// The reserve on the CUDA backend: a fixed part for what CUDA, cuBLASLt and NCCL allocate on their
// own after the check (lazily loaded kernels, NCCL's connection buffers, made at the first
// collective), and a part per allocation for cudaMalloc's rounding to 2 MiB pages.
constexpr int64_t kReserveBytes = int64_t(256) << 20;
constexpr int64_t kReserveNcclBytes = int64_t(1) << 30;       // when dp * tp > 1
constexpr int64_t kReservePerAllocationBytes = int64_t(2) << 20;

// The plan for `cfg` on one rank of a dp x pipeline x tp layout (parallel.zero,
// parallel.pipeline and train.* from cfg). Under pipeline parallelism, the plan of stage `stage`:
// its layers' weights, gradients and optimizer state, and the activations of the micro-batches
// it keeps in flight (the slots of train/pipeline.h's schedule: P - stage under 1F1B); stage -1
// plans every stage and returns the largest.
MemoryPlan memory_plan(const Config& cfg, int dp, int tp, const MemoryPlanOptions& options = {}, int stage = -1);
// The options for a backend: its dtypes, and whether it is the CUDA backend.
// Loading a checkpoint needs no device memory beyond these (load_checkpoint_training_state goes
// through host memory one tensor at a time), nor does saving.
MemoryPlanOptions memory_plan_options(const Backend& backend);

// Does nothing when plan.total() <= available_bytes; otherwise a one-line UserError naming the need,
// what is available on `where`, every category in GiB, and the single config changes that would fit
// (re-planned: train.recompute, train.micro_batch_size, parallel.zero, parallel.tensor), or, when
// none does, what else to change.
void check_memory_fits(const MemoryPlan& plan, int64_t available_bytes, int64_t total_bytes,
                       const std::string& where = "the device");

// What `ltrain train` and `ltrain bench` call after creating the backend and communicators and
// before building the model: plans for this backend, and checks it against the device's free memory
// (cudaMemGetInfo) plus what the backend already holds, or on the CPU against the host's
// MemAvailable. LTRAIN_MEMORY_CHECK=0 in the environment skips the refusal. Returns the plan.
// stage: this rank's pipeline stage.
MemoryPlan check_run_memory(const Config& cfg, int dp, int tp, Backend& backend, int stage = 0);

}  // namespace ltrain
