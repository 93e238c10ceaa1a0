// `ltrain prepare`: stream documents out of the inputs, encode them in parallel, and write token
// shards. Documents are read and numbered on one thread and encoded in chunks by all cores; the
// output depends only on the inputs and options, never on the thread count.
#include "ltrain/data/prepare.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <exception>
#include <optional>
#include <regex>
#include <sstream>

#include "ltrain/core/check.h"
#include "ltrain/core/hash.h"
#include "ltrain/core/io.h"
#include "ltrain/data/dataset.h"
#include "ltrain/data/formats.h"
#include "ltrain/data/shard.h"
#include "ltrain/data/tokenizer.h"

namespace ltrain {

using nlohmann::json;

DocBoundary parse_doc_boundary(const std::string& name) {
  if (name == "paragraph") return DocBoundary::kParagraph;
  if (name == "line") return DocBoundary::kLine;
  if (name == "file") return DocBoundary::kFile;
  user_error("--doc-boundary '", name, "' is not one of paragraph, line, file");
}

DataFormat parse_data_format(const std::string& name) {
  if (name == "ltrain") return DataFormat::kLtrain;
  if (name == "megatron") return DataFormat::kMegatron;
  if (name == "llmc") return DataFormat::kLlmc;
  user_error("--format '", name, "' is not one of ltrain, megatron, llmc");
}

const char* doc_boundary_name(DocBoundary b) {
  switch (b) {
    case DocBoundary::kParagraph: return "paragraph";
    case DocBoundary::kLine: return "line";
    case DocBoundary::kFile: return "file";
  }
  return "?";
}

bool is_blank(const std::string& s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f') return false;
  return true;
}

// ---- DocumentReader -----------------------------------------------------------------------------

DocumentReader::DocumentReader(std::vector<std::string> files, DocBoundary boundary)
    : files_(std::move(files)), boundary_(boundary) {
  for (const auto& f : files_) {
    if (!file_exists(f)) user_error("input file not found: '", f, "'");
    if (is_directory(f)) user_error("input '", f, "' is a directory; pass the text files in it");
    total_bytes_ += file_size(f);
  }
}

DocumentReader::~DocumentReader() = default;

bool DocumentReader::open_next_file() {
  if (file_index_ >= files_.size()) return false;
  const std::string& f = files_[file_index_++];
  in_ = std::make_unique<std::ifstream>(f, std::ios::binary);
  if (!*in_) user_error("cannot read input file '", f, "'");
  jsonl_ = ends_with(f, ".jsonl");
  line_no_ = 0;
  bytes_in_file_ = 0;
  return true;
}

bool DocumentReader::next(std::string* doc) {
  while (true) {
    if (in_ && next_in_file(doc)) return true;
    if (in_) {  // this file is done
      in_.reset();
      bytes_done_ += file_size(files_[file_index_ - 1]);
      bytes_in_file_ = 0;
    }
    if (!open_next_file()) return false;
  }
}

bool DocumentReader::next_in_file(std::string* doc) {
  const std::string& file = files_[file_index_ - 1];
  doc->clear();
  if (jsonl_) {
    while (std::getline(*in_, line_)) {
      ++line_no_;
      bytes_in_file_ += line_.size() + 1;
      if (is_blank(line_)) continue;
      json j;
      try {
        j = json::parse(line_);
      } catch (const json::exception&) {
        user_error(file, ":", line_no_, ": not valid JSON (each .jsonl line must be an object with a \"text\" string)");
      }
      auto it = j.is_object() ? j.find("text") : j.end();
      if (!j.is_object() || it == j.end() || !it->is_string())
        user_error(file, ":", line_no_, ": no string field \"text\" (each .jsonl line must be an object with a \"text\" string)");
      if (is_blank(it->get_ref<const std::string&>())) continue;
      *doc = it->get<std::string>();
      return true;
    }
    return false;
  }
  switch (boundary_) {
    case DocBoundary::kFile: {
      if (in_->peek() == EOF) return false;
      std::ostringstream ss;
      ss << in_->rdbuf();
      *doc = ss.str();
      bytes_in_file_ = doc->size();
      if (is_blank(*doc)) return false;
      return true;
    }
    case DocBoundary::kLine:
      while (std::getline(*in_, line_)) {
        bytes_in_file_ += line_.size() + 1;
        if (!is_blank(line_)) {
          *doc = line_;
          return true;
        }
      }
      return false;
    case DocBoundary::kParagraph:
      while (std::getline(*in_, line_)) {
        bytes_in_file_ += line_.size() + 1;
        if (is_blank(line_)) {
          if (!doc->empty()) return true;
          continue;
        }
        if (!doc->empty()) *doc += '\n';
        *doc += line_;
      }
      return !doc->empty();
  }
  return false;
}

// ---- SFT examples -------------------------------------------------------------------------------

SftReader::SftReader(std::vector<std::string> files) : files_(std::move(files)) {
  for (const auto& f : files_) {
    if (!file_exists(f)) user_error("input file not found: '", f, "'");
    if (is_directory(f)) user_error("input '", f, "' is a directory; pass the .jsonl files in it");
    total_bytes_ += file_size(f);
  }
}

SftReader::~SftReader() = default;

bool SftReader::next(SftExample* ex) {
  static const char* kHint = "each --sft .jsonl line must be an object with \"prompt\" and \"answer\" strings";
  while (true) {
    if (!in_) {
      if (file_index_ >= files_.size()) return false;
      in_ = std::make_unique<std::ifstream>(files_[file_index_++], std::ios::binary);
      if (!*in_) user_error("cannot read input file '", files_[file_index_ - 1], "'");
      line_no_ = 0;
      bytes_in_file_ = 0;
    }
    const std::string& file = files_[file_index_ - 1];
    while (std::getline(*in_, line_)) {
      ++line_no_;
      bytes_in_file_ += line_.size() + 1;
      if (is_blank(line_)) continue;
      json j;
      try {
        j = json::parse(line_);
      } catch (const json::exception&) {
        user_error(file, ":", line_no_, ": not valid JSON (", kHint, ")");
      }
      if (!j.is_object()) user_error(file, ":", line_no_, ": not a JSON object (", kHint, ")");
      for (const char* key : {"prompt", "answer"}) {
        auto it = j.find(key);
        if (it == j.end() || !it->is_string())
          user_error(file, ":", line_no_, ": no string field \"", key, "\" (", kHint, ")");
      }
      ex->prompt = j["prompt"].get<std::string>();
      ex->answer = j["answer"].get<std::string>();
      return true;
    }
    in_.reset();
    bytes_done_ += file_size(file);
    bytes_in_file_ = 0;
  }
}

void sft_example_tokens(const Tokenizer& tok, const SftExample& ex, const std::vector<int>& separator_ids,
                        std::vector<int>* ids, std::vector<uint8_t>* mask) {
  *ids = tok.encode(ex.prompt, /*add_bos=*/true, /*add_eos=*/false);
  ids->insert(ids->end(), separator_ids.begin(), separator_ids.end());
  const size_t answer_start = ids->size();
  const std::vector<int> answer = tok.encode_continuation(ex.answer);
  ids->insert(ids->end(), answer.begin(), answer.end());
  ids->push_back(tok.eos_id());
  mask->assign(ids->size(), 0);
  std::fill(mask->begin() + answer_start, mask->end(), uint8_t(1));
}

// ---- prepare ------------------------------------------------------------------------------------

namespace {

// Collects whole documents for one split and writes a shard once it reaches the target size
// (ltrain and llm.c shards), or streams them into one Megatron .bin/.idx pair.
struct ShardBuilder {
  ShardBuilder(DataFormat fmt_, std::string dir_, std::string prefix_, uint32_t vocab, uint64_t target,
               std::vector<std::string>* written_)
      : fmt(fmt_), dir(std::move(dir_)), prefix(std::move(prefix_)), vocab_size(vocab), target_tokens(target),
        written(written_) {
    if (fmt == DataFormat::kMegatron) {
      const std::string p = path_join(dir, prefix);
      written->push_back(p + ".bin");
      written->push_back(p + ".idx");
      mega = std::make_unique<MegatronWriter>(p, vocab <= 65536 ? TokenDtype::kU16 : TokenDtype::kI32);
    }
  }
  DataFormat fmt;
  std::string dir, prefix;
  uint32_t vocab_size;
  uint64_t target_tokens;
  std::vector<std::string>* written;
  std::unique_ptr<MegatronWriter> mega;
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> starts;
  std::vector<uint8_t> mask;  // sft: parallel to tokens
  bool sft = false;
  uint64_t loss_tokens = 0;   // sft: mask bytes set to 1
  json entries = json::array();
  uint64_t total_tokens = 0, total_docs = 0;

