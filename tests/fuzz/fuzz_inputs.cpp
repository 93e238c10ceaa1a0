// Seeded mutation fuzzing of the readers of user-supplied files (issue 7, "Fuzzed bad input"):
//   config      load_config(path, overrides) + validate_config + resolve_parallel_layout
//   shard       TokenShard::open(path, verify) and reads of a few tokens and document starts
//   dataset     load_dataset_meta(dir) on a mutated meta.json (and mutated shards)
//   checkpoint  open_checkpoint(dir) + verify_checkpoint + read_checkpoint_tensors("tensors")
// Each case starts from a valid seed input (written at start-up), applies random mutations and
// feeds the result to the target. The target must either accept it or throw ltrain::UserError with
// a non-empty one-line message. Any other exception (bad_alloc included: the loop runs under an
// address-space limit so an unbounded allocation becomes one), a crash (signal) or a hang (a
// case running longer than the watchdog allows) is a failure.
//
// Every case is a pure function of (seed, target, case index), so a failure is reproduced with
//   fuzz_inputs --target T --case N [--seed S]     (prints the input and the outcome)
// Each target runs in a forked child; a crash is reported by the parent, which regenerates the
// crashing input for the report and continues with the next case.
//
// Options / environment: LTRAIN_FUZZ_SECONDS (per target, default 15), LTRAIN_FUZZ_SEED (1),
// LTRAIN_FUZZ_MEM_GB (address-space limit of the children, 4), --target T (only that target).
// Output: one "fuzz <target>: ..." line per target and a final "fuzz: N passed, M failed" line
// (N, M: cases).
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <set>
#include <string>
#include <typeinfo>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/config/config.h"
#include "ltrain/core/backend.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/dataset.h"
#include "ltrain/data/shard.h"
#include "ltrain/model/llama.h"

using nlohmann::json;
using Rng = std::mt19937_64;

namespace {

// ---- small helpers ------------------------------------------------------------------------------

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t below(Rng& r, uint64_t n) { return n ? r() % n : 0; }
bool chance(Rng& r, int percent) { return int(below(r, 100)) < percent; }
template <class T>
const T& pick(Rng& r, const std::vector<T>& v) { return v[below(r, v.size())]; }

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string read_file(const std::string& p) { return ltrain::read_text_file(p); }
void write_file(const std::string& p, const std::string& b) {
  FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
    std::exit(3);
  }
  if (!b.empty()) std::fwrite(b.data(), 1, b.size(), f);
  std::fclose(f);
}

// Printable preview of an input: text escaped, or a hex dump when it is binary; truncated.
std::string preview(const std::string& b, size_t max_bytes = 600, bool text = false) {
  size_t printable = 0;
  for (unsigned char c : b) printable += (c >= 32 && c < 127) || c == '\n' || c == '\t';
  std::string out;
  const size_t n = std::min(b.size(), max_bytes);
  if (text || b.size() == 0 || printable * 10 >= b.size() * 9) {
    for (size_t i = 0; i < n; ++i) {
      unsigned char c = b[i];
      if (c == '\n') out += "\\n";
      else if (c == '\\') out += "\\\\";
      else if (c >= 32 && c < 127) out += char(c);
      else {
        char t[8];
        std::snprintf(t, sizeof t, "\\x%02x", c);
        out += t;
      }
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      char t[8];
      std::snprintf(t, sizeof t, "%02x%s", (unsigned char)b[i], (i % 32 == 31) ? "\n      " : (i % 4 == 3 ? " " : ""));
      out += t;
    }
  }
  if (b.size() > n) out += "... (" + std::to_string(b.size()) + " bytes in all)";
  return out;
}

template <class T>
T get_at(const std::string& b, size_t off) {
  T v{};
  if (off + sizeof(T) <= b.size()) std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}
template <class T>
void put_at(std::string& b, size_t off, T v) {
  if (off + sizeof(T) <= b.size()) std::memcpy(&b[off], &v, sizeof(T));
}

// ---- generic mutators ---------------------------------------------------------------------------

const std::vector<std::string> kNumbers = {
    "0", "-0", "1", "-1", "2", "3", "7", "16", "31", "32", "65535", "65536", "65537",
    "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967295", "4294967296",
    "4294967312", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "18446744073709551615", "18446744073709551600", "18446744073709551616",
    "99999999999999999999999999", "1e18", "9.3e18", "1e308", "1e309", "-1e309", "1e-400",
    "4.9e-324", "3.5", "0.5", "-0.5", "1e2", "1E2", "0x10", "010", "1_000", "_", "+5", "nan",
    "NaN", ".nan", ".NaN", "inf", "-inf", ".inf", "-.inf", "Infinity", "1.", ".5", "--1", "1e",
    "true", "null", "~", ""};

const std::vector<uint64_t> kInts = {
    0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 255, 256, 65535, 65536, 65537, 0x7fffffff,
    0x80000000ull, 0xffffffffull, 0x100000000ull, (1ull << 56), (1ull << 56) + 1, (1ull << 60),
    (1ull << 62), 0x7fffffffffffffffull, 0x8000000000000000ull, ~0ull, ~0ull - 7, ~0ull - 63};

std::string random_bytes(Rng& r, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = char(r());
  return s;
}

std::string long_string(Rng& r) {
  const size_t n = pick(r, std::vector<size_t>{1, 100, 1000, 10000, 65536, 300000});
  switch (below(r, 4)) {
    case 0: return std::string(n, 'a');
    case 1: return std::string(n, '9');
    case 2: return std::string(n, '\n');
    default: {
      std::string s;
      while (s.size() < n) s += "\xc3\xa9\\\"'{[:,#&*!|>%@`\t ";
      s.resize(n);
      return s;
    }
  }
}

