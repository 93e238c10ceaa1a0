// Hugging Face interop (src/checkpoint/hf.cpp): bf16/f16 conversions, the safetensors writer and
// reader (round trips, sharding with an index, corrupt headers), the q/k row permutation, the
// export -> import round trip of a checkpoint, import validation, and the exported model's logits
// against an independent Hugging Face-style forward pass with rotate-half RoPE
// (tests/hf_reference.py, run with Debian's /usr/bin/python3 and python3-torch).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/checkpoint/hf.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/llama.h"
#include "test_util.h"

namespace ltrain {
namespace {

const char* kPython = "/usr/bin/python3";  // Debian's interpreter, where python3-torch lives

std::string script_path() { return std::string(LTRAIN_SOURCE_DIR) + "/tests/hf_reference.py"; }

using test::expect_user_error;

uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

ModelConfig tiny_config(bool tied) {
  ModelConfig m;
  m.hidden_size = 64;
  m.intermediate_size = 96;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;  // GQA: query heads 2h and 2h+1 read kv head h
  m.vocab_size = 97;
  m.max_position_embeddings = 64;
  m.rope_theta = 100.0;  // fast rotations: a wrong q/k permutation changes the logits a lot
  m.rms_norm_eps = 1e-5;
  m.tie_word_embeddings = tied;
  return m;
}

// Random weights with the names and shapes of a LlamaModel of this config, taken from the model
// itself. Matrices are uniform with about unit-variance outputs (far larger than the 0.02 init),
// so attention is sharp and depends strongly on positions; norms near 1.
std::vector<HostTensor> random_weights(const ModelConfig& m, uint64_t seed) {
  auto be = make_cpu_backend();
  LlamaModel model(m, *be, 1, 8);
  model.init_weights(seed);
  std::vector<HostTensor> w = model.export_full(model.param_buffer());
  std::mt19937_64 rng(seed);
  for (auto& t : w) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const bool norm = t.shape.ndim == 1;
    const float a = norm ? 0.2f : (t.name == "model.embed_tokens.weight" ? 1.f : 1.7f / std::sqrt(float(t.shape.dims[1])));
    for (auto& x : t.data) x = norm ? 1.f + a * u(rng) : a * u(rng);
  }
  return w;
}

std::string save_random_checkpoint(const std::string& run_dir, const ModelConfig& m, const std::vector<HostTensor>& w,
                                   const std::string& tokenizer = "") {
  Config cfg;
  cfg.model = m;
  cfg.train.seq_len = 32;
  cfg.train.run_dir = run_dir;
  TrainState st;
  st.step = 7;
  st.data = {{"train", {{"epoch", 0}, {"cursor", 3}}}};
  st.layout = {{"data", 1}, {"tensor", 1}, {"zero", 0}};
  return save_checkpoint(run_dir, st, cfg, w, nullptr, nullptr, tokenizer);
}

// ---- conversions ----------------------------------------------------------------------------

TEST(HfDtypes, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  // 1 + 2^-8 is halfway between bf16 1.0 (even mantissa) and 1 + 2^-7: ties go to even (down).
  EXPECT_EQ(float_to_bf16(from_bits(0x3f808000)), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
  EXPECT_EQ(float_to_bf16(from_bits(0x3f818000)), 0x3f82);
  // Just above / below halfway.
  EXPECT_EQ(float_to_bf16(from_bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(float_to_bf16(from_bits(0x3f807fff)), 0x3f80);
  // Overflow rounds to inf; NaN stays NaN; inf stays inf.
  EXPECT_EQ(float_to_bf16(from_bits(0x7f7fffff)), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(from_bits(0x7f800001)))));  // a NaN with low bits only
  EXPECT_EQ(bf16_to_float(float_to_bf16(INFINITY)), INFINITY);
  // bf16 values are fixed points.
  for (uint32_t b : {0x3f80u, 0x4049u, 0xbeefu, 0x0001u, 0x8000u}) EXPECT_EQ(float_to_bf16(bf16_to_float(uint16_t(b))), b);
  // Rounding error within half a bf16 ulp on random values.
  auto r = test::random_vector(1000, 5, -1e3, 1e3);
  for (double d : r) {
    const float x = float(d), y = bf16_round(x);
    EXPECT_LE(std::fabs(x - y), std::ldexp(std::fabs(x), -8)) << x;
    EXPECT_EQ(bits(y) & 0xffffu, 0u);
  }
}

TEST(HfDtypes, F16ToFloat) {
  EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_float(0xc000), -2.0f);
  EXPECT_EQ(f16_to_float(0x3555), 0.25f * (1 + 341 / 1024.f));  // 0.333251953125
  EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_float(0x7c00), INFINITY);
  EXPECT_EQ(f16_to_float(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(f16_to_float(0x7e00)));
  EXPECT_EQ(bits(f16_to_float(0x8000)), 0x80000000u);
}

// ---- safetensors ----------------------------------------------------------------------------

std::vector<HostTensor> sample_tensors() {
  std::vector<HostTensor> ts;
  const std::vector<std::pair<std::string, Shape>> specs = {
      {"b.weight", {3, 5}}, {"a.bias", {7}}, {"c.w", {2, 3, 4}}, {"empty", {0, 4}}};
  uint64_t seed = 1;
  for (const auto& [name, shape] : specs) {
    HostTensor t{name, shape, {}};
    for (double d : test::random_vector(size_t(shape.numel()), seed++, -3, 3)) t.data.push_back(float(d));
    ts.push_back(t);
  }
  return ts;
}

TEST(Safetensors, RoundTripF32AndBf16) {
  test::TempDir dir("st");
  const auto ts = sample_tensors();
  std::vector<const HostTensor*> ptrs;
  for (const auto& t : ts) ptrs.push_back(&t);
  for (const std::string dtype : {"F32", "BF16"}) {
    const std::string path = dir.file(dtype + ".safetensors");
    write_safetensors(path, ptrs, dtype);
    // Layout: u64 header length, JSON padded with spaces so the data starts 8-byte aligned.
    const std::string raw = read_text_file(path);
    uint64_t n = 0;
    std::memcpy(&n, raw.data(), 8);
    EXPECT_EQ((8 + n) % 8, 0u);
    const auto j = nlohmann::json::parse(raw.substr(8, n));
    EXPECT_EQ(j["__metadata__"]["format"], "pt");
    EXPECT_EQ(j["b.weight"]["dtype"], dtype);
    EXPECT_EQ(j["b.weight"]["shape"], nlohmann::json({3, 5}));
    const size_t es = dtype == "F32" ? 4 : 2;
    EXPECT_EQ(raw.size(), 8 + n + (15 + 7 + 24) * es) << "data section is not exactly the tensors";
    // The data is in the order given, contiguous.
    EXPECT_EQ(j["b.weight"]["data_offsets"], nlohmann::json({0, 15 * es}));
    EXPECT_EQ(j["a.bias"]["data_offsets"], nlohmann::json({15 * es, 22 * es}));

    const auto back = read_safetensors(path);
    ASSERT_EQ(back.size(), ts.size());
    for (size_t i = 0; i < ts.size(); ++i) {
      EXPECT_EQ(back[i].name, ts[i].name);
      EXPECT_TRUE(back[i].shape == ts[i].shape) << back[i].shape.str();
      std::vector<float> want = ts[i].data;
      if (dtype == "BF16")
        for (auto& x : want) x = bf16_round(x);
      EXPECT_TRUE(bitwise_equal(back[i].data, want)) << dtype << " " << ts[i].name;
    }
  }
}

// Writes a safetensors file from a raw header string and data bytes.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               int64_t length_override = -1) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = length_override >= 0 ? uint64_t(length_override) : header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

TEST(Safetensors, ReadsF16) {
  test::TempDir dir("st16");
  const uint16_t vals[3] = {0x3c00, 0xc000, 0x0001};
  write_raw(dir.file("h.safetensors"), R"({"x":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}})",
            std::string(reinterpret_cast<const char*>(vals), 6));
  const auto t = read_safetensors(dir.file("h.safetensors"));
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].data, (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24)}));
}

