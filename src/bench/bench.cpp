// `ltrain bench` (include/ltrain/bench/bench.h): the FLOP formulas, the peak table, the profiling
// and timing decorators, and the benchmark loop. The step is the trainer's (src/train/trainer.cpp):
// zero the gradients, forward+backward over the micro-batches with the global-batch loss scale,
// the bucketed gradient all-reduce under data parallelism, the global loss sum, AdamW with
// clipping, and a synchronize so the step's device work is inside its time. Only the data differ:
// seeded random token ids instead of a DataLoader.
#include "ltrain/bench/bench.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

#include "ltrain/core/backend_factory.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/grad_reducer.h"
#include "ltrain/train/memory_plan.h"
#include "ltrain/train/trainer.h"

#ifdef LTRAIN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace ltrain {

// ---- ProfilingBackend ----------------------------------------------------------------------------

const char* op_family_name(OpFamily f) {
  switch (f) {
    case OpFamily::kMatmul: return "matmul";
    case OpFamily::kAttention: return "attention";
    case OpFamily::kRmsnorm: return "rmsnorm";
    case OpFamily::kRope: return "rope";
    case OpFamily::kSwiglu: return "swiglu";
    case OpFamily::kCrossEntropy: return "cross_entropy";
    case OpFamily::kEmbedding: return "embedding";
    case OpFamily::kAdd: return "add";
    case OpFamily::kOptimizer: return "optimizer";
    case OpFamily::kMemory: return "memory";
    case OpFamily::kHost: return "host_transfer";
    case OpFamily::kCount: break;
  }
  return "?";
}

void ProfilingBackend::reset() {
  pending_.clear();
  if (timer_) timer_->clear();
  seconds_.fill(0.0);
  calls_.fill(0);
  bytes_.fill(0.0);
  flops_.fill(0.0);
}

void ProfilingBackend::set_enabled(bool on) {
  if (enabled_ && !on) flush();
  enabled_ = on;
}

void ProfilingBackend::flush() {
  if (pending_.empty()) return;
  inner_.synchronize();
  for (const PendingOp& p : pending_) seconds_[size_t(p.family)] += timer_->seconds_between(p.start, p.end);
  pending_.clear();
  timer_->clear();
}

void ProfilingBackend::synchronize() {
  inner_.synchronize();
  flush();
}

std::string ProfilingBackend::method() {
  if (!timer_) timer_ = inner_.make_event_timer();
  return timer_->method();
}

double ProfilingBackend::total_seconds() const {
  double s = 0;
  for (double x : seconds_) s += x;
  return s;
}

template <class F>
auto ProfilingBackend::timed(OpFamily f, double bytes, double flops, F&& fn) -> decltype(fn()) {
  if (!enabled_) return fn();
  if (!timer_) timer_ = inner_.make_event_timer();
  struct Account {  // also on the return path of a value-returning op
    ProfilingBackend* self;
    OpFamily f;
    int start;
    double bytes, flops;
    ~Account() { self->finish_op(f, start, bytes, flops); }
  } account{this, f, timer_->record(), bytes, flops};
  return fn();
}

void ProfilingBackend::finish_op(OpFamily f, int start_mark, double bytes, double flops) {
  const size_t i = size_t(f);
  pending_.push_back({f, start_mark, timer_->record()});
  calls_[i] += 1;
  bytes_[i] = bytes >= 0 && bytes_[i] >= 0 ? bytes_[i] + bytes : -1.0;
  flops_[i] += flops;
  if (pending_.size() >= kMaxPendingOps) flush();
}

namespace {

// Bytes of the tensors an op reads or writes once each (undefined tensors count 0).
double tensor_bytes(std::initializer_list<const Tensor*> ts) {
  double b = 0;
  for (const Tensor* t : ts)
    if (t->defined()) b += double(t->bytes());
  return b;
}

// Causal attention FLOPs of the forward pass for q (B, T, H, HD).
double attention_forward_flops_of(const Tensor& q) {
  return attention_forward_flops(double(q.shape.dims[0]), double(q.shape.dims[1]), double(q.shape.dims[2]),
                                 double(q.shape.dims[3]));
}

}  // namespace

