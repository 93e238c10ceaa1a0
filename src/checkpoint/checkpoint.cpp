#include "ltrain/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

namespace {

constexpr const char* kFormat = "ltrain-checkpoint";
constexpr int kVersion = 2;        // written
constexpr int kOldestVersion = 1;  // read: 1 (whole tensors in model_00000.bin) and 2 (per-rank shards)

std::string step_dir_name(int step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08d", step);
  return buf;
}

std::string rank_file_name(const char* kind, int rank) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s_%05d.bin", kind, rank);
  return buf;
}

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
Shape parse_shape(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array() || j.empty() || j.size() > size_t(Shape::kMaxDims))
    user_error(where, ": a tensor shape must be a list of 1 to ", Shape::kMaxDims,
               " dimensions, got ", j.dump());
  Shape s;
  int64_t n = 1;
  for (const auto& d : j) {
    if (!d.is_number_integer() || d.get<int64_t>() <= 0 ||
        d.get<int64_t>() > (int64_t(1) << 40) / n)
      user_error(where, ": tensor shape ", j.dump(),
                 " has a dimension that is not a positive integer or is too large");
    n *= d.get<int64_t>();
    s.dims[s.ndim++] = d.get<int64_t>();
  }
  return s;
}

nlohmann::json shape_json(const Shape& s) {
  nlohmann::json j = nlohmann::json::array();
  for (int i = 0; i < s.ndim; ++i) j.push_back(s.dims[i]);
  return j;
}

// A non-negative integer field below 2^62.
int64_t get_count(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = j.at(key);
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0) ||
      v.get<uint64_t>() >= (uint64_t(1) << 62))
    user_error(where, ": '", key, "' must be a non-negative integer, got ", v.dump());
  return v.get<int64_t>();
}

// A file named by the manifest: a plain name inside the checkpoint directory.
std::string checked_file_name(const nlohmann::json& v, const std::string& where) {
  const std::string f = v.get<std::string>();
  if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos || f.find('\\') != std::string::npos)
    user_error(where, ": file name '", f, "' must be a plain name inside the checkpoint directory");
  return f;
}

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

int64_t rows_of(const Shape& s) { return s.dims[0]; }
int64_t cols_of(const Shape& s) { return s.numel() / s.dims[0]; }
int64_t slice_rows(const Shape& s, const TensorSlice& sl) { return sl.dim == 0 ? sl.length : rows_of(s); }
int64_t slice_cols(const Shape& s, const TensorSlice& sl) { return sl.dim == 0 ? cols_of(s) : sl.length; }
int64_t slice_numel(const Shape& s, const TensorSlice& sl) { return slice_rows(s, sl) * slice_cols(s, sl); }

// Every piece well-formed, and the pieces tile the tensor exactly: the slices partition the split
// dimension, and each slice's pieces partition its elements.
void check_tiling(const TensorEntry& t, const std::string& meta_path) {
  const std::string what = meta_path + ": tensor '" + t.name + "'";
  if (t.pieces.empty()) user_error(what, " is in no shard file");
  const int dim = t.pieces[0].slice.dim;
  for (const Piece& p : t.pieces) {
    const TensorSlice& s = p.slice;
    if (s.dim != 0 && !(s.dim == 1 && t.shape.ndim == 2))
      user_error(what, " in '", p.file, "': slice dimension ", s.dim, " is not 0, or 1 of a 2-D tensor");
    const int64_t extent = s.dim == 0 ? rows_of(t.shape) : cols_of(t.shape);
    if (s.start < 0 || s.length <= 0 || s.start > extent || s.length > extent - s.start)
      user_error(what, " in '", p.file, "': slice [", s.start, ", ", s.start + s.length, ") of dimension ",
                 s.dim, " is outside its size ", extent);
    if (p.begin < 0 || p.end <= p.begin || p.end > slice_numel(t.shape, s))
      user_error(what, " in '", p.file, "': element range [", p.begin, ", ", p.end, ") is outside its slice of ",
                 slice_numel(t.shape, s), " elements");
    if (p.bytes != uint64_t(p.end - p.begin) * 4)
      user_error(what, " in '", p.file, "': ", p.bytes, " bytes for ", p.end - p.begin, " fp32 elements");
    if (s.dim != dim) user_error(what, ": its shard files split it along different dimensions");
  }
  // start -> (length, pieces)
  std::map<int64_t, std::pair<int64_t, std::vector<const Piece*>>> slices;
  for (const Piece& p : t.pieces) {
    auto& e = slices[p.slice.start];
    if (e.second.empty()) e.first = p.slice.length;
    if (e.first != p.slice.length) user_error(what, ": its shard files hold overlapping slices");
    e.second.push_back(&p);
  }
  int64_t at = 0;
  for (auto& [start, e] : slices) {
    if (start != at)
      user_error(what, ": its shard files ", start > at ? "miss" : "overlap at", " indices from ", at,
                 " of dimension ", dim);
    at = start + e.first;
    std::sort(e.second.begin(), e.second.end(), [](const Piece* a, const Piece* b) { return a->begin < b->begin; });
    int64_t el = 0;
    for (const Piece* p : e.second) {
      if (p->begin != el)
        user_error(what, ": its shard files ", p->begin > el ? "miss" : "overlap at", " elements from ", el,
                   " of slice [", start, ", ", start + e.first, ")");
      el = p->end;
    }
    if (el != slice_numel(t.shape, e.second[0]->slice))
      user_error(what, ": its shard files miss elements from ", el, " of slice [", start, ", ", start + e.first, ")");
  }
  const int64_t extent = dim == 0 ? rows_of(t.shape) : cols_of(t.shape);
  if (at != extent) user_error(what, ": its shard files miss indices from ", at, " of dimension ", dim);
}

