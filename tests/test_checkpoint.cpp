// Per-rank checkpoint shards (src/checkpoint/: manifest, shard I/O, save/load; docs/checkpoint-format.md):
// the collective save runs on simulated ranks (one thread per rank, communicators over threads),
// for data x tensor layouts with and without ZeRO-1; then
//  - which ranks wrote which files, and that the files verify;
//  - whole tensors assembled from the shards equal what was saved, bit for bit;
//  - every rank of every other layout loads exactly its part (weights, master copy, moments);
//  - a missing shard, a flipped byte, a truncated file, a manifest of another model, slices that
//    overlap or leave a gap, and an unknown version each give one line naming the file;
//  - version 1 checkpoints (whole tensors in model_00000.bin) are still read;
//  - a write that fails on one rank removes the partial save on every rank; partial saves left
//    by a kill are found and removed, complete ones kept.
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/backend.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/llama.h"
#include "ltrain/optim/adamw.h"
#include "test_util.h"

namespace ltrain {
namespace {

// ---- communicators over threads -----------------------------------------------------------------

// The ranks of one group meet here: each deposits a pointer, all read every slot, all leave.
class ThreadGroup {
 public:
  explicit ThreadGroup(int n) : n_(n), slots_(size_t(n)) {}
  int size() const { return n_; }
  void arrive() {
    std::unique_lock<std::mutex> lk(mu_);
    const uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lk, [&] { return gen_ != gen; });
    }
  }
  // f reads every rank's deposit between two barriers, so nothing changes while it reads.
  void exchange(int rank, const void* mine, const std::function<void(const std::vector<const void*>&)>& f) {
    slots_[size_t(rank)] = mine;
    arrive();
    f(slots_);
    arrive();
  }

 private:
  int n_;
  std::vector<const void*> slots_;
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
  uint64_t gen_ = 0;
};

template <class T>
void reduce_into(std::vector<char>& out, const std::vector<const void*>& in, int64_t n, int64_t first, bool max) {
  T* o = reinterpret_cast<T*>(out.data());
  for (int64_t i = 0; i < n; ++i) {
    T acc = static_cast<const T*>(in[0])[first + i];
    for (size_t r = 1; r < in.size(); ++r) {
      const T x = static_cast<const T*>(in[r])[first + i];
      acc = max ? std::max(acc, x) : acc + x;
    }
    o[i] = acc;
  }
}

class ThreadComm final : public Communicator {
 public:
  ThreadComm(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size(); }
  std::string name() const override { return "threads"; }
  void all_reduce_sum(Tensor buf) override { reduce(buf, buf, 0, buf.numel(), false); }
  void all_reduce_max(Tensor buf) override { reduce(buf, buf, 0, buf.numel(), true); }
  void reduce_scatter_sum(Tensor out, const Tensor& in) override {
    LTRAIN_CHECK(in.numel() == out.numel() * size() && in.dtype == out.dtype);
    reduce(out, in, out.numel() * rank_, out.numel(), false);
  }
  void all_gather(Tensor out, const Tensor& in) override {
    LTRAIN_CHECK(out.numel() == in.numel() * size() && in.dtype == out.dtype);
    std::vector<char> tmp(out.bytes());
    g_.exchange(rank_, in.data, [&](const std::vector<const void*>& all) {
      for (size_t r = 0; r < all.size(); ++r) std::memcpy(tmp.data() + r * in.bytes(), all[r], in.bytes());
    });
    std::memcpy(out.data, tmp.data(), tmp.size());
  }
  void broadcast(Tensor buf, int root) override {
    std::vector<char> tmp(buf.bytes());
    g_.exchange(rank_, buf.data, [&](const std::vector<const void*>& all) { std::memcpy(tmp.data(), all[size_t(root)], tmp.size()); });
    std::memcpy(buf.data, tmp.data(), tmp.size());
  }
  int send_recv_start(const std::vector<P2p>&) override {
    LTRAIN_CHECK(false, "ThreadComm has no point-to-point messages");
    return 0;
  }
  int all_reduce_sum_start(Tensor buf) override {
    all_reduce_sum(buf);
    return 0;
  }
  void wait(int) override {}
  double sum(double x) override {
    Tensor t{&x, DType::kF64, Shape{1}};
    all_reduce_sum(t);
    return x;
  }
  double max(double x) override {
    Tensor t{&x, DType::kF64, Shape{1}};
    all_reduce_max(t);
    return x;
  }
  void barrier() override { g_.arrive(); }