// One random byte-level edit.
void mutate_bytes_once(Rng& r, std::string& b, const std::vector<std::string>& seeds) {
  switch (below(r, 11)) {
    case 0:  // bit flips
      if (!b.empty())
        for (int i = 0, n = 1 + int(below(r, 8)); i < n; ++i) b[below(r, b.size())] ^= char(1u << below(r, 8));
      break;
    case 1:  // set a byte to an interesting value
      if (!b.empty()) b[below(r, b.size())] = char(pick(r, std::vector<int>{0, 0xff, 0x7f, 0x80, '\n', '"', '{', '['}));
      break;
    case 2:  // insert random bytes
      b.insert(below(r, b.size() + 1), random_bytes(r, 1 + below(r, 16)));
      break;
    case 3:  // delete a range
      if (!b.empty()) {
        size_t at = below(r, b.size());
        b.erase(at, 1 + below(r, std::min<size_t>(64, b.size() - at)));
      }
      break;
    case 4:  // truncate
      b.resize(below(r, b.size() + 1));
      break;
    case 5: {  // splice with another seed
      const std::string& o = pick(r, seeds);
      size_t a = below(r, b.size() + 1), c = below(r, o.size() + 1);
      b = b.substr(0, a) + o.substr(c);
      break;
    }
    case 6: {  // duplicate a range
      if (!b.empty()) {
        size_t at = below(r, b.size()), len = 1 + below(r, std::min<size_t>(256, b.size() - at));
        b.insert(below(r, b.size() + 1), b.substr(at, len));
      }
      break;
    }
    case 7: {  // overwrite 4 or 8 bytes with an interesting integer
      uint64_t v = pick(r, kInts);
      if (b.size() >= 8) {
        size_t at = below(r, b.size() - 7);
        if (chance(r, 50)) put_at<uint64_t>(b, at, v);
        else put_at<uint32_t>(b, at, uint32_t(v));
      }
      break;
    }
    case 8:  // append garbage
      b += random_bytes(r, 1 + below(r, 64));
      break;
    case 9:  // empty
      if (chance(r, 20)) b.clear();
      break;
    default:  // swap two bytes
      if (b.size() > 1) std::swap(b[below(r, b.size())], b[below(r, b.size())]);
      break;
  }
}

// Text-level edits for YAML / JSON.
void mutate_text_once(Rng& r, std::string& t, const std::vector<std::string>& seeds) {
  switch (below(r, 10)) {
    case 0:
    case 1: {  // replace a number by an interesting one
      std::vector<std::pair<size_t, size_t>> nums;
      for (size_t i = 0; i < t.size();) {
        if ((t[i] >= '0' && t[i] <= '9') || (t[i] == '-' && i + 1 < t.size() && isdigit((unsigned char)t[i + 1]))) {
          size_t j = i + 1;
          while (j < t.size() && (isdigit((unsigned char)t[j]) || t[j] == '.' || t[j] == 'e' || t[j] == 'E' ||
                                  t[j] == '-' || t[j] == '+'))
            ++j;
          nums.push_back({i, j - i});
          i = j;
        } else {
          ++i;
        }
      }
      if (!nums.empty()) {
        auto [at, len] = pick(r, nums);
        t.replace(at, len, pick(r, kNumbers));
      }
      break;
    }
    case 2: {  // duplicate a line (duplicate keys)
      std::vector<size_t> starts{0};
      for (size_t i = 0; i < t.size(); ++i)
        if (t[i] == '\n') starts.push_back(i + 1);
      size_t a = pick(r, starts);
      size_t e = t.find('\n', a);
      std::string line = t.substr(a, e == std::string::npos ? std::string::npos : e - a + 1);
      t.insert(pick(r, starts), line);
      break;
    }
    case 3: {  // insert a long string
      t.insert(below(r, t.size() + 1), long_string(r));
      break;
    }
    case 4: {  // deep nesting
      const size_t depth = pick(r, std::vector<size_t>{10, 100, 1000, 10000, 100000});
      std::string open, close;
      switch (below(r, 3)) {
        case 0: open = "["; close = "]"; break;
        case 1: open = "{\"a\":"; close = "}"; break;
        default: open = "{a: "; close = "}"; break;
      }
      std::string nest;
      for (size_t i = 0; i < depth; ++i) nest += open;
      nest += "1";
      for (size_t i = 0; i < depth; ++i) nest += close;
      size_t colon = t.find(':', below(r, t.size() + 1));
      if (colon == std::string::npos) t = "x: " + nest;
      else t.insert(colon + 1, " " + nest);
      break;
    }
    case 5: {  // YAML / JSON specials
      static const std::vector<std::string> specials = {
          "&a ", "*a", "*zz", "!!binary ", "!!str ", "!!int ", "!!map ", "? ", "<<: *a\n", "- ", "---\n",
          "...\n", "{[1, 2]: 3}", "[a, b]", "{}", "[]", "null", "~", "\"\\u0000\"", "'", "\"", "\t",
          "%YAML 1.2\n", "|\n  x\n", ">-\n  y\n", "#", ": ", ",", "\xef\xbb\xbf", "\\", "\0"};
      std::string s = pick(r, specials);
      if (s == "\0") s = std::string(1, '\0');
      t.insert(below(r, t.size() + 1), s);
      break;
    }
    case 6: {  // replace a quoted string or a bare word by something odd
      size_t q = t.find('"', below(r, t.size() + 1));
      if (q != std::string::npos) {
        size_t e = t.find('"', q + 1);
        if (e != std::string::npos)
          t.replace(q + 1, e - q - 1, chance(r, 50) ? long_string(r) : pick(r, kNumbers));
      }
      break;
    }
    default:
      mutate_bytes_once(r, t, seeds);
      break;
  }
}

