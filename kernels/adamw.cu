// Fused AdamW over one tensor, in fp32 (master weights, moments and gradients are fp32):
//   g = grad * grad_scale                       (global-norm clipping folded in)
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= lr * (weight_decay * p + (m / bc1) / (sqrt(v / bc2) + eps))
// Decoupled weight decay as in PyTorch's AdamW and src/cpu/ops.h. Reads 4 and writes 3 arrays
// once: memory-bound, 16-byte accesses when the pointers allow, scalar otherwise.
#include "common/cuda_check.cuh"
#include "common/device.cuh"
#include "common/launch.cuh"
#include "kernels.h"

namespace ltrain::cuda {
namespace {

template <int VEC>
__global__ void adamw_update_elementwise(float* param, const float* grad, float* m, float* v,
                                         int64_t n, float lr, float beta1, float beta2, float eps,
                                         float weight_decay, float grad_scale, float bc1, float bc2) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (i >= n) return;
  Packed<float, VEC> p = load_packed<float, VEC>(param + i), g = load_packed<float, VEC>(grad + i),
                     mv = load_packed<float, VEC>(m + i), vv = load_packed<float, VEC>(v + i);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float gj = g.v[j] * grad_scale;
    mv.v[j] = beta1 * mv.v[j] + (1.f - beta1) * gj;
    vv.v[j] = beta2 * vv.v[j] + (1.f - beta2) * gj * gj;
    const float mhat = mv.v[j] / bc1, vhat = vv.v[j] / bc2;
    p.v[j] -= lr * (weight_decay * p.v[j] + mhat / (sqrtf(vhat) + eps));
  }
  store_packed<float, VEC>(param + i, p);
  store_packed<float, VEC>(m + i, mv);
  store_packed<float, VEC>(v + i, vv);
}

}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                  float bc1, float bc2, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int VEC = 4;
  const int64_t head = can_vectorize<float>(VEC, {param, grad, m, v}) ? n / VEC * VEC : 0;
  if (head > 0) {
    launch_kernel(adamw_update_elementwise<VEC>, ceil_div(head, 256 * VEC), 256, 0, stream,
        param, grad, m, v, head, lr, beta1, beta2, eps, weight_decay, grad_scale, bc1, bc2);
    CUDA_CHECK_LAUNCH();
  }
  if (n > head) {
    launch_kernel(adamw_update_elementwise<1>, ceil_div(n - head, 256), 256, 0, stream,
        param + head, grad + head, m + head, v + head, n - head, lr, beta1, beta2, eps,
        weight_decay, grad_scale, bc1, bc2);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace ltrain::cuda