// The tensors of a section with their pieces, checked (check_tiling), in manifest order.
std::vector<TensorEntry> parse_section(const CheckpointInfo& info, const std::string& section) {
  const std::string meta_path = path_join(info.dir, "meta.json");
  return manifest_errors(meta_path, [&] {
    const nlohmann::json& meta = info.meta;
    if (!meta.contains(section) || !meta[section].is_array())
      user_error(meta_path, ": has no '", section, "' section");
    std::vector<TensorEntry> out;
    std::map<std::string, size_t> index;
    for (const auto& e : meta[section]) {
      TensorEntry t;
      t.name = e.at("name").get<std::string>();
      t.shape = parse_shape(e.at("shape"), meta_path);
      if (e.contains("dtype") && e["dtype"] != "f32")
        user_error(meta_path, ": tensor '", t.name, "' has dtype ", e["dtype"].dump(), "; this build reads f32");
      if (!index.emplace(t.name, out.size()).second)
        user_error(meta_path, ": tensor '", t.name, "' is listed twice");
      if (meta.at("version").get<int>() == 1) {  // one whole tensor in one file
        Piece p;
        p.file = checked_file_name(e.at("file"), meta_path);
        p.slice = {0, 0, t.shape.dims[0]};
        p.begin = 0;
        p.end = t.shape.numel();
        p.offset = uint64_t(get_count(e, "offset", meta_path));
        p.bytes = uint64_t(get_count(e, "bytes", meta_path));
        p.crc = e.at("crc32").get<uint32_t>();
        t.pieces.push_back(p);
      }
      out.push_back(std::move(t));
    }
    if (meta.at("version").get<int>() >= 2) {
      if (!meta.contains("shards") || !meta["shards"].is_array())
        user_error(meta_path, ": has no 'shards' list");
      for (const auto& f : meta["shards"]) {
        const std::string file = checked_file_name(f.at("file"), meta_path);
        for (const auto& e : f.at("pieces")) {
          auto it = index.find(e.at("name").get<std::string>());
          if (it == index.end()) continue;  // a tensor of the other section
          Piece p;
          p.file = file;
          const auto& s = e.at("slice");
          const auto& dim = s.at("dim");
          if (!dim.is_number_integer() || dim.get<int64_t>() < 0 || dim.get<int64_t>() > 1)
            user_error(meta_path, ": tensor '", it->first, "' in '", file, "': slice dimension ", dim.dump(),
                       " is not 0 or 1");
          p.slice.dim = dim.get<int>();
          p.slice.start = get_count(s, "start", meta_path);
          p.slice.length = get_count(s, "length", meta_path);
          const auto& el = e.at("elements");
          if (!el.is_array() || el.size() != 2)
            user_error(meta_path, ": tensor '", it->first, "' in '", file, "': 'elements' must be [begin, end]");
          for (const auto& x : el)
            if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<uint64_t>() >= (uint64_t(1) << 62))
              user_error(meta_path, ": tensor '", it->first, "' in '", file, "': 'elements' must be non-negative integers");
          p.begin = el[0].get<int64_t>();
          p.end = el[1].get<int64_t>();
          p.offset = uint64_t(get_count(e, "offset", meta_path));
          p.bytes = uint64_t(get_count(e, "bytes", meta_path));
          p.crc = e.at("crc32").get<uint32_t>();
          out[it->second].pieces.push_back(std::move(p));
        }
      }
    }
    for (const auto& t : out) check_tiling(t, meta_path);
    return out;
  });
}

