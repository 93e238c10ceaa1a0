// Supervised fine-tuning data (issue 8): `prepare --sft` records and their loss masks, the loader's
// masked targets, and every malformed-mask-file case. The expected tokens and masks are derived
// here from the tokenizer and the raw files (the mask file is read byte by byte at the documented
// offsets), not through the loader's own mask reader.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/dataset.h"
#include "ltrain/data/prepare.h"
#include "ltrain/data/shard.h"
#include "ltrain/data/tokenizer.h"
#include "test_util.h"

using namespace ltrain;
using ltrain::test::TempDir;
using nlohmann::json;

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

std::vector<SftExample> read_examples(const std::string& path) {
  std::vector<SftExample> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line);
    out.push_back({j["prompt"].get<std::string>(), j["answer"].get<std::string>()});
  }
  return out;
}

std::string read_bytes(const std::string& path) { return read_text_file(path); }
void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(b.data(), b.size());
}

// The mask bytes of a mask file, read at the documented layout (32-byte header, then 1 byte each).
std::vector<uint8_t> raw_mask(const std::string& path) {
  std::string b = read_bytes(path);
  EXPECT_GE(b.size(), 32u);
  EXPECT_EQ(b.substr(0, 8), "LTRNMASK");
  uint64_t n;
  std::memcpy(&n, b.data() + 16, 8);
  EXPECT_EQ(b.size(), 32 + n);
  return std::vector<uint8_t>(b.begin() + 32, b.end());
}

std::vector<int> shard_tokens(const TokenShard& s) {
  std::vector<int32_t> t(s.num_tokens());
  s.read(0, t.size(), t.data());
  return std::vector<int>(t.begin(), t.end());
}

bool single_line(const std::string& s) { return s.find('\n') == std::string::npos; }

}  // namespace

class SftDataTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("sft_data");
    train_tokenizer({test::test_data("tinyshakespeare.txt")}, 1024, dir_->file("tok"));
    tok_ = new Tokenizer(Tokenizer::load(dir_->file("tok.model")));
    examples_ = new std::vector<SftExample>(read_examples(test::test_data("sft_example.jsonl")));
  }
  static void TearDownTestSuite() {
    delete examples_;
    delete tok_;
    delete dir_;
  }
  // Prepares the example file into DIR/name (all examples in train unless val_fraction > 0).
  static std::string prepare(const std::string& name, double val_fraction = 0.0, uint64_t shard_tokens = 1 << 20,
                             const std::string& sep = "\n\n") {
    PrepareOptions opt;
    opt.tokenizer_path = dir_->file("tok.model");
    opt.inputs = {test::test_data("sft_example.jsonl")};
    opt.out_dir = dir_->file(name);
    opt.val_fraction = val_fraction;
    opt.shard_tokens = shard_tokens;
    opt.progress = false;
    opt.sft = true;
    opt.sft_separator = sep;
    opt.force = true;
    prepare_dataset(opt);
    return opt.out_dir;
  }
  static TempDir* dir_;
  static Tokenizer* tok_;
  static std::vector<SftExample>* examples_;
};
TempDir* SftDataTest::dir_ = nullptr;
Tokenizer* SftDataTest::tok_ = nullptr;
std::vector<SftExample>* SftDataTest::examples_ = nullptr;

TEST_F(SftDataTest, ContinuationEncodingDecodesExactly) {
  // (a is never empty: decode drops one leading space of the whole text, so an empty a followed by
  // a b that starts with a space decodes one space short; the ids are still those of b.)
  for (const std::string& a : {std::string("To be"), std::string("x"), std::string(" ")})
    for (const std::string& b : {std::string("\n\n"), std::string(" or not"), std::string("  two spaces"),
                                 std::string("word"), std::string("é\tz"), std::string("")}) {
      std::vector<int> ids = tok_->encode(a, true, false);
      std::vector<int> c = tok_->encode_continuation(b);
      ids.insert(ids.end(), c.begin(), c.end());
      EXPECT_EQ(tok_->decode(ids), a + b) << "a='" << a << "' b='" << b << "'";
    }
  EXPECT_TRUE(tok_->encode_continuation("").empty());
}

