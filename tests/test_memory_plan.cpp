// The memory plan (src/train/memory_plan.cpp) against what the model and optimizer really
// allocate: on the CPU backend (fp32) for small models in every recompute mode, and at production
// shapes in the CUDA dtypes (bf16 weights and activations, fp32 master) through a backend that
// only counts allocations, with tensor parallelism and ZeRO-1 (communicators that only report
// their size). Then the refusal: its message names every category, and its hint names exactly
// the single config changes that would fit. On a GPU, the CUDA backend's own count after a
// training step must equal the plan, scratch and cuBLASLt workspace included.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "cuda_test_util.h"
#include "ltrain/bench/bench.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/cuda/cuda_backend.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/train/memory_plan.h"
#include "ltrain/train/pipeline.h"
#include "size_only_comm.h"

namespace ltrain {
namespace {

using test::SizeOnlyCommunicator;

constexpr int64_t GiB = int64_t(1) << 30;

// Counts allocations without memory behind them: tensors get distinct fake addresses (256-byte
// aligned, as cudaMalloc's), which the model only uses to lay out views. Host transfers and copies
// (the RoPE table upload, AdamW's master copy) do nothing; it implements no op, so every compute
// op fails (Backend's default).
class CountingBackend final : public Backend {
 public:
  CountingBackend(DType compute, DType master) : compute_(compute), master_(master) {}
  std::string name() const override { return "counting"; }
  BackendKind kind() const override { return BackendKind::kCpu; }
  DType compute_dtype() const override { return compute_; }
  DType master_dtype() const override { return master_; }
  size_t bytes_allocated() const override { return allocated_; }
  int allocations() const { return allocations_; }
  std::unique_ptr<EventTimer> make_event_timer() override { return make_host_event_timer(); }

 protected:
  Tensor alloc_impl(Shape shape, DType dtype) override {
    Tensor t;
    t.shape = shape;
    t.dtype = dtype;
    t.data = reinterpret_cast<void*>(next_);
    next_ += (std::max<size_t>(t.bytes(), 1) + 255) / 256 * 256;
    allocated_ += t.bytes();
    ++allocations_;
    return t;
  }
  void free_impl(Tensor& t) override {
    if (!t.data) return;
    allocated_ -= t.bytes();
    t.data = nullptr;
  }
  void from_host_impl(Tensor, const void*, DType) override {}
  void to_host_impl(void*, DType, const Tensor&) override {
    LTRAIN_CHECK(false, "CountingBackend cannot run to_host");
  }
  void copy_impl(Tensor, const Tensor&) override {}
  void zero_impl(Tensor) override {}

