// The state sections of a training checkpoint, described by their owners so that checkpoint/
// knows neither the model nor the optimizer:
//   "tensors"    the fp32 (master) weights           buffers laid out like a ParameterSet's flat
//   "optimizer"  the AdamW moments, NAME.exp_avg     parameter buffer, of which each rank holds a
//                and NAME.exp_avg_sq                 range: ShardedState
//   "data"       the data loader's position          JSON: TrainState (checkpoint.h)
//   "guard"      the step guard's history
// The optimizer implements ShardedState (it holds the master weights and the moments); eval and
// generate load the weights into a bare ParameterSet.
#pragma once
#include <cstdint>

#include "ltrain/core/param_set.h"

namespace ltrain {

class ShardedState {
 public:
  enum class Buffer { kWeights, kExpAvg, kExpAvgSq };
  virtual ~ShardedState() = default;

  // The tensors the buffers are laid out like: names, global shapes, this rank's tensor-parallel
  // slice of each, and where each starts in the flat layout.
  virtual const ParameterSet& parameters() const = 0;
  // The range of the flat layout this rank holds: [shard_begin, shard_begin + shard_size), all
  // of it, or under ZeRO-1 (zero()) its data-parallel shard.
  virtual bool zero() const = 0;
  virtual int64_t shard_begin() const = 0;
  virtual int64_t shard_size() const = 0;
  // Copies this rank's range of the fp32 weights and of both moments to host arrays of
  // shard_size() floats. Not collective.
  virtual void export_shard(float* w, float* m, float* v) = 0;
  // Host values of the flat layout [begin, begin + n) of one buffer; the holder keeps what it
  // holds of them. Not collective.
  virtual void import_host_range(Buffer which, int64_t begin, const float* values, int64_t n) = 0;
};

}  // namespace ltrain
