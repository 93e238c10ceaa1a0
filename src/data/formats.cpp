// Readers and writers of Megatron-LM/GPT-NeoX indexed datasets and llm.c token shards. See
// formats.h and docs/data-format.md. Little-endian files on a little-endian host (as shard.cpp).
#include "ltrain/data/formats.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

namespace {

template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
void put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace

int dtype_size(TokenDtype t) {
  switch (t) {
    case TokenDtype::kU8: case TokenDtype::kI8: return 1;
    case TokenDtype::kI16: case TokenDtype::kU16: return 2;
    case TokenDtype::kI32: case TokenDtype::kU32: return 4;
    case TokenDtype::kI64: return 8;
  }
  return 0;
}

const char* dtype_name(TokenDtype t) {
  switch (t) {
    case TokenDtype::kU8: return "uint8";
    case TokenDtype::kI8: return "int8";
    case TokenDtype::kI16: return "int16";
    case TokenDtype::kU16: return "uint16";
    case TokenDtype::kI32: return "int32";
    case TokenDtype::kU32: return "uint32";
    case TokenDtype::kI64: return "int64";
  }
  return "?";
}

// ---- MappedFile ---------------------------------------------------------------------------------

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path, const char* what) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    if (errno == ENOENT) user_error(what, " not found: '", path, "'");
    user_error("cannot open ", what, " '", path, "': ", std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    user_error(what, " '", path, "' is not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      user_error("cannot map ", what, " '", path, "': ", std::strerror(err));
    }
    f->data_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);  // the mapping keeps the file alive
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---- MappedTokens -------------------------------------------------------------------------------

MappedTokens::MappedTokens(std::shared_ptr<const MappedFile> file, TokenDtype dtype, uint64_t byte_offset,
                           uint64_t count)
    : file_(std::move(file)), dtype_(dtype), offset_(byte_offset), count_(count) {
  LTRAIN_CHECK(offset_ <= file_->size() && count_ <= (file_->size() - offset_) / dtype_size(dtype_),
               "tokens [" << offset_ << ", +" << count_ << ") outside " << file_->path());
}

int64_t MappedTokens::id_at(uint64_t i) const {
  const uint8_t* p = file_->data() + offset_;
  switch (dtype_) {
    case TokenDtype::kU8: return p[i];
    case TokenDtype::kI8: return static_cast<int8_t>(p[i]);
    case TokenDtype::kI16: return get<int16_t>(p + 2 * i);
    case TokenDtype::kU16: return get<uint16_t>(p + 2 * i);
    case TokenDtype::kI32: return get<int32_t>(p + 4 * i);
    case TokenDtype::kU32: return get<uint32_t>(p + 4 * i);
    case TokenDtype::kI64: return get<int64_t>(p + 8 * i);
  }
  return 0;
}

void MappedTokens::read(uint64_t start, uint64_t n, int32_t* out) const {
  LTRAIN_CHECK(start <= count_ && n <= count_ - start,
               "read [" << start << ", " << start + n << ") of " << count_ << " in " << path());
  const uint8_t* p = file_->data() + offset_;
  switch (dtype_) {
    case TokenDtype::kU16:  // the common cases get their own loops
      for (uint64_t i = 0; i < n; ++i) out[i] = get<uint16_t>(p + 2 * (start + i));
      return;
    case TokenDtype::kU32:
    case TokenDtype::kI32:
      for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(get<uint32_t>(p + 4 * (start + i)));
      return;
    default:
      for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(id_at(start + i));
  }
}

void MappedTokens::check_ids(int64_t vocab_size) const {
  for (uint64_t i = 0; i < count_; ++i) {
    const int64_t t = id_at(i);
    if (t < 0 || t >= vocab_size)
      user_error("'", path(), "': token ", i, " of this stream (byte ", offset_ + i * dtype_size(dtype_), ") is ", t,
                 ", not in [0, vocab size ", vocab_size, ")");
  }
}

int64_t MappedTokens::max_id() const {
  int64_t m = -1;
  if (dtype_ == TokenDtype::kU16) {
    const uint8_t* p = file_->data() + offset_;
    uint16_t mm = 0;
    for (uint64_t i = 0; i < count_; ++i) mm = std::max(mm, get<uint16_t>(p + 2 * i));
    return count_ ? int64_t(mm) : -1;
  }
  for (uint64_t i = 0; i < count_; ++i) m = std::max(m, id_at(i));
  return m;
}

// ---- Megatron -----------------------------------------------------------------------------------

