#include "checkpoint/manifest.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <map>

#include "ltrain/core/io.h"

namespace ltrain {
namespace ckpt {

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

int64_t get_count(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = j.at(key);
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0) ||
      v.get<uint64_t>() >= (uint64_t(1) << 62))
    user_error(where, ": '", key, "' must be a non-negative integer, got ", v.dump());
  return v.get<int64_t>();
}

std::string checked_file_name(const nlohmann::json& v, const std::string& where) {
  const std::string f = v.get<std::string>();
  if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos || f.find('\\') != std::string::npos)
    user_error(where, ": file name '", f, "' must be a plain name inside the checkpoint directory");
  return f;
}

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

nlohmann::json tensor_list(const std::vector<ManifestTensor>& tensors, const std::string& suffix) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& t : tensors)
    j.push_back({{"name", t.name + suffix}, {"shape", shape_json(t.shape)}, {"dtype", "f32"}, {"split_dim", t.split_dim}});
  return j;
}

}  // namespace ckpt

using namespace ckpt;

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

}  // namespace ltrain
