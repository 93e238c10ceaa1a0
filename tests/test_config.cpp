// Config parsing, overrides, validation errors, and the shipped configs' parameter counts.
#include <gtest/gtest.h>

#include <fstream>

#include "ltrain/config/config.h"
#include "ltrain/core/check.h"
#include "ltrain/model/layout.h"
#include "test_util.h"

namespace ltrain {
namespace {

std::string configs_dir() { return std::string(LTRAIN_SOURCE_DIR) + "/configs"; }

std::string write(const test::TempDir& d, const std::string& name, const std::string& text) {
  std::ofstream(d.file(name)) << text;
  return d.file(name);
}

using test::user_error_of;

TEST(Config, YamlAndJsonGiveTheSameConfig) {
  test::TempDir d("config");
  auto y = write(d, "a.yaml",
                 "model:\n  hidden_size: 64\n  num_attention_heads: 4\n  tie_word_embeddings: true\n"
                 "optim:\n  lr: 1.0e-3\ntrain:\n  global_batch_tokens: 4_096\n  run_dir: runs/x\n");
  auto j = write(d, "a.json",
                 R"({"model": {"hidden_size": 64, "num_attention_heads": 4, "tie_word_embeddings": true},
                     "optim": {"lr": 0.001}, "train": {"global_batch_tokens": 4096, "run_dir": "runs/x"}})");
  Config a = load_config(y), b = load_config(j);
  EXPECT_EQ(a.model.hidden_size, 64);
  EXPECT_TRUE(a.model.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(a.optim.lr, 1e-3);
  EXPECT_EQ(a.train.global_batch_tokens, 4096);
  EXPECT_EQ(config_to_json(a), config_to_json(b));
  // Unset keys keep their defaults.
  EXPECT_DOUBLE_EQ(a.optim.beta2, 0.95);
  // The saved JSON loads back to the same config.
  auto saved = write(d, "saved.json", config_to_json(a).dump());
  EXPECT_EQ(config_to_json(load_config(saved)), config_to_json(a));
}

TEST(Config, DottedOverrides) {
  test::TempDir d("config");
  auto y = write(d, "a.yaml", "optim:\n  lr: 1.0e-3\n");
  Config c = load_config(y, {"optim.lr=3e-4", "train.steps=200", "train.run_dir=runs/z", "data.shuffle=false"});
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.train.steps, 200);
  EXPECT_EQ(c.train.run_dir, "runs/z");
  EXPECT_FALSE(c.data.shuffle);
}

TEST(Config, UnknownKeysAreNamedWithASuggestion) {
  test::TempDir d("config");
  auto y = write(d, "a.yaml", "model:\n  hiden_size: 64\n");
  std::string e = user_error_of([&] { load_config(y); });
  EXPECT_NE(e.find("unknown config key 'model.hiden_size'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'model.hidden_size'"), std::string::npos) << e;
  EXPECT_NE(e.find(y), std::string::npos) << e;
  e = user_error_of([&] { load_config(write(d, "b.yaml", "optim:\n  lr: 1\n"), {"optim.learning_rate=1"}); });
  EXPECT_NE(e.find("unknown config key 'optim.learning_rate'"), std::string::npos) << e;
  e = user_error_of([&] { load_config(write(d, "c.yaml", "optim:\n  lr: 1\n"), {"optim.lr"}); });
  EXPECT_NE(e.find("must look like key=value"), std::string::npos) << e;
}

TEST(Config, WrongTypesAreNamed) {
  test::TempDir d("config");
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"model:\n  hidden_size: big\n", "'model.hidden_size' expects an integer, got 'big'"},
      {"model:\n  hidden_size: 64.5\n", "'model.hidden_size' expects an integer"},
      {"optim:\n  lr: fast\n", "'optim.lr' expects a number, got 'fast'"},
      {"data:\n  shuffle: maybe\n", "'data.shuffle' expects true or false"},
      {"model:\n  hidden_size: [1, 2]\n", "'model.hidden_size' must be a single value"},
      {"model: [\n", "not valid YAML or JSON"},
  };
  for (const auto& c : cases) {
    std::string e = user_error_of([&] { load_config(write(d, "t.yaml", c.yaml)); });
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.yaml << " -> " << e;
  }
  EXPECT_NE(user_error_of([&] { load_config(d.file("missing.yaml")); }).find("config file not found"),
            std::string::npos);
}