int megatron_dtype_code(TokenDtype t) {
  switch (t) {
    case TokenDtype::kU8: return 1;
    case TokenDtype::kI8: return 2;
    case TokenDtype::kI16: return 3;
    case TokenDtype::kI32: return 4;
    case TokenDtype::kI64: return 5;
    case TokenDtype::kU16: return 8;
    case TokenDtype::kU32: break;
  }
  LTRAIN_CHECK(false, "uint32 has no Megatron dtype code");
  return 0;
}

MegatronDataset MegatronDataset::open(const std::string& prefix) {
  MegatronDataset ds;
  ds.prefix_ = prefix;
  const std::string idx = ds.idx_path(), bin = ds.bin_path();
  ds.idx_ = MappedFile::open(idx, "Megatron index file");
  ds.bin_ = MappedFile::open(bin, "Megatron data file");
  const uint8_t* h = ds.idx_->data();
  const uint64_t idx_size = ds.idx_->size();
  if (idx_size < kMegatronIndexHeaderBytes)
    user_error("Megatron index '", idx, "' is truncated: ", idx_size, " bytes, shorter than the ",
               kMegatronIndexHeaderBytes, "-byte header");
  if (std::memcmp(h, kMegatronIndexMagic, 9) != 0)
    user_error("'", idx, "' is not a Megatron index file (bad magic; expected \"MMIDIDX\\0\\0\")");
  const uint64_t version = get<uint64_t>(h + 9);
  if (version != 1)
    user_error("Megatron index '", idx, "' has version ", version, "; only version 1 is supported");
  const uint8_t code = h[17];
  switch (code) {
    case 1: ds.dtype_ = TokenDtype::kU8; break;
    case 2: ds.dtype_ = TokenDtype::kI8; break;
    case 3: ds.dtype_ = TokenDtype::kI16; break;
    case 4: ds.dtype_ = TokenDtype::kI32; break;
    case 5: ds.dtype_ = TokenDtype::kI64; break;
    case 8: ds.dtype_ = TokenDtype::kU16; break;
    case 6: case 7:
      user_error("Megatron index '", idx, "' has dtype code ", int(code), " (", code == 6 ? "float64" : "float32",
                 "); token ids must be an integer type (codes 1-5, 8)");
    default:
      user_error("Megatron index '", idx, "' has unknown dtype code ", int(code),
                 " (known: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)");
  }
  const uint64_t S = get<uint64_t>(h + 18), Dp1 = get<uint64_t>(h + 26);
  const uint64_t limit = uint64_t(1) << 56;
  if (S > limit || Dp1 > limit)
    user_error("Megatron index '", idx, "' is corrupt: header claims ", S, " sequences and ", Dp1, " document indices");
  if (Dp1 == 0)
    user_error("Megatron index '", idx, "' is corrupt: it has no document indices (expected at least the leading 0)");
  const uint64_t expected = kMegatronIndexHeaderBytes + 12 * S + 8 * Dp1;
  if (idx_size != expected) {
    if (idx_size == expected + S && S > 0)
      user_error("Megatron index '", idx, "' has ", S, " bytes after the document indices: multimodal "
                 "sequence modes are not supported");
    user_error("Megatron index '", idx, "' is truncated or damaged: its header (", S, " sequences, ", Dp1,
               " document indices) needs ", expected, " bytes, the file has ", idx_size);
  }
  ds.num_seqs_ = S;
  ds.num_docs_ = Dp1 - 1;
  ds.lengths_ = h + kMegatronIndexHeaderBytes;
  ds.pointers_ = ds.lengths_ + 4 * S;
  ds.doc_index_ = ds.pointers_ + 8 * S;

  const uint64_t isz = static_cast<uint64_t>(dtype_size(ds.dtype_));
  const uint64_t bin_size = ds.bin_->size();
  uint64_t next = 0;  // byte where sequence i must start: right after sequence i-1
  for (uint64_t i = 0; i < S; ++i) {
    const int32_t len = get<int32_t>(ds.lengths_ + 4 * i);
    const int64_t ptr = get<int64_t>(ds.pointers_ + 8 * i);
    if (len < 0)
      user_error("Megatron index '", idx, "' is corrupt: sequence ", i, " has negative length ", len);
    if (ptr < 0 || uint64_t(ptr) > bin_size || uint64_t(len) * isz > bin_size - uint64_t(ptr))
      user_error("Megatron index '", idx, "' points past the end of '", bin, "': sequence ", i, " covers bytes [",
                 ptr, ", ", ptr + int64_t(len) * int64_t(isz), "), the file has ", bin_size, " bytes");
    if (uint64_t(ptr) != next)
      user_error("Megatron index '", idx, "' is corrupt: sequence ", i, " starts at byte ", ptr,
                 ", but the lengths before it put it at byte ", next, " (lengths and pointers disagree)");
    next += uint64_t(len) * isz;
  }
  if (next != bin_size)
    user_error("Megatron data file '", bin, "' has ", bin_size, " bytes, but its index '", idx, "' describes ",
               next, " (", next / isz, " ", dtype_name(ds.dtype_), " tokens); the files do not belong together");
  ds.num_tokens_ = next / isz;
  int64_t prev = 0;
  for (uint64_t d = 0; d < Dp1; ++d) {
    const int64_t v = get<int64_t>(ds.doc_index_ + 8 * d);
    const bool ok = d == 0 ? v == 0 : (v >= prev && uint64_t(v) <= S);
    if (!ok)
      user_error("Megatron index '", idx, "' is corrupt: document index ", d, " is ", v, " (document indices must ",
                 "start at 0, not decrease, and stay within the ", S, " sequences)");
    prev = v;
  }
  if (uint64_t(prev) != S)
    user_error("Megatron index '", idx, "' is corrupt: the last document index is ", prev, ", not the sequence count ", S);
  return ds;
}

