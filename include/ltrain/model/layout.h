// The LLaMA tensor layout, written out once: every parameter (Hugging Face name, global shape,
// tensor-parallel split, weight decay, gradient unit) and every activation buffer (shape, dtype
// class, and whether a recompute mode keeps it per layer or shares one buffer across layers).
//
// Everything that needs the layout is a loop over these tables: LlamaModel's parameter views and
// activation buffers, the memory plan's bytes (train/memory_plan.cpp), the Hugging Face mapping
// (checkpoint/hf.cpp) and the parameter count. A change to the model's tensors is made here, and
// the others follow.
//
// Letters as in core/tensor.h: B, T, C, H, KV, HD, FF, V, L; N = B*T rows. Under tensor
// parallelism over P ranks, Hl, KVl, FFl, Vl are one rank's query heads, kv heads, MLP columns
// and vocabulary rows, and Ns = N/P (rounded up) the rows of the sequence-parallel regions.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ltrain/config/config.h"
#include "ltrain/core/tensor.h"

namespace ltrain {

enum class Recompute { kNone, kSelective, kFull };
Recompute parse_recompute(const std::string& s);

// The sizes of a config on one of P tensor-parallel ranks (P = 1: the whole model).
struct LlamaDims {
  int64_t C, HD, L, H, KV, FF, V;
  int64_t P, Hl, KVl, FFl, Vl;
  LlamaDims(const ModelConfig& m, int P);
};

// Which buffer a dtype class means: the backend's compute_dtype() (weights, activations), its
// master_dtype() (gradients, statistics such as rstd and lse), or int32 (token ids).
enum class DTypeClass { kCompute, kMaster, kI32 };
DType resolve(DTypeClass c, DType compute, DType master);

// ---- parameters ---------------------------------------------------------------------------------

// The model's use of a parameter (which LlamaModel weight it is).
enum class ParamRole { kEmbed, kAttnNorm, kQ, kK, kV, kO, kMlpNorm, kGate, kUp, kDown, kFinalNorm, kLmHead };

struct ParamSpec {
  std::string name;   // Hugging Face's (LlamaForCausalLM)
  ParamRole role;
  int layer;          // -1 outside the layers
  Shape shape;        // global
  int shard_dim;      // the dimension split over the tensor-parallel ranks; -1 = replicated
  bool decay;         // weight decay applies (weight matrices yes, norms no)
  // Gradient unit, in the order backward finishes them: 0 the head (final norm, lm_head),
  // 1 .. L the layers L-1 .. 0, L + 1 the embedding. (A pipeline stage numbers its own units the
  // same way, over the tensors it holds.)
  int unit;
  // Pipeline parallelism with tied embeddings: the last stage's copy of the embedding, which it
  // uses as lm_head. Its gradient is summed with the first stage's, so both update alike; norms
  // and checkpoints count the first stage's only.
  bool tied_copy = false;
  int order = 0;  // index in the whole model's layout (llama_param_layout)
};

// Every view starts on a 64-element (256-byte in fp32) boundary of the flat buffers.
constexpr int64_t kParamAlign = 64;

// The parameters of one rank, in the order of the flat parameter buffer, which is also the order
// of checkpoints and of init_weights' random draws. The weights buffer has the compute dtype and
// the gradient buffer, laid out the same, the master dtype. lm_head is absent when tied (it is
// the embedding).
struct ParamLayout {
  std::vector<ParamSpec> params;
  std::vector<int64_t> offsets;  // element offset of each view in the flat buffers
  int64_t elements = 0;          // the buffers' length before any padding for ZeRO-1
  int P = 1;

