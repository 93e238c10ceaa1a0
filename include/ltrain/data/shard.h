// Token shards: one binary file of token ids plus the start offset of each document in it.
//
// Layout (all integers little-endian; full description in docs/data-format.md):
//   [0, 64)      header: magic "LTRAINTK", u32 version (1), u32 bytes per token (2 or 4),
//                u64 token count, u64 document count, u32 vocab size, u32 crc32 of the token bytes,
//                u32 crc32 of the document index bytes, u32 crc32 of header bytes [0, 44), zeros
//   [64, ...)    tokens, uint16 when vocab_size <= 65536 else uint32, then zero padding up to a
//                multiple of 8 bytes so the index is 8-byte aligned
//   then         document index: num_docs u64 token offsets, starting at 0 and strictly increasing
// The reader maps the file read-only; pages are loaded as windows are read, so opening a shard is
// cheap unless the checksum is verified (one pass over the file).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ltrain {

class MappedFile;

constexpr char kShardMagic[8] = {'L', 'T', 'R', 'A', 'I', 'N', 'T', 'K'};
constexpr uint32_t kShardVersion = 1;
constexpr uint64_t kShardHeaderBytes = 64;

inline int shard_bytes_per_token(uint32_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

// Atomic write (temp file + rename). tokens: all < vocab_size; doc_starts: 0 first, increasing.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 const std::vector<uint64_t>& doc_starts, uint32_t vocab_size);

class TokenShard {
 public:
  // Every defect is a UserError naming the file: missing, shorter than a header, bad magic,
  // unknown version, bad bytes-per-token, size not matching the header, header checksum, bad
  // document index. With verify_checksum, also the token checksum and every id < vocab_size.
  static TokenShard open(const std::string& path, bool verify_checksum = true);

  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  ~TokenShard();

  uint64_t num_tokens() const { return num_tokens_; }
  uint64_t num_docs() const { return num_docs_; }
  uint64_t doc_start(uint64_t i) const;
  uint32_t vocab_size() const { return vocab_size_; }
  int bytes_per_token() const { return bytes_per_token_; }
  const std::string& path() const { return path_; }

  uint32_t token(uint64_t i) const;
  void read(uint64_t start, uint64_t n, int32_t* out) const;  // out: (n,) tokens [start, start+n)

 private:
  TokenShard() = default;
  void release();
  std::string path_;
  const uint8_t* map_ = nullptr;  // whole file, read-only
  size_t map_size_ = 0;
  const uint8_t* tokens_ = nullptr;
  const uint8_t* doc_index_ = nullptr;
  uint64_t num_tokens_ = 0, num_docs_ = 0;
  uint32_t vocab_size_ = 0;
  int bytes_per_token_ = 0;
};

// ---- loss masks (supervised fine-tuning; docs/data-format.md, "SFT datasets") -------------------
// A mask file sits next to its shard (train_00000.bin -> train_00000.mask) and holds one byte per
// token of the shard: 1 = the loss is taken where this token is the target, 0 = it is not.
// Layout (little-endian):
//   [0, 32)      header: magic "LTRNMASK", u32 version (1), u32 reserved (0), u64 token count,
//                u32 crc32 of the mask bytes, u32 crc32 of header bytes [0, 28)
//   [32, 32+N)   N mask bytes, each 0 or 1; nothing after them
constexpr char kMaskMagic[8] = {'L', 'T', 'R', 'N', 'M', 'A', 'S', 'K'};
constexpr uint32_t kMaskVersion = 1;
constexpr uint64_t kMaskHeaderBytes = 32;

std::string mask_path_for_shard(const std::string& shard_path);  // X.bin -> X.mask
// Atomic write (temp file + rename). Every byte must be 0 or 1.
void write_mask_file(const std::string& path, const std::vector<uint8_t>& mask);

class LossMask {
 public:
  // Every defect is a UserError naming the file: missing, shorter than a header, bad magic,
  // unknown version, header checksum, a token count other than expected_tokens, a size not
  // matching the header. With verify_checksum, also the mask checksum and every byte in {0, 1}.
  static LossMask open(const std::string& path, uint64_t expected_tokens, bool verify_checksum = true);
  uint64_t num_tokens() const { return num_tokens_; }
  const std::string& path() const { return path_; }
  void read(uint64_t start, uint64_t n, uint8_t* out) const;  // out: (n,) mask bytes [start, start+n)

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> file_;
  uint64_t num_tokens_ = 0;
};

}  // namespace ltrain
