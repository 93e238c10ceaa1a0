// The run configuration: one struct per component, every key listed once in visit_config(), which
// drives parsing, type checks, unknown-key errors, printing and the config reference.
// Model keys use the Hugging Face LlamaConfig names.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ltrain {

struct ModelConfig {
  int hidden_size = 256;               // C
  int intermediate_size = 0;           // FF; 0 = derived from multiple_of and ffn_dim_multiplier
  int multiple_of = 256;
  double ffn_dim_multiplier = 1.0;
  int num_hidden_layers = 4;           // L
  int num_attention_heads = 4;         // H
  int num_key_value_heads = 0;         // KV; 0 = num_attention_heads
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  int vocab_size = 32000;              // V
  int max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;

  int head_dim() const { return hidden_size / num_attention_heads; }
  int kv_heads() const { return num_key_value_heads ? num_key_value_heads : num_attention_heads; }
  int ffn_dim() const;
  // The parameter counts follow from the model's layout: llama_num_params and
  // llama_num_matmul_params (model/layout.h).
};

struct OptimConfig {
  double lr = 3e-4;             // peak learning rate
  double min_lr_ratio = 0.1;    // cosine decays to min_lr_ratio * lr
  int warmup_steps = 2000;
  int decay_steps = 0;          // end of the cosine; 0 = train.steps
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-5;
  double weight_decay = 0.1;
  double grad_clip = 1.0;       // global norm; 0 disables clipping
};

struct TrainConfig {
  int steps = 1000;                   // optimizer steps
  int seq_len = 2048;                 // T
  int micro_batch_size = 1;           // B, sequences per rank per forward/backward
  int64_t global_batch_tokens = 4194304;  // tokens per optimizer step over all ranks
  uint64_t seed = 1234;
  std::string run_dir = "runs/default";
  int log_every = 1;
  int val_every = 100;                // 0 disables periodic validation
  int val_batches = 20;               // micro-batches per validation; 0 = the whole val split
  double max_runtime_minutes = 0;     // save and stop after this long; 0 = no limit
  std::string init_from;              // start from these weights (a checkpoint or run dir); fresh optimizer
  std::string recompute = "none";     // none | selective | full
};

// One source of a dataset blend (data.blend): its share of the training samples is either
// `weight` (relative to the other weighted sources) or `epochs` (read that many times over the
// run; docs/data-format.md, "Blends").
struct BlendSource {
  std::string path;    // anything data.path accepts
  std::string name;    // for logs and checkpoints; default: the last component of path
  double weight = 0;   // > 0, or 0 when epochs is given
  double epochs = 0;   // > 0, or 0 when weight is given
  bool operator==(const BlendSource& o) const {
    return path == o.path && name == o.name && weight == o.weight && epochs == o.epochs;
  }
};
using BlendList = std::vector<BlendSource>;
void to_json(nlohmann::json& j, const BlendSource& s);

struct DataConfig {
  std::string path;         // ltrain prepare dir, Megatron prefix, or llm.c shards (docs/data-format.md)
  BlendList blend;          // several sources in fixed proportions, instead of path
  bool shuffle = true;
  bool verify = true;       // check shard checksums when opening
};

struct CheckpointConfig {
  int interval = 0;    // save every N steps; 0 = only at the end (and on a stop signal)
  int keep_last = 0;   // keep the newest N checkpoints; 0 = keep all
  int keep_every = 0;  // also keep every checkpoint whose step is a multiple of N, for good
};

struct GuardConfig {
  bool enabled = true;
  int window = 100;                 // steps of loss / grad-norm history for the spike statistics
  int min_history = 20;             // no spike verdicts before this many accepted steps
  double spike_sigma = 6.0;         // a step this many deviations above the mean is a spike
  int max_skipped_in_a_row = 5;     // non-finite steps in a row before a rollback
  int rollback_after = 3;           // spikes within `window` attempts before a rollback
  double rollback_lr_factor = 1.0;  // multiply the learning rate by this at each rollback
  int max_rollbacks = 3;            // then stop (exit code 3)
  int replica_check_interval = 100; // compare the data-parallel replicas' weights; 0 = never
};

struct ParallelConfig {
  int data = 0;           // data-parallel ranks; 0 = world size / (pipeline x tensor)
  int tensor = 1;         // tensor-parallel ranks (consecutive ranks)
  int pipeline = 1;       // pipeline stages (docs/distributed.md, "Pipeline parallelism")
  std::string schedule = "1f1b";  // 1f1b | interleaved
  int virtual_stages = 1;         // interleaved: chunks of layers per stage
  std::vector<int> pipeline_layers;  // layers of each chunk, in chunk order; empty = balanced
  int zero = 0;           // 1 = ZeRO-1: optimizer state sharded over the data-parallel ranks
  double bucket_mb = 25;  // gradient all-reduce bucket size
  double timeout_s = 600; // a collective running longer ends the job (exit code 4); 0 = never
  bool allow_cross_node_tensor = false;  // let a tensor-parallel group span hosts
};

