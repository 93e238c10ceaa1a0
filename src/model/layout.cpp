// The LLaMA layout tables (include/ltrain/model/layout.h).
#include "ltrain/model/layout.h"

#include <algorithm>

#include "ltrain/core/check.h"
#include "ltrain/model/flops.h"

namespace ltrain {

Recompute parse_recompute(const std::string& s) {
  if (s == "none") return Recompute::kNone;
  if (s == "selective") return Recompute::kSelective;
  if (s == "full") return Recompute::kFull;
  user_error("train.recompute must be none, selective or full, got '", s, "'");
}

LlamaDims::LlamaDims(const ModelConfig& m, int P_)
    : C(m.hidden_size), HD(m.head_dim()), L(m.num_hidden_layers), H(m.num_attention_heads), KV(m.kv_heads()),
      FF(m.ffn_dim()), V(m.vocab_size), P(P_), Hl(H / P_), KVl(KV / P_), FFl(FF / P_), Vl(V / P_) {}

DType resolve(DTypeClass c, DType compute, DType master) {
  switch (c) {
    case DTypeClass::kCompute: return compute;
    case DTypeClass::kMaster: return master;
    case DTypeClass::kI32: return DType::kI32;
  }
  return compute;
}

// ---- parameters ---------------------------------------------------------------------------------

Shape ParamLayout::local_shape(size_t i) const {
  Shape s = params[i].shape;
  if (params[i].shard_dim >= 0) s.dims[params[i].shard_dim] /= P;
  return s;
}

std::vector<std::pair<int64_t, int64_t>> ParamLayout::unit_ranges(int64_t padded) const {
  int units = 0;
  for (const auto& p : params) units = std::max(units, p.unit + 1);
  std::vector<std::pair<int64_t, int64_t>> r(size_t(units), {-1, -1});
  for (size_t i = 0; i < params.size(); ++i) {
    auto& u = r[size_t(params[i].unit)];
    if (u.first < 0) u.first = offsets[i];
  }
  // Units lie in memory in the reverse of their order (the embedding first, the head last).
  for (int u = 0; u < units; ++u) r[size_t(u)].second = u == 0 ? padded : r[size_t(u - 1)].first;
  return r;
}

namespace {
// Offsets of every view: each starts on a kParamAlign boundary, in the order of params.
void place(ParamLayout& out) {
  int64_t off = 0;
  out.offsets.clear();
  for (size_t i = 0; i < out.params.size(); ++i) {
    out.offsets.push_back(off);
    off = (off + out.local_shape(i).numel() + kParamAlign - 1) / kParamAlign * kParamAlign;
  }
  out.elements = off;
}

}  // namespace

ParamLayout llama_param_layout(const ModelConfig& m, int P) {
  const LlamaDims d(m, 1);
  const int L = int(d.L);
  ParamLayout out;
  out.P = P;
  auto add = [&](std::string name, ParamRole role, int layer, Shape shape, int shard_dim, int unit) {
    const bool decay = shape.ndim == 2;  // the matrices; the norms are vectors
    out.params.push_back({std::move(name), role, layer, shape, P > 1 ? shard_dim : -1, decay, unit});
  };
  add("model.embed_tokens.weight", ParamRole::kEmbed, -1, {d.V, d.C}, 0, L + 1);
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int u = L - l;
    add(p + "input_layernorm.weight", ParamRole::kAttnNorm, l, {d.C}, -1, u);
    add(p + "self_attn.q_proj.weight", ParamRole::kQ, l, {d.H * d.HD, d.C}, 0, u);
    add(p + "self_attn.k_proj.weight", ParamRole::kK, l, {d.KV * d.HD, d.C}, 0, u);
    add(p + "self_attn.v_proj.weight", ParamRole::kV, l, {d.KV * d.HD, d.C}, 0, u);
    add(p + "self_attn.o_proj.weight", ParamRole::kO, l, {d.C, d.H * d.HD}, 1, u);
    add(p + "post_attention_layernorm.weight", ParamRole::kMlpNorm, l, {d.C}, -1, u);
    add(p + "mlp.gate_proj.weight", ParamRole::kGate, l, {d.FF, d.C}, 0, u);
    add(p + "mlp.up_proj.weight", ParamRole::kUp, l, {d.FF, d.C}, 0, u);
    add(p + "mlp.down_proj.weight", ParamRole::kDown, l, {d.C, d.FF}, 1, u);
  }
  add("model.norm.weight", ParamRole::kFinalNorm, -1, {d.C}, -1, 0);
  if (!m.tie_word_embeddings) add("lm_head.weight", ParamRole::kLmHead, -1, {d.V, d.C}, 0, 0);
  for (size_t i = 0; i < out.params.size(); ++i) out.params[i].order = int(i);
  place(out);
  return out;
}

