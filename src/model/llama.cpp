// The LLaMA forward and backward passes as explicit op calls. Shapes use N = B*T rows, Ns = N/P
// rows per tensor-parallel rank in the sequence-parallel regions, and the per-rank head and
// column counts Hl, KVl, FFl, Vl (equal to H, KV, FF, V without tensor parallelism).
// Without tensor parallelism residual adds are folded into the matrix products: the residual is
// copied into the output and the projection accumulates onto it (beta = 1), saving a pass.
#include "ltrain/model/llama.h"

#include <cmath>

#include "ltrain/core/check.h"
#include "ltrain/core/hash.h"

namespace ltrain {

namespace {
// A view of the first shape.numel() elements of a buffer allocated for the largest batch.
Tensor prefix(const Tensor& buf, Shape shape) {
  LTRAIN_CHECK(shape.numel() <= buf.numel(), "view " << shape.str() << " of " << buf.shape.str());
  Tensor t = buf;
  t.shape = shape;
  return t;
}
Tensor as2d(const Tensor& t, int64_t rows) { return t.view({rows, t.numel() / rows}); }
Tensor rows(const Tensor& t, int64_t n) { return t.slice_rows(0, n); }
}  // namespace

LlamaModel::LlamaModel(const ModelConfig& cfg, Backend& backend, int max_batch, int max_seq,
                       Recompute recompute, int64_t buffer_multiple, Communicator* tp,
                       Communicator* tp_host, const PipelineStage* stage)
    : cfg_(cfg), backend_(backend), max_batch_(max_batch), max_seq_(max_seq), recompute_(recompute),
      tp_(tp), tp_host_(tp_host ? tp_host : tp) {
  if (tp_) {
    P_ = tp_->size();
    p_ = tp_->rank();
  }
  C_ = cfg.hidden_size;
  HD_ = cfg.head_dim();
  L_ = cfg.num_hidden_layers;
  const int H = cfg.num_attention_heads, KV = cfg.kv_heads(), FF = cfg.ffn_dim(), V = cfg.vocab_size;
  LTRAIN_CHECK(C_ % H == 0 && H % KV == 0 && HD_ % 2 == 0, "validate_config() first");
  LTRAIN_CHECK(H % P_ == 0 && KV % P_ == 0 && FF % P_ == 0 && V % P_ == 0,
               "resolve_parallel_layout() first: sizes must divide by the tensor-parallel size");
  Hl_ = H / P_;
  KVl_ = KV / P_;
  FFl_ = FF / P_;
  Vl_ = V / P_;
  vocab_offset_ = p_ * Vl_;

  // The chunks of layers this rank runs: the whole model, or a pipeline stage's.
  if (stage) {
    const PipelineSplit& sp = stage->split;
    pipe_split_ = sp;
    pipe_comm_ = stage->comm;
    pipe_host_ = stage->host;
    LTRAIN_CHECK(pipe_comm_ && pipe_host_, "a pipeline stage needs its communicators");
    LTRAIN_CHECK(int(stage->slots.size()) == sp.virtual_stages, "a slot count per chunk");
    for (int v = 0; v < sp.virtual_stages; ++v) {
      const int g = sp.chunk(stage->stage, v);
      Chunk c;
      c.first = sp.first_layer[size_t(g)];
      c.last = sp.first_layer[size_t(g) + 1];
      c.embed = g == 0;
      c.head = g == sp.chunks() - 1;
      c.slots.resize(size_t(stage->slots[size_t(v)]));
      chunks_.push_back(std::move(c));
    }
  } else {
    Chunk c;
    c.last = L_;
    c.embed = c.head = true;
    c.slots.resize(1);
    chunks_.push_back(std::move(c));
  }

  // Parameters and gradients: one flat buffer each, with identical layouts (model/layout.h).
  layout_ = stage ? llama_stage_param_layout(cfg, P_, stage->split, stage->stage) : llama_param_layout(cfg, P_);
  layer_unit_.assign(size_t(L_), -1);
  for (const auto& p : layout_.params) {
    if (p.layer >= 0) layer_unit_[size_t(p.layer)] = p.unit;
    else if (p.role == ParamRole::kEmbed) embed_unit_ = p.unit;
    else head_unit_ = p.unit;
  }
  LTRAIN_CHECK(buffer_multiple >= 1);
  const int64_t count = (layout_.elements + buffer_multiple - 1) / buffer_multiple * buffer_multiple;
  param_buf_ = backend.alloc({count}, backend.compute_dtype());
  grad_buf_ = backend.alloc({count}, backend.master_dtype());
  std::vector<NamedTensor> params = build_param_views(param_buf_, w_);
  std::vector<NamedTensor> grads = build_param_views(grad_buf_, dw_);
  // The padding belongs to the head's gradient unit, the last in memory.
  pset_.assign(backend, param_buf_, grad_buf_, std::move(params), std::move(grads), p_, P_,
               layout_.unit_ranges(count));
  alloc_activations(stage != nullptr);

  // RoPE table, computed in double on the host.
  std::vector<double> f(size_t(max_seq_) * HD_);
  for (int t = 0; t < max_seq_; ++t)
    for (int i = 0; i < HD_ / 2; ++i) {
      double angle = t * std::pow(cfg.rope_theta, -2.0 * i / HD_);
      f[size_t(t) * HD_ + 2 * i] = std::cos(angle);
      f[size_t(t) * HD_ + 2 * i + 1] = std::sin(angle);
    }
  freqs_ = backend.alloc({max_seq_, HD_ / 2, 2}, backend.master_dtype());  // fp32 even when computing in bf16
  backend.from_host(freqs_, f.data(), DType::kF64);
}

LlamaModel::~LlamaModel() {
  backend_.free(param_buf_);
  backend_.free(grad_buf_);
  backend_.free(freqs_);
  for (auto& t : owned_) backend_.free(t);
}

Tensor& LlamaModel::Weights::slot(ParamRole role, int layer) {
  switch (role) {
    case ParamRole::kEmbed: return wte;
    case ParamRole::kAttnNorm: return layers[size_t(layer)].attn_norm;
    case ParamRole::kQ: return layers[size_t(layer)].q_proj;
    case ParamRole::kK: return layers[size_t(layer)].k_proj;
    case ParamRole::kV: return layers[size_t(layer)].v_proj;
    case ParamRole::kO: return layers[size_t(layer)].o_proj;
    case ParamRole::kMlpNorm: return layers[size_t(layer)].mlp_norm;
    case ParamRole::kGate: return layers[size_t(layer)].gate_proj;
    case ParamRole::kUp: return layers[size_t(layer)].up_proj;
    case ParamRole::kDown: return layers[size_t(layer)].down_proj;
    case ParamRole::kFinalNorm: return final_norm;
    case ParamRole::kLmHead: return lm_head;
  }
  LTRAIN_CHECK(false, "unknown parameter role");
  return wte;
}

std::vector<NamedTensor> LlamaModel::build_param_views(Tensor buf, Weights& w) {
  std::vector<NamedTensor> named;
  w.layers.resize(size_t(L_));
  for (size_t i = 0; i < layout_.params.size(); ++i) {
    const ParamSpec& p = layout_.params[i];
    const Shape shape = layout_.local_shape(i);
    Tensor t = flat_range(buf, layout_.offsets[i], shape.numel());
    t.shape = shape;
    w.slot(p.role, p.layer) = t;
    named.push_back({p.name, t, p.decay, p.shard_dim, p.shape, p.tied_copy, p.order});
  }
  if (cfg_.tie_word_embeddings && !w.lm_head.defined()) w.lm_head = w.wte;  // the same memory
  return named;
}

Tensor& LlamaModel::LayerActs::slot(Act id) {
  switch (id) {
    case Act::kRstd1: return rstd1;
    case Act::kLn1: return ln1;
    case Act::kQ: return q;
    case Act::kK: return k;
    case Act::kV: return v;
    case Act::kAtt: return att;
    case Act::kLse: return lse;
    case Act::kX2: return x2;
    case Act::kRstd2: return rstd2;
    case Act::kLn2: return ln2;
    case Act::kGate: return gate;
    case Act::kUp: return up;
    case Act::kH: return h;
    default: break;
  }
  LTRAIN_CHECK(false, "not a layer activation");
  return h;
}

Tensor& LlamaModel::model_buffer(Act id) {
  switch (id) {
    case Act::kTargets: return targets_;
    case Act::kRstdF: return rstdf_;
    case Act::kLnF: return lnf_;
    case Act::kLnFLocal: return lnf_local_;
    case Act::kLogits: return logits_;
    case Act::kLosses: return losses_;
    case Act::kLossSum: return loss_sum_;
    case Act::kDres: return dres_;
    case Act::kDln: return dln_;
    case Act::kHeadLse: return lse_;
    case Act::kLnLocal: return ln_local_;
    case Act::kPartial: return partial_;
    case Act::kReduced: return reduced_;
    case Act::kDresFull: return dres_full_;
    case Act::kDlnLocal: return dln_local_;
    case Act::kDatt: return datt_;
    case Act::kDq: return dq_;
    case Act::kDk: return dk_;
    case Act::kDv: return dv_;
    case Act::kDh: return dh_;
    case Act::kDgate: return dgate_;
    case Act::kDup: return dup_;
    default: break;
  }
  LTRAIN_CHECK(false, "not a per-model activation");
  return dup_;
}

void LlamaModel::alloc_activations(bool pipeline) {
  const DType act = backend_.compute_dtype(), stat = backend_.master_dtype();
  auto alloc = [&](const ActivationSpec& a) {
    owned_.push_back(backend_.alloc(a.shape, resolve(a.dtype, act, stat)));
    return owned_.back();
  };
  const std::vector<ActivationSpec> specs = llama_activations(LlamaDims(cfg_, P_), max_batch_, max_seq_);
  // A layer member kept per layer has a buffer in every layer of every slot; the others are
  // rebuilt by backward right before use, so the first layer's buffer serves them all.
  LayerActs* shared = nullptr;
  for (auto& c : chunks_)
    for (auto& sl : c.slots) {
      sl.acts.assign(size_t(c.last - c.first), LayerActs{});
      for (auto& la : sl.acts) {
        for (const auto& a : specs)
          if (a.layer) la.slot(a.id) = !shared || kept_per_layer(a, recompute_) ? alloc(a) : shared->slot(a.id);
        if (!shared) shared = &la;
      }
      for (const auto& a : specs) {
        if (a.id == Act::kResid)
          for (int i = 0; i <= c.last - c.first; ++i) sl.resid.push_back(alloc(a));
        if (a.id == Act::kTokens && c.embed) sl.tokens = alloc(a);
        if (a.id == Act::kDres && pipeline) sl.dout = alloc(a);
      }
    }
  bool head = false;
  for (const auto& c : chunks_) head = head || c.head;
  for (const auto& a : specs)
    if (!a.layer && a.id != Act::kResid && a.id != Act::kTokens && (head || !head_only(a.id))) model_buffer(a.id) = alloc(a);
  head_chunk_ = head ? logits_.shape.dims[0] : 0;
  // Without tensor parallelism the sequence-parallel halves of each pair are one buffer.
  if (P_ == 1) {
    lnf_local_ = lnf_;
    dres_full_ = dres_;
    dln_local_ = dln_;
  }
}

size_t LlamaModel::activation_bytes() const {
  size_t b = 0;
  for (const auto& t : owned_) b += t.bytes();
  return b;
}

namespace {

// The initial draw of element i of a tensor whose key is `key`: a standard normal from two words
// of the splitmix64 sequence seeded by the key (positions 2i and 2i + 1), by Box-Muller. A
// function of (key, i) alone, so a rank draws only the elements it holds, on any number of
// threads, and gets what the whole tensor's draw would give.
double init_normal(uint64_t key, uint64_t i) {
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
  const uint64_t w1 = splitmix64(key + 2 * i * kGolden), w2 = splitmix64(key + (2 * i + 1) * kGolden);
  const double u1 = double((w1 >> 11) + 1) * 0x1.0p-53;  // (0, 1]
  const double u2 = double(w2 >> 11) * 0x1.0p-53;        // [0, 1)
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

}  // namespace

void LlamaModel::init_weights(uint64_t seed) {
  const double std = cfg_.initializer_range;
  const double out_std = std / std::sqrt(2.0 * L_);  // residual-branch outputs, GPT-2 style
  // Each tensor's draw is keyed by the seed and the tensor's name, each element by its index in
  // the whole tensor: the weights depend on neither the tensor-parallel nor the pipeline layout,
  // and each rank draws only its part (a pipeline stage's tied copy of the embedding gets the
  // embedding's draw: same name).
  for (const NamedTensor& p : pset_.params()) {
    const ParamSpec* spec = nullptr;
    for (const ParamSpec& s : layout_.params)
      if (s.name == p.name) spec = &s;
    LTRAIN_CHECK(spec, "init_weights: no layout entry for " << p.name);
    std::vector<double> part(size_t(p.tensor.numel()), 1.0);  // norms at 1
    if (spec->decay) {  // a weight matrix
      const bool out_proj = spec->role == ParamRole::kO || spec->role == ParamRole::kDown;
      const double sd = out_proj ? out_std : std;
      uint64_t key = splitmix64(seed);
      for (char c : p.name) key = splitmix64(key ^ uint64_t(uint8_t(c)));
      // The part is [start, start + length) of dimension `dim`: outer x length x inner elements.
      const TensorSlice sl = pset_.local_slice(p);
      const Shape& g = p.global_shape;
      int64_t outer = 1, inner = 1;
      for (int d = 0; d < sl.dim; ++d) outer *= g.dims[d];
      for (int d = sl.dim + 1; d < g.ndim; ++d) inner *= g.dims[d];
      const int64_t len = sl.length, whole_dim = g.dims[sl.dim];
#pragma omp parallel for collapse(2) schedule(static) if (outer * len * inner > (1 << 16))
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t j = 0; j < len; ++j) {
          const int64_t first = (o * whole_dim + sl.start + j) * inner;  // in the whole tensor
          double* out = part.data() + (o * len + j) * inner;
          for (int64_t r = 0; r < inner; ++r) out[r] = sd * init_normal(key, uint64_t(first + r));
        }
    }
    backend_.from_host(p.tensor, part.data(), DType::kF64);
  }
}

void LlamaModel::zero_grads() { backend_.zero(grad_buf_); }

void LlamaModel::reduce_replicated_grads() {
  if (P_ == 1) return;
  if (!tp_->orders_after_device_work()) backend_.synchronize();
  for (const auto& g : pset_.grads())
    if (g.shard_dim < 0) tp_->all_reduce_sum(g.tensor);
}

std::vector<HostTensor> LlamaModel::export_full(const Tensor& flat) {
  std::vector<HostTensor> out;
  for (const auto& p : pset_.params()) {
    const Tensor t = pset_.view(flat, p);
    HostTensor h{p.name, p.global_shape, std::vector<float>(size_t(p.global_shape.numel()))};
    std::vector<float> mine(size_t(t.numel()));
    backend_.to_host(mine.data(), DType::kF32, t);
    if (p.shard_dim < 0) {
      h.data = std::move(mine);
    } else {
      // Gather every rank's part (rank order), then put each in its place.
      std::vector<float> parts(size_t(t.numel()) * P_);
      Tensor in{mine.data(), DType::kF32, Shape{t.numel()}};
      Tensor all{parts.data(), DType::kF32, Shape{t.numel() * P_}};
      tp_host_->all_gather(all, in);
      TensorSlice s = pset_.local_slice(p);
      for (int q = 0; q < P_; ++q) {
        s.start = int64_t(q) * s.length;
        insert_slice(h.data.data(), p.global_shape, s, parts.data() + size_t(q) * t.numel(), sizeof(float));
      }
    }
    out.push_back(std::move(h));
  }
  return out;
}

void LlamaModel::import_full(Tensor flat,
                             const std::function<const std::vector<float>&(const std::string&)>& get) {
  for (const auto& p : pset_.params()) {
    const Tensor t = pset_.view(flat, p);
    const std::vector<float>& whole = get(p.name);
    LTRAIN_CHECK(int64_t(whole.size()) == p.global_shape.numel(), "import_full " << p.name);
    std::vector<float> part(size_t(t.numel()));
    extract_slice(whole.data(), p.global_shape, pset_.local_slice(p), part.data(), sizeof(float));
    backend_.from_host(t, part.data(), DType::kF32);
  }
}

int64_t LlamaModel::local_rows(int64_t N) const {
  LTRAIN_CHECK(N % P_ == 0, "B*T = " << N << " must divide by the tensor-parallel size " << P_);
  return N / P_;
}

LlamaModel::LayerActs LlamaModel::acts_for(const Slot& s, int i, int B, int T) const {
  local_rows(int64_t(B) * T);  // checks that the rows divide over the ranks
  LayerActs a = s.acts[size_t(i)];
  for (const auto& spec : llama_layer_activations(LlamaDims(cfg_, P_), B, T))
    a.slot(spec.id) = prefix(a.slot(spec.id), spec.shape);
  return a;
}

// ---- tensor-parallel regions --------------------------------------------------------------------

void LlamaModel::gather_rows(Tensor full, const Tensor& local) {
  if (P_ == 1) {
    if (full.data != local.data) backend_.copy(full, local);
    return;
  }
  if (!tp_->orders_after_device_work()) backend_.synchronize();
  tp_->all_gather(full, local);
}

void LlamaModel::reduce_scatter_rows(Tensor local, const Tensor& full) {
  if (P_ == 1) {
    if (full.data != local.data) backend_.copy(local, full);
    return;
  }
  if (!tp_->orders_after_device_work()) backend_.synchronize();
  tp_->reduce_scatter_sum(local, full);
}

void LlamaModel::norm_gathered(Tensor out_full, Tensor rstd, const Tensor& x, const Tensor& weight) {
  const float eps = float(cfg_.rms_norm_eps);
  if (P_ == 1) {
    backend_.rmsnorm_forward(out_full, rstd, x, weight, eps);
    return;
  }
  Tensor local = prefix(ln_local_, x.shape);
  backend_.rmsnorm_forward(local, rstd, x, weight, eps);
  gather_rows(out_full, local);
}

void LlamaModel::add_row_parallel(Tensor out, const Tensor& resid, const Tensor& in, const Tensor& w) {
  Backend& be = backend_;
  if (P_ == 1) {
    be.matmul(out, in, w, false, true, 1.0f, 1.0f, resid);  // out = resid + in @ w^T, one pass
    return;
  }
  const int64_t N = in.shape.dims[0];
  Tensor partial = prefix(partial_, {N, C_}), reduced = prefix(reduced_, out.shape);
  be.matmul(partial, in, w, false, true);  // (N, C): this rank's heads' (or columns') share
  reduce_scatter_rows(reduced, partial);   // (Ns, C): summed over ranks, this rank's rows
  be.add(out, resid, reduced);
}

// ---- forward -----------------------------------------------------------------------------------

void LlamaModel::layer_forward(int l, const LayerActs& a, const Tensor& x, Tensor y, int B, int T) {
  Backend& be = backend_;
  const LayerWeights& lw = w_.layers[l];
  const int64_t N = int64_t(B) * T;
  // attention block
  norm_gathered(a.ln1, a.rstd1, x, lw.attn_norm);        // (N, C), all rows
  be.matmul(as2d(a.q, N), a.ln1, lw.q_proj, false, true);   // (N, Hl*HD) = (N, C) @ (Hl*HD, C)^T
  be.matmul(as2d(a.k, N), a.ln1, lw.k_proj, false, true);   // (N, KVl*HD)
  be.matmul(as2d(a.v, N), a.ln1, lw.v_proj, false, true);   // (N, KVl*HD)
  be.rope_forward(a.q, a.q, freqs_);
  be.rope_forward(a.k, a.k, freqs_);
  be.attention_forward(a.att, a.lse, a.q, a.k, a.v);
  add_row_parallel(a.x2, x, as2d(a.att, N), lw.o_proj);      // x2 = x + att @ o_proj^T
  // MLP block
  norm_gathered(a.ln2, a.rstd2, a.x2, lw.mlp_norm);
  be.matmul(a.gate, a.ln2, lw.gate_proj, false, true);  // (N, FFl)
  be.matmul(a.up, a.ln2, lw.up_proj, false, true);    // (N, FFl)
  be.swiglu_forward(a.h, a.gate, a.up);
  if (!y.defined()) return;  // recomputation needs no layer output
  add_row_parallel(y, a.x2, a.h, lw.down_proj);         // y = x2 + h @ down_proj^T
}

void LlamaModel::layer_recompute(int l, const LayerActs& a, const Tensor& x, int B, int T) {
  const LayerWeights& lw = w_.layers[l];
  switch (recompute_) {
    case Recompute::kNone: return;
    case Recompute::kSelective:
      norm_gathered(a.ln1, a.rstd1, x, lw.attn_norm);
      norm_gathered(a.ln2, a.rstd2, a.x2, lw.mlp_norm);
      backend_.swiglu_forward(a.h, a.gate, a.up);
      return;
    case Recompute::kFull: layer_forward(l, a, x, Tensor{}, B, T); return;
  }
}

void LlamaModel::embed(Slot& s, const int32_t* tokens, int B, int T) {
  LTRAIN_CHECK(B <= max_batch_ && T <= max_seq_, "batch " << B << "x" << T << " exceeds the model's "
                                                          << max_batch_ << "x" << max_seq_);
  const int64_t N = int64_t(B) * T, Ns = local_rows(N);
  // The vocabulary-parallel embedding: ids of other shards become -1 (a zero row).
  std::vector<int32_t> local(tokens, tokens + N);
  if (P_ > 1)
    for (auto& t : local) t = (t >= vocab_offset_ && t < vocab_offset_ + Vl_) ? t - vocab_offset_ : -1;
  backend_.from_host(rows(s.tokens, N), local.data(), DType::kI32);
  Tensor emb = P_ == 1 ? rows(s.resid[0], N) : prefix(partial_, {N, C_});
  backend_.embedding_forward(emb, rows(s.tokens, N), w_.wte);
  reduce_scatter_rows(rows(s.resid[0], Ns), emb);
}

void LlamaModel::chunk_layers_forward(const Chunk& c, Slot& s, int B, int T) {
  const int64_t Ns = local_rows(int64_t(B) * T);
  for (int l = c.first; l < c.last; ++l) {
    const int i = l - c.first;
    layer_forward(l, acts_for(s, i, B, T), rows(s.resid[size_t(i)], Ns), rows(s.resid[size_t(i) + 1], Ns), B, T);
  }
}

void LlamaModel::final_norm(const Slot& s, int B, int T) {
  const int64_t N = int64_t(B) * T, Ns = local_rows(N);
  backend_.rmsnorm_forward(rows(lnf_local_, Ns), rows(rstdf_, Ns), rows(s.resid.back(), Ns), w_.final_norm,
                           float(cfg_.rms_norm_eps));
  gather_rows(rows(lnf_, N), rows(lnf_local_, Ns));
}

void LlamaModel::forward_trunk(const int32_t* tokens, int B, int T) {
  LTRAIN_CHECK(chunks_.size() == 1 && chunks_[0].embed && chunks_[0].head,
               "a pipeline stage runs its chunks through chunk_forward / chunk_backward");
  Chunk& c = chunks_[0];
  embed(c.slots[0], tokens, B, T);
  chunk_layers_forward(c, c.slots[0], B, T);
  final_norm(c.slots[0], B, T);
}

void LlamaModel::head(int64_t N, bool backward, double dloss_scale) {
  Backend& be = backend_;
  std::vector<double> part_lse, gmax, sum;
  for (int64_t r0 = 0; r0 < N; r0 += head_chunk_) {
    const int64_t n = std::min(head_chunk_, N - r0);
    Tensor logits = rows(logits_, n);
    Tensor lnf = lnf_.slice_rows(r0, n);
    Tensor losses = losses_.slice_rows(r0, n), targets = targets_.slice_rows(r0, n);
    be.matmul(logits, lnf, w_.lm_head, false, true);  // (n, Vl) = (n, C) @ (Vl, C)^T
    if (P_ == 1) {
      be.cross_entropy(losses, backward ? logits : Tensor{}, logits, targets, float(dloss_scale));
    } else {
      // Vocabulary-parallel: each rank's logsumexp over its columns, merged over the ranks on
      // the host (n values), then loss and gradient from the full rows' logsumexp.
      Tensor lse = rows(lse_, n);
      be.logsumexp_rows(lse, logits);
      part_lse.resize(n);
      be.to_host(part_lse.data(), DType::kF64, lse);
      gmax = part_lse;
      tp_host_->all_reduce_max(Tensor{gmax.data(), DType::kF64, Shape{n}});
      sum.resize(n);
      for (int64_t i = 0; i < n; ++i) sum[i] = std::exp(part_lse[i] - gmax[i]);
      tp_host_->all_reduce_sum(Tensor{sum.data(), DType::kF64, Shape{n}});
      for (int64_t i = 0; i < n; ++i) sum[i] = gmax[i] + std::log(sum[i]);
      be.from_host(lse, sum.data(), DType::kF64);
      be.cross_entropy_with_lse(losses, backward ? logits : Tensor{}, logits, lse, targets,
                                vocab_offset_, float(dloss_scale));
    }
    if (backward) {  // logits now hold dlogits
      be.matmul(dln_.slice_rows(r0, n), logits, w_.lm_head, false, false);  // (n, C), partial over vocab
      be.matmul(dw_.lm_head, logits, lnf, true, false, 1.0f, 1.0f);      // (Vl, C) +=
    }
  }
  if (backward) reduce_scatter_rows(rows(dln_local_, local_rows(N)), rows(dln_, N));  // d(lnf)
}

double LlamaModel::read_loss_sum(const Tensor& losses, int64_t n) {
  std::vector<double> host(n);
  backend_.to_host(host.data(), DType::kF64, rows(losses, n));
  double total = 0;
  for (double x : host) total += x;
  // Under tensor parallelism each row's loss sits on the rank owning its target.
  return P_ > 1 ? tp_host_->sum(total) : total;
}

namespace {
// Targets that count: a negative target (a masked prompt token in SFT data) has no loss.
int64_t count_targets(const int32_t* targets, int64_t N) {
  int64_t n = 0;
  for (int64_t i = 0; i < N; ++i) n += targets[i] >= 0;
  return n;
}
}  // namespace

double LlamaModel::forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T) {
  const int64_t N = int64_t(B) * T;
  if (pipe_comm_) {
    // A pipeline stage: the chunks in global order, each stage passing its output on (slot 0 of
    // each chunk; no training step is in flight).
    const int P = pipe_split_.stages, stage = pipe_comm_->rank();
    for (int g = 0; g < pipe_split_.chunks(); ++g) {
      if (pipe_split_.stage_of(g) != stage) continue;
      const int v = g / P;
      if (g > 0) pipe_comm_->send_recv({{chunk_input(v, 0, B, T), pipe_split_.stage_of(g - 1), false}});
      chunk_forward(v, 0, tokens, targets, B, T, 0.0, /*train=*/false);
      if (g + 1 < pipe_split_.chunks()) {
        if (!pipe_comm_->orders_after_device_work()) backend_.synchronize();
        pipe_comm_->send_recv({{chunk_output(v, 0, B, T), pipe_split_.stage_of(g + 1), true}});
      }
    }
    const int64_t valid = count_targets(targets, N);
    const double sum = pipe_host_->sum(take_loss_sum());
    return valid ? sum / double(valid) : 0.0;
  }
  forward_trunk(tokens, B, T);
  backend_.from_host(rows(targets_, N), targets, DType::kI32);
  const int64_t valid = count_targets(targets, N);
  head(N, false, 0.0);
  const double sum = read_loss_sum(losses_, N);
  return valid ? sum / double(valid) : 0.0;
}