  // This rank's shape of params[i] (the split dimension divided by P).
  Shape local_shape(size_t i) const;
  // [begin, end) of every gradient unit, in unit order, for buffers of `padded` elements: each
  // unit runs to the next one's start (the alignment gaps belong to it), the last in memory (the
  // head) to the end of the buffer.
  std::vector<std::pair<int64_t, int64_t>> unit_ranges(int64_t padded) const;
};
ParamLayout llama_param_layout(const ModelConfig& m, int P = 1);

// ---- pipeline stages ---------------------------------------------------------------------------

// How the layers are cut into the chunks of a pipeline: P stages (ranks) of V virtual chunks
// each. Global chunk g = v * P + p runs on stage p as its v-th chunk (Megatron's interleaving;
// V = 1: chunk p is stage p). The embedding goes with chunk 0, the final norm, lm_head and the
// loss with chunk P*V - 1.
struct PipelineSplit {
  int stages = 1, virtual_stages = 1;
  std::vector<int> first_layer;  // of each global chunk, then L: P*V + 1 entries
  int chunks() const { return stages * virtual_stages; }
  int chunk(int stage, int v) const { return v * stages + stage; }
  int stage_of(int chunk) const { return chunk % stages; }
  int layers(int chunk) const { return first_layer[size_t(chunk) + 1] - first_layer[size_t(chunk)]; }
};
// P stages x V chunks. `counts` (parallel.pipeline_layers), when not empty, gives each chunk's
// layers in global chunk order; otherwise V = 1 balances the stages' compute (a layer's FLOPs,
// the head's on the last stage: model/flops.h) and V > 1 cuts equal chunks. UserError for a cut
// that cannot be made (more chunks than layers, V > 1 with layers not divisible by P*V, counts
// that do not add up).
PipelineSplit llama_pipeline_split(const ModelConfig& m, int seq_len, int stages, int virtual_stages,
                                   const std::vector<int>& counts = {});
// The parameters stage `stage` holds: its chunks' layers, the embedding on the first stage, the
// final norm and lm_head on the last (with tied embeddings, the last stage's lm_head is a
// tied_copy of the embedding). Units are renumbered over what the stage holds.
ParamLayout llama_stage_param_layout(const ModelConfig& m, int P, const PipelineSplit& split, int stage);

// Parameters of the whole model (every tensor once; a tied lm_head is not counted twice).
int64_t llama_num_params(const ModelConfig& m);
// Parameters in the matrix products (what the FLOP count uses): everything but the norms and the
// input embedding, with the lm_head counted even when tied.
int64_t llama_num_matmul_params(const ModelConfig& m);

// ---- activations --------------------------------------------------------------------------------

// LlamaModel's activation buffers. The first group are members of one layer's activations; the
// rest exist once per model (resid: L + 1 copies).
enum class Act {
  // per layer (LayerActs)
  kRstd1, kLn1, kQ, kK, kV, kAtt, kLse, kX2, kRstd2, kLn2, kGate, kUp, kH,
  // per model
  kResid, kTokens, kTargets, kRstdF, kLnF, kLnFLocal, kLogits, kLosses, kLossSum, kDres, kDln,
  kHeadLse, kLnLocal, kPartial, kReduced, kDresFull, kDlnLocal,
  kDatt, kDq, kDk, kDv, kDh, kDgate, kDup,
};

struct ActivationSpec {
  Act id;
  const char* name;
  Shape shape;
  DTypeClass dtype;
  bool layer;  // a member of one layer's activations
  // Layer members: from this recompute mode on, backward rebuilds the buffer, so one buffer
  // serves every layer; below it each layer keeps its own. (rstd and the matrix products are
  // rebuilt only under full; the norm outputs and the SwiGLU product already under selective.)
  Recompute shared_from;
  int copies;  // per-model buffers: how many of this shape (resid: L + 1); layer members: 1
};

// Whether every layer has its own buffer of this member under `rc` (else layers 1.. use layer
// 0's). False for per-model buffers.
bool kept_per_layer(const ActivationSpec& a, Recompute rc);
// The per-model buffers only the output head uses (the final norm, the logits, the losses and the
// targets): a pipeline stage without the head has none of them.
bool head_only(Act id);

// The layer members for a micro-batch of B x T, in LayerActs order.
std::vector<ActivationSpec> llama_layer_activations(const LlamaDims& d, int64_t B, int64_t T);
// Every activation buffer for micro-batches of up to B x T, in allocation order: the layer
// members, then the per-model buffers. The tensor-parallel scratch (kLnFLocal, kHeadLse,
// kLnLocal, kPartial, kReduced, kDresFull, kDlnLocal) exists only when P > 1; with P = 1 those
// names alias other buffers (the model decides which).
std::vector<ActivationSpec> llama_activations(const LlamaDims& d, int64_t B, int64_t T);

// The output head's chunk of rows: (rows, Vl) logits of at most ~16M elements whatever the batch.
int64_t llama_head_chunk(int64_t N, int64_t Vl);

}  // namespace ltrain