 private:
  void reduce(Tensor out, const Tensor& in, int64_t first, int64_t n, bool max) {
    std::vector<char> tmp(size_t(n) * dtype_size(in.dtype));
    g_.exchange(rank_, in.data, [&](const std::vector<const void*>& all) {
      switch (in.dtype) {
        case DType::kF32: reduce_into<float>(tmp, all, n, first, max); break;
        case DType::kF64: reduce_into<double>(tmp, all, n, first, max); break;
        case DType::kI32: reduce_into<int32_t>(tmp, all, n, first, max); break;
        default: LTRAIN_CHECK(false, "unsupported dtype");
      }
    });
    std::memcpy(out.data, tmp.data(), tmp.size());
  }
  ThreadGroup& g_;
  int rank_;
};

// ---- simulated layouts ----------------------------------------------------------------------------

struct Layout {
  int data, tensor;
  bool zero;
  std::string str() const {
    return "data " + std::to_string(data) + " x tensor " + std::to_string(tensor) + (zero ? " ZeRO-1" : "");
  }
};

// One simulated rank: a CPU backend, the model and the optimizer of this layout and rank.
struct Rank {
  int world_rank, data_rank, tensor_rank;
  std::unique_ptr<Backend> be;
  std::unique_ptr<ThreadComm> world, dp, tp;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<AdamW> opt;
};

// Runs fn on every rank of the layout at once, one thread each (ranks in ParallelContext's grid:
// world rank = data rank * tensor + tensor rank).
void run_ranks(const ModelConfig& m, const Layout& lay, const std::function<void(Rank&)>& fn) {
  const int W = lay.data * lay.tensor;
  ThreadGroup world(W);
  std::vector<std::unique_ptr<ThreadGroup>> dp_groups, tp_groups;
  for (int t = 0; t < lay.tensor; ++t) dp_groups.push_back(std::make_unique<ThreadGroup>(lay.data));
  for (int d = 0; d < lay.data; ++d) tp_groups.push_back(std::make_unique<ThreadGroup>(lay.tensor));
  std::vector<Rank> ranks(static_cast<size_t>(W));
  for (int r = 0; r < W; ++r) {
    Rank& k = ranks[size_t(r)];
    k.world_rank = r;
    k.data_rank = r / lay.tensor;
    k.tensor_rank = r % lay.tensor;
    k.be = make_cpu_backend();
    k.world = std::make_unique<ThreadComm>(world, r);
    k.dp = std::make_unique<ThreadComm>(*dp_groups[size_t(k.tensor_rank)], k.data_rank);
    k.tp = std::make_unique<ThreadComm>(*tp_groups[size_t(k.data_rank)], k.tensor_rank);
    const bool zero = lay.zero && lay.data > 1;
    k.model = std::make_unique<LlamaModel>(m, *k.be, 1, 8, Recompute::kNone, zero ? 64 * lay.data : 1,
                                           lay.tensor > 1 ? k.tp.get() : nullptr, k.tp.get());
    OptimConfig oc;
    k.opt = std::make_unique<AdamW>(oc, k.model->parameters(), k.dp.get(), zero, k.tp.get());
  }
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(W));
  for (int r = 0; r < W; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(ranks[size_t(r)]);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < W; ++r) EXPECT_EQ(errors[size_t(r)], "") << "rank " << r << " of " << lay.str();
}

ModelConfig tiny_config(bool tied) {
  ModelConfig m;
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.vocab_size = 64;
  m.max_position_embeddings = 16;
  m.tie_word_embeddings = tied;
  return m;
}

Config run_config(const ModelConfig& m) {
  Config c;
  c.model = m;
  c.train.seq_len = 8;
  c.train.micro_batch_size = 1;
  c.train.global_batch_tokens = 8;
  return c;
}

