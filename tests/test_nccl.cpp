// The NCCL communicator on a real GPU (issue 4: "the NCCL path runs on a real GPU; world size 1
// is enough where only one GPU is available"). Bootstrapped through the process's own (single)
// group exactly as under mpirun. Collectives against closed forms with rank-valued inputs and
// poisoned outputs, and training steps through the bucketed all-reduce (GradReducer) and ZeRO-1
// over NCCL against the same steps with no communicator: with one rank every reduction is a
// copy, so they must agree bit for bit. Skipped without a GPU (CI).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "cuda_test_util.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/grad_reducer.h"
#include "ltrain/parallel/nccl_communicator.h"
#include "ltrain/train/step.h"

namespace ltrain {
namespace {

using test::gpu;

// The tests' process grid: one process without MPI, for the whole binary.
ParallelContext& single_process() {
  static std::unique_ptr<ParallelContext> ctx = ParallelContext::single_process();
  return *ctx;
}

Tensor upload(const std::vector<double>& v, DType dt) {
  Tensor t = gpu().alloc(Shape{int64_t(v.size())}, dt);
  gpu().from_host(t, v.data(), DType::kF64);
  return t;
}
std::vector<double> download(const Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  gpu().to_host(v.data(), DType::kF64, t);
  return v;
}
Tensor poisoned(int64_t n, DType dt) {
  return upload(std::vector<double>(size_t(n), std::nan("")), dt);
}

// Pipeline parallelism's point to point on one GPU (the smoke test of NCCL's send/recv that
// gpu_check runs): a batch of two sends to this rank and two receives from it, as one group,
// lands each send in its receive, in order, after the producer's queued work.
TEST(NcclSingleGpu, SendRecvToItselfInOneGroup) {
  LTRAIN_SKIP_WITHOUT_GPU();
  Communicator& boot = single_process().pipeline();
  std::unique_ptr<Communicator> nccl = make_nccl_communicator(boot, 0, &gpu());
  ASSERT_EQ(nccl->size(), 1);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    std::vector<double> x(1000), y(37);
    for (size_t i = 0; i < x.size(); ++i) x[i] = double(i % 251) - 100;
    for (size_t i = 0; i < y.size(); ++i) y[i] = double(3 * i + 1);
    Tensor a = upload(x, dt), b = upload(y, dt), ra = poisoned(1000, dt), rb = poisoned(37, dt);
    gpu().add(a, a, a);  // queued on the backend's stream: the send must wait for it
    nccl->send_recv({{a, 0, true}, {b, 0, true}, {ra, 0, false}, {rb, 0, false}});
    const auto got_a = download(ra), got_b = download(rb);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got_a[i], 2 * x[i]) << i;
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(got_b[i], y[i]) << i;
    for (Tensor* t : {&a, &b, &ra, &rb}) gpu().free(*t);
  }
}

// The pipeline's form: started, then completed for the backend's stream only
// (wait_on_stream: the stream waits on the device, the host does not), then consumed by an op
// queued on that stream. Two exchanges are in flight at once, completed in the other order.
TEST(NcclSingleGpu, SendRecvStartedThenCompletedOnTheStream) {
  LTRAIN_SKIP_WITHOUT_GPU();
  Communicator& boot = single_process().pipeline();
  std::unique_ptr<Communicator> nccl = make_nccl_communicator(boot, 0, &gpu());
  ASSERT_TRUE(nccl->orders_after_device_work());
  const int64_t n = 1 << 20;  // large enough that the transfers take a while
  std::vector<double> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] = double(i % 509) - 200, y[size_t(i)] = double(i % 97) + 1;
  Tensor a = upload(x, DType::kF32), b = upload(y, DType::kF32);
  Tensor ra = poisoned(n, DType::kF32), rb = poisoned(n, DType::kF32), sum = poisoned(n, DType::kF32);
  gpu().add(a, a, a);  // queued before the first exchange: it sends 2x
  const int first = nccl->send_recv_start({{a, 0, true}, {ra, 0, false}});
  const int second = nccl->send_recv_start({{b, 0, true}, {rb, 0, false}});
  nccl->wait_on_stream(second);
  nccl->wait_on_stream(first);
  gpu().add(sum, ra, rb);  // on the stream, after both waits
  const auto got = download(sum);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[size_t(i)], 2 * x[size_t(i)] + y[size_t(i)]) << i;
  for (Tensor* t : {&a, &b, &ra, &rb, &sum}) gpu().free(*t);
}