std::vector<float> LlamaModel::forward_last_logits(const int32_t* tokens, int T) {
  LTRAIN_CHECK(P_ == 1, "generation runs without tensor parallelism");
  forward_trunk(tokens, 1, T);
  Tensor logits = rows(logits_, 1);
  backend_.matmul(logits, lnf_.slice_rows(T - 1, 1), w_.lm_head, false, true);
  std::vector<float> host(Vl_);
  backend_.to_host(host.data(), DType::kF32, logits);
  return host;
}

// ---- backward ----------------------------------------------------------------------------------

void LlamaModel::layer_backward(int l, const LayerActs& a, const Tensor& x, Tensor dres, int B,
                                int T) {
  Backend& be = backend_;
  const LayerWeights& lw = w_.layers[l];
  const LayerWeights& dlw = dw_.layers[l];
  const int64_t N = int64_t(B) * T, Ns = local_rows(N);
  Tensor dres_full = rows(dres_full_, N), dln = rows(dln_, N), dln_local = rows(dln_local_, Ns);
  Tensor datt = rows(datt_, N), dh = rows(dh_, N), dgate = rows(dgate_, N), dup = rows(dup_, N);
  Tensor dq = prefix(dq_, {B, T, Hl_, HD_}), dk = prefix(dk_, {B, T, KVl_, HD_}),
         dv = prefix(dv_, {B, T, KVl_, HD_});
  // MLP block: y = x2 + h @ down_proj^T, h = silu(gate) * up, gate/up = ln2 @ gate_proj^T / up_proj^T
  gather_rows(dres_full, dres);                                 // conjugate of the reduce-scatter
  be.matmul(dh, dres_full, lw.down_proj, false, false);                // (N, FFl) = (N, C) @ (C, FFl)
  be.matmul(dlw.down_proj, dres_full, a.h, true, false, 1.0f, 1.0f);   // (C, FFl) += (N, C)^T @ (N, FFl)
  be.swiglu_backward(dgate, dup, dh, a.gate, a.up);
  be.matmul(dln, dgate, lw.gate_proj, false, false);                   // (N, C) = (N, FFl) @ (FFl, C)
  be.matmul(dln, dup, lw.up_proj, false, false, 1.0f, 1.0f);
  be.matmul(dlw.gate_proj, dgate, a.ln2, true, false, 1.0f, 1.0f);     // (FFl, C) +=
  be.matmul(dlw.up_proj, dup, a.ln2, true, false, 1.0f, 1.0f);
  reduce_scatter_rows(dln_local, dln);                          // conjugate of the all-gather
  be.rmsnorm_backward(dres, dlw.mlp_norm, dln_local, a.x2, lw.mlp_norm, a.rstd2);  // dres: now d(x2)
  // attention block: x2 = x + att @ o_proj^T
  gather_rows(dres_full, dres);
  be.matmul(datt, dres_full, lw.o_proj, false, false);              // (N, Hl*HD) = (N, C) @ (C, Hl*HD)
  be.matmul(dlw.o_proj, dres_full, as2d(a.att, N), true, false, 1.0f, 1.0f);
  be.attention_backward(dq, dk, dv, datt.view(a.att.shape), a.q, a.k, a.v, a.att, a.lse);
  be.rope_backward(dq, dq, freqs_);
  be.rope_backward(dk, dk, freqs_);
  Tensor dq2 = as2d(dq, N), dk2 = as2d(dk, N), dv2 = as2d(dv, N);
  be.matmul(dln, dq2, lw.q_proj, false, false);                     // (N, C) = (N, Hl*HD) @ (Hl*HD, C)
  be.matmul(dln, dk2, lw.k_proj, false, false, 1.0f, 1.0f);
  be.matmul(dln, dv2, lw.v_proj, false, false, 1.0f, 1.0f);
  be.matmul(dlw.q_proj, dq2, a.ln1, true, false, 1.0f, 1.0f);       // (Hl*HD, C) +=
  be.matmul(dlw.k_proj, dk2, a.ln1, true, false, 1.0f, 1.0f);
  be.matmul(dlw.v_proj, dv2, a.ln1, true, false, 1.0f, 1.0f);
  reduce_scatter_rows(dln_local, dln);
  be.rmsnorm_backward(dres, dlw.attn_norm, dln_local, x, lw.attn_norm, a.rstd1);  // dres: now d(x)
}

