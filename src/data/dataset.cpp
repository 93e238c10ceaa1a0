// Dataset directory metadata (meta.json) and the window loader. See dataset.h for the loader's
// conventions and docs/data-format.md for the meta.json fields.
#include "ltrain/data/dataset.h"

#include <glob.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "ltrain/core/check.h"
#include "ltrain/core/hash.h"
#include "ltrain/core/io.h"

namespace ltrain {

using nlohmann::json;

const char* split_name(Split s) { return s == Split::kTrain ? "train" : "val"; }

const char* data_format_name(DataFormat f) {
  switch (f) {
    case DataFormat::kLtrain: return "ltrain";
    case DataFormat::kMegatron: return "megatron";
    case DataFormat::kLlmc: return "llmc";
  }
  return "?";
}

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

class ShardSource : public TokenSource {
 public:
  explicit ShardSource(TokenShard s) : s_(std::move(s)) {}
  uint64_t num_tokens() const override { return s_.num_tokens(); }
  void read(uint64_t start, uint64_t n, int32_t* out) const override { s_.read(start, n, out); }
  const std::string& path() const override { return s_.path(); }

 private:
  TokenShard s_;
};

void load_split(const json& root, const char* name, const std::string& meta_path,
                const DatasetMeta& meta, std::vector<std::string>* shards, uint64_t* tokens,
                std::vector<std::string>* masks) {
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
    if (meta.sft) {
      const std::string mask_file = field_str(entry, "mask", meta_path);
      const std::string mask_path = path_join(meta.dir, mask_file);
      if (!file_exists(mask_path))
        user_error("data dir '", meta.dir, "' is incomplete: loss mask file '", mask_file,
                   "' listed in meta.json is missing");
      LossMask::open(mask_path, n, /*verify_checksum=*/false);
      masks->push_back(mask_path);
    }
    shards->push_back(path);
    *tokens += n;
  }
}

}  // namespace

