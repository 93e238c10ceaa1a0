// A prepared dataset directory (written by `ltrain prepare`) and the batch loader over it.
//
// Loader conventions (details and a worked example in docs/data-format.md):
//  - Each shard is cut into windows of T+1 tokens with stride T: window w covers tokens
//    [w*T, w*T + T]. inputs = its first T tokens, targets = its last T (inputs shifted by one).
//    Windows never cross shards; a shard's tail shorter than T+1 tokens is dropped. So every
//    token but a shard's first and its dropped tail is a target exactly once per epoch. Windows
//    cross documents: the BOS/EOS ids inside a window mark the boundaries.
//  - The global window list is the concatenation over shards in meta.json order. shuffle=false
//    reads it in order; shuffle=true reads it in a pseudorandom permutation keyed by (seed, epoch)
//    (WindowOrder: a Feistel network with cycle walking), computed per position, so it needs no
//    memory however many windows there are, and is the same on every platform and every rank.
//  - One next_batch() call consumes one *global* batch of world*B consecutive windows of the
//    epoch's order; rank r takes windows [cursor + r*B, cursor + (r+1)*B), then cursor += world*B.
//    Hence rank r of a world-W run with batch B gets exactly rows r*B..(r+1)*B-1 of the batch a
//    single process with batch W*B gets. When fewer than world*B windows are left in the epoch,
//    they are skipped and the next epoch begins (epoch+1, cursor 0).
//  - LoaderState (epoch, cursor) is the whole position: restore() continues bit-exactly.
//  - SFT datasets (`ltrain prepare --sft`, meta.json "sft": true) carry a loss mask per shard.
//    Windows are cut exactly as above (examples are packed like documents, so a window may hold
//    the end of one example and the start of the next); next_batch() then sets targets[i] = -1
//    wherever the mask byte of the target token (window position i+1) is 0, i.e. everywhere but
//    on answer tokens and their final EOS. The model's cross-entropy skips negative targets.
//  - Megatron-LM indexed datasets and llm.c shards (formats.h) are read the same way: every
//    "shard" above is then one token stream of the split (an llm.c shard file, or the split's
//    contiguous run of documents in a Megatron .bin), windowed by exactly the same rules.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <memory>
#include <string>
#include <vector>

#include "ltrain/data/formats.h"
#include "ltrain/data/shard.h"

namespace ltrain {

constexpr int kDatasetFormatVersion = 1;

enum class DataFormat { kLtrain, kMegatron, kLlmc };
const char* data_format_name(DataFormat f);  // "ltrain", "megatron", "llmc"

// One token stream of a split in a foreign format: `tokens` ids of `dtype` at `byte_offset` of
// `path`, a file of `file_bytes` bytes (the loader refuses the file if its size changed).
struct TokenSpan {
  std::string path;
  TokenDtype dtype = TokenDtype::kU16;
  uint64_t byte_offset = 0, tokens = 0, file_bytes = 0;
};

struct DatasetMeta {
  std::string dir;  // data.path as given (a directory, a Megatron prefix, a glob)
  int vocab_size = 0;
  int bos_id = -1;
  int eos_id = -1;
  int bytes_per_token = 0;
  std::string tokenizer_path;  // absolute path of DIR/tokenizer.model
  std::vector<std::string> train_shards, val_shards;  // full paths, in order (files holding the spans)
  uint64_t train_tokens = 0, val_tokens = 0;
  DataFormat format = DataFormat::kLtrain;
  std::vector<TokenSpan> train_spans, val_spans;  // megatron/llmc: the streams the loader windows
  uint64_t train_docs = 0, val_docs = 0;          // megatron: documents per split (0 if unknown)
  bool vocab_from_scan = false;                   // megatron/llmc without ltrain-data.json
  bool sft = false;  // ltrain SFT dataset: every shard has a loss mask file
  std::vector<std::string> train_masks, val_masks;  // sft: full paths, parallel to *_shards
};

// `path` selects the format (docs/data-format.md, "Other formats"):
//  - a directory with meta.json: an ltrain dataset. Reads meta.json and checks every listed
//    shard's header (not its checksum) against it: vocab size, bytes per token and token count.
//    With "sft": true, also each shard's loss mask file header (its token count).
//  - PREFIX with PREFIX.idx and PREFIX.bin (or the path of either): a Megatron indexed dataset.
//    Val: the sibling with the trailing "train" of the prefix's name replaced by "val" if it
//    exists, else the last 1% of the documents (at least one).
//  - another directory, a glob, or an llm.c .bin: llm.c shards, *_train* and *_val* by name.
// UserError naming the directory, file or shard on any defect.
DatasetMeta load_dataset_meta(const std::string& path);

enum class Split { kTrain, kVal };
const char* split_name(Split s);

// Where one source of a blend stands: its own epoch and windows of that epoch consumed.
struct SourcePosition {
  std::string name;
  uint64_t epoch = 0, cursor = 0;
  bool operator==(const SourcePosition& o) const { return name == o.name && epoch == o.epoch && cursor == o.cursor; }
};

// A loader's whole position. One dataset: (epoch, cursor). A blend (blend.h): epoch 0, cursor =
// the global sample index (samples drawn by all ranks together), and one SourcePosition per
// source. Positions of one run are ordered by (epoch, cursor).
// The name of the shuffled window order, stored with every loader position: a checkpoint whose
// position was taken under another order cannot continue it exactly.
constexpr const char* kWindowOrderName = "feistel6-v1";

// A bijection of [0, n) keyed by (seed, epoch): a 6-round Feistel network on the smallest
// even-bit power of two >= n (round function: splitmix64's finalizer of the half and a round key),
// with cycle walking back into [0, n). O(1) memory; about 6-24 hashes per call.
class WindowOrder {
 public:
  WindowOrder(uint64_t n, uint64_t seed, uint64_t epoch);
  uint64_t operator()(uint64_t position) const;  // position < n
  uint64_t size() const { return n_; }

