// `ltrain bench`: real training steps (forward, backward, clipping, AdamW, and under mpirun the
// data-parallel gradient reduction) on synthetic tokens, timed, with FLOP accounting and MFU.
//
// FLOP formulas and the peak table are in ltrain/model/flops.h. The pieces are usable on their own (and tested on their own):
//  - ProfilingBackend: a Backend decorator that forwards every op to another backend and, when
//    enabled, records a mark of the backend's EventTimer before and after each op (CUDA events on
//    the GPU, the host clock on the CPU) and adds the time between them to the op's family, with
//    the bytes the op moves and the FLOPs of the matrix products and attention;
//  - measure_copy_bandwidth: the device-to-device copy bandwidth the memory-bound families are
//    compared with;
//  - TimingCommunicator: a Communicator decorator that adds up the wall time of every call.
// docs/benchmarking.md describes every figure and how it is measured.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/config/config.h"
#include "ltrain/core/backend.h"
#include "ltrain/model/flops.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

// ---- ProfilingBackend ----------------------------------------------------------------------------
enum class OpFamily {
  kMatmul,
  kAttention,
  kRmsnorm,
  kRope,
  kSwiglu,
  kCrossEntropy,
  kEmbedding,
  kAdd,        // residual adds
  kOptimizer,  // adamw_update, sum_squares
  kMemory,     // copy, zero (device memory)
  kHost,       // host transfers, alloc, free
  kCount
};
constexpr int kNumOpFamilies = int(OpFamily::kCount);
const char* op_family_name(OpFamily f);

// Every Backend op must be forwarded here (a new pure virtual op fails to compile until it is).
// Wraps `inner` (which must outlive it) and forwards every method. Disabled, it only forwards.
// Enabled, every op is bracketed by two marks of inner's EventTimer: on the CUDA backend CUDA
// events on its stream, so nothing synchronizes per op and the step keeps its overlap of host
// launches with GPU work; on the CPU the host clock (its ops are synchronous). The time between an
// op's marks goes to its family when the marks are read: at every synchronize() of this backend
// (the step's end, a gradient bucket's launch), at flush(), and every kMaxPendingOps ops.
// An op's time is its span on the stream: it includes GPU idle time inside the op (host work such
// as embedding_backward's grouping); gaps between ops are in no family.
class ProfilingBackend final : public Backend {
 public:
  static constexpr size_t kMaxPendingOps = size_t(1) << 15;
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}
  Backend& inner() { return inner_; }
  void set_enabled(bool on);  // turning it off flushes
  bool enabled() const { return enabled_; }
  void reset();               // zero every figure and drop unread marks
  void flush();               // synchronize inner and read the marks of every timed op
  // Figures since reset(), complete after flush() or synchronize().
  double seconds(OpFamily f) const { return seconds_[size_t(f)]; }
  int64_t calls(OpFamily f) const { return calls_[size_t(f)]; }
  // Bytes the family's ops read and wrote (compulsory traffic of each op's tensors; read-modify-
  // write counted twice), or -1 when one of its ops has no count (embedding_backward, whose traffic
  // depends on the distinct tokens; host transfers; matmul and attention, counted in FLOPs).
  double bytes(OpFamily f) const { return bytes_[size_t(f)]; }
  // FLOPs of matmul (2MNK) and attention (causal: 4 * B * H * HD * T(T+1)/2 forward, 2.5 times that
  // backward, as FlashAttention counts); 0 for the other families.
  double flops(OpFamily f) const { return flops_[size_t(f)]; }
  double total_seconds() const;
  std::string method();       // how ops are timed (inner's EventTimer)

  std::string name() const override { return inner_.name(); }
  bool is_cuda() const override { return inner_.is_cuda(); }
  DType compute_dtype() const override { return inner_.compute_dtype(); }
  DType master_dtype() const override { return inner_.master_dtype(); }
  Tensor alloc(Shape shape, DType dtype) override;
  void free(Tensor& t) override;
  void from_host(Tensor dst, const void* src, DType src_dtype) override;
  void to_host(void* dst, DType dst_dtype, const Tensor& src) override;
  void copy(Tensor dst, const Tensor& src) override;
  void zero(Tensor t) override;
  void synchronize() override;
  size_t bytes_allocated() const override { return inner_.bytes_allocated(); }
  std::unique_ptr<EventTimer> make_event_timer() override { return inner_.make_event_timer(); }
  void matmul(Tensor out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha,
              float beta, const Tensor& c = Tensor{}) override;
  void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& wte) override;
  void embedding_backward(Tensor dwte, const Tensor& dout, const Tensor& tokens) override;
  void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& inp, const Tensor& weight,
                       float eps) override;
  void rmsnorm_backward(Tensor dinp, Tensor dweight, const Tensor& dout, const Tensor& inp,
                        const Tensor& weight, const Tensor& rstd) override;
  void rope_forward(Tensor out, const Tensor& inp, const Tensor& freqs) override;
  void rope_backward(Tensor dinp, const Tensor& dout, const Tensor& freqs) override;
  void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k,
                         const Tensor& v) override;
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse) override;
  void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up) override;
  void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate,
                       const Tensor& up) override;
  void add(Tensor out, const Tensor& a, const Tensor& b) override;
  void cross_entropy(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& targets,
                     float dloss) override;
  void logsumexp_rows(Tensor lse, const Tensor& logits) override;
  void cross_entropy_with_lse(Tensor losses, Tensor dlogits, const Tensor& logits, const Tensor& lse,
                              const Tensor& targets, int vocab_offset, float dloss) override;
  double sum_squares(const std::vector<Tensor>& tensors) override;
  void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v,
                    const AdamWStep& s) override;

 private:
  // bytes < 0: not counted.
  template <class F>
  auto timed(OpFamily f, double bytes, double flops, F&& fn) -> decltype(fn());
  void finish_op(OpFamily f, int start_mark, double bytes, double flops);
  struct PendingOp {
    OpFamily family;
    int start, end;  // marks
  };
  Backend& inner_;
  bool enabled_ = false;
  std::unique_ptr<EventTimer> timer_;
  std::vector<PendingOp> pending_;
  std::array<double, kNumOpFamilies> seconds_{};
  std::array<int64_t, kNumOpFamilies> calls_{};
  std::array<double, kNumOpFamilies> bytes_{};
  std::array<double, kNumOpFamilies> flops_{};
};