// Each example is one document: BOS prompt SEP answer EOS, decoding to prompt + SEP + answer, with
// the mask 0 on BOS/prompt/SEP and 1 on exactly the answer tokens and the EOS.
void check_records(const std::string& dir, const std::vector<SftExample>& examples, const Tokenizer& tok,
                   const std::string& sep) {
  json meta = json::parse(read_text_file(path_join(dir, "meta.json")));
  EXPECT_EQ(meta["sft"], true);
  EXPECT_EQ(meta["sft_separator"], sep);
  size_t e = 0;
  for (const json& entry : meta["train"]["shards"]) {
    const std::string shard_path = path_join(dir, entry["file"].get<std::string>());
    ASSERT_EQ(entry["mask"], basename_of(mask_path_for_shard(shard_path)));
    TokenShard shard = TokenShard::open(shard_path);
    std::vector<int> toks = shard_tokens(shard);
    std::vector<uint8_t> mask = raw_mask(path_join(dir, entry["mask"].get<std::string>()));
    ASSERT_EQ(mask.size(), toks.size());
    for (uint64_t d = 0; d < shard.num_docs(); ++d, ++e) {
      ASSERT_LT(e, examples.size());
      const SftExample& ex = examples[e];
      const uint64_t begin = shard.doc_start(d), end = d + 1 < shard.num_docs() ? shard.doc_start(d + 1) : toks.size();
      std::vector<int> ids(toks.begin() + begin, toks.begin() + end);
      std::vector<uint8_t> m(mask.begin() + begin, mask.begin() + end);
      ASSERT_GE(ids.size(), 2u);
      EXPECT_EQ(ids.front(), tok.bos_id());
      EXPECT_EQ(ids.back(), tok.eos_id());
      EXPECT_EQ(tok.decode(ids), ex.prompt + sep + ex.answer) << "example " << e;
      // The mask is zeros then ones; the ones start exactly where prompt + SEP ends.
      size_t k = 0;
      while (k < m.size() && m[k] == 0) ++k;
      for (size_t i = k; i < m.size(); ++i) EXPECT_EQ(m[i], 1) << "example " << e << " token " << i;
      ASSERT_LT(k, m.size()) << "example " << e << ": EOS not in the loss";
      EXPECT_EQ(tok.decode(std::vector<int>(ids.begin(), ids.begin() + k)), ex.prompt + sep) << "example " << e;
      // Answer tokens = mask ones minus the EOS: none exactly when the answer is empty.
      EXPECT_EQ(m.size() - k - 1 == 0, ex.answer.empty()) << "example " << e;
      std::vector<int> answer_ids(ids.begin() + k, ids.end() - 1);
      EXPECT_EQ(answer_ids, tok.encode_continuation(ex.answer)) << "example " << e;
    }
  }
  EXPECT_EQ(e, examples.size());
}

TEST_F(SftDataTest, RecordsDecodeAndMaskAnswersOnly) {
  ASSERT_EQ(examples_->size(), 30u);
  check_records(prepare("one_shard"), *examples_, *tok_, "\n\n");
}

TEST_F(SftDataTest, CustomSeparatorAndManyShards) {
  const std::string sep = "\n### Response:\n";
  const std::string dir = prepare("many_shards", 0.0, 60, sep);
  json meta = json::parse(read_text_file(path_join(dir, "meta.json")));
  EXPECT_GT(meta["train"]["shards"].size(), 5u);
  check_records(dir, *examples_, *tok_, sep);
}

TEST_F(SftDataTest, ValSplitHasMasksToo) {
  const std::string dir = prepare("with_val", 0.2);
  DatasetMeta meta = load_dataset_meta(dir);
  EXPECT_TRUE(meta.sft);
  ASSERT_EQ(meta.val_masks.size(), meta.val_shards.size());
  ASSERT_EQ(meta.train_masks.size(), meta.train_shards.size());
  ASSERT_FALSE(meta.val_masks.empty());
  EXPECT_EQ(raw_mask(meta.val_masks[0]).size(), TokenShard::open(meta.val_shards[0]).num_tokens());
}

