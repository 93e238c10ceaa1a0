// The LLaMA forward and backward passes as explicit op calls. Shapes use N = B*T.
// Residual adds are folded into the matrix products: the residual is copied into the output and
// the projection accumulates onto it (beta = 1), which saves a pass over (N, C).
#include "ltrain/model/llama.h"

#include <cmath>
#include <random>

#include "ltrain/core/check.h"

namespace ltrain {

Recompute parse_recompute(const std::string& s) {
  if (s == "none") return Recompute::kNone;
  if (s == "selective") return Recompute::kSelective;
  if (s == "full") return Recompute::kFull;
  user_error("train.recompute must be none, selective or full, got '", s, "'");
}

namespace {
constexpr int64_t kAlign = 64;  // elements; every parameter view starts on a 256-byte boundary
int64_t align_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// A view of the first shape.numel() elements of a buffer allocated for the largest batch.
Tensor prefix(const Tensor& buf, Shape shape) {
  LTRAIN_CHECK(shape.numel() <= buf.numel(), "view " << shape.str() << " of " << buf.shape.str());
  Tensor t = buf;
  t.shape = shape;
  return t;
}
Tensor as2d(const Tensor& t, int64_t rows) { return t.view({rows, t.numel() / rows}); }
}  // namespace

LlamaModel::LlamaModel(const ModelConfig& cfg, Backend& backend, int max_batch, int max_seq,
                       Recompute recompute, int64_t buffer_multiple)
    : cfg_(cfg), backend_(backend), max_batch_(max_batch), max_seq_(max_seq), recompute_(recompute) {
  C_ = cfg.hidden_size;
  H_ = cfg.num_attention_heads;
  KV_ = cfg.kv_heads();
  HD_ = cfg.head_dim();
  FF_ = cfg.ffn_dim();
  V_ = cfg.vocab_size;
  L_ = cfg.num_hidden_layers;
  LTRAIN_CHECK(C_ % H_ == 0 && H_ % KV_ == 0 && HD_ % 2 == 0, "validate_config() first");

  // Parameters and gradients: one flat buffer each, with identical layouts. A dry run of the
  // layout on a null buffer gives the size.
  Weights probe;
  int64_t count = build_param_views(Tensor{}, probe, nullptr);
  LTRAIN_CHECK(buffer_multiple >= 1);
  count = (count + buffer_multiple - 1) / buffer_multiple * buffer_multiple;
  param_buf_ = backend.alloc({count}, backend.compute_dtype());
  grad_buf_ = backend.alloc({count}, backend.master_dtype());
  build_param_views(param_buf_, w_, &params_);
  build_param_views(grad_buf_, dw_, &grads_);
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

int64_t LlamaModel::build_param_views(Tensor buf, Weights& w, std::vector<NamedTensor>* named) {
  const DType dt = buf.defined() ? buf.dtype : backend_.compute_dtype();
  char* base = static_cast<char*>(buf.data);
  int64_t off = 0;
  auto take = [&](const std::string& name, Shape s, bool decay) {
    Tensor t;
    t.data = base + off * int64_t(dtype_size(dt));
    t.dtype = dt;
    t.shape = s;
    off = align_up(off + s.numel());
    if (named) named->push_back({name, t, decay});
    return t;
  };
  if (named) named->clear();
  w.wte = take("model.embed_tokens.weight", {V_, C_}, true);
  w.layers.resize(L_);
  unit_begin_.assign(L_ + 1, 0);
  for (int l = 0; l < L_; ++l) {
    unit_begin_[l] = off;
    auto& lw = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    lw.attn_norm = take(p + "input_layernorm.weight", {C_}, false);
    lw.wq = take(p + "self_attn.q_proj.weight", {int64_t(H_) * HD_, C_}, true);
    lw.wk = take(p + "self_attn.k_proj.weight", {int64_t(KV_) * HD_, C_}, true);
    lw.wv = take(p + "self_attn.v_proj.weight", {int64_t(KV_) * HD_, C_}, true);
    lw.wo = take(p + "self_attn.o_proj.weight", {C_, int64_t(H_) * HD_}, true);
    lw.mlp_norm = take(p + "post_attention_layernorm.weight", {C_}, false);
    lw.w1 = take(p + "mlp.gate_proj.weight", {FF_, C_}, true);
    lw.w3 = take(p + "mlp.up_proj.weight", {FF_, C_}, true);
    lw.w2 = take(p + "mlp.down_proj.weight", {C_, FF_}, true);
  }
  unit_begin_[L_] = off;
  w.final_norm = take("model.norm.weight", {C_}, false);
  w.lm_head = cfg_.tie_word_embeddings ? w.wte : take("lm_head.weight", {V_, C_}, true);
  return off;
}

void LlamaModel::alloc_activations() {
  const int64_t N = int64_t(max_batch_) * max_seq_;
  const DType act = backend_.compute_dtype(), stat = backend_.master_dtype();
  auto alloc = [&](Shape s, DType dt) {
    owned_.push_back(backend_.alloc(s, dt));
    return owned_.back();
  };
  auto make_layer = [&](LayerActs* share) {
    // `share`: take the recomputable members from it instead of allocating them.
    LayerActs a;
    const bool full = recompute_ == Recompute::kFull && share;
    const bool sel = recompute_ != Recompute::kNone && share;
    a.rstd1 = full ? share->rstd1 : alloc({N}, stat);
    a.ln1 = sel ? share->ln1 : alloc({N, C_}, act);
    a.q = full ? share->q : alloc({max_batch_, max_seq_, H_, HD_}, act);
    a.k = full ? share->k : alloc({max_batch_, max_seq_, KV_, HD_}, act);
    a.v = full ? share->v : alloc({max_batch_, max_seq_, KV_, HD_}, act);
    a.att = full ? share->att : alloc({max_batch_, max_seq_, H_, HD_}, act);
    a.lse = full ? share->lse : alloc({max_batch_, H_, max_seq_}, stat);
    a.x2 = full ? share->x2 : alloc({N, C_}, act);
    a.rstd2 = full ? share->rstd2 : alloc({N}, stat);
    a.ln2 = sel ? share->ln2 : alloc({N, C_}, act);
    a.gate = full ? share->gate : alloc({N, FF_}, act);
    a.up = full ? share->up : alloc({N, FF_}, act);
    a.h = sel ? share->h : alloc({N, FF_}, act);
    return a;
  };
  acts_.clear();
  acts_.push_back(make_layer(nullptr));
  for (int l = 1; l < L_; ++l) acts_.push_back(make_layer(&acts_[0]));
  for (int l = 0; l <= L_; ++l) resid_.push_back(alloc({N, C_}, act));
  tokens_ = alloc({N}, DType::kI32);
  targets_ = alloc({N}, DType::kI32);
  rstdf_ = alloc({N}, stat);
  lnf_ = alloc({N, C_}, act);
  // The head works on chunks of rows so that the (rows, V) logits stay small (at most ~16M
  // elements) whatever the batch.
  head_chunk_ = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(1) << 24) / V_));
  logits_ = alloc({head_chunk_, V_}, act);
  losses_ = alloc({N}, stat);
  dres_ = alloc({N, C_}, act);
  dln_ = alloc({N, C_}, act);
  datt_ = alloc({N, int64_t(H_) * HD_}, act);
  dq_ = alloc({max_batch_, max_seq_, H_, HD_}, act);
  dk_ = alloc({max_batch_, max_seq_, KV_, HD_}, act);
  dv_ = alloc({max_batch_, max_seq_, KV_, HD_}, act);
  dh_ = alloc({N, FF_}, act);
  dgate_ = alloc({N, FF_}, act);
  dup_ = alloc({N, FF_}, act);
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
  std::vector<double> host;
  for (const auto& p : params_) {
    host.assign(size_t(p.tensor.numel()), 1.0);
    if (p.decay) {  // a weight matrix
      bool out_proj = p.name.find("o_proj") != std::string::npos ||
                      p.name.find("down_proj") != std::string::npos;
      std::normal_distribution<double> dist(0.0, out_proj ? out_std : std);
      for (auto& x : host) x = dist(rng);
    }
    backend_.from_host(p.tensor, host.data(), DType::kF64);
  }
}

