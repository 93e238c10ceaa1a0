// A prepared dataset directory (written by `ltrain prepare`) and the batch loader over it.
//
// Loader conventions (details and a worked example in docs/data-format.md):
//  - Each shard is cut into windows of T+1 tokens with stride T: window w covers tokens
//    [w*T, w*T + T]. inputs = its first T tokens, targets = its last T (inputs shifted by one).
//    Windows never cross shards; a shard's tail shorter than T+1 tokens is dropped. So every
//    token but a shard's first and its dropped tail is a target exactly once per epoch. Windows
//    cross documents: the BOS/EOS ids inside a window mark the boundaries.
//  - The global window list is the concatenation over shards in meta.json order. shuffle=false
//    reads it in order; shuffle=true reads it in a permutation drawn per epoch from (seed, epoch)
//    by Fisher-Yates with std::mt19937_64, so it is the same on every platform and every rank.
//  - One next_batch() call consumes one *global* batch of world*B consecutive windows of the
//    epoch's order; rank r takes windows [cursor + r*B, cursor + (r+1)*B), then cursor += world*B.
//    Hence rank r of a world-W run with batch B gets exactly rows r*B..(r+1)*B-1 of the batch a
//    single process with batch W*B gets. When fewer than world*B windows are left in the epoch,
//    they are skipped and the next epoch begins (epoch+1, cursor 0).
//  - LoaderState (epoch, cursor) is the whole position: restore() continues bit-exactly.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "ltrain/data/shard.h"

namespace ltrain {

constexpr int kDatasetFormatVersion = 1;

struct DatasetMeta {
  std::string dir;
  int vocab_size = 0;
  int bos_id = -1;
  int eos_id = -1;
  int bytes_per_token = 0;
  std::string tokenizer_path;  // absolute path of DIR/tokenizer.model
  std::vector<std::string> train_shards, val_shards;  // full paths, in order
  uint64_t train_tokens = 0, val_tokens = 0;
};

// Reads DIR/meta.json and checks every listed shard's header (not its checksum) against it:
// vocab size, bytes per token and token count. UserError naming the directory or shard otherwise.
DatasetMeta load_dataset_meta(const std::string& dir);

enum class Split { kTrain, kVal };
const char* split_name(Split s);

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t cursor = 0;  // windows of this epoch's order already consumed (all ranks together)
  nlohmann::json to_json() const;
  static LoaderState from_json(const nlohmann::json& j);  // UserError if fields are missing
  bool operator==(const LoaderState& o) const { return epoch == o.epoch && cursor == o.cursor; }
};

class DataLoader {
 public:
  // Opens the split's shards (verifying their checksums once unless verify is false: one read
  // of the data). UserError if the split has fewer than world*batch_size windows of seq_len+1
  // tokens.
  DataLoader(const DatasetMeta& meta, Split split, int batch_size /*B*/, int seq_len /*T*/,
             bool shuffle, uint64_t seed, int rank = 0, int world = 1, bool verify = true);

  void next_batch(int32_t* inputs /*(B, T)*/, int32_t* targets /*(B, T)*/);
  LoaderState state() const { return state_; }
  void restore(const LoaderState& s);  // UserError if the state does not fit this dataset/batch
  void reset() { restore(LoaderState{}); }

  uint64_t num_windows() const { return window_offsets_.empty() ? 0 : window_offsets_.back(); }
  uint64_t batches_per_epoch() const { return num_windows() / (uint64_t(world_) * B_); }
  int vocab_size() const { return vocab_size_; }
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }

 private:
  uint64_t window_at(uint64_t position) const;  // position in the epoch order -> global window id
  void ensure_permutation();
  std::string dir_;
  Split split_;
  int B_, T_, rank_, world_, vocab_size_;
  bool shuffle_;
  uint64_t seed_;
  std::vector<TokenShard> shards_;
  std::vector<uint64_t> window_offsets_;  // (num_shards+1,) prefix sums of windows per shard
  LoaderState state_;
  std::vector<uint64_t> perm_;  // (num_windows,) order of the current epoch when shuffling
  uint64_t perm_epoch_ = UINT64_MAX;
  std::vector<int32_t> window_buf_;  // (T+1,)
};

// The window order of one epoch: identity when !shuffle, else the seeded permutation. Exposed so
// tests and tools can reproduce what the loader reads.
std::vector<uint64_t> epoch_permutation(uint64_t num_windows, uint64_t seed, uint64_t epoch);

}  // namespace ltrain