// With shuffle off, window w of the (single) shard covers tokens [w*T, w*T+T]: targets are the
// stream shifted by one, and -1 exactly where the mask byte of the target token is 0.
TEST_F(SftDataTest, LoaderMasksTargetsOutsideAnswers) {
  const std::string dir = prepare("loader");
  DatasetMeta meta = load_dataset_meta(dir);
  ASSERT_EQ(meta.train_shards.size(), 1u);
  std::vector<int> toks = shard_tokens(TokenShard::open(meta.train_shards[0]));
  std::vector<uint8_t> mask = raw_mask(meta.train_masks[0]);
  const int B = 2, T = 16;
  DataLoader loader(meta, Split::kTrain, B, T, /*shuffle=*/false, /*seed=*/1);
  EXPECT_TRUE(loader.has_masks());
  std::vector<int32_t> in(B * T), tg(B * T);
  uint64_t masked = 0, kept = 0;
  for (uint64_t batch = 0; batch < loader.batches_per_epoch(); ++batch) {
    loader.next_batch(in.data(), tg.data());
    for (int b = 0; b < B; ++b) {
      const uint64_t start = (batch * B + b) * T;
      for (int i = 0; i < T; ++i) {
        ASSERT_EQ(in[b * T + i], toks[start + i]);
        const int32_t want = mask[start + i + 1] ? toks[start + i + 1] : -1;
        ASSERT_EQ(tg[b * T + i], want) << "batch " << batch << " row " << b << " pos " << i;
        (want < 0 ? masked : kept) += 1;
      }
    }
  }
  EXPECT_GT(masked, 0u);
  EXPECT_GT(kept, 0u);
  // The state round-trips as before: restoring reproduces the same batch.
  loader.reset();
  std::vector<int32_t> in2(B * T), tg2(B * T);
  loader.next_batch(in.data(), tg.data());
  loader.restore(LoaderState{});
  loader.next_batch(in2.data(), tg2.data());
  EXPECT_EQ(tg, tg2);
}

TEST_F(SftDataTest, PlainPrepareWritesNoMasks) {
  write_text_file_atomic(dir_->file("plain.txt"), "First document.\n\nSecond document here.\n");
  PrepareOptions opt;
  opt.tokenizer_path = dir_->file("tok.model");
  opt.inputs = {dir_->file("plain.txt")};
  opt.out_dir = dir_->file("plain");
  opt.val_fraction = 0;
  opt.progress = false;
  prepare_dataset(opt);
  json meta = json::parse(read_text_file(dir_->file("plain/meta.json")));
  EXPECT_FALSE(meta.contains("sft"));
  EXPECT_FALSE(meta["train"]["shards"][0].contains("mask"));
  EXPECT_FALSE(file_exists(dir_->file("plain/train_00000.mask")));
  DatasetMeta m = load_dataset_meta(dir_->file("plain"));
  EXPECT_FALSE(m.sft);
  DataLoader loader(m, Split::kTrain, 1, 4, false, 0);
  EXPECT_FALSE(loader.has_masks());
}

