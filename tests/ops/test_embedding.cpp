// embedding: forward gathers rows of wte, backward adds dout's rows into dwte (repeated tokens
// sum; id -1, a token of another vocabulary shard, reads zeros and gets no gradient). CPU: the
// backward against finite differences. GPU: exact forward, backward (+=) and its determinism.
#include "op_test_util.h"

namespace ltrain {
namespace {

using namespace test;

TEST(OpsFiniteDiff, Embedding) {
  const int V = 6, C = 5, N = 9;
  std::vector<int32_t> tok = {0, 3, 3, 5, 1, 0, 2, 3, 4};  // repeated tokens accumulate
  Vec wte = random_vector(V * C, 4), r = random_vector(N * C, 5);
  auto loss = [&] {
    Vec out(N * C);
    cpu::embedding_forward(out.data(), tok.data(), wte.data(), N, C);
    return dot(out, r);
  };
  Vec dwte = random_vector(V * C, 6), base = dwte;  // += semantics: start from non-zero
  cpu::embedding_backward(dwte.data(), r.data(), tok.data(), N, C);
  for (size_t i = 0; i < dwte.size(); ++i) dwte[i] -= base[i];
  check_fd("embedding dwte", wte, dwte, loss);
}

// ---- GPU against the double oracle -------------------------------------------------------------

// other_shard: some tokens are -1 (owned by another vocabulary shard under tensor parallelism):
// zero rows forward, no gradient backward.
void check_embedding(int N, int C, int V, DType dt, uint64_t seed, bool other_shard = false) {
  GpuScope s;
  std::vector<int32_t> tok = random_tokens(N, V, seed);
  if (other_shard)
    for (int i = 1; i < N; i += 3) tok[i] = -1;
  Vec wte = random_in(dt, size_t(V) * C, seed + 1), dout = random_in(dt, size_t(N) * C, seed + 2);
  Vec dwte0 = random_in(DType::kF32, size_t(V) * C, seed + 3);
  Tensor t_tok = put_tokens(s, tok);
  Tensor t_wte = s.put({V, C}, dt, wte), out = s.poisoned({N, C}, dt);
  gpu().embedding_forward(out, t_tok, t_wte);
  Vec ref(size_t(N) * C);
  cpu::embedding_forward(ref.data(), tok.data(), wte.data(), N, C);
  std::ostringstream what;
  what << "embedding N " << N << " C " << C << " V " << V << " " << dtype_name(dt)
       << (other_shard ? " other-shard ids" : "");
  expect_close(what.str() + " forward", get(out), ref, {0, 0});  // a copy: exact

  Tensor t_dout = s.put({N, C}, dt, dout), dwte = s.put({V, C}, DType::kF32, dwte0);
  gpu().embedding_backward(dwte, t_dout, t_tok);
  Vec dref = dwte0;
  cpu::embedding_backward(dref.data(), dout.data(), tok.data(), N, C);
  const Vec got = get(dwte);
  expect_close(what.str() + " backward (+=)", got, dref, kTolF32Sum);
  // Deterministic: the same call on the same start gives the same bits.
  gpu().from_host(dwte, dwte0.data(), DType::kF64);
  gpu().embedding_backward(dwte, t_dout, t_tok);
  expect_bitwise_equal(what.str() + " backward determinism", get(dwte), got);
}

TEST(CudaEmbedding, ForwardBackwardShapes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) {
    check_embedding(7, 72, 11, dt, 1);
    check_embedding(33, 75, 50, dt, 2);        // C not a multiple of the vector width
    check_embedding(20, 72, 11, dt, 4, true);  // vocabulary-parallel: ids of another shard
    check_embedding(20, 75, 11, dt, 5, true);
    // Rows past one sort chunk (2048), a length that is no power of two, and tokens repeated
    // thousands of times: the device sort's merge stages across chunks.
    check_embedding(9000, 16, 37, dt, 6);
    check_embedding(5000, 8, 3, dt, 7, true);
  }
}

// Production sizes: run on a real GPU (ctest label gpu-only), left out of the emulator's run.
TEST(CudaEmbedding, ProductionSizes) {
  LTRAIN_SKIP_WITHOUT_GPU();
  for (DType dt : kActDtypes) check_embedding(2048, 4096, 32000, dt, 3);
}

}  // namespace
}  // namespace ltrain
