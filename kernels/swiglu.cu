// SwiGLU and the residual add: elementwise, fp32 arithmetic, 16-byte accesses with a scalar tail.
//   forward:  out = silu(gate) * up,  silu(g) = g * sigmoid(g)
//   backward: dgate = dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  dup = dout * silu(g)
//   add:      out = a + b (out may alias a or b)
// All arrays (N, FF) (or any shape of n elements); gradients written (=).
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + __expf(-g)); }

// Each thread handles VEC consecutive elements starting at (global thread) * VEC; the launch
// covers n / VEC full vectors and the tail runs with VEC = 1 on the same kernel body.
template <class T, int VEC>
__global__ void swiglu_forward_elementwise(T* out, const T* gate, const T* up, int64_t n) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (i >= n) return;
  Packed<T, VEC> g = load_packed<T, VEC>(gate + i), u = load_packed<T, VEC>(up + i), y;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float gf = to_float(g.v[j]);
    y.v[j] = from_float<T>(gf * sigmoid(gf) * to_float(u.v[j]));
  }
  store_packed<T, VEC>(out + i, y);
}

template <class T, int VEC>
__global__ void swiglu_backward_elementwise(T* dgate, T* dup, const T* dout, const T* gate,
                                            const T* up, int64_t n) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (i >= n) return;
  Packed<T, VEC> g = load_packed<T, VEC>(gate + i), u = load_packed<T, VEC>(up + i),
                 dy = load_packed<T, VEC>(dout + i), dg, du;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float gf = to_float(g.v[j]), s = sigmoid(gf), d = to_float(dy.v[j]);
    dg.v[j] = from_float<T>(d * to_float(u.v[j]) * s * (1.f + gf * (1.f - s)));
    du.v[j] = from_float<T>(d * gf * s);
  }
  store_packed<T, VEC>(dgate + i, dg);
  store_packed<T, VEC>(dup + i, du);
}

template <class T, int VEC>
__global__ void add_elementwise(T* out, const T* a, const T* b, int64_t n) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (i >= n) return;
  Packed<T, VEC> x = load_packed<T, VEC>(a + i), y = load_packed<T, VEC>(b + i), z;
#pragma unroll
  for (int j = 0; j < VEC; ++j) z.v[j] = from_float<T>(to_float(x.v[j]) + to_float(y.v[j]));
  store_packed<T, VEC>(out + i, z);
}

// Runs `body(VEC, offset, count)` on the vector part and the scalar tail.
template <class T, class Body>
void split_vector_tail(int64_t n, std::initializer_list<const void*> ptrs, Body body) {
  constexpr int VEC = kVec<T>;
  const int64_t head = can_vectorize<T>(VEC, ptrs) ? n / VEC * VEC : 0;
  if (head > 0) body(std::integral_constant<int, VEC>{}, int64_t(0), head);
  if (n > head) body(std::integral_constant<int, 1>{}, head, n - head);
}

}  // namespace

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream) {
  split_vector_tail<T>(n, {out, gate, up}, [&](auto vec, int64_t off, int64_t cnt) {
    constexpr int VEC = decltype(vec)::value;
    launch_kernel(swiglu_forward_elementwise<T, VEC>,
        ceil_div(cnt, 256 * VEC), 256, 0, stream, out + off, gate + off, up + off, cnt);
    CUDA_CHECK_LAUNCH();
  });
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n,
                     cudaStream_t stream) {
  split_vector_tail<T>(n, {dgate, dup, dout, gate, up}, [&](auto vec, int64_t off, int64_t cnt) {
    constexpr int VEC = decltype(vec)::value;
    launch_kernel(swiglu_backward_elementwise<T, VEC>, ceil_div(cnt, 256 * VEC), 256, 0, stream,
        dgate + off, dup + off, dout + off, gate + off, up + off, cnt);
    CUDA_CHECK_LAUNCH();
  });
}

template <class T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  split_vector_tail<T>(n, {out, a, b}, [&](auto vec, int64_t off, int64_t cnt) {
    constexpr int VEC = decltype(vec)::value;
    launch_kernel(add_elementwise<T, VEC>, ceil_div(cnt, 256 * VEC), 256, 0, stream, out + off, a + off, b + off, cnt);
    CUDA_CHECK_LAUNCH();
  });
}

#define LTRAIN_INSTANTIATE(T)                                                                    \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t, cudaStream_t);                \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, cudaStream_t); \
  template void add<T>(T*, const T*, const T*, int64_t, cudaStream_t);
LTRAIN_INSTANTIATE(float)
LTRAIN_INSTANTIATE(bf16)
#undef LTRAIN_INSTANTIATE

}  // namespace ltrain::cuda
