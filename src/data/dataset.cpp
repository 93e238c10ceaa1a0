// Dataset directory metadata (meta.json) and the window loader. See dataset.h for the loader's
// conventions and docs/data-format.md for the meta.json fields.
#include "ltrain/data/dataset.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

using nlohmann::json;

const char* split_name(Split s) { return s == Split::kTrain ? "train" : "val"; }

namespace {

// Field access that turns a missing or mistyped field into one line naming the file and key.
const json& field(const json& j, const char* key, const std::string& file) {
  auto it = j.find(key);
  if (it == j.end()) user_error("'", file, "' is missing the field '", key, "' (re-run `ltrain prepare`)");
  return *it;
}
uint64_t field_u64(const json& j, const char* key, const std::string& file) {
  const json& v = field(j, key, file);
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    user_error("'", file, "': field '", key, "' must be a non-negative integer, got ", v.dump());
  return v.get<uint64_t>();
}
int field_int(const json& j, const char* key, const std::string& file) {
  const json& v = field(j, key, file);
  if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
    user_error("'", file, "': field '", key, "' must be a 32-bit integer, got ", v.dump());
  return v.get<int>();
}
std::string field_str(const json& j, const char* key, const std::string& file) {
  const json& v = field(j, key, file);
  if (!v.is_string()) user_error("'", file, "': field '", key, "' must be a string, got ", v.dump());
  return v.get<std::string>();
}

void load_split(const json& root, const char* name, const std::string& meta_path,
                const DatasetMeta& meta, std::vector<std::string>* shards, uint64_t* tokens) {
  const json& split = field(root, name, meta_path);
  const json& list = field(split, "shards", meta_path);
  if (!list.is_array()) user_error("'", meta_path, "': field '", name, ".shards' must be a list");
  *tokens = 0;
  for (const json& entry : list) {
    std::string file = field_str(entry, "file", meta_path);
    uint64_t n = field_u64(entry, "tokens", meta_path);
    std::string path = path_join(meta.dir, file);
    if (!file_exists(path))
      user_error("data dir '", meta.dir, "' is incomplete: shard '", file, "' listed in meta.json is missing");
    TokenShard shard = TokenShard::open(path, /*verify_checksum=*/false);
    if (static_cast<int>(shard.vocab_size()) != meta.vocab_size ||
        shard.bytes_per_token() != meta.bytes_per_token)
      user_error("shard '", path, "' has vocab size ", shard.vocab_size(), " and ", shard.bytes_per_token(),
                 " bytes per token, but meta.json says ", meta.vocab_size, " and ", meta.bytes_per_token,
                 " (the directory mixes datasets; re-run `ltrain prepare`)");
    if (shard.num_tokens() != n)
      user_error("shard '", path, "' holds ", shard.num_tokens(), " tokens, but meta.json says ", n,
                 " (the directory mixes datasets; re-run `ltrain prepare`)");
    shards->push_back(path);
    *tokens += n;
  }
}

}  // namespace

DatasetMeta load_dataset_meta(const std::string& dir) {
  std::string meta_path = path_join(dir, "meta.json");
  if (!is_directory(dir) || !file_exists(meta_path))
    user_error("'", dir, "' is not a prepared data directory (no meta.json); create one with `ltrain prepare`");
  json root;
  try {
    root = json::parse(read_text_file(meta_path));
  } catch (const json::exception& e) {
    user_error("'", meta_path, "' is not valid JSON (", e.what(), "); re-run `ltrain prepare`");
  }
  if (!root.is_object()) user_error("'", meta_path, "' is not a JSON object; re-run `ltrain prepare`");
  if (!root.contains("format") || !root["format"].is_string() || root["format"] != "ltrain-dataset")
    user_error("'", meta_path, "' is not an ltrain dataset description (\"format\" is not \"ltrain-dataset\")");
  int version = field_int(root, "version", meta_path);
  if (version != kDatasetFormatVersion)
    user_error("'", meta_path, "' has dataset format version ", version, "; this ltrain reads version ",
               kDatasetFormatVersion, " (re-run `ltrain prepare`)");

  DatasetMeta meta;
  meta.dir = dir;
  meta.vocab_size = field_int(root, "vocab_size", meta_path);
  meta.bos_id = field_int(root, "bos_id", meta_path);
  meta.eos_id = field_int(root, "eos_id", meta_path);
  meta.bytes_per_token = field_int(root, "bytes_per_token", meta_path);
  if (meta.vocab_size <= 0 || meta.bytes_per_token != shard_bytes_per_token(meta.vocab_size))
    user_error("'", meta_path, "': vocab_size ", meta.vocab_size, " and bytes_per_token ",
               meta.bytes_per_token, " do not fit together");
  const std::string tok = root.contains("tokenizer") ? field_str(root, "tokenizer", meta_path) : "tokenizer.model";
  // Absolute so that the path stays valid in checkpoints and after a chdir.
  meta.tokenizer_path = std::filesystem::absolute(path_join(dir, tok)).lexically_normal().string();
  load_split(root, "train", meta_path, meta, &meta.train_shards, &meta.train_tokens);
  load_split(root, "val", meta_path, meta, &meta.val_shards, &meta.val_tokens);
  return meta;
}