namespace {

DatasetMeta load_ltrain_meta(const std::string& dir) {
  std::string meta_path = path_join(dir, "meta.json");
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
  if (root.contains("sft")) {
    if (!root["sft"].is_boolean()) user_error("'", meta_path, "': field 'sft' must be true or false, got ", root["sft"].dump());
    meta.sft = root["sft"].get<bool>();
  }
  load_split(root, "train", meta_path, meta, &meta.train_shards, &meta.train_tokens, &meta.train_masks);
  load_split(root, "val", meta_path, meta, &meta.val_shards, &meta.val_tokens, &meta.val_masks);
  return meta;
}

// ---- Megatron-LM / llm.c ------------------------------------------------------------------------

std::string absolute_path(const std::string& p) {
  return std::filesystem::absolute(p).lexically_normal().string();
}

TokenSpan span_of(const MappedTokens& t, uint64_t file_bytes) {
  TokenSpan s;
  s.path = t.path();
  s.dtype = t.dtype();
  s.byte_offset = t.byte_offset();
  s.tokens = t.num_tokens();
  s.file_bytes = file_bytes;
  return s;
}

// Maps a span's file again, refusing it if it changed size since load_dataset_meta.
MappedTokens open_span(const TokenSpan& s) {
  auto f = MappedFile::open(s.path, "token data file");
  if (f->size() != s.file_bytes)
    user_error("token data file '", s.path, "' changed since it was opened: ", f->size(), " bytes, was ",
               s.file_bytes);
  return MappedTokens(f, s.dtype, s.byte_offset, s.tokens);
}

// DIR/ltrain-data.json (optional) and the vocabulary size: from it, else the largest id + 1.
void finish_foreign_meta(DatasetMeta& meta, const std::string& data_dir) {
  const std::string side = path_join(data_dir, kSidecarName);
  std::string tok = "tokenizer.model";
  meta.bytes_per_token = 0;
  for (const auto& v : {&meta.train_spans, &meta.val_spans})
    for (const auto& s : *v) {
      meta.bytes_per_token = std::max(meta.bytes_per_token, dtype_size(s.dtype));
      (v == &meta.train_spans ? meta.train_tokens : meta.val_tokens) += s.tokens;
    }
  if (file_exists(side)) {
    json root;
    try {
      root = json::parse(read_text_file(side));
    } catch (const json::exception& e) {
      user_error("'", side, "' is not valid JSON (", e.what(), ")");
    }
    if (!root.is_object()) user_error("'", side, "' is not a JSON object (expected {\"vocab_size\": N, ...})");
    meta.vocab_size = field_int(root, "vocab_size", side);
    if (meta.vocab_size <= 0) user_error("'", side, "': vocab_size must be positive, got ", meta.vocab_size);
    if (root.contains("bos_id")) meta.bos_id = field_int(root, "bos_id", side);
    if (root.contains("eos_id")) meta.eos_id = field_int(root, "eos_id", side);
    if (root.contains("tokenizer")) tok = field_str(root, "tokenizer", side);
  } else {
    // The formats do not store the vocabulary: the largest id + 1 is the smallest model vocabulary
    // that can train on the data, so the model check stays sound. One pass over the tokens.
    int64_t max_id = -1;
    for (const auto& v : {&meta.train_spans, &meta.val_spans})
      for (const auto& s : *v) max_id = std::max(max_id, open_span(s).max_id());
    if (max_id < 0) user_error("data '", meta.dir, "' holds no tokens");
    if (max_id >= INT32_MAX) user_error("data '", meta.dir, "' holds token id ", max_id, ", too large for a vocabulary");
    meta.vocab_size = static_cast<int>(max_id + 1);
    meta.vocab_from_scan = true;
    std::fprintf(stderr,
                 "note: no '%s': vocabulary size %d taken from the largest token id (scanned %llu tokens); write "
                 "{\"vocab_size\": N} there to set it\n",
                 side.c_str(), meta.vocab_size,
                 static_cast<unsigned long long>(meta.train_tokens + meta.val_tokens));
  }
  meta.tokenizer_path = absolute_path(path_join(data_dir, tok));
}

// PREFIX of a Megatron dataset named by `path` (PREFIX, PREFIX.bin or PREFIX.idx), or "". An
// existing .idx is enough: a missing .bin is then reported by MegatronDataset::open.
std::string megatron_prefix(const std::string& path) {
  auto is_file = [](const std::string& p) { return file_exists(p) && !is_directory(p); };
  if (is_file(path + ".idx")) return path;
  if (ends_with(path, ".idx") && is_file(path)) return path.substr(0, path.size() - 4);
  if (ends_with(path, ".bin") && is_file(path.substr(0, path.size() - 4) + ".idx"))
    return path.substr(0, path.size() - 4);
  return "";
}

constexpr uint64_t kMegatronValPercent = 1;  // of the documents, when no val prefix exists

DatasetMeta load_megatron_meta(const std::string& path, const std::string& prefix) {
  DatasetMeta meta;
  meta.dir = path;
  meta.format = DataFormat::kMegatron;
  MegatronDataset train = MegatronDataset::open(prefix);
  const std::string base = basename_of(prefix);
  std::string val_prefix;
  if (ends_with(base, "train")) {
    const std::string vp = path_join(dirname_of(prefix), base.substr(0, base.size() - 5) + "val");
    if (file_exists(vp + ".idx") || file_exists(vp + ".bin")) val_prefix = vp;
  }
  meta.train_shards.push_back(train.bin_path());
  if (!val_prefix.empty()) {
    MegatronDataset val = MegatronDataset::open(val_prefix);
    meta.val_shards.push_back(val.bin_path());
    meta.train_spans.push_back(span_of(train.docs(0, train.num_docs()), train.bin_bytes()));
    meta.val_spans.push_back(span_of(val.docs(0, val.num_docs()), val.bin_bytes()));
    meta.train_docs = train.num_docs();
    meta.val_docs = val.num_docs();
  } else {
    const uint64_t D = train.num_docs();
    if (D < 2)
      user_error("Megatron dataset '", prefix, "' holds ", D, " document(s): at least 2 are needed to hold the last "
                 "one out for validation (or name the prefix *train and put a *val prefix next to it)");
    const uint64_t n_val = std::max<uint64_t>(1, (D * kMegatronValPercent + 99) / 100);
    const uint64_t n_train = D - n_val;
    meta.val_shards.push_back(train.bin_path());
    meta.train_spans.push_back(span_of(train.docs(0, n_train), train.bin_bytes()));
    meta.val_spans.push_back(span_of(train.docs(n_train, D), train.bin_bytes()));
    meta.train_docs = n_train;
    meta.val_docs = n_val;
  }
  finish_foreign_meta(meta, dirname_of(prefix));
  return meta;
}

bool has_glob_chars(const std::string& p) { return p.find_first_of("*?[") != std::string::npos; }

DatasetMeta load_llmc_meta(const std::string& path) {
  DatasetMeta meta;
  meta.dir = path;
  meta.format = DataFormat::kLlmc;
  std::vector<std::string> files;
  std::string data_dir;
  if (is_directory(path)) {
    data_dir = path;
    std::string idx;
    for (const auto& name : list_directory(path)) {
      if (ends_with(name, ".bin")) files.push_back(path_join(path, name));
      if (ends_with(name, ".idx") && idx.empty()) idx = name;
    }
    for (const auto& f : files) {
      const std::string name = basename_of(f);
      if ((name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0) && !contains(name, "_train_") &&
          !contains(name, "_val_"))
        user_error("'", path, "' is not a prepared data directory (no meta.json) but holds ltrain shards ('", name,
                   "'): an interrupted `ltrain prepare`? Re-run it");
    }
    if (!idx.empty())
      user_error("'", path, "' holds a Megatron indexed dataset ('", idx, "'): point data.path at its prefix, e.g. '",
                 path_join(path, idx.substr(0, idx.size() - 4)), "'");
    if (files.empty())
      user_error("'", path, "' is not a prepared data directory (no meta.json) and holds no llm.c shards (*.bin); "
                 "create one with `ltrain prepare`");
  } else if (has_glob_chars(path)) {
    glob_t g;
    const int rc = ::glob(path.c_str(), 0, nullptr, &g);
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) files.push_back(g.gl_pathv[i]);  // sorted by glob
    ::globfree(&g);
    if (files.empty()) user_error("data path '", path, "' matches no files");
    data_dir = dirname_of(files[0]);
  } else {
    files.push_back(path);
    data_dir = dirname_of(path);
  }
  for (const auto& f : files) {
    const std::string name = basename_of(f);
    const bool val = contains(name, "_val_") || ends_with(name, "_val.bin");
    const bool train = !val && (contains(name, "_train_") || ends_with(name, "_train.bin"));
    if (!val && !train)
      user_error("llm.c shard '", f, "' is neither a train nor a val shard by name (llm.c names them "
                 "*_train_*.bin and *_val_*.bin)");
    MappedTokens t = open_llmc_shard(f);
    (val ? meta.val_shards : meta.train_shards).push_back(f);
    const uint64_t file_bytes = kLlmcHeaderBytes + t.num_tokens() * dtype_size(t.dtype());
    (val ? meta.val_spans : meta.train_spans).push_back(span_of(t, file_bytes));
  }
  if (meta.val_shards.empty())
    user_error("data '", path, "' has no llm.c validation shard (*_val_*.bin, e.g. fineweb_val_000000.bin)");
  if (meta.train_shards.empty())
    user_error("data '", path, "' has no llm.c training shard (*_train_*.bin, e.g. fineweb_train_000001.bin)");
  finish_foreign_meta(meta, data_dir);
  return meta;
}

}  // namespace

