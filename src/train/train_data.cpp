// data.path / data.blend -> the loaders a run reads. See train_data.h.
#include "ltrain/train/train_data.h"

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/train/trainer.h"

namespace ltrain {

uint64_t run_samples(const Config& cfg) {
  return uint64_t(cfg.train.steps) * uint64_t(cfg.train.global_batch_tokens / cfg.train.seq_len);
}

TrainData open_train_data(const Config& cfg, int dp_rank, int dp_size) {
  const auto& tc = cfg.train;
  const auto& dc = cfg.data;
  const int B = tc.micro_batch_size, T = tc.seq_len;
  TrainData d;
  if (dc.blend.empty()) {
    if (dc.path.empty())
      user_error("config key 'data.path' is required: a directory written by `ltrain prepare`, a Megatron-LM "
                 "indexed dataset prefix, or llm.c shards (docs/data-format.md); or data.blend for several");
    DataSource src;
    src.path = dc.path;
    src.meta = load_dataset_meta(dc.path);
    check_data_matches_model(src.meta, cfg.model);
    d.train = std::make_unique<DataLoader>(src.meta, Split::kTrain, B, T, dc.shuffle, tc.seed, dp_rank, dp_size,
                                           dc.verify);
    src.val = std::make_unique<DataLoader>(src.meta, Split::kVal, B, T, false, tc.seed, dp_rank, dp_size, dc.verify);
    d.sources.push_back(std::move(src));
    return d;
  }

  std::vector<uint64_t> windows;
  std::vector<BlendComponent> components;
  for (size_t i = 0; i < dc.blend.size(); ++i) {
    const BlendSource& b = dc.blend[i];
    DataSource src;
    src.name = b.name;
    src.path = b.path;
    try {
      src.meta = load_dataset_meta(b.path);
    } catch (const UserError& e) {
      user_error("data.blend[", i, "] ('", b.name, "'): ", e.what());
    }
    check_data_matches_model(src.meta, cfg.model);
    const DatasetMeta& first = i == 0 ? src.meta : d.sources.front().meta;
    if (src.meta.vocab_size != first.vocab_size)
      user_error("data.blend[", i, "] ('", b.name, "', ", b.path, ") has a vocabulary of ", src.meta.vocab_size,
                 " tokens, data.blend[0] ('", dc.blend[0].name, "') one of ", first.vocab_size,
                 "; all sources of a blend must be tokenized with the same tokenizer");
    if (i > 0 && file_exists(src.meta.tokenizer_path) && file_exists(first.tokenizer_path) &&
        read_text_file(src.meta.tokenizer_path) != read_text_file(first.tokenizer_path))
      user_error("data.blend[", i, "] ('", b.name, "') was tokenized with '", src.meta.tokenizer_path,
                 "', which differs from data.blend[0]'s '", first.tokenizer_path,
                 "'; all sources of a blend must use the same tokenizer");
    // Windows of the train split, as the loader will cut them (checked again when it opens).
    windows.push_back(DataLoader(src.meta, Split::kTrain, 1, T, false, 0, 0, 1, /*verify=*/false).num_windows());
    src.val = std::make_unique<DataLoader>(src.meta, Split::kVal, B, T, false, tc.seed, dp_rank, dp_size, dc.verify);
    d.sources.push_back(std::move(src));
  }
  const std::vector<double> shares = blend_shares(dc.blend, windows, run_samples(cfg));
  for (size_t i = 0; i < d.sources.size(); ++i) {
    d.sources[i].share = shares[i];
    components.push_back({d.sources[i].name, d.sources[i].meta, shares[i]});
  }
  auto blend = std::make_unique<BlendLoader>(components, B, T, dc.shuffle, tc.seed, dp_rank, dp_size, dc.verify);
  d.blend = blend.get();
  d.train = std::move(blend);
  return d;
}

std::vector<std::string> TrainData::describe(uint64_t samples) const {
  std::vector<std::string> out;
  if (!blend) return out;
  out.push_back(strfmt("data blend of %zu sources (%llu samples over the run):", sources.size(),
                       (unsigned long long)samples));
  for (size_t i = 0; i < sources.size(); ++i) {
    const uint64_t w = blend->source_windows(i);
    out.push_back(strfmt("  %-16s share %6.2f%% | %12llu windows | %6.2f epochs planned | %s", sources[i].name.c_str(),
                         100 * sources[i].share, (unsigned long long)w,
                         w ? sources[i].share * double(samples) / double(w) : 0.0, sources[i].path.c_str()));
  }
  return out;
}

}  // namespace ltrain