TEST(NcclSingleGpu, CollectivesAgainstClosedForms) {
  LTRAIN_SKIP_WITHOUT_GPU();
  Communicator& boot = single_process().data();
  std::unique_ptr<Communicator> nccl = make_nccl_communicator(boot, 0);
  const int r = nccl->rank(), P = nccl->size();
  ASSERT_EQ(P, boot.size());
  const int n = 7;
  auto rank_valued = [&](int len) {  // element i of rank r: (r + 1) * (i + 1)
    std::vector<double> v(static_cast<size_t>(len));
    for (int i = 0; i < len; ++i) v[size_t(i)] = double((r + 1) * (i + 1));
    return v;
  };
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    // all-reduce sum, blocking and started/waited: (i + 1) * P (P + 1) / 2.
    Tensor a = upload(rank_valued(n), dt), b = upload(rank_valued(n), dt);
    nccl->all_reduce_sum(a);
    nccl->wait(nccl->all_reduce_sum_start(b));
    for (const Tensor& t : {a, b}) {
      const auto got = download(t);
      for (int i = 0; i < n; ++i) EXPECT_EQ(got[size_t(i)], double((i + 1) * P * (P + 1) / 2)) << i;
    }
    // all-reduce max: (i + 1) * P.
    Tensor m = upload(rank_valued(n), dt);
    nccl->all_reduce_max(m);
    for (int i = 0; i < n; ++i) EXPECT_EQ(download(m)[size_t(i)], double((i + 1) * P)) << i;
    // reduce-scatter: rank r gets elements [r n, (r+1) n) of the sum of P n values.
    Tensor in = upload(rank_valued(n * P), dt), out = poisoned(n, dt);
    nccl->reduce_scatter_sum(out, in);
    const auto rs = download(out);
    for (int i = 0; i < n; ++i) EXPECT_EQ(rs[size_t(i)], double((r * n + i + 1) * P * (P + 1) / 2)) << i;
    // all-gather: block q holds rank q's values.
    Tensor mine = upload(rank_valued(n), dt), all = poisoned(int64_t(n) * P, dt);
    nccl->all_gather(all, mine);
    const auto ag = download(all);
    for (int q = 0; q < P; ++q)
      for (int i = 0; i < n; ++i) EXPECT_EQ(ag[size_t(q * n + i)], double((q + 1) * (i + 1))) << q << " " << i;
    // broadcast from the last rank.
    Tensor bc = upload(rank_valued(n), dt);
    nccl->broadcast(bc, P - 1);
    for (int i = 0; i < n; ++i) EXPECT_EQ(download(bc)[size_t(i)], double(P * (i + 1))) << i;
    for (Tensor t : {a, b, m, in, out, mine, all, bc}) gpu().free(t);
  }
  // Host scalars go through the bootstrap group.
  EXPECT_EQ(nccl->sum(double(r + 1)), double(P * (P + 1) / 2));
  EXPECT_EQ(nccl->max(double(r)), double(P - 1));
  nccl->barrier();
}

ModelConfig small_model() {
  ModelConfig m;
  m.hidden_size = 128;
  m.num_attention_heads = 2;  // head dim 64
  m.num_key_value_heads = 1;
  m.intermediate_size = 320;
  m.num_hidden_layers = 3;
  m.vocab_size = 384;
  m.max_position_embeddings = 64;
  return m;
}

struct TrainRun {
  std::vector<double> losses, norms, weights;
};

// Four AdamW steps of two micro-batches each on fixed random tokens, through `dp` with the
// bucketed reducer (zero = false) or ZeRO-1 (zero = true), or with no communicator (dp null).
TrainRun train(Communicator* dp, bool zero) {
  const ModelConfig cfg = small_model();
  const int B = 2, T = 64, accum = 2;
  LlamaModel model(cfg, gpu(), B, T, Recompute::kNone, zero ? 64 : 1);
  model.init_weights(11);
  OptimConfig o;
  o.lr = 1e-3;
  o.warmup_steps = 2;
  AdamW opt(o, model.parameters(), dp, zero);
  Communicator& group = dp ? *dp : single_process().data();
  std::unique_ptr<GradReducer> reducer;
  if (dp && !zero) reducer = std::make_unique<GradReducer>(model.parameters(), *dp, /*bucket_mb=*/0.05);  // several buckets
  TrainRun run;
  TrainStep train_step(model, opt, reducer.get(), group, accum, B, T);
  for (int step = 1; step <= 4; ++step) {
    std::mt19937_64 rng(5);  // the same two micro-batches every step, so the loss falls
    auto next = [&](int32_t* in, int32_t* tg) {
      for (int i = 0; i < B * T; ++i) in[i] = int32_t(rng() % uint64_t(cfg.vocab_size)), tg[i] = int32_t(rng() % 384);
    };
    const StepResult r = train_step.run(step, lr_at(o, 4, step), next);
    gpu().synchronize();
    run.losses.push_back(r.loss);
    run.norms.push_back(r.grad_norm);
  }
  run.weights.resize(size_t(model.param_buffer().numel()));
  gpu().to_host(run.weights.data(), DType::kF64, model.param_buffer());
  return run;
}

TEST(NcclSingleGpu, TrainingThroughBucketsAndZeroMatchesNoCommunicator) {
  LTRAIN_SKIP_WITHOUT_GPU();
  std::unique_ptr<Communicator> nccl = make_nccl_communicator(single_process().data(), 0);
  if (nccl->size() != 1) GTEST_SKIP() << "the bitwise comparison holds for one rank";
  const TrainRun plain = train(nullptr, false), buckets = train(nccl.get(), false), zero = train(nccl.get(), true);
  for (const TrainRun* r : {&buckets, &zero}) {
    EXPECT_EQ(r->losses, plain.losses);
    EXPECT_EQ(r->norms, plain.norms);
  }
  EXPECT_EQ(buckets.weights, plain.weights);
  // ZeRO-1 pads the flat buffer's end to a multiple of 64 x ranks; the views are where they were.
  ASSERT_GE(zero.weights.size(), plain.weights.size());
  EXPECT_TRUE(std::equal(plain.weights.begin(), plain.weights.end(), zero.weights.begin()));
  EXPECT_LT(plain.losses.back(), plain.losses.front()) << "the steps should train";
  for (size_t i = 0; i < plain.losses.size(); ++i)
    std::cout << "[          ] step " << i + 1 << " loss " << plain.losses[i] << " grad norm " << plain.norms[i] << "\n";
}

}  // namespace
}  // namespace ltrain
