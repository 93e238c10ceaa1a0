// Config loading: the file (YAML; JSON is read by the same parser) is flattened into dotted keys,
// `key=value` overrides replace entries, then each known key is converted to its field's type.
// A key left over is unknown and is reported with the closest known key.
#include "ltrain/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

int ModelConfig::ffn_dim() const {
  if (intermediate_size > 0) return intermediate_size;
  // LLaMA's rule: 2/3 of 4C, scaled, rounded up to a multiple of multiple_of.
  int64_t h = int64_t(2 * (4 * int64_t(hidden_size)) / 3);
  h = int64_t(ffn_dim_multiplier * double(h));
  return int((h + multiple_of - 1) / multiple_of * multiple_of);
}

int Config::grad_accum_steps(int dp_world) const {
  int64_t per_micro = int64_t(train.micro_batch_size) * train.seq_len * dp_world;
  return per_micro > 0 ? int(train.global_batch_tokens / per_micro) : 0;
}

namespace {

using FlatMap = std::map<std::string, std::string>;

// Keys whose value is a list (data.blend) rather than a single value.
bool is_list_key(const std::string& key) {
  bool list = false;
  Config c;
  visit_config(c, [&](const char* k, auto& field, const char*) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, BlendList> || std::is_same_v<T, std::vector<int>>) list = list || key == k;
  });
  return list;
}

// Bounded: YAML aliases can make a small file expand exponentially (a map of two references to
// a map of two references ...), and a config is only ever a few dozen keys two levels deep.
void flatten(const YAML::Node& node, const std::string& prefix, FlatMap& out,
             const std::string& origin, int depth = 0) {
  constexpr int kMaxDepth = 8;
  constexpr size_t kMaxKeys = 4096;
  if (depth > kMaxDepth || out.size() > kMaxKeys)
    user_error(origin, ": the config nests too deeply or has too many keys (YAML aliases?); a config is a "
               "mapping of sections to key: value pairs");
  if (node.IsMap()) {
    for (const auto& kv : node) {
      if (!kv.first.IsScalar()) user_error(origin, ": config keys must be plain names");
      std::string key = kv.first.as<std::string>();
      flatten(kv.second, prefix.empty() ? key : prefix + "." + key, out, origin, depth + 1);
    }
  } else if (node.IsScalar()) {
    out[prefix] = node.as<std::string>();
  } else if (node.IsNull()) {
    out[prefix] = "";
  } else if (is_list_key(prefix)) {
    YAML::Emitter e;  // kept as flow-style text; parse_blend reads it back
    e << YAML::Flow << node;
    out[prefix] = e.c_str();
  } else {
    user_error(origin, ": config key '", prefix, "' must be a single value, not a list");
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest_key(const std::string& key) {
  if (key.size() > 100) return "";  // no plausible typo, and edit distance is quadratic
  std::string best;
  size_t best_d = SIZE_MAX;
  Config c;
  visit_config(c, [&](const char* k, auto&, const char*) {
    std::string known = k;
    // Compare whole keys and also the last component, so `hiden_size` finds `model.hidden_size`.
    size_t d = edit_distance(key, known);
    auto dot = known.rfind('.');
    if (dot != std::string::npos) d = std::min(d, edit_distance(key, known.substr(dot + 1)) + 1);
    if (d < best_d) best_d = d, best = known;
  });
  return best_d <= std::max<size_t>(3, key.size() / 3) ? best : "";
}

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, BlendList>) return "a list of {path, weight} or {path, epochs} entries";
  else if constexpr (std::is_same_v<T, std::vector<int>>) return "a list of integers like [4, 4, 3]";
  else if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_integral_v<T>) return "an integer";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else return "a (UTF-8) string";
}

// Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    int len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return false;
    if (i + size_t(len) > n) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned b = p[i + size_t(k)];
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return false;
    }
    i += size_t(len);
  }
  return true;
}