// Open files of one checkpoint, read by byte range.
class FileReader {
 public:
  explicit FileReader(std::string dir) : dir_(std::move(dir)) {}
  ~FileReader() {
    for (auto& [name, f] : files_) std::fclose(f.first);
  }
  // Opens the piece's file and checks that the piece lies inside it.
  FILE* check(const Piece& p, const std::string& tensor) {
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
  // The bytes of a piece, checked against the file's size and the piece's CRC-32.
  void read(const Piece& p, const std::string& tensor, std::vector<char>& buf) {
    const std::string path = path_join(dir_, p.file);
    FILE* f = check(p, tensor);
    buf.resize(size_t(p.bytes));
    if (fseeko(f, off_t(p.offset), SEEK_SET) != 0 || std::fread(buf.data(), 1, buf.size(), f) != buf.size())
      user_error(path, ": cannot read ", p.bytes, " bytes at offset ", p.offset, " (tensor '", tensor, "')");
    if (crc32(buf.data(), buf.size()) != p.crc)
      user_error(path, ": corrupt: checksum mismatch in tensor '", tensor, "'");
  }

 private:
  std::string dir_;
  std::map<std::string, std::pair<FILE*, uint64_t>> files_;
};

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

// Slice dst of tensor t, assembled from the pieces (which tile t: check_tiling).
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

// Checks the model's parameters (plus `suffix`) against a section; returns name -> entry.
std::map<std::string, const TensorEntry*> match_model(const std::vector<TensorEntry>& entries,
                                                     const LlamaModel& model, const std::string& suffix,
                                                     const std::string& meta_path) {
  std::map<std::string, const TensorEntry*> by_name, out;
  for (const auto& e : entries) by_name[e.name] = &e;
  for (const auto& p : model.params()) {
    const std::string name = p.name + suffix;
    auto it = by_name.find(name);
    if (it == by_name.end()) user_error(meta_path, ": tensor '", name, "' is missing");
    if (!(it->second->shape == p.global_shape))
      user_error(meta_path, ": tensor '", name, "' has shape ", it->second->shape.str(), " but the model needs ",
                 p.global_shape.str());
    out[p.name] = it->second;
  }
  return out;
}

// Reads this rank's slice of every parameter (plus `suffix`) from a section into `flat`, a buffer
// laid out like the parameters.
void read_into(const CheckpointInfo& info, const std::string& section, const std::string& suffix,
               LlamaModel& model, Tensor flat) {
  const std::string meta_path = path_join(info.dir, "meta.json");
  const std::vector<TensorEntry> entries = parse_section(info, section);
  const auto by_name = match_model(entries, model, suffix, meta_path);
  std::map<std::string, const NamedTensor*> params;
  for (const auto& p : model.params()) params[p.name] = &p;
  FileReader files(info.dir);
  std::vector<float> part;
  model.import_local(flat, [&](const std::string& name) -> const std::vector<float>& {
    part = read_slice(files, *by_name.at(name), model.parameters().local_slice(*params.at(name)));
    return part;
  });
}

// ---- writing ------------------------------------------------------------------------------------

struct PieceSource {
  std::string name;
  TensorSlice slice;
  int64_t begin, end;  // elements of the slice
  const float* data;   // end - begin values
};

// Writes one shard file (flushed, fsync'd, renamed); returns its manifest entry: `who` plus the
// file name, its pieces, and its size and CRC-32 (which go to "files").
nlohmann::json write_shard_file(const std::string& dir, const std::string& file,
                                const std::vector<PieceSource>& pieces, nlohmann::json who) {
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
    }
    return true;
  });
  who["file"] = file;
  who["bytes"] = offset;
  who["crc32"] = file_crc;
  who["pieces"] = std::move(entries);
  return who;
}

