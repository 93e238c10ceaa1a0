// Tokenizer training/encoding and `prepare` end to end. One tokenizer (vocab 1024) is trained per
// test binary on tinyshakespeare plus a small file of numbers (so digit pieces exist) and a .jsonl
// file (so the jsonl path is used), in SetUpTestSuite; training takes well under a second.
#include <gtest/gtest.h>
#include <omp.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/dataset.h"
#include "ltrain/data/prepare.h"
#include "ltrain/data/shard.h"
#include "ltrain/data/tokenizer.h"
#include "test_util.h"

using namespace ltrain;
using ltrain::test::TempDir;

namespace {

template <class F>
std::string user_error_message(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no UserError)";
}

// Paragraphs as `--doc-boundary paragraph` defines them, written independently of prepare.cpp.
std::vector<std::string> paragraphs(const std::string& text) {
  std::vector<std::string> out;
  std::string cur, line;
  std::istringstream in(text);
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r\n\v\f") == std::string::npos) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += (cur.empty() ? "" : "\n") + line;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

}  // namespace

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("tokenizer");
    std::string numbers;
    for (int i = 0; i < 3000; ++i) numbers += "In the year " + std::to_string(1000 + i * 7) + " there were " + std::to_string(i * 13) + " ships.\n";
    write_text_file_atomic(dir_->file("numbers.txt"), numbers);
    write_text_file_atomic(dir_->file("extra.jsonl"),
                           "{\"text\": \"A jsonl document.\\nWith two lines.\"}\n\n{\"text\": \"   \", \"id\": 3}\n");
    double t0 = wall_time_seconds();
    train_tokenizer({test::test_data("tinyshakespeare.txt"), dir_->file("numbers.txt"), dir_->file("extra.jsonl")},
                    1024, dir_->file("tok"));
    std::printf("tokenizer training took %.2fs\n", wall_time_seconds() - t0);
    tok_ = new Tokenizer(Tokenizer::load(dir_->file("tok.model")));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete dir_;
  }
  static TempDir* dir_;
  static Tokenizer* tok_;
};
TempDir* TokenizerTest::dir_ = nullptr;
Tokenizer* TokenizerTest::tok_ = nullptr;

TEST_F(TokenizerTest, SpecialIds) {
  EXPECT_EQ(tok_->vocab_size(), 1024);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_TRUE(file_exists(dir_->file("tok.vocab")));
  std::vector<int> ids = tok_->encode("Hello", true, true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(tok_->decode(ids), "Hello");
  EXPECT_EQ(tok_->encode("Hello", false, false), std::vector<int>(ids.begin() + 1, ids.end() - 1));
}

TEST_F(TokenizerTest, RoundTripWholeCorpus) {
  std::string text = read_text_file(test::test_data("tinyshakespeare.txt"));
  std::vector<int> ids = tok_->encode(text, false, false);
  EXPECT_LT(ids.size(), text.size() / 2) << "BPE barely compresses: the tokenizer learned little";
  EXPECT_EQ(tok_->decode(ids), text);
}

TEST_F(TokenizerTest, RoundTripAwkwardText) {
  for (const std::string& s : std::vector<std::string>{
           "", " ", "\n", "x", "  two leading spaces", "trailing spaces   ", "a  b   c    d",
           "lines\n\n\nand\r\nCRLF\n", "\ttabs\tand    indentation\n    four", "digits 0123456789 and 3.14159",
           "emoji 😀🎉 and ünïcødé, 中文, العربية", "\xF0\x9F\x98\x80", "ends with newline\n"}) {
    EXPECT_EQ(tok_->decode(tok_->encode(s, false, false)), s) << "text: '" << s << "'";
    EXPECT_EQ(tok_->decode(tok_->encode(s, true, true)), s) << "text with BOS/EOS: '" << s << "'";
  }
}

TEST_F(TokenizerTest, DigitsAreSplit) {
  // The corpus is full of numbers, so without split_digits pieces like "19" would be learned.
  std::vector<int> ids = tok_->encode("In the year 1987 there were 20461 ships.", false, false);
  int digit_pieces = 0;
  for (int id : ids) {
    std::string piece = tok_->id_to_piece(id);
    int digits = 0;
    for (char c : piece) digits += (c >= '0' && c <= '9');
    EXPECT_LE(digits, 1) << "piece '" << piece << "' holds several digits";
    digit_pieces += digits;
  }
  EXPECT_EQ(digit_pieces, 9) << "digits were byte-encoded instead of learned as pieces";
}

TEST_F(TokenizerTest, EncodeIsThreadSafe) {
  std::vector<std::string> paras = paragraphs(read_text_file(test::test_data("tinyshakespeare.txt")));
  paras.resize(2000);
  std::vector<std::vector<int>> serial, parallel(paras.size());
  for (const auto& p : paras) serial.push_back(tok_->encode(p, true, true));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < paras.size(); i += 4) parallel[i] = tok_->encode(paras[i], true, true);
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(parallel, serial);
}

