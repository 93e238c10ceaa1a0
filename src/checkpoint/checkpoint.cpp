#include "ltrain/checkpoint/checkpoint.h"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

namespace {

constexpr const char* kFormat = "ltrain-checkpoint";
constexpr int kVersion = 1;

std::string step_dir_name(int step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08d", step);
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

// Checks [offset, offset + bytes) against the file's size without overflow.
void check_range(uint64_t offset, uint64_t bytes, uint64_t expect_bytes, size_t file_bytes,
                 const std::string& file, const std::string& name) {
  if (bytes != expect_bytes || offset > file_bytes || bytes > file_bytes - offset)
    user_error(file, ": truncated or inconsistent (tensor '", name, "' needs ", expect_bytes,
               " bytes at offset ", offset, ", file has ", file_bytes, ")");
}

nlohmann::json shape_json(const Shape& s) {
  nlohmann::json j = nlohmann::json::array();
  for (int i = 0; i < s.ndim; ++i) j.push_back(s.dims[i]);
  return j;
}

// Serializes whole tensors as fp32 into one file; returns the meta.json entries and adds the
// file's size and CRC-32 to `files`.
nlohmann::json write_tensors(const std::string& path, const std::string& file,
                             const std::vector<HostTensor>& tensors, const std::string& suffix,
                             nlohmann::json& files) {
  nlohmann::json entries = nlohmann::json::array();
  std::vector<float> all;
  for (const auto& t : tensors) {
    const uint64_t offset = all.size() * sizeof(float);
    all.insert(all.end(), t.data.begin(), t.data.end());
    entries.push_back({{"name", t.name + suffix},
                       {"shape", shape_json(t.shape)},
                       {"dtype", "f32"},
                       {"file", file},
                       {"offset", offset},
                       {"bytes", t.data.size() * sizeof(float)},
                       {"crc32", crc32(t.data.data(), t.data.size() * sizeof(float))}});
  }
  write_file_atomic(path, all.data(), all.size() * sizeof(float));
  files[file] = {{"bytes", all.size() * sizeof(float)},
                 {"crc32", crc32(all.data(), all.size() * sizeof(float))}};
  return entries;
}

// Reads the whole tensors the model's parameters name (plus `suffix`) from `entries`, checking
// each shape against the model's and each checksum.
std::map<std::string, std::vector<float>> read_tensors(const std::string& dir,
                                                       const nlohmann::json& entries,
                                                       const LlamaModel& model,
                                                       const std::string& suffix) {
  return manifest_errors(path_join(dir, "meta.json"), [&] {
    std::map<std::string, const nlohmann::json*> by_name;
    for (const auto& e : entries) by_name[e.at("name").get<std::string>()] = &e;
    std::map<std::string, std::string> file_cache;
    std::map<std::string, std::vector<float>> out;
    for (const auto& p : model.params()) {
      const std::string name = p.name + suffix;
      auto it = by_name.find(name);
      if (it == by_name.end())
        user_error(path_join(dir, "meta.json"), ": tensor '", name, "' is missing");
      const auto& e = *it->second;
      const Shape shape = parse_shape(e.at("shape"), path_join(dir, "meta.json"));
      const Shape& want = p.global_shape;
      if (!(shape == want))
        user_error(path_join(dir, "meta.json"), ": tensor '", name, "' has shape ", shape.str(),
                   " but the model needs ", want.str());
      const std::string file = path_join(dir, e.at("file").get<std::string>());
      auto fc = file_cache.find(file);
      if (fc == file_cache.end()) fc = file_cache.emplace(file, read_text_file(file)).first;
      const std::string& data = fc->second;
      const uint64_t offset = e.at("offset").get<uint64_t>(), bytes = e.at("bytes").get<uint64_t>();
      check_range(offset, bytes, uint64_t(want.numel()) * 4, data.size(), file, name);
      if (crc32(data.data() + offset, bytes) != e.at("crc32").get<uint32_t>())
        user_error(file, ": corrupt: checksum mismatch in tensor '", name, "'");
      std::vector<float>& v = out[p.name];
      v.resize(size_t(want.numel()));
      std::memcpy(v.data(), data.data() + offset, bytes);
    }
    return out;
  });
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            const std::vector<HostTensor>& weights,
                            const std::vector<HostTensor>* exp_avg,
                            const std::vector<HostTensor>* exp_avg_sq,
                            const std::string& tokenizer_path) {
  const std::string root = path_join(run_dir, "checkpoints");
  make_dirs(root);
  const std::string final_dir = path_join(root, step_dir_name(state.step));
  const std::string tmp_dir = final_dir + ".tmp";
  remove_tree(tmp_dir);
  make_dirs(tmp_dir);
  nlohmann::json meta, files = nlohmann::json::object();
  meta["format"] = kFormat;
  meta["version"] = kVersion;
  meta["step"] = state.step;
  meta["tokens"] = state.tokens;
  meta["lr_schedule"] = {{"step", state.step}, {"total_steps", cfg.train.steps}};
  meta["config"] = config_to_json(cfg);
  int64_t num_params = 0;
  for (const auto& w : weights) num_params += int64_t(w.data.size());
  meta["num_params"] = num_params;
  meta["layout"] = state.layout;
  meta["shards"] = 1;
  meta["data"] = state.data;
  if (!state.guard.is_null()) meta["guard"] = state.guard;
  meta["tensors"] =
      write_tensors(path_join(tmp_dir, "model_00000.bin"), "model_00000.bin", weights, "", files);
  // Test hook (tests/scripts/test_resume_cli.sh): die between two files of the save of step N,
  // as a kill -9 or a node failure during a save would.
  if (const char* kill_at = std::getenv("LTRAIN_TEST_KILL_DURING_SAVE");
      kill_at && std::atoi(kill_at) == state.step)
    std::raise(SIGKILL);
  if (exp_avg && exp_avg_sq) {
    // exp_avg then exp_avg_sq, one file
    std::vector<HostTensor> both = *exp_avg;
    for (auto& t : both) t.name += ".exp_avg";
    for (const auto& t : *exp_avg_sq) both.push_back({t.name + ".exp_avg_sq", t.shape, t.data});
    meta["optimizer"] =
        write_tensors(path_join(tmp_dir, "optim_00000.bin"), "optim_00000.bin", both, "", files);
  }
  if (!tokenizer_path.empty() && file_exists(tokenizer_path)) {
    std::string tok = read_text_file(tokenizer_path);
    write_file_atomic(path_join(tmp_dir, "tokenizer.model"), tok.data(), tok.size());
    files["tokenizer.model"] = {{"bytes", tok.size()}, {"crc32", crc32(tok.data(), tok.size())}};
    meta["tokenizer"] = "tokenizer.model";
  }
  meta["files"] = files;
  write_text_file_atomic(path_join(tmp_dir, "meta.json"), meta.dump(2) + "\n");
  replace_directory(tmp_dir, final_dir);
  write_text_file_atomic(path_join(root, "latest"), step_dir_name(state.step) + "\n");
  return final_dir;
}

void verify_checkpoint(const CheckpointInfo& info) {
  const std::string meta_path = path_join(info.dir, "meta.json");
  manifest_errors(meta_path, [&] {
    if (!info.meta.contains("files") || !info.meta["files"].is_object())
      user_error(meta_path, ": has no file checksums");
    for (const auto& [name, f] : info.meta["files"].items()) {
      const std::string path = path_join(info.dir, name);
      if (!file_exists(path)) user_error("checkpoint file missing: '", path, "'");
      const uint64_t want = f.at("bytes").get<uint64_t>(), have = file_size(path);
      if (have != want)
        user_error(path, ": truncated or damaged (", have, " bytes, meta.json says ", want, ")");
      const std::string data = read_text_file(path);
      if (crc32(data.data(), data.size()) != f.at("crc32").get<uint32_t>())
        user_error(path, ": corrupt: checksum mismatch");
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

std::optional<CheckpointInfo> find_latest_valid_checkpoint(const std::string& run_dir,
                                                           std::vector<std::string>* warnings) {
  for (int step : list_checkpoint_steps(run_dir)) {
    const std::string dir = path_join(path_join(run_dir, "checkpoints"), step_dir_name(step));
    try {
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
    if (info.meta.value("version", 0) != kVersion)
      user_error(meta_path, ": checkpoint version ", info.meta.value("version", 0),
                 " is not supported (this build reads version ", kVersion, ")");
    if (!info.meta.contains("config") || !info.meta.contains("tensors") ||
        !info.meta.contains("step"))
      user_error(meta_path, ": incomplete (needs config, tensors and step)");
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
  const std::string meta_path = path_join(info.dir, "meta.json");
  return manifest_errors(meta_path, [&] {
    if (!info.meta.contains(section)) user_error(meta_path, ": has no '", section, "' section");
    std::map<std::string, std::string> file_cache;
    std::vector<HostTensor> out;
    for (const auto& e : info.meta[section]) {
      HostTensor t;
      t.name = e.at("name").get<std::string>();
      t.shape = parse_shape(e.at("shape"), meta_path);
      const std::string file = path_join(info.dir, e.at("file").get<std::string>());
      auto fc = file_cache.find(file);
      if (fc == file_cache.end()) fc = file_cache.emplace(file, read_text_file(file)).first;
      const std::string& data = fc->second;
      const uint64_t offset = e.at("offset").get<uint64_t>(), bytes = e.at("bytes").get<uint64_t>();
      check_range(offset, bytes, uint64_t(t.shape.numel()) * 4, data.size(), file, t.name);
      if (crc32(data.data() + offset, bytes) != e.at("crc32").get<uint32_t>())
        user_error(file, ": corrupt: checksum mismatch in tensor '", t.name, "'");
      t.data.resize(size_t(t.shape.numel()));
      std::memcpy(t.data.data(), data.data() + offset, bytes);
      out.push_back(std::move(t));
    }
    return out;
  });
}

void load_checkpoint_weights(const CheckpointInfo& info, LlamaModel& model) {
  auto tensors = read_tensors(info.dir, info.meta["tensors"], model, "");
  model.import_full(model.param_buffer(), [&](const std::string& n) -> const std::vector<float>& {
    return tensors.at(n);
  });
}

void load_checkpoint_training_state(const CheckpointInfo& info, LlamaModel& model, AdamW& optimizer,
                                    bool with_moments) {
  const std::string meta_path = path_join(info.dir, "meta.json");
  if (with_moments && !info.meta.contains("optimizer"))
    user_error(meta_path, ": has no optimizer state to resume from");
  Backend& be = model.backend();
  const Shape shape = model.param_buffer().shape;
  // Whole tensors are read, each rank keeps its tensor-parallel part in a buffer laid out like
  // the parameters, and the optimizer keeps its ZeRO shard of that. The fp32 weights go to the
  // optimizer's master copy as they are (not through the bf16 compute copy).
  Tensor w = be.alloc(shape, be.master_dtype());
  {
    auto tensors = read_tensors(info.dir, info.meta["tensors"], model, "");
    model.import_full(
        w, [&](const std::string& n) -> const std::vector<float>& { return tensors.at(n); });
  }
  optimizer.import_weights(w);
  be.free(w);
  if (!with_moments) return;
  Tensor m = be.alloc(shape, be.master_dtype()), v = be.alloc(shape, be.master_dtype());
  for (auto [suffix, target] :
       {std::pair<const char*, Tensor>{".exp_avg", m}, {".exp_avg_sq", v}}) {
    auto tensors = read_tensors(info.dir, info.meta["optimizer"], model, suffix);
    model.import_full(
        target, [&](const std::string& n) -> const std::vector<float>& { return tensors.at(n); });
  }
  optimizer.import_moments(m, v);
  be.free(m);
  be.free(v);
}

}  // namespace ltrain