// Whole random tensors with the model's names and shapes (the weights, exp_avg, exp_avg_sq).
struct WholeState {
  std::vector<HostTensor> w, m, v;
  std::map<std::string, const HostTensor*> by_name(const std::vector<HostTensor>& ts) const {
    std::map<std::string, const HostTensor*> out;
    for (const auto& t : ts) out[t.name] = &t;
    return out;
  }
};
WholeState random_state(const ModelConfig& cfg, uint64_t seed) {
  auto be = make_cpu_backend();
  LlamaModel model(cfg, *be, 1, 8);
  WholeState s;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const auto& p : model.params())
    for (auto* list : {&s.w, &s.m, &s.v}) {
      HostTensor t{p.name, p.global_shape, std::vector<float>(size_t(p.global_shape.numel()))};
      for (auto& x : t.data) x = list == &s.v ? 1e-3f * (1.f + u(rng)) : u(rng);
      list->push_back(std::move(t));
    }
  return s;
}

// A rank's state: its part of the whole tensors, through the model's own import_full (the oracle).
void set_rank_state(Rank& k, const WholeState& s) {
  const auto w = s.by_name(s.w), m = s.by_name(s.m), v = s.by_name(s.v);
  Backend& be = *k.be;
  const Shape shape = k.model->param_buffer().shape;
  Tensor fw = be.alloc(shape, DType::kF32), fm = be.alloc(shape, DType::kF32), fv = be.alloc(shape, DType::kF32);
  for (Tensor t : {fw, fm, fv}) be.zero(t);
  k.model->import_full(fw, [&](const std::string& n) -> const std::vector<float>& { return w.at(n)->data; });
  k.model->import_full(fm, [&](const std::string& n) -> const std::vector<float>& { return m.at(n)->data; });
  k.model->import_full(fv, [&](const std::string& n) -> const std::vector<float>& { return v.at(n)->data; });
  k.opt->import_weights(fw);
  k.opt->import_moments(fm, fv);
  for (Tensor t : {fw, fm, fv}) be.free(t);
}

struct Shard {
  std::vector<float> w, m, v, params;
};
Shard export_rank(Rank& k) {
  Shard s;
  const int64_t n = k.opt->shard_size();
  s.w.resize(size_t(n));
  s.m.resize(size_t(n));
  s.v.resize(size_t(n));
  k.opt->export_shard(s.w.data(), s.m.data(), s.v.data());
  // The model's weights (all of its tensor-parallel slice, not only the ZeRO shard), without padding.
  for (const auto& p : k.model->params()) {
    std::vector<float> part(size_t(p.tensor.numel()));
    k.be->to_host(part.data(), DType::kF32, p.tensor);
    s.params.insert(s.params.end(), part.begin(), part.end());
  }
  return s;
}

// Without the alignment padding between views (never written, so never compared).
std::vector<float> unpadded(const Rank& k, const std::vector<float>& shard) {
  std::vector<float> out;
  const int64_t lo = k.opt->shard_begin(), hi = lo + k.opt->shard_size();
  for (const auto& p : k.model->params()) {
    const int64_t off = k.model->parameters().offset(p), b = std::max(lo, off), e = std::min(hi, off + p.tensor.numel());
    for (int64_t i = b; i < e; ++i) out.push_back(shard[size_t(i - lo)]);
  }
  return out;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

// Writes a checkpoint of `s` at step 5 from every rank of the layout; returns its directory.
std::string save_layout(const std::string& run_dir, const ModelConfig& m, const Layout& lay, const WholeState& s) {
  std::string dir;
  std::mutex mu;
  run_ranks(m, lay, [&](Rank& k) {
    set_rank_state(k, s);
    TrainState st;
    st.step = 5;
    st.tokens = 40;
    st.data = {{"train", {{"epoch", 0}, {"cursor", 5}}}};
    st.layout = {{"data", lay.data}, {"tensor", lay.tensor}, {"zero", lay.zero ? 1 : 0}};
    const std::string d = save_checkpoint(run_dir, st, run_config(m), *k.opt, *k.world, "");
    std::lock_guard<std::mutex> lk(mu);
    if (k.world_rank == 0) dir = d;
    EXPECT_TRUE(is_directory(d)) << "rank " << k.world_rank << ": the checkpoint is not complete on return";
  });
  return dir;
}

using test::expect_user_error;

const std::vector<Layout> kLayouts = {{1, 1, false}, {2, 1, false}, {2, 1, true}, {1, 2, false},
                                      {2, 2, false}, {2, 2, true}, {4, 1, true}};

std::vector<std::string> shard_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& f : list_directory(dir))
    if (f.rfind("model_", 0) == 0 || f.rfind("optim_", 0) == 0) out.push_back(f);
  return out;
}

