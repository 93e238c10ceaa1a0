// Token data in other frameworks' formats, read in place (memory-mapped) and written by
// `ltrain prepare --format`. Full description, split rules and vocabulary policy in
// docs/data-format.md ("Other formats").
//
//  - Megatron-LM / GPT-NeoX indexed dataset: PREFIX.bin (token ids, no header) + PREFIX.idx:
//      9 bytes "MMIDIDX\0\0", u64 version (1), u8 dtype code (1 uint8, 2 int8, 3 int16, 4 int32,
//      5 int64, 6 float64, 7 float32, 8 uint16; the float codes are refused), u64 sequence count S,
//      u64 document-index count D+1, then S int32 sequence lengths (tokens), S int64 sequence
//      pointers (byte offsets into .bin), D+1 int64 document indices (document d is sequences
//      [doc[d], doc[d+1]); doc[0] = 0, doc[D] = S). All little-endian.
//  - llm.c token shard: 256 int32 header (magic, version, token count N, rest unused), then N
//      tokens: magic 20240520 + version 1 = uint16 tokens (GPT-2), magic 20240801 + version 7 =
//      uint32 tokens (llm.c's Llama 3 variant).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ltrain {

enum class TokenDtype { kU8, kI8, kI16, kU16, kI32, kU32, kI64 };
int dtype_size(TokenDtype t);
const char* dtype_name(TokenDtype t);

// A whole file mapped read-only; shared by the streams cut out of it. UserError naming the file
// when it is missing, not a regular file, or cannot be mapped. `what` names the kind of file in
// messages ("Megatron data file").
class MappedFile {
 public:
  static std::shared_ptr<const MappedFile> open(const std::string& path, const char* what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// What the DataLoader cuts into windows: a run of token ids read as int32.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual uint64_t num_tokens() const = 0;
  virtual void read(uint64_t start, uint64_t n, int32_t* out) const = 0;  // tokens [start, start+n)
  virtual const std::string& path() const = 0;
};

// `count` tokens of type `dtype` starting at byte `byte_offset` of a mapped file.
class MappedTokens : public TokenSource {
 public:
  MappedTokens(std::shared_ptr<const MappedFile> file, TokenDtype dtype, uint64_t byte_offset, uint64_t count);
  uint64_t num_tokens() const override { return count_; }
  void read(uint64_t start, uint64_t n, int32_t* out) const override;
  const std::string& path() const override { return file_->path(); }
  TokenDtype dtype() const { return dtype_; }
  uint64_t byte_offset() const { return offset_; }
  // Every id in [0, vocab_size): UserError naming the file and the first bad token otherwise.
  void check_ids(int64_t vocab_size) const;
  int64_t max_id() const;  // -1 when empty; may be negative for signed dtypes with bad data

 private:
  int64_t id_at(uint64_t i) const;
  std::shared_ptr<const MappedFile> file_;
  TokenDtype dtype_;
  uint64_t offset_, count_;
};

// ---- Megatron-LM / GPT-NeoX indexed dataset -----------------------------------------------------

constexpr char kMegatronIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kMegatronIndexHeaderBytes = 34;  // magic 9 + version 8 + dtype 1 + counts 16

int megatron_dtype_code(TokenDtype t);  // the Megatron code of an integer dtype

class MegatronDataset {
 public:
  // Opens PREFIX.idx and PREFIX.bin and validates the whole index against the .bin (one pass over
  // the .idx, none over the tokens): header, dtype, file sizes, every sequence inside the .bin and
  // pointers that follow from the lengths (sequences are contiguous from byte 0 and cover the
  // .bin exactly), document indices from 0 to S, non-decreasing. UserError naming the file.
  static MegatronDataset open(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  std::string idx_path() const { return prefix_ + ".idx"; }
  std::string bin_path() const { return prefix_ + ".bin"; }
  TokenDtype dtype() const { return dtype_; }
  uint64_t num_sequences() const { return num_seqs_; }
  uint64_t num_docs() const { return num_docs_; }
  uint64_t num_tokens() const { return num_tokens_; }
  uint64_t bin_bytes() const { return bin_->size(); }
  // Token offset of the first token of document d (d <= num_docs(): num_docs() gives the end).
  uint64_t doc_token_start(uint64_t d) const;
  // Tokens of documents [first, last) as one stream.
  MappedTokens docs(uint64_t first, uint64_t last) const;
  std::vector<int32_t> document(uint64_t d) const;  // for tests and tools

 private:
  MegatronDataset() = default;
  std::string prefix_;
  std::shared_ptr<const MappedFile> idx_, bin_;
  TokenDtype dtype_ = TokenDtype::kU16;
  uint64_t num_seqs_ = 0, num_docs_ = 0, num_tokens_ = 0;
  const uint8_t* lengths_ = nullptr;   // (S,) int32
  const uint8_t* pointers_ = nullptr;  // (S,) int64
  const uint8_t* doc_index_ = nullptr; // (D+1,) int64
};

// Writes PREFIX.bin and PREFIX.idx (atomically, .idx last): one sequence per document, document
// indices 0..D. dtype: kU16 or kI32 (ids must fit). For `prepare` and tests.
class MegatronWriter {
 public:
  MegatronWriter(std::string prefix, TokenDtype dtype);
  ~MegatronWriter();  // removes the temporary .bin if finish() was not called
  void add_document(const std::vector<int>& ids);
  void finish();
  uint64_t num_docs() const { return lengths_.size(); }
  uint64_t num_tokens() const { return tokens_; }

 private:
  std::string prefix_, tmp_bin_;
  TokenDtype dtype_;
  FILE* bin_ = nullptr;
  std::vector<int32_t> lengths_;
  uint64_t tokens_ = 0;
  bool finished_ = false;
};

// ---- llm.c token shards -------------------------------------------------------------------------

constexpr int32_t kLlmcMagicU16 = 20240520, kLlmcVersionU16 = 1;  // GPT-2: uint16 tokens
constexpr int32_t kLlmcMagicU32 = 20240801, kLlmcVersionU32 = 7;  // Llama 3: uint32 tokens
constexpr uint64_t kLlmcHeaderBytes = 256 * 4;

// Opens and validates one shard (magic, version, token count against the file size).
MappedTokens open_llmc_shard(const std::string& path);
// Writes one shard atomically: the uint16 variant when vocab_size <= 65536, else the uint32 one.
// UserError if there are 2^31 tokens or more (the header's int32 count).
void write_llmc_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t vocab_size);

// ---- ltrain-data.json: what the foreign formats do not store ------------------------------------

// Next to Megatron files / llm.c shards (in the directory holding them): {"vocab_size": V,
// "bos_id": B, "eos_id": E, "tokenizer": "tokenizer.model"}; only vocab_size is required.
constexpr const char* kSidecarName = "ltrain-data.json";

}  // namespace ltrain