int64_t LlamaModel::num_params() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.tensor.numel();
  return n;
}

void LlamaModel::zero_grads() { backend_.zero(grad_buf_); }

std::pair<int64_t, int64_t> LlamaModel::grad_unit_range(int unit) const {
  LTRAIN_CHECK(unit >= 0 && unit < num_grad_units(), "unit " << unit);
  if (unit == 0) return {unit_begin_[L_], grad_buf_.numel()};  // head: final norm, lm_head, padding
  if (unit == L_ + 1) return {0, unit_begin_[0]};               // embedding
  const int l = L_ - unit;
  return {unit_begin_[l], unit_begin_[l + 1]};
}

Tensor LlamaModel::rows(const Tensor& t, int64_t n) const { return t.slice_rows(0, n); }

LlamaModel::LayerActs LlamaModel::acts_for(int l, int B, int T) const {
  const LayerActs& s = acts_[l];
  const int64_t N = int64_t(B) * T;
  LayerActs a;
  a.rstd1 = prefix(s.rstd1, {N});
  a.ln1 = prefix(s.ln1, {N, C_});
  a.q = prefix(s.q, {B, T, H_, HD_});
  a.k = prefix(s.k, {B, T, KV_, HD_});
  a.v = prefix(s.v, {B, T, KV_, HD_});
  a.att = prefix(s.att, {B, T, H_, HD_});
  a.lse = prefix(s.lse, {B, H_, T});
  a.x2 = prefix(s.x2, {N, C_});
  a.rstd2 = prefix(s.rstd2, {N});
  a.ln2 = prefix(s.ln2, {N, C_});
  a.gate = prefix(s.gate, {N, FF_});
  a.up = prefix(s.up, {N, FF_});
  a.h = prefix(s.h, {N, FF_});
  return a;
}

