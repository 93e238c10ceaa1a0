// Megatron-LM indexed datasets and llm.c shards, read in place. The files are written by an
// independent Python writer (tests/write_formats.py, from the published format descriptions):
// the readers must return exactly the written documents/tokens, the DataLoader must read the same
// windows from them as from an ltrain dataset of the same documents (order, shuffle, ranks,
// resume), and every malformed file must be a UserError naming the file.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/dataset.h"
#include "ltrain/data/formats.h"
#include "ltrain/data/shard.h"
#include "test_util.h"

using namespace ltrain;
using ltrain::test::TempDir;
using nlohmann::json;

namespace {

using Doc = std::vector<uint32_t>;
using Docs = std::vector<Doc>;

std::string writer_script() { return std::string(LTRAIN_SOURCE_DIR) + "/tests/write_formats.py"; }

// Runs the Python writer on {"files": items}.
void python_write(const TempDir& dir, const std::vector<json>& items) {
  const std::string spec = dir.file("spec.json");
  json files = json::array();
  for (const auto& it : items) files.push_back(it);
  json root = json::object();
  root["files"] = files;
  write_text_file_atomic(spec, root.dump());
  auto r = test::run_shell("/usr/bin/python3 " + writer_script() + " " + spec);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

json megatron_item(const std::string& prefix, const Docs& docs, const std::string& dtype = "uint16") {
  json d = json::array();
  for (const auto& doc : docs) d.push_back(doc);
  return {{"kind", "megatron"}, {"prefix", prefix}, {"dtype", dtype}, {"documents", d}};
}

json llmc_item(const std::string& path, const Docs& docs, const std::string& variant = "gpt-2") {
  std::vector<uint32_t> t;
  for (const auto& doc : docs) t.insert(t.end(), doc.begin(), doc.end());
  return {{"kind", "llmc"}, {"path", path}, {"variant", variant}, {"tokens", t}};
}

json sidecar_item(const std::string& dir, int vocab) {
  return {{"kind", "json"},
          {"path", path_join(dir, kSidecarName)},
          {"content", {{"vocab_size", vocab}, {"bos_id", 1}, {"eos_id", 2}}}};
}

// Documents BOS + random ids + EOS with lengths 2..max_len+1, ids < vocab.
Docs random_docs(int n, uint64_t seed, uint32_t vocab = 1000, int max_len = 40) {
  std::mt19937_64 rng(seed);
  Docs docs(n);
  for (auto& d : docs) {
    d.push_back(1);
    const int len = int(rng() % max_len);
    for (int i = 0; i < len; ++i) d.push_back(3 + uint32_t(rng() % (vocab - 3)));
    d.push_back(2);
  }
  return docs;
}

Docs slice(const Docs& d, size_t a, size_t b) { return Docs(d.begin() + a, d.begin() + b); }

// An ltrain dataset directory: one shard per entry of `train` / `val` (each a list of documents).
void write_ltrain(const std::string& dir, const std::vector<Docs>& train, const std::vector<Docs>& val,
                  uint32_t vocab = 1000) {
  make_dirs(dir);
  json meta = {{"format", "ltrain-dataset"}, {"version", 1},   {"vocab_size", vocab},
               {"bos_id", 1},                {"eos_id", 2},    {"bytes_per_token", shard_bytes_per_token(vocab)}};
  for (int split = 0; split < 2; ++split) {
    const char* name = split == 0 ? "train" : "val";
    json shards = json::array();
    uint64_t total = 0;
    const auto& list = split == 0 ? train : val;
    for (size_t s = 0; s < list.size(); ++s) {
      std::vector<uint32_t> tokens;
      std::vector<uint64_t> starts;
      for (const auto& doc : list[s]) {
        starts.push_back(tokens.size());
        tokens.insert(tokens.end(), doc.begin(), doc.end());
      }
      char file[32];
      std::snprintf(file, sizeof file, "%s_%05zu.bin", name, s);
      write_shard(path_join(dir, file), tokens, starts, vocab);
      shards.push_back({{"file", file}, {"tokens", tokens.size()}});
      total += tokens.size();
    }
    meta[name] = {{"tokens", total}, {"shards", shards}};
  }
  write_text_file_atomic(path_join(dir, "meta.json"), meta.dump());
}

std::vector<int32_t> flat(const Docs& docs) {
  std::vector<int32_t> out;
  for (const auto& d : docs) out.insert(out.end(), d.begin(), d.end());
  return out;
}

template <class F>
std::string user_error_message(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no UserError)";
}

#define EXPECT_USER_ERROR(expr, file, what)                                         \
  do {                                                                              \
    const std::string msg_ = user_error_message([&] { (void)(expr); });            \
    EXPECT_NE(msg_.find(file), std::string::npos) << "should name " << (file) << ": " << msg_; \
    EXPECT_NE(msg_.find(what), std::string::npos) << "should say " << (what) << ": " << msg_;  \
    EXPECT_EQ(msg_.find('\n'), std::string::npos) << msg_;                         \
  } while (0)

// Every batch of `n` next_batch calls, inputs and targets concatenated.
std::vector<int32_t> batches(DataLoader& dl, int n) {
  const size_t sz = size_t(dl.batch_size()) * dl.seq_len();
  std::vector<int32_t> out, x(sz), y(sz);
  for (int i = 0; i < n; ++i) {
    dl.next_batch(x.data(), y.data());
    out.insert(out.end(), x.begin(), x.end());
    out.insert(out.end(), y.begin(), y.end());
  }
  return out;
}

// The loader over `got` reads exactly what it reads over `ref`, for every split, order, layout and
// across a resume.
void expect_same_loader(const DatasetMeta& ref, const DatasetMeta& got) {
  ASSERT_EQ(ref.train_tokens, got.train_tokens);
  ASSERT_EQ(ref.val_tokens, got.val_tokens);
  for (Split split : {Split::kTrain, Split::kVal})
    for (bool shuffle : {false, true})
      for (int world : {1, 2}) {
        SCOPED_TRACE(std::string(split_name(split)) + (shuffle ? " shuffled" : " in order") + " world " +
                     std::to_string(world));
        const int T = split == Split::kTrain ? 16 : 8, B = 4 / world;
        for (int rank = 0; rank < world; ++rank) {
          DataLoader a(ref, split, B, T, shuffle, 42, rank, world);
          DataLoader b(got, split, B, T, shuffle, 42, rank, world);
          ASSERT_EQ(a.num_windows(), b.num_windows());
          ASSERT_GT(a.num_windows(), 4u);
          const int n = int(3 * a.batches_per_epoch() + 1);  // crosses epochs
          ASSERT_EQ(batches(a, n), batches(b, n));
          // Resume: a fresh loader restored to b's state continues as b does.
          EXPECT_EQ(a.state(), b.state());
          DataLoader c(got, split, B, T, shuffle, 42, rank, world);
          c.restore(b.state());
          ASSERT_EQ(batches(b, 5), batches(c, 5));
          EXPECT_EQ(b.state(), c.state());
        }
      }
}

// File surgery for the malformed cases.
std::string read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const std::string& p, const std::string& b) { write_file_atomic(p, b.data(), b.size()); }
template <class T>
void patch(const std::string& p, size_t offset, T value) {
  std::string b = read_bytes(p);
  ASSERT_LE(offset + sizeof(T), b.size());
  std::memcpy(&b[offset], &value, sizeof(T));
  write_bytes(p, b);
}
void truncate_by(const std::string& p, uint64_t n) {
  std::filesystem::resize_file(p, std::filesystem::file_size(p) - n);
}

}  // namespace