// A random JSON value, possibly large, deep or of an unexpected type.
json random_json(Rng& r, int depth = 0) {
  switch (below(r, depth > 3 ? 7 : 10)) {
    case 0: return nullptr;
    case 1: return chance(r, 50);
    case 2: return int64_t(pick(r, kInts)) * (chance(r, 50) ? 1 : -1);
    case 3: return pick(r, kInts);
    case 4: return pick(r, std::vector<double>{0.0, -0.0, 0.5, -1.5, 1e308, -1e308, 1e-320, 3.0, 4.0,
                                                std::numeric_limits<double>::quiet_NaN(),
                                                std::numeric_limits<double>::infinity()});
    case 5: return chance(r, 50) ? pick(r, kNumbers) : std::string(chance(r, 50) ? "" : long_string(r));
    case 6: return pick(r, std::vector<std::string>{"../../../../etc/passwd", "/", ".", "..", "meta.json",
                                                    "model_00000.bin", "train_00000.bin", "tensors",
                                                    "model.embed_tokens.weight", "f32", "\n", "a\nb"});
    case 7: {
      json a = json::array();
      for (int i = 0, n = int(below(r, 6)); i < n; ++i) a.push_back(random_json(r, depth + 1));
      return a;
    }
    case 8: {
      json a = json::array();  // a shape-like array
      for (int i = 0, n = int(below(r, 9)); i < n; ++i)
        a.push_back(chance(r, 70) ? json(int64_t(below(r, 40)) - 4) : json(int64_t(pick(r, kInts))));
      return a;
    }
    default: {
      json o = json::object();
      for (int i = 0, n = int(below(r, 5)); i < n; ++i)
        o[pick(r, std::vector<std::string>{"name", "shape", "file", "offset", "bytes", "crc32", "tokens",
                                           "shards", "x", "", "format", "version"})] = random_json(r, depth + 1);
      return o;
    }
  }
}

// Collects JSON pointers to every node.
void collect_pointers(const json& j, const json::json_pointer& p, std::vector<json::json_pointer>& out) {
  out.push_back(p);
  if (j.is_object())
    for (auto it = j.begin(); it != j.end(); ++it) collect_pointers(*it, p / it.key(), out);
  else if (j.is_array())
    for (size_t i = 0; i < j.size(); ++i) collect_pointers(j[i], p / i, out);
}

// One structural edit of a JSON document.
void mutate_json_once(Rng& r, json& doc) {
  std::vector<json::json_pointer> ptrs;
  collect_pointers(doc, json::json_pointer(), ptrs);
  const json::json_pointer p = pick(r, ptrs);
  json& node = doc[p];
  switch (below(r, 9)) {
    case 0:
    case 1:
      node = random_json(r);  // replace with a random value
      break;
    case 2:  // numbers: tweak
      if (node.is_number_integer()) {
        int64_t v = node.get<int64_t>();
        node = pick(r, std::vector<int64_t>{v + 1, v - 1, -v, v * 2, v * 1000003, -1, 0, INT64_MAX, INT64_MIN});
      } else if (node.is_number()) {
        node = -node.get<double>();
      } else {
        node = random_json(r);
      }
      break;
    case 3:  // remove a member / element
      if (!p.empty()) {
        json& parent = doc[p.parent_pointer()];
        if (parent.is_object()) parent.erase(p.back());
        else if (parent.is_array() && !parent.empty()) parent.erase(parent.begin() + long(below(r, parent.size())));
      }
      break;
    case 4:  // add an unknown or duplicate-looking member
      if (node.is_object()) node[chance(r, 50) ? "unknown_key" : long_string(r).substr(0, 40)] = random_json(r);
      else if (node.is_array()) node.push_back(random_json(r));
      break;
    case 5:  // duplicate an array element
      if (node.is_array() && !node.empty())
        for (int i = 0, n = 1 + int(below(r, 3)); i < n; ++i) node.push_back(node[below(r, node.size())]);
      break;
    case 6:  // wrap in an array or object
      node = chance(r, 50) ? json::array({node}) : json{{"x", node}};
      break;
    case 7:  // change the type while keeping the look
      if (node.is_number()) node = node.dump(-1, ' ', false, json::error_handler_t::replace);
      else if (node.is_string()) {
        try {
          node = json::parse(node.get<std::string>());
        } catch (const std::exception&) {
          node = 0;
        }
      } else {
        node = node.dump(-1, ' ', false, json::error_handler_t::replace);
      }
      break;
    default:  // shape-like array
      node = random_json(r);
      break;
  }
}

// JSON text from a seed: structural edits, text edits, or both.
std::string mutate_json_text(Rng& r, const std::string& seed_text, const std::vector<std::string>& seeds) {
  std::string out;
  if (chance(r, 70)) {
    json doc = json::parse(seed_text);
    for (int i = 0, n = 1 + int(below(r, 4)); i < n; ++i) mutate_json_once(r, doc);
    out = doc.dump(chance(r, 50) ? 2 : -1, ' ', false, json::error_handler_t::replace);
    if (chance(r, 30)) mutate_text_once(r, out, seeds);
  } else {
    out = seed_text;
    for (int i = 0, n = 1 + int(below(r, 4)); i < n; ++i) mutate_text_once(r, out, seeds);
  }
  return out;
}

// ---- outcome checking ---------------------------------------------------------------------------

struct Outcome {
  enum Kind { kAccepted, kRejected, kFailed } kind = kAccepted;
  std::string what;  // failure description
};

// Runs `f`, classifying what it throws.
Outcome classify(const std::function<void()>& f) {
  Outcome o;
  try {
    f();
  } catch (const ltrain::UserError& e) {
    std::string m = e.what();
    if (m.empty()) return {Outcome::kFailed, "UserError with an empty message"};
    if (m.find('\n') != std::string::npos)
      return {Outcome::kFailed, "UserError message spans several lines: " + preview(m, 300, true)};
    return {Outcome::kRejected, ""};
  } catch (const std::bad_alloc& e) {
    return {Outcome::kFailed, std::string("std::bad_alloc (unbounded allocation): ") + e.what()};
  } catch (const std::exception& e) {
    return {Outcome::kFailed, std::string("non-UserError exception ") + typeid(e).name() + ": " + preview(e.what(), 300, true)};
  } catch (...) {
    return {Outcome::kFailed, "unknown exception type"};
  }
  return o;
}