// ---- forward -----------------------------------------------------------------------------------

void LlamaModel::layer_forward(int l, const LayerActs& a, const Tensor& x, Tensor y, int B, int T) {
  Backend& be = backend_;
  const LayerWeights& lw = w_.layers[l];
  const int64_t N = int64_t(B) * T;
  const float eps = float(cfg_.rms_norm_eps);
  // attention block
  be.rmsnorm_forward(a.ln1, a.rstd1, x, lw.attn_norm, eps);
  be.matmul(as2d(a.q, N), a.ln1, lw.wq, false, true);  // (N, H*HD) = (N, C) @ (H*HD, C)^T
  be.matmul(as2d(a.k, N), a.ln1, lw.wk, false, true);  // (N, KV*HD)
  be.matmul(as2d(a.v, N), a.ln1, lw.wv, false, true);  // (N, KV*HD)
  be.rope_forward(a.q, a.q, freqs_);
  be.rope_forward(a.k, a.k, freqs_);
  be.attention_forward(a.att, a.lse, a.q, a.k, a.v);
  be.copy(a.x2, x);
  be.matmul(a.x2, as2d(a.att, N), lw.wo, false, true, 1.0f, 1.0f);  // x2 = x + att @ wo^T
  // MLP block
  be.rmsnorm_forward(a.ln2, a.rstd2, a.x2, lw.mlp_norm, eps);
  be.matmul(a.gate, a.ln2, lw.w1, false, true);  // (N, FF)
  be.matmul(a.up, a.ln2, lw.w3, false, true);    // (N, FF)
  be.swiglu_forward(a.h, a.gate, a.up);
  if (!y.defined()) return;  // recomputation needs no layer output
  be.copy(y, a.x2);
  be.matmul(y, a.h, lw.w2, false, true, 1.0f, 1.0f);  // y = x2 + h @ w2^T
}