TEST(Safetensors, CorruptHeadersAreUserErrorsNamingTheFile) {
  test::TempDir dir("stbad");
  const std::string p = dir.file("bad.safetensors");
  const std::string data(16, '\0');
  auto read = [&] { read_safetensors(p); };

  write_raw(p, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data, 1 << 20);
  expect_user_error(read, {p, "header length", "beyond the end of the file"});

  write_raw(p, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})", data);  // missing brace
  expect_user_error(read, {p, "not valid JSON"});

  write_raw(p, R"({"x":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", data);
  expect_user_error(read, {p, "'x'", "dtype I64", "not supported"});

  write_raw(p, R"({"x":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", data);
  expect_user_error(read, {p, "'x'", "data_offsets", "out of range"});

  write_raw(p, R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data);
  expect_user_error(read, {p, "'x'", "needs 12 bytes"});

  write_raw(p, R"({"x":{"dtype":"F32","shape":[4]}})", data);
  expect_user_error(read, {p, "'x'", "data_offsets"});

  write_raw(p, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"y":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", data);
  expect_user_error(read, {p, "overlap"});

  write_raw(p, R"([1,2])", data);
  expect_user_error(read, {p, "not a JSON object"});

  {
    std::ofstream f(p, std::ios::binary);
    f << "abc";
  }
  expect_user_error(read, {p, "not a safetensors file"});
  expect_user_error([&] { read_safetensors(dir.file("nope.safetensors")); }, {"nope.safetensors", "not found"});
}

