// What profilers and other observers of a backend see (include/ltrain/core/backend.h): the op
// families, the description of one op (OpInfo), the observer interface, and the event timer that
// takes timestamps in a backend's execution order.
#pragma once
#include <memory>

#include "ltrain/core/tensor.h"

namespace ltrain {

// Timestamps taken in a backend's execution order, for profilers (`ltrain bench --profile`).
// record() marks the point after all work issued so far; seconds_between() is the time between
// two marks once the work before the later one has run (it waits for that). On the CUDA backend
// the marks are CUDA events on its stream, so recording does not synchronize; on the CPU backend,
// whose ops are synchronous, a mark is the host clock.
class EventTimer {
 public:
  virtual ~EventTimer() = default;
  virtual int record() = 0;                          // the mark's index, 0, 1, 2, ...
  virtual double seconds_between(int from, int to) = 0;
  virtual void clear() = 0;                          // forget every mark; indices restart at 0
  virtual const char* method() const = 0;            // how the marks are taken, for reports
};
// Host wall-clock marks: right for a backend whose ops have finished when they return.
std::unique_ptr<EventTimer> make_host_event_timer();

// ---- op observers ---------------------------------------------------------------------------
// What an op is, for observers: bench's profiler groups the time of ops by family, and the tests
// count them. Every public op of Backend, memory operations included, belongs to one family.
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
inline const char* op_family_name(OpFamily f) {
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

struct OpInfo {
  const char* name;  // the Backend method, e.g. "rmsnorm_forward"
  OpFamily family;
  // Bytes the op reads and writes (compulsory traffic of its tensors; read-modify-write counted
  // twice), or -1 when there is no count (embedding_backward, whose traffic depends on the
  // distinct tokens; host transfers; matmul and attention, which are counted in FLOPs).
  double bytes;
  // FLOPs of a matrix product (2MNK); 0 for every other op. Attention's FLOPs are a model formula
  // (model/flops.h, which core does not include): an observer that counts them takes q's shape
  // from `shape`.
  double flops;
  Shape shape;  // out's shape, q's for attention
};

// Told about every op a backend runs: op_begin before the op is issued, op_end after (an op that
// another op calls inside a backend, such as a to_host inside sum_squares, is not reported on its
// own). synchronized() follows every Backend::synchronize(). The backend does not own its
// observer, which must outlive it or be unset first.
class OpObserver {
 public:
  virtual ~OpObserver() = default;
  virtual void op_begin(const OpInfo& op) = 0;
  virtual void op_end(const OpInfo& op) = 0;
  virtual void synchronized() {}
};

}  // namespace ltrain