DatasetMeta load_dataset_meta(const std::string& path) {
  if (is_directory(path) && file_exists(path_join(path, "meta.json"))) return load_ltrain_meta(path);
  const std::string prefix = megatron_prefix(path);
  if (!prefix.empty()) return load_megatron_meta(path, prefix);
  if (is_directory(path) || has_glob_chars(path) || (ends_with(path, ".bin") && file_exists(path)))
    return load_llmc_meta(path);
  user_error("'", path, "' is not a prepared data directory (no meta.json), a Megatron dataset prefix (PREFIX.bin + ",
             "PREFIX.idx) or llm.c shards; create one with `ltrain prepare`");
}

// ---- LoaderState --------------------------------------------------------------------------------

json LoaderState::to_json() const {
  json j{{"epoch", epoch}, {"cursor", cursor}, {"order", order}};
  if (!sources.empty()) {
    json list = json::array();
    for (const auto& s : sources) list.push_back({{"name", s.name}, {"epoch", s.epoch}, {"cursor", s.cursor}});
    j["sources"] = list;
  }
  return j;
}

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
  s.order = "fisher-yates";  // positions saved before the order was named
  if (j.contains("order")) {
    if (!j.at("order").is_string()) user_error("data loader state ", j.dump(), ": 'order' must be a string");
    s.order = j.at("order").get<std::string>();
  }
  if (j.contains("sources")) {
    const json& list = j.at("sources");
    if (!list.is_array()) user_error("data loader state ", j.dump(), ": 'sources' must be a list");
    for (const json& e : list) {
      const LoaderState one = from_json(json{{"epoch", e.value("epoch", json())}, {"cursor", e.value("cursor", json())}});
      if (!e.contains("name") || !e.at("name").is_string())
        user_error("data loader state ", j.dump(), ": a blend source position lacks its 'name'");
      s.sources.push_back({e.at("name").get<std::string>(), one.epoch, one.cursor});
    }
  }
  return s;
}

