// Token shard format: round trips in both dtypes, and every kind of damage is a UserError that
// names the file. Damaged files are made by editing a valid shard's bytes; where a test targets a
// check behind the checksums, it recomputes them so that only the intended check can fire.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/shard.h"
#include "test_util.h"

using namespace ltrain;
using ltrain::test::TempDir;

namespace {

std::string read_bytes(const std::string& path) { return read_text_file(path); }
void write_bytes(const std::string& path, const std::string& b) { write_file_atomic(path, b.data(), b.size()); }

template <class T>
T get_at(const std::string& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}
template <class T>
void put_at(std::string& b, size_t off, T v) {
  std::memcpy(&b[off], &v, sizeof(T));
}

// Recomputes the token, index and header checksums of a shard image (layout in shard.h).
void fix_checksums(std::string& b) {
  uint32_t bpt = get_at<uint32_t>(b, 12);
  uint64_t n = get_at<uint64_t>(b, 16), docs = get_at<uint64_t>(b, 24);
  uint64_t index_off = 64 + ((n * bpt + 7) / 8) * 8;
  put_at<uint32_t>(b, 36, crc32(b.data() + 64, n * bpt));
  put_at<uint32_t>(b, 40, crc32(b.data() + index_off, docs * 8));
  put_at<uint32_t>(b, 44, crc32(b.data(), 44));
}

// Expects a UserError whose message names `path` and contains `what`.
template <class F>
void expect_user_error(F&& f, const std::string& path, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "expected a UserError mentioning '" << what << "'";
  } catch (const UserError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "message lacks '" << what << "': " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
  }
}

std::vector<uint32_t> random_tokens(size_t n, uint32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = static_cast<uint32_t>(rng() % vocab);
  return t;
}

void check_round_trip(const std::string& path, uint32_t vocab, int expected_bpt, size_t n) {
  auto tokens = random_tokens(n, vocab, 7 + n);
  tokens[0] = vocab - 1;  // the largest id must survive the narrow dtype
  std::vector<uint64_t> starts = {0, 3, 10, n - 1};
  write_shard(path, tokens, starts, vocab);
  TokenShard s = TokenShard::open(path);
  EXPECT_EQ(s.bytes_per_token(), expected_bpt);
  EXPECT_EQ(s.vocab_size(), vocab);
  ASSERT_EQ(s.num_tokens(), n);
  ASSERT_EQ(s.num_docs(), starts.size());
  for (size_t i = 0; i < starts.size(); ++i) EXPECT_EQ(s.doc_start(i), starts[i]);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(s.token(i), tokens[i]) << "token " << i;
  std::vector<int32_t> out(n - 5, -1);
  s.read(5, n - 5, out.data());
  for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], static_cast<int32_t>(tokens[5 + i]));
  // Header + tokens padded to 8 bytes + index.
  EXPECT_EQ(file_size(path), 64 + (n * expected_bpt + 7) / 8 * 8 + starts.size() * 8);
}

}  // namespace

TEST(Shard, RoundTripUint16) {
  TempDir dir("shard");
  check_round_trip(dir.file("a.bin"), 65536, 2, 1001);  // odd count: exercises the index padding
  check_round_trip(dir.file("b.bin"), 300, 2, 64);
}

TEST(Shard, RoundTripUint32) {
  TempDir dir("shard");
  check_round_trip(dir.file("a.bin"), 65537, 4, 999);
  check_round_trip(dir.file("b.bin"), 128256, 4, 33);
}

TEST(Shard, EmptyShardAndMove) {
  TempDir dir("shard");
  write_shard(dir.file("e.bin"), {}, {}, 100);
  TokenShard a = TokenShard::open(dir.file("e.bin"));
  EXPECT_EQ(a.num_tokens(), 0u);
  EXPECT_EQ(a.num_docs(), 0u);
  write_shard(dir.file("f.bin"), {5, 6, 7}, {0}, 100);
  TokenShard b = TokenShard::open(dir.file("f.bin"));
  a = std::move(b);  // unmaps the empty one, takes over the other mapping
  EXPECT_EQ(a.num_tokens(), 3u);
  EXPECT_EQ(a.token(2), 7u);
  TokenShard c(std::move(a));
  EXPECT_EQ(c.token(0), 5u);
}

class ShardDamage : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("s.bin");
    write_shard(path_, random_tokens(101, 1000, 1), {0, 40, 77}, 1000);
    good_ = read_bytes(path_);
    ASSERT_NO_THROW(TokenShard::open(path_));
  }
  void expect_open_fails(const std::string& bytes, const std::string& what, bool verify = true) {
    write_bytes(path_, bytes);
    expect_user_error([&] { TokenShard::open(path_, verify); }, path_, what);
  }
  TempDir dir_{"shard"};
  std::string path_, good_;
};

TEST_F(ShardDamage, MissingFile) {
  std::string p = dir_.file("nope.bin");
  expect_user_error([&] { TokenShard::open(p); }, p, "not found");
}

TEST_F(ShardDamage, ShorterThanHeader) { expect_open_fails(good_.substr(0, 30), "header"); }

TEST_F(ShardDamage, Truncated) {
  expect_open_fails(good_.substr(0, good_.size() - 8), "truncated");
  write_bytes(path_, good_.substr(0, good_.size() - 3));
  try {
    TokenShard::open(path_);
    ADD_FAILURE() << "truncated shard opened";
  } catch (const UserError& e) {  // says expected vs actual size
    std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(good_.size())), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(good_.size() - 3)), std::string::npos) << msg;
  }
  expect_open_fails(good_ + "x", "header says");  // trailing garbage is damage too
}

TEST_F(ShardDamage, FlippedTokenByte) {
  std::string b = good_;
  b[64 + 17] ^= 0x01;
  expect_open_fails(b, "token checksum mismatch");
  // Without verification the header checks pass and the damage goes unnoticed (by design: cheap).
  write_bytes(path_, b);
  EXPECT_NO_THROW(TokenShard::open(path_, /*verify_checksum=*/false));
}

TEST_F(ShardDamage, BadMagic) {
  std::string b = good_;
  b[0] = 'X';
  expect_open_fails(b, "not an ltrain token shard");
  expect_open_fails(std::string(200, 'a'), "not an ltrain token shard");
}

TEST_F(ShardDamage, UnknownVersion) {
  std::string b = good_;
  put_at<uint32_t>(b, 8, 7);
  expect_open_fails(b, "version 7");
}

TEST_F(ShardDamage, BadBytesPerToken) {
  std::string b = good_;
  put_at<uint32_t>(b, 12, 3);
  expect_open_fails(b, "bytes per token");
}

TEST_F(ShardDamage, HeaderChecksum) {
  std::string b = good_;
  put_at<uint32_t>(b, 32, 999);  // vocab size, not covered by the size check
  expect_open_fails(b, "header checksum");
}

TEST_F(ShardDamage, TokenNotBelowVocab) {
  std::string b = good_;
  put_at<uint16_t>(b, 64 + 2 * 50, 1000);
  fix_checksums(b);
  expect_open_fails(b, "not below vocab size 1000");
}

TEST_F(ShardDamage, DocStartsNotIncreasing) {
  std::string b = good_;
  uint64_t index_off = 64 + (101 * 2 + 7) / 8 * 8;
  put_at<uint64_t>(b, index_off + 16, 40);  // third start == second
  fix_checksums(b);
  expect_open_fails(b, "document 2 starts at 40", /*verify=*/false);
  b = good_;
  put_at<uint64_t>(b, index_off + 8, 5);  // damage without fixing the index checksum
  expect_open_fails(b, "document index checksum", false);
}
