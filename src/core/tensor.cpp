#include "ltrain/core/tensor.h"

#include "ltrain/core/check.h"

namespace ltrain {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kBF16: return 2;
    case DType::kI32: return 4;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF64: return "f64";
    case DType::kBF16: return "bf16";
    case DType::kI32: return "i32";
  }
  return "?";
}

Shape::Shape(std::initializer_list<int64_t> d) {
  LTRAIN_CHECK(d.size() <= kMaxDims, "too many dims");
  for (int64_t x : d) dims[ndim++] = x;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= dims[i];
  return ndim == 0 ? 0 : n;
}

std::string Shape::str() const {
  std::string s = "(";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + ")";
}

bool Shape::operator==(const Shape& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (dims[i] != o.dims[i]) return false;
  return true;
}

Tensor Tensor::slice_rows(int64_t row, int64_t rows) const {
  LTRAIN_CHECK(shape.ndim >= 1 && row >= 0 && row + rows <= shape.dims[0], "slice out of range");
  Tensor t = *this;
  int64_t row_elems = shape.dims[0] ? numel() / shape.dims[0] : 0;
  t.data = static_cast<char*>(data) + row * row_elems * dtype_size(dtype);
  t.shape.dims[0] = rows;
  return t;
}

Tensor Tensor::view(Shape s) const {
  LTRAIN_CHECK(s.numel() == numel(), "view " << s.str() << " of " << shape.str());
  Tensor t = *this;
  t.shape = s;
  return t;
}

}  // namespace ltrain