// ---- readers ------------------------------------------------------------------------------------

TEST(Megatron, ReadsWhatThePythonWriterWrote) {
  TempDir dir("fmt");
  struct Case {
    std::string dtype;
    TokenDtype want;
    uint32_t vocab;
  };
  for (const Case& c : {Case{"uint16", TokenDtype::kU16, 65536}, Case{"int32", TokenDtype::kI32, 200000},
                        Case{"uint8", TokenDtype::kU8, 256}, Case{"int16", TokenDtype::kI16, 30000},
                        Case{"int64", TokenDtype::kI64, 300000}, Case{"int8", TokenDtype::kI8, 128}}) {
    SCOPED_TRACE(c.dtype);
    Docs docs = random_docs(30, 7, c.vocab);
    docs[4].clear();  // an empty document
    docs[9] = {c.vocab - 1};
    const std::string prefix = dir.file("m_" + c.dtype);
    python_write(dir, {megatron_item(prefix, docs, c.dtype)});
    MegatronDataset ds = MegatronDataset::open(prefix);
    EXPECT_EQ(ds.dtype(), c.want);
    ASSERT_EQ(ds.num_docs(), docs.size());
    EXPECT_EQ(ds.num_sequences(), docs.size());
    EXPECT_EQ(ds.num_tokens(), flat(docs).size());
    for (size_t d = 0; d < docs.size(); ++d) EXPECT_EQ(ds.document(d), flat({docs[d]})) << d;
  }
}