template <class T>
bool parse_value(const std::string& s, T& out) {
  if constexpr (std::is_same_v<T, std::vector<int>>) {
    out.clear();
    if (s.empty() || s == "[]") return true;
    try {
      const YAML::Node root = YAML::Load(s.front() == '[' ? s : "[" + s + "]");  // [4, 4] or 4,4
      if (!root.IsSequence()) return false;
      for (const auto& e : root) {
        int x = 0;
        if (!e.IsScalar() || !parse_value(e.as<std::string>(), x)) return false;
        out.push_back(x);
      }
    } catch (const YAML::Exception&) {
      return false;
    }
    return true;
  } else if constexpr (std::is_same_v<T, bool>) {
    if (s == "true" || s == "True" || s == "1" || s == "yes") return out = true, true;
    if (s == "false" || s == "False" || s == "0" || s == "no") return out = false, true;
    return false;
  } else if constexpr (std::is_integral_v<T>) {
    // Accept 4194304, 4_194_304 and 4e6-style integers written as whole numbers.
    std::string t;
    for (char ch : s)
      if (ch != '_') t += ch;
    if (t.empty()) return false;
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(t.c_str(), &end, 10);
    if (errno == ERANGE) return false;
    if (*end != '\0') {
      double d = std::strtod(t.c_str(), &end);
      if (*end != '\0' || d != std::floor(d) || std::fabs(d) > 9.2e18) return false;
      v = static_cast<long long>(d);
    }
    if (std::is_unsigned_v<T> && v < 0) return false;
    if constexpr (!std::is_unsigned_v<T>)
      if (v < (long long)std::numeric_limits<T>::min() || v > (long long)std::numeric_limits<T>::max()) return false;
    out = static_cast<T>(v);
    return true;
  } else if constexpr (std::is_floating_point_v<T>) {
    if (s.empty()) return false;
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (*end != '\0' || !std::isfinite(v)) return false;  // nan and inf are never meant
    out = static_cast<T>(v);
    return true;
  } else {
    if (!valid_utf8(s)) return false;  // paths and names end up in JSON files and logs
    out = s;
    return true;
  }
}

// data.blend from its text (YAML flow or JSON: a list of mappings). UserError naming the entry.
BlendList parse_blend(const std::string& text, const std::string& origin, const char* key) {
  BlendList out;
  if (text.empty() || text == "[]") return out;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    user_error(origin, ": config key '", key, "' is not a valid list (", e.what(), ")");
  }
  if (!root.IsSequence())
    user_error(origin, ": config key '", key, "' must be a list of {path, weight} or {path, epochs} entries, got '",
               text, "'");
  for (size_t i = 0; i < root.size(); ++i) {
    const YAML::Node& e = root[i];
    const std::string where = std::string(key) + "[" + std::to_string(i) + "]";
    if (!e.IsMap()) user_error(origin, ": ", where, " must be a mapping like {path: DIR, weight: 0.5}");
    BlendSource src;
    for (const auto& kv : e) {
      const std::string k = kv.first.IsScalar() ? kv.first.as<std::string>() : "?";
      if (!kv.second.IsScalar())
        user_error(origin, ": ", where, ".", k, " must be a single value");
      const std::string v = kv.second.as<std::string>();
      bool ok = true;
      if (k == "path") ok = parse_value(v, src.path);
      else if (k == "name") ok = parse_value(v, src.name);
      else if (k == "weight") ok = parse_value(v, src.weight);
      else if (k == "epochs") ok = parse_value(v, src.epochs);
      else
        user_error(origin, ": ", where, " has the unknown key '", k, "' (an entry takes path, weight or epochs, and name)");
      if (!ok) user_error(origin, ": ", where, ".", k, " expects ", k == "path" || k == "name" ? "a string" : "a number",
                          ", got '", v, "'");
    }
    if (src.name.empty()) {
      std::string p = src.path;
      while (p.size() > 1 && p.back() == '/') p.pop_back();
      src.name = basename_of(p);
    }
    out.push_back(std::move(src));
  }
  return out;
}

Config config_from_flat(FlatMap flat, const std::string& origin) {
  Config c;
  visit_config(c, [&](const char* key, auto& field, const char*) {
    auto it = flat.find(key);
    if (it == flat.end()) return;
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, BlendList>) {
      field = parse_blend(it->second, origin, key);
      flat.erase(it);
      return;
    } else if (!parse_value(it->second, field))
      user_error(origin, ": config key '", key, "' expects ", type_name<T>(), ", got '", it->second, "'");
    flat.erase(it);
  });
  if (!flat.empty()) {
    const std::string& key = flat.begin()->first;
    std::string hint = closest_key(key);
    user_error(origin, ": unknown config key '", key, "'",
               hint.empty() ? std::string(" (see docs/config.md for the keys)")
                            : " (did you mean '" + hint + "'?)");
  }
  return c;
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (!file_exists(path)) user_error("config file not found: '", path, "'");
  YAML::Node root;
  FlatMap flat;
  try {
    root = YAML::LoadFile(path);
    if (!root.IsNull()) {
      if (!root.IsMap()) user_error(path, ": the config must be a mapping of keys to values");
      flatten(root, "", flat, path);
    }
  } catch (const YAML::Exception& e) {
    user_error(path, ": not valid YAML or JSON: ", e.what());
  }
  for (const auto& ov : overrides) {
    auto eq = ov.find('=');
    if (eq == std::string::npos || eq == 0)
      user_error("override '", ov, "' must look like key=value (for example optim.lr=1e-3)");
    flat[ov.substr(0, eq)] = ov.substr(eq + 1);
  }
  return config_from_flat(std::move(flat), overrides.empty() ? path : path + " (with overrides)");
}