// Test hook (tests/scripts/test_resume_cli.sh): die between two files of the save of step N, as a
// kill -9 or a node failure during a save would.
void test_kill_during_save(int step) {
  if (const char* kill_at = std::getenv("LTRAIN_TEST_KILL_DURING_SAVE"); kill_at && std::atoi(kill_at) == step)
    std::raise(SIGKILL);
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Removes and recreates step_NNNNNNNN.tmp; returns {root, tmp dir, final dir}.
struct SaveDirs {
  std::string root, tmp, final_dir;
};
SaveDirs save_dirs(const std::string& run_dir, int step) {
  SaveDirs d;
  d.root = path_join(run_dir, "checkpoints");
  d.final_dir = path_join(d.root, step_dir_name(step));
  d.tmp = d.final_dir + ".tmp";
  return d;
}
void start_save(const SaveDirs& d) {
  make_dirs(d.root);
  remove_tree(d.tmp);
  make_dirs(d.tmp);
}

// The manifest's fields that do not depend on the files.
nlohmann::json manifest_head(const TrainState& state, const Config& cfg) {
  nlohmann::json meta;
  meta["format"] = kFormat;
  meta["version"] = kVersion;
  meta["step"] = state.step;
  meta["tokens"] = state.tokens;
  meta["lr_schedule"] = {{"step", state.step}, {"total_steps", cfg.train.steps}};
  meta["config"] = config_to_json(cfg);
  meta["layout"] = state.layout.is_object() ? state.layout : nlohmann::json::object();
  meta["data"] = state.data;
  if (!state.guard.is_null()) meta["guard"] = state.guard;
  return meta;
}

nlohmann::json tensor_list(const std::vector<std::pair<std::string, Shape>>& tensors,
                           const std::vector<int>& split_dims, const std::string& suffix) {
  nlohmann::json j = nlohmann::json::array();
  for (size_t i = 0; i < tensors.size(); ++i)
    j.push_back({{"name", tensors[i].first + suffix},
                 {"shape", shape_json(tensors[i].second)},
                 {"dtype", "f32"},
                 {"split_dim", split_dims[i]}});
  return j;
}

// Rank 0, once every rank's files are written: the tokenizer, meta.json (shards: every rank's
// file entries, in rank order), then the directory's rename and `latest`.
std::string finish_save(const SaveDirs& d, int step, nlohmann::json meta,
                        const std::vector<nlohmann::json>& rank_entries, const std::string& tokenizer_path) {
  nlohmann::json shards = nlohmann::json::array(), files = nlohmann::json::object(),
                 writers = nlohmann::json::array();
  for (const auto& entries : rank_entries) {
    for (auto e : entries) {
      if (writers.empty() || writers.back() != e["rank"]) writers.push_back(e["rank"]);
      files[e["file"].get<std::string>()] = {{"bytes", e["bytes"]}, {"crc32", e["crc32"]}};
      e.erase("bytes");
      e.erase("crc32");
      shards.push_back(std::move(e));
    }
  }
  meta["layout"]["writers"] = writers;
  if (!tokenizer_path.empty() && file_exists(tokenizer_path)) {
    const std::string tok = read_text_file(tokenizer_path);
    write_file_atomic(path_join(d.tmp, "tokenizer.model"), tok.data(), tok.size());
    files["tokenizer.model"] = {{"bytes", tok.size()}, {"crc32", crc32(tok.data(), tok.size())}};
    meta["tokenizer"] = "tokenizer.model";
  }
  meta["shards"] = std::move(shards);
  meta["files"] = std::move(files);
  write_text_file_atomic(path_join(d.tmp, "meta.json"), meta.dump(2) + "\n");
  fsync_directory(d.tmp);
  replace_directory(d.tmp, d.final_dir);
  write_text_file_atomic(path_join(d.root, "latest"), step_dir_name(step) + "\n");
  fsync_directory(d.root);
  return d.final_dir;
}

// Every rank's string, in rank order (host collectives: lengths, then padded int32 words).
std::vector<std::string> all_gather_strings(Communicator& c, const std::string& mine) {
  if (c.size() == 1) return {mine};
  const int64_t words = int64_t(c.max(double((mine.size() + 3) / 4 + 1)));
  std::vector<int32_t> send(size_t(words), 0), all(size_t(words) * size_t(c.size()));
  send[0] = int32_t(mine.size());
  std::memcpy(send.data() + 1, mine.data(), mine.size());
  c.all_gather(Tensor{all.data(), DType::kI32, Shape{words * c.size()}}, Tensor{send.data(), DType::kI32, Shape{words}});
  std::vector<std::string> out;
  for (int r = 0; r < c.size(); ++r) {
    const int32_t* w = all.data() + size_t(words) * size_t(r);
    out.emplace_back(reinterpret_cast<const char*>(w + 1), size_t(w[0]));
  }
  return out;
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            LlamaModel& model, AdamW& optimizer, Communicator& world,
                            const std::string& tokenizer_path) {
  const int P = model.tensor_parallel_size(), t_rank = model.parameters().tensor_parallel_rank();
  const int rank = world.rank();
  LTRAIN_CHECK(world.size() % P == 0 && rank % P == t_rank,
               "world rank " << rank << " is not data rank x " << P << " + tensor rank " << t_rank);
  const int d_rank = rank / P;
  const bool zero = optimizer.zero();
  const int64_t lo = optimizer.shard_begin(), n = optimizer.shard_size();
  LTRAIN_CHECK(!zero || lo == int64_t(d_rank) * n, "the ZeRO shard does not belong to data rank " << d_rank);
  // Without ZeRO the data-parallel replicas are identical: data rank 0 of each tensor group writes.
  const bool writes = zero || d_rank == 0;
  const SaveDirs d = save_dirs(run_dir, state.step);
  if (rank == 0) start_save(d);
  world.barrier();  // the directory exists before anyone writes into it

  nlohmann::json mine = nlohmann::json::array();
  std::vector<float> w, m, v;
  std::vector<PieceSource> wp, mp;
  if (writes) {
    w.resize(size_t(n));
    m.resize(size_t(n));
    v.resize(size_t(n));
    optimizer.export_shard(w.data(), m.data(), v.data());
    // This rank's element range [lo, lo + n) of the flat layout, cut along the tensors. A
    // replicated tensor (a norm) is identical on every tensor rank: tensor rank 0 writes it.
    for (int which = 0; which < 3; ++which)
      for (const auto& p : model.params()) {
        if (p.shard_dim < 0 && t_rank != 0) continue;
        const int64_t off = model.parameters().offset(p), b = std::max(lo, off), e = std::min(lo + n, off + p.tensor.numel());
        if (b >= e) continue;
        const float* src = (which == 0 ? w : which == 1 ? m : v).data() + (b - lo);
        const char* suffix = which == 0 ? "" : which == 1 ? ".exp_avg" : ".exp_avg_sq";
        (which == 0 ? wp : mp).push_back({p.name + suffix, model.parameters().local_slice(p), b - off, e - off, src});
      }
    const nlohmann::json who = {{"rank", rank}, {"data_rank", d_rank}, {"tensor_rank", t_rank}};
    mine.push_back(write_shard_file(d.tmp, rank_file_name("model", rank), wp, who));
    test_kill_during_save(state.step);
    mine.push_back(write_shard_file(d.tmp, rank_file_name("optim", rank), mp, who));
  } else {
    test_kill_during_save(state.step);
  }
  w = m = v = {};
  // Every rank's files are complete once its entries arrive (the gather is the barrier).
  const std::vector<std::string> all = all_gather_strings(world, mine.dump());
  if (rank == 0) {
    std::vector<nlohmann::json> entries;
    for (const auto& s : all) entries.push_back(nlohmann::json::parse(s));
    nlohmann::json meta = manifest_head(state, cfg);
    std::vector<std::pair<std::string, Shape>> tensors;
    std::vector<int> split;
    int64_t num_params = 0;
    for (const auto& p : model.params()) {
      tensors.emplace_back(p.name, p.global_shape);
      split.push_back(p.shard_dim);
      num_params += p.global_shape.numel();
    }
    meta["num_params"] = num_params;
    meta["layout"]["data"] = world.size() / P;
    meta["layout"]["tensor"] = P;
    meta["layout"]["zero"] = zero ? 1 : 0;
    meta["layout"]["writer_rule"] =
        zero ? "every rank: ZeRO-1 shards the master weights and moments over the data ranks"
             : "data rank 0 of each tensor-parallel group: the data-parallel replicas hold identical copies";
    meta["tensors"] = tensor_list(tensors, split, "");
    nlohmann::json opt = tensor_list(tensors, split, ".exp_avg");
    for (auto& e : tensor_list(tensors, split, ".exp_avg_sq")) opt.push_back(e);
    meta["optimizer"] = std::move(opt);
    finish_save(d, state.step, std::move(meta), entries, tokenizer_path);
  }
  world.barrier();  // complete (renamed, `latest` updated) on return
  return d.final_dir;
}

std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            const std::vector<HostTensor>& weights, const std::vector<HostTensor>* exp_avg,
                            const std::vector<HostTensor>* exp_avg_sq, const std::string& tokenizer_path) {
  const SaveDirs d = save_dirs(run_dir, state.step);
  start_save(d);
  auto whole = [](const std::vector<HostTensor>& ts, const char* suffix, std::vector<PieceSource>& out) {
    for (const auto& t : ts) {
      LTRAIN_CHECK(int64_t(t.data.size()) == t.shape.numel(), "tensor " << t.name);
      out.push_back({t.name + suffix, TensorSlice{0, 0, t.shape.dims[0]}, 0, t.shape.numel(), t.data.data()});
    }
  };
  const nlohmann::json who = {{"rank", 0}, {"data_rank", 0}, {"tensor_rank", 0}};
  nlohmann::json mine = nlohmann::json::array();
  std::vector<PieceSource> wp, mp;
  whole(weights, "", wp);
  mine.push_back(write_shard_file(d.tmp, rank_file_name("model", 0), wp, who));
  test_kill_during_save(state.step);
  const bool moments = exp_avg && exp_avg_sq;
  if (moments) {
    whole(*exp_avg, ".exp_avg", mp);
    whole(*exp_avg_sq, ".exp_avg_sq", mp);
    mine.push_back(write_shard_file(d.tmp, rank_file_name("optim", 0), mp, who));
  }
  nlohmann::json meta = manifest_head(state, cfg);
  std::vector<std::pair<std::string, Shape>> tensors;
  int64_t num_params = 0;
  for (const auto& t : weights) {
    tensors.emplace_back(t.name, t.shape);
    num_params += t.shape.numel();
  }
  const std::vector<int> split(tensors.size(), -1);
  meta["num_params"] = num_params;
  meta["layout"]["writer_rule"] = "one process wrote whole tensors";
  meta["tensors"] = tensor_list(tensors, split, "");
  if (moments) {
    nlohmann::json opt = tensor_list(tensors, split, ".exp_avg");
    for (auto& e : tensor_list(tensors, split, ".exp_avg_sq")) opt.push_back(e);
    meta["optimizer"] = std::move(opt);
  }
  return finish_save(d, state.step, std::move(meta), {mine}, tokenizer_path);
}