// ---- tests -----------------------------------------------------------------------------------------

TEST(CheckpointShards, EveryLayoutWritesItsRanksSlicesAndReassemblesBitwise) {
  for (bool tied : {false, true}) {
    const ModelConfig m = tiny_config(tied);
    const WholeState s = random_state(m, tied ? 11 : 12);
    for (const Layout& lay : kLayouts) {
      SCOPED_TRACE(lay.str() + (tied ? " tied" : " untied"));
      test::TempDir tmp("ckpt_layout");
      const std::string dir = save_layout(tmp.path(), m, lay, s);
      ASSERT_EQ(dir, tmp.path() + "/checkpoints/step_00000005");
      EXPECT_FALSE(is_directory(dir + ".tmp"));
      EXPECT_EQ(read_text_file(tmp.path() + "/checkpoints/latest"), "step_00000005\n");
      // Writers: every rank under ZeRO, otherwise data rank 0 of each tensor group.
      std::vector<std::string> want;
      const int writers = lay.zero && lay.data > 1 ? lay.data * lay.tensor : lay.tensor;
      for (const char* kind : {"model", "optim"})
        for (int r = 0; r < writers; ++r) {
          char buf[32];
          std::snprintf(buf, sizeof buf, "%s_%05d.bin", kind, r);
          want.push_back(buf);
        }
      std::sort(want.begin(), want.end());
      EXPECT_EQ(shard_files(dir), want);

      const CheckpointInfo info = open_checkpoint(tmp.path());
      EXPECT_EQ(info.meta["version"], 2);
      EXPECT_EQ(info.meta["layout"]["data"], lay.data);
      EXPECT_EQ(info.meta["layout"]["tensor"], lay.tensor);
      EXPECT_EQ(info.meta["layout"]["writers"].size(), size_t(writers));
      EXPECT_EQ(info.meta["shards"].size(), size_t(2 * writers));
      verify_checkpoint(info);
      // Each file holds only its rank's share: the weights files together hold every element once.
      uint64_t weight_bytes = 0;
      for (const auto& f : list_directory(dir))
        if (f.rfind("model_", 0) == 0) weight_bytes += file_size(dir + "/" + f);
      int64_t numel = 0;
      for (const auto& t : s.w) numel += t.shape.numel();
      EXPECT_EQ(weight_bytes, uint64_t(numel) * 4);
      EXPECT_EQ(info.meta["num_params"], numel);

      const auto w = read_checkpoint_tensors(info, "tensors");
      const auto mom = read_checkpoint_tensors(info, "optimizer");
      ASSERT_EQ(w.size(), s.w.size());
      ASSERT_EQ(mom.size(), 2 * s.w.size());
      for (size_t i = 0; i < s.w.size(); ++i) {
        EXPECT_EQ(w[i].name, s.w[i].name);
        EXPECT_TRUE(w[i].shape == s.w[i].shape);
        EXPECT_TRUE(bitwise_equal(w[i].data, s.w[i].data)) << s.w[i].name;
        EXPECT_EQ(mom[i].name, s.w[i].name + ".exp_avg");
        EXPECT_TRUE(bitwise_equal(mom[i].data, s.m[i].data)) << s.w[i].name;
        EXPECT_EQ(mom[s.w.size() + i].name, s.w[i].name + ".exp_avg_sq");
        EXPECT_TRUE(bitwise_equal(mom[s.w.size() + i].data, s.v[i].data)) << s.w[i].name;
      }
    }
  }
}