void LlamaModel::layer_recompute(int l, const LayerActs& a, const Tensor& x, int B, int T) {
  Backend& be = backend_;
  const LayerWeights& lw = w_.layers[l];
  const float eps = float(cfg_.rms_norm_eps);
  switch (recompute_) {
    case Recompute::kNone: return;
    case Recompute::kSelective:
      be.rmsnorm_forward(a.ln1, a.rstd1, x, lw.attn_norm, eps);
      be.rmsnorm_forward(a.ln2, a.rstd2, a.x2, lw.mlp_norm, eps);
      be.swiglu_forward(a.h, a.gate, a.up);
      return;
    case Recompute::kFull: layer_forward(l, a, x, Tensor{}, B, T); return;
  }
}

void LlamaModel::forward_trunk(const int32_t* tokens, int B, int T) {
  LTRAIN_CHECK(B <= max_batch_ && T <= max_seq_, "batch " << B << "x" << T << " exceeds the model's "
                                                          << max_batch_ << "x" << max_seq_);
  const int64_t N = int64_t(B) * T;
  backend_.from_host(rows(tokens_, N), tokens, DType::kI32);
  backend_.embedding_forward(rows(resid_[0], N), rows(tokens_, N), w_.wte);
  for (int l = 0; l < L_; ++l)
    layer_forward(l, acts_for(l, B, T), rows(resid_[l], N), rows(resid_[l + 1], N), B, T);
  backend_.rmsnorm_forward(rows(lnf_, N), rows(rstdf_, N), rows(resid_[L_], N), w_.final_norm,
                           float(cfg_.rms_norm_eps));
}

double LlamaModel::head(int64_t N, bool backward, double dloss_scale) {
  Backend& be = backend_;
  for (int64_t r0 = 0; r0 < N; r0 += head_chunk_) {
    const int64_t n = std::min(head_chunk_, N - r0);
    Tensor logits = rows(logits_, n);
    Tensor lnf = lnf_.slice_rows(r0, n);
    be.matmul(logits, lnf, w_.lm_head, false, true);  // (n, V) = (n, C) @ (V, C)^T
    be.cross_entropy(losses_.slice_rows(r0, n), backward ? logits : Tensor{}, logits,
                     targets_.slice_rows(r0, n), float(dloss_scale));
    if (backward) {  // logits now hold dlogits
      be.matmul(dln_.slice_rows(r0, n), logits, w_.lm_head, false, false);      // (n, C)
      be.matmul(dw_.lm_head, logits, lnf, true, false, 1.0f, 1.0f);          // (V, C) +=
    }
  }
  std::vector<double> host(N);
  be.to_host(host.data(), DType::kF64, rows(losses_, N));
  double sum = 0;
  for (double x : host) sum += x;
  return sum;
}

double LlamaModel::forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T) {
  const int64_t N = int64_t(B) * T;
  forward_trunk(tokens, B, T);
  backend_.from_host(rows(targets_, N), targets, DType::kI32);
  return head(N, false, 0.0) / double(N);
}

std::vector<float> LlamaModel::forward_last_logits(const int32_t* tokens, int T) {
  forward_trunk(tokens, 1, T);
  Tensor logits = rows(logits_, 1);
  backend_.matmul(logits, lnf_.slice_rows(T - 1, 1), w_.lm_head, false, true);
  std::vector<float> host(V_);
  backend_.to_host(host.data(), DType::kF32, logits);
  return host;
}

// ---- backward ----------------------------------------------------------------------------------