// ---- a fuzz target ------------------------------------------------------------------------------

struct Case {
  std::map<std::string, std::string> files;  // relative path -> bytes (written into the case dir)
  std::vector<std::string> overrides;        // config target
  bool verify = true;                        // shard target
  int world = 1;                             // config target
  std::string describe() const {
    std::string s;
    for (const auto& [k, v] : files) s += "    file " + k + ": " + preview(v) + "\n";
    for (const auto& o : overrides) s += "    override: " + preview(o, 300) + "\n";
    s += "    verify=" + std::to_string(verify) + " world=" + std::to_string(world) + "\n";
    return s;
  }
};

struct Target {
  std::string name;
  std::function<Case(Rng&)> generate;
  std::function<Outcome(const std::string& dir, const Case&)> run;
};

// Writes the case's files into a fresh directory `dir`.
void materialize(const std::string& dir, const Case& c) {
  ltrain::remove_tree(dir);
  ltrain::make_dirs(dir);
  for (const auto& [rel, bytes] : c.files) {
    const std::string p = ltrain::path_join(dir, rel);
    ltrain::make_dirs(ltrain::dirname_of(p));
    write_file(p, bytes);
  }
}

// ---- seeds --------------------------------------------------------------------------------------

struct Seeds {
  std::vector<std::string> yaml, json_cfg;           // configs
  std::vector<std::string> shards;                   // shard images
  std::string dataset_meta;                          // meta.json of a 2-shard dataset
  std::string dataset_train, dataset_val;            // its shards
  std::string ckpt_meta, ckpt_model;                 // a checkpoint's meta.json and model_00000.bin
  std::vector<std::string> all_text;                 // for splicing
};

std::string shard_image(const std::string& scratch, const std::vector<uint32_t>& tokens,
                        const std::vector<uint64_t>& docs, uint32_t vocab) {
  const std::string p = ltrain::path_join(scratch, "seed_shard.bin");
  ltrain::write_shard(p, tokens, docs, vocab);
  return read_file(p);
}

Seeds make_seeds(const std::string& scratch) {
  Seeds s;
  s.yaml.push_back(
      "model:\n  hidden_size: 64\n  intermediate_size: 128\n  num_hidden_layers: 2\n  num_attention_heads: 4\n"
      "  num_key_value_heads: 2\n  rope_theta: 10000.0\n  rms_norm_eps: 1.0e-5\n  vocab_size: 256\n"
      "  max_position_embeddings: 64\n  tie_word_embeddings: true\noptim:\n  lr: 3.0e-3\n  min_lr_ratio: 0.1\n"
      "  warmup_steps: 10\n  beta1: 0.9\n  beta2: 0.95\n  weight_decay: 0.1\n  grad_clip: 1.0\ntrain:\n"
      "  steps: 100\n  seq_len: 32\n  micro_batch_size: 2\n  global_batch_tokens: 128\n  seed: 7\n"
      "  run_dir: runs/fuzz\n  val_every: 10\n  recompute: selective\n  max_runtime_minutes: 0.5\n"
      "data:\n  path: data/fuzz\n  shuffle: false\n  verify: yes\ncheckpoint:\n  interval: 10\n"
      "  keep_last: 2\n  keep_every: 50\nparallel:\n  data: 1\n  tensor: 1\n  zero: 0\n  bucket_mb: 25\n"
      "device: cpu\n");
  s.yaml.push_back("# flat keys\nmodel: {hidden_size: 32, num_attention_heads: 2, vocab_size: 64, "
                   "max_position_embeddings: 16}\ntrain: {seq_len: 16, global_batch_tokens: 4_096, steps: 1e3}\n");
  s.yaml.push_back("");  // an empty config (all defaults)
  ltrain::Config c;
  c.model.hidden_size = 64;
  c.model.num_attention_heads = 4;
  c.model.vocab_size = 256;
  c.model.max_position_embeddings = 64;
  c.train.seq_len = 32;
  c.train.global_batch_tokens = 64;
  s.json_cfg.push_back(ltrain::config_to_json(c).dump(2));
  s.json_cfg.push_back(ltrain::config_to_json(ltrain::Config{}).dump());

  s.shards.push_back(shard_image(scratch, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 31}, {0, 3, 7}, 32));
  s.shards.push_back(shard_image(scratch, {1, 69999, 3, 65536, 5}, {0, 2}, 70000));
  s.shards.push_back(shard_image(scratch, {}, {}, 32));
  s.shards.push_back(shard_image(scratch, {0}, {0}, 1));
  s.shards.push_back(shard_image(scratch, {5, 6, 7}, {}, 65536));

  // A dataset directory as `ltrain prepare` writes it.
  s.dataset_train = shard_image(scratch, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}, {0, 9}, 64);
  s.dataset_val = shard_image(scratch, {1, 2, 3, 4, 5, 6, 7}, {0}, 64);
  json meta = {{"format", "ltrain-dataset"},
               {"version", ltrain::kDatasetFormatVersion},
               {"vocab_size", 64},
               {"bos_id", 1},
               {"eos_id", 2},
               {"dtype", "uint16"},
               {"bytes_per_token", 2},
               {"tokenizer", "tokenizer.model"},
               {"doc_boundary", "bos"},
               {"val_fraction", 0.1},
               {"shard_tokens", 1000},
               {"docs", 3},
               {"train", {{"tokens", 17}, {"docs", 2}, {"shards", {{{"file", "train_00000.bin"}, {"tokens", 17}, {"docs", 2}}}}}},
               {"val", {{"tokens", 7}, {"docs", 1}, {"shards", {{{"file", "val_00000.bin"}, {"tokens", 7}, {"docs", 1}}}}}},
               {"sources", json::array()},
               {"created_by", "ltrain prepare"}};
  s.dataset_meta = meta.dump(2) + "\n";

  // A checkpoint of a tiny model.
  {
    ltrain::Config cfg;
    cfg.model.hidden_size = 16;
    cfg.model.num_attention_heads = 2;
    cfg.model.intermediate_size = 32;
    cfg.model.num_hidden_layers = 1;
    cfg.model.vocab_size = 32;
    cfg.model.max_position_embeddings = 8;
    cfg.train.seq_len = 8;
    cfg.train.global_batch_tokens = 8;
    auto be = ltrain::make_cpu_backend();
    ltrain::LlamaModel model(cfg.model, *be, 1, 8);
    model.init_weights(1);
    auto w = model.export_full(model.param_buffer());
    ltrain::TrainState st;
    st.step = 3;
    st.tokens = 24;
    st.data = json{{"epoch", 0}, {"cursor", 3}};
    st.layout = json{{"data", 1}, {"tensor", 1}};
    const std::string run = ltrain::path_join(scratch, "seed_run");
    const std::string dir = ltrain::save_checkpoint(run, st, cfg, w, nullptr, nullptr, "");
    s.ckpt_meta = read_file(ltrain::path_join(dir, "meta.json"));
    s.ckpt_model = read_file(ltrain::path_join(dir, "model_00000.bin"));
    ltrain::remove_tree(run);
  }
  s.all_text = s.yaml;
  s.all_text.insert(s.all_text.end(), s.json_cfg.begin(), s.json_cfg.end());
  s.all_text.push_back(s.dataset_meta);
  s.all_text.push_back(s.ckpt_meta);
  return s;
}