TEST(CheckpointShards, EveryLayoutResumesEveryOtherExactly) {
  const ModelConfig m = tiny_config(false);
  const WholeState s = random_state(m, 21);
  for (const Layout& from : kLayouts) {
    test::TempDir tmp("ckpt_reshard");
    const std::string dir = save_layout(tmp.path(), m, from, s);
    const CheckpointInfo info = open_checkpoint(dir);
    for (const Layout& to : kLayouts) {
      SCOPED_TRACE(from.str() + " -> " + to.str());
      // Each rank of the new layout loads; its weights, master copy and moments must equal its
      // part of the whole tensors (put there by import_full, the layout-independent path).
      std::mutex mu;
      run_ranks(m, to, [&](Rank& k) {
        load_checkpoint_training_state(info, *k.opt);
        const Shard got = export_rank(k);
        set_rank_state(k, s);
        const Shard want = export_rank(k);
        std::lock_guard<std::mutex> lk(mu);
        EXPECT_TRUE(bitwise_equal(got.params, want.params)) << "weights of rank " << k.world_rank;
        EXPECT_TRUE(bitwise_equal(unpadded(k, got.w), unpadded(k, want.w))) << "master of rank " << k.world_rank;
        EXPECT_TRUE(bitwise_equal(unpadded(k, got.m), unpadded(k, want.m))) << "exp_avg of rank " << k.world_rank;
        EXPECT_TRUE(bitwise_equal(unpadded(k, got.v), unpadded(k, want.v))) << "exp_avg_sq of rank " << k.world_rank;
      });
    }
    // And load_checkpoint_weights (eval, generate) on one process.
    auto be = make_cpu_backend();
    LlamaModel one(m, *be, 1, 8);
    load_checkpoint_weights(info, one.parameters());
    const auto whole = one.export_full(one.param_buffer());
    for (size_t i = 0; i < whole.size(); ++i) EXPECT_TRUE(bitwise_equal(whole[i].data, s.w[i].data)) << whole[i].name;
  }
}

class CheckpointDamage : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = tiny_config(false);
    s_ = random_state(m_, 31);
    dir_ = save_layout(tmp_.path(), m_, {2, 2, true}, s_);
  }
  // Loads on one process (not collective), after verifying unless told not to.
  void load(bool verify) {
    const CheckpointInfo info = open_checkpoint(dir_);
    if (verify) verify_checkpoint(info);
    auto be = make_cpu_backend();
    LlamaModel model(m_, *be, 1, 8);
    AdamW opt(OptimConfig{}, model.parameters());
    load_checkpoint_training_state(info, opt);
  }
  void edit_meta(const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json j = nlohmann::json::parse(read_text_file(dir_ + "/meta.json"));
    f(j);
    write_text_file_atomic(dir_ + "/meta.json", j.dump(1));
  }
  test::TempDir tmp_{"ckpt_damage"};
  ModelConfig m_;
  WholeState s_;
  std::string dir_;
};

TEST_F(CheckpointDamage, IntactLoads) {
  load(true);
  const CheckpointInfo info = open_checkpoint(dir_);
  EXPECT_EQ(info.meta["shards"].size(), 8u);  // 4 ranks x (weights, moments)
}

TEST_F(CheckpointDamage, MissingShardIsNamed) {
  std::remove((dir_ + "/model_00002.bin").c_str());
  expect_user_error([&] { load(true); }, {"checkpoint file missing", "model_00002.bin"});
  expect_user_error([&] { load(false); }, {"checkpoint file missing", "model_00002.bin"});
  expect_user_error([&] { read_checkpoint_tensors(open_checkpoint(dir_), "tensors"); }, {"model_00002.bin"});
  // The other sections still read.
  EXPECT_EQ(read_checkpoint_tensors(open_checkpoint(dir_), "optimizer").size(), 2 * s_.w.size());
}

TEST_F(CheckpointDamage, FlippedByteIsNamed) {
  const std::string f = dir_ + "/optim_00003.bin";
  std::string b = read_text_file(f);
  b[b.size() / 2] ^= 1;
  write_file_atomic(f, b.data(), b.size());
  expect_user_error([&] { load(true); }, {"optim_00003.bin", "corrupt: checksum mismatch"});
  expect_user_error([&] { load(false); }, {"optim_00003.bin", "checksum mismatch in tensor"});
}

