// The memory plan (include/ltrain/train/memory_plan.h). The model's parameters and activations
// are counted from the same tables (model/layout.h) LlamaModel allocates from; every other count
// mirrors an allocation elsewhere, and the comment names it. tests/test_memory_plan.cpp compares the plan with the bytes the
// model and optimizer allocate, so a change there that is not mirrored here fails a test.
#include "ltrain/train/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/cuda/cuda_backend.h"
#include "ltrain/kernels/scratch.h"
#include "ltrain/model/layout.h"
#include "ltrain/train/pipeline.h"

namespace ltrain {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Count {
  int64_t bytes = 0;
  int allocations = 0;
  void add(int64_t elements, int64_t element_bytes) {
    bytes += elements * element_bytes;
    ++allocations;
  }
};

// A chunk of layers as LlamaModel allocates it: its layers, its slots, whether it has the embedding
// and whether the head.
struct ChunkShape {
  int layers, slots;
  bool embed, head;
};

// LlamaModel::alloc_activations: the same loops over model/layout.h's table.
Count activation_count(const ModelConfig& m, int B, int T, Recompute rc, int P, DType act, DType stat,
                       const std::vector<ChunkShape>& chunks, bool pipeline) {
  const LlamaDims d(m, P);
  const std::vector<ActivationSpec> specs = llama_activations(d, B, T);
  Count c;
  auto add = [&](const ActivationSpec& a) { c.add(a.shape.numel(), int64_t(dtype_size(resolve(a.dtype, act, stat)))); };
  bool first = true;  // the first layer holds every member; the others what they keep
  for (const ChunkShape& ch : chunks)
    for (int s = 0; s < ch.slots; ++s) {
      for (int l = 0; l < ch.layers; ++l, first = false)
        for (const auto& a : specs)
          if (a.layer && (first || kept_per_layer(a, rc))) add(a);
      for (const auto& a : specs) {
        if (a.id == Act::kResid)
          for (int i = 0; i <= ch.layers; ++i) add(a);
        if (a.id == Act::kTokens && ch.embed) add(a);
        if (a.id == Act::kDres && pipeline) add(a);  // the slot's output gradient
      }
    }
  bool head = false;  // the last chunk of the model: LlamaModel's ChunkShape.head
  for (const ChunkShape& ch : chunks) head = head || ch.head;
  for (const auto& a : specs)
    if (!a.layer && a.id != Act::kResid && a.id != Act::kTokens && (head || !head_only(a.id))) add(a);
  return c;
}

// GiB with two decimals, or MiB below 1 GiB (small models).
std::string gib(int64_t bytes) {
  if (bytes < (int64_t(1) << 30)) return strfmt("%.1f MiB", double(bytes) / double(int64_t(1) << 20));
  return strfmt("%.2f GiB", double(bytes) / double(int64_t(1) << 30));
}

// One single change for the hint: how to write it, the changed config and the layout it implies.
struct Alternative {
  std::string change;
  Config cfg;
  int dp, tp;
};

bool batch_divides(const Config& c, int dp) {
  const int64_t per = int64_t(c.train.micro_batch_size) * c.train.seq_len * dp;
  return per > 0 && c.train.global_batch_tokens % per == 0;
}

std::string hint_for(const MemoryPlan& plan, int64_t available) {
  const Config& cfg = plan.config;
  const int dp = plan.dp, tp = plan.tp;
  std::vector<Alternative> alts;
  const std::string rc = cfg.train.recompute;
  for (const char* mode : {"selective", "full"}) {
    if ((rc == "none") || (rc == "selective" && std::string(mode) == "full")) {
      Config c = cfg;
      c.train.recompute = mode;
      alts.push_back({std::string("train.recompute=") + mode, c, dp, tp});
    }
  }
  for (int b = cfg.train.micro_batch_size - 1; b >= 1; --b) {
    Config c = cfg;
    c.train.micro_batch_size = b;
    if (!batch_divides(c, dp)) continue;
    if (memory_plan(c, dp, tp, plan.options).total() <= available) {
      alts.push_back({strfmt("train.micro_batch_size=%d", b), c, dp, tp});
      break;  // the largest that fits
    }
  }
  if (dp > 1 && cfg.parallel.zero != 1) {
    Config c = cfg;
    c.parallel.zero = 1;
    alts.push_back({"parallel.zero=1", c, dp, tp});
  }
  const int pp = plan.pp, world = dp * tp * pp;
  const ModelConfig& m = cfg.model;
  for (int t = tp * 2; t <= std::min(world / pp, 8); t *= 2) {
    if (world % (t * pp) || m.num_attention_heads % t || m.kv_heads() % t || m.ffn_dim() % t || m.vocab_size % t) continue;
    Config c = cfg;
    c.parallel.tensor = t;
    c.parallel.data = 0;
    if (!batch_divides(c, world / (t * pp))) continue;
    alts.push_back({strfmt("parallel.tensor=%d", t), c, world / (t * pp), t});
  }
  // More pipeline stages: each holds fewer layers (the first stage also keeps more micro-batches
  // in flight).
  for (int s = pp * 2; s <= m.num_hidden_layers && world % (s * tp) == 0; s *= 2) {
    Config c = cfg;
    c.parallel.pipeline = s;
    c.parallel.data = 0;
    c.parallel.pipeline_layers.clear();
    const int d = world / (s * tp);
    if (!batch_divides(c, d)) continue;
    if (c.parallel.schedule == "interleaved" && (c.grad_accum_steps(d) % s != 0 ||
                                                  m.num_hidden_layers % (s * c.parallel.virtual_stages) != 0))
      continue;
    alts.push_back({strfmt("parallel.pipeline=%d", s), c, d, tp});
  }
  std::vector<std::string> fits;
  for (const auto& a : alts) {
    const int64_t need = memory_plan(a.cfg, a.dp, a.tp, plan.options).total();
    if (need <= available) fits.push_back(a.change + " (" + gib(need) + ")");
  }
  std::string hint;
  if (!fits.empty()) {
    hint = "fits with ";
    for (size_t i = 0; i < fits.size(); ++i) hint += (i ? " or " : "") + fits[i];
  } else {
    Config c = cfg;
    c.train.recompute = "full";
    c.train.micro_batch_size = 1;
    const int64_t smallest = memory_plan(c, dp, tp, plan.options).total();
    hint = strfmt("no single change of train.recompute, train.micro_batch_size%s fits (recompute=full with "
                  "micro_batch_size=1 needs %s)", world > 1 ? ", parallel.zero, parallel.tensor or parallel.pipeline" : "",
                  gib(smallest).c_str());
  }
  hint += "; more GPUs help: parallel.tensor=N splits weights, gradients and activations over N GPUs, "
          "parallel.pipeline=N splits the layers over N GPUs, "
          "parallel.zero=1 shards the optimizer state over the data-parallel ranks";
  return hint;
}

// /proc/meminfo's field in bytes, or -1.
int64_t meminfo_bytes(const std::string& field) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream s(line.substr(field.size() + 1));
      int64_t kb = -1;
      s >> kb;
      return kb < 0 ? -1 : kb * 1024;
    }
  }
  return -1;
}

}  // namespace

