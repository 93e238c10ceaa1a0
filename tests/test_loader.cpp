// Dataset metadata and the window loader. Datasets are built by writing shards and meta.json
// directly (the format in docs/data-format.md), with token ids that encode their own position
// (id = 3 + position in the split's concatenated stream), so every window can be checked against
// the raw stream and identified by its first token.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/dataset.h"
#include "ltrain/data/shard.h"
#include "test_util.h"

using namespace ltrain;
using ltrain::test::TempDir;
using nlohmann::json;

namespace {

constexpr uint32_t kVocab = 4096;

// Writes a dataset with the given shard sizes per split; returns the raw token stream per shard.
std::vector<std::vector<uint32_t>> make_dataset(const std::string& dir, const std::vector<uint64_t>& train_sizes,
                                                const std::vector<uint64_t>& val_sizes = {20}) {
  std::vector<std::vector<uint32_t>> train_tokens;
  json meta = {{"format", "ltrain-dataset"}, {"version", 1},  {"vocab_size", kVocab}, {"bos_id", 1},
               {"eos_id", 2},                {"dtype", "uint16"}, {"bytes_per_token", 2}, {"tokenizer", "tokenizer.model"}};
  for (int split = 0; split < 2; ++split) {
    const auto& sizes = split == 0 ? train_sizes : val_sizes;
    const char* name = split == 0 ? "train" : "val";
    json shards = json::array();
    uint64_t pos = 0, total = 0;
    for (size_t s = 0; s < sizes.size(); ++s) {
      std::vector<uint32_t> t(sizes[s]);
      for (auto& x : t) x = static_cast<uint32_t>(3 + pos++);
      char file[32];
      std::snprintf(file, sizeof file, "%s_%05zu.bin", name, s);
      write_shard(path_join(dir, file), t, {0}, kVocab);
      shards.push_back({{"file", file}, {"tokens", t.size()}, {"docs", 1}});
      total += t.size();
      if (split == 0) train_tokens.push_back(std::move(t));
    }
    meta[name] = {{"tokens", total}, {"docs", sizes.size()}, {"shards", shards}};
  }
  write_text_file_atomic(path_join(dir, "meta.json"), meta.dump(2));
  return train_tokens;
}

struct Batch {
  std::vector<int32_t> x, y;
  bool operator==(const Batch& o) const { return x == o.x && y == o.y; }
};

Batch next(DataLoader& dl) {
  Batch b;
  b.x.assign(size_t(dl.batch_size()) * dl.seq_len(), -1);
  b.y.assign(b.x.size(), -1);
  dl.next_batch(b.x.data(), b.y.data());
  return b;
}

template <class F>
std::string user_error_message(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Loader, SequentialWindowsShiftByOne) {
  TempDir dir("loader");
  const int T = 8, B = 3;
  // Windows per shard: (n-1)/T = 6, 4, 2, 0 (the last shard is shorter than T+1).
  auto shards = make_dataset(dir.path(), {50, 37, 21, 8});
  DatasetMeta meta = load_dataset_meta(dir.path());
  EXPECT_EQ(meta.train_shards.size(), 4u);
  EXPECT_EQ(meta.train_tokens, 116u);
  EXPECT_EQ(meta.vocab_size, int(kVocab));
  DataLoader dl(meta, Split::kTrain, B, T, /*shuffle=*/false, 1);
  EXPECT_EQ(dl.num_windows(), 12u);
  EXPECT_EQ(dl.batches_per_epoch(), 4u);

  // The expected windows in file order: (shard, start token).
  std::vector<std::pair<int, int>> windows;
  for (int s = 0; s < 4; ++s)
    for (int w = 0; (w + 1) * T + 1 <= int(shards[s].size()); ++w) windows.push_back({s, w * T});
  ASSERT_EQ(windows.size(), 12u);

  Batch first;
  for (int k = 0; k < 4; ++k) {
    Batch b = next(dl);
    if (k == 0) first = b;
    for (int r = 0; r < B; ++r) {
      auto [s, start] = windows[k * B + r];
      for (int t = 0; t < T; ++t) {
        ASSERT_EQ(b.x[r * T + t], int32_t(shards[s][start + t])) << "batch " << k << " row " << r << " t " << t;
        ASSERT_EQ(b.y[r * T + t], int32_t(shards[s][start + t + 1])) << "batch " << k << " row " << r << " t " << t;
      }
    }
  }
  EXPECT_EQ(dl.state(), (LoaderState{0, 12}));
  // The epoch is used up: the next batch starts epoch 1 with the same (unshuffled) order.
  EXPECT_EQ(next(dl), first);
  EXPECT_EQ(dl.state(), (LoaderState{1, 3}));
}

TEST(Loader, EpochRemainderIsSkipped) {
  TempDir dir("loader");
  make_dataset(dir.path(), {50, 37, 21});  // 12 windows of T=8
  DataLoader dl(load_dataset_meta(dir.path()), Split::kTrain, 5, 8, false, 1);
  EXPECT_EQ(dl.batches_per_epoch(), 2u);
  Batch a = next(dl);
  next(dl);
  EXPECT_EQ(dl.state(), (LoaderState{0, 10}));
  EXPECT_EQ(next(dl), a);  // 2 windows left < 5: new epoch
  EXPECT_EQ(dl.state(), (LoaderState{1, 5}));
}

TEST(Loader, ShuffleIsASeededPermutation) {
  TempDir dir("loader");
  const int T = 4;
  make_dataset(dir.path(), {101, 57, 33});  // 25 + 14 + 8 = 47 windows
  DatasetMeta meta = load_dataset_meta(dir.path());
  auto epoch_order = [&](uint64_t seed, int epoch) {
    DataLoader dl(meta, Split::kTrain, 1, T, /*shuffle=*/true, seed);
    dl.restore({uint64_t(epoch), 0});
    std::vector<int32_t> firsts;
    for (uint64_t i = 0; i < dl.num_windows(); ++i) {
      Batch b = next(dl);
      for (int t = 0; t < T; ++t) EXPECT_EQ(b.y[t], b.x[t] + 1);  // ids are consecutive in a shard
      firsts.push_back(b.x[0]);
    }
    EXPECT_EQ(dl.state().epoch, uint64_t(epoch));
    return firsts;
  };
  std::vector<int32_t> e0 = epoch_order(42, 0);
  ASSERT_EQ(e0.size(), 47u);
  // Every window exactly once: the set of first tokens equals the unshuffled set.
  std::vector<int32_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  DataLoader seq(meta, Split::kTrain, 1, T, false, 0);
  std::vector<int32_t> expected;
  for (int i = 0; i < 47; ++i) expected.push_back(next(seq).x[0]);
  EXPECT_EQ(sorted, expected);
  EXPECT_NE(e0, expected) << "shuffle=true returned file order";
  EXPECT_EQ(epoch_order(42, 0), e0) << "same seed, different order";
  EXPECT_NE(epoch_order(43, 0), e0) << "another seed gives the same order";
  EXPECT_NE(epoch_order(42, 1), e0) << "epoch 1 repeats epoch 0's order";
}

TEST(Loader, PermutationIsPinned) {
  // The order must not change between builds or platforms: checkpoints resume into it (a change
  // needs a new kWindowOrderName). These values are this implementation's output, recorded once.
  EXPECT_EQ(epoch_permutation(10, 1234, 0), (std::vector<uint64_t>{6, 4, 3, 0, 9, 8, 2, 1, 7, 5}));
  EXPECT_EQ(epoch_permutation(10, 1234, 1), (std::vector<uint64_t>{8, 5, 6, 0, 4, 1, 9, 7, 2, 3}));
  EXPECT_EQ(WindowOrder(1000000007ull * 1000, 5, 2)(123456789012ull), 354719079606ull);
  EXPECT_EQ(epoch_permutation(0, 1, 0).size(), 0u);
  EXPECT_EQ(epoch_permutation(1, 1, 0), std::vector<uint64_t>{0});
}

// WindowOrder is a bijection of [0, n) for every n (including around the powers of four where
// its Feistel domain changes size), different per seed and epoch.
TEST(Loader, WindowOrderIsABijection) {
  std::vector<uint64_t> sizes;
  for (uint64_t n = 1; n <= 300; ++n) sizes.push_back(n);
  for (uint64_t p = 16; p <= (uint64_t(1) << 20); p *= 4) sizes.insert(sizes.end(), {p - 1, p, p + 1});
  sizes.push_back(1000003);
  for (uint64_t n : sizes) {
    std::vector<uint64_t> perm = epoch_permutation(n, 77, n % 3);
    std::sort(perm.begin(), perm.end());
    for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(perm[i], i) << "n = " << n;
  }
  EXPECT_NE(epoch_permutation(1000, 1, 0), epoch_permutation(1000, 2, 0));
  EXPECT_NE(epoch_permutation(1000, 1, 0), epoch_permutation(1000, 1, 1));
}

// It shuffles well enough for data order: over 20000 epochs of 50 windows, where position 0 and
// position 1 land is uniform (Pearson's chi-square with 49 degrees of freedom below its 0.1%
// critical value, 85.4), and consecutive positions are not neighbours more often than chance.
TEST(Loader, WindowOrderIsUniform) {
  const uint64_t n = 50;
  const int epochs = 20000;
  std::vector<double> first(n, 0), second(n, 0);
  int adjacent = 0;
  for (int e = 0; e < epochs; ++e) {
    const WindowOrder order(n, 1234, uint64_t(e));
    first[order(0)] += 1;
    second[order(1)] += 1;
    for (uint64_t i = 0; i + 1 < n; ++i) adjacent += order(i + 1) == order(i) + 1;
  }
  auto chi2 = [&](const std::vector<double>& c) {
    double x = 0;
    for (double v : c) x += (v - double(epochs) / n) * (v - double(epochs) / n) / (double(epochs) / n);
    return x;
  };
  EXPECT_LT(chi2(first), 85.4);
  EXPECT_LT(chi2(second), 85.4);
  // A random permutation has (n-1)/n adjacent ascending pairs on average: ~0.98 per epoch.
  EXPECT_NEAR(double(adjacent) / epochs, 0.98, 0.1);
  // And it needs no memory: a trillion windows, looked up directly.
  const WindowOrder huge(uint64_t(1) << 40, 3, 0);
  std::set<uint64_t> seen;
  for (uint64_t i = 0; i < 1000; ++i) seen.insert(huge(i));
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(Loader, PositionsOfAnotherShuffleOrderAreRefused) {
  TempDir dir("loader");
  make_dataset(dir.path(), {300});
  DataLoader dl(load_dataset_meta(dir.path()), Split::kTrain, 2, 8, /*shuffle=*/true, 1);
  // A position saved before the order had a name: refused when shuffling, fine in file order.
  const LoaderState old = LoaderState::from_json(json{{"epoch", 0}, {"cursor", 4}});
  EXPECT_EQ(old.order, "fisher-yates");
  const std::string msg = user_error_message([&] { dl.restore(old); });
  EXPECT_NE(msg.find("shuffle order 'fisher-yates'"), std::string::npos) << msg;
  DataLoader in_order(load_dataset_meta(dir.path()), Split::kTrain, 2, 8, /*shuffle=*/false, 1);
  in_order.restore(old);
  EXPECT_EQ(in_order.state().cursor, 4u);
  // The current order round-trips through JSON.
  const LoaderState now = LoaderState::from_json(json::parse(dl.state().to_json().dump()));
  EXPECT_EQ(now.order, kWindowOrderName);
  dl.restore(now);
}

TEST(Loader, StateRestoresExactly) {
  TempDir dir("loader");
  make_dataset(dir.path(), {300, 211});
  DatasetMeta meta = load_dataset_meta(dir.path());
  // 37 + 26 = 63 windows of T=8, B=4: 15 batches per epoch. Save mid-epoch and run across the
  // epoch boundary after the restore.
  DataLoader a(meta, Split::kTrain, 4, 8, true, 7);
  for (int i = 0; i < 11; ++i) next(a);
  LoaderState saved = LoaderState::from_json(json::parse(a.state().to_json().dump()));
  EXPECT_EQ(saved, a.state());
  std::vector<Batch> expected;
  for (int i = 0; i < 12; ++i) expected.push_back(next(a));
  EXPECT_EQ(a.state().epoch, 1u);

  DataLoader b(meta, Split::kTrain, 4, 8, true, 7);
  b.restore(saved);
  for (int i = 0; i < 12; ++i) ASSERT_EQ(next(b), expected[i]) << "batch " << i << " after restore";

  b.reset();
  DataLoader c(meta, Split::kTrain, 4, 8, true, 7);
  EXPECT_EQ(next(b), next(c));

  EXPECT_NE(user_error_message([&] { b.restore({0, 1000}); }).find("beyond"), std::string::npos);
  EXPECT_NE(user_error_message([&] { LoaderState::from_json(json{{"epoch", 1}}); }).find("cursor"),
            std::string::npos);
}

TEST(Loader, RanksSplitTheGlobalBatch) {
  TempDir dir("loader");
  make_dataset(dir.path(), {300, 211});  // 63 windows of T=8
  DatasetMeta meta = load_dataset_meta(dir.path());
  const int T = 8;
  for (bool shuffle : {false, true}) {
    for (int world : {2, 3}) {
      const int B = world == 2 ? 2 : 1;
      DataLoader single(meta, Split::kTrain, world * B, T, shuffle, 5);
      std::vector<DataLoader> ranks;
      for (int r = 0; r < world; ++r) ranks.emplace_back(meta, Split::kTrain, B, T, shuffle, 5, r, world);
      EXPECT_EQ(ranks[0].batches_per_epoch(), single.batches_per_epoch());
      for (int step = 0; step < 40; ++step) {  // crosses epoch boundaries
        Batch g = next(single);
        for (int r = 0; r < world; ++r) {
          Batch part = next(ranks[r]);
          std::vector<int32_t> gx(g.x.begin() + r * B * T, g.x.begin() + (r + 1) * B * T);
          std::vector<int32_t> gy(g.y.begin() + r * B * T, g.y.begin() + (r + 1) * B * T);
          ASSERT_EQ(part.x, gx) << "world " << world << " rank " << r << " step " << step;
          ASSERT_EQ(part.y, gy) << "world " << world << " rank " << r << " step " << step;
          ASSERT_EQ(ranks[r].state(), single.state());
        }
      }
    }
  }
}

TEST(Loader, ValSplit) {
  TempDir dir("loader");
  make_dataset(dir.path(), {100}, {30, 12});
  DatasetMeta meta = load_dataset_meta(dir.path());
  EXPECT_EQ(meta.val_tokens, 42u);
  DataLoader dl(meta, Split::kVal, 2, 5, false, 0);
  EXPECT_EQ(dl.num_windows(), 5u + 2u);
  Batch b = next(dl);
  EXPECT_EQ(b.x[0], 3);
  EXPECT_EQ(b.y[4], 8);
}

TEST(Loader, TooLittleData) {
  TempDir dir("loader");
  make_dataset(dir.path(), {50, 30});  // 6 + 3 windows of T=8
  DatasetMeta meta = load_dataset_meta(dir.path());
  std::string msg = user_error_message([&] { DataLoader(meta, Split::kTrain, 5, 8, false, 0, 0, 2); });
  EXPECT_NE(msg.find(dir.path()), std::string::npos) << msg;
  EXPECT_NE(msg.find("train split has 9 windows"), std::string::npos) << msg;
  EXPECT_NE(msg.find("= 10"), std::string::npos) << msg;
  msg = user_error_message([&] { DataLoader(meta, Split::kVal, 1, 64, false, 0); });
  EXPECT_NE(msg.find("val split has 0 windows"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--val-fraction"), std::string::npos) << msg;
  EXPECT_NO_THROW(DataLoader(meta, Split::kTrain, 9, 8, false, 0));
  // Evaluation reads what a val split holds, even less than one batch of world*B windows.
  make_dataset(dir.path(), {50}, {30});  // 3 val windows of T=8
  meta = load_dataset_meta(dir.path());
  EXPECT_EQ(DataLoader(meta, Split::kVal, 5, 8, false, 0, 1, 2).num_windows(), 3u);
}

TEST(DatasetMeta, Errors) {
  TempDir dir("loader");
  std::string msg = user_error_message([&] { load_dataset_meta(dir.file("nothing")); });
  EXPECT_NE(msg.find("is not a prepared data directory (no meta.json)"), std::string::npos) << msg;
  msg = user_error_message([&] { load_dataset_meta(dir.path()); });
  EXPECT_NE(msg.find(dir.path()), std::string::npos) << msg;

  make_dataset(dir.path(), {50, 30});
  std::remove(dir.file("train_00001.bin").c_str());
  msg = user_error_message([&] { load_dataset_meta(dir.path()); });
  EXPECT_NE(msg.find("train_00001.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;

  // A shard from another dataset (other vocab) next to this meta.json.
  write_shard(dir.file("train_00001.bin"), std::vector<uint32_t>(30, 5), {0}, 100000);
  msg = user_error_message([&] { load_dataset_meta(dir.path()); });
  EXPECT_NE(msg.find("train_00001.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab size 100000"), std::string::npos) << msg;

  write_text_file_atomic(dir.file("meta.json"), "{\"format\": \"ltrain-dataset\", \"version\": ");
  msg = user_error_message([&] { load_dataset_meta(dir.path()); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
  EXPECT_NE(msg.find("meta.json"), std::string::npos) << msg;
}