TEST(Megatron, DocumentsOfSeveralSequences) {
  TempDir dir("fmt");
  // Megatron's sentence-split mode: a document is a run of sequences.
  json docs = json::array({json::array({json::array({1, 5, 6}), json::array({7, 8})}),
                           json::array({json::array({9})}),
                           json::array({json::array({10, 11}), json::array({}), json::array({12, 2})})});
  python_write(dir, {{{"kind", "megatron"}, {"prefix", dir.file("s")}, {"dtype", "int32"}, {"documents", docs}}});
  MegatronDataset ds = MegatronDataset::open(dir.file("s"));
  EXPECT_EQ(ds.num_sequences(), 6u);
  ASSERT_EQ(ds.num_docs(), 3u);
  EXPECT_EQ(ds.document(0), (std::vector<int32_t>{1, 5, 6, 7, 8}));
  EXPECT_EQ(ds.document(1), (std::vector<int32_t>{9}));
  EXPECT_EQ(ds.document(2), (std::vector<int32_t>{10, 11, 12, 2}));
}

TEST(Llmc, ReadsBothVariants) {
  TempDir dir("fmt");
  Docs small = random_docs(20, 3, 50257), big = random_docs(20, 4, 128256);
  python_write(dir, {llmc_item(dir.file("a_train_000000.bin"), small, "gpt-2"),
                     llmc_item(dir.file("b_train_000000.bin"), big, "llama-3")});
  MappedTokens a = open_llmc_shard(dir.file("a_train_000000.bin"));
  EXPECT_EQ(a.dtype(), TokenDtype::kU16);
  std::vector<int32_t> got(a.num_tokens());
  a.read(0, got.size(), got.data());
  EXPECT_EQ(got, flat(small));
  MappedTokens b = open_llmc_shard(dir.file("b_train_000000.bin"));
  EXPECT_EQ(b.dtype(), TokenDtype::kU32);
  got.assign(b.num_tokens(), 0);
  b.read(0, got.size(), got.data());
  EXPECT_EQ(got, flat(big));
  EXPECT_GT(b.max_id(), 65535);
}

// ---- dataset selection, split and vocabulary ----------------------------------------------------

