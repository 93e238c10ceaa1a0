// Dataset blends (data.blend): the shares, the sampling statistics, each source's own window
// order, rank slices, exact resume and resharding of the position, and the config keys.
// Every source is an ltrain dataset whose token ids encode (source, position): source k's train
// stream is ids kBase*k + 3, kBase*k + 4, ..., so a window's first input names its source and
// its window index.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "ltrain/config/config.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/blend.h"
#include "ltrain/data/shard.h"
#include "test_util.h"

using namespace ltrain;
using ltrain::test::TempDir;
using nlohmann::json;

namespace {

constexpr uint32_t kVocab = 16000;
constexpr int kBase = 4000;  // id range of one source
constexpr int T = 8;

// An ltrain dataset of one train shard of `train_tokens` ids (source `k`'s range) and a val shard.
DatasetMeta make_source(const std::string& dir, int k, uint64_t train_tokens) {
  make_dirs(dir);
  json meta = {{"format", "ltrain-dataset"}, {"version", 1},      {"vocab_size", kVocab},
               {"bos_id", 1},                {"eos_id", 2},       {"bytes_per_token", 2}};
  for (const char* split : {"train", "val"}) {
    const uint64_t n = std::string(split) == "train" ? train_tokens : 4 * T + 1;
    std::vector<uint32_t> ids(n);
    for (uint64_t i = 0; i < n; ++i) ids[i] = uint32_t(kBase * k + 3 + i);
    const std::string file = std::string(split) + "_00000.bin";
    write_shard(path_join(dir, file), ids, {0}, kVocab);
    meta[split] = {{"tokens", n}, {"docs", 1}, {"shards", json::array({{{"file", file}, {"tokens", n}, {"docs", 1}}})}};
  }
  write_text_file_atomic(path_join(dir, "meta.json"), meta.dump());
  return load_dataset_meta(dir);
}

// Which source and which of its windows a row came from.
std::pair<int, int> identify(const int32_t* row) { return {(row[0] - 3) / kBase, ((row[0] - 3) % kBase) / T}; }

struct Rows {
  std::vector<int32_t> x, y;
};
Rows draw(BatchStream& s, int B) {
  Rows r{std::vector<int32_t>(size_t(B) * T, -7), std::vector<int32_t>(size_t(B) * T, -7)};
  s.next_batch(r.x.data(), r.y.data());
  return r;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

BlendSource weighted(const std::string& path, double w) { return {path, basename_of(path), w, 0}; }

class Blend : public ::testing::Test {
 protected:
  TempDir dir{"blend"};
  // Windows per source: 40, 25 and 10.
  std::vector<BlendComponent> components(std::vector<double> shares = {0.6, 0.3, 0.1}) {
    const uint64_t tokens[] = {40 * T + 1, 25 * T + 1, 10 * T + 1};
    std::vector<BlendComponent> out;
    for (int k = 0; k < 3; ++k) {
      const std::string name = "src" + std::to_string(k);
      out.push_back({name, make_source(dir.file(name), k, tokens[k]), shares[size_t(k)]});
    }
    return out;
  }
};

}  // namespace

TEST(BlendShares, WeightsAreNormalizedAndEpochsFixTheirShare) {
  auto s = blend_shares({weighted("a", 3), weighted("b", 1)}, {100, 100}, 1000);
  EXPECT_DOUBLE_EQ(s[0], 0.75);
  EXPECT_DOUBLE_EQ(s[1], 0.25);
  // b read twice over a run of 1000 samples: 2 * 100 / 1000 of them; a and c share the rest 3:1.
  BlendList mix = {weighted("a", 3), {"b", "b", 0, 2.0}, weighted("c", 1)};
  s = blend_shares(mix, {500, 100, 7}, 1000);
  EXPECT_DOUBLE_EQ(s[1], 0.2);
  EXPECT_DOUBLE_EQ(s[0], 0.6);
  EXPECT_DOUBLE_EQ(s[2], 0.2);
  // All by epochs: they must cover the run (within 1%), then they are exact up to normalization.
  s = blend_shares({{"a", "a", 0, 1.0}, {"b", "b", 0, 2.5}}, {600, 160}, 1000);
  EXPECT_DOUBLE_EQ(s[0], 0.6);
  EXPECT_DOUBLE_EQ(s[1], 0.4);
}

TEST(BlendShares, ImpossiblePlansAreUserErrors) {
  std::string e = error_of([] { blend_shares({{"a", "a", 0, 3.0}, weighted("b", 1)}, {400, 10}, 1000); });
  EXPECT_NE(e.find("120%"), std::string::npos) << e;
  EXPECT_NE(e.find("nothing for the weighted"), std::string::npos) << e;
  e = error_of([] { blend_shares({{"a", "a", 0, 1.0}, {"b", "b", 0, 1.0}}, {400, 100}, 1000); });
  EXPECT_NE(e.find("50%"), std::string::npos) << e;
  EXPECT_NE(e.find("not 100%"), std::string::npos) << e;
}

// The source choice is uniform against the shares: Pearson's chi-square over 200k draws, 2
// degrees of freedom, below its 0.1% critical value (13.82); a fixed seed, so not flaky.
TEST(BlendPick, ProportionsFollowTheSharesStatistically) {
  const std::vector<double> shares = {0.5, 0.3, 0.2}, cumulative = {0.5, 0.8, 1.0};
  const int N = 200000;
  for (uint64_t seed : {1ull, 1234ull, 987654321ull}) {
    std::vector<double> count(3, 0);
    for (int n = 0; n < N; ++n) count[blend_pick(seed, uint64_t(n), cumulative)] += 1;
    double chi2 = 0;
    for (int i = 0; i < 3; ++i) chi2 += std::pow(count[i] - N * shares[i], 2) / (N * shares[i]);
    EXPECT_LT(chi2, 13.82) << "seed " << seed << ": counts " << count[0] << " " << count[1] << " " << count[2];
  }
  // Deterministic from the seed, and another seed gives another sequence.
  int same = 0, differ = 0;
  for (int n = 0; n < 3000; ++n) {
    same += blend_pick(7, uint64_t(n), cumulative) == blend_pick(7, uint64_t(n), cumulative);
    differ += blend_pick(7, uint64_t(n), cumulative) != blend_pick(8, uint64_t(n), cumulative);
  }
  EXPECT_EQ(same, 3000);
  EXPECT_GT(differ, 1000);  // independent draws differ with probability 0.62
}

// Through the loader: the sources drawn (read back from the token ids) follow the shares, drawn()
// counts them, and each source is read in its own epochs: within an epoch no window repeats,
// and every window is read once before any is read again.
TEST_F(Blend, LoaderDrawsTheSharesAndReadsEachSourceByEpochs) {
  const auto comps = components();
  const int B = 4, batches = 1000;
  BlendLoader loader(comps, B, T, /*shuffle=*/true, /*seed=*/42);
  std::vector<std::vector<int>> order(3);
  for (int b = 0; b < batches; ++b) {
    const Rows r = draw(loader, B);
    for (int row = 0; row < B; ++row) {
      const auto [src, window] = identify(&r.x[size_t(row) * T]);
      ASSERT_TRUE(src >= 0 && src < 3) << r.x[size_t(row) * T];
      // Inputs and targets are a window of T+1 consecutive ids of that source.
      for (int i = 0; i < T; ++i) {
        ASSERT_EQ(r.x[size_t(row) * T + i], kBase * src + 3 + window * T + i);
        ASSERT_EQ(r.y[size_t(row) * T + i], kBase * src + 4 + window * T + i);
      }
      order[size_t(src)].push_back(window);
    }
  }
  const std::vector<uint64_t> drawn = loader.drawn();
  const double N = B * batches;
  const int windows[] = {40, 25, 10};
  for (size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(drawn[k], order[k].size());
    const double p = comps[k].share, sigma = std::sqrt(N * p * (1 - p));
    EXPECT_LT(std::fabs(double(order[k].size()) - N * p), 4.5 * sigma) << "source " << k;
    // Epoch by epoch: each full block of `windows[k]` reads is a permutation of the windows, and
    // the blocks are shuffled differently.
    std::set<std::vector<int>> distinct_orders;
    for (size_t start = 0; start + size_t(windows[k]) <= order[k].size(); start += size_t(windows[k])) {
      std::vector<int> epoch(order[k].begin() + long(start), order[k].begin() + long(start) + windows[k]);
      distinct_orders.insert(epoch);
      std::sort(epoch.begin(), epoch.end());
      for (int w = 0; w < windows[k]; ++w) ASSERT_EQ(epoch[size_t(w)], w) << "source " << k << " epoch at " << start;
    }
    EXPECT_GT(distinct_orders.size(), 3u) << "source " << k << " is not reshuffled per epoch";
  }
  EXPECT_EQ(loader.state().cursor, uint64_t(N));
}

// An `epochs` source is read that many times over the run (up to the sampling noise).
TEST_F(Blend, EpochsSourceIsReadThatManyTimes) {
  auto comps = components();
  const uint64_t run = 2000;
  const BlendList cfg = {weighted("src0", 1), {"src1", "src1", 0, 2.0}, weighted("src2", 1)};
  const auto shares = blend_shares(cfg, {40, 25, 10}, run);
  for (size_t k = 0; k < 3; ++k) comps[k].share = shares[k];
  BlendLoader loader(comps, 4, T, true, 9);
  for (uint64_t n = 0; n < run / 4; ++n) draw(loader, 4);
  const double epochs = double(loader.drawn()[1]) / 25.0;
  const double sigma = std::sqrt(run * shares[1] * (1 - shares[1])) / 25.0;
  EXPECT_NEAR(epochs, 2.0, 4.5 * sigma);
  EXPECT_EQ(loader.state().sources[1].epoch, uint64_t(loader.drawn()[1] / 25 - (loader.drawn()[1] % 25 == 0)));
}

// Rank r of a world-W run with batch B reads rows r*B..(r+1)*B-1 of a single process with batch
// W*B, and every rank's position is the same.
TEST_F(Blend, RanksReadDisjointRowsOfTheSingleProcessBatch) {
  const auto comps = components();
  BlendLoader single(comps, 6, T, true, 5);
  BlendLoader r0(comps, 2, T, true, 5, 0, 3), r1(comps, 2, T, true, 5, 1, 3), r2(comps, 2, T, true, 5, 2, 3);
  for (int b = 0; b < 40; ++b) {
    const Rows all = draw(single, 6);
    const Rows parts[] = {draw(r0, 2), draw(r1, 2), draw(r2, 2)};
    for (int r = 0; r < 3; ++r)
      ASSERT_TRUE(std::equal(parts[r].x.begin(), parts[r].x.end(), all.x.begin() + r * 2 * T) &&
                  std::equal(parts[r].y.begin(), parts[r].y.end(), all.y.begin() + r * 2 * T))
          << "batch " << b << " rank " << r;
  }
  EXPECT_EQ(r0.state(), single.state());
  EXPECT_EQ(r2.state(), single.state());
}

// Exact resume: the position saved as JSON and restored into a new loader continues the same
// sequence; under another layout (2 ranks x 2 -> 1 x 4) too, so no sample repeats or is skipped.
TEST_F(Blend, PositionResumesExactlyAndReshards) {
  const auto comps = components();
  BlendLoader ref(comps, 4, T, true, 11);
  std::vector<Rows> expected;
  for (int b = 0; b < 30; ++b) expected.push_back(draw(ref, 4));

  BlendLoader a0(comps, 2, T, true, 11, 0, 2), a1(comps, 2, T, true, 11, 1, 2);
  for (int b = 0; b < 13; ++b) draw(a0, 2), draw(a1, 2);
  const LoaderState saved = LoaderState::from_json(json::parse(a0.state().to_json().dump()));
  EXPECT_EQ(saved, a1.state());
  EXPECT_EQ(saved.cursor, 13u * 4);
  ASSERT_EQ(saved.sources.size(), 3u);

  BlendLoader resumed(comps, 4, T, true, 11);  // one process, batch 4
  resumed.restore(saved);
  for (int b = 13; b < 30; ++b) {
    const Rows r = draw(resumed, 4);
    ASSERT_EQ(r.x, expected[size_t(b)].x) << "batch " << b;
    ASSERT_EQ(r.y, expected[size_t(b)].y) << "batch " << b;
  }
  EXPECT_EQ(resumed.state(), ref.state());
}

TEST_F(Blend, PositionsOfAnotherDataAreRefused) {
  const auto comps = components();
  BlendLoader loader(comps, 2, T, true, 1);
  std::string e = error_of([&] { loader.restore(LoaderState{3, 4, {}}); });
  EXPECT_NE(e.find("a single dataset"), std::string::npos) << e;
  e = error_of([&] { loader.restore(LoaderState{0, 4, {{"src0", 0, 1}, {"wiki", 0, 1}, {"src2", 0, 1}}}); });
  EXPECT_NE(e.find("[src0, wiki, src2]"), std::string::npos) << e;
  EXPECT_NE(e.find("[src0, src1, src2]"), std::string::npos) << e;
  e = error_of([&] { loader.restore(LoaderState{0, 4, {{"src0", 0, 1}, {"src1", 0, 99}, {"src2", 0, 1}}}); });
  EXPECT_NE(e.find("'src1'"), std::string::npos) << e;
  EXPECT_NE(e.find("beyond its 25 windows"), std::string::npos) << e;
  DataLoader plain(comps[0].meta, Split::kTrain, 2, T, true, 1);
  e = error_of([&] { plain.restore(loader.state()); });
  EXPECT_NE(e.find("blend of 3 sources"), std::string::npos) << e;
}

TEST(BlendConfig, ParsesYamlListsAndOverridesAndRoundTrips) {
  TempDir dir("blend_cfg");
  const std::string file = dir.file("c.yaml");
  write_text_file_atomic(file,
                         "data:\n  blend:\n    - {path: data/cc/, weight: 0.7}\n    - path: data/wiki\n      epochs: 2\n"
                         "      name: wikipedia\n");
  Config c = load_config(file);
  ASSERT_EQ(c.data.blend.size(), 2u);
  EXPECT_EQ(c.data.blend[0], (BlendSource{"data/cc/", "cc", 0.7, 0}));
  EXPECT_EQ(c.data.blend[1], (BlendSource{"data/wiki", "wikipedia", 0, 2}));
  validate_config(c);
  // The saved config (config.json, checkpoints) reads back the same.
  EXPECT_EQ(config_from_json(config_to_json(c), "json").data.blend, c.data.blend);
  // An override replaces the whole list (JSON or YAML flow).
  c = load_config(file, {"data.blend=[{\"path\": \"x\", \"weight\": 1}, {path: y, weight: 3}]"});
  ASSERT_EQ(c.data.blend.size(), 2u);
  EXPECT_EQ(c.data.blend[1], (BlendSource{"y", "y", 3, 0}));
}

TEST(BlendConfig, MistakesNameTheEntry) {
  auto msg = [](const std::vector<std::string>& ov) {
    return error_of([&] {
      TempDir dir("blend_bad");
      write_text_file_atomic(dir.file("c.yaml"), "train: {steps: 10}\n");
      validate_config(load_config(dir.file("c.yaml"), ov));
    });
  };
  EXPECT_NE(msg({"data.blend=[{path: a, wieght: 1}]"}).find("data.blend[0] has the unknown key 'wieght'"),
            std::string::npos);
  EXPECT_NE(msg({"data.blend=[{path: a, weight: 1}, {path: b}]"}).find("'data.blend[1]' ('b') needs exactly one of"),
            std::string::npos);
  EXPECT_NE(msg({"data.blend=[{path: a, weight: 1, epochs: 2}]"}).find("needs exactly one of"), std::string::npos);
  EXPECT_NE(msg({"data.blend=[{path: a, weight: -1}]"}).find("must be positive"), std::string::npos);
  EXPECT_NE(msg({"data.blend=[{path: a, weight: x}]"}).find("data.blend[0].weight expects a number, got 'x'"),
            std::string::npos);
  EXPECT_NE(msg({"data.blend=[{path: d/a, weight: 1}, {path: e/a, weight: 1}]"}).find("both named 'a'"),
            std::string::npos);
  EXPECT_NE(msg({"data.blend=[{weight: 1}]"}).find("'data.blend[0].path' is required"), std::string::npos);
  EXPECT_NE(msg({"data.blend={path: a}"}).find("must be a list"), std::string::npos);
  EXPECT_NE(msg({"data.path=x", "data.blend=[{path: a, weight: 1}]"}).find("both set"), std::string::npos);
}