TEST(Config, InconsistentSizesAreRefused) {
  Config c;
  c.train.seq_len = 64;
  c.train.micro_batch_size = 2;
  c.train.global_batch_tokens = 256;
  EXPECT_EQ(user_error_of([&] { validate_config(c); }), "");
  Config bad = c;
  bad.model.hidden_size = 250;  // 4 heads
  EXPECT_NE(user_error_of([&] { validate_config(bad); }).find("model.hidden_size (250) must be divisible by model.num_attention_heads (4)"),
            std::string::npos);
  bad = c;
  bad.model.num_key_value_heads = 3;
  EXPECT_NE(user_error_of([&] { validate_config(bad); }).find("must be divisible by model.num_key_value_heads (3)"),
            std::string::npos);
  bad = c;
  bad.train.global_batch_tokens = 300;
  std::string e = user_error_of([&] { validate_config(bad); });
  EXPECT_NE(e.find("train.global_batch_tokens (300) must be a multiple of"), std::string::npos) << e;
  EXPECT_NE(e.find("= 128"), std::string::npos) << e;
  EXPECT_NE(user_error_of([&] { validate_config(c, 3); }).find("* 3 = 384"), std::string::npos);
  bad = c;
  bad.train.recompute = "some";
  EXPECT_NE(user_error_of([&] { validate_config(bad); }).find("train.recompute"), std::string::npos);
  bad = c;
  bad.train.seq_len = 4096;
  bad.train.global_batch_tokens = 8192;
  EXPECT_NE(user_error_of([&] { validate_config(bad); }).find("exceeds model.max_position_embeddings"), std::string::npos);
  EXPECT_EQ(c.grad_accum_steps(), 2);
}

TEST(Config, DerivedFfnDimFollowsLlama) {
  ModelConfig m;
  m.hidden_size = 4096;
  EXPECT_EQ(m.ffn_dim(), 11008);  // LLaMA 7B
  m.hidden_size = 8192;
  m.ffn_dim_multiplier = 1.3;
  m.multiple_of = 4096;
  EXPECT_EQ(m.ffn_dim(), 28672);  // LLaMA 2 70B
}

TEST(Config, ShippedConfigsHaveThePublishedSizes) {
  struct Expect {
    const char* file;
    double params;  // published parameter counts
    int kv_heads, ctx;
  } expect[] = {
      {"llama1-7b", 6.74e9, 32, 2048},  {"llama1-13b", 13.02e9, 40, 2048},
      {"llama1-33b", 32.53e9, 52, 2048}, {"llama1-65b", 65.29e9, 64, 2048},
      {"llama2-7b", 6.74e9, 32, 4096},  {"llama2-13b", 13.02e9, 40, 4096},
      {"llama2-34b", 33.74e9, 8, 4096},  {"llama2-70b", 68.98e9, 8, 4096},
      {"tinyllama-1.1b", 1.10e9, 4, 2048},
  };
  for (const auto& e : expect) {
    Config c = load_config(configs_dir() + "/" + e.file + ".yaml");
    EXPECT_NO_THROW(validate_config(c)) << e.file;
    EXPECT_NEAR(double(llama_num_params(c.model)), e.params, e.params * 0.002) << e.file;
    EXPECT_EQ(c.model.kv_heads(), e.kv_heads) << e.file;
    EXPECT_EQ(c.model.max_position_embeddings, e.ctx) << e.file;
    EXPECT_EQ(c.train.seq_len, e.ctx) << e.file;
    EXPECT_EQ(c.optim.warmup_steps, 2000) << e.file;
    if (std::string(e.file).rfind("llama", 0) == 0) EXPECT_EQ(c.train.global_batch_tokens, 4194304) << e.file;
  }
  // The name states the size: 7B is 6.7B, 65B is 65.3B, 1.1B is 1.10B.
  EXPECT_NEAR(llama_num_params(load_config(configs_dir() + "/llama1-7b.yaml").model) / 1e9, 6.7, 0.05);
}

TEST(Config, DocsConfigReferenceIsCurrent) {
  // docs/config.md embeds `ltrain config reference`; regenerate it when a key changes.
  std::ifstream in(std::string(LTRAIN_SOURCE_DIR) + "/docs/config.md");
  std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(doc.find(config_reference_markdown()), std::string::npos)
      << "docs/config.md is stale: run ./scripts/update_config_doc.sh";
}

TEST(Config, ReferenceListsEveryKey) {
  std::string md = config_reference_markdown();
  Config c;
  visit_config(c, [&](const char* key, auto&, const char*) {
    EXPECT_NE(md.find(std::string("`") + key + "`"), std::string::npos) << key;
  });
}

}  // namespace
}  // namespace ltrain