double LlamaModel::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                                    double dloss_scale) {
  LTRAIN_CHECK(pending_rows_ == 0, "forward_backward with accumulated losses not yet taken");
  forward_backward_accumulate(tokens, targets, B, T, dloss_scale);
  const int64_t valid = count_targets(targets, int64_t(B) * T);
  const double loss_sum = take_loss_sum();
  return valid ? loss_sum / double(valid) : 0.0;
}

double LlamaModel::take_loss_sum() {
  if (pending_rows_ == 0) return P_ > 1 ? tp_host_->sum(0.0) : 0.0;
  const int64_t n = pending_rows_;
  pending_rows_ = 0;
  return read_loss_sum(loss_sum_, n);
}

void LlamaModel::forward_backward_accumulate(const int32_t* tokens, const int32_t* targets, int B,
                                             int T, double dloss_scale) {
  forward_trunk(tokens, B, T);
  head_loss(targets, B, T, dloss_scale, true);
  Tensor dres = rows(dres_, local_rows(int64_t(B) * T));
  head_backward(chunks_[0].slots[0], dres, B, T);
  chunk_layers_backward(chunks_[0], chunks_[0].slots[0], dres, B, T);
}

void LlamaModel::head_loss(const int32_t* targets, int B, int T, double dloss_scale, bool train) {
  Backend& be = backend_;
  const int64_t N = int64_t(B) * T;
  LTRAIN_CHECK(pending_rows_ == 0 || pending_rows_ == N,
               "micro-batches of one step must have the same size: " << N << " rows after " << pending_rows_);
  be.from_host(rows(targets_, N), targets, DType::kI32);
  head(N, train, dloss_scale);  // with train, leaves d(lnf) in dln_local_
  if (pending_rows_ == 0) be.copy(rows(loss_sum_, N), rows(losses_, N));
  else be.add(rows(loss_sum_, N), rows(loss_sum_, N), rows(losses_, N));
  pending_rows_ = N;
}