void verify_checkpoint(const CheckpointInfo& info, int part, int parts) {
  LTRAIN_CHECK(parts >= 1 && part >= 0 && part < parts, "verify part " << part << " of " << parts);
  const std::string meta_path = path_join(info.dir, "meta.json");
  manifest_errors(meta_path, [&] {
    if (!info.meta.contains("files") || !info.meta["files"].is_object())
      user_error(meta_path, ": has no file checksums");
    std::vector<char> buf(size_t(1) << 22);
    int index = -1;
    for (const auto& [name, f] : info.meta["files"].items()) {
      ++index;
      const std::string path = path_join(info.dir, checked_file_name(nlohmann::json(name), meta_path));
      if (!file_exists(path)) user_error("checkpoint file missing: '", path, "'");
      const uint64_t want = uint64_t(get_count(f, "bytes", meta_path)), have = file_size(path);
      if (have != want)
        user_error(path, ": truncated or damaged (", have, " bytes, meta.json says ", want, ")");
      if (index % parts != part) continue;  // another rank reads this one
      std::unique_ptr<FILE, int (*)(FILE*)> in(std::fopen(path.c_str(), "rb"), &std::fclose);
      if (!in) user_error("cannot read checkpoint file '", path, "'");
      uint32_t crc = 0;
      for (size_t got; (got = std::fread(buf.data(), 1, buf.size(), in.get())) > 0;) crc = crc32(buf.data(), got, crc);
      if (std::ferror(in.get())) user_error("cannot read checkpoint file '", path, "'");
      if (crc != f.at("crc32").get<uint32_t>()) user_error(path, ": corrupt: checksum mismatch");
    }
    // Every piece lies in a checksummed file, and the pieces cover every tensor exactly once.
    for (const char* section : {"tensors", "optimizer"}) {
      if (!info.meta.contains(section)) continue;
      for (const TensorEntry& t : parse_section(info, section))
        for (const Piece& p : t.pieces) {
          if (!info.meta["files"].contains(p.file))
            user_error(meta_path, ": tensor '", t.name, "' is in '", p.file, "', which has no checksum in 'files'");
          const uint64_t size = uint64_t(get_count(info.meta["files"][p.file], "bytes", meta_path));
          if (p.offset > size || p.bytes > size - p.offset)
            user_error(path_join(info.dir, p.file), ": truncated or inconsistent (tensor '", t.name, "' needs ",
                       p.bytes, " bytes at offset ", p.offset, ", file has ", size, ")");
        }
    }
  });
}

