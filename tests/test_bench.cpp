// `ltrain bench` pieces: the FLOP formulas against hand-computed values, the peak table, the
// profiling backend (it must not change a single bit of training), the timing communicator, and a
// tiny in-process benchmark run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>

#include "ltrain/bench/bench.h"
#include "ltrain/core/check.h"
#include "ltrain/cuda/cuda_backend.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "test_util.h"

namespace ltrain {
namespace {

// bench runs on a process grid; the tests' is one process without MPI.
std::unique_ptr<ParallelContext> single_process() { return ParallelContext::single_process(); }

ModelConfig llama2_7b() {
  ModelConfig m;
  m.hidden_size = 4096;
  m.intermediate_size = 11008;
  m.num_hidden_layers = 32;
  m.num_attention_heads = 32;
  m.num_key_value_heads = 32;
  m.vocab_size = 32000;
  m.max_position_embeddings = 4096;
  return m;
}

TEST(BenchFlops, Llama2_7B_At4096) {
  // The formula of ../shared/REFERENCE.md with LLaMA-2 7B's literal sizes:
  // L=32, d=4096, H=32, KV=32, hd=128, ffn=11008, V=32000, T=4096.
  const double bracket = 32.0 * (4096.0 * (32 + 2 * 32) * 128 + 32.0 * 128 * 4096 + 3.0 * 4096 * 11008) +
                         4096.0 * 32000;
  const double attn = 32.0 * 32 * 128 * 4096;
  EXPECT_EQ(bracket, 6607077376.0);  // 6.61e9 parameters in matrix products
  EXPECT_EQ(flops_per_token(llama2_7b(), 4096), 6 * bracket + 6 * attn);
  EXPECT_EQ(flops_per_token(llama2_7b(), 4096), 42863689728.0);
  EXPECT_EQ(flops_per_token_palm(llama2_7b(), 4096), 6 * bracket + 12 * attn);
  EXPECT_EQ(flops_per_token_palm(llama2_7b(), 4096), 46084915200.0);
  // The attention term scales with T, the rest does not.
  EXPECT_EQ(flops_per_token(llama2_7b(), 2048), 6 * bracket + 3 * attn);
}

TEST(BenchFlops, GroupedQueryAndTiedEmbeddings) {
  // TinyLlama: d=2048, H=32, KV=4, hd=64, ffn=5632, L=22, V=32000, T=2048.
  ModelConfig m;
  m.hidden_size = 2048;
  m.intermediate_size = 5632;
  m.num_hidden_layers = 22;
  m.num_attention_heads = 32;
  m.num_key_value_heads = 4;
  m.vocab_size = 32000;
  const double bracket = 22.0 * (2048.0 * (32 + 2 * 4) * 64 + 32.0 * 64 * 2048 + 3.0 * 2048 * 5632) + 2048.0 * 32000;
  EXPECT_EQ(flops_per_token(m, 2048), 6 * bracket + 6 * 22.0 * 32 * 64 * 2048);
  EXPECT_EQ(flops_per_token_palm(m, 2048), 6 * bracket + 12 * 22.0 * 32 * 64 * 2048);
  // Tied embeddings: the output projection is still a matrix product of d*V.
  m.tie_word_embeddings = true;
  EXPECT_EQ(flops_per_token(m, 2048), 6 * bracket + 6 * 22.0 * 32 * 64 * 2048);
}

TEST(BenchPeak, TableByDeviceName) {
  std::string matched;
  EXPECT_EQ(lookup_peak_flops("NVIDIA H100 80GB HBM3", &matched), 989e12);
  EXPECT_EQ(matched, "H100");
  EXPECT_EQ(lookup_peak_flops("NVIDIA H200"), 989e12);
  EXPECT_EQ(lookup_peak_flops("NVIDIA H200 NVL"), 989e12);
  EXPECT_EQ(lookup_peak_flops("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(lookup_peak_flops("NVIDIA A100-PCIE-40GB"), 312e12);
  EXPECT_EQ(lookup_peak_flops("NVIDIA H100 PCIe", &matched), 756e12);  // the specific entry wins
  EXPECT_EQ(matched, "H100 PCIe");
  EXPECT_FALSE(lookup_peak_flops("NVIDIA GeForce RTX 4090").has_value());
  EXPECT_FALSE(lookup_peak_flops("Intel(R) Xeon(R) Processor (2 threads)").has_value());
  EXPECT_FALSE(lookup_peak_flops("").has_value());
  for (const auto& e : peak_table()) EXPECT_GT(e.flops, 1e14) << e.match;
}

ModelConfig tiny_config() {
  ModelConfig m;
  m.hidden_size = 32;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.intermediate_size = 48;
  m.num_hidden_layers = 2;
  m.vocab_size = 37;
  m.max_position_embeddings = 16;
  return m;
}

std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> v(size_t(t.numel()));
  be.to_host(v.data(), DType::kF32, t);
  return v;
}

TEST(BenchOpProfiler, ObservesBitForBitAndTimesOps) {
  const ModelConfig cfg = tiny_config();
  const int B = 2, T = 9;
  std::mt19937_64 rng(5);
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; ++i) tokens[i] = int32_t(rng() % 37), targets[i] = int32_t(rng() % 37);

  auto raw_a = make_cpu_backend(DType::kF32);
  auto raw_b = make_cpu_backend(DType::kF32);
  OpProfiler prof(*raw_b);
  prof.set_enabled(true);
  EXPECT_EQ(raw_b->observer(), &prof);
  EXPECT_EQ(&prof.backend(), raw_b.get());

  LlamaModel ma(cfg, *raw_a, B, T, Recompute::kSelective);
  LlamaModel mb(cfg, *raw_b, B, T, Recompute::kSelective);
  EXPECT_EQ(raw_b->bytes_allocated(), raw_a->bytes_allocated());
  ma.init_weights(3);
  mb.init_weights(3);
  OptimConfig oc;
  oc.grad_clip = 0.01;  // clipping active, so sum_squares feeds the update
  AdamW oa(oc, ma.parameters()), ob(oc, mb.parameters());
  prof.reset();
  for (int step = 1; step <= 2; ++step) {
    ma.zero_grads();
    mb.zero_grads();
    const double la = ma.forward_backward(tokens.data(), targets.data(), B, T, 1.0 / (B * T));
    const double lb = mb.forward_backward(tokens.data(), targets.data(), B, T, 1.0 / (B * T));
    EXPECT_EQ(la, lb) << "step " << step;
    auto ga = host(*raw_a, ma.grad_buffer()), gb = host(*raw_b, mb.grad_buffer());
    ASSERT_EQ(ga.size(), gb.size());
    EXPECT_EQ(0, std::memcmp(ga.data(), gb.data(), ga.size() * sizeof(float))) << "gradients differ, step " << step;
    const StepStats sa = oa.step(step, 1e-2), sb = ob.step(step, 1e-2);
    EXPECT_EQ(sa.grad_norm, sb.grad_norm);
    auto wa = host(*raw_a, ma.param_buffer()), wb = host(*raw_b, mb.param_buffer());
    EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float))) << "weights differ, step " << step;
  }
  prof.flush();  // read the marks of the ops since the last synchronize()
  for (OpFamily f : {OpFamily::kMatmul, OpFamily::kAttention, OpFamily::kRmsnorm, OpFamily::kRope,
                     OpFamily::kSwiglu, OpFamily::kCrossEntropy, OpFamily::kEmbedding, OpFamily::kOptimizer}) {
    EXPECT_GT(prof.calls(f), 0) << op_family_name(f);
    EXPECT_GT(prof.seconds(f), 0.0) << op_family_name(f);
  }
  EXPECT_GT(prof.total_seconds(), prof.seconds(OpFamily::kMatmul));
  EXPECT_NE(prof.method().find("host clock"), std::string::npos) << prof.method();
  // Bytes for the memory-bound families, FLOPs for matmul and attention; embedding_backward's
  // traffic depends on the distinct tokens and is not counted.
  for (OpFamily f : {OpFamily::kRmsnorm, OpFamily::kRope, OpFamily::kSwiglu, OpFamily::kCrossEntropy,
                     OpFamily::kOptimizer})
    EXPECT_GT(prof.bytes(f), 0) << op_family_name(f);
  EXPECT_EQ(prof.bytes(OpFamily::kEmbedding), -1);
  EXPECT_EQ(prof.bytes(OpFamily::kMatmul), -1);
  EXPECT_GT(prof.flops(OpFamily::kMatmul), 0);
  EXPECT_GT(prof.flops(OpFamily::kAttention), 0);
  EXPECT_EQ(prof.flops(OpFamily::kRmsnorm), 0);

  // Disabled, it records nothing.
  prof.reset();
  prof.set_enabled(false);
  mb.zero_grads();
  mb.forward_backward(tokens.data(), targets.data(), B, T, 1.0 / (B * T));
  EXPECT_EQ(prof.total_seconds(), 0.0);
  EXPECT_EQ(prof.calls(OpFamily::kMatmul), 0);
}