struct Config {
  std::string device = "auto";  // auto | cpu | cuda
  bool deterministic = false;   // bitwise-identical runs on the GPU (docs/cuda-backend.md, "Determinism")
  ModelConfig model;
  OptimConfig optim;
  TrainConfig train;
  DataConfig data;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  GuardConfig guard;

  // Derived: micro-batches per optimizer step for `dp_world` data-parallel ranks.
  int grad_accum_steps(int dp_world = 1) const;
};

// Calls v(key, field, help) for every key. `Config` may be const or not.
template <class C, class V>
void visit_config(C& c, V&& v) {
  v("device", c.device, "compute backend: auto (CUDA when a GPU is present), cpu, cuda");
  v("deterministic", c.deterministic,
    "two runs give bitwise-identical results on the GPU: cuBLASLt without split-K reduction passes, NCCL ring/simple (the CPU is deterministic anyway)");
  v("model.hidden_size", c.model.hidden_size, "model width C");
  v("model.intermediate_size", c.model.intermediate_size,
    "SwiGLU hidden size FF; 0 derives it as LLaMA does: multiple_of * ceil(ffn_dim_multiplier * 8C/3 / multiple_of)");
  v("model.multiple_of", c.model.multiple_of, "rounding of the derived intermediate size");
  v("model.ffn_dim_multiplier", c.model.ffn_dim_multiplier, "scale of the derived intermediate size");
  v("model.num_hidden_layers", c.model.num_hidden_layers, "number of transformer layers L");
  v("model.num_attention_heads", c.model.num_attention_heads, "query heads H; must divide hidden_size");
  v("model.num_key_value_heads", c.model.num_key_value_heads,
    "key/value heads KV for grouped-query attention; must divide num_attention_heads; 0 = H");
  v("model.rope_theta", c.model.rope_theta, "RoPE base");
  v("model.rms_norm_eps", c.model.rms_norm_eps, "RMSNorm epsilon");
  v("model.vocab_size", c.model.vocab_size, "vocabulary size V; must be >= the tokenizer's");
  v("model.max_position_embeddings", c.model.max_position_embeddings, "longest sequence the model is built for");
  v("model.tie_word_embeddings", c.model.tie_word_embeddings, "share the input embedding and the output projection");
  v("model.initializer_range", c.model.initializer_range,
    "std of the normal init of weight matrices (output projections are scaled by 1/sqrt(2L))");
  v("optim.lr", c.optim.lr, "peak learning rate");
  v("optim.min_lr_ratio", c.optim.min_lr_ratio, "the cosine decays to this fraction of the peak");
  v("optim.warmup_steps", c.optim.warmup_steps, "linear warmup steps");
  v("optim.decay_steps", c.optim.decay_steps, "step at which the cosine reaches its minimum; 0 = train.steps");
  v("optim.beta1", c.optim.beta1, "AdamW beta1");
  v("optim.beta2", c.optim.beta2, "AdamW beta2");
  v("optim.eps", c.optim.eps, "AdamW epsilon");
  v("optim.weight_decay", c.optim.weight_decay, "decoupled weight decay on weight matrices (not on norms)");
  v("optim.grad_clip", c.optim.grad_clip, "clip gradients to this global L2 norm; 0 disables");
  v("train.steps", c.train.steps, "optimizer steps");
  v("train.seq_len", c.train.seq_len, "sequence length T of each training window");
  v("train.micro_batch_size", c.train.micro_batch_size, "sequences per rank per forward/backward pass");
  v("train.global_batch_tokens", c.train.global_batch_tokens,
    "tokens per optimizer step; a multiple of micro_batch_size * seq_len * data-parallel ranks");
  v("train.seed", c.train.seed, "seed for initialization and data order");
  v("train.run_dir", c.train.run_dir, "directory for everything the run writes");
  v("train.log_every", c.train.log_every, "print and log every N steps");
  v("train.val_every", c.train.val_every, "validate every N steps; 0 = only at the end");
  v("train.val_batches", c.train.val_batches,
    "micro-batches per validation, shared by the data-parallel ranks; 0 = the whole val split");
  v("train.init_from", c.train.init_from,
    "initialize the weights from a checkpoint or run directory (e.g. an imported Hugging Face model); the optimizer and step start fresh");
  v("train.max_runtime_minutes", c.train.max_runtime_minutes,
    "finish the current step, save a checkpoint and exit 0 after this many minutes; 0 = no limit");
  v("train.recompute", c.train.recompute,
    "activation recomputation: none, selective (recompute norms and SwiGLU), full (recompute each layer)");
  v("data.path", c.data.path,
    "a directory written by `ltrain prepare`, a Megatron-LM/GPT-NeoX indexed dataset prefix, or a directory or glob of llm.c shards");
  v("data.blend", c.data.blend,
    "instead of data.path: a list of {path, weight} or {path, epochs} (optional name) sampled in fixed proportions, e.g. [{path: data/cc, weight: 0.8}, {path: data/wiki, epochs: 2}]");
  v("data.shuffle", c.data.shuffle, "shuffle training windows (deterministic from train.seed)");
  v("data.verify", c.data.verify, "verify shard checksums when opening the data");
  v("checkpoint.interval", c.checkpoint.interval,
    "save a checkpoint every N steps; 0 = only at the end (and on SIGTERM/SIGINT/SIGUSR1)");
  v("checkpoint.keep_last", c.checkpoint.keep_last, "keep only the newest N checkpoints; 0 = keep all");
  v("checkpoint.keep_every", c.checkpoint.keep_every,
    "besides the newest, keep for good every checkpoint whose step is a multiple of N; 0 = none");
  v("guard.enabled", c.guard.enabled, "skip non-finite and spiking steps, roll back after repeated ones");
  v("guard.window", c.guard.window, "steps of loss and grad-norm history behind the spike statistics");
  v("guard.min_history", c.guard.min_history, "accepted steps needed before a step can count as a spike");
  v("guard.spike_sigma", c.guard.spike_sigma,
    "a loss or grad norm this many standard deviations above its running mean is a spike (the step is skipped)");
  v("guard.max_skipped_in_a_row", c.guard.max_skipped_in_a_row, "non-finite steps in a row that trigger a rollback");
  v("guard.rollback_after", c.guard.rollback_after, "spikes within guard.window attempts that trigger a rollback");
  v("guard.rollback_lr_factor", c.guard.rollback_lr_factor, "learning-rate multiplier applied at each rollback");
  v("guard.max_rollbacks", c.guard.max_rollbacks, "rollbacks before the run stops with exit code 3");
  v("guard.replica_check_interval", c.guard.replica_check_interval,
    "every N steps the data-parallel replicas compare a hash of their weights; 0 = never");
  v("parallel.data", c.parallel.data, "data-parallel ranks; 0 = world size / (parallel.pipeline x parallel.tensor)");
  v("parallel.tensor", c.parallel.tensor, "tensor-parallel ranks, consecutive ranks of a node");
  v("parallel.pipeline", c.parallel.pipeline,
    "pipeline stages: the layers are split over this many ranks (world = data x pipeline x tensor)");
  v("parallel.schedule", c.parallel.schedule,
    "pipeline schedule: 1f1b (warm-up forwards, then one forward / one backward) or interleaved");
  v("parallel.virtual_stages", c.parallel.virtual_stages,
    "interleaved schedule: chunks of layers per stage (the bubble shrinks by this factor)");
  v("parallel.pipeline_layers", c.parallel.pipeline_layers,
    "layers of each pipeline chunk in order, e.g. [5, 4, 4, 3]; empty = balanced by compute");
  v("parallel.zero", c.parallel.zero, "1 = ZeRO-1: shard AdamW state and master weights over data-parallel ranks");
  v("parallel.timeout_s", c.parallel.timeout_s,
    "a collective that has not finished after this many seconds ends the job with exit code 4; 0 = no limit");
  v("parallel.bucket_mb", c.parallel.bucket_mb, "gradient all-reduce bucket size in MiB (buckets overlap backward)");
  v("parallel.allow_cross_node_tensor", c.parallel.allow_cross_node_tensor,
    "run even when a tensor-parallel group spans hosts (refused by default: it communicates every layer)");
}

// Loads a YAML or JSON file, applies `key=value` overrides, checks keys and types.
// Every mistake is a UserError naming the key (and file) and what would be right.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config config_from_json(const nlohmann::json& j, const std::string& origin);
nlohmann::json config_to_json(const Config& c);
std::string config_to_text(const Config& c);  // "key: value" lines, for the console
// Consistency checks (sizes, divisibility, ranges). dp_world: data-parallel ranks.
void validate_config(const Config& c, int dp_world = 1);
// Resolves parallel.data against the world size and checks the layout; returns the data size.
int resolve_parallel_layout(const Config& c, int world_size);
// The config reference in Markdown (docs/config.md is generated from it).
std::string config_reference_markdown();

}  // namespace ltrain