  void add(const std::vector<int>& ids, const std::vector<uint8_t>* m = nullptr) {
    if (sft) {
      LTRAIN_CHECK(m && m->size() == ids.size() && fmt == DataFormat::kLtrain);
      mask.insert(mask.end(), m->begin(), m->end());
      for (uint8_t b : *m) loss_tokens += b;
    }
    if (mega) {
      mega->add_document(ids);
      total_tokens += ids.size();
      total_docs += 1;
      return;
    }
    starts.push_back(tokens.size());
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    if (tokens.size() >= target_tokens) flush();
  }
  void flush() {
    if (mega) {
      mega->finish();
      mega.reset();
      entries.push_back({{"file", prefix + ".bin"}, {"tokens", total_tokens}, {"docs", total_docs}});
      return;
    }
    if (tokens.empty()) return;
    char name[64];
    if (fmt == DataFormat::kLlmc)
      std::snprintf(name, sizeof name, "tokens_%s_%06d.bin", prefix.c_str(), static_cast<int>(entries.size()));
    else
      std::snprintf(name, sizeof name, "%s_%05d.bin", prefix.c_str(), static_cast<int>(entries.size()));
    std::string path = path_join(dir, name);
    written->push_back(path);
    if (fmt == DataFormat::kLlmc) write_llmc_shard(path, tokens, vocab_size);
    else write_shard(path, tokens, starts, vocab_size);
    entries.push_back({{"file", name}, {"tokens", tokens.size()}, {"docs", starts.size()}});
    if (sft) {
      const std::string mpath = mask_path_for_shard(path);
      written->push_back(mpath);
      write_mask_file(mpath, mask);
      entries.back()["mask"] = basename_of(mpath);
      mask.clear();
    }
    total_tokens += tokens.size();
    total_docs += starts.size();
    tokens.clear();
    starts.clear();
  }
  json to_json() const { return {{"tokens", total_tokens}, {"docs", total_docs}, {"shards", entries}}; }
};

// Removes what a failed prepare wrote, so a half-written directory never lingers.
struct CleanupOnFailure {
  std::vector<std::string> files;
  std::string created_dir;
  bool done = false;
  ~CleanupOnFailure() {
    if (done) return;
    for (const auto& f : files) std::remove(f.c_str());
    if (!created_dir.empty()) remove_tree(created_dir);
  }
};

// Data files `prepare` writes in any format (and their temporaries).
bool is_shard_name(const std::string& name) {
  static const std::regex re(
      "((train|val)_[0-9]{5}\\.(bin|mask)|(train|val)\\.(bin|idx)|tokens_(train|val)_[0-9]{6}\\.bin)(\\.tmp\\.[0-9]+)?");
  return std::regex_match(name, re);
}

}  // namespace

PrepareSummary prepare_dataset(const PrepareOptions& opt) {
  const double t0 = wall_time_seconds();
  if (opt.inputs.empty()) user_error("ltrain prepare: no input files (pass --input FILE...)");
  if (opt.out_dir.empty()) user_error("ltrain prepare: --out DIR is empty");
  if (!(opt.val_fraction >= 0.0 && opt.val_fraction < 1.0))
    user_error("--val-fraction ", opt.val_fraction, " must be in [0, 1)");
  if (opt.shard_tokens == 0) user_error("--shard-tokens must be positive");
  if (opt.format == DataFormat::kLlmc && opt.shard_tokens > (uint64_t(1) << 30))
    user_error("--shard-tokens ", opt.shard_tokens, " is too large for llm.c shards (their header counts tokens in an "
               "int32; use at most 1073741824)");

  if (opt.sft && opt.format != DataFormat::kLtrain)
    user_error("--sft writes only the ltrain format (loss masks have no place in ", data_format_name(opt.format),
               " files); drop --format");

  Tokenizer tok = Tokenizer::load(opt.tokenizer_path);
  // Exactly one of the readers: documents, or SFT examples.
  std::optional<DocumentReader> doc_reader;
  std::optional<SftReader> sft_reader;
  if (opt.sft) sft_reader.emplace(opt.inputs);
  else doc_reader.emplace(opt.inputs, opt.boundary);
  auto reader_bytes_read = [&] { return opt.sft ? sft_reader->bytes_read() : doc_reader->bytes_read(); };
  auto reader_total_bytes = [&] { return opt.sft ? sft_reader->total_bytes() : doc_reader->total_bytes(); };
  const std::string& out = opt.out_dir;
  const std::string meta_path = path_join(out, "meta.json");
  const std::string sidecar_path = path_join(out, kSidecarName);
  if (file_exists(out) && !is_directory(out)) user_error("--out '", out, "' exists and is not a directory");
  if (file_exists(meta_path) && !opt.force)
    user_error("output directory '", out, "' already holds a prepared dataset (meta.json); pass --force to overwrite it");
  if (file_exists(sidecar_path) && !opt.force)
    user_error("output directory '", out, "' already holds a prepared dataset (", kSidecarName,
               "); pass --force to overwrite it");

  CleanupOnFailure cleanup;
  if (!is_directory(out)) {
    make_dirs(out);
    cleanup.created_dir = out;
  }
  // Old meta.json goes first: from here until the new one is written the directory is visibly
  // incomplete. Leftover shards (from the old dataset or an interrupted run) go too, so no stale
  // file sits next to the new ones.
  std::remove(meta_path.c_str());
  std::remove(sidecar_path.c_str());
  for (const auto& name : list_directory(out))
    if (is_shard_name(name)) std::remove(path_join(out, name).c_str());

  const uint32_t vocab = static_cast<uint32_t>(tok.vocab_size());
  ShardBuilder train{opt.format, out, "train", vocab, opt.shard_tokens, &cleanup.files};
  ShardBuilder val{opt.format, out, "val", vocab, opt.shard_tokens, &cleanup.files};
  train.sft = val.sft = opt.sft;
  const std::vector<int> separator_ids = opt.sft ? tok.encode_continuation(opt.sft_separator) : std::vector<int>{};

  PrepareSummary sum;
  std::optional<Progress> progress;
  if (opt.progress) progress.emplace("prepare", reader_total_bytes(), "B");
  // Chunks bound memory and keep all cores busy; the chunk size does not affect the output.
  const size_t kChunkBytes = size_t(8) << 20, kChunkDocs = 1 << 16;
  std::vector<std::string> docs;
  std::vector<SftExample> examples;  // sft: the chunk's examples (docs holds nothing then)
  std::vector<std::vector<int>> encoded;
  std::vector<std::vector<uint8_t>> masks;
  std::string doc;
  SftExample ex;
  while (true) {
    docs.clear();
    examples.clear();
    size_t chunk_bytes = 0, count = 0;
    while (chunk_bytes < kChunkBytes && count < kChunkDocs) {
      if (opt.sft) {
        if (!sft_reader->next(&ex)) break;
        chunk_bytes += ex.prompt.size() + ex.answer.size();
        examples.push_back(std::move(ex));
      } else {
        if (!doc_reader->next(&doc)) break;
        chunk_bytes += doc.size();
        docs.push_back(std::move(doc));
      }
      ++count;
    }
    if (count == 0) break;
    encoded.assign(count, {});
    masks.assign(opt.sft ? count : 0, {});
    const long n = static_cast<long>(count);
#pragma omp parallel for schedule(dynamic, 16)
    for (long i = 0; i < n; ++i) {
      if (opt.sft) sft_example_tokens(tok, examples[i], separator_ids, &encoded[i], &masks[i]);
      else encoded[i] = tok.encode(docs[i], /*add_bos=*/true, /*add_eos=*/true);
    }
    for (size_t i = 0; i < count; ++i) {
      const uint64_t d = sum.docs++;
      // Spreads val documents evenly through the corpus: every 1/F-th document.
      const double f = opt.val_fraction;
      const bool is_val = std::floor((d + 1) * f) > std::floor(d * f);
      (is_val ? val : train).add(encoded[i], opt.sft ? &masks[i] : nullptr);
      sum.bytes += opt.sft ? examples[i].prompt.size() + examples[i].answer.size() : docs[i].size();
    }
    if (progress && reader_bytes_read() < reader_total_bytes()) progress->update(reader_bytes_read());
  }
  if (sum.docs == 0) {
    std::string list;
    for (const auto& f : opt.inputs) list += (list.empty() ? "'" : ", '") + f + "'";
    user_error(opt.sft ? "empty SFT input: no prompt/answer examples in " : "empty corpus: no documents with text in ",
               list);
  }
  if (progress) progress->finish();
  train.flush();
  val.flush();

  const std::string tok_dst = path_join(out, "tokenizer.model");
  cleanup.files.push_back(tok_dst);
  std::string tok_bytes = read_text_file(opt.tokenizer_path);
  write_file_atomic(tok_dst, tok_bytes.data(), tok_bytes.size());

  json sources = json::array();
  for (const auto& f : opt.inputs) sources.push_back({{"path", f}, {"bytes", file_size(f)}});
  const json description = {
      {"vocab_size", vocab},
      {"bos_id", tok.bos_id()},
      {"eos_id", tok.eos_id()},
      {"tokenizer", "tokenizer.model"},
      {"tokenizer_source", opt.tokenizer_path},
      {"doc_boundary", doc_boundary_name(opt.boundary)},
      {"val_fraction", opt.val_fraction},
      {"shard_tokens", opt.shard_tokens},
      {"docs", sum.docs},
      {"train", train.to_json()},
      {"val", val.to_json()},
      {"sources", sources},
      {"created_by", "ltrain prepare"},
  };
  if (opt.format != DataFormat::kLtrain) {
    // What the foreign format does not store; read by load_dataset_meta (docs/data-format.md).
    json side = description;
    side["format"] = data_format_name(opt.format);
    write_text_file_atomic(sidecar_path, side.dump(2) + "\n");
  } else {
    json meta = description;
    meta["format"] = "ltrain-dataset";
    meta["version"] = kDatasetFormatVersion;
    meta["dtype"] = shard_bytes_per_token(vocab) == 2 ? "uint16" : "uint32";
    meta["bytes_per_token"] = shard_bytes_per_token(vocab);
    if (opt.sft) {
      meta["sft"] = true;
      meta["sft_separator"] = opt.sft_separator;
      meta.erase("doc_boundary");  // not used: one example per line
    }
    write_text_file_atomic(meta_path, meta.dump(2) + "\n");
  }
  cleanup.done = true;

  sum.train_docs = train.total_docs;
  sum.val_docs = val.total_docs;
  sum.train_tokens = train.total_tokens;
  sum.val_tokens = val.total_tokens;
  sum.train_shards = static_cast<int>(train.entries.size());
  sum.val_shards = static_cast<int>(val.entries.size());
  sum.train_loss_tokens = train.loss_tokens;
  sum.val_loss_tokens = val.loss_tokens;
  sum.seconds = wall_time_seconds() - t0;
  return sum;
}

}  // namespace ltrain