std::string MemoryPlan::breakdown() const {
  std::string s = "weights " + gib(weights) + ", gradients " + gib(gradients) + ", optimizer state " +
                  gib(optimizer);
  const bool zero = config.parallel.zero == 1 && dp > 1;
  if (zero) s += strfmt(" (ZeRO-1 over %d)", dp);
  s += ", activations " + gib(activations) + " (micro-batch " + std::to_string(config.train.micro_batch_size) +
       " x " + std::to_string(config.train.seq_len) + ", recompute " + config.train.recompute +
       (tp > 1 ? strfmt(", tensor %d", tp) : std::string()) +
       (pp > 1 ? strfmt(", pipeline stage %d of %d", stage, pp) : std::string()) + "), workspace " + gib(workspace);
  if (reserve > 0) s += ", reserve " + gib(reserve);
  return s + ", total " + gib(total());
}

MemoryPlan memory_plan(const Config& cfg, int dp, int tp, const MemoryPlanOptions& o, int stage) {
  LTRAIN_CHECK(dp >= 1 && tp >= 1, "memory_plan: dp " << dp << " tp " << tp);
  const int pp = std::max(1, cfg.parallel.pipeline);
  if (pp > 1 && stage < 0) {  // the largest stage
    MemoryPlan best;
    for (int s = 0; s < pp; ++s) {
      MemoryPlan p = memory_plan(cfg, dp, tp, o, s);
      if (s == 0 || p.total() > best.total()) best = p;
    }
    return best;
  }
  stage = std::max(stage, 0);
  const ModelConfig& m = cfg.model;
  const int B = cfg.train.micro_batch_size, T = cfg.train.seq_len;
  const int64_t stat = dtype_size(o.master);
  const bool zero = cfg.parallel.zero == 1 && dp > 1;
  MemoryPlan p;
  p.config = cfg;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.stage = stage;
  p.options = o;

  // The chunks of layers this rank runs (LlamaModel's constructor): the whole model, or a
  // pipeline stage's chunks with the slots its schedule needs.
  std::vector<ChunkShape> chunks{{m.num_hidden_layers, 1, true, true}};
  ParamLayout layout;
  if (pp > 1) {
    const PipelineSplit split = llama_pipeline_split(m, T, pp, cfg.parallel.virtual_stages, cfg.parallel.pipeline_layers);
    const PipelineProgram prog = plan_pipeline(pp, split.virtual_stages, stage, cfg.grad_accum_steps(dp),
                                               cfg.parallel.schedule == "interleaved");
    chunks.clear();
    p.slots = prog.slots;
    for (int v = 0; v < split.virtual_stages; ++v) {
      const int g = split.chunk(stage, v);
      chunks.push_back({split.layers(g), prog.slots[size_t(v)], g == 0, g == split.chunks() - 1});
    }
    layout = llama_stage_param_layout(m, tp, split, stage);
  } else {
    layout = llama_param_layout(m, tp);
  }

  // LlamaModel: the parameter buffer (compute dtype) and the gradient buffer (master dtype),
  // padded to a multiple of 64 * dp under ZeRO-1 (src/train/trainer.cpp's buffer_multiple).
  const int64_t multiple = zero ? int64_t(64) * dp : 1;
  p.param_elements = ceil_div(layout.elements, multiple) * multiple;
  p.weights = p.param_elements * int64_t(dtype_size(o.compute));
  p.gradients = p.param_elements * stat;
  p.allocations += 2;
  // AdamW: m and v over its shard, fp32 master weights when the model computes in another dtype,
  // and under ZeRO-1 the shard the gradients are reduce-scattered into.
  p.shard_elements = zero ? p.param_elements / dp : p.param_elements;
  p.optimizer = 2 * p.shard_elements * stat;
  p.allocations += 2;
  if (o.compute != o.master) {
    p.optimizer += p.shard_elements * stat;
    ++p.allocations;
  }
  if (zero) {
    p.gradients += p.shard_elements * stat;
    ++p.allocations;
  }
  // Activations.
  const Count a = activation_count(m, B, T, parse_recompute(cfg.train.recompute), tp, o.compute, o.master,
                                   chunks, pp > 1);
  p.activations = a.bytes;
  p.allocations += a.allocations;
  // Workspace: the RoPE table (T, HD/2, 2) in the master dtype.
  p.rope_bytes = int64_t(T) * (m.head_dim() / 2) * 2 * stat;
  p.workspace = p.rope_bytes;
  ++p.allocations;
  if (o.cuda) {
    // src/cuda/cuda_backend.cpp: the cuBLASLt workspace, then the kernel scratch of the first step.
    p.matmul_workspace_bytes = int64_t(kCudaMatmulWorkspaceBytes);
    // The kernels' own scratch sizes (ltrain/kernels/scratch.h), at this rank's shapes: the norms
    // run on the sequence-parallel rows, attention on this rank's heads.
    const int64_t N = int64_t(B) * T, Ns = ceil_div(N, tp);
    const int Hl = m.num_attention_heads / tp, KVl = m.kv_heads() / tp;
    p.scratch_bytes += int64_t(cuda::rmsnorm_backward_scratch_floats(Ns, m.hidden_size)) * 4;  // dweight partials
    p.scratch_bytes += int64_t(cuda::attention_backward_scratch_floats(B, T, Hl, KVl, m.head_dim())) * 4;
    p.scratch_bytes += int64_t(cuda::embedding_backward_scratch_bytes(N));  // sorted (token, row) keys
    p.scratch_bytes += int64_t(cuda::kSumSquaresScratchBytes);               // sum-of-squares partials
    p.workspace += p.matmul_workspace_bytes + p.scratch_bytes;
    p.allocations += 5;
  }
  // Loading and saving checkpoints go through host memory (src/checkpoint/checkpoint.cpp): nothing.
  if (o.cuda)
    p.reserve = kReserveBytes + (dp * tp * pp > 1 ? kReserveNcclBytes : 0) +
                int64_t(p.allocations) * kReservePerAllocationBytes;
  return p;
}

