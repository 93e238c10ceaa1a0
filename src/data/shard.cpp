// Token shard writer and mmap reader. The format is little-endian; the code assumes a
// little-endian host (x86-64, aarch64) and checks that once at start-up.
#include "ltrain/data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/formats.h"

namespace ltrain {

namespace {

// Byte offsets of the header fields.
constexpr size_t kOffVersion = 8, kOffBytesPerToken = 12, kOffNumTokens = 16, kOffNumDocs = 24,
                 kOffVocab = 32, kOffTokenCrc = 36, kOffIndexCrc = 40, kOffHeaderCrc = 44;

uint64_t align8(uint64_t x) { return (x + 7) & ~uint64_t(7); }

bool host_is_little_endian() {
  uint16_t x = 1;
  uint8_t b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}

template <class T>
void put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 const std::vector<uint64_t>& doc_starts, uint32_t vocab_size) {
  LTRAIN_CHECK(host_is_little_endian(), "token shards are little-endian");
  LTRAIN_CHECK(vocab_size > 0);
  for (size_t i = 0; i < doc_starts.size(); ++i) {
    LTRAIN_CHECK(doc_starts[i] < tokens.size(), "doc start " << doc_starts[i] << " >= " << tokens.size());
    LTRAIN_CHECK(i == 0 ? doc_starts[0] == 0 : doc_starts[i] > doc_starts[i - 1],
                 "document starts must begin at 0 and increase");
  }
  const int bpt = shard_bytes_per_token(vocab_size);
  const uint64_t token_bytes = tokens.size() * bpt;
  const uint64_t index_offset = kShardHeaderBytes + align8(token_bytes);
  std::vector<uint8_t> buf(index_offset + doc_starts.size() * 8, 0);

  uint8_t* tok = buf.data() + kShardHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i) {
    LTRAIN_CHECK(tokens[i] < vocab_size, "token " << tokens[i] << " at " << i << " >= vocab " << vocab_size);
    if (bpt == 2) put<uint16_t>(tok + 2 * i, static_cast<uint16_t>(tokens[i]));
    else put<uint32_t>(tok + 4 * i, tokens[i]);
  }
  if (!doc_starts.empty()) std::memcpy(buf.data() + index_offset, doc_starts.data(), doc_starts.size() * 8);

  uint8_t* h = buf.data();
  std::memcpy(h, kShardMagic, 8);
  put<uint32_t>(h + kOffVersion, kShardVersion);
  put<uint32_t>(h + kOffBytesPerToken, static_cast<uint32_t>(bpt));
  put<uint64_t>(h + kOffNumTokens, tokens.size());
  put<uint64_t>(h + kOffNumDocs, doc_starts.size());
  put<uint32_t>(h + kOffVocab, vocab_size);
  put<uint32_t>(h + kOffTokenCrc, crc32(tok, token_bytes));
  put<uint32_t>(h + kOffIndexCrc, crc32(buf.data() + index_offset, doc_starts.size() * 8));
  put<uint32_t>(h + kOffHeaderCrc, crc32(h, kOffHeaderCrc));
  write_file_atomic(path, buf.data(), buf.size());
}