Tensor ProfilingBackend::alloc(Shape shape, DType dtype) {
  return timed(OpFamily::kHost, -1, 0, [&] { return inner_.alloc(shape, dtype); });
}
void ProfilingBackend::free(Tensor& t) {
  timed(OpFamily::kHost, -1, 0, [&] { inner_.free(t); });
}
void ProfilingBackend::from_host(Tensor dst, const void* src, DType src_dtype) {
  timed(OpFamily::kHost, -1, 0, [&] { inner_.from_host(dst, src, src_dtype); });
}
void ProfilingBackend::to_host(void* dst, DType dst_dtype, const Tensor& src) {
  timed(OpFamily::kHost, -1, 0, [&] { inner_.to_host(dst, dst_dtype, src); });
}
void ProfilingBackend::copy(Tensor dst, const Tensor& src) {
  const double bytes = dst.data == src.data && dst.dtype == src.dtype ? 0.0 : tensor_bytes({&dst, &src});
  timed(OpFamily::kMemory, bytes, 0, [&] { inner_.copy(dst, src); });
}
void ProfilingBackend::zero(Tensor t) {
  timed(OpFamily::kMemory, tensor_bytes({&t}), 0, [&] { inner_.zero(t); });
}
void ProfilingBackend::matmul(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                              float alpha, float beta, const Tensor& c) {
  const double M = double(out.shape.dims[0]), N = double(out.shape.dims[1]),
               K = double(trans_a ? a.shape.dims[0] : a.shape.dims[1]);
  timed(OpFamily::kMatmul, -1, 2.0 * M * N * K, [&] { inner_.matmul(out, a, b, trans_a, trans_b, alpha, beta, c); });
}
void ProfilingBackend::embedding_forward(Tensor out, const Tensor& tokens, const Tensor& wte) {
  // The rows read from wte are as large as out.
  timed(OpFamily::kEmbedding, 2 * tensor_bytes({&out}) + tensor_bytes({&tokens}), 0,
        [&] { inner_.embedding_forward(out, tokens, wte); });
}
void ProfilingBackend::embedding_backward(Tensor dwte, const Tensor& dout, const Tensor& tokens) {
  timed(OpFamily::kEmbedding, -1, 0, [&] { inner_.embedding_backward(dwte, dout, tokens); });
}
void ProfilingBackend::rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight,
                                       float eps) {
  timed(OpFamily::kRmsnorm, tensor_bytes({&out, &rstd, &inp, &weight}), 0,
        [&] { inner_.rmsnorm_forward(out, rstd, inp, weight, eps); });
}
void ProfilingBackend::rmsnorm_backward(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                                        const Tensor& weight, const Tensor& rstd) {
  // dinp and dweight accumulate: read and written.
  const double bytes = tensor_bytes({&dout, &inp, &weight, &rstd}) + 2 * tensor_bytes({&dinp, &dweight});
  timed(OpFamily::kRmsnorm, bytes, 0, [&] { inner_.rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd); });
}
void ProfilingBackend::rope_forward(Tensor out, const Tensor& inp, const Tensor& freqs) {
  timed(OpFamily::kRope, tensor_bytes({&out, &inp}), 0, [&] { inner_.rope_forward(out, inp, freqs); });
}
void ProfilingBackend::rope_backward(Tensor dinp, const Tensor& dout, const Tensor& freqs) {
  timed(OpFamily::kRope, tensor_bytes({&dinp, &dout}), 0, [&] { inner_.rope_backward(dinp, dout, freqs); });
}
void ProfilingBackend::attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k,
                                         const Tensor& v) {
  timed(OpFamily::kAttention, -1, attention_forward_flops_of(q), [&] { inner_.attention_forward(out, lse, q, k, v); });
}
void ProfilingBackend::attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout,
                                          const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& out, const Tensor& lse) {
  timed(OpFamily::kAttention, -1, 2.5 * attention_forward_flops_of(q),
        [&] { inner_.attention_backward(dq, dk, dv, dout, q, k, v, out, lse); });
}
void ProfilingBackend::swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up) {
  timed(OpFamily::kSwiglu, tensor_bytes({&out, &gate, &up}), 0, [&] { inner_.swiglu_forward(out, gate, up); });
}
void ProfilingBackend::swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                                       const Tensor& up) {
  timed(OpFamily::kSwiglu, tensor_bytes({&dgate, &dup, &dout, &gate, &up}), 0,
        [&] { inner_.swiglu_backward(dgate, dup, dout, gate, up); });
}
void ProfilingBackend::add(Tensor out, const Tensor& a, const Tensor& b) {
  timed(OpFamily::kAdd, tensor_bytes({&out, &a, &b}), 0, [&] { inner_.add(out, a, b); });
}
void ProfilingBackend::cross_entropy(Tensor losses, Tensor dlogits, const Tensor& logits,
                                     const Tensor& targets, float dloss) {
  timed(OpFamily::kCrossEntropy, tensor_bytes({&losses, &dlogits, &logits, &targets}), 0,
        [&] { inner_.cross_entropy(losses, dlogits, logits, targets, dloss); });
}
void ProfilingBackend::logsumexp_rows(Tensor lse, const Tensor& logits) {
  timed(OpFamily::kCrossEntropy, tensor_bytes({&lse, &logits}), 0, [&] { inner_.logsumexp_rows(lse, logits); });
}
void ProfilingBackend::cross_entropy_with_lse(Tensor losses, Tensor dlogits, const Tensor& logits,
                                              const Tensor& lse, const Tensor& targets, int vocab_offset,
                                              float dloss) {
  timed(OpFamily::kCrossEntropy, tensor_bytes({&losses, &dlogits, &logits, &lse, &targets}), 0,
        [&] { inner_.cross_entropy_with_lse(losses, dlogits, logits, lse, targets, vocab_offset, dloss); });
}
double ProfilingBackend::sum_squares(const std::vector<Tensor>& tensors) {
  double bytes = 0;
  for (const Tensor& t : tensors) bytes += tensor_bytes({&t});
  return timed(OpFamily::kOptimizer, bytes, 0, [&] { return inner_.sum_squares(tensors); });
}
void ProfilingBackend::adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v,
                                    const AdamWStep& s) {
  // param, m and v are read and written, grad read.
  timed(OpFamily::kOptimizer, 2 * tensor_bytes({&param, &m, &v}) + tensor_bytes({&grad}), 0,
        [&] { inner_.adamw_update(param, grad, m, v, s); });
}