void to_json(nlohmann::json& j, const BlendSource& s) {
  j = {{"path", s.path}, {"name", s.name}};
  if (s.weight > 0) j["weight"] = s.weight;
  if (s.epochs > 0) j["epochs"] = s.epochs;
}

nlohmann::json config_to_json(const Config& c) {
  nlohmann::json j = nlohmann::json::object();
  visit_config(c, [&](const char* key, const auto& field, const char*) {
    std::string k = key;
    auto dot = k.find('.');
    if (dot == std::string::npos) j[k] = field;
    else j[k.substr(0, dot)][k.substr(dot + 1)] = field;
  });
  return j;
}

Config config_from_json(const nlohmann::json& j, const std::string& origin) {
  FlatMap flat;
  for (const auto& [k, v] : j.items()) {
    if (v.is_object()) {
      for (const auto& [k2, v2] : v.items())
        flat[k + "." + k2] = v2.is_string() ? v2.get<std::string>() : v2.dump();
    } else {
      flat[k] = v.is_string() ? v.get<std::string>() : v.dump();
    }
  }
  return config_from_flat(std::move(flat), origin);
}

std::string config_to_text(const Config& c) {
  std::ostringstream os;
  visit_config(c, [&](const char* key, const auto& field, const char*) {
    os << "  " << key << ": " << nlohmann::json(field).dump() << "\n";
  });
  return os.str();
}