TEST(Megatron, SinglePrefixHoldsOutTheLastDocuments) {
  TempDir dir("fmt");
  const Docs docs = random_docs(250, 11);
  python_write(dir, {megatron_item(dir.file("corpus_text_document"), docs)});
  for (const std::string p : {"corpus_text_document", "corpus_text_document.bin", "corpus_text_document.idx"}) {
    DatasetMeta m = load_dataset_meta(dir.file(p));
    EXPECT_EQ(m.format, DataFormat::kMegatron);
    EXPECT_EQ(m.train_docs, 247u);  // ceil(1% of 250) = 3 held out
    EXPECT_EQ(m.val_docs, 3u);
    EXPECT_EQ(m.train_tokens, flat(slice(docs, 0, 247)).size());
    EXPECT_EQ(m.val_tokens, flat(slice(docs, 247, 250)).size());
    // No ltrain-data.json: the vocabulary is the largest id + 1.
    uint32_t max_id = 0;
    for (const auto& d : docs) for (uint32_t t : d) max_id = std::max(max_id, t);
    EXPECT_TRUE(m.vocab_from_scan);
    EXPECT_EQ(m.vocab_size, int(max_id) + 1);
    EXPECT_EQ(m.tokenizer_path, std::filesystem::absolute(dir.file("tokenizer.model")).lexically_normal().string());
  }
  // The same windows as an ltrain dataset with that split.
  write_ltrain(dir.file("ref"), {slice(docs, 0, 247)}, {slice(docs, 247, 250)});
  expect_same_loader(load_dataset_meta(dir.file("ref")), load_dataset_meta(dir.file("corpus_text_document")));

  // A sidecar sets the vocabulary and special ids.
  python_write(dir, {sidecar_item(dir.path(), 1000)});
  DatasetMeta m = load_dataset_meta(dir.file("corpus_text_document"));
  EXPECT_FALSE(m.vocab_from_scan);
  EXPECT_EQ(m.vocab_size, 1000);
  EXPECT_EQ(m.bos_id, 1);
  EXPECT_EQ(m.eos_id, 2);

  // A one-document dataset cannot hold anything out.
  python_write(dir, {megatron_item(dir.file("one"), slice(docs, 0, 1))});
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("one")), dir.file("one"), "at least 2");
}

TEST(Megatron, TrainAndValPrefixesMatchAnLtrainDataset) {
  TempDir dir("fmt");
  const Docs docs = random_docs(120, 5);
  Docs train, val;
  for (size_t i = 0; i < docs.size(); ++i) (i % 10 == 9 ? val : train).push_back(docs[i]);
  python_write(dir, {megatron_item(dir.file("m/train"), train), megatron_item(dir.file("m/val"), val, "int32"),
                     sidecar_item(dir.file("m"), 1000)});
  write_ltrain(dir.file("ref"), {train}, {val});
  DatasetMeta m = load_dataset_meta(dir.file("m/train"));
  EXPECT_EQ(m.train_docs, train.size());
  EXPECT_EQ(m.val_docs, val.size());
  EXPECT_EQ(m.vocab_size, 1000);
  EXPECT_EQ(m.val_shards, std::vector<std::string>{dir.file("m/val.bin")});
  expect_same_loader(load_dataset_meta(dir.file("ref")), m);
  // A directory holding Megatron files is pointed at its prefix.
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("m")), dir.file("m/train"), "prefix");
}

TEST(Llmc, ShardsMatchAnLtrainDataset) {
  TempDir dir("fmt");
  const Docs docs = random_docs(150, 9);
  // Train in two shards (windows never cross shards, in ltrain or llm.c), val in one.
  const Docs t1 = slice(docs, 0, 70), t2 = slice(docs, 70, 135), v = slice(docs, 135, 150);
  python_write(dir, {llmc_item(dir.file("l/fw_train_000002.bin"), t2), llmc_item(dir.file("l/fw_val_000000.bin"), v),
                     llmc_item(dir.file("l/fw_train_000001.bin"), t1), sidecar_item(dir.file("l"), 1000)});
  write_ltrain(dir.file("ref"), {t1, t2}, {v});
  const DatasetMeta ref = load_dataset_meta(dir.file("ref"));
  for (const std::string p : {"l", "l/fw_*.bin"}) {
    DatasetMeta m = load_dataset_meta(dir.file(p));
    EXPECT_EQ(m.format, DataFormat::kLlmc);
    EXPECT_EQ(m.train_shards,
              (std::vector<std::string>{dir.file("l/fw_train_000001.bin"), dir.file("l/fw_train_000002.bin")}));
    EXPECT_EQ(m.vocab_size, 1000);
    expect_same_loader(ref, m);
  }
  // The uint32 variant reads the same.
  python_write(dir, {llmc_item(dir.file("u/x_train_000001.bin"), t1, "llama-3"),
                     llmc_item(dir.file("u/x_train_000002.bin"), t2, "llama-3"),
                     llmc_item(dir.file("u/x_val_000000.bin"), v, "llama-3")});
  DatasetMeta u = load_dataset_meta(dir.file("u"));
  EXPECT_TRUE(u.vocab_from_scan);
  expect_same_loader(ref, u);

  // Selection errors.
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("l/fw_train_*.bin")), dir.file("l/fw_train_*.bin"), "no llm.c validation shard");
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("l/nothing_*.bin")), "nothing_*.bin", "matches no files");
  python_write(dir, {llmc_item(dir.file("l/stray.bin"), t1)});
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("l")), dir.file("l/stray.bin"), "neither a train nor a val shard");
  make_dirs(dir.file("empty"));
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("empty")), dir.file("empty"), "not a prepared data directory");
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("missing")), dir.file("missing"), "not a prepared data directory");
  // An ltrain directory that lost its meta.json is not mistaken for llm.c shards.
  write_ltrain(dir.file("lt"), {t1}, {v});
  std::remove(dir.file("lt/meta.json").c_str());
  EXPECT_USER_ERROR(load_dataset_meta(dir.file("lt")), dir.file("lt"), "not a prepared data directory (no meta.json)");
}