double measure_copy_bandwidth(Backend& be, size_t bytes, int reps) {
  LTRAIN_CHECK(bytes >= 4 && reps >= 1, "measure_copy_bandwidth(" << bytes << ", " << reps << ")");
  const int64_t n = int64_t(bytes / 4);
  Tensor a = be.alloc({n}, DType::kF32), b = be.alloc({n}, DType::kF32);
  be.copy(b, a);  // untimed: first touch, lazy initialization
  be.synchronize();
  auto timer = be.make_event_timer();
  const int start = timer->record();
  for (int i = 0; i < reps; ++i) be.copy(b, a);
  const int end = timer->record();
  be.synchronize();
  const double seconds = timer->seconds_between(start, end);
  const double moved = 2.0 * double(a.bytes()) * reps;
  timer.reset();
  be.free(a);
  be.free(b);
  return seconds > 0 ? moved / seconds / 1e9 : NAN;
}

// ---- TimingCommunicator --------------------------------------------------------------------------

template <class F>
auto TimingCommunicator::timed(F&& fn) -> decltype(fn()) {
  struct Account {
    TimingCommunicator* self;
    double t0;
    ~Account() {
      self->seconds_ += wall_time_seconds() - t0;
      self->calls_ += 1;
    }
  } account{this, wall_time_seconds()};
  return fn();
}

void TimingCommunicator::all_reduce_sum(Tensor buf) { timed([&] { inner_.all_reduce_sum(buf); }); }
void TimingCommunicator::all_reduce_max(Tensor buf) { timed([&] { inner_.all_reduce_max(buf); }); }
void TimingCommunicator::reduce_scatter_sum(Tensor out, const Tensor& in) {
  timed([&] { inner_.reduce_scatter_sum(out, in); });
}
void TimingCommunicator::all_gather(Tensor out, const Tensor& in) { timed([&] { inner_.all_gather(out, in); }); }
void TimingCommunicator::broadcast(Tensor buf, int root) { timed([&] { inner_.broadcast(buf, root); }); }
int TimingCommunicator::all_reduce_sum_start(Tensor buf) {
  return timed([&] { return inner_.all_reduce_sum_start(buf); });
}
void TimingCommunicator::wait(int ticket) { timed([&] { inner_.wait(ticket); }); }
double TimingCommunicator::sum(double x) { return timed([&] { return inner_.sum(x); }); }
double TimingCommunicator::max(double x) { return timed([&] { return inner_.max(x); }); }
void TimingCommunicator::barrier() { timed([&] { inner_.barrier(); }); }

