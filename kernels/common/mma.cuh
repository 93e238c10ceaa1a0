// The tensor-core product the attention kernels use, the one place with inline PTX:
//   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32  c = a b + c
// a: 16x16 bf16 (4 registers of bf16x2), b: 16x8 bf16 (2 registers), c: 16x8 fp32 (4 per lane).
// Fragment layout (PTX ISA, m16n8k16 with 16-bit floating-point inputs), g = lane / 4, t = lane % 4:
//   A: a0 = (row g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C: c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1); the lower index in the low 16 bits.
// Under the CUDA emulator (tests/cuda_emu) it is the emulator's warp collective, written from the
// same figures; tests/cuda_emu/test_mma_selftest.cu runs one test on both and is the proof that
// the two agree.
#pragma once
#include <cstdint>

namespace ltrain::cuda {

__device__ __forceinline__ void mma_bf16_16x8x16(float c[4], const uint32_t a[4], uint32_t b0,
                                                 uint32_t b1) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::mma_m16n8k16_bf16(c, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

}  // namespace ltrain::cuda