TEST_F(CheckpointDamage, TruncatedFileIsNamed) {
  const std::string f = dir_ + "/model_00001.bin";
  std::string b = read_text_file(f);
  b.resize(b.size() - 12);
  write_file_atomic(f, b.data(), b.size());
  expect_user_error([&] { load(true); }, {"model_00001.bin", "truncated"});
  expect_user_error([&] { load(false); }, {"model_00001.bin", "truncated"});
}

TEST_F(CheckpointDamage, ManifestOfAnotherModelIsNamed) {
  ModelConfig other = m_;
  other.hidden_size = 64;
  auto be = make_cpu_backend();
  LlamaModel model(other, *be, 1, 8);
  AdamW opt(OptimConfig{}, model.parameters());
  const CheckpointInfo info = open_checkpoint(dir_);
  expect_user_error([&] { load_checkpoint_training_state(info, opt); },
                    {"meta.json", "model.embed_tokens.weight", "has shape (64, 32) but the model needs (64, 64)"});
  ModelConfig deeper = m_;
  deeper.num_hidden_layers = 3;
  LlamaModel model3(deeper, *be, 1, 8);
  expect_user_error([&] { load_checkpoint_weights(info, model3.parameters()); }, {"meta.json", "model.layers.2.", "is missing"});
}

TEST_F(CheckpointDamage, SlicesThatDoNotTileAreNamed) {
  // Drop one piece: a gap.
  edit_meta([](nlohmann::json& j) { j["shards"][1]["pieces"].erase(0); });
  expect_user_error([&] { verify_checkpoint(open_checkpoint(dir_)); }, {"meta.json", "miss"});
  expect_user_error([&] { load(false); }, {"meta.json", "miss"});
}

TEST_F(CheckpointDamage, OverlappingSlicesAreNamed) {
  edit_meta([](nlohmann::json& j) {
    auto p = j["shards"][0]["pieces"][0];
    j["shards"][0]["pieces"].push_back(p);
  });
  expect_user_error([&] { verify_checkpoint(open_checkpoint(dir_)); }, {"meta.json", "overlap"});
}

TEST_F(CheckpointDamage, SliceOutsideTheTensorIsNamed) {
  edit_meta([](nlohmann::json& j) { j["shards"][0]["pieces"][0]["slice"]["start"] = 1000; });
  expect_user_error([&] { verify_checkpoint(open_checkpoint(dir_)); }, {"meta.json", "outside"});
}

TEST_F(CheckpointDamage, UnknownVersionIsRefused) {
  edit_meta([](nlohmann::json& j) { j["version"] = 3; });
  expect_user_error([&] { open_checkpoint(dir_); }, {"meta.json", "version 3 is not supported"});
}