// ---- helpers -------------------------------------------------------------------------------------

namespace {

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string s = line.substr(colon + 1);
        s.erase(0, s.find_first_not_of(" \t"));
        return s;
      }
    }
  }
  return "unknown CPU";
}

// Bytes in use on the current CUDA device (all processes and the context included), or -1.
double cuda_device_memory_used() {
#ifdef LTRAIN_WITH_CUDA
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) return double(total_b - free_b);
  cudaGetLastError();
#endif
  return -1;
}

// Every rank's x, in rank order, on every rank (the communicator only sums scalars).
std::vector<double> gather_scalar(Communicator& c, double x) {
  std::vector<double> v(size_t(c.size()));
  for (int i = 0; i < c.size(); ++i) v[size_t(i)] = c.sum(c.rank() == i ? x : 0.0);
  return v;
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / double(v.size());
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// JSON number, or null for "not available" (NaN).
nlohmann::json num_or_null(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

}  // namespace

std::string describe_device(const Backend& backend) {
#ifdef LTRAIN_WITH_CUDA
  if (backend.is_cuda()) {
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
      return std::string(prop.name);
    cudaGetLastError();
    return "unknown CUDA device";
  }
#endif
  if (backend.is_cuda()) return "unknown CUDA device";
  const int threads = omp_get_max_threads();
  return cpu_model_name() + strfmt(" (%d thread%s)", threads, threads == 1 ? "" : "s");
}

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

// ---- the benchmark -------------------------------------------------------------------------------

int check_bench_layout(const Config& cfg, int world_size) {
  const int dp_size = resolve_parallel_layout(cfg, world_size);
  validate_config(cfg, dp_size);
  return dp_size;
}

nlohmann::json run_bench(const Config& cfg, const BenchOptions& opt) {
  if (opt.steps < 1) user_error("ltrain bench: --steps must be >= 1, got ", opt.steps);
  if (opt.warmup < 0) user_error("ltrain bench: --warmup must be >= 0, got ", opt.warmup);
  const auto& tc = cfg.train;
  ParallelContext& par = ParallelContext::get();
  const int world = par.world_size();
  const int dp_size = check_bench_layout(cfg, world);
  par.setup_grid(dp_size, cfg.parallel.tensor);
  const int dp_rank = par.data_rank();
  const int B = tc.micro_batch_size, T = tc.seq_len;
  const int accum = cfg.grad_accum_steps(dp_size);

  // As in the trainer: the backend of this rank's GPU (or the CPU), NCCL for data parallelism on
  // CUDA, the MPI group otherwise. The model is built on the profiling decorator, which only
  // forwards until --profile's extra steps enable it.
  auto raw = make_backend(cfg.device, par.local_rank(), cfg.deterministic);
  ProfilingBackend be(*raw);
  const int tp_size = cfg.parallel.tensor;
  ParallelComms comms = make_parallel_comms(par, *raw, dp_size, tp_size, cfg.parallel.timeout_s);
  // As in the trainer: refused before the model is built when it cannot fit. Bench loads no
  // checkpoint, so no staging is planned.
  const MemoryPlan plan = check_run_memory(cfg, dp_size, tp_size, *raw);
  // --profile: the device-to-device copy bandwidth the memory-bound families are compared with,
  // measured before the model takes the memory.
  const size_t copy_bytes = size_t(raw->is_cuda() ? 256 : 32) << 20;
  const double copy_gbps = opt.profile ? measure_copy_bandwidth(*raw, copy_bytes) : NAN;
  // Every collective of the step goes through a timing wrapper: communication vs compute.
  TimingCommunicator dp(*comms.dp);
  std::unique_ptr<TimingCommunicator> tp;
  if (comms.tp) tp = std::make_unique<TimingCommunicator>(*comms.tp);
  const bool zero = cfg.parallel.zero == 1 && dp_size > 1;
  LlamaModel model(cfg.model, be, B, T, parse_recompute(tc.recompute), zero ? 64 * dp_size : 1, tp.get(),
                   comms.tp_host);
  model.init_weights(tc.seed);
  AdamW adamw(cfg.optim, model.parameters(), &dp, zero, comms.tp_host);
  std::unique_ptr<GradReducer> reducer;
  if (dp_size > 1 && !zero) reducer = std::make_unique<GradReducer>(model.parameters(), dp, cfg.parallel.bucket_mb);
  auto comm_seconds = [&] { return dp.seconds() + (tp ? tp->seconds() : 0.0); };

  // Synthetic tokens: seeded uniform ids < vocab, different on each data-parallel rank; targets
  // are the next ids of the same stream. A few distinct micro-batches are cycled through, built
  // before the clock starts.
  const int pool = std::max(1, std::min(accum, 4));
  std::vector<std::vector<int32_t>> ins(static_cast<size_t>(pool)), tgs(static_cast<size_t>(pool));
  uint64_t rng = tc.seed * 0x2545F4914F6CDD1Dull + uint64_t(dp_rank) * 0x9E3779B97F4A7C15ull + 1;
  const uint64_t V = uint64_t(cfg.model.vocab_size);
  for (int p = 0; p < pool; ++p) {
    ins[size_t(p)].resize(size_t(B) * T);
    tgs[size_t(p)].resize(size_t(B) * T);
    for (int b = 0; b < B; ++b) {
      int32_t prev = int32_t(splitmix64(rng) % V);
      for (int t = 0; t < T; ++t) {
        const int32_t next = int32_t(splitmix64(rng) % V);
        ins[size_t(p)][size_t(b) * T + t] = prev;
        tgs[size_t(p)][size_t(b) * T + t] = next;
        prev = next;
      }
    }
  }

  const int total_steps = opt.warmup + opt.steps * (opt.profile ? 2 : 1);
  int step_no = 0, next_batch = 0;
  size_t peak_bytes = be.bytes_allocated();
  // One optimizer step, exactly as `ltrain train` runs it (TrainStep, src/train/step.cpp).
  TrainStep train_step(model, adamw, reducer.get(), dp, accum, B, T);
  auto bench_step = [&]() {
    ++step_no;
    const double loss = train_step.run(step_no, lr_at(cfg.optim, total_steps, step_no), [&](int32_t* in, int32_t* tg) {
                                     const int p = next_batch++ % pool;
                                     std::copy(ins[size_t(p)].begin(), ins[size_t(p)].end(), in);
                                     std::copy(tgs[size_t(p)].begin(), tgs[size_t(p)].end(), tg);
                                   }).loss;
    be.synchronize();
    peak_bytes = std::max(peak_bytes, be.bytes_allocated());
    return loss;
  };

  for (int i = 0; i < opt.warmup; ++i) bench_step();
  be.synchronize();
  par.world().barrier();  // the ranks start the timed steps together

  std::vector<double> step_ms, comm_ms, losses;
  for (int i = 0; i < opt.steps; ++i) {
    const double c0 = comm_seconds();
    const double t0 = wall_time_seconds();
    losses.push_back(bench_step());
    const double dt = wall_time_seconds() - t0;
    step_ms.push_back(dt * 1e3);
    comm_ms.push_back((comm_seconds() - c0) * 1e3);
  }

  // --profile: as many extra steps with every op timed by the backend's event timer.
  nlohmann::json profile = nullptr;
  if (opt.profile) {
    be.synchronize();
    par.world().barrier();
    be.reset();
    be.set_enabled(true);
    std::vector<double> prof_ms;
    const double c0 = comm_seconds();
    for (int i = 0; i < opt.steps; ++i) {
      const double t0 = wall_time_seconds();
      bench_step();
      prof_ms.push_back((wall_time_seconds() - t0) * 1e3);
    }
    be.set_enabled(false);  // reads the last marks
    const double n = opt.steps;
    const double prof_mean = mean(prof_ms);
    const double comm = (comm_seconds() - c0) * 1e3 / n;
    nlohmann::json fams = nlohmann::json::array();
    double attributed = 0;
    for (int f = 0; f < kNumOpFamilies; ++f) {
      const OpFamily fam = OpFamily(f);
      const double ms = be.seconds(fam) * 1e3 / n;
      attributed += ms;
      const double bytes = be.calls(fam) > 0 && be.bytes(fam) >= 0 ? be.bytes(fam) / n : NAN;
      const double flops = be.flops(fam) > 0 ? be.flops(fam) / n : NAN;
      const double gbps = ms > 0 ? bytes / (ms * 1e-3) / 1e9 : NAN;
      fams.push_back({{"name", op_family_name(fam)},
                      {"ms_per_step", ms},
                      {"percent", 100.0 * ms / prof_mean},
                      {"calls_per_step", double(be.calls(fam)) / n},
                      {"bytes_per_step", num_or_null(bytes)},
                      {"gb_per_s", num_or_null(gbps)},
                      {"percent_of_copy_bandwidth", num_or_null(100.0 * gbps / copy_gbps)},
                      {"flops_per_step", num_or_null(flops)},
                      {"tflops", num_or_null(ms > 0 ? flops / (ms * 1e-3) / 1e12 : NAN)}});
    }
    const double other = std::max(0.0, prof_mean - attributed - comm);
    profile = {{"steps", opt.steps},
               {"rank", par.world_rank()},
               {"step_ms", prof_mean},
               {"families", fams},
               {"communication_ms_per_step", comm},
               {"communication_percent", 100.0 * comm / prof_mean},
               {"other_ms_per_step", other},
               {"other_percent", 100.0 * other / prof_mean},
               {"method", be.method()},
               {"copy_bytes", double(copy_bytes)},
               {"copy_bandwidth_gb_per_s", num_or_null(copy_gbps)}};
  }

  // ---- figures ----
  Communicator& w = par.world();
  const double my_median = median(step_ms);
  const double my_min = *std::min_element(step_ms.begin(), step_ms.end());
  const double my_max = *std::max_element(step_ms.begin(), step_ms.end());
  const double my_mean = mean(step_ms);
  const double my_comm = mean(comm_ms);
  const std::vector<double> rank_median = gather_scalar(w, my_median);
  const std::vector<double> rank_comm = gather_scalar(w, my_comm);
  const std::vector<double> rank_mean = gather_scalar(w, my_mean);
  const double job_median = *std::max_element(rank_median.begin(), rank_median.end());
  const double job_min = -w.max(-my_min), job_max = w.max(my_max);
  const double tokens_per_step = double(tc.global_batch_tokens);
  const double tokens_per_rank = tokens_per_step / world;  // each token once, whatever the layout
  std::vector<double> rank_tok_s;
  for (double ms : rank_median) rank_tok_s.push_back(tokens_per_rank / (ms / 1e3));
  const double tok_s = tokens_per_step / (job_median / 1e3);
  const double tok_s_rank = tok_s / world;
  const double comm_mean = mean(rank_comm);
  const double step_mean = mean(rank_mean);

  const double fpt = flops_per_token(cfg.model, T), fpt_palm = flops_per_token_palm(cfg.model, T);
  const double achieved = fpt * tok_s_rank, achieved_palm = fpt_palm * tok_s_rank;
  const std::string device_name = describe_device(*raw);
  double peak = NAN;
  std::string peak_source;
  if (opt.peak_tflops > 0) {
    peak = opt.peak_tflops * 1e12;
    peak_source = "--peak-tflops";
  } else if (raw->is_cuda()) {
    std::string matched;
    if (auto p = lookup_peak_flops(device_name, &matched)) {
      peak = *p;
      peak_source = "table: " + matched;
    }
  }
  const double peak_mem = w.max(double(peak_bytes));
  const double dev_mem = w.max(cuda_device_memory_used());

  nlohmann::json r;
  r["config"] = opt.config_path;
  r["overrides"] = opt.overrides;
  r["backend"] = raw->name();
  r["device_name"] = device_name;
  r["world_size"] = world;
  r["data_parallel"] = dp_size;
  r["tensor_parallel"] = cfg.parallel.tensor;
  r["zero"] = zero ? 1 : 0;
  r["model"] = {{"params", llama_num_params(cfg.model)},
                {"matmul_params", llama_num_matmul_params(cfg.model)},
                {"layers", cfg.model.num_hidden_layers},
                {"hidden_size", cfg.model.hidden_size},
                {"heads", cfg.model.num_attention_heads},
                {"kv_heads", cfg.model.kv_heads()},
                {"head_dim", cfg.model.head_dim()},
                {"ffn_dim", cfg.model.ffn_dim()},
                {"vocab_size", cfg.model.vocab_size}};
  r["seq_len"] = T;
  r["micro_batch_size"] = B;
  r["grad_accum_steps"] = accum;
  r["recompute"] = tc.recompute;
  r["tokens_per_step"] = tc.global_batch_tokens;
  r["warmup_steps"] = opt.warmup;
  r["steps"] = opt.steps;
  r["step_ms"] = job_median;
  r["step_ms_min"] = job_min;
  r["step_ms_max"] = job_max;
  r["step_ms_mean"] = step_mean;
  r["step_ms_all"] = step_ms;  // this rank's (rank 0's in the file)
  r["tokens_per_sec"] = tok_s;
  r["tokens_per_sec_per_rank"] = tok_s_rank;
  r["per_rank_tokens_per_sec"] = rank_tok_s;
  r["per_rank_step_ms"] = rank_median;
  r["flops_per_token"] = fpt;
  r["flops_per_token_palm"] = fpt_palm;
  r["tflops_per_rank"] = achieved / 1e12;
  r["tflops_per_rank_palm"] = achieved_palm / 1e12;
  r["peak_tflops_per_rank"] = num_or_null(peak / 1e12);
  r["peak_source"] = peak_source.empty() ? nlohmann::json(nullptr) : nlohmann::json(peak_source);
  r["mfu"] = num_or_null(achieved / peak);
  r["mfu_palm"] = num_or_null(achieved_palm / peak);
  r["memory_bytes"] = peak_mem;
  // What memory_plan() predicted for this rank: resident_bytes is what the backend should hold
  // after the first step (memory_bytes), total_bytes adds the reserve the check keeps free.
  r["memory_plan"] = {{"weights_bytes", plan.weights},        {"gradients_bytes", plan.gradients},
                      {"optimizer_bytes", plan.optimizer},    {"activations_bytes", plan.activations},
                      {"workspace_bytes", plan.workspace},    {"reserve_bytes", plan.reserve},
                      {"resident_bytes", plan.resident()},    {"total_bytes", plan.total()}};
  r["deterministic"] = cfg.deterministic;
  r["device_memory_used_bytes"] = dev_mem >= 0 ? nlohmann::json(dev_mem) : nlohmann::json(nullptr);
  r["comm_ms_per_step"] = comm_mean;
  r["compute_ms_per_step"] = step_mean - comm_mean;
  r["comm_fraction"] = step_mean > 0 ? comm_mean / step_mean : 0.0;
  r["per_rank_comm_ms_per_step"] = rank_comm;
  r["loss_first"] = num_or_null(losses.front());
  r["loss_last"] = num_or_null(losses.back());
  r["baseline"] = nullptr;
  r["scaling_efficiency"] = nullptr;
  if (opt.baseline_tokens_per_sec_per_rank) {
    r["baseline"] = {{"file", opt.baseline_path}, {"tokens_per_sec_per_rank", *opt.baseline_tokens_per_sec_per_rank}};
    r["scaling_efficiency"] = tok_s_rank / *opt.baseline_tokens_per_sec_per_rank;
  }
  r["profile"] = profile;
  return r;
}

// ---- the report ----------------------------------------------------------------------------------

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
  row("layout", strfmt("%d rank%s = data %d x tensor %d | ZeRO-1 %s", world, world > 1 ? "s" : "", dp, tp,
                    r["zero"].get<int>() ? "on" : "off"));
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

// ---- attention alone -----------------------------------------------------------------------------

nlohmann::json run_attention_bench(const Config& cfg, const BenchOptions& opt) {
  if (opt.steps < 1) user_error("ltrain bench: --steps must be >= 1, got ", opt.steps);
  if (opt.warmup < 0) user_error("ltrain bench: --warmup must be >= 0, got ", opt.warmup);
  const ModelConfig& m = cfg.model;
  const int tp = std::max(1, cfg.parallel.tensor);
  if (m.num_attention_heads % tp || m.kv_heads() % tp)
    user_error("ltrain bench --attention: parallel.tensor ", tp, " does not divide the ", m.num_attention_heads,
               " heads and ", m.kv_heads(), " KV heads");
  const int B = cfg.train.micro_batch_size, T = cfg.train.seq_len, H = m.num_attention_heads / tp,
            KV = m.kv_heads() / tp, HD = m.head_dim();
  auto be = make_backend(cfg.device, ParallelContext::get().local_rank(), cfg.deterministic);
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
  auto median = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x.size() % 2 ? x[x.size() / 2] : 0.5 * (x[x.size() / 2 - 1] + x[x.size() / 2]);
  };
  const double f_s = median(fwd), b_s = median(bwd);
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
  r["forward_tflops"] = num_or_null(f_s > 0 ? f_flops / f_s / 1e12 : NAN);
  r["backward_tflops"] = num_or_null(b_s > 0 ? b_flops / b_s / 1e12 : NAN);
  r["total_tflops"] = num_or_null(f_s + b_s > 0 ? (f_flops + b_flops) / (f_s + b_s) / 1e12 : NAN);
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