TEST(BenchOpProfiler, CountsBytesAndFlopsPerOp) {
  auto raw = make_cpu_backend(DType::kF32);
  OpProfiler prof(*raw);
  Backend& be = *raw;
  Tensor a = be.alloc({6, 8}, DType::kF32), b = be.alloc({8, 5}, DType::kF32), c = be.alloc({6, 5}, DType::kF32);
  Tensor x = be.alloc({6, 8}, DType::kF32), w = be.alloc({8}, DType::kF32), r = be.alloc({6}, DType::kF32);
  prof.set_enabled(true);
  prof.reset();
  be.matmul(c, a, b, false, false, 1.0f, 0.0f);
  be.matmul(a, c, b, false, true, 1.0f, 0.0f);  // (6, 5) @ (8, 5)^T: K = 5
  be.add(x, x, a);
  be.rmsnorm_forward(x, r, a, w, 1e-5f);
  be.rmsnorm_backward(x, w, a, a, w, r);
  be.copy(x, a);
  be.copy(x, x);  // same buffer: nothing moves
  be.zero(x);
  be.to_host(std::vector<float>(48).data(), DType::kF32, x);
  prof.flush();
  EXPECT_EQ(prof.flops(OpFamily::kMatmul), 2.0 * 6 * 5 * 8 + 2.0 * 6 * 8 * 5);
  EXPECT_EQ(prof.calls(OpFamily::kMatmul), 2);
  EXPECT_EQ(prof.bytes(OpFamily::kAdd), 3 * 48 * 4.0);
  // forward: out, rstd, inp, weight; backward: dout, inp, weight, rstd, and dinp, dweight twice.
  EXPECT_EQ(prof.bytes(OpFamily::kRmsnorm), (48 + 6 + 48 + 8) * 4.0 + (48 + 48 + 8 + 6 + 2 * (48 + 8)) * 4.0);
  EXPECT_EQ(prof.bytes(OpFamily::kMemory), 2 * 48 * 4.0 + 48 * 4.0);
  EXPECT_EQ(prof.calls(OpFamily::kMemory), 3);
  EXPECT_EQ(prof.bytes(OpFamily::kHost), -1);
  EXPECT_EQ(prof.calls(OpFamily::kHost), 1);
  EXPECT_GE(prof.seconds(OpFamily::kMatmul), 0.0);
  prof.reset();
  EXPECT_EQ(prof.bytes(OpFamily::kAdd), 0);
  EXPECT_EQ(prof.calls(OpFamily::kHost), 0);
  prof.set_enabled(false);
  for (Tensor* t : {&a, &b, &c, &x, &w, &r}) be.free(*t);
  EXPECT_EQ(raw->bytes_allocated(), 0u);
}