void validate_config(const Config& c, int dp_world) {
  const auto& m = c.model;
  auto positive = [](const char* key, double v) {
    if (!(v > 0)) user_error("config key '", key, "' must be positive, got ", v);
  };
  positive("model.hidden_size", m.hidden_size);
  positive("model.num_hidden_layers", m.num_hidden_layers);
  positive("model.num_attention_heads", m.num_attention_heads);
  positive("model.vocab_size", m.vocab_size);
  positive("model.max_position_embeddings", m.max_position_embeddings);
  positive("model.rope_theta", m.rope_theta);
  positive("model.rms_norm_eps", m.rms_norm_eps);
  positive("model.multiple_of", m.multiple_of);
  positive("model.ffn_dim_multiplier", m.ffn_dim_multiplier);
  positive("model.initializer_range", m.initializer_range);
  if (m.intermediate_size < 0) user_error("config key 'model.intermediate_size' must be >= 0 (0 derives it)");
  if (m.num_key_value_heads < 0) user_error("config key 'model.num_key_value_heads' must be >= 0 (0 means num_attention_heads)");
  if (m.hidden_size % m.num_attention_heads != 0)
    user_error("model.hidden_size (", m.hidden_size, ") must be divisible by model.num_attention_heads (",
               m.num_attention_heads, ")");
  if (m.num_attention_heads % m.kv_heads() != 0)
    user_error("model.num_attention_heads (", m.num_attention_heads,
               ") must be divisible by model.num_key_value_heads (", m.kv_heads(), ")");
  if (m.head_dim() % 2 != 0)
    user_error("head dim hidden_size/num_attention_heads = ", m.head_dim(), " must be even for RoPE");
  if (c.device != "auto" && c.device != "cpu" && c.device != "cuda")
    user_error("config key 'device' must be auto, cpu or cuda, got '", c.device, "'");

  const auto& o = c.optim;
  positive("optim.lr", o.lr);
  if (o.min_lr_ratio < 0 || o.min_lr_ratio > 1)
    user_error("config key 'optim.min_lr_ratio' must be in [0, 1], got ", o.min_lr_ratio);
  if (o.warmup_steps < 0) user_error("config key 'optim.warmup_steps' must be >= 0");
  if (o.decay_steps < 0) user_error("config key 'optim.decay_steps' must be >= 0 (0 = train.steps)");
  if (o.beta1 < 0 || o.beta1 >= 1) user_error("config key 'optim.beta1' must be in [0, 1), got ", o.beta1);
  if (o.beta2 < 0 || o.beta2 >= 1) user_error("config key 'optim.beta2' must be in [0, 1), got ", o.beta2);
  positive("optim.eps", o.eps);
  if (o.weight_decay < 0) user_error("config key 'optim.weight_decay' must be >= 0");
  if (o.grad_clip < 0) user_error("config key 'optim.grad_clip' must be >= 0 (0 disables clipping)");

  const auto& t = c.train;
  positive("train.steps", t.steps);
  positive("train.seq_len", t.seq_len);
  positive("train.micro_batch_size", t.micro_batch_size);
  positive("train.global_batch_tokens", double(t.global_batch_tokens));
  positive("train.log_every", t.log_every);
  if (t.val_every < 0 || t.val_batches < 0)
    user_error("config keys train.val_every and train.val_batches must be >= 0");
  if (t.max_runtime_minutes < 0) user_error("config key 'train.max_runtime_minutes' must be >= 0 (0 = no limit)");
  const auto& g = c.guard;
  if (g.window < 1 || g.min_history < 1 || g.max_skipped_in_a_row < 1 || g.rollback_after < 1 ||
      g.max_rollbacks < 0 || g.replica_check_interval < 0)
    user_error("config keys guard.window, guard.min_history, guard.max_skipped_in_a_row and "
               "guard.rollback_after must be >= 1, guard.max_rollbacks and guard.replica_check_interval >= 0");
  if (!(g.spike_sigma > 0)) user_error("config key 'guard.spike_sigma' must be positive");
  if (!(g.rollback_lr_factor > 0 && g.rollback_lr_factor <= 1))
    user_error("config key 'guard.rollback_lr_factor' must be in (0, 1], got ", g.rollback_lr_factor);
  const auto& ck = c.checkpoint;
  if (ck.interval < 0 || ck.keep_last < 0 || ck.keep_every < 0)
    user_error("config keys checkpoint.interval, checkpoint.keep_last and checkpoint.keep_every must be >= 0");
  if (t.run_dir.empty()) user_error("config key 'train.run_dir' must name a directory");
  const auto& blend = c.data.blend;
  if (!blend.empty() && !c.data.path.empty())
    user_error("config keys 'data.path' and 'data.blend' are both set; use data.path for one dataset or data.blend "
               "for several, not both");
  for (size_t i = 0; i < blend.size(); ++i) {
    const auto& b = blend[i];
    const std::string where = "data.blend[" + std::to_string(i) + "]";
    if (b.path.empty()) user_error("config key '", where, ".path' is required (a dataset as data.path takes it)");
    if (b.weight < 0 || b.epochs < 0 || !std::isfinite(b.weight) || !std::isfinite(b.epochs))
      user_error("config key '", where, "' ('", b.name, "'): weight and epochs must be positive");
    if ((b.weight > 0) == (b.epochs > 0))
      user_error("config key '", where, "' ('", b.name, "') needs exactly one of weight (its relative share) or epochs "
                 "(how many times the run reads it)");
    for (size_t k = 0; k < i; ++k)
      if (blend[k].name == b.name)
        user_error("config key 'data.blend': entries ", k, " and ", i, " are both named '", b.name,
                   "'; give them distinct names (name: ...)");
  }
  if (t.recompute != "none" && t.recompute != "selective" && t.recompute != "full")
    user_error("config key 'train.recompute' must be none, selective or full, got '", t.recompute, "'");
  if (t.seq_len > m.max_position_embeddings)
    user_error("train.seq_len (", t.seq_len, ") exceeds model.max_position_embeddings (",
               m.max_position_embeddings, ")");
  const int64_t per_micro = int64_t(t.micro_batch_size) * t.seq_len * dp_world;
  if (t.global_batch_tokens % per_micro != 0)
    user_error("train.global_batch_tokens (", t.global_batch_tokens,
               ") must be a multiple of micro_batch_size * seq_len * data-parallel ranks = ",
               t.micro_batch_size, " * ", t.seq_len, " * ", dp_world, " = ", per_micro,
               " (nearest: ", std::max<int64_t>(1, t.global_batch_tokens / per_micro) * per_micro, ")");
  const auto& par = c.parallel;
  const int64_t accum = t.global_batch_tokens / per_micro;
  if (par.schedule == "interleaved" && par.pipeline > 1 && accum % par.pipeline != 0)
    user_error("parallel.schedule: interleaved needs the micro-batches per step (", accum,
               ") to be a multiple of parallel.pipeline (", par.pipeline, "); set train.global_batch_tokens to ",
               std::max<int64_t>(1, accum / par.pipeline) * par.pipeline * per_micro, " or ",
               (accum / par.pipeline + 1) * par.pipeline * per_micro);
}