TEST_F(SftDataTest, BadInputs) {
  PrepareOptions opt;
  opt.tokenizer_path = dir_->file("tok.model");
  opt.out_dir = dir_->file("bad_out");
  opt.progress = false;
  opt.sft = true;
  write_text_file_atomic(dir_->file("no_answer.jsonl"), "{\"prompt\": \"a\", \"answer\": \"b\"}\n\n{\"prompt\": \"c\"}\n");
  opt.inputs = {dir_->file("no_answer.jsonl")};
  std::string msg = user_error_message([&] { prepare_dataset(opt); });
  EXPECT_NE(msg.find("no_answer.jsonl:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"answer\""), std::string::npos) << msg;
  EXPECT_TRUE(single_line(msg)) << msg;
  EXPECT_FALSE(file_exists(opt.out_dir)) << "a failed prepare must not leave its directory";

  write_text_file_atomic(dir_->file("num_prompt.jsonl"), "{\"prompt\": 3, \"answer\": \"b\"}\n");
  opt.inputs = {dir_->file("num_prompt.jsonl")};
  msg = user_error_message([&] { prepare_dataset(opt); });
  EXPECT_NE(msg.find("num_prompt.jsonl:1: no string field \"prompt\""), std::string::npos) << msg;

  write_text_file_atomic(dir_->file("not_json.jsonl"), "prompt: a\n");
  opt.inputs = {dir_->file("not_json.jsonl")};
  msg = user_error_message([&] { prepare_dataset(opt); });
  EXPECT_NE(msg.find("not_json.jsonl:1: not valid JSON"), std::string::npos) << msg;

  write_text_file_atomic(dir_->file("empty.jsonl"), "\n  \n");
  opt.inputs = {dir_->file("empty.jsonl")};
  msg = user_error_message([&] { prepare_dataset(opt); });
  EXPECT_NE(msg.find("empty SFT input"), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty.jsonl"), std::string::npos) << msg;

  opt.inputs = {test::test_data("sft_example.jsonl")};
  opt.format = DataFormat::kMegatron;
  msg = user_error_message([&] { prepare_dataset(opt); });
  EXPECT_NE(msg.find("--sft writes only the ltrain format"), std::string::npos) << msg;
}

// Every malformed mask file is one UserError line naming the file: at load_dataset_meta (header
// defects) or when the loader verifies the data (checksum, byte values).
TEST_F(SftDataTest, MalformedMaskFiles) {
  const std::string good = prepare("mask_good");
  const std::string good_mask = read_bytes(path_join(good, "train_00000.mask"));
  const uint64_t n = good_mask.size() - 32;
  int case_no = 0;
  // Applies `damage` to a fresh copy's train_00000.mask; expects `needle` from meta (or loader).
  auto check = [&](const std::string& what, const std::function<void(const std::string&)>& damage,
                   const std::string& needle, bool at_loader) {
    SCOPED_TRACE(what);
    const std::string dir = prepare("mask_bad_" + std::to_string(case_no++));
    const std::string mask = path_join(dir, "train_00000.mask");
    damage(mask);
    std::string msg = user_error_message([&] {
      DatasetMeta meta = load_dataset_meta(dir);
      if (at_loader) DataLoader(meta, Split::kTrain, 1, 8, false, 0);
    });
    if (at_loader) {  // header checks pass; verify=false loads it, verify=true refuses it
      EXPECT_NO_THROW({
        DatasetMeta meta = load_dataset_meta(dir);
        DataLoader(meta, Split::kTrain, 1, 8, false, 0, 0, 1, /*verify=*/false);
      });
    }
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find("train_00000.mask"), std::string::npos) << msg;
    EXPECT_TRUE(single_line(msg)) << msg;
  };
  check("missing", [](const std::string& p) { std::remove(p.c_str()); }, "is missing", false);
  check("empty", [](const std::string& p) { write_bytes(p, ""); }, "shorter than the 32-byte header", false);
  check("bad magic", [&](const std::string& p) { write_bytes(p, "XXXXXXXX" + good_mask.substr(8)); },
        "bad magic", false);
  check("truncated", [&](const std::string& p) { write_bytes(p, good_mask.substr(0, good_mask.size() - 1)); },
        "truncated or damaged", false);
  check("trailing byte", [&](const std::string& p) { write_bytes(p, good_mask + std::string(1, '\0')); },
        "truncated or damaged", false);
  check("header bit flip", [&](const std::string& p) {
    std::string b = good_mask;
    b[16] ^= 1;  // token count
    write_bytes(p, b);
  }, "header checksum", false);
  check("other token count", [&](const std::string& p) { write_mask_file(p, std::vector<uint8_t>(n + 5, 1)); },
        "holds " + std::to_string(n + 5) + " mask bytes", false);
  check("version", [&](const std::string& p) {
    std::string b = good_mask;
    b[8] = 9;
    write_bytes(p, b);
  }, "version 9", false);
  check("data bit flip", [&](const std::string& p) {
    std::string b = good_mask;
    b[32 + n / 2] ^= 1;
    write_bytes(p, b);
  }, "mask checksum mismatch", true);
  check("byte not 0/1", [&](const std::string& p) {
    std::string b = good_mask;
    b[32 + 3] = 2;
    const uint32_t crc = crc32(b.data() + 32, n);
    std::memcpy(&b[24], &crc, 4);
    const uint32_t header_crc = crc32(b.data(), 28);
    std::memcpy(&b[28], &header_crc, 4);
    write_bytes(p, b);
  }, "is 2, not 0 or 1", true);

  // meta.json says sft but an entry names no mask.
  const std::string dir = prepare("mask_meta");
  json meta = json::parse(read_text_file(path_join(dir, "meta.json")));
  meta["train"]["shards"][0].erase("mask");
  write_text_file_atomic(path_join(dir, "meta.json"), meta.dump(2));
  std::string msg = user_error_message([&] { load_dataset_meta(dir); });
  EXPECT_NE(msg.find("missing the field 'mask'"), std::string::npos) << msg;
  meta["sft"] = "yes";
  write_text_file_atomic(path_join(dir, "meta.json"), meta.dump(2));
  msg = user_error_message([&] { load_dataset_meta(dir); });
  EXPECT_NE(msg.find("'sft' must be true or false"), std::string::npos) << msg;
}