// ---- shard mutations ----------------------------------------------------------------------------

// Recomputes the shard checksums over whatever the header now claims (where the file holds it), so
// mutations reach the checks behind them.
void fix_shard_checksums(std::string& b, bool header, bool index, bool tokens) {
  if (b.size() < 64) return;
  const uint32_t bpt = get_at<uint32_t>(b, 12);
  const uint64_t n = get_at<uint64_t>(b, 16), docs = get_at<uint64_t>(b, 24);
  if (n < (1ull << 40) && docs < (1ull << 40) && (bpt == 2 || bpt == 4)) {
    const uint64_t tok_bytes = n * bpt, index_off = 64 + ((tok_bytes + 7) & ~uint64_t(7));
    if (tokens && 64 + tok_bytes <= b.size()) put_at<uint32_t>(b, 36, ltrain::crc32(b.data() + 64, tok_bytes));
    if (index && index_off + docs * 8 <= b.size())
      put_at<uint32_t>(b, 40, ltrain::crc32(b.data() + index_off, docs * 8));
  }
  if (header) put_at<uint32_t>(b, 44, ltrain::crc32(b.data(), 44));
}

std::string mutate_shard(Rng& r, const std::string& seed, const std::vector<std::string>& seeds) {
  std::string b = seed;
  const int rounds = 1 + int(below(r, 3));
  for (int i = 0; i < rounds; ++i) {
    switch (below(r, 6)) {
      case 0: {  // a header field to an interesting value
        static const std::vector<std::pair<size_t, int>> fields = {{8, 4}, {12, 4}, {16, 8}, {24, 8}, {32, 4}, {36, 4}, {40, 4}};
        auto [off, w] = pick(r, fields);
        uint64_t v = pick(r, kInts);
        if (w == 4) put_at<uint32_t>(b, off, uint32_t(v));
        else put_at<uint64_t>(b, off, v);
        break;
      }
      case 1: {  // a document start
        uint64_t docs = get_at<uint64_t>(b, 24), n = get_at<uint64_t>(b, 16);
        uint32_t bpt = get_at<uint32_t>(b, 12);
        if (docs && docs < 1000 && n < 100000 && (bpt == 2 || bpt == 4)) {
          uint64_t off = 64 + ((n * bpt + 7) & ~uint64_t(7)) + 8 * below(r, docs);
          put_at<uint64_t>(b, off, chance(r, 50) ? pick(r, kInts) : below(r, n + 2));
        }
        break;
      }
      case 2: {  // a token to an out-of-vocabulary or edge value
        uint64_t n = get_at<uint64_t>(b, 16);
        uint32_t bpt = get_at<uint32_t>(b, 12);
        if (n && n < 100000 && (bpt == 2 || bpt == 4)) {
          uint64_t off = 64 + bpt * below(r, n);
          uint32_t v = uint32_t(pick(r, kInts));
          if (bpt == 2) put_at<uint16_t>(b, off, uint16_t(v));
          else put_at<uint32_t>(b, off, v);
        }
        break;
      }
      case 3:  // change the size
        if (chance(r, 50)) b.resize(below(r, b.size() + 1));
        else b.append(size_t(pick(r, std::vector<int>{1, 7, 8, 16, 64})), '\0');
        break;
      default:
        mutate_bytes_once(r, b, seeds);
        break;
    }
  }
  if (chance(r, 75)) fix_shard_checksums(b, true, chance(r, 80), chance(r, 80));
  return b;
}

// ---- the targets --------------------------------------------------------------------------------