void LlamaModel::head_backward(const Slot& s, Tensor dres, int B, int T) {
  const int64_t Ns = local_rows(int64_t(B) * T);
  backend_.zero(dres);
  backend_.rmsnorm_backward(dres, dw_.final_norm, rows(dln_local_, Ns), rows(s.resid.back(), Ns), w_.final_norm,
                            rows(rstdf_, Ns));
  pset_.grad_ready(head_unit_);
}

void LlamaModel::chunk_layers_backward(const Chunk& c, Slot& s, Tensor dres, int B, int T) {
  const int64_t N = int64_t(B) * T, Ns = local_rows(N);
  for (int l = c.last - 1; l >= c.first; --l) {
    const int i = l - c.first;
    LayerActs a = acts_for(s, i, B, T);
    layer_recompute(l, a, rows(s.resid[size_t(i)], Ns), B, T);
    layer_backward(l, a, rows(s.resid[size_t(i)], Ns), dres, B, T);
    pset_.grad_ready(layer_unit_[size_t(l)]);
  }
  if (!c.embed) return;
  gather_rows(rows(dres_full_, N), dres);
  backend_.embedding_backward(dw_.wte, rows(dres_full_, N), rows(s.tokens, N));
  pset_.grad_ready(embed_unit_);
}

// ---- pipeline chunks ---------------------------------------------------------------------------

