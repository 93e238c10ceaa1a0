// Dataset blends: see blend.h for the sampling conventions.
#include "ltrain/data/blend.h"

#include <algorithm>
#include <cmath>

#include "ltrain/core/check.h"
#include "ltrain/core/hash.h"

namespace ltrain {

namespace {

constexpr uint64_t kPickSalt = 0x626c656e642d7069ull;    // "blend-pi"
constexpr uint64_t kSourceSalt = 0x626c656e642d7372ull;  // "blend-sr"

}  // namespace

std::vector<double> blend_shares(const BlendList& blend, const std::vector<uint64_t>& windows, uint64_t total_samples) {
  LTRAIN_CHECK(blend.size() == windows.size() && !blend.empty(), "blend_shares: " << blend.size() << " sources");
  LTRAIN_CHECK(total_samples > 0, "blend_shares: no samples");
  std::vector<double> share(blend.size(), 0.0);
  double fixed = 0, weights = 0;
  for (size_t i = 0; i < blend.size(); ++i) {
    if (blend[i].epochs > 0) {
      share[i] = blend[i].epochs * double(windows[i]) / double(total_samples);
      fixed += share[i];
    } else {
      weights += blend[i].weight;
    }
  }
  const auto pct = [](double x) { return std::round(x * 1000) / 10; };
  if (weights == 0) {
    if (std::fabs(fixed - 1) > 0.01)
      user_error("data.blend: every source is given by epochs, and together they make ", pct(fixed), "% of the run's ",
                 total_samples, " samples (train.steps x global_batch_tokens / seq_len), not 100%; adjust the epochs "
                 "or give one source a weight to take the rest");
    for (auto& s : share) s /= fixed;
  } else {
    if (fixed >= 1 - 1e-9)
      user_error("data.blend: the sources given by epochs need ", pct(fixed), "% of the run's ", total_samples,
                 " samples (train.steps x global_batch_tokens / seq_len), leaving nothing for the weighted ones; lower "
                 "their epochs or raise train.steps");
    for (size_t i = 0; i < blend.size(); ++i)
      if (blend[i].epochs <= 0) share[i] = (1 - fixed) * blend[i].weight / weights;
  }
  return share;
}

size_t blend_pick(uint64_t seed, uint64_t n, const std::vector<double>& cumulative) {
  const double u = double(splitmix64(splitmix64(seed ^ kPickSalt) ^ n) >> 11) * 0x1p-53;  // uniform in [0, 1)
  const size_t i = size_t(std::upper_bound(cumulative.begin(), cumulative.end(), u) - cumulative.begin());
  return std::min(i, cumulative.size() - 1);
}

BlendLoader::BlendLoader(const std::vector<BlendComponent>& sources, int batch_size, int seq_len, bool shuffle,
                         uint64_t seed, int rank, int world, bool verify)
    : pick_seed_(seed), B_(batch_size), T_(seq_len), rank_(rank), world_(world), shuffle_(shuffle) {
  LTRAIN_CHECK(!sources.empty(), "a blend needs sources");
  LTRAIN_CHECK(world >= 1 && rank >= 0 && rank < world, "rank " << rank << " world " << world);
  if (batch_size <= 0) user_error("batch size must be positive, got ", batch_size);
  double total = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    const auto& c = sources[i];
    LTRAIN_CHECK(c.share > 0 && std::isfinite(c.share), "blend share " << c.share);
    // Every source in its own order: a seed of its own, one window per sample.
    loaders_.push_back(std::make_unique<DataLoader>(c.meta, Split::kTrain, 1, seq_len, shuffle,
                                                    splitmix64(seed ^ kSourceSalt ^ splitmix64(i)), 0, 1, verify));
    names_.push_back(c.name);
    shares_.push_back(c.share);
    total += c.share;
    cumulative_.push_back(total);
    state_.sources.push_back({c.name, 0, 0});
  }
  for (auto& c : cumulative_) c /= total;
  cumulative_.back() = 1.0;
}

uint64_t BlendLoader::num_windows() const {
  uint64_t n = 0;
  for (const auto& l : loaders_) n += l->num_windows();
  return n;
}

std::vector<uint64_t> BlendLoader::drawn() const {
  std::vector<uint64_t> out;
  for (size_t i = 0; i < loaders_.size(); ++i)
    out.push_back(state_.sources[i].epoch * loaders_[i]->num_windows() + state_.sources[i].cursor);
  return out;
}

void BlendLoader::restore(const LoaderState& s) {
  auto list = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return "[" + out + "]";
  };
  std::vector<std::string> theirs;
  for (const auto& p : s.sources) theirs.push_back(p.name);
  if (theirs != names_)
    user_error("the data position to resume from covers the blend sources ",
               theirs.empty() ? std::string("[] (a single dataset, data.path)") : list(theirs), ", but data.blend has ",
               list(names_), "; resume with the same sources, named the same, in the same order");
  if (shuffle_) check_window_order(s, "data.blend");
  for (size_t i = 0; i < s.sources.size(); ++i)
    if (s.sources[i].cursor > loaders_[i]->num_windows())
      user_error("the data position of blend source '", names_[i], "' (epoch ", s.sources[i].epoch, ", window ",
                 s.sources[i].cursor, ") is beyond its ", loaders_[i]->num_windows(),
                 " windows (did its data or seq_len change since the checkpoint?)");
  state_ = s;
}

void BlendLoader::next_batch(int32_t* inputs, int32_t* targets) {
  const uint64_t global = uint64_t(world_) * B_;
  const uint64_t first_row = uint64_t(rank_) * B_;
  for (uint64_t k = 0; k < global; ++k) {
    const size_t s = blend_pick(pick_seed_, state_.cursor + k, cumulative_);
    SourcePosition& p = state_.sources[s];
    if (p.cursor >= loaders_[s]->num_windows()) p.epoch += 1, p.cursor = 0;
    if (k >= first_row && k < first_row + uint64_t(B_)) {
      const size_t row = size_t(k - first_row);
      loaders_[s]->read_window(p.epoch, p.cursor, inputs + row * T_, targets + row * T_);
    }
    p.cursor += 1;
  }
  state_.cursor += global;
}

}  // namespace ltrain