uint64_t MegatronDataset::doc_token_start(uint64_t d) const {
  LTRAIN_CHECK(d <= num_docs_, "document " << d << " of " << num_docs_ << " in " << prefix_);
  const uint64_t seq = static_cast<uint64_t>(get<int64_t>(doc_index_ + 8 * d));
  if (seq == num_seqs_) return num_tokens_;
  return static_cast<uint64_t>(get<int64_t>(pointers_ + 8 * seq)) / dtype_size(dtype_);
}

MappedTokens MegatronDataset::docs(uint64_t first, uint64_t last) const {
  LTRAIN_CHECK(first <= last && last <= num_docs_);
  const uint64_t a = doc_token_start(first), b = doc_token_start(last);
  return MappedTokens(bin_, dtype_, a * dtype_size(dtype_), b - a);
}

std::vector<int32_t> MegatronDataset::document(uint64_t d) const {
  MappedTokens t = docs(d, d + 1);
  std::vector<int32_t> out(t.num_tokens());
  t.read(0, out.size(), out.data());
  return out;
}

// ---- MegatronWriter -----------------------------------------------------------------------------

MegatronWriter::MegatronWriter(std::string prefix, TokenDtype dtype) : prefix_(std::move(prefix)), dtype_(dtype) {
  LTRAIN_CHECK(dtype_ == TokenDtype::kU16 || dtype_ == TokenDtype::kI32);
  tmp_bin_ = prefix_ + ".bin.tmp." + std::to_string(::getpid());
  bin_ = std::fopen(tmp_bin_.c_str(), "wb");
  if (!bin_) user_error("cannot write '", tmp_bin_, "': ", std::strerror(errno));
}

MegatronWriter::~MegatronWriter() {
  if (bin_) std::fclose(bin_);
  if (!finished_) std::remove(tmp_bin_.c_str());
}

void MegatronWriter::add_document(const std::vector<int>& ids) {
  LTRAIN_CHECK(!finished_);
  LTRAIN_CHECK(ids.size() <= size_t(INT32_MAX), "document of " << ids.size() << " tokens");
  std::vector<uint8_t> buf(ids.size() * dtype_size(dtype_));
  for (size_t i = 0; i < ids.size(); ++i) {
    LTRAIN_CHECK(ids[i] >= 0 && (dtype_ != TokenDtype::kU16 || ids[i] < 65536), "token " << ids[i]);
    if (dtype_ == TokenDtype::kU16) put<uint16_t>(buf.data() + 2 * i, static_cast<uint16_t>(ids[i]));
    else put<int32_t>(buf.data() + 4 * i, ids[i]);
  }
  if (!buf.empty() && std::fwrite(buf.data(), 1, buf.size(), bin_) != buf.size())
    user_error("cannot write '", tmp_bin_, "': ", std::strerror(errno));
  lengths_.push_back(static_cast<int32_t>(ids.size()));
  tokens_ += ids.size();
}