PipelineSplit llama_pipeline_split(const ModelConfig& m, int seq_len, int P, int V, const std::vector<int>& counts) {
  const int L = m.num_hidden_layers, n = P * V;
  PipelineSplit s;
  s.stages = P;
  s.virtual_stages = V;
  if (P < 1 || V < 1) user_error("parallel.pipeline and parallel.virtual_stages must be >= 1, got ", P, " and ", V);
  if (n > L)
    user_error("parallel.pipeline (", P, ") x parallel.virtual_stages (", V, ") = ", n, " chunks, more than the ", L,
               " layers (model.num_hidden_layers); use at most ", L, " chunks");
  std::vector<int> c = counts;
  if (!c.empty()) {
    int sum = 0;
    for (int x : c) sum += x;
    if (int(c.size()) != n || sum != L || *std::min_element(c.begin(), c.end()) < 1)
      user_error("parallel.pipeline_layers must give ", n, " counts of at least 1 layer (one per chunk) adding up to ",
                 L, " layers, got ", c.size(), " counts adding up to ", sum);
  } else if (V > 1) {
    if (L % n != 0)
      user_error("parallel.virtual_stages (", V, ") x parallel.pipeline (", P, ") = ", n,
                 " chunks do not divide the ", L, " layers; choose them so that P x V divides ", L,
                 ", or give parallel.pipeline_layers");
    c.assign(size_t(n), L / n);
  } else {
    // The smallest bottleneck over contiguous cuts, by binary search on the largest stage cost;
    // the last stage also runs the head.
    const double layer = layer_flops_per_token(m, seq_len), head = head_flops_per_token(m);
    // Greedy for a bound on the largest stage cost: each stage but the last takes as many
    // layers as fit (at least one, leaving one for each later stage); the last takes the rest.
    auto cut = [&](double limit, std::vector<int>* out) {
      std::vector<int> r;
      int l = 0;
      for (int st = 0; st < n - 1; ++st) {
        int k = 1;
        while (l + k < L - (n - 1 - st) && (k + 1) * layer <= limit) ++k;
        r.push_back(k);
        l += k;
      }
      r.push_back(L - l);
      if (r.back() * layer + head > limit) return false;
      if (out) *out = r;
      return true;
    };
    double lo = 0, hi = L * layer + head;
    for (int it = 0; it < 100; ++it) {
      const double mid = (lo + hi) / 2;
      (cut(mid, nullptr) ? hi : lo) = mid;
    }
    LTRAIN_CHECK(cut(hi, &c), "pipeline split");
  }
  s.first_layer.push_back(0);
  for (int x : c) s.first_layer.push_back(s.first_layer.back() + x);
  return s;
}

ParamLayout llama_stage_param_layout(const ModelConfig& m, int P, const PipelineSplit& split, int stage) {
  const ParamLayout whole = llama_param_layout(m, P);
  const int L = m.num_hidden_layers;
  const bool first = stage == 0, last = stage == split.stage_of(split.chunks() - 1);
  std::vector<bool> mine(size_t(L), false);
  for (int v = 0; v < split.virtual_stages; ++v) {
    const int g = split.chunk(stage, v);
    for (int l = split.first_layer[size_t(g)]; l < split.first_layer[size_t(g) + 1]; ++l) mine[size_t(l)] = true;
  }
  ParamLayout out;
  out.P = P;
  for (const auto& p : whole.params) {
    const bool keep = p.layer >= 0 ? bool(mine[size_t(p.layer)])
                      : p.role == ParamRole::kEmbed ? first
                                                    : last;  // final norm, lm_head
    if (keep) out.params.push_back(p);
  }
  if (last && !first && m.tie_word_embeddings) {
    ParamSpec copy = whole.params.front();  // the embedding, used as lm_head
    copy.role = ParamRole::kLmHead;
    copy.unit = 0;
    copy.tied_copy = true;
    out.params.push_back(copy);
  }
  // Units over what the stage holds, in the same backward order.
  std::vector<int> used;
  for (const auto& p : out.params) used.push_back(p.unit);
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  for (auto& p : out.params) p.unit = int(std::lower_bound(used.begin(), used.end(), p.unit) - used.begin());
  place(out);
  return out;
}

int64_t llama_num_params(const ModelConfig& m) {
  int64_t n = 0;
  for (const auto& p : llama_param_layout(m).params) n += p.shape.numel();
  return n;
}

int64_t llama_num_matmul_params(const ModelConfig& m) {
  int64_t n = 0;
  for (const auto& p : llama_param_layout(m).params)
    if (p.decay && p.role != ParamRole::kEmbed) n += p.shape.numel();
  // A tied lm_head is still a product with the (V, C) table.
  if (m.tie_word_embeddings) n += int64_t(m.vocab_size) * m.hidden_size;
  return n;
}