TEST(BenchOpProfiler, CopyBandwidthIsMeasured) {
  auto raw = make_cpu_backend(DType::kF32);
  const double gbps = measure_copy_bandwidth(*raw, size_t(8) << 20, 3);
  EXPECT_TRUE(std::isfinite(gbps)) << gbps;
  EXPECT_GT(gbps, 0.05);  // any machine copies faster than 50 MB/s
  EXPECT_LT(gbps, 1e5);
  EXPECT_EQ(raw->bytes_allocated(), 0u);
}

TEST(BenchTimingCommunicator, ForwardsAndCounts) {
  auto single = make_single_communicator();
  TimingCommunicator c(*single);
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.sum(2.5), 2.5);
  EXPECT_EQ(c.max(-1.0), -1.0);
  float x[3] = {1, 2, 3};
  Tensor t;
  t.data = x;
  t.shape = Shape{3};
  c.wait(c.all_reduce_sum_start(t));
  c.barrier();
  EXPECT_EQ(x[2], 3.0f);
  EXPECT_EQ(c.calls(), 5);
  EXPECT_GE(c.seconds(), 0.0);
  c.reset();
  EXPECT_EQ(c.calls(), 0);
}

Config tiny_bench_config() {
  Config c;
  c.device = "cpu";
  c.model = tiny_config();
  c.train.seq_len = 16;
  c.train.micro_batch_size = 2;
  c.train.global_batch_tokens = 64;  // two micro-batches
  return c;
}