void LlamaModel::layer_backward(int l, const LayerActs& a, const Tensor& x, Tensor dres, int B,
                                int T) {
  Backend& be = backend_;
  const LayerWeights& lw = w_.layers[l];
  const LayerWeights& dlw = dw_.layers[l];
  const int64_t N = int64_t(B) * T;
  Tensor dln = rows(dln_, N), datt = rows(datt_, N);
  Tensor dh = rows(dh_, N), dgate = rows(dgate_, N), dup = rows(dup_, N);
  Tensor dq = prefix(dq_, {B, T, H_, HD_}), dk = prefix(dk_, {B, T, KV_, HD_}),
         dv = prefix(dv_, {B, T, KV_, HD_});
  // MLP block: y = x2 + h @ w2^T, h = silu(gate) * up, gate/up = ln2 @ w1^T / w3^T
  be.matmul(dh, dres, lw.w2, false, false);                    // (N, FF) = (N, C) @ (C, FF)
  be.matmul(dlw.w2, dres, a.h, true, false, 1.0f, 1.0f);       // (C, FF) += (N, C)^T @ (N, FF)
  be.swiglu_backward(dgate, dup, dh, a.gate, a.up);
  be.matmul(dln, dgate, lw.w1, false, false);                  // (N, C) = (N, FF) @ (FF, C)
  be.matmul(dln, dup, lw.w3, false, false, 1.0f, 1.0f);
  be.matmul(dlw.w1, dgate, a.ln2, true, false, 1.0f, 1.0f);    // (FF, C) +=
  be.matmul(dlw.w3, dup, a.ln2, true, false, 1.0f, 1.0f);
  be.rmsnorm_backward(dres, dlw.mlp_norm, dln, a.x2, lw.mlp_norm, a.rstd2);  // dres: now d(x2)
  // attention block: x2 = x + att @ wo^T
  be.matmul(datt, dres, lw.wo, false, false);                  // (N, H*HD) = (N, C) @ (C, H*HD)
  be.matmul(dlw.wo, dres, as2d(a.att, N), true, false, 1.0f, 1.0f);
  be.attention_backward(dq, dk, dv, datt.view(a.att.shape), a.q, a.k, a.v, a.att, a.lse);
  be.rope_backward(dq, dq, freqs_);
  be.rope_backward(dk, dk, freqs_);
  Tensor dq2 = as2d(dq, N), dk2 = as2d(dk, N), dv2 = as2d(dv, N);
  be.matmul(dln, dq2, lw.wq, false, false);                    // (N, C) = (N, H*HD) @ (H*HD, C)
  be.matmul(dln, dk2, lw.wk, false, false, 1.0f, 1.0f);
  be.matmul(dln, dv2, lw.wv, false, false, 1.0f, 1.0f);
  be.matmul(dlw.wq, dq2, a.ln1, true, false, 1.0f, 1.0f);      // (H*HD, C) +=
  be.matmul(dlw.wk, dk2, a.ln1, true, false, 1.0f, 1.0f);
  be.matmul(dlw.wv, dv2, a.ln1, true, false, 1.0f, 1.0f);
  be.rmsnorm_backward(dres, dlw.attn_norm, dln, x, lw.attn_norm, a.rstd1);  // dres: now d(x)
}

double LlamaModel::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                                    double dloss_scale) {
  Backend& be = backend_;
  const int64_t N = int64_t(B) * T;
  forward_trunk(tokens, B, T);
  be.from_host(rows(targets_, N), targets, DType::kI32);
  const double loss_sum = head(N, true, dloss_scale);  // leaves d(lnf) in dln_

  Tensor dres = rows(dres_, N);
  be.zero(dres);
  be.rmsnorm_backward(dres, dw_.final_norm, rows(dln_, N), rows(resid_[L_], N), w_.final_norm,
                      rows(rstdf_, N));
  if (grad_ready_hook_) grad_ready_hook_(0);
  for (int l = L_ - 1; l >= 0; --l) {
    LayerActs a = acts_for(l, B, T);
    layer_recompute(l, a, rows(resid_[l], N), B, T);
    layer_backward(l, a, rows(resid_[l], N), dres, B, T);
    if (grad_ready_hook_) grad_ready_hook_(L_ - l);
  }
  be.embedding_backward(dw_.wte, dres, rows(tokens_, N));
  if (grad_ready_hook_) grad_ready_hook_(L_ + 1);
  return loss_sum / double(N);
}

}  // namespace ltrain
