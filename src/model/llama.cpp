// The LLaMA forward and backward passes as explicit op calls. Shapes use N = B*T rows, Ns = N/P
// rows per tensor-parallel rank in the sequence-parallel regions, and the per-rank head and
// column counts Hl, KVl, FFl, Vl (equal to H, KV, FF, V without tensor parallelism).
// Without tensor parallelism residual adds are folded into the matrix products: the residual is
// copied into the output and the projection accumulates onto it (beta = 1), saving a pass.
#include "ltrain/model/llama.h"

#include <cmath>
#include <random>

#include "ltrain/core/check.h"

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
                       Communicator* tp_host)
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

  // Parameters and gradients: one flat buffer each, with identical layouts (model/layout.h).
  layout_ = llama_param_layout(cfg, P_);
  LTRAIN_CHECK(buffer_multiple >= 1);
  const int64_t count = (layout_.elements + buffer_multiple - 1) / buffer_multiple * buffer_multiple;
  param_buf_ = backend.alloc({count}, backend.compute_dtype());
  grad_buf_ = backend.alloc({count}, backend.master_dtype());
  std::vector<NamedTensor> params = build_param_views(param_buf_, w_);
  std::vector<NamedTensor> grads = build_param_views(grad_buf_, dw_);
  // The padding belongs to the head's gradient unit, the last in memory.
  pset_.assign(backend, param_buf_, grad_buf_, std::move(params), std::move(grads), p_, P_,
               layout_.unit_ranges(count));
  alloc_activations();

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
    named.push_back({p.name, t, p.decay, p.shard_dim, p.shape});
  }
  if (cfg_.tie_word_embeddings) w.lm_head = w.wte;
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
    case Act::kTokens: return tokens_;
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

void LlamaModel::alloc_activations() {
  const DType act = backend_.compute_dtype(), stat = backend_.master_dtype();
  auto alloc = [&](const ActivationSpec& a) {
    owned_.push_back(backend_.alloc(a.shape, resolve(a.dtype, act, stat)));
    return owned_.back();
  };
  const std::vector<ActivationSpec> specs = llama_activations(LlamaDims(cfg_, P_), max_batch_, max_seq_);
  // Layer 0 holds every member; later layers share layer 0's buffer where recomputation allows.
  acts_.assign(size_t(L_), LayerActs{});
  for (int l = 0; l < L_; ++l)
    for (const auto& a : specs)
      if (a.layer) acts_[l].slot(a.id) = l == 0 || kept_per_layer(a, recompute_) ? alloc(a) : acts_[0].slot(a.id);
  for (const auto& a : specs) {
    if (a.layer) continue;
    if (a.id == Act::kResid) {
      for (int i = 0; i < a.copies; ++i) resid_.push_back(alloc(a));
    } else {
      model_buffer(a.id) = alloc(a);
    }
  }
  head_chunk_ = logits_.shape.dims[0];
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

void LlamaModel::init_weights(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const double std = cfg_.initializer_range;
  const double out_std = std / std::sqrt(2.0 * L_);  // residual-branch outputs, GPT-2 style
  std::vector<double> whole;
  for (size_t i = 0; i < pset_.params().size(); ++i) {
    const NamedTensor& p = pset_.params()[i];
    const ParamRole role = layout_.params[i].role;
    // The whole tensor is drawn on every rank, so the weights do not depend on the layout.
    whole.assign(size_t(p.global_shape.numel()), 1.0);
    if (p.decay) {  // a weight matrix
      const bool out_proj = role == ParamRole::kO || role == ParamRole::kDown;
      std::normal_distribution<double> dist(0.0, out_proj ? out_std : std);
      for (auto& x : whole) x = dist(rng);
    }
    std::vector<double> part(size_t(p.tensor.numel()));
    extract_slice(whole.data(), p.global_shape, pset_.local_slice(p), part.data(), sizeof(double));
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

LlamaModel::LayerActs LlamaModel::acts_for(int l, int B, int T) const {
  local_rows(int64_t(B) * T);  // checks that the rows divide over the ranks
  LayerActs a = acts_[size_t(l)];
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

void LlamaModel::forward_trunk(const int32_t* tokens, int B, int T) {
  LTRAIN_CHECK(B <= max_batch_ && T <= max_seq_, "batch " << B << "x" << T << " exceeds the model's "
                                                          << max_batch_ << "x" << max_seq_);
  const int64_t N = int64_t(B) * T, Ns = local_rows(N);
  // The vocabulary-parallel embedding: ids of other shards become -1 (a zero row).
  std::vector<int32_t> local(tokens, tokens + N);
  if (P_ > 1)
    for (auto& t : local) t = (t >= vocab_offset_ && t < vocab_offset_ + Vl_) ? t - vocab_offset_ : -1;
  backend_.from_host(rows(tokens_, N), local.data(), DType::kI32);
  Tensor emb = P_ == 1 ? rows(resid_[0], N) : prefix(partial_, {N, C_});
  backend_.embedding_forward(emb, rows(tokens_, N), w_.wte);
  reduce_scatter_rows(rows(resid_[0], Ns), emb);
  for (int l = 0; l < L_; ++l)
    layer_forward(l, acts_for(l, B, T), rows(resid_[l], Ns), rows(resid_[l + 1], Ns), B, T);
  backend_.rmsnorm_forward(rows(lnf_local_, Ns), rows(rstdf_, Ns), rows(resid_[L_], Ns), w_.final_norm,
                           float(cfg_.rms_norm_eps));
  gather_rows(rows(lnf_, N), rows(lnf_local_, Ns));
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
  Backend& be = backend_;
  const int64_t N = int64_t(B) * T, Ns = local_rows(N);
  LTRAIN_CHECK(pending_rows_ == 0 || pending_rows_ == N,
               "micro-batches of one step must have the same size: " << N << " rows after " << pending_rows_);
  forward_trunk(tokens, B, T);
  be.from_host(rows(targets_, N), targets, DType::kI32);
  head(N, true, dloss_scale);  // leaves d(lnf) in dln_local_
  if (pending_rows_ == 0) be.copy(rows(loss_sum_, N), rows(losses_, N));
  else be.add(rows(loss_sum_, N), rows(loss_sum_, N), rows(losses_, N));
  pending_rows_ = N;

  Tensor dres = rows(dres_, Ns);
  be.zero(dres);
  be.rmsnorm_backward(dres, dw_.final_norm, rows(dln_local_, Ns), rows(resid_[L_], Ns), w_.final_norm,
                      rows(rstdf_, Ns));
  pset_.grad_ready(0);
  for (int l = L_ - 1; l >= 0; --l) {
    LayerActs a = acts_for(l, B, T);
    layer_recompute(l, a, rows(resid_[l], Ns), B, T);
    layer_backward(l, a, rows(resid_[l], Ns), dres, B, T);
    pset_.grad_ready(L_ - l);
  }
  gather_rows(rows(dres_full_, N), dres);
  be.embedding_backward(dw_.wte, rows(dres_full_, N), rows(tokens_, N));
  pset_.grad_ready(L_ + 1);
}

}  // namespace ltrain