Target config_target(const Seeds& s) {
  Target t;
  t.name = "config";
  t.generate = [&s](Rng& r) {
    Case c;
    const bool yaml = chance(r, 60);
    std::string text;
    if (yaml) {
      text = pick(r, s.yaml);
      if (chance(r, 3)) {
        // Aliases to aliases: a small file that names exponentially many keys ("billion laughs").
        const int levels = 2 + int(below(r, 40));
        text = "a0: &a0 {x: 1, y: 2}\n";
        for (int i = 1; i < levels; ++i)
          text += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " {p: *a" + std::to_string(i - 1) +
                  ", q: *a" + std::to_string(i - 1) + "}\n";
      } else {
        for (int i = 0, n = 1 + int(below(r, 2)); i < n; ++i) mutate_text_once(r, text, s.all_text);
      }
    } else {
      text = mutate_json_text(r, pick(r, s.json_cfg), s.all_text);
    }
    c.files[yaml ? "config.yaml" : "config.json"] = text;
    static const std::vector<std::string> keys = {
        "model.hidden_size", "model.num_attention_heads", "model.num_key_value_heads", "model.vocab_size",
        "model.intermediate_size", "model.rope_theta", "model.ffn_dim_multiplier", "model.multiple_of",
        "optim.lr", "optim.beta1", "optim.min_lr_ratio", "optim.warmup_steps", "train.seq_len",
        "train.global_batch_tokens", "train.seed", "train.steps", "train.micro_batch_size", "train.recompute",
        "train.run_dir", "data.shuffle", "data.path", "parallel.tensor", "parallel.data", "parallel.zero",
        "parallel.bucket_mb", "device", "model", "model.", ".x", "model..hidden_size", "hiden_size", "x"};
    for (int i = 0, n = chance(r, 60) ? 0 : 1 + int(below(r, 3)); i < n; ++i) {
      std::string ov;
      switch (below(r, 6)) {
        case 0: ov = pick(r, keys) + "=" + pick(r, kNumbers); break;
        case 1: ov = pick(r, keys) + "=" + long_string(r).substr(0, chance(r, 50) ? 20 : 100000); break;
        case 2: ov = pick(r, keys); break;  // no '='
        case 3: ov = "=" + pick(r, kNumbers); break;
        case 4: ov = pick(r, keys) + "==" + pick(r, std::vector<std::string>{"true", "none", "cpu", "1", "a=b"}); break;
        default: ov = pick(r, keys) + "=" + pick(r, kNumbers); mutate_bytes_once(r, ov, keys); break;
      }
      c.overrides.push_back(ov);
    }
    c.world = 1 + int(below(r, 8));
    return c;
  };
  t.run = [](const std::string& dir, const Case& c) {
    const std::string path = ltrain::path_join(dir, c.files.begin()->first);
    return classify([&] {
      ltrain::Config cfg = ltrain::load_config(path, c.overrides);
      (void)ltrain::config_to_text(cfg);
      ltrain::validate_config(cfg, 1);
      const int dp = ltrain::resolve_parallel_layout(cfg, c.world);
      ltrain::validate_config(cfg, dp);
    });
  };
  return t;
}

Target shard_target(const Seeds& s) {
  Target t;
  t.name = "shard";
  t.generate = [&s](Rng& r) {
    Case c;
    c.files["shard.bin"] = mutate_shard(r, pick(r, s.shards), s.shards);
    c.verify = chance(r, 50);
    return c;
  };
  t.run = [](const std::string& dir, const Case& c) {
    return classify([&] {
      ltrain::TokenShard sh = ltrain::TokenShard::open(ltrain::path_join(dir, "shard.bin"), c.verify);
      const uint64_t n = sh.num_tokens();
      volatile uint64_t sink = 0;
      for (uint64_t i = 0; i < std::min<uint64_t>(n, 8); ++i) sink = sink + sh.token(i);
      if (n) sink = sink + sh.token(n - 1);
      std::vector<int32_t> buf(size_t(std::min<uint64_t>(n, 16)));
      if (!buf.empty()) sh.read(n - buf.size(), buf.size(), buf.data());
      for (uint64_t i = 0; i < std::min<uint64_t>(sh.num_docs(), 16); ++i) sink = sink + sh.doc_start(i);
      (void)sink;
    });
  };
  return t;
}

Target dataset_target(const Seeds& s) {
  Target t;
  t.name = "dataset";
  t.generate = [&s](Rng& r) {
    Case c;
    c.files["meta.json"] = chance(r, 85) ? mutate_json_text(r, s.dataset_meta, s.all_text) : s.dataset_meta;
    c.files["train_00000.bin"] = chance(r, 15) ? mutate_shard(r, s.dataset_train, s.shards) : s.dataset_train;
    c.files["val_00000.bin"] = chance(r, 15) ? mutate_shard(r, s.dataset_val, s.shards) : s.dataset_val;
    if (chance(r, 5)) c.files.erase("val_00000.bin");
    return c;
  };
  t.run = [](const std::string& dir, const Case&) {
    return classify([&] { (void)ltrain::load_dataset_meta(dir); });
  };
  return t;
}

Target checkpoint_target(const Seeds& s) {
  Target t;
  t.name = "checkpoint";
  t.generate = [&s](Rng& r) {
    Case c;
    std::string meta = s.ckpt_meta, model = s.ckpt_model;
    const int what = int(below(r, 10));
    if (what < 7) meta = mutate_json_text(r, meta, s.all_text);
    if (what >= 5) {  // the weights file: size and contents
      switch (below(r, 4)) {
        case 0: model.resize(below(r, model.size() + 1)); break;
        case 1: model.append(size_t(1 + below(r, 64)), '\0'); break;
        case 2: model.clear(); break;
        default: mutate_bytes_once(r, model, {s.ckpt_model}); break;
      }
    }
    if (chance(r, 10)) {
      // Make the mutated file consistent with meta.json's totals, so the tensor reader is reached.
      try {
        json m = json::parse(meta);
        m["files"]["model_00000.bin"] = {{"bytes", model.size()}, {"crc32", ltrain::crc32(model.data(), model.size())}};
        meta = m.dump(1, ' ', false, json::error_handler_t::replace);
      } catch (const std::exception&) {
      }
    }
    c.files["meta.json"] = meta;
    if (!chance(r, 3)) c.files["model_00000.bin"] = model;
    return c;
  };
  t.run = [](const std::string& dir, const Case&) {
    return classify([&] {
      ltrain::CheckpointInfo info = ltrain::open_checkpoint(dir);
      // Each stage on its own, so that a rejection by one still lets the next be exercised.
      Outcome v = classify([&] { ltrain::verify_checkpoint(info); });
      if (v.kind == Outcome::kFailed) throw std::logic_error("verify_checkpoint: " + v.what);
      Outcome rd = classify([&] { (void)ltrain::read_checkpoint_tensors(info, "tensors"); });
      if (rd.kind == Outcome::kFailed) throw std::logic_error("read_checkpoint_tensors: " + rd.what);
      if (v.kind == Outcome::kRejected || rd.kind == Outcome::kRejected)
        throw ltrain::UserError("rejected");  // counted as a clear rejection
    });
  };
  return t;
}

