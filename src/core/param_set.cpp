#include "ltrain/core/param_set.h"

#include <cstring>

#include "ltrain/core/check.h"

namespace ltrain {

namespace {
// The whole tensor seen as (outer, dims[s.dim], inner): the part is `outer` runs of
// s.length * inner contiguous elements, starting at s.start * inner within each outer index.
// Calls run(byte offset in the whole, byte offset in the part, bytes) for each.
template <typename Run>
void for_slice_runs(const Shape& whole_shape, const TensorSlice& s, size_t elem, Run run) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < s.dim; ++i) outer *= whole_shape.dims[i];
  for (int i = s.dim + 1; i < whole_shape.ndim; ++i) inner *= whole_shape.dims[i];
  const int64_t D = whole_shape.dims[s.dim];
  LTRAIN_CHECK(s.start >= 0 && s.start + s.length <= D,
               "slice [" << s.start << ", " << s.start + s.length << ") of " << whole_shape.str());
  const size_t bytes = size_t(s.length * inner) * elem;
  for (int64_t o = 0; o < outer; ++o) run(size_t((o * D + s.start) * inner) * elem, size_t(o) * bytes, bytes);
}
}  // namespace

void extract_slice(const void* whole, const Shape& whole_shape, const TensorSlice& s, void* part, size_t elem) {
  for_slice_runs(whole_shape, s, elem, [&](size_t w, size_t p, size_t n) {
    std::memcpy(static_cast<char*>(part) + p, static_cast<const char*>(whole) + w, n);
  });
}

void insert_slice(void* whole, const Shape& whole_shape, const TensorSlice& s, const void* part, size_t elem) {
  for_slice_runs(whole_shape, s, elem, [&](size_t w, size_t p, size_t n) {
    std::memcpy(static_cast<char*>(whole) + w, static_cast<const char*>(part) + p, n);
  });
}

Tensor flat_range(const Tensor& flat, int64_t begin, int64_t n) {
  Tensor t = flat;
  t.data = static_cast<char*>(flat.data) + begin * int64_t(dtype_size(flat.dtype));
  t.shape = Shape{n};
  return t;
}

void ParameterSet::assign(Backend& backend, Tensor param_buffer, Tensor grad_buffer,
                          std::vector<NamedTensor> params, std::vector<NamedTensor> grads, int tp_rank,
                          int tp_size, std::vector<std::pair<int64_t, int64_t>> unit_ranges) {
  LTRAIN_CHECK(params.size() == grads.size() && param_buffer.numel() == grad_buffer.numel());
  backend_ = &backend;
  param_buf_ = param_buffer;
  grad_buf_ = grad_buffer;
  params_ = std::move(params);
  grads_ = std::move(grads);
  tp_rank_ = tp_rank;
  tp_size_ = tp_size;
  unit_ranges_ = std::move(unit_ranges);
}

int64_t ParameterSet::num_params() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.tensor.numel();
  return n;
}

int64_t ParameterSet::offset(const NamedTensor& p) const {
  return (static_cast<const char*>(p.tensor.data) - static_cast<const char*>(param_buf_.data)) /
         int64_t(dtype_size(param_buf_.dtype));
}

Tensor ParameterSet::view(const Tensor& flat, const NamedTensor& p) const {
  Tensor t = flat_range(flat, offset(p), p.tensor.numel());
  t.shape = p.tensor.shape;
  return t;
}

TensorSlice ParameterSet::local_slice(const NamedTensor& p) const {
  if (p.shard_dim < 0) return {0, 0, p.global_shape.dims[0]};
  const int64_t len = p.tensor.shape.dims[p.shard_dim];
  return {p.shard_dim, int64_t(tp_rank_) * len, len};
}

std::pair<int64_t, int64_t> ParameterSet::grad_unit_range(int unit) const {
  LTRAIN_CHECK(unit >= 0 && unit < num_grad_units(), "unit " << unit);
  return unit_ranges_[size_t(unit)];
}

}  // namespace ltrain
