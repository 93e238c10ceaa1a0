#include "ltrain/checkpoint/hf.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/layout.h"

namespace ltrain {

namespace {

std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

bool is_nonempty_dir(const std::string& p) { return is_directory(p) && !list_directory(p).empty(); }

// Removes a temporary output directory unless the work completed.
struct TmpDirGuard {
  std::string path;
  bool committed = false;
  ~TmpDirGuard() {
    if (!committed) remove_tree(path);
  }
};

}  // namespace

// ---- the q/k row permutation ----------------------------------------------------------------

int hf_row_to_meta_row(int r, int head_dim) {
  const int half = head_dim / 2;
  return r < half ? 2 * r : 2 * (r - half) + 1;
}

namespace {
std::vector<float> permute_rows(const std::vector<float>& w, int n_heads, int head_dim, int64_t cols, bool to_hf) {
  LTRAIN_CHECK(head_dim % 2 == 0 && int64_t(w.size()) == int64_t(n_heads) * head_dim * cols,
               "q/k permutation: " << w.size() << " elements for " << n_heads << " heads of " << head_dim
                                   << " rows of " << cols);
  std::vector<float> out(w.size());
  for (int h = 0; h < n_heads; ++h)
    for (int r = 0; r < head_dim; ++r) {
      const int64_t hf_row = int64_t(h) * head_dim + r;
      const int64_t meta_row = int64_t(h) * head_dim + hf_row_to_meta_row(r, head_dim);
      const int64_t dst = to_hf ? hf_row : meta_row, src = to_hf ? meta_row : hf_row;
      std::memcpy(out.data() + dst * cols, w.data() + src * cols, size_t(cols) * sizeof(float));
    }
  return out;
}

// The heads of a tensor whose rows the RoPE layouts order differently (q_proj, k_proj), else 0.
int permuted_heads(const ParamSpec& p, const ModelConfig& m) {
  if (p.role == ParamRole::kQ) return m.num_attention_heads;
  if (p.role == ParamRole::kK) return m.kv_heads();
  return 0;
}
}  // namespace

std::vector<float> permute_qk_meta_to_hf(const std::vector<float>& w, int n_heads, int head_dim, int64_t cols) {
  return permute_rows(w, n_heads, head_dim, cols, true);
}

std::vector<float> permute_qk_hf_to_meta(const std::vector<float>& w, int n_heads, int head_dim, int64_t cols) {
  return permute_rows(w, n_heads, head_dim, cols, false);
}

// ---- model layout and config ----------------------------------------------------------------

std::vector<std::pair<std::string, Shape>> llama_tensor_layout(const ModelConfig& m) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const auto& p : llama_param_layout(m).params) out.push_back({p.name, p.shape});
  return out;
}