// ---- permutation --------------------------------------------------------------------------------

WindowOrder::WindowOrder(uint64_t n, uint64_t seed, uint64_t epoch) : n_(n), half_bits_(1) {
  while (half_bits_ < 32 && (uint64_t(1) << (2 * half_bits_)) < n) ++half_bits_;
  mask_ = (uint64_t(1) << half_bits_) - 1;
  const uint64_t base = splitmix64(seed ^ splitmix64(epoch ^ 0x5748494e444f5752ull));  // "WHINDOWR"
  for (int r = 0; r < 6; ++r) keys_[r] = splitmix64(base + uint64_t(r) * 0x9E3779B97F4A7C15ull);
}

uint64_t WindowOrder::operator()(uint64_t position) const {
  LTRAIN_CHECK(position < n_, "window order: position " << position << " of " << n_);
  uint64_t x = position;
  do {  // cycle walking: the permutation of [0, 4^half_bits) restricted to [0, n) by iterating
    uint64_t left = x >> half_bits_, right = x & mask_;
    for (const uint64_t key : keys_) {
      const uint64_t next = left ^ (splitmix64(right ^ key) & mask_);
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= n_);
  return x;
}

std::vector<uint64_t> epoch_permutation(uint64_t num_windows, uint64_t seed, uint64_t epoch) {
  const WindowOrder order(num_windows, seed, epoch);
  std::vector<uint64_t> perm(num_windows);
  for (uint64_t i = 0; i < num_windows; ++i) perm[i] = order(i);
  return perm;
}

void check_window_order(const LoaderState& s, const std::string& what) {
  if (s.order != kWindowOrderName)
    user_error("the data position to resume from (", what, ") was taken under the shuffle order '", s.order,
               "' of an older ltrain, not '", kWindowOrderName, "'; continuing would repeat and skip windows. "
               "Start a new run from its weights (train.init_from) or resume with data.shuffle=false");
}

// ---- DataLoader ---------------------------------------------------------------------------------

DataLoader::DataLoader(const DatasetMeta& meta, Split split, int batch_size, int seq_len, bool shuffle,
                       uint64_t seed, int rank, int world, bool verify)
    : dir_(meta.dir), split_(split), B_(batch_size), T_(seq_len), rank_(rank), world_(world),
      vocab_size_(meta.vocab_size), shuffle_(shuffle), seed_(seed) {
  if (batch_size <= 0) user_error("batch size must be positive, got ", batch_size);
  if (seq_len <= 0) user_error("sequence length must be positive, got ", seq_len);
  LTRAIN_CHECK(world >= 1 && rank >= 0 && rank < world, "rank " << rank << " world " << world);
  window_offsets_.push_back(0);
  if (meta.format == DataFormat::kLtrain) {
    for (const auto& p : split == Split::kTrain ? meta.train_shards : meta.val_shards)
      sources_.push_back(std::make_unique<ShardSource>(TokenShard::open(p, verify)));
    if (meta.sft) {
      const auto& masks = split == Split::kTrain ? meta.train_masks : meta.val_masks;
      LTRAIN_CHECK(masks.size() == sources_.size(), "masks: " << masks.size() << " for " << sources_.size() << " shards");
      for (size_t i = 0; i < masks.size(); ++i)
        masks_.push_back(LossMask::open(masks[i], sources_[i]->num_tokens(), verify));
    }
  } else {
    for (const auto& span : split == Split::kTrain ? meta.train_spans : meta.val_spans) {
      MappedTokens t = open_span(span);
      if (verify) t.check_ids(meta.vocab_size);  // one pass, as the ltrain shards' checksums
      sources_.push_back(std::make_unique<MappedTokens>(std::move(t)));
    }
  }
  for (const auto& src : sources_) {
    uint64_t n = src->num_tokens();
    uint64_t windows = n >= uint64_t(T_) + 1 ? (n - 1) / T_ : 0;
    window_offsets_.push_back(window_offsets_.back() + windows);
  }
  const char* what = meta.format == DataFormat::kLtrain ? "data dir '" : "data '";
  const uint64_t global = uint64_t(world_) * B_;
  if (split == Split::kTrain && num_windows() < global)
    user_error(what, dir_, "': the train split has ", num_windows(), " windows of seq_len+1 = ", T_ + 1,
               " tokens, but one batch needs world*batch_size = ", world_, "*", B_, " = ", global,
               "; use a smaller batch size or seq_len, or more data");
  // Evaluation takes what a val split holds, even less than one batch, but it needs a window.
  if (num_windows() == 0)
    user_error(what, dir_, "': the val split has 0 windows of seq_len+1 = ", T_ + 1, " tokens (it holds ",
               meta.val_tokens, " tokens); use a smaller seq_len, or more val data (`ltrain prepare "
               "--val-fraction`)");
  window_buf_.resize(T_ + 1);
  if (!masks_.empty()) mask_buf_.resize(T_ + 1);
}

void DataLoader::restore(const LoaderState& s) {
  if (!s.sources.empty())
    user_error("the data position to resume from belongs to a blend of ", s.sources.size(), " sources (data.blend), "
               "but this run reads the single dataset '", dir_, "'; resume with the same data.blend");
  if (shuffle_) check_window_order(s, dir_);
  if (s.cursor > num_windows())
    user_error("data loader state (epoch ", s.epoch, ", cursor ", s.cursor, ") is beyond the ", num_windows(),
               " windows of the ", split_name(split_), " split of '", dir_,
               "' (did the data or seq_len change since the checkpoint?)");
  state_ = s;
}

void DataLoader::ensure_order(uint64_t epoch) {
  if (!shuffle_ || order_epoch_ == epoch) return;
  order_ = WindowOrder(num_windows(), seed_, epoch);
  order_epoch_ = epoch;
}

uint64_t DataLoader::window_at(uint64_t position) const { return shuffle_ ? order_(position) : position; }

void DataLoader::read_global_window(uint64_t g, int32_t* inputs, int32_t* targets) {
  // Shard s holds global windows [window_offsets_[s], window_offsets_[s+1]).
  size_t s = std::upper_bound(window_offsets_.begin(), window_offsets_.end(), g) - window_offsets_.begin() - 1;
  uint64_t start = (g - window_offsets_[s]) * T_;
  sources_[s]->read(start, T_ + 1, window_buf_.data());
  std::copy(window_buf_.begin(), window_buf_.begin() + T_, inputs);
  std::copy(window_buf_.begin() + 1, window_buf_.end(), targets);
  if (!masks_.empty()) {  // SFT: no loss where the target token is not part of an answer
    masks_[s].read(start, T_ + 1, mask_buf_.data());
    for (int i = 0; i < T_; ++i)
      if (!mask_buf_[i + 1]) targets[i] = -1;
  }
}

void DataLoader::read_window(uint64_t epoch, uint64_t position, int32_t* inputs, int32_t* targets) {
  LTRAIN_CHECK(position < num_windows(), "window " << position << " of " << num_windows());
  ensure_order(epoch);
  read_global_window(window_at(position), inputs, targets);
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
  const uint64_t global = uint64_t(world_) * B_;
  LTRAIN_CHECK(num_windows() >= global, "next_batch on a split of " << num_windows() << " windows < " << global);
  if (state_.cursor + global > num_windows()) {  // the epoch's remainder is too short: next epoch
    state_.epoch += 1;
    state_.cursor = 0;
  }
  ensure_order(state_.epoch);
  for (int b = 0; b < B_; ++b)
    read_global_window(window_at(state_.cursor + uint64_t(rank_) * B_ + b), inputs + size_t(b) * T_,
                       targets + size_t(b) * T_);
  state_.cursor += global;
}

}  // namespace ltrain