MemoryPlanOptions memory_plan_options(const Backend& backend) {
  MemoryPlanOptions o;
  o.compute = backend.compute_dtype();
  o.master = backend.master_dtype();
  o.cuda = backend.is_cuda();
  return o;
}

void check_memory_fits(const MemoryPlan& plan, int64_t available_bytes, int64_t total_bytes,
                       const std::string& where) {
  if (plan.total() <= available_bytes) return;
  user_error("this run needs ", gib(plan.total()), " per ", plan.options.cuda ? "GPU" : "process", " but ",
             gib(available_bytes), " of ", gib(total_bytes), " are available on ", where, ": ", plan.breakdown(),
             "; ", hint_for(plan, available_bytes));
}

MemoryPlan check_run_memory(const Config& cfg, int dp, int tp, Backend& backend, int stage) {
  const MemoryPlan plan = memory_plan(cfg, dp, tp, memory_plan_options(backend), stage);
  const char* env = std::getenv("LTRAIN_MEMORY_CHECK");
  if (env && std::string(env) == "0") return plan;
  // What the backend already holds (the cuBLASLt workspace) is part of the plan.
  const int64_t held = int64_t(backend.bytes_allocated());
  if (plan.options.cuda) {
    const DeviceInfo gpu = backend.device_info();  // cudaMemGetInfo on the backend's device
    if (gpu.free_bytes < 0 || gpu.total_bytes < 0) return plan;
    check_memory_fits(plan, gpu.free_bytes + held, gpu.total_bytes, "this GPU (cudaMemGetInfo)");
  } else {
    const int64_t avail = meminfo_bytes("MemAvailable"), total = meminfo_bytes("MemTotal");
    if (avail < 0 || total < 0) return plan;
    check_memory_fits(plan, avail + held, total, "this host (MemAvailable)");
  }
  return plan;
}

}  // namespace ltrain