TEST(BenchRun, FiguresAreConsistent) {
  BenchOptions o;
  o.warmup = 1;
  o.steps = 3;
  o.profile = true;
  const auto r = run_bench(tiny_bench_config(), o, *single_process());
  EXPECT_EQ(r["backend"], "cpu");
  EXPECT_EQ(r["world_size"], 1);
  EXPECT_EQ(r["grad_accum_steps"], 2);
  EXPECT_EQ(r["tokens_per_step"], 64);
  EXPECT_EQ(r["step_ms_all"].size(), 3u);
  const double step_ms = r["step_ms"];
  EXPECT_GT(step_ms, 0);
  EXPECT_LE(r["step_ms_min"].get<double>(), step_ms);
  EXPECT_GE(r["step_ms_max"].get<double>(), step_ms);
  EXPECT_NEAR(r["tokens_per_sec"].get<double>(), 64 / (step_ms / 1e3), 1e-6);
  EXPECT_EQ(r["tokens_per_sec_per_rank"], r["tokens_per_sec"]);
  EXPECT_EQ(r["flops_per_token"].get<double>(), flops_per_token(tiny_config(), 16));
  EXPECT_NEAR(r["tflops_per_rank"].get<double>(),
              flops_per_token(tiny_config(), 16) * r["tokens_per_sec"].get<double>() / 1e12, 1e-12);
  EXPECT_TRUE(r["mfu"].is_null());  // the CPU has no peak
  EXPECT_TRUE(r["mfu_palm"].is_null());
  EXPECT_TRUE(r["scaling_efficiency"].is_null());
  EXPECT_GT(r["memory_bytes"].get<double>(), 0);
  EXPECT_NEAR(r["loss_first"].get<double>(), std::log(37.0), 0.5);
  ASSERT_TRUE(r["profile"].is_object());
  bool matmul_seen = false;
  const auto& prof = r["profile"];
  const double copy = prof["copy_bandwidth_gb_per_s"].get<double>();
  EXPECT_GT(copy, 0);
  for (const auto& f : prof["families"]) {
    const std::string name = f["name"];
    if (name == "matmul") {
      matmul_seen = f["ms_per_step"].get<double>() > 0;
      EXPECT_GT(f["tflops"].get<double>(), 0);
      EXPECT_TRUE(f["gb_per_s"].is_null());
    }
    if (name == "rmsnorm" || name == "swiglu" || name == "optimizer") {
      ASSERT_TRUE(f["gb_per_s"].is_number()) << name;
      EXPECT_GT(f["gb_per_s"].get<double>(), 0) << name;
      EXPECT_NEAR(f["percent_of_copy_bandwidth"].get<double>(), 100 * f["gb_per_s"].get<double>() / copy, 1e-6);
      EXPECT_NEAR(f["gb_per_s"].get<double>(),
                  f["bytes_per_step"].get<double>() / (f["ms_per_step"].get<double>() * 1e-3) / 1e9, 1e-6);
    }
    if (name == "embedding") EXPECT_TRUE(f["gb_per_s"].is_null());
  }
  EXPECT_TRUE(matmul_seen);
  EXPECT_NE(prof["method"].get<std::string>().find("host clock"), std::string::npos);
  // The plan predicts what the backend holds (the CPU has no workspace or scratch beyond RoPE).
  EXPECT_EQ(r["memory_plan"]["resident_bytes"].get<double>(), r["memory_bytes"].get<double>());
  EXPECT_EQ(r["deterministic"], false);
  const std::string report = format_bench_report(r);
  EXPECT_NE(report.find("tokens/s"), std::string::npos);
  EXPECT_NE(report.find("MFU            n/a"), std::string::npos) << report;
  EXPECT_NE(report.find("matmul"), std::string::npos) << report;
  EXPECT_NE(report.find("device-to-device copy"), std::string::npos) << report;
  EXPECT_NE(report.find("memory plan"), std::string::npos) << report;

  // A given peak gives an MFU, and the baseline an efficiency.
  o.profile = false;
  o.peak_tflops = 0.001;
  o.baseline_tokens_per_sec_per_rank = 1000.0;
  const auto r2 = run_bench(tiny_bench_config(), o, *single_process());
  EXPECT_NEAR(r2["mfu"].get<double>(), r2["tflops_per_rank"].get<double>() / 0.001, 1e-9);
  EXPECT_NEAR(r2["mfu_palm"].get<double>(), r2["tflops_per_rank_palm"].get<double>() / 0.001, 1e-9);
  EXPECT_GT(r2["mfu_palm"].get<double>(), r2["mfu"].get<double>());
  EXPECT_EQ(r2["peak_source"], "--peak-tflops");
  EXPECT_NEAR(r2["scaling_efficiency"].get<double>(), r2["tokens_per_sec_per_rank"].get<double>() / 1000.0, 1e-12);
  EXPECT_TRUE(r2["profile"].is_null());
  EXPECT_NE(format_bench_report(r2).find("scaling"), std::string::npos);
}