int resolve_parallel_layout(const Config& c, int world_size) {
  const auto& p = c.parallel;
  if (p.tensor < 1) user_error("config key 'parallel.tensor' must be >= 1, got ", p.tensor);
  if (p.data < 0) user_error("config key 'parallel.data' must be >= 0 (0 = world size / parallel.tensor)");
  if (p.zero != 0 && p.zero != 1) user_error("config key 'parallel.zero' must be 0 or 1, got ", p.zero);
  if (!(p.bucket_mb > 0)) user_error("config key 'parallel.bucket_mb' must be positive");
  if (p.timeout_s < 0) user_error("config key 'parallel.timeout_s' must be >= 0 (0 = no limit)");
  if (p.pipeline < 1) user_error("config key 'parallel.pipeline' must be >= 1, got ", p.pipeline);
  if (p.virtual_stages < 1) user_error("config key 'parallel.virtual_stages' must be >= 1, got ", p.virtual_stages);
  if (p.schedule != "1f1b" && p.schedule != "interleaved")
    user_error("config key 'parallel.schedule' must be 1f1b or interleaved, got '", p.schedule, "'");
  if (p.virtual_stages > 1 && p.schedule != "interleaved")
    user_error("parallel.virtual_stages (", p.virtual_stages, ") needs parallel.schedule: interleaved");
  if (p.schedule == "interleaved" && p.pipeline < 2)
    user_error("parallel.schedule: interleaved needs parallel.pipeline >= 2, got ", p.pipeline);
  const int64_t pt = int64_t(p.pipeline) * p.tensor;
  if (world_size % pt != 0)
    user_error("the world of ", world_size, " ranks is not divisible by parallel.pipeline (", p.pipeline,
               ") x parallel.tensor (", p.tensor, ") = ", pt, "; launch a multiple of ", pt, " ranks");
  const int data = p.data ? p.data : int(world_size / pt);
  if (data * pt != world_size)
    user_error("the world of ", world_size, " ranks does not factor as parallel.data (", data,
               ") x parallel.pipeline (", p.pipeline, ") x parallel.tensor (", p.tensor, "); launch ",
               data * pt, " ranks or change the layout");
  const auto& m = c.model;
  const int tp = p.tensor;
  if (tp > 1) {
    if (m.num_attention_heads % tp != 0)
      user_error("model.num_attention_heads (", m.num_attention_heads, ") must be divisible by parallel.tensor (", tp, ")");
    if (m.kv_heads() < tp)
      user_error("model.num_key_value_heads (", m.kv_heads(), ") is smaller than parallel.tensor (", tp,
                 "): replicating KV heads is not supported; use parallel.tensor <= ", m.kv_heads());
    if (m.kv_heads() % tp != 0)
      user_error("model.num_key_value_heads (", m.kv_heads(), ") must be divisible by parallel.tensor (", tp, ")");
    if (m.ffn_dim() % tp != 0)
      user_error("model.intermediate_size (", m.ffn_dim(), ") must be divisible by parallel.tensor (", tp, ")");
    if (m.vocab_size % tp != 0)
      user_error("model.vocab_size (", m.vocab_size, ") must be divisible by parallel.tensor (", tp,
                 "); pad it to a multiple, e.g. ", (m.vocab_size + tp - 1) / tp * tp);
    const int64_t tokens = int64_t(c.train.micro_batch_size) * c.train.seq_len;
    if (tokens % tp != 0)
      user_error("micro_batch_size * seq_len (", tokens, ") must be divisible by parallel.tensor (", tp,
                 ") for sequence parallelism");
  }
  return data;
}

std::string config_reference_markdown() {
  std::ostringstream os;
  Config defaults;
  os << "| key | default | meaning |\n|---|---|---|\n";
  visit_config(defaults, [&](const char* key, const auto& field, const char* help) {
    os << "| `" << key << "` | `" << nlohmann::json(field).dump() << "` | " << help << " |\n";
  });
  return os.str();
}

}  // namespace ltrain