TokenShard TokenShard::open(const std::string& path, bool verify_checksum) {
  LTRAIN_CHECK(host_is_little_endian(), "token shards are little-endian");
  TokenShard s;
  s.path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    if (errno == ENOENT) user_error("token shard not found: '", path, "'");
    user_error("cannot open token shard '", path, "': ", std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    user_error("token shard '", path, "' is not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kShardHeaderBytes) {
    ::close(fd);
    user_error("token shard '", path, "' is truncated: ", size, " bytes, shorter than the ",
               kShardHeaderBytes, "-byte header");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) user_error("cannot map token shard '", path, "': ", std::strerror(errno));
  s.map_ = static_cast<const uint8_t*>(m);
  s.map_size_ = size;
  // From here `s` owns the mapping, so any user_error below unmaps it.

  const uint8_t* h = s.map_;
  if (std::memcmp(h, kShardMagic, 8) != 0)
    user_error("'", path, "' is not an ltrain token shard (bad magic; expected \"LTRAINTK\")");
  uint32_t version = get<uint32_t>(h + kOffVersion);
  if (version != kShardVersion)
    user_error("token shard '", path, "' has format version ", version, "; this ltrain reads version ",
               kShardVersion, " (re-run `ltrain prepare`)");
  uint32_t bpt = get<uint32_t>(h + kOffBytesPerToken);
  if (bpt != 2 && bpt != 4)
    user_error("token shard '", path, "' has bad bytes per token ", bpt, " (expected 2 or 4)");
  if (get<uint32_t>(h + kOffHeaderCrc) != crc32(h, kOffHeaderCrc))
    user_error("token shard '", path, "' is corrupt: header checksum mismatch");
  s.bytes_per_token_ = static_cast<int>(bpt);
  s.num_tokens_ = get<uint64_t>(h + kOffNumTokens);
  s.num_docs_ = get<uint64_t>(h + kOffNumDocs);
  s.vocab_size_ = get<uint32_t>(h + kOffVocab);
  if (s.vocab_size_ == 0 || static_cast<int>(bpt) != shard_bytes_per_token(s.vocab_size_))
    user_error("token shard '", path, "' has ", bpt, " bytes per token, which does not fit vocab size ",
               s.vocab_size_);
  // Guard the size arithmetic against absurd header values before multiplying.
  const uint64_t limit = uint64_t(1) << 56;
  if (s.num_tokens_ > limit || s.num_docs_ > limit)
    user_error("token shard '", path, "' is corrupt: header claims ", s.num_tokens_, " tokens and ",
               s.num_docs_, " documents");
  const uint64_t token_bytes = s.num_tokens_ * bpt;
  const uint64_t index_offset = kShardHeaderBytes + align8(token_bytes);
  const uint64_t expected = index_offset + s.num_docs_ * 8;
  if (size != expected)
    user_error("token shard '", path, "' is truncated or damaged: header says ", expected,
               " bytes, file has ", size);
  s.tokens_ = s.map_ + kShardHeaderBytes;
  s.doc_index_ = s.map_ + index_offset;

  if (get<uint32_t>(h + kOffIndexCrc) != crc32(s.doc_index_, s.num_docs_ * 8))
    user_error("token shard '", path, "' is corrupt: document index checksum mismatch");
  for (uint64_t i = 0; i < s.num_docs_; ++i) {
    uint64_t d = s.doc_start(i);
    bool ok = d < s.num_tokens_ && (i == 0 ? d == 0 : d > s.doc_start(i - 1));
    if (!ok)
      user_error("token shard '", path, "' is corrupt: document ", i, " starts at ", d,
                 " (starts must begin at 0, increase, and stay below ", s.num_tokens_, ")");
  }
  if (verify_checksum) {
    if (get<uint32_t>(h + kOffTokenCrc) != crc32(s.tokens_, token_bytes))
      user_error("token shard '", path, "' is corrupt: token checksum mismatch");
    for (uint64_t i = 0; i < s.num_tokens_; ++i) {
      uint32_t t = s.token(i);
      if (t >= s.vocab_size_)
        user_error("token shard '", path, "' is corrupt: token ", i, " is ", t, ", not below vocab size ",
                   s.vocab_size_);
    }
  }
  return s;
}

TokenShard::TokenShard(TokenShard&& o) noexcept { *this = std::move(o); }

TokenShard& TokenShard::operator=(TokenShard&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_size_ = o.map_size_;
    tokens_ = o.tokens_;
    doc_index_ = o.doc_index_;
    num_tokens_ = o.num_tokens_;
    num_docs_ = o.num_docs_;
    vocab_size_ = o.vocab_size_;
    bytes_per_token_ = o.bytes_per_token_;
    o.map_ = nullptr;
    o.map_size_ = 0;
    o.tokens_ = o.doc_index_ = nullptr;
  }
  return *this;
}

TokenShard::~TokenShard() { release(); }

void TokenShard::release() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
  map_ = nullptr;
}

uint64_t TokenShard::doc_start(uint64_t i) const {
  LTRAIN_CHECK(i < num_docs_, "document " << i << " of " << num_docs_ << " in " << path_);
  return get<uint64_t>(doc_index_ + 8 * i);
}

uint32_t TokenShard::token(uint64_t i) const {
  LTRAIN_CHECK(i < num_tokens_, "token " << i << " of " << num_tokens_ << " in " << path_);
  return bytes_per_token_ == 2 ? get<uint16_t>(tokens_ + 2 * i) : get<uint32_t>(tokens_ + 4 * i);
}

void TokenShard::read(uint64_t start, uint64_t n, int32_t* out) const {
  LTRAIN_CHECK(start <= num_tokens_ && n <= num_tokens_ - start,
               "read [" << start << ", " << start + n << ") of " << num_tokens_ << " in " << path_);
  if (bytes_per_token_ == 2) {
    const uint8_t* p = tokens_ + 2 * start;
    for (uint64_t i = 0; i < n; ++i) out[i] = get<uint16_t>(p + 2 * i);
  } else {
    const uint8_t* p = tokens_ + 4 * start;
    for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(get<uint32_t>(p + 4 * i));
  }
}


