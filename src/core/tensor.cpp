#include "ltrain/core/tensor.h"

#include <cstring>

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

uint16_t float_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // NaN: keep it a (quiet) NaN
  // Round to nearest, ties to even: add just under half an ulp of bf16, plus one when the kept
  // part is odd. Overflow carries into the exponent (and to inf), as rounding should.
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float bf16_to_float(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

static double host_load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF64: return static_cast<const double*>(p)[i];
    case DType::kI32: return static_cast<const int32_t*>(p)[i];
    case DType::kBF16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  }
  return 0;
}

static void host_store(void* p, DType t, int64_t i, double x) {
  switch (t) {
    case DType::kF32: static_cast<float*>(p)[i] = float(x); return;
    case DType::kF64: static_cast<double*>(p)[i] = x; return;
    case DType::kI32: static_cast<int32_t*>(p)[i] = int32_t(x); return;
    case DType::kBF16: static_cast<uint16_t*>(p)[i] = float_to_bf16(float(x)); return;
  }
}

void convert_host(void* dst, DType dst_t, const void* src, DType src_t, int64_t n) {
  if (dst_t == src_t) {
    std::memcpy(dst, src, size_t(n) * dtype_size(dst_t));
    return;
  }
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) host_store(dst, dst_t, i, host_load(src, src_t, i));
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