 private:
  uint64_t n_;
  int half_bits_;
  uint64_t mask_;
  uint64_t keys_[6];
};

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t cursor = 0;  // windows of this epoch's order already consumed (all ranks together)
  std::vector<SourcePosition> sources;  // blends only
  // The shuffle order the position was taken under ("fisher-yates" for positions saved before
  // ltrain had WindowOrder, which carry no name); restore() refuses another when shuffling.
  std::string order = kWindowOrderName;
  nlohmann::json to_json() const;
  static LoaderState from_json(const nlohmann::json& j);  // UserError if fields are missing
  bool operator==(const LoaderState& o) const {
    return epoch == o.epoch && cursor == o.cursor && sources == o.sources && order == o.order;
  }
};

// What the trainer draws training batches from: one dataset (DataLoader) or a blend (BlendLoader).
class BatchStream {
 public:
  virtual ~BatchStream() = default;
  // The calling rank's (B, T) slice of the next global batch of world*B windows.
  virtual void next_batch(int32_t* inputs /*(B, T)*/, int32_t* targets /*(B, T)*/) = 0;
  virtual LoaderState state() const = 0;
  virtual void restore(const LoaderState& s) = 0;  // UserError if the state does not fit
  virtual uint64_t num_windows() const = 0;         // training windows available (all sources)
};

class DataLoader : public BatchStream {
 public:
  // Opens the split's shards (verifying their checksums once unless verify is false: one read
  // of the data). UserError if the train split has fewer than world*batch_size windows of
  // seq_len+1 tokens, or the val split none (evaluation reads what there is: read_window).
  DataLoader(const DatasetMeta& meta, Split split, int batch_size /*B*/, int seq_len /*T*/,
             bool shuffle, uint64_t seed, int rank = 0, int world = 1, bool verify = true);

  void next_batch(int32_t* inputs /*(B, T)*/, int32_t* targets /*(B, T)*/) override;
  LoaderState state() const override { return state_; }
  void restore(const LoaderState& s) override;  // UserError if the state does not fit this dataset/batch
  void reset() { restore(LoaderState{}); }
  // One window, independent of the batch position: the one at `position` of epoch `epoch`'s
  // order (position < num_windows()), as inputs/targets of T tokens each (SFT masks applied).
  // What a blend reads its sources with.
  void read_window(uint64_t epoch, uint64_t position, int32_t* inputs /*(T)*/, int32_t* targets /*(T)*/);

  uint64_t num_windows() const override { return window_offsets_.empty() ? 0 : window_offsets_.back(); }
  uint64_t batches_per_epoch() const { return num_windows() / (uint64_t(world_) * B_); }
  int vocab_size() const { return vocab_size_; }
  bool has_masks() const { return !masks_.empty(); }  // SFT: targets outside answers are -1
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }
  int rank() const { return rank_; }
  int world() const { return world_; }

 private:
  uint64_t window_at(uint64_t position) const;  // position in the epoch order -> global window id
  void ensure_order(uint64_t epoch);
  void read_global_window(uint64_t g, int32_t* inputs, int32_t* targets);
  std::string dir_;
  Split split_;
  int B_, T_, rank_, world_, vocab_size_;
  bool shuffle_;
  uint64_t seed_;
  std::vector<std::unique_ptr<TokenSource>> sources_;  // one per shard / stream, in order
  std::vector<uint64_t> window_offsets_;  // (num_shards+1,) prefix sums of windows per shard
  LoaderState state_;
  WindowOrder order_{0, 0, 0};  // of epoch order_epoch_, when shuffling
  uint64_t order_epoch_ = UINT64_MAX;
  std::vector<int32_t> window_buf_;  // (T+1,)
  std::vector<LossMask> masks_;      // SFT: one per source, else empty
  std::vector<uint8_t> mask_buf_;    // (T+1,)
};

// The window order of one shuffled epoch, whole (WindowOrder's values for 0..n-1). Exposed so
// tests and tools can reproduce what the loader reads.
std::vector<uint64_t> epoch_permutation(uint64_t num_windows, uint64_t seed, uint64_t epoch);
// Refuses (UserError) to continue a position taken under another shuffle order.
void check_window_order(const LoaderState& s, const std::string& what);

}  // namespace ltrain