// `ltrain bench --attention`: attention alone at the config's shape; the figures follow from the
// times and FlashAttention-2's FLOP convention, on the CPU and (when there is one) the GPU.
void check_attention_bench(Config c, const std::string& backend_name) {
  BenchOptions o;
  o.warmup = 1;
  o.steps = 3;
  const auto r = run_attention_bench(c, o, *single_process());
  const int B = c.train.micro_batch_size, T = c.train.seq_len, H = c.model.num_attention_heads;
  const int HD = c.model.head_dim();
  EXPECT_EQ(r["shape"]["batch"], B);
  EXPECT_EQ(r["shape"]["seq_len"], T);
  EXPECT_EQ(r["shape"]["heads"], H);
  EXPECT_EQ(r["shape"]["kv_heads"], c.model.kv_heads());
  EXPECT_EQ(r["shape"]["head_dim"], HD);
  const double f_flops = 4.0 * B * H * HD * (double(T) * (T + 1) / 2);
  EXPECT_EQ(r["forward_flops"].get<double>(), f_flops);
  EXPECT_EQ(r["backward_flops"].get<double>(), 2.5 * f_flops);
  const double f_ms = r["forward_ms"], b_ms = r["backward_ms"];
  ASSERT_GT(f_ms, 0) << backend_name;
  ASSERT_GT(b_ms, 0) << backend_name;
  EXPECT_NEAR(r["forward_tflops"].get<double>(), f_flops / (f_ms * 1e-3) / 1e12, 1e-9);
  EXPECT_NEAR(r["backward_tflops"].get<double>(), 2.5 * f_flops / (b_ms * 1e-3) / 1e12, 1e-9);
  EXPECT_NEAR(r["total_tflops"].get<double>(), 3.5 * f_flops / ((f_ms + b_ms) * 1e-3) / 1e12, 1e-9);
  const std::string text = format_attention_report(r);
  EXPECT_NE(text.find("TFLOP/s"), std::string::npos) << text;
}

TEST(BenchAttention, FiguresFollowFromTheTimes) {
  Config c = tiny_bench_config();
  check_attention_bench(c, "cpu");
  c.parallel.tensor = 3;  // 2 KV heads cannot be split 3 ways
  EXPECT_THROW(run_attention_bench(c, BenchOptions{}, *single_process()), UserError);
}

TEST(BenchAttentionGpu, FiguresFollowFromTheTimes) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  Config c;
  c.device = "cuda";
  c.model.hidden_size = 256;  // head dim 64
  c.model.num_attention_heads = 4;
  c.model.num_key_value_heads = 2;
  c.model.max_position_embeddings = 128;
  c.train.seq_len = 128;
  c.train.micro_batch_size = 2;
  check_attention_bench(c, "cuda");
}