std::vector<int> list_checkpoint_steps(const std::string& run_dir) {
  std::vector<int> steps;
  const std::string root = path_join(run_dir, "checkpoints");
  if (!is_directory(root)) return steps;
  for (const auto& name : list_directory(root)) {
    int step = -1;
    char tail = 0;
    // step_NNNNNNNN exactly: temporary (.tmp) and moved-aside (.old.*) directories are skipped.
    if (std::sscanf(name.c_str(), "step_%d%c", &step, &tail) == 1 && name.size() == 13 &&
        is_directory(path_join(root, name)))
      steps.push_back(step);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

CheckpointInfo open_verified_checkpoint(const std::string& dir, Communicator& group) {
  // Opening (meta.json, sizes) gives every rank the same result; the CRCs are split.
  CheckpointInfo info = open_checkpoint(dir);
  bool ok = true;
  try {
    verify_checkpoint(info, group.rank(), group.size());
  } catch (const UserError&) {
    ok = false;
  }
  if (group.max(ok ? 0.0 : 1.0) > 0) {
    verify_checkpoint(info);  // every rank names the same first bad file
    user_error(dir, ": a checkpoint file failed verification");  // not reached unless the disk changed
  }
  return info;
}

std::optional<CheckpointInfo> find_latest_valid_checkpoint(const std::string& run_dir,
                                                           std::vector<std::string>* warnings,
                                                           Communicator* group) {
  for (int step : list_checkpoint_steps(run_dir)) {
    const std::string dir = path_join(path_join(run_dir, "checkpoints"), step_dir_name(step));
    try {
      if (group) return open_verified_checkpoint(dir, *group);
      CheckpointInfo info = open_checkpoint(dir);
      verify_checkpoint(info);
      return info;
    } catch (const UserError& e) {
      if (warnings) warnings->push_back(std::string(e.what()) + "; skipping " + dir);
    }
  }
  return std::nullopt;
}

std::vector<std::string> prune_checkpoints(const std::string& run_dir, int keep_last,
                                           int keep_every) {
  std::vector<std::string> removed;
  if (keep_last <= 0) return removed;
  const std::vector<int> steps = list_checkpoint_steps(run_dir);  // newest first
  for (size_t i = size_t(keep_last); i < steps.size(); ++i) {
    if (keep_every > 0 && steps[i] % keep_every == 0) continue;
    const std::string dir = path_join(path_join(run_dir, "checkpoints"), step_dir_name(steps[i]));
    remove_tree(dir);
    removed.push_back(dir);
  }
  return removed;
}

CheckpointInfo open_checkpoint(const std::string& path) {
  CheckpointInfo info;
  info.dir = path;
  if (!is_directory(path)) user_error("checkpoint not found: '", path, "' is not a directory");
  if (!file_exists(path_join(path, "meta.json"))) {
    const std::string latest = path_join(path_join(path, "checkpoints"), "latest");
    if (!file_exists(latest))
      user_error(
          "'", path,
          "' is neither a checkpoint (no meta.json) nor a run directory (no checkpoints/latest)");
    std::string name = read_text_file(latest);
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    info.dir = path_join(path_join(path, "checkpoints"), name);
    if (!file_exists(path_join(info.dir, "meta.json")))
      user_error(latest, " names '", name, "', which has no meta.json");
  }
  const std::string meta_path = path_join(info.dir, "meta.json");
  try {
    info.meta = nlohmann::json::parse(read_text_file(meta_path));
  } catch (const nlohmann::json::exception& e) {
    user_error(meta_path, ": not valid JSON (", e.what(), ")");
  }
  manifest_errors(meta_path, [&] {
    if (!info.meta.is_object() || !info.meta.contains("format") || info.meta["format"] != kFormat)
      user_error(meta_path, ": not an ltrain checkpoint (format field is not '", kFormat, "')");
    const nlohmann::json version = info.meta.contains("version") ? info.meta["version"] : nlohmann::json(0);
    if (!version.is_number_integer() || version.get<int64_t>() < kOldestVersion || version.get<int64_t>() > kVersion)
      user_error(meta_path, ": checkpoint version ", version.dump(), " is not supported (this build reads versions ",
                 kOldestVersion, " to ", kVersion, ")");
    if (!info.meta.contains("config") || !info.meta.contains("tensors") ||
        !info.meta.contains("step"))
      user_error(meta_path, ": incomplete (needs config, tensors and step)");
    if (version.get<int>() >= 2 && (!info.meta.contains("shards") || !info.meta["shards"].is_array()))
      user_error(meta_path, ": incomplete (a version ", version.get<int>(), " checkpoint needs a 'shards' list)");
    if (!info.meta["config"].is_object() || !info.meta["step"].is_number_integer() ||
        info.meta["step"].get<int64_t>() < 0 || info.meta["step"].get<int64_t>() > INT32_MAX)
      user_error(meta_path, ": 'config' must be an object and 'step' a non-negative integer");
    info.config = config_from_json(info.meta["config"], meta_path);
    info.step = info.meta["step"].get<int>();
  });
  return info;
}

std::vector<HostTensor> read_checkpoint_tensors(const CheckpointInfo& info,
                                                const std::string& section) {
  const std::vector<TensorEntry> entries = parse_section(info, section);
  FileReader files(info.dir);
  std::vector<HostTensor> out;
  for (const auto& t : entries)
    out.push_back({t.name, t.shape, read_slice(files, t, TensorSlice{0, 0, t.shape.dims[0]})});
  return out;
}

void load_checkpoint_weights(const CheckpointInfo& info, LlamaModel& model) {
  read_into(info, "tensors", "", model, model.param_buffer());
}

void load_checkpoint_training_state(const CheckpointInfo& info, LlamaModel& model, AdamW& optimizer,
                                    bool with_moments) {
  const std::string meta_path = path_join(info.dir, "meta.json");
  if (with_moments && !info.meta.contains("optimizer"))
    user_error(meta_path, ": has no optimizer state to resume from");
  // Each rank reads its tensor-parallel slice of one tensor at a time into host memory and hands
  // it to the optimizer, which keeps the part in its ZeRO shard. Nothing is staged on the device
  // (no whole-buffer copies of the weights or moments), and the host holds one tensor's slice at
  // a time. The fp32 weights go to the master copy as they are, not through the bf16 copy.
  FileReader files(info.dir);
  auto load = [&](const char* section, const std::string& suffix, AdamW::State which) {
    const std::vector<TensorEntry> entries = parse_section(info, section);
    const auto by_name = match_model(entries, model, suffix, meta_path);
    for (const auto& p : model.params()) {
      const std::vector<float> part = read_slice(files, *by_name.at(p.name), model.parameters().local_slice(p));
      LTRAIN_CHECK(int64_t(part.size()) == p.tensor.numel(), "checkpoint slice of " << p.name);
      optimizer.import_host_range(which, model.parameters().offset(p), part.data(), int64_t(part.size()));
    }
  };
  load("tensors", "", AdamW::State::kWeights);
  if (!with_moments) return;
  load("optimizer", ".exp_avg", AdamW::State::kExpAvg);
  load("optimizer", ".exp_avg_sq", AdamW::State::kExpAvgSq);
  model.backend().synchronize();
}

}  // namespace ltrain
