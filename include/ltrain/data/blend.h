// Dataset blends (data.blend): several datasets sampled in fixed proportions, as LLaMA mixed
// CommonCrawl, C4, GitHub, Wikipedia, books, arXiv and StackExchange.
//
// Conventions (docs/data-format.md, "Blends"):
//  - Global sample n (n = 0, 1, ... over the whole run, all ranks together) comes from source
//    blend_pick(seed, n, cumulative shares): a function of the seed and n alone, so every rank
//    draws the same sequence without communicating, whatever the layout.
//  - Each source is read window by window in its own order: the DataLoader conventions with one
//    window per sample, its own shuffle seed, and a new epoch (a new permutation) whenever all
//    its windows were read. So a source can be read more than once; how often is planned by its
//    share (`epochs` sets the share from the run's length).
//  - One next_batch() consumes global samples [n, n + world*B); rank r keeps samples
//    n + r*B .. n + r*B + B - 1, so a world-W run sees exactly the rows of one process with
//    batch W*B. The whole position (LoaderState: cursor = n, one (epoch, cursor) per source) is
//    independent of the layout, which is what resuming and resharding need.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ltrain/config/config.h"
#include "ltrain/data/dataset.h"

namespace ltrain {

// Each source's share of the training samples (summing to 1). A `weight` source shares what the
// `epochs` sources leave, in proportion to its weight; an `epochs` source takes
// epochs * windows[i] / total_samples. UserError when the epochs need more than the whole run,
// leave nothing to the weighted sources, or (all given by epochs) do not cover the run within 1%.
std::vector<double> blend_shares(const BlendList& blend, const std::vector<uint64_t>& windows, uint64_t total_samples);

// The source of global sample n: a uniform draw from (seed, n) against the cumulative shares
// (non-decreasing, the last exactly 1).
size_t blend_pick(uint64_t seed, uint64_t n, const std::vector<double>& cumulative);

struct BlendComponent {
  std::string name;
  DatasetMeta meta;
  double share = 0;
};

class BlendLoader : public BatchStream {
 public:
  // Opens every source's train split (windows of seq_len+1 tokens, as DataLoader).
  BlendLoader(const std::vector<BlendComponent>& sources, int batch_size, int seq_len, bool shuffle, uint64_t seed,
              int rank = 0, int world = 1, bool verify = true);

  void next_batch(int32_t* inputs, int32_t* targets) override;
  LoaderState state() const override { return state_; }
  // UserError unless the state is a blend position over the same source names, in order.
  void restore(const LoaderState& s) override;
  uint64_t num_windows() const override;

  size_t num_sources() const { return loaders_.size(); }
  const std::string& name(size_t i) const { return names_[i]; }
  double share(size_t i) const { return shares_[i]; }
  uint64_t source_windows(size_t i) const { return loaders_[i]->num_windows(); }
  // Samples drawn from each source so far, all ranks together (including any skipped ranges).
  std::vector<uint64_t> drawn() const;

 private:
  std::vector<std::unique_ptr<DataLoader>> loaders_;
  std::vector<std::string> names_;
  std::vector<double> shares_, cumulative_;
  uint64_t pick_seed_;
  int B_, T_, rank_, world_;
  bool shuffle_;
  LoaderState state_;
};

}  // namespace ltrain
