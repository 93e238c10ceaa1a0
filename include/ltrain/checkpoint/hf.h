// Hugging Face interop: an ltrain checkpoint as a LlamaForCausalLM directory and back.
//
//   HFDIR/config.json                  LlamaConfig (model_type "llama")
//   HFDIR/generation_config.json
//   HFDIR/model.safetensors            all weights, or, above the shard size,
//   HFDIR/model-0000K-of-0000N.safetensors + model.safetensors.index.json
//   HFDIR/tokenizer.model              the checkpoint's SentencePiece model
//
// The tensor names are the same on both sides (ltrain names its weights like Hugging Face). The
// one real difference is the RoPE layout of q_proj and k_proj: ltrain (like Meta's reference code)
// rotates the interleaved pairs (2i, 2i+1) of each head, Hugging Face rotates the halves
// (i, i + HD/2). Within each head of q_proj/k_proj, export moves Meta row 2i to HF row i and Meta
// row 2i+1 to HF row HD/2 + i; import does the inverse. Everything else is copied as is.
// The safetensors files themselves are read and written by checkpoint/safetensors.h.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/config/config.h"
#include "ltrain/checkpoint/safetensors.h"
#include "ltrain/core/param_set.h"

namespace ltrain {

// ---- the q/k row permutation ----------------------------------------------------------------
// Within one head of head_dim rows: the Meta (interleaved) row that lands on HF (rotate-half)
// row r: r < HD/2 -> 2r, r >= HD/2 -> 2(r - HD/2) + 1.
int hf_row_to_meta_row(int r, int head_dim);
// w is (n_heads * head_dim, cols), row-major.
std::vector<float> permute_qk_meta_to_hf(const std::vector<float>& w, int n_heads, int head_dim, int64_t cols);
std::vector<float> permute_qk_hf_to_meta(const std::vector<float>& w, int n_heads, int head_dim, int64_t cols);

// ---- model layout and config ----------------------------------------------------------------
// The weights of a LlamaForCausalLM with this config, names and shapes, in LlamaModel's parameter
// order (the order of a checkpoint's model file); lm_head.weight is absent when tied. The names
// and shapes of model/layout.h's table.
std::vector<std::pair<std::string, Shape>> llama_tensor_layout(const ModelConfig& m);

// config.json for LlamaForCausalLM; torch_dtype "bfloat16" or "float32".
nlohmann::json hf_config_json(const ModelConfig& m, const std::string& torch_dtype);
// The model section from a config.json (path is for messages). Unsupported features
// (rope_scaling, attention or MLP biases, activations other than silu, another head_dim) and
// missing or mistyped fields are UserErrors naming the file and the field.
ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& path);

// ---- export ---------------------------------------------------------------------------------
struct HfExportOptions {
  std::string dtype = "bf16";               // bf16 | fp32
  uint64_t max_shard_bytes = 5000000000ULL;  // tensor bytes per safetensors file
  bool force = false;                       // replace an existing non-empty output directory
};

struct HfExportSummary {
  std::string out_dir;
  std::vector<std::string> files;  // written, sorted
  int shards = 0;
  uint64_t tensor_bytes = 0;       // total_size: the tensors' bytes in the exported dtype
  int64_t num_params = 0;
};

// Writes `weights` (ltrain layout, names and shapes as llama_tensor_layout) as a Hugging Face
// directory: into out_dir + ".tmp", renamed when complete. tokenizer_path may be empty.
HfExportSummary write_hf_dir(const ModelConfig& m, const std::vector<HostTensor>& weights,
                             const std::string& tokenizer_path, const std::string& out_dir,
                             const HfExportOptions& opt);
// A checkpoint (or run) directory to a Hugging Face directory.
HfExportSummary export_hf(const std::string& checkpoint, const std::string& out_dir, const HfExportOptions& opt);

// ---- import ---------------------------------------------------------------------------------
struct HfModel {
  ModelConfig model;
  std::vector<HostTensor> weights;  // fp32, ltrain layout (q/k un-permuted), llama_tensor_layout order
  std::string tokenizer_path;       // HFDIR/tokenizer.model, or empty
  std::vector<std::string> files;   // the safetensors files read
};

// Reads and checks a Hugging Face Llama directory. UserError naming the file (and tensor).
HfModel read_hf_dir(const std::string& hf_dir);
// Writes it as RUN_DIR/checkpoints/step_00000000 (no optimizer state): the run directory is
// written as RUN_DIR.tmp and renamed when complete. An existing non-empty RUN_DIR is refused
// unless force. Returns the checkpoint directory.
std::string import_hf(const std::string& hf_dir, const std::string& run_dir, bool force);
// The Config an imported checkpoint carries: the model from config.json, everything else default
// (train.seq_len capped at max_position_embeddings).
Config imported_config(const ModelConfig& m, const std::string& run_dir);

}  // namespace ltrain
