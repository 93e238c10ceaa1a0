// The checkpoint manifest (meta.json, docs/checkpoint-format.md): its constants and names, the
// slice model of the shard files' pieces, and parsing and validating it. Internal to
// src/checkpoint/: the public API is include/ltrain/checkpoint/checkpoint.h.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/check.h"
#include "ltrain/core/param_set.h"

namespace ltrain {
namespace ckpt {

constexpr const char* kFormat = "ltrain-checkpoint";
constexpr int kVersion = 2;        // written
constexpr int kOldestVersion = 1;  // read: 1 (whole tensors in model_00000.bin) and 2 (per-rank shards)

// step_NNNNNNNN, and KIND_RRRRR.bin for the shard files of world rank RRRRR.
std::string step_dir_name(int step);
std::string rank_file_name(const char* kind, int rank);

// A manifest field of the wrong type or a missing one surfaces from nlohmann::json as an exception;
// to the user it is a malformed file.
template <class F>
auto manifest_errors(const std::string& meta_path, F f) -> decltype(f()) {
  try {
    return f();
  } catch (const nlohmann::json::exception& e) {
    user_error(meta_path, ": malformed checkpoint manifest (", e.what(), ")");
  }
}

// A tensor entry's shape: 1 to Shape::kMaxDims positive dimensions, at most 2^40 elements.
Shape parse_shape(const nlohmann::json& j, const std::string& where);
nlohmann::json shape_json(const Shape& s);
// A non-negative integer field below 2^62.
int64_t get_count(const nlohmann::json& j, const char* key, const std::string& where);
// A file named by the manifest: a plain name inside the checkpoint directory.
std::string checked_file_name(const nlohmann::json& v, const std::string& where);

// ---- the slice model ----------------------------------------------------------------------------
// A tensor of shape (R, ...) is viewed as a matrix of R rows and K = numel / R columns. A slice is
// [start, start + length) along dim 0 (rows) or dim 1 (columns of a 2-D tensor); a piece is the
// element range [begin, end) of a slice, row-major in the slice's own shape.

struct Piece {
  std::string file;  // inside the checkpoint directory
  TensorSlice slice;
  int64_t begin = 0, end = 0;  // elements of the slice
  uint64_t offset = 0, bytes = 0;
  uint32_t crc = 0;
};

struct TensorEntry {
  std::string name;
  Shape shape;
  std::vector<Piece> pieces;
};

inline int64_t rows_of(const Shape& s) { return s.dims[0]; }
inline int64_t cols_of(const Shape& s) { return s.numel() / s.dims[0]; }
inline int64_t slice_rows(const Shape& s, const TensorSlice& sl) { return sl.dim == 0 ? sl.length : rows_of(s); }
inline int64_t slice_cols(const Shape& s, const TensorSlice& sl) { return sl.dim == 0 ? cols_of(s) : sl.length; }
inline int64_t slice_numel(const Shape& s, const TensorSlice& sl) { return slice_rows(s, sl) * slice_cols(s, sl); }

// Every piece well-formed, and the pieces tile the tensor exactly: the slices partition the split
// dimension, and each slice's pieces partition its elements.
void check_tiling(const TensorEntry& t, const std::string& meta_path);
// The tensors of a section with their pieces, checked (check_tiling), in manifest order.
std::vector<TensorEntry> parse_section(const CheckpointInfo& info, const std::string& section);

// Writing: the manifest's fields that do not depend on the files, and a section's tensor list
// (global names plus `suffix`, shapes, dtype f32, the tensor-parallel split dimension).
struct ManifestTensor {
  std::string name;
  Shape shape;
  int split_dim = -1;
  int order = 0;  // place in the whole model's order
};
nlohmann::json manifest_head(const TrainState& state, const Config& cfg);
nlohmann::json tensor_list(const std::vector<ManifestTensor>& tensors, const std::string& suffix);

}  // namespace ckpt
}  // namespace ltrain