nlohmann::json hf_config_json(const ModelConfig& m, const std::string& torch_dtype) {
  nlohmann::json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.ffn_dim();
  j["num_hidden_layers"] = m.num_hidden_layers;
  j["num_attention_heads"] = m.num_attention_heads;
  j["num_key_value_heads"] = m.kv_heads();
  j["head_dim"] = m.head_dim();
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.max_position_embeddings;
  j["initializer_range"] = m.initializer_range;
  j["rms_norm_eps"] = m.rms_norm_eps;
  j["rope_theta"] = m.rope_theta;
  j["rope_scaling"] = nullptr;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["pretraining_tp"] = 1;
  j["tie_word_embeddings"] = m.tie_word_embeddings;
  j["vocab_size"] = m.vocab_size;
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype;
  return j;
}

ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) user_error(path, ": not a JSON object");
  auto present = [&](const char* k) { return j.contains(k) && !j[k].is_null(); };
  if (present("model_type") && j["model_type"] != "llama")
    user_error(path, ": model_type ", j["model_type"].dump(), " is not supported (only \"llama\")");
  if (present("hidden_act") && j["hidden_act"] != "silu")
    user_error(path, ": hidden_act ", j["hidden_act"].dump(), " is not supported (ltrain's MLP is SwiGLU: \"silu\")");
  if (present("rope_scaling"))
    user_error(path, ": rope_scaling ", j["rope_scaling"].dump(),
               " is not supported (ltrain implements plain RoPE; rope_scaling must be null)");
  for (const char* k : {"attention_bias", "mlp_bias"})
    if (present(k) && j[k] != false) user_error(path, ": ", k, " ", j[k].dump(), " is not supported (LLaMA has no biases)");
  auto get_int = [&](const char* k, bool required, int fallback) -> int {
    if (!present(k)) {
      if (required) user_error(path, ": missing '", k, "'");
      return fallback;
    }
    if (!j[k].is_number_integer() || j[k].get<int64_t>() <= 0 || j[k].get<int64_t>() > (int64_t(1) << 30))
      user_error(path, ": '", k, "' must be a positive integer, got ", j[k].dump());
    return j[k].get<int>();
  };
  auto get_double = [&](const char* k, double fallback) -> double {
    if (!present(k)) return fallback;
    if (!j[k].is_number() || !(j[k].get<double>() > 0)) user_error(path, ": '", k, "' must be a positive number, got ", j[k].dump());
    return j[k].get<double>();
  };
  ModelConfig m;
  m.hidden_size = get_int("hidden_size", true, 0);
  m.intermediate_size = get_int("intermediate_size", true, 0);
  m.num_hidden_layers = get_int("num_hidden_layers", true, 0);
  m.num_attention_heads = get_int("num_attention_heads", true, 0);
  m.num_key_value_heads = get_int("num_key_value_heads", false, m.num_attention_heads);
  m.vocab_size = get_int("vocab_size", true, 0);
  m.max_position_embeddings = get_int("max_position_embeddings", false, 2048);
  m.rope_theta = get_double("rope_theta", 10000.0);
  m.rms_norm_eps = get_double("rms_norm_eps", 1e-6);  // LlamaConfig's default
  m.initializer_range = get_double("initializer_range", 0.02);
  if (present("tie_word_embeddings")) {
    if (!j["tie_word_embeddings"].is_boolean())
      user_error(path, ": 'tie_word_embeddings' must be true or false, got ", j["tie_word_embeddings"].dump());
    m.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  if (m.hidden_size % m.num_attention_heads != 0)
    user_error(path, ": hidden_size (", m.hidden_size, ") is not divisible by num_attention_heads (",
               m.num_attention_heads, ")");
  if (m.num_attention_heads % m.num_key_value_heads != 0)
    user_error(path, ": num_attention_heads (", m.num_attention_heads, ") is not divisible by num_key_value_heads (",
               m.num_key_value_heads, ")");
  if (m.head_dim() % 2 != 0) user_error(path, ": the head dimension (", m.head_dim(), ") must be even for RoPE");
  if (present("head_dim") && (!j["head_dim"].is_number_integer() || j["head_dim"].get<int64_t>() != m.head_dim()))
    user_error(path, ": head_dim ", j["head_dim"].dump(), " is not supported (ltrain needs hidden_size / num_attention_heads = ",
               m.head_dim(), ")");
  return m;
}

Config imported_config(const ModelConfig& m, const std::string& run_dir) {
  Config c;
  c.model = m;
  c.train.run_dir = run_dir;
  c.train.seq_len = std::min(c.train.seq_len, m.max_position_embeddings);
  const int64_t per = int64_t(c.train.micro_batch_size) * c.train.seq_len;
  if (c.train.global_batch_tokens % per != 0)
    c.train.global_batch_tokens = std::max<int64_t>(1, c.train.global_batch_tokens / per) * per;
  return c;
}

// ---- export ---------------------------------------------------------------------------------

