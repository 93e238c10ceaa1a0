// FLOP accounting of the LLaMA model (../shared/REFERENCE.md), and the dense bf16 peaks of the GPUs
// MFU is reported against. Used by `ltrain bench` (tokens/s -> TFLOP/s and MFU) and
// `ltrain estimate` (MFU -> tokens/s), which is why it lives with the model, not in bench/.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "ltrain/config/config.h"

namespace ltrain {

// FLOPs per trained token (forward + backward, matrix products counted once, recomputation not
// counted), for sequences of seq_len tokens:
//   causal: 6 * [L*(C*(H + 2KV)*HD + H*HD*C + 3*C*FF) + C*V] + 6 * L*H*HD*T
//   PaLM:   the same with 12 * L*H*HD*T (attention scores over the whole square)
// The bracket is llama_num_matmul_params() in model/layout.h (the lm_head counts even when tied;
// the input embedding is a lookup and does not).
double flops_per_token(const ModelConfig& m, int seq_len);
double flops_per_token_palm(const ModelConfig& m, int seq_len);
// Its terms (flops_per_token = L x layer + head): one layer's matrix products and causal attention,
// and the output layer's product. Pipeline stages are balanced with them.
double layer_flops_per_token(const ModelConfig& m, int seq_len);
double head_flops_per_token(const ModelConfig& m);

// Causal attention's forward FLOPs for (B, T, H, HD): S = QK^T and O = PV over the kept half of
// the square, 4 B H HD T(T+1)/2. The backward is counted as 2.5 x this (FlashAttention-2's
// convention: five products instead of two).
double attention_forward_flops(double B, double T, double H, double HD);

// ---- peak table ----------------------------------------------------------------------------------
struct PeakEntry {
  const char* match;  // substring of the device name (CUDA's cudaDeviceProp::name)
  double flops;       // dense bf16 tensor-core peak, FLOP/s (never the "with sparsity" figure)
  const char* note;
};
// First match wins, so more specific names come first (H100 PCIe before H100).
const std::vector<PeakEntry>& peak_table();
// The peak for a device name, or nullopt when no entry matches. `matched` receives the entry's
// match string.
std::optional<double> lookup_peak_flops(const std::string& device_name, std::string* matched = nullptr);

}  // namespace ltrain