TEST(BenchRunGpu, ProfileUsesCudaEventsAndThePlanMatches) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  Config c;
  c.device = "cuda";
  c.model.hidden_size = 256;  // head dim 64, as the CUDA attention needs
  c.model.num_attention_heads = 4;
  c.model.num_key_value_heads = 2;
  c.model.intermediate_size = 352;
  c.model.num_hidden_layers = 2;
  c.model.vocab_size = 512;
  c.model.max_position_embeddings = 128;
  c.train.seq_len = 128;
  c.train.micro_batch_size = 2;
  c.train.global_batch_tokens = 512;
  c.train.recompute = "selective";
  BenchOptions o;
  o.warmup = 2;
  o.steps = 3;
  o.profile = true;
  const auto r = run_bench(c, o, *single_process());
  std::cout << format_bench_report(r);
  EXPECT_EQ(r["backend"], "cuda");
  const auto& prof = r["profile"];
  EXPECT_NE(prof["method"].get<std::string>().find("CUDA events"), std::string::npos);
  // Any sm_80+ GPU copies at over 100 GB/s. The CUDA emulator (tests/cuda_emu) runs the same
  // code on the CPU, where only the figure's presence means anything.
  const bool emulated = r["device_name"].get<std::string>().find("CUDA emulator") != std::string::npos;
  EXPECT_GT(prof["copy_bandwidth_gb_per_s"].get<double>(), emulated ? 0.0 : 100.0);
  double attributed = 0;
  for (const auto& f : prof["families"]) {
    attributed += f["ms_per_step"].get<double>();
    if (f["name"] == "matmul") EXPECT_GT(f["tflops"].get<double>(), 0);
    if (f["name"] == "attention") EXPECT_GT(f["tflops"].get<double>(), 0);
  }
  EXPECT_GT(attributed, 0);
  EXPECT_LE(attributed, prof["step_ms"].get<double>() * 1.05);  // spans on one stream cannot exceed the step
  // The CUDA backend's own count after the steps is the plan's resident figure, scratch included.
  EXPECT_EQ(r["memory_plan"]["resident_bytes"].get<double>(), r["memory_bytes"].get<double>());
  EXPECT_LE(r["memory_plan"]["total_bytes"].get<double>() - r["memory_plan"]["reserve_bytes"].get<double>(),
            r["device_memory_used_bytes"].get<double>());
}

TEST(BenchRun, RefusesBadInput) {
  BenchOptions o;
  o.steps = 0;
  EXPECT_THROW(run_bench(tiny_bench_config(), o, *single_process()), UserError);
  Config c = tiny_bench_config();
  c.train.global_batch_tokens = 40;  // not a multiple of 2 x 16
  o.steps = 1;
  EXPECT_THROW(run_bench(c, o, *single_process()), UserError);
  Config tp = tiny_bench_config();
  tp.parallel.tensor = 2;
  EXPECT_THROW(check_bench_layout(tp, 1), UserError);  // one rank cannot hold a tensor-parallel pair
  EXPECT_EQ(check_bench_layout(tiny_bench_config(), 1), 1);
}

TEST(BenchBaseline, ReadsAndRefuses) {
  test::TempDir dir("bench_baseline");
  BenchOptions o;
  EXPECT_THROW(read_bench_baseline(dir.file("missing.json"), o), UserError);
  std::ofstream(dir.file("bad.json")) << "{not json";
  EXPECT_THROW(read_bench_baseline(dir.file("bad.json"), o), UserError);
  std::ofstream(dir.file("nofield.json")) << R"({"tokens_per_sec": 5})";
  EXPECT_THROW(read_bench_baseline(dir.file("nofield.json"), o), UserError);
  std::ofstream(dir.file("ok.json")) << R"({"tokens_per_sec_per_rank": 1234.5, "flops_per_token": 99})";
  read_bench_baseline(dir.file("ok.json"), o);
  EXPECT_EQ(*o.baseline_tokens_per_sec_per_rank, 1234.5);
  EXPECT_EQ(*o.baseline_flops_per_token, 99.0);
  EXPECT_EQ(o.baseline_path, dir.file("ok.json"));
}

}  // namespace
}  // namespace ltrain