TEST_F(TokenizerTest, LoadErrors) {
  std::string missing = dir_->file("missing.model");
  std::string msg = user_error_message([&] { Tokenizer::load(missing); });
  EXPECT_NE(msg.find("tokenizer not found: '" + missing + "'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ltrain tokenizer train"), std::string::npos) << msg;
  std::string not_model = test::test_data("tinyshakespeare.txt");
  msg = user_error_message([&] { Tokenizer::load(not_model); });
  EXPECT_NE(msg.find("is not a SentencePiece tokenizer model"), std::string::npos) << msg;
  EXPECT_NE(msg.find(not_model), std::string::npos) << msg;
  EXPECT_NE(user_error_message([&] { tok_->decode({5, 1024}); }).find("1024"), std::string::npos);
}

TEST_F(TokenizerTest, TrainErrors) {
  TempDir d("tokerr");
  write_text_file_atomic(d.file("empty.txt"), "\n  \n\t\n");
  std::string msg = user_error_message([&] { train_tokenizer({d.file("empty.txt")}, 500, d.file("t")); });
  EXPECT_NE(msg.find("empty corpus"), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty.txt"), std::string::npos) << msg;

  msg = user_error_message([&] { train_tokenizer({d.file("nope.txt")}, 500, d.file("t")); });
  EXPECT_NE(msg.find("input file not found: '" + d.file("nope.txt") + "'"), std::string::npos) << msg;

  std::string corpus = test::test_data("tinyshakespeare.txt");
  msg = user_error_message([&] { train_tokenizer({corpus}, 100, d.file("t")); });
  EXPECT_NE(msg.find("minimum is 260"), std::string::npos) << msg;
  // 259 special and byte pieces + ~60 characters: 300 is above the fixed minimum but too small.
  msg = user_error_message([&] { train_tokenizer({corpus}, 300, d.file("t")); });
  EXPECT_NE(msg.find("too small for this corpus"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at least 3"), std::string::npos) << msg;

  write_text_file_atomic(d.file("bad.jsonl"), "{\"text\": \"ok\"}\n{\"txt\": \"no text field\"}\n");
  msg = user_error_message([&] { train_tokenizer({d.file("bad.jsonl")}, 500, d.file("t")); });
  EXPECT_NE(msg.find(d.file("bad.jsonl") + ":2:"), std::string::npos) << msg;
  EXPECT_FALSE(file_exists(d.file("t.model")));
}

// ---- prepare --------------------------------------------------------------------------------------

class PrepareTest : public TokenizerTest {
 protected:
  PrepareOptions options(const std::string& out) {
    PrepareOptions o;
    o.tokenizer_path = dir_->file("tok.model");
    o.inputs = {test::test_data("tinyshakespeare.txt")};
    o.out_dir = out;
    o.progress = false;
    return o;
  }
  // Decodes every document of a split, checking its BOS/EOS framing.
  std::vector<std::string> split_docs(const std::vector<std::string>& shards) {
    std::vector<std::string> docs;
    for (const auto& path : shards) {
      TokenShard s = TokenShard::open(path);
      for (uint64_t d = 0; d < s.num_docs(); ++d) {
        uint64_t begin = s.doc_start(d), end = d + 1 < s.num_docs() ? s.doc_start(d + 1) : s.num_tokens();
        std::vector<int32_t> ids(end - begin);
        s.read(begin, ids.size(), ids.data());
        EXPECT_EQ(ids.front(), 1);
        EXPECT_EQ(ids.back(), 2);
        docs.push_back(tok_->decode(std::vector<int>(ids.begin() + 1, ids.end() - 1)));
      }
    }
    return docs;
  }
};

TEST_F(PrepareTest, TinyShakespeareParagraphs) {
  TempDir out("prep");
  PrepareOptions o = options(out.file("ds"));
  o.val_fraction = 0.1;
  o.shard_tokens = 50000;
  double t0 = wall_time_seconds();
  PrepareSummary sum = prepare_dataset(o);
  std::printf("prepare took %.2fs (%d threads)\n", wall_time_seconds() - t0, omp_get_max_threads());

  std::vector<std::string> paras = paragraphs(read_text_file(test::test_data("tinyshakespeare.txt")));
  ASSERT_EQ(sum.docs, paras.size());
  std::vector<std::string> want_train, want_val;
  for (size_t i = 0; i < paras.size(); ++i) ((i + 1) / 10 > i / 10 ? want_val : want_train).push_back(paras[i]);

  DatasetMeta meta = load_dataset_meta(o.out_dir);
  EXPECT_EQ(meta.vocab_size, 1024);
  EXPECT_EQ(meta.bos_id, 1);
  EXPECT_EQ(meta.eos_id, 2);
  EXPECT_EQ(meta.bytes_per_token, 2);
  EXPECT_GT(meta.train_shards.size(), 1u);
  EXPECT_EQ(int(meta.train_shards.size()), sum.train_shards);
  EXPECT_EQ(meta.train_tokens, sum.train_tokens);
  EXPECT_EQ(meta.val_tokens, sum.val_tokens);
  EXPECT_EQ(meta.tokenizer_path[0], '/');
  EXPECT_EQ(read_text_file(meta.tokenizer_path), read_text_file(o.tokenizer_path));
  EXPECT_EQ(split_docs(meta.train_shards), want_train);
  EXPECT_EQ(split_docs(meta.val_shards), want_val);

  DataLoader dl(meta, Split::kTrain, 4, 64, true, 1);
  std::vector<int32_t> x(4 * 64), y(4 * 64);
  dl.next_batch(x.data(), y.data());
  for (int i = 0; i < 4 * 64; ++i) EXPECT_TRUE(x[i] >= 0 && x[i] < 1024);
}

TEST_F(PrepareTest, DeterministicAcrossThreadCounts) {
  TempDir out("prep");
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  prepare_dataset(options(out.file("one")));
  omp_set_num_threads(std::max(2, threads));
  prepare_dataset(options(out.file("many")));
  omp_set_num_threads(threads);
  std::vector<std::string> files = list_directory(out.file("one"));
  EXPECT_EQ(files, list_directory(out.file("many")));
  for (const auto& f : files)
    EXPECT_EQ(read_text_file(out.file("one/" + f)), read_text_file(out.file("many/" + f))) << f;
}

TEST_F(PrepareTest, BoundariesAndJsonl) {
  TempDir out("prep");
  write_text_file_atomic(out.file("a.txt"), "first line\nsecond line\n\n\n  \nthird\n");
  write_text_file_atomic(out.file("b.jsonl"), "{\"text\": \"doc one\\n\\nstill one\"}\n\n{\"text\": \"\"}\n{\"text\": \"doc two\", \"meta\": 1}\n");
  PrepareOptions o = options(out.file("ds"));
  o.inputs = {out.file("a.txt"), out.file("b.jsonl")};
  o.val_fraction = 0;
  std::vector<std::pair<DocBoundary, std::vector<std::string>>> cases = {
      {DocBoundary::kParagraph, {"first line\nsecond line", "third", "doc one\n\nstill one", "doc two"}},
      {DocBoundary::kLine, {"first line", "second line", "third", "doc one\n\nstill one", "doc two"}},
      {DocBoundary::kFile, {"first line\nsecond line\n\n\n  \nthird\n", "doc one\n\nstill one", "doc two"}},
  };
  for (const auto& [boundary, want] : cases) {
    o.boundary = boundary;
    o.force = true;
    PrepareSummary sum = prepare_dataset(o);
    EXPECT_EQ(sum.docs, want.size()) << doc_boundary_name(boundary);
    DatasetMeta meta = load_dataset_meta(o.out_dir);
    EXPECT_TRUE(meta.val_shards.empty());
    EXPECT_EQ(split_docs(meta.train_shards), want) << doc_boundary_name(boundary);
  }
}

TEST_F(PrepareTest, Errors) {
  TempDir out("prep");
  PrepareOptions o = options(out.file("ds"));
  prepare_dataset(o);
  std::string msg = user_error_message([&] { prepare_dataset(o); });
  EXPECT_NE(msg.find("already holds a prepared dataset"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--force"), std::string::npos) << msg;
  o.force = true;
  o.shard_tokens = 100000;  // more shards than before: nothing stale may remain
  EXPECT_NO_THROW(prepare_dataset(o));
  o.shard_tokens = 1000000;
  EXPECT_NO_THROW(prepare_dataset(o));
  EXPECT_EQ(list_directory(o.out_dir), (std::vector<std::string>{"meta.json", "tokenizer.model", "train_00000.bin", "val_00000.bin"}));

  PrepareOptions e = options(out.file("empty_ds"));
  write_text_file_atomic(out.file("empty.txt"), "\n\n   \n");
  e.inputs = {out.file("empty.txt")};
  msg = user_error_message([&] { prepare_dataset(e); });
  EXPECT_NE(msg.find("empty corpus"), std::string::npos) << msg;
  EXPECT_FALSE(file_exists(e.out_dir)) << "a failed prepare left its output directory behind";

  e.inputs = {out.file("missing.txt")};
  msg = user_error_message([&] { prepare_dataset(e); });
  EXPECT_NE(msg.find("input file not found: '" + out.file("missing.txt") + "'"), std::string::npos) << msg;

  write_text_file_atomic(out.file("bad.jsonl"), "{\"text\": \"fine\"}\nthis is not json\n");
  e.inputs = {out.file("bad.jsonl")};
  msg = user_error_message([&] { prepare_dataset(e); });
  EXPECT_NE(msg.find(out.file("bad.jsonl") + ":2: not valid JSON"), std::string::npos) << msg;
  EXPECT_FALSE(file_exists(e.out_dir));

  e.inputs = {test::test_data("tinyshakespeare.txt")};
  e.tokenizer_path = out.file("none.model");
  msg = user_error_message([&] { prepare_dataset(e); });
  EXPECT_NE(msg.find("tokenizer not found"), std::string::npos) << msg;

  e.tokenizer_path = dir_->file("tok.model");
  e.val_fraction = 1.5;
  EXPECT_NE(user_error_message([&] { prepare_dataset(e); }).find("--val-fraction"), std::string::npos);
  EXPECT_NE(user_error_message([] { parse_doc_boundary("page"); }).find("--doc-boundary 'page'"), std::string::npos);
}
