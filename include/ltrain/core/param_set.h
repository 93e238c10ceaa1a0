// ParameterSet: a model's trainable tensors as the optimizer, the gradient reducer and
// checkpoints see them, without knowing which model they belong to.
//
// Two flat buffers with the same layout, one for the weights (compute dtype) and one for the
// gradients (master dtype), and a named view per tensor into each. Under tensor parallelism a
// view is this rank's part of the global tensor; `shard_dim` and `global_shape` say which part.
// Gradient units are contiguous ranges of the gradient buffer in the order backward finishes
// them; the model reports each one as soon as it is final (grad_ready), so data parallelism can
// start reducing it while backward goes on.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ltrain/core/tensor.h"

namespace ltrain {

class Backend;

// A named view into the flat parameter (or gradient) buffer. Names follow Hugging Face's
// LlamaForCausalLM.
struct NamedTensor {
  std::string name;
  Tensor tensor;        // this rank's part
  bool decay;           // weight decay applies (weight matrices: yes; norms: no)
  int shard_dim = -1;   // tensor parallelism: the dimension split over ranks; -1 = replicated
  Shape global_shape;   // the whole tensor's shape
  // Pipeline parallelism with tied embeddings: the last stage's copy of the first stage's
  // embedding. Norms and checkpoints count the original only (model/layout.h).
  bool tied_copy = false;
  // The tensor's place in the whole model's order (pipeline stages hold parts of it; checkpoint
  // manifests list the tensors in it). -1: its place in params().
  int order = -1;
};

// A whole (unsharded) tensor on the host, in fp32: what checkpoints and HF files hold.
struct HostTensor {
  std::string name;
  Shape shape;
  std::vector<float> data;
};

// The part of a global tensor one tensor-parallel rank holds: indices [start, start + length) of
// dimension `dim`, all of every other dimension. A replicated tensor is the whole of dim 0.
struct TensorSlice {
  int dim = 0;
  int64_t start = 0, length = 0;
};

// Row-major copies between a whole tensor of shape `whole_shape` and the part `s` of it (one
// tensor-parallel rank's), elements of `elem` bytes: extract_slice copies the part out of the
// whole, insert_slice puts it back in its place. The part is contiguous in its own shape.
void extract_slice(const void* whole, const Shape& whole_shape, const TensorSlice& s, void* part, size_t elem);
void insert_slice(void* whole, const Shape& whole_shape, const TensorSlice& s, const void* part, size_t elem);

// A contiguous range of `flat` (a buffer laid out like the parameters), as a 1-D tensor.
Tensor flat_range(const Tensor& flat, int64_t begin, int64_t n);

class ParameterSet {
 public:
  ParameterSet() = default;
  // Set by the model once its buffers and views exist. unit_ranges: [begin, end) of each
  // gradient unit, in backward order.
  void assign(Backend& backend, Tensor param_buffer, Tensor grad_buffer, std::vector<NamedTensor> params,
              std::vector<NamedTensor> grads, int tp_rank, int tp_size,
              std::vector<std::pair<int64_t, int64_t>> unit_ranges);

  Backend& backend() const { return *backend_; }
  Tensor param_buffer() const { return param_buf_; }
  Tensor grad_buffer() const { return grad_buf_; }
  const std::vector<NamedTensor>& params() const { return params_; }
  const std::vector<NamedTensor>& grads() const { return grads_; }
  int tensor_parallel_rank() const { return tp_rank_; }
  int tensor_parallel_size() const { return tp_size_; }
  // This rank's elements, without the alignment padding between views.
  int64_t num_params() const;

  // Where p (one of params()) starts in a buffer laid out like the parameters, in elements.
  int64_t offset(const NamedTensor& p) const;
  // p's view into `flat`, any buffer laid out like the parameters (weights, gradients, moments).
  Tensor view(const Tensor& flat, const NamedTensor& p) const;
  // Which part of p's global tensor this rank holds.
  TensorSlice local_slice(const NamedTensor& p) const;

  int num_grad_units() const { return int(unit_ranges_.size()); }
  std::pair<int64_t, int64_t> grad_unit_range(int unit) const;  // [begin, end) elements
  // The listener of finished gradient units (one at a time; nullptr removes it).
  void set_grad_ready_hook(std::function<void(int unit)> hook) { hook_ = std::move(hook); }
  // Called by the model's backward when a unit's gradients are final for this pass.
  void grad_ready(int unit) const {
    if (hook_) hook_(unit);
  }

 private:
  Backend* backend_ = nullptr;
  Tensor param_buf_, grad_buf_;
  std::vector<NamedTensor> params_, grads_;
  int tp_rank_ = 0, tp_size_ = 1;
  std::vector<std::pair<int64_t, int64_t>> unit_ranges_;
  std::function<void(int)> hook_;
};

}  // namespace ltrain
