// The LLaMA model: weights, activations, and a forward and backward pass written as explicit op
// calls per layer (src/model/llama.cpp reads top to bottom as one training step).
//
// Memory: all parameters live in one flat buffer and all gradients in another (so data
// parallelism can reduce one buffer, and the optimizer can treat them as a list of views).
// Activation buffers are allocated once for the largest (B, T) and reused; what is kept per layer
// depends on train.recompute:
//   none       every activation of every layer is kept;
//   selective  the outputs of the matrix products and attention are kept; the RMSNorm outputs and
//              the SwiGLU product are recomputed in backward (the LLaMA paper's choice);
//   full       only each layer's input is kept; the whole layer is recomputed in backward.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ltrain/config/config.h"
#include "ltrain/core/backend.h"

namespace ltrain {

// A named view into the flat parameter (or gradient) buffer. Names follow Hugging Face's
// LlamaForCausalLM; q_proj and k_proj rows are in Meta's interleaved RoPE layout.
struct NamedTensor {
  std::string name;
  Tensor tensor;
  bool decay;  // weight decay applies (weight matrices: yes; norms: no)
};

enum class Recompute { kNone, kSelective, kFull };
Recompute parse_recompute(const std::string& s);

class LlamaModel {
 public:
  // Builds the model for batches of up to max_batch sequences of up to max_seq tokens. The flat
  // parameter and gradient buffers are padded to a multiple of buffer_multiple elements (ZeRO-1
  // splits them into equal shards).
  LlamaModel(const ModelConfig& cfg, Backend& backend, int max_batch, int max_seq,
             Recompute recompute = Recompute::kNone, int64_t buffer_multiple = 1);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return backend_; }

  // Normal(0, initializer_range) weight matrices (output projections scaled by 1/sqrt(2L)),
  // norms at 1. Deterministic from the seed, whatever the backend.
  void init_weights(uint64_t seed);

  const std::vector<NamedTensor>& params() const { return params_; }
  const std::vector<NamedTensor>& grads() const { return grads_; }
  Tensor param_buffer() const { return param_buf_; }
  Tensor grad_buffer() const { return grad_buf_; }
  int64_t num_params() const;  // without the alignment padding between views
  void zero_grads();

  // Gradient units, in the order backward finishes them: the head (final norm and lm_head),
  // layers L-1 .. 0, then the embedding. Each unit's gradients are one contiguous range of the
  // flat gradient buffer; the hook is called with the unit index (0 = head, 1 = layer L-1, ...,
  // L + 1 = embedding) as soon as that range is final for this backward pass. Data parallelism
  // starts reducing a bucket from there while backward goes on.
  int num_grad_units() const { return L_ + 2; }
  std::pair<int64_t, int64_t> grad_unit_range(int unit) const;  // [begin, end) elements
  void set_grad_ready_hook(std::function<void(int unit)> hook) { grad_ready_hook_ = std::move(hook); }

  // Forward and backward on one micro-batch: tokens and targets are (B, T) host arrays.
  // Parameter gradients are accumulated (+=) with the loss scaled by dloss_scale per token, so
  // gradient accumulation over k micro-batches of N tokens uses dloss_scale = 1 / (k * N).
  // Returns the mean loss over the micro-batch's tokens.
  double forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                          double dloss_scale);
  // Forward only; returns the mean loss.
  double forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T);
  // Forward only; returns the logits (V) of the last position of sequence 0, on the host.
  std::vector<float> forward_last_logits(const int32_t* tokens, int T);

  size_t activation_bytes() const;

 private:
  struct LayerWeights {
    Tensor attn_norm;  // (C)
    Tensor wq;         // (H*HD, C)
    Tensor wk;         // (KV*HD, C)
    Tensor wv;         // (KV*HD, C)
    Tensor wo;         // (C, H*HD)
    Tensor mlp_norm;   // (C)
    Tensor w1;         // (FF, C) gate
    Tensor w3;         // (FF, C) up
    Tensor w2;         // (C, FF) down
  };
  struct Weights {
    Tensor wte;                        // (V, C)
    std::vector<LayerWeights> layers;  // (L)
    Tensor final_norm;                 // (C)
    Tensor lm_head;                    // (V, C); the same memory as wte when tied
  };
  // Activations of one layer; several layers share a buffer when recomputation allows it.
  struct LayerActs {
    Tensor rstd1;  // (N)
    Tensor ln1;    // (N, C)
    Tensor q;      // (B, T, H, HD) after RoPE
    Tensor k;      // (B, T, KV, HD) after RoPE
    Tensor v;      // (B, T, KV, HD)
    Tensor att;    // (B, T, H, HD)
    Tensor lse;    // (B, H, T)
    Tensor x2;     // (N, C) residual after attention
    Tensor rstd2;  // (N)
    Tensor ln2;    // (N, C)
    Tensor gate;   // (N, FF)
    Tensor up;     // (N, FF)
    Tensor h;      // (N, FF) silu(gate) * up
  };

  // Lays out the views over buf (a null buf only measures); returns the elements used.
  int64_t build_param_views(Tensor buf, Weights& w, std::vector<NamedTensor>* named);
  void alloc_activations();
  Tensor rows(const Tensor& t, int64_t n) const;  // first n rows, re-shaped for this batch
  LayerActs acts_for(int l, int B, int T) const;
  // x (N, C) is the layer input; writes y (N, C), the layer output.
  void layer_forward(int l, const LayerActs& a, const Tensor& x, Tensor y, int B, int T);
  // Recomputes what train.recompute dropped; no-op for kNone.
  void layer_recompute(int l, const LayerActs& a, const Tensor& x, int B, int T);
  // dres (N, C): in: gradient of the layer output; out: gradient of the layer input.
  void layer_backward(int l, const LayerActs& a, const Tensor& x, Tensor dres, int B, int T);
  void forward_trunk(const int32_t* tokens, int B, int T);
  // The output head in chunks of rows, so (N, V) logits never exist at once. With backward=true
  // it also writes dlnf and accumulates the lm_head gradient. Returns the summed loss.
  double head(int64_t N, bool backward, double dloss_scale);

  ModelConfig cfg_;
  Backend& backend_;
  int max_batch_, max_seq_;
  Recompute recompute_;
  int C_, H_, KV_, HD_, FF_, V_, L_;

  Tensor param_buf_, grad_buf_;
  std::vector<int64_t> unit_begin_;  // element offset where each layer's views start (L + 1 entries)
  std::function<void(int)> grad_ready_hook_;
  Weights w_, dw_;
  std::vector<NamedTensor> params_, grads_;

  Tensor freqs_;                  // (max_seq, HD/2, 2) RoPE cos/sin
  Tensor tokens_, targets_;       // (N) i32
  std::vector<Tensor> resid_;     // (L+1) x (N, C): the input of each layer, then the final one
  std::vector<LayerActs> acts_;   // per layer; members shared between layers where recomputed
  std::vector<Tensor> owned_;     // every activation buffer, for freeing
  Tensor rstdf_, lnf_;            // final norm: (N), (N, C)
  Tensor logits_;                 // (chunk, V), the head's working buffer
  Tensor losses_;                 // (N)
  int64_t head_chunk_;
  // backward scratch
  Tensor dres_, dln_, datt_, dq_, dk_, dv_, dh_, dgate_, dup_;
};

}  // namespace ltrain