TEST(CheckpointFormat, Version1IsStillRead) {
  // A version 1 checkpoint as the previous release wrote it: whole tensors, model_00000.bin.
  test::TempDir tmp("ckpt_v1");
  const ModelConfig m = tiny_config(true);
  const WholeState s = random_state(m, 41);
  nlohmann::json tensors = nlohmann::json::array(), optim = nlohmann::json::array();
  std::string model, moments;
  auto add = [](std::string& file, nlohmann::json& list, const std::string& fname, const HostTensor& t,
                const std::string& suffix) {
    const std::string bytes(reinterpret_cast<const char*>(t.data.data()), t.data.size() * 4);
    nlohmann::json shape = nlohmann::json::array();
    for (int i = 0; i < t.shape.ndim; ++i) shape.push_back(t.shape.dims[i]);
    list.push_back({{"name", t.name + suffix}, {"shape", shape}, {"dtype", "f32"}, {"file", fname},
                    {"offset", file.size()}, {"bytes", bytes.size()}, {"crc32", crc32(bytes.data(), bytes.size())}});
    file += bytes;
  };
  for (const auto& t : s.w) add(model, tensors, "model_00000.bin", t, "");
  for (const auto& t : s.m) add(moments, optim, "optim_00000.bin", t, ".exp_avg");
  for (const auto& t : s.v) add(moments, optim, "optim_00000.bin", t, ".exp_avg_sq");
  const std::string dir = tmp.file("step_00000003");
  make_dirs(dir);
  write_file_atomic(dir + "/model_00000.bin", model.data(), model.size());
  write_file_atomic(dir + "/optim_00000.bin", moments.data(), moments.size());
  nlohmann::json meta = {
      {"format", "ltrain-checkpoint"}, {"version", 1}, {"step", 3}, {"tokens", 24},
      {"config", config_to_json(run_config(m))}, {"layout", {{"data", 1}, {"tensor", 1}, {"zero", 0}}},
      {"data", {{"train", {{"epoch", 0}, {"cursor", 3}}}}}, {"shards", 1}, {"tensors", tensors},
      {"optimizer", optim},
      {"files", {{"model_00000.bin", {{"bytes", model.size()}, {"crc32", crc32(model.data(), model.size())}}},
                 {"optim_00000.bin", {{"bytes", moments.size()}, {"crc32", crc32(moments.data(), moments.size())}}}}}};
  write_text_file_atomic(dir + "/meta.json", meta.dump(2));
  const CheckpointInfo info = open_checkpoint(dir);
  verify_checkpoint(info);
  const auto w = read_checkpoint_tensors(info, "tensors");
  ASSERT_EQ(w.size(), s.w.size());
  for (size_t i = 0; i < w.size(); ++i) EXPECT_TRUE(bitwise_equal(w[i].data, s.w[i].data)) << w[i].name;
  // Resumes under tensor parallelism with ZeRO, like a version 2 one.
  std::mutex mu;
  run_ranks(m, {2, 2, true}, [&](Rank& k) {
    load_checkpoint_training_state(info, *k.opt);
    const Shard got = export_rank(k);
    set_rank_state(k, s);
    const Shard want = export_rank(k);
    std::lock_guard<std::mutex> lk(mu);
    EXPECT_TRUE(bitwise_equal(got.params, want.params));
    EXPECT_TRUE(bitwise_equal(unpadded(k, got.m), unpadded(k, want.m)));
    EXPECT_TRUE(bitwise_equal(unpadded(k, got.v), unpadded(k, want.v)));
  });
}

TEST(CheckpointFormat, WholeTensorSaveIsOneRankOfTheSameFormat) {
  // import-hf and tools save whole tensors from one process: model_00000.bin holds them
  // concatenated, in order, exactly as version 1 did.
  test::TempDir tmp("ckpt_whole");
  const ModelConfig m = tiny_config(false);
  const WholeState s = random_state(m, 51);
  TrainState st;
  st.step = 2;
  st.layout = {{"data", 1}, {"tensor", 1}, {"zero", 0}};
  const std::string dir = save_checkpoint(tmp.path(), st, run_config(m), s.w, &s.m, &s.v, "");
  std::string want;
  for (const auto& t : s.w) want.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * 4);
  EXPECT_EQ(read_text_file(dir + "/model_00000.bin"), want);
  const CheckpointInfo info = open_checkpoint(dir);
  verify_checkpoint(info);
  EXPECT_EQ(info.meta["layout"]["writers"], nlohmann::json::array({0}));
  const auto mom = read_checkpoint_tensors(info, "optimizer");
  ASSERT_EQ(mom.size(), 2 * s.w.size());
  EXPECT_TRUE(bitwise_equal(mom[s.w.size()].data, s.v[0].data));
  // Without moments: weights only, no optim file.
  test::TempDir tmp2("ckpt_whole2");
  const std::string d2 = save_checkpoint(tmp2.path(), st, run_config(m), s.w, nullptr, nullptr, "");
  EXPECT_FALSE(file_exists(d2 + "/optim_00000.bin"));
  EXPECT_FALSE(open_checkpoint(d2).meta.contains("optimizer"));
  verify_checkpoint(open_checkpoint(d2));
}

