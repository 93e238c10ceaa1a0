// Shard I/O: reading pieces of tensors from a checkpoint's shard files (byte ranges checked
// against the files and their CRC-32s, slices assembled from the pieces that overlap them) and
// writing one rank's shard file. Internal to src/checkpoint/ (manifest.h has the slice model).
#pragma once
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/manifest.h"

namespace ltrain {
namespace ckpt {

// Open files of one checkpoint, read by byte range.
class FileReader {
 public:
  explicit FileReader(std::string dir) : dir_(std::move(dir)) {}
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;
  // Opens the piece's file and checks that the piece lies inside it.
  FILE* check(const Piece& p, const std::string& tensor);
  // The bytes of a piece, checked against the file's size and the piece's CRC-32.
  void read(const Piece& p, const std::string& tensor, std::vector<char>& buf);

 private:
  std::string dir_;
  std::map<std::string, std::pair<FILE*, uint64_t>> files_;
};

// Slice dst of tensor t, assembled from the pieces (which tile t: check_tiling).
std::vector<float> read_slice(FileReader& files, const TensorEntry& t, const TensorSlice& dst);

// One piece this rank writes: elements [begin, end) of its slice of tensor `name`.
struct PieceSource {
  std::string name;
  TensorSlice slice;
  int64_t begin, end;  // elements of the slice
  const float* data;   // end - begin values
};

// Writes one shard file (flushed, fsync'd, renamed); returns its manifest entry: `who` plus the
// file name, its pieces, and its size and CRC-32 (which go to "files"). UserError naming the file
// when a write fails. fail_midway (tests' fault injection): the write stops after the first piece
// with ENOSPC, as on a full disk.
nlohmann::json write_shard_file(const std::string& dir, const std::string& file,
                                const std::vector<PieceSource>& pieces, nlohmann::json who,
                                bool fail_midway = false);
// Makes a directory's entries (a rename, a new file) durable.
void fsync_directory(const std::string& dir);

}  // namespace ckpt
}  // namespace ltrain