 private:
  DType compute_, master_;
  uintptr_t next_ = 1 << 20;
  size_t allocated_ = 0;
  int allocations_ = 0;
};

Config small_config() {
  Config c;
  c.model.hidden_size = 64;
  c.model.num_attention_heads = 4;
  c.model.num_key_value_heads = 2;
  c.model.intermediate_size = 96;
  c.model.num_hidden_layers = 3;
  c.model.vocab_size = 101;
  c.model.max_position_embeddings = 16;
  c.train.micro_batch_size = 2;
  c.train.seq_len = 12;
  c.train.global_batch_tokens = 48;
  return c;
}

Config tinyllama() {
  Config c;
  c.model.hidden_size = 2048;
  c.model.intermediate_size = 5632;
  c.model.num_hidden_layers = 22;
  c.model.num_attention_heads = 32;
  c.model.num_key_value_heads = 4;
  c.model.vocab_size = 32000;
  c.model.max_position_embeddings = 2048;
  c.train.seq_len = 2048;
  c.train.micro_batch_size = 8;
  c.train.global_batch_tokens = 8 * 2048 * 4;
  c.train.recompute = "selective";
  return c;
}

Config llama2_7b() {
  Config c;
  c.model.hidden_size = 4096;
  c.model.intermediate_size = 11008;
  c.model.num_hidden_layers = 32;
  c.model.num_attention_heads = 32;
  c.model.num_key_value_heads = 32;
  c.model.vocab_size = 32000;
  c.model.max_position_embeddings = 4096;
  c.train.seq_len = 4096;
  c.train.micro_batch_size = 1;
  c.train.global_batch_tokens = 4194304;
  c.train.recompute = "selective";
  return c;
}

MemoryPlanOptions cpu_options() {
  MemoryPlanOptions o;
  o.compute = o.master = DType::kF32;
  o.cuda = false;
  return o;
}

MemoryPlanOptions cuda_options() { return MemoryPlanOptions{}; }  // bf16 / fp32

// ---- the plan against real allocations ----------------------------------------------------------

TEST(MemoryPlan, MatchesTheCpuModelInEveryRecomputeMode) {
  for (const bool tied : {false, true})
    for (const char* rc : {"none", "selective", "full"}) {
      SCOPED_TRACE(std::string(rc) + (tied ? " tied" : " untied"));
      Config c = small_config();
      c.model.tie_word_embeddings = tied;
      c.train.recompute = rc;
      const MemoryPlan plan = memory_plan(c, 1, 1, cpu_options());
      auto be = make_cpu_backend(DType::kF32);
      LlamaModel model(c.model, *be, c.train.micro_batch_size, c.train.seq_len, parse_recompute(rc));
      EXPECT_EQ(plan.activations, int64_t(model.activation_bytes()));
      EXPECT_EQ(plan.param_elements, model.param_buffer().numel());
      EXPECT_EQ(plan.param_elements, model.grad_buffer().numel());
      EXPECT_GE(plan.param_elements, model.num_params());
      EXPECT_EQ(model.num_params(), llama_num_params(c.model));
      AdamW opt(c.optim, model.parameters());
      // fp32 on the CPU: the weights are the master copy, and no cuBLASLt workspace or scratch.
      EXPECT_EQ(plan.optimizer, 2 * plan.param_elements * 4);
      EXPECT_EQ(plan.workspace, plan.rope_bytes);
      EXPECT_EQ(plan.reserve, 0);
      EXPECT_EQ(plan.resident(), int64_t(be->bytes_allocated()));
      EXPECT_EQ(plan.total(), plan.resident());
    }
  // Recomputation keeps less.
  Config c = small_config();
  c.train.recompute = "none";
  const int64_t none = memory_plan(c, 1, 1, cpu_options()).activations;
  c.train.recompute = "selective";
  const int64_t sel = memory_plan(c, 1, 1, cpu_options()).activations;
  c.train.recompute = "full";
  const int64_t full = memory_plan(c, 1, 1, cpu_options()).activations;
  EXPECT_GT(none, sel);
  EXPECT_GT(sel, full);
}

// Builds the model and optimizer of `c` on a counting backend in the CUDA dtypes for rank
// (dp_rank, tp_rank) of a dp x tp layout, and compares every category with the plan.
void expect_plan_matches_counted(const Config& c, int dp, int tp) {
  SCOPED_TRACE(strfmt("dp %d tp %d zero %d recompute %s B %d T %d", dp, tp, c.parallel.zero,
                      c.train.recompute.c_str(), c.train.micro_batch_size, c.train.seq_len));
  CountingBackend be(DType::kBF16, DType::kF32);
  SizeOnlyCommunicator tp_comm(tp, tp - 1), dp_comm(dp, dp / 2);
  const bool zero = c.parallel.zero == 1 && dp > 1;
  MemoryPlanOptions o = cuda_options();
  o.cuda = false;  // the counting backend has no workspace or scratch: compared separately below
  const MemoryPlan plan = memory_plan(c, dp, tp, o);
  LlamaModel model(c.model, be, c.train.micro_batch_size, c.train.seq_len, parse_recompute(c.train.recompute),
                   zero ? 64 * dp : 1, tp > 1 ? &tp_comm : nullptr, tp > 1 ? &tp_comm : nullptr);
  const int64_t after_model = int64_t(be.bytes_allocated());
  EXPECT_EQ(plan.activations, int64_t(model.activation_bytes()));
  EXPECT_EQ(plan.param_elements, model.param_buffer().numel());
  EXPECT_EQ(plan.weights, int64_t(model.param_buffer().bytes()));
  EXPECT_EQ(model.param_buffer().dtype, DType::kBF16);
  EXPECT_EQ(after_model, plan.weights + int64_t(model.grad_buffer().bytes()) + plan.activations + plan.rope_bytes);
  AdamW opt(c.optim, model.parameters(), &dp_comm, zero, nullptr);
  EXPECT_EQ(plan.resident(), int64_t(be.bytes_allocated()));
  EXPECT_EQ(plan.gradients + plan.optimizer, int64_t(be.bytes_allocated()) - after_model + int64_t(model.grad_buffer().bytes()));
  // Each allocation is counted (the reserve covers their page rounding).
  EXPECT_EQ(plan.allocations, be.allocations());
  // The CUDA plan adds exactly the cuBLASLt workspace and the scratch.
  const MemoryPlan with_cuda = memory_plan(c, dp, tp, cuda_options());
  EXPECT_EQ(with_cuda.resident(), plan.resident() + int64_t(kCudaMatmulWorkspaceBytes) + with_cuda.scratch_bytes);
  EXPECT_EQ(with_cuda.allocations, plan.allocations + 5);
}

TEST(MemoryPlan, MatchesTheModelAtProductionShapesInCudaDtypes) {
  Config t = tinyllama();
  expect_plan_matches_counted(t, 1, 1);
  t.train.recompute = "none";
  expect_plan_matches_counted(t, 1, 1);
  t.train.recompute = "full";
  t.model.tie_word_embeddings = true;
  expect_plan_matches_counted(t, 1, 1);
  Config l = llama2_7b();
  l.model.num_hidden_layers = 4;
  l.train.micro_batch_size = 2;
  expect_plan_matches_counted(l, 1, 1);
}

TEST(MemoryPlan, MatchesTheModelUnderTensorParallelismAndZero) {
  Config t = tinyllama();
  t.train.recompute = "none";
  expect_plan_matches_counted(t, 1, 2);
  expect_plan_matches_counted(t, 1, 4);
  t.train.recompute = "selective";
  t.parallel.zero = 1;
  expect_plan_matches_counted(t, 4, 1);
  expect_plan_matches_counted(t, 2, 2);
  // Odd sizes: rows not divisible into 64-element views, a vocabulary split over 2.
  Config s = small_config();
  s.model.vocab_size = 102;
  s.parallel.zero = 1;
  for (const char* rc : {"none", "selective", "full"}) {
    s.train.recompute = rc;
    expect_plan_matches_counted(s, 3, 2);
  }
}

// Every stage of a pipeline layout: its model (its chunks, their slots) and optimizer on a
// counting backend against the plan of that stage.
void expect_stages_match_counted(const Config& c, int dp, int tp) {
  const int pp = c.parallel.pipeline;
  const PipelineSplit split = llama_pipeline_split(c.model, c.train.seq_len, pp, c.parallel.virtual_stages,
                                                   c.parallel.pipeline_layers);
  int64_t largest = 0;
  for (int stage = 0; stage < pp; ++stage) {
    SCOPED_TRACE(strfmt("pipeline %d stage %d schedule %s x%d dp %d tp %d recompute %s", pp, stage,
                        c.parallel.schedule.c_str(), c.parallel.virtual_stages, dp, tp, c.train.recompute.c_str()));
    CountingBackend be(DType::kBF16, DType::kF32);
    SizeOnlyCommunicator tp_comm(tp, 0), dp_comm(dp, 0), pp_comm(pp, stage);
    const bool zero = c.parallel.zero == 1 && dp > 1;
    MemoryPlanOptions o = cuda_options();
    o.cuda = false;
    const MemoryPlan plan = memory_plan(c, dp, tp, o, stage);
    const PipelineProgram prog = plan_pipeline(pp, split.virtual_stages, stage, c.grad_accum_steps(dp),
                                               c.parallel.schedule == "interleaved");
    const PipelineStage st{split, stage, prog.slots, &pp_comm, &pp_comm};
    LlamaModel model(c.model, be, c.train.micro_batch_size, c.train.seq_len, parse_recompute(c.train.recompute),
                     zero ? 64 * dp : 1, tp > 1 ? &tp_comm : nullptr, tp > 1 ? &tp_comm : nullptr, &st);
    EXPECT_EQ(plan.activations, int64_t(model.activation_bytes()));
    EXPECT_EQ(plan.param_elements, model.param_buffer().numel());
    AdamW opt(c.optim, model.parameters(), &dp_comm, zero, nullptr);
    EXPECT_EQ(plan.resident(), int64_t(be.bytes_allocated()));
    EXPECT_EQ(plan.allocations, be.allocations());
    largest = std::max(largest, memory_plan(c, dp, tp, cuda_options(), stage).total());
  }
  EXPECT_EQ(memory_plan(c, dp, tp, cuda_options()).total(), largest) << "stage -1 plans the largest stage";
}

TEST(MemoryPlan, MatchesEveryPipelineStage) {
  Config t = tinyllama();
  t.model.num_hidden_layers = 8;
  t.train.micro_batch_size = 2;
  t.train.global_batch_tokens = 2 * 2048 * 8;  // 8 micro-batches
  t.parallel.pipeline = 4;
  expect_stages_match_counted(t, 1, 1);
  t.model.tie_word_embeddings = true;
  t.train.recompute = "full";
  t.parallel.zero = 1;
  t.train.global_batch_tokens = 2 * 2048 * 8 * 2;
  expect_stages_match_counted(t, 2, 2);
  t.parallel.pipeline = 2;
  t.parallel.schedule = "interleaved";
  t.parallel.virtual_stages = 2;
  t.train.recompute = "none";
  expect_stages_match_counted(t, 2, 1);
  // 1F1B keeps P - stage micro-batches in flight: the first stage the most.
  Config u = tinyllama();
  u.model.num_hidden_layers = 8;
  u.train.global_batch_tokens = 8 * 2048 * 8;
  u.parallel.pipeline = 4;
  for (int stage = 0; stage < 4; ++stage)
    EXPECT_EQ(plan_pipeline(4, 1, stage, 8, false).slots, std::vector<int>{4 - stage}) << stage;
  EXPECT_GT(memory_plan(u, 1, 1, cuda_options(), 0).activations, memory_plan(u, 1, 1, cuda_options(), 3).activations);
  // Four stages hold about a quarter of the weights each.
  const int64_t whole = memory_plan(tinyllama(), 1, 1, cuda_options()).weights;
  EXPECT_LT(memory_plan(u, 1, 1, cuda_options(), 1).weights, whole / 3);
}

TEST(MemoryPlan, ClosedFormsForLlama2_7B) {
  // 6,738,415,616 parameters, every view a multiple of 64: the flat buffer has no padding.
  Config c = llama2_7b();
  const int64_t n = 6738415616;
  ASSERT_EQ(llama_num_params(c.model), n);
  MemoryPlan p = memory_plan(c, 1, 1, cuda_options());
  EXPECT_EQ(p.param_elements, n);
  EXPECT_EQ(p.weights, 2 * n);                  // bf16
  EXPECT_EQ(p.gradients, 4 * n);                // fp32
  EXPECT_EQ(p.optimizer, 3 * 4 * n);            // m, v, fp32 master
  EXPECT_EQ(p.matmul_workspace_bytes, 32 << 20);
  // Scratch at B = 1, T = 4096, C = 4096, H = KV = 32, HD = 128: rmsnorm 256 chunks x C floats;
  // attention D (B x H x T floats) and the dQ partials of 9 key-tile splits (ceil(264 / (B H)))
  // of B x T x H x HD floats each (no per-head dK/dV partials without GQA); embedding's sorted
  // keys N x 8 bytes; 1025 doubles for the sum of squares.
  EXPECT_EQ(p.scratch_bytes, int64_t(256) * 4096 * 4 + (int64_t(32) * 4096 + int64_t(9) * 4096 * 32 * 128) * 4 +
                                 4096 * 8 + 1025 * 8);
  EXPECT_EQ(p.rope_bytes, 4096 * 64 * 2 * 4);
  // ZeRO-1 over 8: padded to a multiple of 64 * 8, optimizer state and the reduce-scattered
  // gradient shard divided by 8; the bf16 weights and fp32 gradients stay whole.
  c.parallel.zero = 1;
  p = memory_plan(c, 8, 1, cuda_options());
  const int64_t padded = (n + 511) / 512 * 512;
  EXPECT_EQ(p.param_elements, padded);
  EXPECT_EQ(p.weights, 2 * padded);
  EXPECT_EQ(p.gradients, 4 * padded + 4 * padded / 8);
  EXPECT_EQ(p.optimizer, 3 * 4 * padded / 8);
  EXPECT_EQ(p.reserve, kReserveBytes + kReserveNcclBytes + int64_t(p.allocations) * kReservePerAllocationBytes);
  // So LLaMA-2 7B at T = 4096 trains (and resumes: loading a checkpoint stages nothing on the
  // device) with ZeRO-1 on 8 GPUs of 80 GB.
  EXPECT_LT(p.total(), 79 * GiB);
}

// ---- the refusal ---------------------------------------------------------------------------------

std::string refusal(const MemoryPlan& plan, int64_t available) {
  try {
    check_memory_fits(plan, available, 80 * GiB, "test GPU");
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(MemoryCheck, RefusalNamesEveryCategoryAndAHint) {
  const MemoryPlan plan = memory_plan(llama2_7b(), 1, 1, cuda_options());
  EXPECT_NO_THROW(check_memory_fits(plan, plan.total(), plan.total()));
  const std::string msg = refusal(plan, plan.total() - 1);
  ASSERT_FALSE(msg.empty()) << "a plan one byte over must be refused";
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  for (const char* part : {"weights", "gradients", "optimizer state", "activations", "workspace",
                           "reserve", "GiB", "test GPU", "total",
                           "parallel.tensor", "parallel.zero=1"})
    EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  // 7B on one 80 GiB GPU: weights, gradients and AdamW state alone are ~113 GiB, so no change of
  // batch or recomputation fits.
  const std::string over = refusal(plan, 80 * GiB);
  EXPECT_NE(over.find("no single change"), std::string::npos) << over;
  EXPECT_NE(over.find("this run needs"), std::string::npos) << over;
}

TEST(MemoryCheck, RefusalSuggestsAPipelineSizeThatFits) {
  Config c = llama2_7b();
  c.train.global_batch_tokens = 4096 * 8;
  c.parallel.data = 0;
  // 4 GPUs as data=4 with ZeRO-1 already: still too big for 40 GiB; four stages fit.
  c.parallel.zero = 1;
  const MemoryPlan plan = memory_plan(c, 4, 1, cuda_options());
  Config p = c;
  p.parallel.pipeline = 4;
  const int64_t staged = memory_plan(p, 1, 1, cuda_options()).total();
  ASSERT_LT(staged, plan.total());
  const std::string msg = refusal(plan, staged);
  EXPECT_NE(msg.find("parallel.pipeline=4 ("), std::string::npos) << msg;
}

// The hint lists a change exactly when the re-planned run fits.
void expect_hint(const MemoryPlan& plan, int64_t available, const std::string& change, const Config& changed,
                 int dp, int tp) {
  const std::string msg = refusal(plan, available);
  ASSERT_FALSE(msg.empty());
  const bool fits = memory_plan(changed, dp, tp, plan.options).total() <= available;
  EXPECT_EQ(msg.find(change + " (") != std::string::npos, fits) << change << (fits ? " fits" : " does not fit")
                                                                 << " but the message says: " << msg;
}

TEST(MemoryCheck, HintNamesTheChangesThatFit) {
  Config c = tinyllama();
  c.train.recompute = "none";
  const MemoryPlan plan = memory_plan(c, 1, 1, cuda_options());
  Config sel = c, full = c, b4 = c, b2 = c;
  sel.train.recompute = "selective";
  full.train.recompute = "full";
  b4.train.micro_batch_size = 4;
  b2.train.micro_batch_size = 2;
  const int64_t need_sel = memory_plan(sel, 1, 1, plan.options).total();
  const int64_t need_full = memory_plan(full, 1, 1, plan.options).total();
  const int64_t need_b4 = memory_plan(b4, 1, 1, plan.options).total();
  ASSERT_LT(need_full, need_sel);
  ASSERT_LT(need_sel, plan.total());
  // Only full recomputation fits.
  for (const int64_t avail : {need_full, need_sel, need_b4, need_sel - 1, plan.total() - 1}) {
    SCOPED_TRACE(avail);
    expect_hint(plan, avail, "train.recompute=full", full, 1, 1);
    expect_hint(plan, avail, "train.recompute=selective", sel, 1, 1);
  }
  // The largest micro-batch that fits (and divides the global batch) is named.
  std::string msg = refusal(plan, need_b4);
  EXPECT_NE(msg.find("train.micro_batch_size=4 ("), std::string::npos) << msg;
  msg = refusal(plan, memory_plan(b2, 1, 1, plan.options).total());
  EXPECT_NE(msg.find("train.micro_batch_size=2 ("), std::string::npos) << msg;
  EXPECT_EQ(msg.find("train.micro_batch_size=4"), std::string::npos) << msg;
  // micro_batch_size 3 would not divide 8 x 2048 x 4 tokens: never suggested.
  EXPECT_EQ(msg.find("train.micro_batch_size=3"), std::string::npos) << msg;

  // Data parallelism: ZeRO-1 shards the optimizer state; tensor parallelism over the same ranks.
  Config d = tinyllama();
  const MemoryPlan dplan = memory_plan(d, 4, 1, cuda_options());
  Config z = d, t2 = d;
  z.parallel.zero = 1;
  t2.parallel.tensor = 2;
  const int64_t need_zero = memory_plan(z, 4, 1, dplan.options).total();
  ASSERT_LT(need_zero, dplan.total());
  msg = refusal(dplan, need_zero);
  EXPECT_NE(msg.find("parallel.zero=1 ("), std::string::npos) << msg;
  expect_hint(dplan, need_zero, "parallel.tensor=2", t2, 2, 2);
  expect_hint(dplan, memory_plan(t2, 2, 2, dplan.options).total(), "parallel.tensor=2", t2, 2, 2);
}

TEST(MemoryCheck, RunCheckRefusesAModelTheHostCannotHold) {
  auto be = make_cpu_backend(DType::kF32);
  // The small model fits anywhere; the plan describes this backend.
  const MemoryPlan small = check_run_memory(small_config(), 1, 1, *be);
  EXPECT_FALSE(small.options.cuda);
  EXPECT_EQ(small.options.compute, DType::kF32);
  EXPECT_EQ(small.options.master, DType::kF32);
  // 7B layers x 2000 (about 400B parameters, over 6 TB of fp32 state): refused before allocating.
  Config huge = llama2_7b();
  huge.model.num_hidden_layers = 2000;
  try {
    check_run_memory(huge, 1, 1, *be);
    ADD_FAILURE() << "a 400B-parameter model was not refused";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("this host (MemAvailable)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("per process"), std::string::npos) << msg;
    EXPECT_NE(msg.find("activations"), std::string::npos) << msg;
  }
  EXPECT_EQ(be->bytes_allocated(), 0u);
  // ltrain bench checks before building the model.
  huge.device = "cpu";
  huge.train.global_batch_tokens = 4096;
  BenchOptions o;
  o.steps = 1;
  o.warmup = 0;
  EXPECT_THROW(run_bench(huge, o, *ParallelContext::single_process()), UserError);
}

// ---- on a GPU ------------------------------------------------------------------------------------

TEST(MemoryPlanGpu, CudaBackendHoldsExactlyThePlanAfterAStep) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (const char* rc : {"none", "selective", "full"}) {
    SCOPED_TRACE(rc);
    Config c;
    c.model.hidden_size = 256;
    c.model.num_attention_heads = 4;
    c.model.num_key_value_heads = 2;
    c.model.intermediate_size = 352;
    c.model.num_hidden_layers = 2;
    c.model.vocab_size = 512;
    c.model.max_position_embeddings = 64;
    c.train.micro_batch_size = 2;
    c.train.seq_len = 64;
    c.train.recompute = rc;
    auto be = make_cuda_backend(0);
    const MemoryPlan plan = check_run_memory(c, 1, 1, *be);
    EXPECT_TRUE(plan.options.cuda);
    EXPECT_EQ(int64_t(be->bytes_allocated()), int64_t(kCudaMatmulWorkspaceBytes));
    LlamaModel model(c.model, *be, 2, 64, parse_recompute(rc));
    model.init_weights(1);
    AdamW opt(c.optim, model.parameters());
    std::mt19937 rng(3);
    std::vector<int32_t> in(128), tg(128);
    for (int i = 0; i < 128; ++i) in[size_t(i)] = int32_t(rng() % 512), tg[size_t(i)] = int32_t(rng() % 512);
    for (int step = 1; step <= 2; ++step) {
      model.zero_grads();
      model.forward_backward(in.data(), tg.data(), 2, 64, 1.0 / 128);
      opt.step(step, 1e-3);
      be->synchronize();
      EXPECT_EQ(int64_t(be->bytes_allocated()), plan.resident()) << "after step " << step;
    }
    size_t free_b = 0, total_b = 0;
    ASSERT_TRUE(cuda_memory_info(&free_b, &total_b));
    EXPECT_GT(total_b, free_b);
  }
}

}  // namespace
}  // namespace ltrain