void MegatronWriter::finish() {
  LTRAIN_CHECK(!finished_);
  if (std::fflush(bin_) != 0 || ::fsync(::fileno(bin_)) != 0 || std::fclose(bin_) != 0) {
    bin_ = nullptr;
    user_error("cannot write '", tmp_bin_, "': ", std::strerror(errno));
  }
  bin_ = nullptr;
  const uint64_t S = lengths_.size();
  std::vector<uint8_t> idx(kMegatronIndexHeaderBytes + 12 * S + 8 * (S + 1));
  std::memcpy(idx.data(), kMegatronIndexMagic, 9);
  put<uint64_t>(idx.data() + 9, 1);
  idx[17] = static_cast<uint8_t>(megatron_dtype_code(dtype_));
  put<uint64_t>(idx.data() + 18, S);
  put<uint64_t>(idx.data() + 26, S + 1);
  uint8_t* len = idx.data() + kMegatronIndexHeaderBytes;
  uint8_t* ptr = len + 4 * S;
  uint8_t* doc = ptr + 8 * S;
  int64_t p = 0;
  for (uint64_t i = 0; i < S; ++i) {
    put<int32_t>(len + 4 * i, lengths_[i]);
    put<int64_t>(ptr + 8 * i, p);
    p += int64_t(lengths_[i]) * dtype_size(dtype_);
  }
  for (uint64_t d = 0; d <= S; ++d) put<int64_t>(doc + 8 * d, static_cast<int64_t>(d));
  if (std::rename(tmp_bin_.c_str(), (prefix_ + ".bin").c_str()) != 0)
    user_error("cannot rename '", tmp_bin_, "' to '", prefix_, ".bin': ", std::strerror(errno));
  finished_ = true;
  write_file_atomic(prefix_ + ".idx", idx.data(), idx.size());
}

// ---- llm.c --------------------------------------------------------------------------------------

MappedTokens open_llmc_shard(const std::string& path) {
  auto f = MappedFile::open(path, "llm.c token shard");
  if (f->size() < kLlmcHeaderBytes)
    user_error("llm.c token shard '", path, "' is truncated: ", f->size(), " bytes, shorter than the ",
               kLlmcHeaderBytes, "-byte header");
  const int32_t magic = get<int32_t>(f->data()), version = get<int32_t>(f->data() + 4);
  const int32_t count = get<int32_t>(f->data() + 8);
  TokenDtype dtype;
  if (magic == kLlmcMagicU16) {
    if (version != kLlmcVersionU16)
      user_error("llm.c token shard '", path, "' has version ", version, " with magic ", magic,
                 "; supported: version 1 (uint16 tokens, magic 20240520) and 7 (uint32 tokens, magic 20240801)");
    dtype = TokenDtype::kU16;
  } else if (magic == kLlmcMagicU32) {
    if (version != kLlmcVersionU32)
      user_error("llm.c token shard '", path, "' has version ", version, " with magic ", magic,
                 "; supported: version 1 (uint16 tokens, magic 20240520) and 7 (uint32 tokens, magic 20240801)");
    dtype = TokenDtype::kU32;
  } else {
    user_error("'", path, "' is not an llm.c token shard (bad magic ", magic, "; expected 20240520 or 20240801)");
  }
  if (count < 0) user_error("llm.c token shard '", path, "' is corrupt: negative token count ", count);
  const uint64_t expected = kLlmcHeaderBytes + uint64_t(count) * dtype_size(dtype);
  if (f->size() != expected)
    user_error("llm.c token shard '", path, "' is truncated or damaged: its header says ", count, " ",
               dtype_name(dtype), " tokens (", expected, " bytes), the file has ", f->size());
  return MappedTokens(f, dtype, kLlmcHeaderBytes, uint64_t(count));
}

void write_llmc_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t vocab_size) {
  if (tokens.size() > uint64_t(std::numeric_limits<int32_t>::max()))
    user_error("llm.c shard '", path, "' would hold ", tokens.size(),
               " tokens; the format's int32 token count allows at most 2147483647 (lower --shard-tokens)");
  const bool u16 = vocab_size <= 65536;
  const int isz = u16 ? 2 : 4;
  std::vector<uint8_t> buf(kLlmcHeaderBytes + tokens.size() * isz, 0);
  put<int32_t>(buf.data(), u16 ? kLlmcMagicU16 : kLlmcMagicU32);
  put<int32_t>(buf.data() + 4, u16 ? kLlmcVersionU16 : kLlmcVersionU32);
  put<int32_t>(buf.data() + 8, static_cast<int32_t>(tokens.size()));
  uint8_t* p = buf.data() + kLlmcHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i) {
    LTRAIN_CHECK(tokens[i] < vocab_size, "token " << tokens[i] << " >= vocab " << vocab_size);
    if (u16) put<uint16_t>(p + 2 * i, static_cast<uint16_t>(tokens[i]));
    else put<uint32_t>(p + 4 * i, tokens[i]);
  }
  write_file_atomic(path, buf.data(), buf.size());
}

}  // namespace ltrain