// ---- the q/k permutation --------------------------------------------------------------------

TEST(HfPermutation, RowMapIsTheDocumentedBijection) {
  // HD = 8: HF rows 0..3 take Meta rows 0, 2, 4, 6; HF rows 4..7 take Meta rows 1, 3, 5, 7.
  std::vector<int> map;
  for (int r = 0; r < 8; ++r) map.push_back(hf_row_to_meta_row(r, 8));
  EXPECT_EQ(map, (std::vector<int>{0, 2, 4, 6, 1, 3, 5, 7}));
  for (int hd : {2, 4, 16, 128}) {
    std::vector<int> seen(hd, 0);
    for (int r = 0; r < hd; ++r) ++seen[hf_row_to_meta_row(r, hd)];
    for (int r = 0; r < hd; ++r) EXPECT_EQ(seen[r], 1) << "HD " << hd << " row " << r;
  }
}

TEST(HfPermutation, InverseRestoresTheRows) {
  const int H = 3, HD = 8, cols = 5;
  std::vector<float> w(H * HD * cols);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i);  // row r holds r*cols .. r*cols+4
  const auto hf = permute_qk_meta_to_hf(w, H, HD, cols);
  // HF row (h, r) is Meta row (h, hf_row_to_meta_row(r)), every column.
  for (int h = 0; h < H; ++h)
    for (int r = 0; r < HD; ++r)
      for (int c = 0; c < cols; ++c)
        EXPECT_EQ(hf[(h * HD + r) * cols + c], w[(h * HD + hf_row_to_meta_row(r, HD)) * cols + c]);
  EXPECT_NE(hf, w);
  EXPECT_EQ(permute_qk_hf_to_meta(hf, H, HD, cols), w);
  EXPECT_EQ(permute_qk_meta_to_hf(permute_qk_hf_to_meta(w, H, HD, cols), H, HD, cols), w);
}