// ---- the driver ---------------------------------------------------------------------------------

struct Shared {  // shared between the parent and a target's child
  std::atomic<uint64_t> next_case;   // index of the case being run
  std::atomic<uint64_t> accepted, rejected, failed;
  std::atomic<double> case_start;    // now_s() when the current case began
  std::atomic<int> done;
  std::atomic<double> slowest_s;     // the slowest case so far and its index
  std::atomic<uint64_t> slowest_case;
};

Rng case_rng(uint64_t seed, int target_id, uint64_t i) {
  return Rng(splitmix64(seed ^ splitmix64((uint64_t(target_id) << 40) ^ i)));
}

struct Options {
  double seconds = 15;
  uint64_t seed = 1;
  double mem_gb = 4;
  double hang_s = 10;
  std::string only;
  long long single_case = -1;
  std::string workdir;
  bool verbose = false;
};

// The child's loop: cases from `first` on, until the deadline.
[[noreturn]] void child_loop(const Target& t, int target_id, const Options& o, uint64_t first, double deadline,
                             const std::string& case_dir, Shared* sh) {
  struct rlimit rl;
  rl.rlim_cur = rl.rlim_max = rlim_t(o.mem_gb * (1ull << 30));
  setrlimit(RLIMIT_AS, &rl);
  std::set<std::string> reported;
  for (uint64_t i = first; now_s() < deadline; ++i) {
    sh->next_case.store(i);
    sh->case_start.store(now_s());
    Rng r = case_rng(o.seed, target_id, i);
    Case c = t.generate(r);
    materialize(case_dir, c);
    Outcome out = t.run(case_dir, c);
    const double took = now_s() - sh->case_start.load();
    if (o.verbose && took > 0.05) std::printf("fuzz %s: case %llu took %.3f s\n", t.name.c_str(), (unsigned long long)i, took);
    if (took > sh->slowest_s.load()) sh->slowest_s.store(took), sh->slowest_case.store(i);
    sh->case_start.store(0);
    if (out.kind == Outcome::kAccepted) sh->accepted++;
    else if (out.kind == Outcome::kRejected) sh->rejected++;
    else {
      sh->failed++;
      // Report each distinct failure (ignoring digits, which vary with the input) in full once.
      std::string key;
      for (char ch : out.what.substr(0, 160)) key += isdigit((unsigned char)ch) ? '#' : ch;
      if (reported.insert(key).second && reported.size() <= 30) {
        std::printf("FAIL fuzz %s case %llu (seed %llu): %s\n  reproduce: fuzz_inputs --target %s --case %llu --seed %llu\n%s",
                    t.name.c_str(), (unsigned long long)i, (unsigned long long)o.seed, out.what.c_str(), t.name.c_str(),
                    (unsigned long long)i, (unsigned long long)o.seed, c.describe().c_str());
        std::fflush(stdout);
      }
    }
  }
  sh->done.store(1);
  std::fflush(stdout);
  _exit(0);
}

struct Totals {
  uint64_t cases = 0, accepted = 0, rejected = 0, failed = 0;
};

Totals run_target(const Target& t, int target_id, const Options& o, const std::string& scratch) {
  void* mem = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    std::perror("mmap");
    std::exit(3);
  }
  Shared* sh = new (mem) Shared();
  sh->next_case = 0;
  sh->accepted = sh->rejected = sh->failed = 0;
  sh->case_start = 0;
  sh->done = 0;
  sh->slowest_s = 0;
  sh->slowest_case = 0;
  const std::string case_dir = ltrain::path_join(scratch, t.name);
  const double deadline = now_s() + o.seconds;
  uint64_t first = 0, crashes = 0;
  while (now_s() < deadline && crashes < 20) {
    sh->done = 0;
    sh->case_start = 0;
    sh->next_case = first;
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      std::exit(3);
    }
    if (pid == 0) child_loop(t, target_id, o, first, deadline, case_dir, sh);
    int status = 0;
    bool hung = false;
    while (true) {
      pid_t w = waitpid(pid, &status, WNOHANG);
      if (w == pid) break;
      double st = sh->case_start.load();
      if (st > 0 && now_s() - st > o.hang_s) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        hung = true;
        break;
      }
      usleep(20000);
    }
    if (!hung && WIFEXITED(status) && WEXITSTATUS(status) == 0 && sh->done.load()) break;
    // The child died inside a case: regenerate that case for the report, go on after it.
    const uint64_t i = sh->next_case.load();
    sh->failed++;
    ++crashes;
    std::string why = hung ? "hang (case ran over " + std::to_string(int(o.hang_s)) + " s)"
                      : WIFSIGNALED(status) ? std::string("crash: killed by signal ") + strsignal(WTERMSIG(status))
                                            : "exited with status " + std::to_string(WEXITSTATUS(status));
    std::string input;
    try {
      Rng r = case_rng(o.seed, target_id, i);
      input = t.generate(r).describe();
    } catch (const std::exception& e) {
      input = std::string("    (the input generator itself threw: ") + e.what() + ")\n";
    }
    std::printf("FAIL fuzz %s case %llu (seed %llu): %s\n  reproduce: fuzz_inputs --target %s --case %llu --seed %llu\n%s",
                t.name.c_str(), (unsigned long long)i, (unsigned long long)o.seed, why.c_str(), t.name.c_str(),
                (unsigned long long)i, (unsigned long long)o.seed, input.c_str());
    std::fflush(stdout);
    first = i + 1;
  }
  Totals tot;
  tot.accepted = sh->accepted;
  tot.rejected = sh->rejected;
  tot.failed = sh->failed;
  tot.cases = tot.accepted + tot.rejected + tot.failed;
  std::printf("fuzz %s: %llu cases, %llu accepted, %llu rejected with a clear error, %llu failed\n", t.name.c_str(),
              (unsigned long long)tot.cases, (unsigned long long)tot.accepted, (unsigned long long)tot.rejected,
              (unsigned long long)tot.failed);
  std::printf("fuzz %s: slowest case %llu took %.3f s\n", t.name.c_str(), (unsigned long long)sh->slowest_case.load(),
              sh->slowest_s.load());
  std::fflush(stdout);
  munmap(mem, sizeof(Shared));
  ltrain::remove_tree(case_dir);
  return tot;
}

