// FLOP formulas and the GPU peak table (include/ltrain/model/flops.h).
#include "ltrain/model/flops.h"

#include "ltrain/model/layout.h"

namespace ltrain {

namespace {

double attention_flops_unit(const ModelConfig& m, int seq_len) {
  // L * H * HD * T: one multiply-add pass of the scores or of the weighted values, per token.
  return double(m.num_hidden_layers) * double(m.num_attention_heads) * double(m.head_dim()) * double(seq_len);
}

}  // namespace

double flops_per_token(const ModelConfig& m, int seq_len) {
  return 6.0 * double(llama_num_matmul_params(m)) + 6.0 * attention_flops_unit(m, seq_len);
}

double flops_per_token_palm(const ModelConfig& m, int seq_len) {
  return 6.0 * double(llama_num_matmul_params(m)) + 12.0 * attention_flops_unit(m, seq_len);
}

double layer_flops_per_token(const ModelConfig& m, int seq_len) {
  const double C = m.hidden_size, HD = m.head_dim(), H = m.num_attention_heads, KV = m.kv_heads(), FF = m.ffn_dim();
  return 6.0 * (C * (H + 2 * KV) * HD + H * HD * C + 3 * C * FF) + 6.0 * H * HD * double(seq_len);
}

double head_flops_per_token(const ModelConfig& m) { return 6.0 * double(m.hidden_size) * double(m.vocab_size); }

double attention_forward_flops(double B, double T, double H, double HD) {
  return 4.0 * B * H * HD * (T * (T + 1) / 2);
}

// ---- peak table ----------------------------------------------------------------------------------

const std::vector<PeakEntry>& peak_table() {
  // Dense bf16 tensor-core peaks from NVIDIA's datasheets (half the "with sparsity" figures).
  static const std::vector<PeakEntry> table = {
      {"H200", 989e12, "H200 SXM (also matches GH200, an H100-class part with the same peak)"},
      {"H100 PCIe", 756e12, "H100 PCIe"},
      {"H100 NVL", 835e12, "H100 NVL"},
      {"H100", 989e12, "H100 SXM"},
      {"H800", 989e12, "H800 SXM"},
      {"A100", 312e12, "A100 (SXM and PCIe, 40 and 80 GB)"},
      {"A800", 312e12, "A800"},
  };
  return table;
}

std::optional<double> lookup_peak_flops(const std::string& device_name, std::string* matched) {
  for (const auto& e : peak_table()) {
    if (device_name.find(e.match) != std::string::npos) {
      if (matched) *matched = e.match;
      return e.flops;
    }
  }
  return std::nullopt;
}

}  // namespace ltrain