// The point of the permutation: Meta's interleaved RoPE on Meta rows equals Hugging Face's
// rotate-half RoPE on the permuted rows, row for row (after the same permutation), so attention
// scores are unchanged.
TEST(HfPermutation, InterleavedRopeEqualsRotateHalfAfterPermutation) {
  const int HD = 16;
  const double theta = 100.0;
  std::vector<float> q(HD);
  auto r = test::random_vector(HD, 11);
  for (int i = 0; i < HD; ++i) q[i] = float(r[i]);
  const auto q_hf = permute_qk_meta_to_hf(q, 1, HD, 1);
  for (int t : {0, 1, 5, 37}) {
    std::vector<double> meta(HD), hf(HD);
    for (int i = 0; i < HD / 2; ++i) {  // interleaved: pair (2i, 2i+1)
      const double a = t * std::pow(theta, -2.0 * i / HD), c = std::cos(a), s = std::sin(a);
      meta[2 * i] = q[2 * i] * c - q[2 * i + 1] * s;
      meta[2 * i + 1] = q[2 * i] * s + q[2 * i + 1] * c;
    }
    for (int j = 0; j < HD; ++j) {  // rotate-half: x * cos + rotate_half(x) * sin, angle of j mod HD/2
      const int i = j % (HD / 2);
      const double a = t * std::pow(theta, -2.0 * i / HD);
      const double rot = j < HD / 2 ? -q_hf[j + HD / 2] : q_hf[j - HD / 2];
      hf[j] = q_hf[j] * std::cos(a) + rot * std::sin(a);
    }
    for (int j = 0; j < HD; ++j) EXPECT_NEAR(hf[j], meta[hf_row_to_meta_row(j, HD)], 1e-12) << "t " << t << " row " << j;
  }
}

// ---- layout, config -------------------------------------------------------------------------

TEST(HfLayout, MatchesTheModelsParameterOrder) {
  for (bool tied : {false, true}) {
    const ModelConfig m = tiny_config(tied);
    auto be = make_cpu_backend();
    LlamaModel model(m, *be, 1, 8);
    const auto layout = llama_tensor_layout(m);
    ASSERT_EQ(layout.size(), model.params().size());
    for (size_t i = 0; i < layout.size(); ++i) {
      EXPECT_EQ(layout[i].first, model.params()[i].name);
      EXPECT_TRUE(layout[i].second == model.params()[i].global_shape) << layout[i].first;
    }
  }
}

