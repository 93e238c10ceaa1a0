// Collectives of the MPI communicator against closed forms, with rank-valued inputs.
// Run under mpirun with any number of ranks; prints "N passed, M failed" and exits non-zero on a
// failure. Also checks send_recv and the data x pipeline x tensor grid: tensor groups are consecutive ranks.
// With --fatal, the last rank fails an internal check while the others wait in a barrier that
// can never complete: the job must end at once (every rank, non-zero), not hang.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "ltrain/core/check.h"
#include "ltrain/core/tensor.h"
#include "ltrain/parallel/communicator.h"

using namespace ltrain;

static int passed = 0, failed = 0;
static void expect(bool ok, const std::string& what, int rank) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::fprintf(stderr, "[rank %d] FAIL: %s\n", rank, what.c_str());
  }
}

static Tensor view(std::vector<float>& v) {
  Tensor t;
  t.data = v.data();
  t.dtype = DType::kF32;
  t.shape = Shape{int64_t(v.size())};
  return t;
}

int main(int argc, char** argv) {
  std::unique_ptr<ParallelContext> context = ParallelContext::init(&argc, &argv);
  ParallelContext& par = *context;
  Communicator& w = par.world();
  const int r = w.rank(), P = w.size();
  const int n = 5;
  if (argc > 1 && std::string(argv[1]) == "--fatal") {
    if (r == P - 1) LTRAIN_CHECK(r < 0, "deliberate internal error on the last rank");
    w.barrier();  // never completes: the last rank does not arrive
    std::fprintf(stderr, "[rank %d] FAIL: passed a barrier the last rank never reached\n", r);
    return 0;
  }

  // all-reduce: element i of rank r holds (r + 1) * (i + 1); the sum is (i + 1) * P (P + 1) / 2.
  std::vector<float> a(n);
  for (int i = 0; i < n; ++i) a[i] = float((r + 1) * (i + 1));
  w.all_reduce_sum(view(a));
  bool ok = true;
  for (int i = 0; i < n; ++i) ok = ok && a[i] == float((i + 1) * P * (P + 1) / 2);
  expect(ok, "all_reduce_sum", r);

  // asynchronous all-reduce of two buffers, completed out of order
  std::vector<float> b1(n, float(r)), b2(3, 1.0f);
  int t1 = w.all_reduce_sum_start(view(b1)), t2 = w.all_reduce_sum_start(view(b2));
  w.wait(t2);
  w.wait(t1);
  ok = true;
  for (float x : b1) ok = ok && x == float(P * (P - 1) / 2);
  for (float x : b2) ok = ok && x == float(P);
  expect(ok, "all_reduce_sum_start/wait", r);

  // reduce-scatter: input element j of rank r is r + j; chunk c of the sum is sum_r (r + j).
  std::vector<float> in(size_t(n) * P), out(n, NAN);
  for (int j = 0; j < n * P; ++j) in[j] = float(r + j);
  w.reduce_scatter_sum(view(out), view(in));
  ok = true;
  for (int i = 0; i < n; ++i) ok = ok && out[i] == float(P * (r * n + i) + P * (P - 1) / 2);
  expect(ok, "reduce_scatter_sum", r);

  // all-gather, out of place and in place: chunk c holds c * 10 + i.
  std::vector<float> mine(n), all(size_t(n) * P, NAN);
  for (int i = 0; i < n; ++i) mine[i] = float(r * 10 + i);
  w.all_gather(view(all), view(mine));
  ok = true;
  for (int c = 0; c < P; ++c)
    for (int i = 0; i < n; ++i) ok = ok && all[size_t(c) * n + i] == float(c * 10 + i);
  expect(ok, "all_gather", r);
  std::vector<float> inplace(size_t(n) * P, NAN);
  for (int i = 0; i < n; ++i) inplace[size_t(r) * n + i] = float(r * 10 + i);
  Tensor own = view(inplace);
  own.data = inplace.data() + size_t(r) * n;
  own.shape = Shape{n};
  w.all_gather(view(inplace), own);
  expect(inplace == all, "all_gather in place", r);

  // broadcast from the last rank
  std::vector<float> bc(n, float(r));
  w.broadcast(view(bc), P - 1);
  ok = true;
  for (float x : bc) ok = ok && x == float(P - 1);
  expect(ok, "broadcast", r);

  expect(w.sum(r) == P * (P - 1) / 2.0, "scalar sum", r);
  expect(w.max(-r) == 0.0, "scalar max", r);

  // send_recv around the ring: each rank sends r to r+1 and receives r-1's at once (every rank
  // sends before it receives, which deadlocks unless the pair is one operation).
  {
    std::vector<float> out(1000, float(r)), in(1000, -1.0f);
    w.send_recv({{view(out), (r + 1) % P, true}, {view(in), (r + P - 1) % P, false}});
    bool ok = true;
    for (float x : in) ok = ok && x == float((r + P - 1) % P);
    expect(ok, "send_recv around the ring", r);
    // one-sided: rank 0 sends to the last rank only
    std::vector<float> one(7, r == 0 ? 42.0f : 0.0f);
    if (r == 0 && P > 1) w.send_recv({{view(one), P - 1, true}});
    if (r == P - 1 && P > 1) w.send_recv({{view(one), 0, false}});
    expect(one[6] == (r == 0 || r == P - 1 ? 42.0f : 0.0f), "one-sided send / recv", r);
    // started, not waited (the pipeline's form): three exchanges around the ring in flight at
    // once, with an all-reduce in between, completed in another order than started. Each lands
    // in its own buffer: messages between two ranks match in the order they were posted.
    std::vector<std::vector<float>> outs, ins;
    for (int k = 0; k < 3; ++k) {
      outs.emplace_back(5000, float(100 * k + r));  // above the eager limits: rendezvous
      ins.emplace_back(5000, -1.0f);
    }
    std::vector<int> tickets;
    for (int k = 0; k < 3; ++k)
      tickets.push_back(w.send_recv_start({{view(outs[size_t(k)]), (r + 1) % P, true},
                                           {view(ins[size_t(k)]), (r + P - 1) % P, false}}));
    std::vector<float> red(3, 1.0f);
    w.all_reduce_sum(view(red));
    w.wait_on_stream(tickets[2]);
    w.wait(tickets[0]);
    w.wait(tickets[1]);
    ok = red[0] == float(P);
    for (int k = 0; k < 3; ++k)
      for (float x : ins[size_t(k)]) ok = ok && x == float(100 * k + (r + P - 1) % P);
    expect(ok, "started send_recv, completed out of order", r);
  }

  // grid: with P divisible by 4, data = P/4 x pipeline = 2 x tensor = 2: tensor groups are
  // consecutive ranks, pipeline stages the next coordinate.
  if (P % 4 == 0) {
    par.setup_grid(P / 4, 2, 2);
    expect(par.tensor_rank() == r % 2 && par.pipeline_rank() == (r / 2) % 2 && par.data_rank() == r / 4,
           "3-d grid coordinates", r);
    expect(par.pipeline().size() == 2 && par.pipeline().rank() == par.pipeline_rank(), "pipeline group", r);
    // the pipeline group of rank r is {r with stage 0, r with stage 1}: their sum
    const int base = (r / 4) * 4 + r % 2;
    expect(par.pipeline().sum(r) == double(base + base + 2), "pipeline group = same data and tensor rank", r);
    expect(par.tensor().sum(r) == double((r / 2) * 2 * 2 + 1), "tensor group in the 3-d grid", r);
    expect(par.data().size() == P / 4, "data group in the 3-d grid", r);
  }

  // grid: with P even, data = P/2 x tensor = 2; tensor groups are consecutive ranks.
  if (P % 2 == 0) {
    par.setup_grid(P / 2, 1, 2);
    expect(par.tensor().size() == 2 && par.data().size() == P / 2, "grid sizes", r);
    expect(par.tensor().sum(r) == double((r / 2) * 2 * 2 + 1), "tensor group = consecutive ranks", r);
    expect(par.data().sum(1.0) == P / 2, "data group size", r);
    expect(par.data_rank() == r / 2 && par.tensor_rank() == r % 2, "grid coordinates", r);
  }

  const int total_failed = int(w.sum(failed));
  if (r == 0) std::printf("collectives on %d ranks: %d passed, %d failed\n", P, passed, total_failed);
  par.finalize();
  return total_failed ? 1 : 0;
}