TEST(Formats, VerifyChecksIdsAgainstTheVocabulary) {
  TempDir dir("fmt");
  const Docs docs = random_docs(100, 2, 1000);
  python_write(dir, {megatron_item(dir.file("train"), docs), megatron_item(dir.file("val"), docs),
                     sidecar_item(dir.path(), 500)});
  DatasetMeta m = load_dataset_meta(dir.file("train"));
  EXPECT_USER_ERROR(DataLoader(m, Split::kTrain, 2, 8, false, 0), dir.file("train.bin"), "not in [0, vocab size 500)");
  EXPECT_NO_THROW(DataLoader(m, Split::kTrain, 2, 8, false, 0, 0, 1, /*verify=*/false));
  // A file that changed after the metadata was read is refused.
  python_write(dir, {megatron_item(dir.file("train"), slice(docs, 0, 50))});
  EXPECT_USER_ERROR(DataLoader(m, Split::kTrain, 2, 8, false, 0, 0, 1, false), dir.file("train.bin"), "changed");
}

// ---- malformed files ----------------------------------------------------------------------------

class MalformedMegatron : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = random_docs(40, 1);
    python_write(dir_, {megatron_item(prefix_, docs_)});
    ASSERT_NO_THROW(load_dataset_meta(prefix_));
  }
  // The index layout: header 34 bytes, S int32 lengths, S int64 pointers, S+1 int64 doc indices.
  size_t S() const { return docs_.size(); }
  size_t pointer_at(size_t i) const { return 34 + 4 * S() + 8 * i; }
  size_t doc_index_at(size_t i) const { return 34 + 12 * S() + 8 * i; }
  void expect_error(const std::string& file, const std::string& what) {
    EXPECT_USER_ERROR(load_dataset_meta(prefix_), file, what);
  }
  TempDir dir_{"fmt"};
  std::string prefix_ = dir_.file("data"), idx_ = prefix_ + ".idx", bin_ = prefix_ + ".bin";
  Docs docs_;
};