TEST(HfConfig, RoundTripsAndRejectsUnsupportedFeatures) {
  ModelConfig m = tiny_config(true);
  const auto j = hf_config_json(m, "float32");
  EXPECT_EQ(j["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["intermediate_size"], 96);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["bos_token_id"], 1);
  EXPECT_EQ(j["eos_token_id"], 2);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  const ModelConfig b = model_config_from_hf(j, "c.json");
  EXPECT_EQ(hf_config_json(b, "float32"), j);

  auto with = [&](const char* k, nlohmann::json v) {
    nlohmann::json x = j;
    if (v.is_discarded()) x.erase(k);
    else x[k] = v;
    return x;
  };
  const auto discard = nlohmann::json(nlohmann::json::value_t::discarded);
  expect_user_error([&] { model_config_from_hf(with("rope_scaling", {{"type", "linear"}, {"factor", 2}}), "c.json"); },
                    {"c.json", "rope_scaling", "not supported"});
  expect_user_error([&] { model_config_from_hf(with("attention_bias", true), "c.json"); }, {"c.json", "attention_bias"});
  expect_user_error([&] { model_config_from_hf(with("mlp_bias", true), "c.json"); }, {"c.json", "mlp_bias"});
  expect_user_error([&] { model_config_from_hf(with("hidden_act", "gelu"), "c.json"); }, {"c.json", "hidden_act", "gelu"});
  expect_user_error([&] { model_config_from_hf(with("model_type", "mistral"), "c.json"); }, {"c.json", "model_type"});
  expect_user_error([&] { model_config_from_hf(with("head_dim", 32), "c.json"); }, {"c.json", "head_dim"});
  expect_user_error([&] { model_config_from_hf(with("hidden_size", discard), "c.json"); }, {"c.json", "missing 'hidden_size'"});
  expect_user_error([&] { model_config_from_hf(with("vocab_size", "big"), "c.json"); }, {"c.json", "'vocab_size'"});
  expect_user_error([&] { model_config_from_hf(with("num_key_value_heads", 3), "c.json"); }, {"c.json", "num_key_value_heads"});
  // Absent optional fields take LlamaConfig's defaults; null kv heads = multi-head attention.
  const ModelConfig d = model_config_from_hf(with("num_key_value_heads", nullptr), "c.json");
  EXPECT_EQ(d.kv_heads(), 4);
}

// ---- export / import round trips ------------------------------------------------------------

TEST(HfRoundTrip, Fp32IsBitwiseAndBf16IsRounded) {
  for (bool tied : {false, true}) {
    test::TempDir dir("hfrt");
    const ModelConfig m = tiny_config(tied);
    const auto w = random_weights(m, 42);
    {
      std::ofstream f(dir.file("tok.model"), std::ios::binary);
      f << "not really a sentencepiece model";
    }
    save_random_checkpoint(dir.file("run"), m, w, dir.file("tok.model"));

    for (const std::string dtype : {"fp32", "bf16"}) {
      HfExportOptions opt;
      opt.dtype = dtype;
      const std::string hf = dir.file("hf_" + dtype), back = dir.file("back_" + dtype);
      const auto sum = export_hf(dir.file("run"), hf, opt);
      EXPECT_EQ(sum.shards, 1);
      EXPECT_TRUE(file_exists(hf + "/model.safetensors"));
      EXPECT_FALSE(file_exists(hf + "/model.safetensors.index.json"));
      EXPECT_FALSE(file_exists(hf + ".tmp"));
      EXPECT_EQ(read_text_file(hf + "/tokenizer.model"), "not really a sentencepiece model");
      const auto cj = nlohmann::json::parse(read_text_file(hf + "/config.json"));
      EXPECT_EQ(cj["torch_dtype"], dtype == "fp32" ? "float32" : "bfloat16");
      EXPECT_TRUE(file_exists(hf + "/generation_config.json"));
      // q/k are stored permuted; everything else is stored as is.
      const auto st = read_safetensors(hf + "/model.safetensors");
      std::map<std::string, const HostTensor*> by;
      for (const auto& t : st) by[t.name] = &t;
      EXPECT_EQ(by.count("lm_head.weight"), tied ? 0u : 1u);
      const auto& q0 = w[2];
      ASSERT_EQ(q0.name, "model.layers.0.self_attn.q_proj.weight");
      if (dtype == "fp32") {
        EXPECT_FALSE(bitwise_equal(by.at(q0.name)->data, q0.data));
        EXPECT_TRUE(bitwise_equal(by.at(q0.name)->data, permute_qk_meta_to_hf(q0.data, 4, 16, 64)));
        EXPECT_TRUE(bitwise_equal(by.at("model.layers.0.self_attn.v_proj.weight")->data, w[4].data));
      }

      const std::string ck = import_hf(hf, back, false);
      EXPECT_EQ(ck, back + "/checkpoints/step_00000000");
      EXPECT_FALSE(file_exists(back + ".tmp"));
      const CheckpointInfo info = open_checkpoint(back);
      verify_checkpoint(info);
      EXPECT_EQ(info.step, 0);
      EXPECT_FALSE(info.meta.contains("optimizer"));
      EXPECT_EQ(read_text_file(info.dir + "/tokenizer.model"), "not really a sentencepiece model");
      EXPECT_EQ(hf_config_json(info.config.model, "x"), hf_config_json(m, "x"));
      const auto got = read_checkpoint_tensors(info, "tensors");
      ASSERT_EQ(got.size(), w.size());
      for (size_t i = 0; i < w.size(); ++i) {
        EXPECT_EQ(got[i].name, w[i].name);
        EXPECT_TRUE(got[i].shape == w[i].shape);
        std::vector<float> want = w[i].data;
        if (dtype == "bf16")
          for (auto& x : want) x = bf16_round(x);
        EXPECT_TRUE(bitwise_equal(got[i].data, want)) << dtype << " " << w[i].name;
      }
      if (dtype == "fp32") {
        // The same bytes as the original weights file: same order, same values.
        EXPECT_EQ(read_text_file(info.dir + "/model_00000.bin"),
                  read_text_file(dir.file("run") + "/checkpoints/step_00000007/model_00000.bin"));
      }
    }
  }
}

TEST(HfRoundTrip, ShardedWithIndex) {
  test::TempDir dir("hfshard");
  const ModelConfig m = tiny_config(false);
  const auto w = random_weights(m, 7);
  HfExportOptions opt;
  opt.dtype = "fp32";
  opt.max_shard_bytes = 30000;  // the embedding and lm_head (97 x 64 x 4 = 24832 B) fit, two don't
  const auto sum = write_hf_dir(m, w, "", dir.file("hf"), opt);
  EXPECT_GT(sum.shards, 3);
  const auto index = nlohmann::json::parse(read_text_file(dir.file("hf/model.safetensors.index.json")));
  uint64_t total = 0;
  for (const auto& t : w) total += t.data.size() * 4;
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_EQ(index["weight_map"].size(), w.size());
  EXPECT_FALSE(file_exists(dir.file("hf/model.safetensors")));
  char first[64];
  std::snprintf(first, sizeof first, "model-00001-of-%05d.safetensors", sum.shards);
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"], first);
  for (int s = 1; s <= sum.shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s, sum.shards);
    const std::string p = dir.file(std::string("hf/") + name);
    ASSERT_TRUE(file_exists(p)) << p;
    const auto h = read_safetensors_header(p);
    uint64_t bytes = 0;
    for (const auto& e : h.entries) bytes += e.end - e.begin;
    EXPECT_TRUE(bytes <= opt.max_shard_bytes || h.entries.size() == 1) << name;
  }
  const HfModel hm = read_hf_dir(dir.file("hf"));
  ASSERT_EQ(hm.weights.size(), w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(hm.weights[i].name, w[i].name);
    EXPECT_TRUE(bitwise_equal(hm.weights[i].data, w[i].data)) << w[i].name;
  }

  // A shard gone, or the index naming a tensor its shard lacks: named errors.
  test::TempDir d2("hfshard2");
  write_hf_dir(m, w, "", d2.file("hf"), opt);
  std::remove((d2.file("hf/") + first).c_str());
  expect_user_error([&] { read_hf_dir(d2.file("hf")); }, {"model.safetensors.index.json", first, "missing"});
}

// ---- import validation ----------------------------------------------------------------------

TEST(HfImport, BadInputsAreNamedAndLeaveNoOutput) {
  test::TempDir dir("hfbad");
  const ModelConfig m = tiny_config(false);
  const auto w = random_weights(m, 3);
  HfExportOptions opt;
  opt.dtype = "fp32";
  write_hf_dir(m, w, "", dir.file("good"), opt);
  const std::string out = dir.file("out");
  auto copy_good = [&](const std::string& name) {
    const std::string d = dir.file(name);
    make_dirs(d);
    for (const auto& f : list_directory(dir.file("good"))) {
      const std::string s = read_text_file(dir.file("good/" + f));
      write_file_atomic(d + "/" + f, s.data(), s.size());
    }
    return d;
  };
  auto import_fails = [&](const std::string& hf, const std::vector<std::string>& needles) {
    expect_user_error([&] { import_hf(hf, out, false); }, needles);
    EXPECT_FALSE(file_exists(out)) << "a failed import left " << out;
    EXPECT_FALSE(file_exists(out + ".tmp")) << "a failed import left " << out << ".tmp";
  };

  import_fails(dir.file("missing"), {"missing", "not found"});
  {
    const std::string d = dir.file("nocfg");
    make_dirs(d);
    import_fails(d, {"config.json", "not found"});
  }
  {
    const std::string d = copy_good("badjson");
    write_text_file_atomic(d + "/config.json", "{\"hidden_size\": 64,");
    import_fails(d, {d + "/config.json", "not valid JSON"});
  }
  {
    const std::string d = copy_good("ropescale");
    auto j = nlohmann::json::parse(read_text_file(d + "/config.json"));
    j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
    write_text_file_atomic(d + "/config.json", j.dump());
    import_fails(d, {d + "/config.json", "rope_scaling"});
  }
  {
    const std::string d = copy_good("noweights");
    std::remove((d + "/model.safetensors").c_str());
    import_fails(d, {d, "model.safetensors"});
  }
  {  // a tensor missing, one with the wrong shape, one unexpected
    auto variant = [&](const std::string& name, const std::function<void(std::vector<HostTensor>&)>& edit) {
      const std::string d = copy_good(name);
      auto ts = read_safetensors(d + "/model.safetensors");
      edit(ts);
      std::vector<const HostTensor*> p;
      for (const auto& t : ts) p.push_back(&t);
      write_safetensors(d + "/model.safetensors", p, "F32");
      return d;
    };
    std::string d = variant("lacks", [](auto& ts) {
      ts.erase(std::find_if(ts.begin(), ts.end(), [](auto& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; }));
    });
    import_fails(d, {d + "/model.safetensors", "'model.layers.1.mlp.up_proj.weight'", "missing"});
    d = variant("shape", [](auto& ts) {
      for (auto& t : ts)
        if (t.name == "model.norm.weight") t.shape = Shape{8, 8};
    });
    import_fails(d, {d + "/model.safetensors", "'model.norm.weight'", "[8,8]", "[64]"});
    d = variant("extra", [](auto& ts) { ts.push_back({"model.layers.0.self_attn.q_proj.bias", Shape{64}, std::vector<float>(64, 0.f)}); });
    import_fails(d, {d + "/model.safetensors", "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"});
  }
  {  // a corrupt header: header length beyond the file
    const std::string d = copy_good("corrupt");
    std::fstream f(d + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t huge = 1ull << 40;
    f.write(reinterpret_cast<const char*>(&huge), 8);
    f.close();
    import_fails(d, {d + "/model.safetensors", "header length"});
  }
  // An existing run directory is refused without force and replaced with it.
  make_dirs(out);
  write_text_file_atomic(out + "/keep", "x");
  expect_user_error([&] { import_hf(dir.file("good"), out, false); }, {out, "--force"});
  EXPECT_TRUE(file_exists(out + "/keep"));
  import_hf(dir.file("good"), out, true);
  EXPECT_FALSE(file_exists(out + "/keep"));
  EXPECT_TRUE(file_exists(out + "/checkpoints/step_00000000/meta.json"));
  // Export refuses a non-empty --out likewise.
  expect_user_error([&] { write_hf_dir(m, w, "", out, opt); }, {out, "--force"});
  expect_user_error([&] { export_hf(dir.file("nowhere"), dir.file("hf2"), opt); }, {"nowhere"});
  EXPECT_FALSE(file_exists(dir.file("hf2")));
}

// ---- logits against the Hugging Face-style reference ----------------------------------------

// ltrain's logits of every prefix of `tokens` for these weights: (T, V), row t after tokens[0..t].
std::vector<float> ltrain_logits(const ModelConfig& m, const std::vector<HostTensor>& w, const std::vector<int32_t>& tokens) {
  auto be = make_cpu_backend();
  const int T = int(tokens.size());
  LlamaModel model(m, *be, 1, T);
  std::map<std::string, const std::vector<float>*> by;
  for (const auto& t : w) by[t.name] = &t.data;
  model.import_full(model.param_buffer(), [&](const std::string& n) -> const std::vector<float>& { return *by.at(n); });
  std::vector<float> out;
  for (int t = 1; t <= T; ++t) {
    const auto l = model.forward_last_logits(tokens.data(), t);
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

test::CommandResult run_reference(const std::string& hf, const std::string& logits_file, const std::vector<int32_t>& tokens,
                                  const std::string& python = kPython, const std::string& flags = "") {
  std::string cmd = python + " " + script_path() + " " + flags + " " + hf + " " + logits_file;
  for (int32_t t : tokens) cmd += " " + std::to_string(t);
  return test::run_shell(cmd);
}

TEST(HfReference, ExportedLogitsMatchRotateHalfLlama) {
  auto probe = test::run_shell(std::string(kPython) + " -c 'import torch, numpy'");
  ASSERT_EQ(probe.exit_code, 0) << kPython << " cannot import torch and numpy (python3-torch and "
                                << "python3-numpy are test dependencies): run ./scripts/install_deps.sh\n"
                                << probe.output;
  for (bool tied : {false, true}) {
    test::TempDir dir("hfref");
    const ModelConfig m = tiny_config(tied);
    const auto w = random_weights(m, tied ? 99 : 98);
    std::vector<int32_t> tokens;
    std::mt19937 rng(5);
    for (int i = 0; i < 24; ++i) tokens.push_back(int32_t(rng() % m.vocab_size));
    const auto logits = ltrain_logits(m, w, tokens);
    {
      std::ofstream f(dir.file("logits.bin"), std::ios::binary);
      f.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * 4));
    }
    save_random_checkpoint(dir.file("run"), m, w);
    HfExportOptions opt;
    opt.dtype = "fp32";
    opt.max_shard_bytes = tied ? 5000000000ULL : 40000;  // the untied case reads an index and shards
    export_hf(dir.file("run"), dir.file("hf"), opt);
    auto r = run_reference(dir.file("hf"), dir.file("logits.bin"), tokens);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("hf reference: "), std::string::npos) << r.output;
    std::printf("%s%s", tied ? "tied: " : "untied: ", r.output.c_str());
    // Optionally, transformers' own LlamaForCausalLM on the same directory (docs/huggingface.md
    // records a run): LTRAIN_TRANSFORMERS_PYTHON names an interpreter that has transformers.
    if (const char* tp = std::getenv("LTRAIN_TRANSFORMERS_PYTHON"); tp && *tp) {
      auto rt = run_reference(dir.file("hf"), dir.file("logits.bin"), tokens, tp, "--transformers");
      EXPECT_EQ(rt.exit_code, 0) << rt.output;
      EXPECT_NE(rt.output.find("transformers "), std::string::npos) << rt.output;
      std::printf("%s", rt.output.c_str());
    }

    // Negative control: the same weights with q/k left in ltrain's interleaved order (what an
    // export without the permutation would write) must fail the reference clearly.
    const std::string bad = dir.file("hf_bad");
    make_dirs(bad);
    write_text_file_atomic(bad + "/config.json", hf_config_json(m, "float32").dump(2));
    std::vector<const HostTensor*> p;
    for (const auto& t : w) p.push_back(&t);
    write_safetensors(bad + "/model.safetensors", p, "F32");
    auto rb = run_reference(bad, dir.file("logits.bin"), tokens);
    EXPECT_EQ(rb.exit_code, 1) << "the reference does not notice unpermuted q/k rows:\n" << rb.output;
    EXPECT_NE(rb.output.find("MISMATCH"), std::string::npos) << rb.output;
    std::printf("negative control (q/k not permuted): %s", rb.output.c_str());
  }
}

}  // namespace
}  // namespace ltrain