// ---- activations --------------------------------------------------------------------------------

bool head_only(Act id) {
  switch (id) {
    case Act::kTargets: case Act::kRstdF: case Act::kLnF: case Act::kLnFLocal: case Act::kLogits:
    case Act::kLosses: case Act::kLossSum: case Act::kHeadLse:
      return true;
    default:
      return false;
  }
}

bool kept_per_layer(const ActivationSpec& a, Recompute rc) {
  return a.layer && int(rc) < int(a.shared_from);
}

std::vector<ActivationSpec> llama_layer_activations(const LlamaDims& d, int64_t B, int64_t T) {
  const int64_t N = B * T, Ns = (N + d.P - 1) / d.P;
  const auto act = DTypeClass::kCompute, stat = DTypeClass::kMaster;
  const auto sel = Recompute::kSelective, full = Recompute::kFull;
  return {
      {Act::kRstd1, "rstd1", {Ns}, stat, true, full, 1},
      {Act::kLn1, "ln1", {N, d.C}, act, true, sel, 1},  // gathered over the ranks
      {Act::kQ, "q", {B, T, d.Hl, d.HD}, act, true, full, 1},  // after RoPE
      {Act::kK, "k", {B, T, d.KVl, d.HD}, act, true, full, 1},
      {Act::kV, "v", {B, T, d.KVl, d.HD}, act, true, full, 1},
      {Act::kAtt, "att", {B, T, d.Hl, d.HD}, act, true, full, 1},
      {Act::kLse, "lse", {B, d.Hl, T}, stat, true, full, 1},
      {Act::kX2, "x2", {Ns, d.C}, act, true, full, 1},  // residual after attention
      {Act::kRstd2, "rstd2", {Ns}, stat, true, full, 1},
      {Act::kLn2, "ln2", {N, d.C}, act, true, sel, 1},
      {Act::kGate, "gate", {N, d.FFl}, act, true, full, 1},
      {Act::kUp, "up", {N, d.FFl}, act, true, full, 1},
      {Act::kH, "h", {N, d.FFl}, act, true, sel, 1},  // silu(gate) * up
  };
}

int64_t llama_head_chunk(int64_t N, int64_t Vl) {
  return std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(1) << 24) / Vl));
}

std::vector<ActivationSpec> llama_activations(const LlamaDims& d, int64_t B, int64_t T) {
  const int64_t N = B * T, Ns = (N + d.P - 1) / d.P, chunk = llama_head_chunk(N, d.Vl);
  const auto act = DTypeClass::kCompute, stat = DTypeClass::kMaster;
  std::vector<ActivationSpec> v = llama_layer_activations(d, B, T);
  auto add = [&](Act id, const char* name, Shape s, DTypeClass dt, int copies = 1) {
    v.push_back({id, name, s, dt, false, Recompute::kNone, copies});
  };
  const bool tp = d.P > 1;
  add(Act::kResid, "resid", {Ns, d.C}, act, int(d.L) + 1);  // each layer's input, then the final one
  add(Act::kTokens, "tokens", {N}, DTypeClass::kI32);
  add(Act::kTargets, "targets", {N}, DTypeClass::kI32);
  add(Act::kRstdF, "rstdf", {Ns}, stat);
  add(Act::kLnF, "lnf", {N, d.C}, act);  // gathered
  if (tp) add(Act::kLnFLocal, "lnf_local", {Ns, d.C}, act);
  add(Act::kLogits, "logits", {chunk, d.Vl}, act);
  add(Act::kLosses, "losses", {N}, stat);
  add(Act::kLossSum, "loss_sum", {N}, stat);
  add(Act::kDres, "dres", {Ns, d.C}, act);
  add(Act::kDln, "dln", {N, d.C}, act);
  if (tp) {
    add(Act::kHeadLse, "head_lse", {chunk}, stat);
    add(Act::kLnLocal, "ln_local", {Ns, d.C}, act);
    add(Act::kPartial, "partial", {N, d.C}, act);
    add(Act::kReduced, "reduced", {Ns, d.C}, act);
    add(Act::kDresFull, "dres_full", {N, d.C}, act);
    add(Act::kDlnLocal, "dln_local", {Ns, d.C}, act);
  }
  add(Act::kDatt, "datt", {N, d.Hl * d.HD}, act);
  add(Act::kDq, "dq", {B, T, d.Hl, d.HD}, act);
  add(Act::kDk, "dk", {B, T, d.KVl, d.HD}, act);
  add(Act::kDv, "dv", {B, T, d.KVl, d.HD}, act);
  add(Act::kDh, "dh", {N, d.FFl}, act);
  add(Act::kDgate, "dgate", {N, d.FFl}, act);
  add(Act::kDup, "dup", {N, d.FFl}, act);
  return v;
}

}  // namespace ltrain
