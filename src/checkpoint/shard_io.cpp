#include "checkpoint/shard_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {
namespace ckpt {

FileReader::~FileReader() {
  for (auto& [name, f] : files_) std::fclose(f.first);
}

FILE* FileReader::check(const Piece& p, const std::string& tensor) {
  const std::string path = path_join(dir_, p.file);
  auto it = files_.find(p.file);
  if (it == files_.end()) {
    if (!file_exists(path)) user_error("checkpoint file missing: '", path, "' (it holds part of tensor '", tensor, "')");
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) user_error("cannot read checkpoint file '", path, "'");
    it = files_.emplace(p.file, std::make_pair(f, file_size(path))).first;
  }
  const uint64_t size = it->second.second;
  if (p.offset > size || p.bytes > size - p.offset)
    user_error(path, ": truncated or inconsistent (tensor '", tensor, "' needs ", p.bytes, " bytes at offset ",
               p.offset, ", file has ", size, ")");
  return it->second.first;
}

void FileReader::read(const Piece& p, const std::string& tensor, std::vector<char>& buf) {
  const std::string path = path_join(dir_, p.file);
  FILE* f = check(p, tensor);
  buf.resize(size_t(p.bytes));
  if (fseeko(f, off_t(p.offset), SEEK_SET) != 0 || std::fread(buf.data(), 1, buf.size(), f) != buf.size())
    user_error(path, ": cannot read ", p.bytes, " bytes at offset ", p.offset, " (tensor '", tensor, "')");
  if (crc32(buf.data(), buf.size()) != p.crc)
    user_error(path, ": corrupt: checksum mismatch in tensor '", tensor, "'");
}

namespace {

// Copies what piece `p` (its values in `src`) shares with slice `dst` of the same tensor into
// `out` (dst's values, row-major in dst's shape).
void copy_overlap(const Shape& shape, const Piece& p, const float* src, const TensorSlice& dst, float* out) {
  const TensorSlice& s = p.slice;
  const int64_t K = cols_of(shape);
  if (s.dim == 0 && dst.dim == 0) {  // both whole rows: one interval of the flat tensor
    const int64_t g0 = std::max(s.start * K + p.begin, dst.start * K);
    const int64_t g1 = std::min(s.start * K + p.end, (dst.start + dst.length) * K);
    if (g0 < g1)
      std::memcpy(out + (g0 - dst.start * K), src + (g0 - s.start * K - p.begin), size_t(g1 - g0) * sizeof(float));
    return;
  }
  const int64_t sc = slice_cols(shape, s), dc = slice_cols(shape, dst);
  for (int64_t r = p.begin / sc; r * sc < p.end; ++r) {
    const int64_t c0 = std::max(p.begin, r * sc) - r * sc, c1 = std::min(p.end, (r + 1) * sc) - r * sc;
    const int64_t grow = s.dim == 0 ? s.start + r : r;
    int64_t gc0 = s.dim == 1 ? s.start + c0 : c0, gc1 = gc0 + (c1 - c0);
    const float* from = src + (r * sc + c0 - p.begin);
    int64_t drow;
    if (dst.dim == 0) {
      if (grow < dst.start || grow >= dst.start + dst.length) continue;
      drow = grow - dst.start;
    } else {
      drow = grow;
      const int64_t lo = std::max(gc0, dst.start), hi = std::min(gc1, dst.start + dst.length);
      if (lo >= hi) continue;
      from += lo - gc0;
      gc0 = lo - dst.start;
      gc1 = hi - dst.start;
    }
    std::memcpy(out + drow * dc + gc0, from, size_t(gc1 - gc0) * sizeof(float));
  }
}

// Whether piece p can share elements with slice dst (a cheap test to skip reading it).
bool may_overlap(const Shape& shape, const Piece& p, const TensorSlice& dst) {
  const TensorSlice& s = p.slice;
  if (s.dim != dst.dim) return true;
  if (s.start + s.length <= dst.start || dst.start + dst.length <= s.start) return false;
  if (s.dim == 0) {
    const int64_t K = cols_of(shape);
    return s.start * K + p.begin < (dst.start + dst.length) * K && dst.start * K < s.start * K + p.end;
  }
  return true;
}

}  // namespace

std::vector<float> read_slice(FileReader& files, const TensorEntry& t, const TensorSlice& dst) {
  // Every piece lies inside its file before anything is allocated: the files bound the size.
  for (const Piece& p : t.pieces)
    if (may_overlap(t.shape, p, dst)) files.check(p, t.name);
  std::vector<float> out(size_t(slice_numel(t.shape, dst)));
  std::vector<char> buf;
  std::vector<float> vals;
  for (const Piece& p : t.pieces) {
    if (!may_overlap(t.shape, p, dst)) continue;
    files.read(p, t.name, buf);
    vals.resize(buf.size() / sizeof(float));
    std::memcpy(vals.data(), buf.data(), buf.size());
    copy_overlap(t.shape, p, vals.data(), dst, out.data());
  }
  return out;
}

nlohmann::json write_shard_file(const std::string& dir, const std::string& file,
                                const std::vector<PieceSource>& pieces, nlohmann::json who,
                                bool fail_midway) {
  nlohmann::json entries = nlohmann::json::array();
  uint64_t offset = 0;
  uint32_t file_crc = 0;
  for (const auto& p : pieces) {
    const uint64_t bytes = uint64_t(p.end - p.begin) * sizeof(float);
    entries.push_back({{"name", p.name},
                       {"slice", {{"dim", p.slice.dim}, {"start", p.slice.start}, {"length", p.slice.length}}},
                       {"elements", {p.begin, p.end}},
                       {"offset", offset},
                       {"bytes", bytes},
                       {"crc32", crc32(p.data, bytes)}});
    file_crc = crc32(p.data, bytes, file_crc);
    offset += bytes;
  }
  write_file_atomic(path_join(dir, file), [&](FILE* f) {
    for (const auto& p : pieces) {
      const size_t bytes = size_t(p.end - p.begin) * sizeof(float);
      if (bytes && std::fwrite(p.data, 1, bytes, f) != bytes) return false;
      if (fail_midway) {
        errno = ENOSPC;
        return false;
      }
    }
    return true;
  });
  who["file"] = file;
  who["bytes"] = offset;
  who["crc32"] = file_crc;
  who["pieces"] = std::move(entries);
  return who;
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace ckpt
}  // namespace ltrain