// ---- LoaderState --------------------------------------------------------------------------------

json LoaderState::to_json() const { return json{{"epoch", epoch}, {"cursor", cursor}}; }

LoaderState LoaderState::from_json(const json& j) {
  auto get = [&](const char* key) -> uint64_t {
    if (!j.is_object() || !j.contains(key) || !j.at(key).is_number_integer() ||
        (!j.at(key).is_number_unsigned() && j.at(key).get<int64_t>() < 0))
      user_error("data loader state ", j.dump(), " lacks a non-negative integer '", key, "'");
    return j.at(key).get<uint64_t>();
  };
  LoaderState s;
  s.epoch = get("epoch");
  s.cursor = get("cursor");
  return s;
}

// ---- permutation --------------------------------------------------------------------------------

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, bound) without modulo bias: reject the 2^64 mod bound lowest raw values.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  while (true) {
    uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

}  // namespace

std::vector<uint64_t> epoch_permutation(uint64_t num_windows, uint64_t seed, uint64_t epoch) {
  std::vector<uint64_t> perm(num_windows);
  for (uint64_t i = 0; i < num_windows; ++i) perm[i] = i;
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64(epoch)));
  for (uint64_t i = num_windows; i > 1; --i) std::swap(perm[i - 1], perm[uniform_below(rng, i)]);
  return perm;
}

// ---- DataLoader ---------------------------------------------------------------------------------

DataLoader::DataLoader(const DatasetMeta& meta, Split split, int batch_size, int seq_len, bool shuffle,
                       uint64_t seed, int rank, int world, bool verify)
    : dir_(meta.dir), split_(split), B_(batch_size), T_(seq_len), rank_(rank), world_(world),
      vocab_size_(meta.vocab_size), shuffle_(shuffle), seed_(seed) {
  if (batch_size <= 0) user_error("batch size must be positive, got ", batch_size);
  if (seq_len <= 0) user_error("sequence length must be positive, got ", seq_len);
  LTRAIN_CHECK(world >= 1 && rank >= 0 && rank < world, "rank " << rank << " world " << world);
  const auto& paths = split == Split::kTrain ? meta.train_shards : meta.val_shards;
  window_offsets_.push_back(0);
  for (const auto& p : paths) {
    shards_.push_back(TokenShard::open(p, verify));
    uint64_t n = shards_.back().num_tokens();
    uint64_t windows = n >= uint64_t(T_) + 1 ? (n - 1) / T_ : 0;
    window_offsets_.push_back(window_offsets_.back() + windows);
  }
  const uint64_t global = uint64_t(world_) * B_;
  if (num_windows() < global)
    user_error("data dir '", dir_, "': the ", split_name(split), " split has ", num_windows(),
               " windows of seq_len+1 = ", T_ + 1, " tokens, but one batch needs world*batch_size = ",
               world_, "*", B_, " = ", global, "; use a smaller batch size or seq_len, or more data");
  window_buf_.resize(T_ + 1);
}

void DataLoader::restore(const LoaderState& s) {
  if (s.cursor > num_windows())
    user_error("data loader state (epoch ", s.epoch, ", cursor ", s.cursor, ") is beyond the ", num_windows(),
               " windows of the ", split_name(split_), " split of '", dir_,
               "' (did the data or seq_len change since the checkpoint?)");
  state_ = s;
}

void DataLoader::ensure_permutation() {
  if (!shuffle_ || perm_epoch_ == state_.epoch) return;
  perm_ = epoch_permutation(num_windows(), seed_, state_.epoch);
  perm_epoch_ = state_.epoch;
}

uint64_t DataLoader::window_at(uint64_t position) const { return shuffle_ ? perm_[position] : position; }

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
  const uint64_t global = uint64_t(world_) * B_;
  if (state_.cursor + global > num_windows()) {  // the epoch's remainder is too short: next epoch
    state_.epoch += 1;
    state_.cursor = 0;
  }
  ensure_permutation();
  for (int b = 0; b < B_; ++b) {
    uint64_t g = window_at(state_.cursor + uint64_t(rank_) * B_ + b);
    // Shard s holds global windows [window_offsets_[s], window_offsets_[s+1]).
    size_t s = std::upper_bound(window_offsets_.begin(), window_offsets_.end(), g) - window_offsets_.begin() - 1;
    uint64_t start = (g - window_offsets_[s]) * T_;
    shards_[s].read(start, T_ + 1, window_buf_.data());
    std::copy(window_buf_.begin(), window_buf_.begin() + T_, inputs + size_t(b) * T_);
    std::copy(window_buf_.begin() + 1, window_buf_.end(), targets + size_t(b) * T_);
  }
  state_.cursor += global;
}

}  // namespace ltrain
