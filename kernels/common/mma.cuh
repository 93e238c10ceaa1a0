// The kernels' inline PTX, all of it in this one file: the tensor-core product, shared-memory
// matrix loads and asynchronous global-to-shared copies (sm_80 and later). Under the CUDA
// emulator (tests/cuda_emu, LTRAIN_CUDA_EMU) each wrapper calls the emulator's implementation of
// the instruction, written from the PTX ISA; tests/cuda_emu/test_mma_selftest.cu runs the same
// tests of every wrapper on both, which is the proof that the two agree.
//
// API (namespace ltrain::cuda; stable: other kernels build on it):
//
//   mma_bf16_16x8x16(c, a, b0, b1)       mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, c += a b
//     a: 16x16 bf16 (4 registers of bf16x2), b: 16x8 bf16 (2 registers), c: 16x8 fp32 (4 per lane).
//     Fragment layout (PTX ISA, m16n8k16 with 16-bit floating-point inputs), g = lane / 4, t = lane % 4:
//       A: a0 = (row g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//       B: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//       C: c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1); the lower index in the low 16 bits.
//
//   ldmatrix_x4(r, row) / ldmatrix_x4_trans(r, row)     ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16
//   ldmatrix_x2(r, row) / ldmatrix_x2_trans(r, row)     the same with two matrices
//     Warp collectives: every lane of the warp calls them together. `row` is a shared-memory
//     pointer, 16-byte aligned: lanes 8i..8i+7 give the rows of matrix i (x2: lanes 0..15 matter),
//     each row 8 contiguous bf16. Lane l receives in r[i] elements (row l/4, columns 2(l%4) and
//     2(l%4)+1) of matrix i, the lower column in the low half; with _trans, of the transposed
//     matrix (elements (rows 2(l%4), 2(l%4)+1; column l/4) as stored). For mma operands in
//     row-major shared tiles (element (row, col) at tile + row * stride + col):
//       A fragment of rows r0..r0+15, k k0..k0+15:    ldmatrix_x4, lane l addressing
//         (r0 + l % 16, k0 + 8 (l / 16)) gives a0..a3.
//       B fragments from an n-major tile (row = n, column = k; e.g. keys x head dim), n-tiles
//         n0 and n0+8 at k0: ldmatrix_x4, lane l addressing (n0 + l % 8 + 8 (l / 16),
//         k0 + 8 ((l / 8) % 2)) gives {b0, b1} of n-tile n0 in r[0], r[1] and of n0+8 in r[2], r[3].
//       B fragments from a k-major tile (row = k, column = n; e.g. keys x head dim as the k x n
//         operand of P V), k0..k0+15, n-tiles n0 and n0+8: ldmatrix_x4_trans, lane l addressing
//         (k0 + l % 16, n0 + 8 (l / 16)) gives {b0, b1} of n0 in r[0], r[1] and of n0+8 in r[2], r[3].
//
//   cp_async_16(dst, src)                cp.async.cg.shared.global [dst], [src], 16
//   cp_async_16_zfill(dst, src, bytes)   the same with src-size: `bytes` (0..16) are read, the rest
//                                        of the 16 destination bytes are zeros (bytes 0: nothing is
//                                        read; src should still be a valid address)
//   cp_async_commit()                    cp.async.commit_group: this thread's uncommitted copies
//                                        become one group (an empty one if there are none)
//   cp_async_wait<N>()                   cp.async.wait_group N: every group but this thread's N
//                                        most recent has landed
//   cp_async_wait_all()                  cp.async.wait_all (commit_group + wait_group 0)
//     dst: shared memory, src: global memory, both 16-byte aligned. Per thread: a copy is
//     visible to the issuing thread after the wait that retires its group, and to the other
//     threads of the block only after a __syncthreads that follows that wait. __syncthreads
//     alone completes nothing. Every copy must be waited for before the thread exits.
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

#ifndef LTRAIN_CUDA_EMU
// The 32-bit .shared window address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::ldmatrix_m8n8(r, row, 4, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::ldmatrix_m8n8(r, row, 4, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::ldmatrix_m8n8(r, row, 2, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::ldmatrix_m8n8(r, row, 2, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::cp_async_16(dst, src, 16);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(dst)), "l"(src)
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async_16_zfill(void* dst, const void* src, int src_bytes) {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::cp_async_16(dst, src, src_bytes);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::cp_async_commit_group();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group takes a non-negative count");
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::cp_async_wait_group(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#ifdef LTRAIN_CUDA_EMU
  ::cuda_emu::cp_async_wait_all();
#else
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

}  // namespace ltrain::cuda
