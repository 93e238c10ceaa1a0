// Data-parallel gradient reduction in buckets that overlap backward.
//
// The parameter set's gradient units (head, layers from the last, embedding) are contiguous ranges of the
// flat gradient buffer, finished by backward in that order. Consecutive units are grouped into
// buckets of at least parallel.bucket_mb; as soon as backward finishes a bucket's last unit, its
// all-reduce starts (on the communicator's own stream for NCCL, a non-blocking MPI request for MPI)
// while backward continues with earlier layers. Only the last micro-batch of an optimizer step
// reduces: gradients accumulate locally before that.
//
// The loss scale already divides by the data-parallel size, so the sum over ranks is the mean
// gradient of the global batch; no extra pass scales it.
#pragma once
#include <vector>

#include "ltrain/core/param_set.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

class GradReducer {
 public:
  GradReducer(ParameterSet& params, Communicator& comm, double bucket_mb);
  ~GradReducer();
  // Call before each micro-batch's backward; `reduce` is true for the last one of the step.
  void arm(bool reduce) { armed_ = reduce; }
  // Starts the buckets not started yet and waits for all of them.
  void finish();
  int num_buckets() const { return int(buckets_.size()); }

 private:
  struct Bucket {
    int last_unit;          // the bucket is ready when backward reports this unit
    int64_t begin, end;     // elements of the gradient buffer
    int ticket = -1;
  };
  void on_unit_ready(int unit);
  void start(Bucket& b);
  ParameterSet& params_;
  Communicator& comm_;
  std::vector<Bucket> buckets_;
  bool armed_ = false;
};

}  // namespace ltrain
