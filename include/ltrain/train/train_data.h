// What a training run reads: the training batches (one dataset, or a blend of several) and each
// source's validation split. Built from data.path or data.blend (docs/data-format.md).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "ltrain/config/config.h"
#include "ltrain/data/blend.h"
#include "ltrain/data/dataset.h"

namespace ltrain {

struct DataSource {
  std::string name;  // the blend entry's name; "" for data.path
  std::string path;
  double share = 1;  // of the training samples
  DatasetMeta meta;
  std::unique_ptr<DataLoader> val;  // this rank's slice of the source's val split
};

struct TrainData {
  std::vector<DataSource> sources;     // one per dataset, in config order
  std::unique_ptr<BatchStream> train;  // a DataLoader, or a BlendLoader over the sources
  BlendLoader* blend = nullptr;        // train, when it is a blend
  // Human-readable lines describing the sources: share, windows, planned epochs over the run.
  std::vector<std::string> describe(uint64_t run_samples) const;
};

// Opens data.path or data.blend for data-parallel rank dp_rank of dp_size. Checks each source
// against the model (vocabulary) and, for a blend, against each other (the same vocabulary and
// tokenizer). UserError naming the key or path otherwise.
TrainData open_train_data(const Config& cfg, int dp_rank, int dp_size);

// Training samples (windows of train.seq_len) the whole run draws: train.steps x
// global_batch_tokens / seq_len.
uint64_t run_samples(const Config& cfg);

}  // namespace ltrain