// ---- loss masks ---------------------------------------------------------------------------------

namespace {
constexpr size_t kMaskOffVersion = 8, kMaskOffReserved = 12, kMaskOffNumTokens = 16, kMaskOffCrc = 24,
                 kMaskOffHeaderCrc = 28;
}  // namespace

std::string mask_path_for_shard(const std::string& shard_path) {
  const std::string ext = ".bin";
  if (shard_path.size() >= ext.size() && shard_path.compare(shard_path.size() - ext.size(), ext.size(), ext) == 0)
    return shard_path.substr(0, shard_path.size() - ext.size()) + ".mask";
  return shard_path + ".mask";
}

void write_mask_file(const std::string& path, const std::vector<uint8_t>& mask) {
  LTRAIN_CHECK(host_is_little_endian(), "mask files are little-endian");
  std::vector<uint8_t> buf(kMaskHeaderBytes + mask.size(), 0);
  for (size_t i = 0; i < mask.size(); ++i) {
    LTRAIN_CHECK(mask[i] <= 1, "mask byte " << int(mask[i]) << " at " << i);
    buf[kMaskHeaderBytes + i] = mask[i];
  }
  uint8_t* h = buf.data();
  std::memcpy(h, kMaskMagic, 8);
  put<uint32_t>(h + kMaskOffVersion, kMaskVersion);
  put<uint32_t>(h + kMaskOffReserved, 0);
  put<uint64_t>(h + kMaskOffNumTokens, mask.size());
  put<uint32_t>(h + kMaskOffCrc, crc32(buf.data() + kMaskHeaderBytes, mask.size()));
  put<uint32_t>(h + kMaskOffHeaderCrc, crc32(h, kMaskOffHeaderCrc));
  write_file_atomic(path, buf.data(), buf.size());
}

LossMask LossMask::open(const std::string& path, uint64_t expected_tokens, bool verify_checksum) {
  LTRAIN_CHECK(host_is_little_endian(), "mask files are little-endian");
  LossMask m;
  m.path_ = path;
  m.file_ = MappedFile::open(path, "loss mask file");
  const uint8_t* h = m.file_->data();
  const uint64_t size = m.file_->size();
  if (size < kMaskHeaderBytes)
    user_error("loss mask file '", path, "' is truncated: ", size, " bytes, shorter than the ", kMaskHeaderBytes,
               "-byte header");
  if (std::memcmp(h, kMaskMagic, 8) != 0)
    user_error("'", path, "' is not an ltrain loss mask file (bad magic; expected \"LTRNMASK\")");
  const uint32_t version = get<uint32_t>(h + kMaskOffVersion);
  if (version != kMaskVersion)
    user_error("loss mask file '", path, "' has format version ", version, "; this ltrain reads version ",
               kMaskVersion, " (re-run `ltrain prepare --sft`)");
  if (get<uint32_t>(h + kMaskOffHeaderCrc) != crc32(h, kMaskOffHeaderCrc))
    user_error("loss mask file '", path, "' is corrupt: header checksum mismatch");
  m.num_tokens_ = get<uint64_t>(h + kMaskOffNumTokens);
  if (m.num_tokens_ != expected_tokens)
    user_error("loss mask file '", path, "' holds ", m.num_tokens_, " mask bytes, but its shard holds ",
               expected_tokens, " tokens (re-run `ltrain prepare --sft`)");
  if (size != kMaskHeaderBytes + m.num_tokens_)
    user_error("loss mask file '", path, "' is truncated or damaged: header says ", kMaskHeaderBytes + m.num_tokens_,
               " bytes, file has ", size);
  if (verify_checksum) {
    const uint8_t* bytes = h + kMaskHeaderBytes;
    if (get<uint32_t>(h + kMaskOffCrc) != crc32(bytes, m.num_tokens_))
      user_error("loss mask file '", path, "' is corrupt: mask checksum mismatch");
    for (uint64_t i = 0; i < m.num_tokens_; ++i)
      if (bytes[i] > 1)
        user_error("loss mask file '", path, "' is corrupt: byte ", i, " is ", int(bytes[i]), ", not 0 or 1");
  }
  return m;
}

void LossMask::read(uint64_t start, uint64_t n, uint8_t* out) const {
  LTRAIN_CHECK(start + n <= num_tokens_, "mask bytes [" << start << ", " << start + n << ") of " << num_tokens_
                                                          << " in " << path_);
  if (n) std::memcpy(out, file_->data() + kMaskHeaderBytes + start, n);
}

}  // namespace ltrain