// The backend's device-to-device copy bandwidth in GB/s (1e9 bytes): Backend::copy of an fp32
// buffer of `bytes` into another, `reps` times after one untimed copy, timed with the backend's
// EventTimer; each copy counts its read and its write (2 * bytes), the convention of the
// families' bandwidth. Allocates and frees the two buffers.
double measure_copy_bandwidth(Backend& backend, size_t bytes, int reps = 10);

// ---- TimingCommunicator --------------------------------------------------------------------------
// Wraps `inner` (which must outlive it), forwards every call and adds up the host wall time spent
// inside the calls: for a non-blocking all-reduce that is the launch plus the wait, i.e. the
// communication the step waits for, not what overlaps the backward.
class TimingCommunicator final : public Communicator {
 public:
  explicit TimingCommunicator(Communicator& inner) : inner_(inner) {}
  double seconds() const { return seconds_; }
  int64_t calls() const { return calls_; }
  void reset() { seconds_ = 0, calls_ = 0; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string name() const override { return inner_.name(); }
  bool orders_after_device_work() const override { return inner_.orders_after_device_work(); }
  void all_reduce_sum(Tensor buf) override;
  void all_reduce_max(Tensor buf) override;
  void reduce_scatter_sum(Tensor out, const Tensor& in) override;
  void all_gather(Tensor out, const Tensor& in) override;
  void broadcast(Tensor buf, int root) override;
  int all_reduce_sum_start(Tensor buf) override;
  void wait(int ticket) override;
  double sum(double x) override;
  double max(double x) override;
  void barrier() override;

 private:
  template <class F>
  auto timed(F&& fn) -> decltype(fn());
  Communicator& inner_;
  double seconds_ = 0;
  int64_t calls_ = 0;
};

// ---- the benchmark -------------------------------------------------------------------------------
struct BenchOptions {
  std::string config_path;              // recorded in the result
  std::vector<std::string> overrides;   // recorded in the result
  int warmup = 3;
  int steps = 10;
  bool profile = false;
  double peak_tflops = 0;               // > 0 overrides the peak table (per GPU/rank, TFLOP/s)
  // tokens_per_sec_per_rank of an earlier (one-rank) bench for the scaling efficiency; only rank 0
  // uses it. baseline_path is recorded in the result.
  std::optional<double> baseline_tokens_per_sec_per_rank;
  std::optional<double> baseline_flops_per_token;
  std::string baseline_path;
};

// Reads an earlier `--json` result for --baseline: fills the baseline fields of `o`. UserError
// naming the file when it is unreadable or lacks tokens_per_sec_per_rank.
void read_bench_baseline(const std::string& path, BenchOptions& o);

// The device the backend runs on, for the report and the peak table: the CUDA device's name
// (cudaGetDeviceProperties of the current device), or the CPU model with the thread count.
std::string describe_device(const Backend& backend);

// Resolves the parallel layout for `world_size` ranks and validates the config for it (what
// run_bench does first); returns the data-parallel size. UserError for layouts bench cannot run.
int check_bench_layout(const Config& cfg, int world_size);

// Runs the benchmark on the current ParallelContext (every rank must call it; the layout is
// resolved and the config validated first). Returns the figures (docs/benchmarking.md lists the
// fields) on every rank; the per-rank lists and the baseline efficiency are complete on rank 0.
nlohmann::json run_bench(const Config& cfg, const BenchOptions& opt);

// The human-readable report of a run_bench() result.
std::string format_bench_report(const nlohmann::json& r);

// `ltrain bench --attention`: causal attention alone, one layer at the config's shape (B = the
// micro-batch, T = seq_len, the model's heads, KV heads and head dim; tensor parallelism divides
// the heads), forward and backward timed separately with the backend's event timer over `steps`
// calls after `warmup`, on seeded random inputs. FLOPs as FlashAttention-2 counts them: forward
// 4 B H HD T(T+1)/2, backward 2.5 x that. Fields: device, shape, forward_ms, backward_ms (medians),
// forward_tflops, backward_tflops, total_tflops.
nlohmann::json run_attention_bench(const Config& cfg, const BenchOptions& opt);
std::string format_attention_report(const nlohmann::json& r);

}  // namespace ltrain