double env_double(const char* name, double def) {
  const char* v = std::getenv(name);
  return v && *v ? std::atof(v) : def;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  o.seconds = env_double("LTRAIN_FUZZ_SECONDS", 15);
  o.seed = uint64_t(env_double("LTRAIN_FUZZ_SEED", 1));
  o.mem_gb = env_double("LTRAIN_FUZZ_MEM_GB", 4);
  o.verbose = env_double("LTRAIN_FUZZ_VERBOSE", 0) != 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fuzz_inputs: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--seconds") o.seconds = std::atof(next().c_str());
    else if (a == "--seed") o.seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--target") o.only = next();
    else if (a == "--case") o.single_case = std::atoll(next().c_str());
    else if (a == "--workdir") o.workdir = next();
    else {
      std::fprintf(stderr,
                   "usage: fuzz_inputs [--seconds S per target] [--seed N] [--target config|shard|dataset|checkpoint]\n"
                   "                   [--case N (run and print one case)] [--workdir DIR]\n");
      return 2;
    }
  }
  std::string base = o.workdir.empty() ? "." : o.workdir;
  ltrain::make_dirs(base);
  std::string tmpl = ltrain::path_join(base, "fuzz_inputs.XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) {
    std::perror("mkdtemp");
    return 3;
  }
  const std::string scratch = buf.data();

  const Seeds seeds = make_seeds(scratch);
  std::vector<Target> targets = {config_target(seeds), shard_target(seeds), dataset_target(seeds),
                                 checkpoint_target(seeds)};

  // Sanity: every seed is accepted as is (else the mutations start from a rejected input).
  int seed_problems = 0;
  for (const auto& y : seeds.yaml) {
    Case c;
    c.files["config.yaml"] = y;
    materialize(ltrain::path_join(scratch, "seedcheck"), c);
    Outcome out = targets[0].run(ltrain::path_join(scratch, "seedcheck"), c);
    if (out.kind != Outcome::kAccepted) ++seed_problems, std::printf("seed config not accepted: %s\n%s", out.what.c_str(), c.describe().c_str());
  }
  {
    Case c;
    c.files["meta.json"] = seeds.dataset_meta;
    c.files["train_00000.bin"] = seeds.dataset_train;
    c.files["val_00000.bin"] = seeds.dataset_val;
    materialize(ltrain::path_join(scratch, "seedcheck"), c);
    if (targets[2].run(ltrain::path_join(scratch, "seedcheck"), c).kind != Outcome::kAccepted)
      ++seed_problems, std::printf("seed dataset not accepted\n");
    c.files.clear();
    c.files["meta.json"] = seeds.ckpt_meta;
    c.files["model_00000.bin"] = seeds.ckpt_model;
    materialize(ltrain::path_join(scratch, "seedcheck"), c);
    if (targets[3].run(ltrain::path_join(scratch, "seedcheck"), c).kind != Outcome::kAccepted)
      ++seed_problems, std::printf("seed checkpoint not accepted\n");
    ltrain::remove_tree(ltrain::path_join(scratch, "seedcheck"));
  }

  if (o.single_case >= 0) {
    for (size_t ti = 0; ti < targets.size(); ++ti) {
      if (targets[ti].name != o.only) continue;
      Rng r = case_rng(o.seed, int(ti), uint64_t(o.single_case));
      Case c = targets[ti].generate(r);
      std::printf("fuzz %s case %lld (seed %llu):\n%s", o.only.c_str(), o.single_case, (unsigned long long)o.seed,
                  c.describe().c_str());
      const std::string dir = ltrain::path_join(scratch, "case");
      materialize(dir, c);
      std::fflush(stdout);
      struct rlimit rl;
      rl.rlim_cur = rl.rlim_max = rlim_t(o.mem_gb * (1ull << 30));
      setrlimit(RLIMIT_AS, &rl);
      Outcome out = targets[ti].run(dir, c);
      std::printf("outcome: %s %s\n", out.kind == Outcome::kAccepted ? "accepted" : out.kind == Outcome::kRejected ? "rejected" : "FAILED",
                  out.what.c_str());
      std::printf("files kept in %s\n", dir.c_str());
      return out.kind == Outcome::kFailed ? 1 : 0;
    }
    std::fprintf(stderr, "fuzz_inputs: --case needs --target config|shard|dataset|checkpoint\n");
    return 2;
  }

  std::printf("fuzz: seed %llu, %.0f s per target, address space limited to %.0f GiB\n", (unsigned long long)o.seed,
              o.seconds, o.mem_gb);
  Totals all;
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    if (!o.only.empty() && targets[ti].name != o.only) continue;
    Totals t = run_target(targets[ti], int(ti), o, scratch);
    all.cases += t.cases;
    all.failed += t.failed;
  }
  all.failed += seed_problems;
  ltrain::remove_tree(scratch);
  std::printf("fuzz: %llu passed, %llu failed\n", (unsigned long long)(all.cases - std::min(all.cases, all.failed)),
              (unsigned long long)all.failed);
  return all.failed ? 1 : 0;
}