TEST_F(MalformedMegatron, BadMagic) {
  patch<char>(idx_, 0, 'X');
  expect_error(idx_, "bad magic");
}
TEST_F(MalformedMegatron, WrongVersion) {
  patch<uint64_t>(idx_, 9, 2);
  expect_error(idx_, "version 2");
}
TEST_F(MalformedMegatron, FloatDtype) {
  patch<uint8_t>(idx_, 17, 6);
  expect_error(idx_, "dtype code 6 (float64)");
  patch<uint8_t>(idx_, 17, 7);
  expect_error(idx_, "dtype code 7 (float32)");
}
TEST_F(MalformedMegatron, UnknownDtype) {
  patch<uint8_t>(idx_, 17, 9);
  expect_error(idx_, "unknown dtype code 9");
}
TEST_F(MalformedMegatron, WrongDtypeForTheData) {
  patch<uint8_t>(idx_, 17, 4);  // int32 claimed for uint16 data: the pointers no longer follow
  expect_error(idx_, "lengths and pointers disagree");
}
TEST_F(MalformedMegatron, TruncatedBin) {
  truncate_by(bin_, 2);
  expect_error(bin_, "points past the end");
}
TEST_F(MalformedMegatron, BinLongerThanTheIndex) {
  std::string b = read_bytes(bin_);
  write_bytes(bin_, b + std::string(4, '\0'));
  expect_error(bin_, "do not belong together");
}
TEST_F(MalformedMegatron, TruncatedIndex) {
  truncate_by(idx_, 8);
  expect_error(idx_, "truncated or damaged");
  truncate_by(idx_, std::filesystem::file_size(idx_) - 20);
  expect_error(idx_, "shorter than the 34-byte header");
}
TEST_F(MalformedMegatron, PointerPastTheEnd) {
  patch<int64_t>(idx_, pointer_at(S() - 1), int64_t(1) << 40);
  expect_error(idx_, "points past the end");
}
TEST_F(MalformedMegatron, LengthsDisagreeWithPointers) {
  patch<int64_t>(idx_, pointer_at(5), int64_t(2 * flat(slice(docs_, 0, 5)).size() + 2));
  expect_error(idx_, "lengths and pointers disagree");
}
TEST_F(MalformedMegatron, DocumentIndexOutOfRange) {
  patch<int64_t>(idx_, doc_index_at(S()), int64_t(S() + 5));
  expect_error(idx_, "document index");
  patch<int64_t>(idx_, doc_index_at(S()), int64_t(S()));
  patch<int64_t>(idx_, doc_index_at(3), int64_t(1));  // decreasing
  expect_error(idx_, "document index 3 is 1");
}
TEST_F(MalformedMegatron, MissingFile) {
  std::remove(bin_.c_str());
  EXPECT_USER_ERROR(load_dataset_meta(idx_), bin_, "Megatron data file not found");
  EXPECT_USER_ERROR(load_dataset_meta(prefix_), bin_, "Megatron data file not found");
}

class MalformedLlmc : public ::testing::Test {
 protected:
  void SetUp() override {
    python_write(dir_, {llmc_item(train_, random_docs(30, 1)), llmc_item(val_, random_docs(5, 2))});
    ASSERT_NO_THROW(load_dataset_meta(dir_.path()));
  }
  void expect_error(const std::string& file, const std::string& what) {
    EXPECT_USER_ERROR(load_dataset_meta(dir_.path()), file, what);
  }
  TempDir dir_{"fmt"};
  std::string train_ = dir_.file("d_train_000001.bin"), val_ = dir_.file("d_val_000000.bin");
};

TEST_F(MalformedLlmc, BadMagic) {
  patch<int32_t>(train_, 0, 20240521);
  expect_error(train_, "bad magic 20240521");
}
TEST_F(MalformedLlmc, WrongVersion) {
  patch<int32_t>(val_, 4, 2);
  expect_error(val_, "version 2");
  patch<int32_t>(val_, 0, kLlmcMagicU32);  // the uint32 magic with the uint16 version
  patch<int32_t>(val_, 4, 1);
  expect_error(val_, "version 1 with magic 20240801");
}
TEST_F(MalformedLlmc, Truncated) {
  truncate_by(train_, 1);
  expect_error(train_, "truncated or damaged");
  truncate_by(train_, std::filesystem::file_size(train_) - 100);
  expect_error(train_, "shorter than the 1024-byte header");
}
TEST_F(MalformedLlmc, CountPastTheEnd) {
  patch<int32_t>(train_, 8, 1 << 30);
  expect_error(train_, "truncated or damaged");
  patch<int32_t>(train_, 8, -5);
  expect_error(train_, "negative token count");
}
TEST_F(MalformedLlmc, VariantMismatch) {
  patch<int32_t>(train_, 0, kLlmcMagicU32);  // claims uint32 tokens: twice the bytes it has
  patch<int32_t>(train_, 4, kLlmcVersionU32);
  expect_error(train_, "truncated or damaged");
}
