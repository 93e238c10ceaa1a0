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
//
// Tensor parallelism (Megatron-LM style, with sequence parallelism), over P ranks of `tp`:
// Q, K, V, gate and up are column-parallel (each rank holds H/P query heads, KV/P key/value heads
// and FF/P columns), o_proj and down_proj are row-parallel, the embedding and lm_head are split
// by vocabulary and cross-entropy is computed without gathering the logits. Between the
// parallel regions, the residual stream and the RMSNorms work on N/P rows per rank (sequence
// parallelism): an all-gather enters each parallel region and a reduce-scatter leaves it, and in
// backward each becomes the other. The collectives are visible in layer_forward/layer_backward
// as gather_rows / reduce_scatter_rows. With P = 1 they vanish (the buffers alias).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ltrain/config/config.h"
#include "ltrain/core/backend.h"
#include "ltrain/core/param_set.h"
#include "ltrain/model/layout.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

// A pipeline stage's share of the model: which chunks of `split` this rank runs (chunk v is
// global chunk split.chunk(stage, v)), and how many micro-batches each keeps in flight: the
// activation slots the schedule needs (train/pipeline.h).
struct PipelineStage {
  PipelineSplit split;
  int stage = 0;
  std::vector<int> slots;  // per chunk of this stage
  // The pipeline group (ranks = stages) and the same ranks for host scalars: forward_loss
  // passes activations along it.
  Communicator* comm = nullptr;
  Communicator* host = nullptr;
};

