// Tensor: a typed view of memory owned by a Backend (host memory for the CPU backend, device
// memory for CUDA). It carries its shape for checks and messages; it does not own its data.
// Shapes are row-major; by convention the letters are B, T, C (hidden), H, KV, HD, FF, V, L.
// Two letters stand in for them where the usual one cannot: `Tn` is the sequence length in
// templates whose element type is `T` (src/cpu/ops.h, kernels/), and `NH` is the head count of a
// tensor that is either the queries (H) or the keys (KV), as RoPE's. A rank's share under tensor
// parallelism adds `l` (Hl, KVl, FFl, Vl), and `Ns` is the rows a rank holds in the
// sequence-parallel regions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace ltrain {

enum class DType { kF32, kF64, kBF16, kI32 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
// Converts n elements between host buffers of any two dtypes (bf16 rounds to nearest even and
// keeps NaN a NaN).
void convert_host(void* dst, DType dst_t, const void* src, DType src_t, int64_t n);
// One bf16 value: round to nearest even (NaN stays a NaN), and back (exact).
uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t b);

struct Shape {
  static constexpr int kMaxDims = 4;
  int ndim = 0;
  int64_t dims[kMaxDims] = {0, 0, 0, 0};
  Shape() = default;
  Shape(std::initializer_list<int64_t> d);
  int64_t numel() const;
  std::string str() const;
  bool operator==(const Shape& o) const;
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;

  int64_t numel() const { return shape.numel(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool defined() const { return data != nullptr; }
  template <class T>
  T* as() const { return static_cast<T*>(data); }
  // A view of rows [row, row + rows) of the leading dimension.
  Tensor slice_rows(int64_t row, int64_t rows) const;
  // A view of the same memory with another shape of the same element count.
  Tensor view(Shape s) const;
};

}  // namespace ltrain