// A write that fails on one rank (a full disk) ends the save on every rank with the same error,
// once all have stopped writing, and leaves no step_NNNNNNNN.tmp; the earlier checkpoint stays
// the latest and verifies. Rank 3 of 2 x 2 ZeRO-1 fails while the others' files are complete;
// without ZeRO only data rank 0 writes, so it is rank 0 that fails; and one process.
TEST(CheckpointSaveFailure, AFailedWriteOnOneRankRemovesThePartialSaveOnEveryRank) {
  const ModelConfig m = tiny_config(false);
  const WholeState s = random_state(m, 61);
  struct Case {
    Layout lay;
    int failing;
  };
  for (const Case& c : {Case{{2, 2, true}, 3}, Case{{2, 1, false}, 0}, Case{{1, 1, false}, 0}}) {
    SCOPED_TRACE(c.lay.str());
    test::TempDir tmp("ckpt_fail");
    const std::string root = tmp.file("checkpoints");
    const std::string earlier = save_layout(tmp.path(), m, c.lay, s);
    std::vector<std::string> errors(size_t(c.lay.data * c.lay.tensor));
    run_ranks(m, c.lay, [&](Rank& k) {
      set_rank_state(k, s);
      TrainState st;
      st.step = 6;
      st.data = {{"train", {{"epoch", 0}, {"cursor", 6}}}};
      SaveHooks hooks;
      hooks.fail_write = [&](int step) { return step == 6 && k.world_rank == c.failing; };
      try {
        save_checkpoint(tmp.path(), st, run_config(m), *k.opt, *k.world, "", hooks);
      } catch (const UserError& e) {
        errors[size_t(k.world_rank)] = e.what();
      }
    });
    const std::string failing_file = "step_00000006.tmp/optim_0000" + std::to_string(c.failing) + ".bin";
    for (size_t r = 0; r < errors.size(); ++r) {
      SCOPED_TRACE("rank " + std::to_string(r));
      expect_user_error([&] { if (!errors[r].empty()) throw UserError(errors[r]); },
                        {"saving the checkpoint of step 6 failed", failing_file, "No space left on device",
                         "removed the partial '" + root + "/step_00000006.tmp'", "--resume auto"});
      EXPECT_EQ(errors[r], errors[0]);
      EXPECT_EQ(errors[r].find(" on rank ") != std::string::npos, c.lay.data * c.lay.tensor > 1) << errors[r];
      if (errors.size() > 1) EXPECT_NE(errors[r].find("on rank " + std::to_string(c.failing)), std::string::npos);
    }
    EXPECT_EQ(list_directory(root), (std::vector<std::string>{"latest", "step_00000005"}));
    EXPECT_EQ(read_text_file(root + "/latest"), "step_00000005\n");
    verify_checkpoint(open_checkpoint(earlier));
  }
}

// At start-up the trainer removes what a killed save left: step_NNNNNNNN.tmp without meta.json.
// A .tmp with meta.json may be complete and is kept; checkpoints and other names are untouched.
TEST(CheckpointSaveFailure, PartialSavesAreRemovedCompleteOnesKept) {
  const ModelConfig m = tiny_config(false);
  test::TempDir tmp("ckpt_partial");
  const std::string root = tmp.file("checkpoints");
  const std::string done = save_layout(tmp.path(), m, {2, 1, true}, random_state(m, 62));
  make_dirs(root + "/step_00000007.tmp");
  write_text_file_atomic(root + "/step_00000007.tmp/model_00000.bin", "partial");
  make_dirs(root + "/step_00000009.tmp");
  write_text_file_atomic(root + "/step_00000009.tmp/meta.json", "{}");
  make_dirs(root + "/step_00000005.old.123");
  make_dirs(root + "/step_00000003.tmp.keep");
  std::vector<std::string> kept;
  EXPECT_EQ(remove_partial_saves(tmp.path(), &kept), (std::vector<std::string>{root + "/step_00000007.tmp"}));
  EXPECT_EQ(kept, (std::vector<std::string>{root + "/step_00000009.tmp"}));
  EXPECT_EQ(list_directory(root), (std::vector<std::string>{"latest", "step_00000003.tmp.keep", "step_00000005",
                                                            "step_00000005.old.123", "step_00000009.tmp"}));
  verify_checkpoint(open_checkpoint(done));
  test::TempDir empty("ckpt_partial_none");
  EXPECT_TRUE(remove_partial_saves(empty.path(), nullptr).empty());  // no checkpoints directory
}

}  // namespace
}  // namespace ltrain