class LlamaModel {
 public:
  // Builds the model for batches of up to max_batch sequences of up to max_seq tokens. The flat
  // parameter and gradient buffers are padded to a multiple of buffer_multiple elements (ZeRO-1
  // splits them into equal shards). tp: the tensor-parallel group (nullptr = no tensor
  // parallelism); tp_host: the same ranks for host-side collectives (the MPI group; equal to tp on
  // the CPU backend).
  // stage: pipeline parallelism, this rank's chunks of the layers (nullptr = the whole model).
  LlamaModel(const ModelConfig& cfg, Backend& backend, int max_batch, int max_seq,
             Recompute recompute = Recompute::kNone, int64_t buffer_multiple = 1,
             Communicator* tp = nullptr, Communicator* tp_host = nullptr,
             const PipelineStage* stage = nullptr);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return backend_; }
  int tensor_parallel_size() const { return P_; }

  // Normal(0, initializer_range) weight matrices (output projections scaled by 1/sqrt(2L)),
  // norms at 1. Deterministic from the seed, whatever the backend, the layout and the thread
  // count: each element's draw is a function of the seed, its tensor's name and its index in the
  // whole tensor, so each rank draws only the elements it holds.
  void init_weights(uint64_t seed);

  // The trainable tensors (flat weight and gradient buffers, named views, gradient units), as
  // the optimizer, the gradient reducer and checkpoints use them.
  ParameterSet& parameters() { return pset_; }
  const ParameterSet& parameters() const { return pset_; }
  const std::vector<NamedTensor>& params() const { return pset_.params(); }
  const std::vector<NamedTensor>& grads() const { return pset_.grads(); }
  Tensor param_buffer() const { return param_buf_; }
  Tensor grad_buffer() const { return grad_buf_; }
  int64_t num_params() const { return pset_.num_params(); }  // this rank's, without padding
  void zero_grads();
  // Tensor parallelism: sums the gradients of replicated tensors (the norms, which each rank
  // computed from its own rows) over the tensor-parallel ranks. Once per optimizer step, after
  // the last backward.
  void reduce_replicated_grads();

  // Whole fp32 tensors from a flat buffer laid out like the parameters (the weights, or AdamW
  // moments), gathered over the tensor-parallel ranks: every rank of the group must call it.
  std::vector<HostTensor> export_full(const Tensor& flat);
  // The reverse: `get(name)` returns the whole tensor; this rank keeps its part.
  void import_full(Tensor flat, const std::function<const std::vector<float>&(const std::string&)>& get);

  // Gradient units (parameters().grad_unit_range), in the order backward finishes them: the head
  // (final norm and lm_head), layers L-1 .. 0, then the embedding. Each unit's gradients are one
  // contiguous range of the flat gradient buffer, reported through parameters().grad_ready as
  // soon as that range is final for this backward pass.

  // Forward and backward on one micro-batch: tokens and targets are (B, T) host arrays; a
  // negative target (a masked token of SFT data) has no loss and no gradient.
  // Parameter gradients are accumulated (+=) with the loss scaled by dloss_scale per token, so
  // gradient accumulation over micro-batches with n counted targets in all uses 1 / n.
  // Returns the mean loss over the micro-batch's counted targets (0 if there are none), which
  // it reads back from the device (a host synchronization).
  double forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                          double dloss_scale);
  // The same without reading the loss back: the micro-batch's per-row losses are added on the
  // device to the step's running sums, which take_loss_sum() reads once (one host
  // synchronization per optimizer step, not one per micro-batch). Every micro-batch of a step
  // has the same B and T.
  void forward_backward_accumulate(const int32_t* tokens, const int32_t* targets, int B, int T,
                                   double dloss_scale);
  // The summed loss over the counted targets of every micro-batch accumulated since the last
  // call (over the tensor-parallel group); 0 if none.
  double take_loss_sum();
  // Forward only; returns the mean loss over the counted targets (a pipeline stage: every stage
  // of the pipeline calls it, and each returns the loss).
  double forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T);
  // Forward only; returns the logits (V) of the last position of sequence 0, on the host.
  // Not under tensor parallelism.
  std::vector<float> forward_last_logits(const int32_t* tokens, int T);

  size_t activation_bytes() const;

  // ---- pipeline parallelism: one chunk of layers at a time (train/pipeline.cpp) --------------
  // Without a PipelineStage the model is one chunk holding every layer, the embedding and the
  // head, with one slot. A micro-batch in flight in chunk v occupies one of its slots from its
  // forward to its backward.
  int num_chunks() const { return int(chunks_.size()); }
  bool chunk_has_embedding(int v) const { return chunks_[size_t(v)].embed; }
  bool chunk_has_head(int v) const { return chunks_[size_t(v)].head; }
  // (Ns, C) rows of a micro-batch of B x T in a slot: the chunk's input (where the previous
  // stage's output is received), its output (sent to the next stage), and the gradient of its
  // output (received from the next stage, or left by the head), which chunk_backward turns into
  // the gradient of its input (sent to the previous stage).
  Tensor chunk_input(int v, int slot, int B, int T);
  Tensor chunk_output(int v, int slot, int B, int T);
  Tensor chunk_grad(int v, int slot, int B, int T);
  // Forward through chunk v's layers. With the embedding it starts from tokens (B, T host ids);
  // with the head it ends in the loss over targets, added to the step's sums (take_loss_sum),
  // and, when train, the head's backward: the output's gradient is left in chunk_grad.
  void chunk_forward(int v, int slot, const int32_t* tokens, const int32_t* targets, int B, int T,
                     double dloss_scale, bool train);
  // Backward through chunk v's layers (gradients accumulate); the embedding's when it has it.
  void chunk_backward(int v, int slot, int B, int T);

 private:
  // The tensors of model/layout.h's tables, by role (views into the flat buffers).
  struct LayerWeights {
    Tensor attn_norm;  // (C)
    Tensor q_proj;     // (Hl*HD, C)
    Tensor k_proj;     // (KVl*HD, C)
    Tensor v_proj;     // (KVl*HD, C)
    Tensor o_proj;     // (C, Hl*HD)
    Tensor mlp_norm;   // (C)
    Tensor gate_proj;  // (FFl, C)
    Tensor up_proj;    // (FFl, C)
    Tensor down_proj;  // (C, FFl)
  };
  struct Weights {
    Tensor wte;                        // (Vl, C)
    std::vector<LayerWeights> layers;  // (L)
    Tensor final_norm;                 // (C)
    Tensor lm_head;                    // (Vl, C); the same memory as wte when tied
    Tensor& slot(ParamRole role, int layer);
  };
  // Activations of one layer (shapes in llama_layer_activations); several layers share a buffer
  // when recomputation allows it.
  struct LayerActs {
    Tensor rstd1, ln1, q, k, v, att, lse, x2, rstd2, ln2, gate, up, h;
    Tensor& slot(Act id);
  };

  // A micro-batch's activations in one chunk: the input of each of its layers and the output,
  // each layer's activations, the token ids (embedding chunk), the output's gradient (pipeline).
  struct Slot {
    std::vector<Tensor> resid;     // (layers + 1) x (Ns, C)
    std::vector<LayerActs> acts;   // (layers)
    Tensor tokens;                 // (N) i32; this vocabulary shard's ids (-1: another's)
    Tensor dout;                   // (Ns, C); pipeline only
  };
  struct Chunk {
    int first = 0, last = 0;  // layers [first, last)
    bool embed = false, head = false;
    std::vector<Slot> slots;
  };

  // The views of layout_ over buf, in w and as named tensors.
  std::vector<NamedTensor> build_param_views(Tensor buf, Weights& w);
  void alloc_activations(bool pipeline);
  Tensor& model_buffer(Act id);  // the per-model activation buffer of a kind
  LayerActs acts_for(const Slot& s, int i, int B, int T) const;  // layer i of the slot's chunk
  // Sequence parallelism: the full (N, C) rows from every rank's (Ns, C) shard, and this rank's
  // shard of the sum over ranks of a full (N, C) partial result. Identities when P = 1.
  void gather_rows(Tensor full, const Tensor& local);
  void reduce_scatter_rows(Tensor local, const Tensor& full);
  // out = rmsnorm(x) gathered to all N rows (a norm entering a tensor-parallel region).
  void norm_gathered(Tensor out_full, Tensor rstd, const Tensor& x, const Tensor& weight);
  // out (Ns, C) = resid + the row-parallel product in @ w^T, summed over ranks.
  void add_row_parallel(Tensor out, const Tensor& resid, const Tensor& in, const Tensor& w);
  // x (Ns, C) is the layer input; writes y (Ns, C), the layer output.
  void layer_forward(int l, const LayerActs& a, const Tensor& x, Tensor y, int B, int T);
  // Recomputes what train.recompute dropped; no-op for kNone.
  void layer_recompute(int l, const LayerActs& a, const Tensor& x, int B, int T);
  // dres (Ns, C): in: gradient of the layer output; out: gradient of the layer input.
  void layer_backward(int l, const LayerActs& a, const Tensor& x, Tensor dres, int B, int T);
  // The embedding of tokens into the slot's first input (Ns, C).
  void embed(Slot& s, const int32_t* tokens, int B, int T);
  // The layers of chunk c from the slot's input to its output.
  void chunk_layers_forward(const Chunk& c, Slot& s, int B, int T);
  // The final norm of the chunk's output, gathered to all N rows in lnf_.
  void final_norm(const Slot& s, int B, int T);
  // Backward through the layers of chunk c, dres (Ns, C) holding the output's gradient; then
  // the embedding's, when the chunk has it.
  void chunk_layers_backward(const Chunk& c, Slot& s, Tensor dres, int B, int T);
  void forward_trunk(const int32_t* tokens, int B, int T);
  // The head on lnf_: the loss over targets added to the step's sums; with train, d(lnf) in
  // dln_local_. Then head_backward: the final norm's backward into dres (zeroed first).
  void head_loss(const int32_t* targets, int B, int T, double dloss_scale, bool train);
  void head_backward(const Slot& s, Tensor dres, int B, int T);
  // The output head in chunks of rows, so (N, V) logits never exist at once. With backward=true
  // it also leaves d(lnf) in dln_local_ and accumulates the lm_head gradient. The per-row losses
  // are left in losses_ (0 for uncounted targets).
  void head(int64_t N, bool backward, double dloss_scale);
  // The sum of `rows` rows of a loss tensor, read back (over the tensor-parallel group).
  double read_loss_sum(const Tensor& losses, int64_t rows);
  int64_t local_rows(int64_t N) const;  // N / P, checked

  ModelConfig cfg_;
  Backend& backend_;
  int max_batch_, max_seq_;
  Recompute recompute_;
  Communicator* tp_;
  Communicator* tp_host_;
  int P_ = 1, p_ = 0;  // tensor-parallel size and rank
  int C_, HD_, L_;
  int Hl_, KVl_, FFl_, Vl_;  // this rank's query heads, kv heads, MLP columns, vocabulary rows
  int vocab_offset_ = 0;     // first vocabulary id of this rank's shard

  ParamLayout layout_;  // this rank's parameters (model/layout.h), in the order of params()
  Tensor param_buf_, grad_buf_;
  Weights w_, dw_;
  ParameterSet pset_;

  Tensor freqs_;                  // (max_seq, HD/2, 2) RoPE cos/sin
  Tensor targets_;                // (N) i32
  PipelineSplit pipe_split_;      // pipeline parallelism (pipe_comm_ set), else unused
  Communicator* pipe_comm_ = nullptr;
  Communicator* pipe_host_ = nullptr;
  std::vector<Chunk> chunks_;     // this stage's chunks (the whole model: one), with their slots
  std::vector<int> layer_unit_;   // gradient unit of each layer (-1: another stage's)
  int head_unit_ = -1, embed_unit_ = -1;
  std::vector<Tensor> owned_;     // every activation buffer, for freeing
  Tensor rstdf_, lnf_local_, lnf_;  // final norm: (Ns), (Ns, C), (N, C) gathered (aliases when P = 1)
  Tensor logits_;                 // (chunk, Vl), the head's working buffer
  Tensor losses_;                 // (N)
  Tensor loss_sum_;               // (N) per-row losses summed over a step's micro-batches
  int64_t pending_rows_ = 0;      // rows of loss_sum_ holding sums not yet taken; 0: none
  Tensor lse_;                    // (chunk) the head's full-row logsumexp (P > 1)
  int64_t head_chunk_;
  // Scratch of the tensor-parallel regions (P > 1 only): a norm's local rows before the gather,
  // a row-parallel partial sum before the reduce-scatter, and its reduced shard.
  Tensor ln_local_, partial_, reduced_;
  // backward scratch; the *_full_ / *_local_ pairs alias when P = 1
  Tensor dres_, dres_full_, dln_, dln_local_, datt_, dq_, dk_, dv_, dh_, dgate_, dup_;
};

}  // namespace ltrain