HfExportSummary write_hf_dir(const ModelConfig& m, const std::vector<HostTensor>& weights,
                             const std::string& tokenizer_path, const std::string& out_dir_in,
                             const HfExportOptions& opt) {
  const std::string out_dir = strip_trailing_slashes(out_dir_in);
  if (opt.dtype != "bf16" && opt.dtype != "fp32")
    user_error("--dtype '", opt.dtype, "' is not supported (bf16 or fp32)");
  if (opt.max_shard_bytes == 0) user_error("--max-shard-size must be positive");
  if (file_exists(out_dir) && !is_directory(out_dir)) user_error("--out '", out_dir, "' exists and is not a directory");
  if (is_nonempty_dir(out_dir) && !opt.force)
    user_error("--out '", out_dir, "' already exists and is not empty (use --force to replace it)");
  const std::string st_dtype = opt.dtype == "bf16" ? "BF16" : "F32";
  const size_t esize = safetensors_dtype_bytes(st_dtype);

  // Every weight the config implies, with its shape; nothing else.
  std::map<std::string, const HostTensor*> by_name;
  for (const auto& w : weights) by_name[w.name] = &w;
  const std::vector<ParamSpec> layout = llama_param_layout(m).params;
  if (by_name.size() != weights.size()) user_error("export-hf: duplicate tensor names in the checkpoint");
  std::vector<HostTensor> permuted;
  permuted.reserve(layout.size());
  std::vector<const HostTensor*> order;
  for (const ParamSpec& p : layout) {
    const std::string& name = p.name;
    const Shape& shape = p.shape;
    auto it = by_name.find(name);
    if (it == by_name.end()) user_error("export-hf: the checkpoint has no tensor '", name, "'");
    const HostTensor* t = it->second;
    if (!(t->shape == shape) || int64_t(t->data.size()) != shape.numel())
      user_error("export-hf: tensor '", name, "' has shape ", t->shape.str(), " but the config implies ", shape.str());
    if (const int heads = permuted_heads(p, m)) {
      permuted.push_back({name, shape, permute_qk_meta_to_hf(t->data, heads, m.head_dim(), shape.dims[1])});
      t = &permuted.back();
    }
    order.push_back(t);
  }
  if (by_name.size() != layout.size())
    for (const auto& w : weights)
      if (std::none_of(layout.begin(), layout.end(), [&](const ParamSpec& p) { return p.name == w.name; }))
        user_error("export-hf: the checkpoint has an unexpected tensor '", w.name, "'");

  // Shards: greedy in parameter order; a tensor larger than the limit gets a file of its own.
  std::vector<std::vector<const HostTensor*>> shards(1);
  uint64_t in_shard = 0, total = 0;
  HfExportSummary sum;
  for (const HostTensor* t : order) {
    const uint64_t b = t->data.size() * esize;
    if (!shards.back().empty() && in_shard + b > opt.max_shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(t);
    in_shard += b;
    total += b;
    sum.num_params += int64_t(t->data.size());
  }

  const std::string tmp = out_dir + ".tmp";
  remove_tree(tmp);
  make_dirs(tmp);
  TmpDirGuard guard{tmp};
  const int N = int(shards.size());
  nlohmann::json weight_map = nlohmann::json::object();
  for (int s = 0; s < N; ++s) {
    char name[64];
    if (N == 1)
      std::snprintf(name, sizeof name, "model.safetensors");
    else
      std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, N);
    write_safetensors(path_join(tmp, name), shards[s], st_dtype);
    for (const HostTensor* t : shards[s]) weight_map[t->name] = name;
    sum.files.push_back(name);
  }
  if (N > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_text_file_atomic(path_join(tmp, "model.safetensors.index.json"), index.dump(2) + "\n");
    sum.files.push_back("model.safetensors.index.json");
  }
  write_text_file_atomic(path_join(tmp, "config.json"),
                         hf_config_json(m, opt.dtype == "bf16" ? "bfloat16" : "float32").dump(2) + "\n");
  nlohmann::json gen = {{"_from_model_config", true}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  write_text_file_atomic(path_join(tmp, "generation_config.json"), gen.dump(2) + "\n");
  sum.files.push_back("config.json");
  sum.files.push_back("generation_config.json");
  if (!tokenizer_path.empty() && file_exists(tokenizer_path)) {
    const std::string tok = read_text_file(tokenizer_path);
    write_file_atomic(path_join(tmp, "tokenizer.model"), tok.data(), tok.size());
    sum.files.push_back("tokenizer.model");
  }
  replace_directory(tmp, out_dir);
  guard.committed = true;
  std::sort(sum.files.begin(), sum.files.end());
  sum.out_dir = out_dir;
  sum.shards = N;
  sum.tensor_bytes = total;
  return sum;
}

HfExportSummary export_hf(const std::string& checkpoint, const std::string& out_dir, const HfExportOptions& opt) {
  const std::string out = strip_trailing_slashes(out_dir);
  // Cheap refusals first, before reading gigabytes.
  if (opt.dtype != "bf16" && opt.dtype != "fp32")
    user_error("--dtype '", opt.dtype, "' is not supported (bf16 or fp32)");
  if (is_nonempty_dir(out) && !opt.force)
    user_error("--out '", out, "' already exists and is not empty (use --force to replace it)");
  const CheckpointInfo ck = open_checkpoint(checkpoint);
  const std::vector<HostTensor> weights = read_checkpoint_tensors(ck, "tensors");
  std::string tok;
  if (ck.meta.contains("tokenizer") && ck.meta["tokenizer"].is_string())
    tok = path_join(ck.dir, ck.meta["tokenizer"].get<std::string>());
  return write_hf_dir(ck.config.model, weights, tok, out, opt);
}

// ---- import ---------------------------------------------------------------------------------

HfModel read_hf_dir(const std::string& hf_dir_in) {
  const std::string hf_dir = strip_trailing_slashes(hf_dir_in);
  if (!is_directory(hf_dir)) user_error("Hugging Face model directory not found: '", hf_dir, "'");
  const std::string cfg_path = path_join(hf_dir, "config.json");
  if (!file_exists(cfg_path)) user_error(cfg_path, ": not found (not a Hugging Face model directory)");
  nlohmann::json cj;
  try {
    cj = nlohmann::json::parse(read_text_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    user_error(cfg_path, ": not valid JSON (", e.what(), ")");
  }
  HfModel hm;
  hm.model = model_config_from_hf(cj, cfg_path);

  // Where each tensor is: one file, or an index naming the shards.
  std::vector<SafetensorsHeader> headers;
  std::map<std::string, std::pair<size_t, size_t>> where;  // name -> (header, entry)
  std::string source;  // for "missing tensor" messages
  const std::string single = path_join(hf_dir, "model.safetensors");
  const std::string index_path = path_join(hf_dir, "model.safetensors.index.json");
  std::map<std::string, std::string> weight_map;
  if (file_exists(single)) {
    source = single;
    headers.push_back(read_safetensors_header(single));
  } else if (file_exists(index_path)) {
    source = index_path;
    nlohmann::json ij;
    try {
      ij = nlohmann::json::parse(read_text_file(index_path));
    } catch (const nlohmann::json::exception& e) {
      user_error(index_path, ": not valid JSON (", e.what(), ")");
    }
    if (!ij.is_object() || !ij.contains("weight_map") || !ij["weight_map"].is_object())
      user_error(index_path, ": has no weight_map object");
    std::set<std::string> files;
    for (const auto& [name, f] : ij["weight_map"].items()) {
      if (!f.is_string()) user_error(index_path, ": weight_map entry '", name, "' is not a file name");
      const std::string fn = f.get<std::string>();
      if (fn.empty() || fn.find('/') != std::string::npos || fn == "." || fn == "..")
        user_error(index_path, ": weight_map entry '", name, "' names '", fn, "', not a file in the directory");
      weight_map[name] = fn;
      files.insert(fn);
    }
    for (const auto& fn : files) {
      const std::string p = path_join(hf_dir, fn);
      if (!file_exists(p)) user_error(index_path, ": names '", fn, "', which is missing");
      headers.push_back(read_safetensors_header(p));
    }
  } else {
    user_error(hf_dir, ": has neither model.safetensors nor model.safetensors.index.json");
  }
  for (size_t h = 0; h < headers.size(); ++h) {
    hm.files.push_back(headers[h].path);
    for (size_t e = 0; e < headers[h].entries.size(); ++e) {
      const std::string& name = headers[h].entries[e].name;
      if (!where.emplace(name, std::make_pair(h, e)).second)
        user_error(headers[h].path, ": tensor '", name, "' also appears in ", headers[where[name].first].path);
    }
  }
  for (const auto& [name, fn] : weight_map) {
    auto it = where.find(name);
    if (it == where.end() || basename_of(headers[it->second.first].path) != fn)
      user_error(index_path, ": maps tensor '", name, "' to '", fn, "', which does not contain it");
  }

  const std::vector<ParamSpec> layout = llama_param_layout(hm.model).params;
  std::set<std::string> expected;
  for (const ParamSpec& p : layout) expected.insert(p.name);
  for (const auto& [name, loc] : where) {
    if (expected.count(name)) continue;
    if (name.find(".rotary_emb.inv_freq") != std::string::npos) continue;  // a buffer older exports saved
    if (name == "lm_head.weight" && hm.model.tie_word_embeddings) continue;  // tied: the embedding is used
    user_error(headers[loc.first].path, ": unexpected tensor '", name, "' (not a weight of this LlamaForCausalLM config)");
  }
  for (const ParamSpec& p : layout) {
    const std::string& name = p.name;
    const Shape& shape = p.shape;
    auto it = where.find(name);
    if (it == where.end()) user_error(source, ": tensor '", name, "' is missing");
    const SafetensorsHeader& h = headers[it->second.first];
    const SafetensorsEntry& e = h.entries[it->second.second];
    if (e.shape != safetensors_shape(shape))
      user_error(h.path, ": tensor '", name, "' has shape ", shape_text(e.shape), " but config.json implies ",
                 shape_text(safetensors_shape(shape)));
    HostTensor t{name, shape, read_safetensors_tensor(h, e)};
    if (const int heads = permuted_heads(p, hm.model))
      t.data = permute_qk_hf_to_meta(t.data, heads, hm.model.head_dim(), shape.dims[1]);
    hm.weights.push_back(std::move(t));
  }
  const std::string tok = path_join(hf_dir, "tokenizer.model");
  if (file_exists(tok)) hm.tokenizer_path = tok;
  return hm;
}

std::string import_hf(const std::string& hf_dir, const std::string& run_dir_in, bool force) {
  const std::string run_dir = strip_trailing_slashes(run_dir_in);
  if (file_exists(run_dir) && !is_directory(run_dir)) user_error("--out '", run_dir, "' exists and is not a directory");
  if (is_nonempty_dir(run_dir) && !force)
    user_error("--out '", run_dir, "' already exists and is not empty (use --force to replace it)");
  HfModel hm = read_hf_dir(hf_dir);
  Config cfg = imported_config(hm.model, run_dir);
  try {
    validate_config(cfg);
  } catch (const UserError& e) {
    user_error(path_join(strip_trailing_slashes(hf_dir), "config.json"), ": ", e.what());
  }
  const std::string tmp = run_dir + ".tmp";
  remove_tree(tmp);
  TmpDirGuard guard{tmp};
  TrainState state;
  state.data = {{"train", {{"epoch", 0}, {"cursor", 0}}}};
  state.layout = {{"data", 1}, {"tensor", 1}, {"zero", 0}};
  const std::string dir = save_checkpoint(tmp, state, cfg, hm.weights, nullptr, nullptr, hm.tokenizer_path);
  replace_directory(tmp, run_dir);
  guard.committed = true;
  return path_join(run_dir, dir.substr(tmp.size() + 1));
}

}  // namespace ltrain