Tensor LlamaModel::chunk_input(int v, int slot, int B, int T) {
  return rows(chunks_[size_t(v)].slots[size_t(slot)].resid.front(), local_rows(int64_t(B) * T));
}
Tensor LlamaModel::chunk_output(int v, int slot, int B, int T) {
  return rows(chunks_[size_t(v)].slots[size_t(slot)].resid.back(), local_rows(int64_t(B) * T));
}
Tensor LlamaModel::chunk_grad(int v, int slot, int B, int T) {
  const Slot& s = chunks_[size_t(v)].slots[size_t(slot)];
  LTRAIN_CHECK(s.dout.defined(), "chunk_grad: not a pipeline stage");
  return rows(s.dout, local_rows(int64_t(B) * T));
}

void LlamaModel::chunk_forward(int v, int slot, const int32_t* tokens, const int32_t* targets, int B, int T,
                               double dloss_scale, bool train) {
  Chunk& c = chunks_[size_t(v)];
  Slot& s = c.slots[size_t(slot)];
  if (c.embed) embed(s, tokens, B, T);
  chunk_layers_forward(c, s, B, T);
  if (!c.head) return;
  final_norm(s, B, T);
  head_loss(targets, B, T, dloss_scale, train);
  if (train) head_backward(s, chunk_grad(v, slot, B, T), B, T);
}

void LlamaModel::chunk_backward(int v, int slot, int B, int T) {
  Chunk& c = chunks_[size_t(v)];
  chunk_layers_backward(c, c.slots[size_t(slot)], chunk_grad(v, slot, B, T), B, T);
}

}  // namespace ltrain
