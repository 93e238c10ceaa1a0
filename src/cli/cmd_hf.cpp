// ltrain export-hf --checkpoint DIR --out HFDIR [--dtype bf16|fp32] [--max-shard-size BYTES] [--force]
// ltrain import-hf --hf HFDIR --out RUN_DIR [--force]
// See docs/huggingface.md; the work is in src/checkpoint/hf.cpp.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/commands.h"
#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/checkpoint/hf.h"
#include "ltrain/core/args.h"
#include "ltrain/core/check.h"
#include "ltrain/model/layout.h"

namespace ltrain {

namespace {

// "5e9", "5000000000", "5GB", "500MB", "64KB", "2GiB": bytes.
uint64_t parse_size(const std::string& flag, const std::string& s) {
  const char* p = s.c_str();
  char* end = nullptr;
  const double v = std::strtod(p, &end);
  std::string unit = end ? std::string(end) : "";
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "KB" || unit == "kB" || unit == "K") mult = 1e3;
  else if (unit == "MB" || unit == "M") mult = 1e6;
  else if (unit == "GB" || unit == "G") mult = 1e9;
  else if (unit == "KiB") mult = 1024.0;
  else if (unit == "MiB") mult = 1024.0 * 1024;
  else if (unit == "GiB") mult = 1024.0 * 1024 * 1024;
  else end = nullptr;
  if (end == p || !end || !std::isfinite(v) || v * mult < 1 || v * mult > 1e18)
    user_error("--", flag, " '", s, "' is not a positive size in bytes (e.g. 5e9, 5GB, 500MB)");
  return uint64_t(v * mult);
}

}  // namespace

int cmd_export_hf(int argc, char** argv) {
  ArgParser args("export-hf");
  args.add_flag("checkpoint", "checkpoint directory, or a run directory (its latest checkpoint)");
  args.add_flag("out", "output directory (Hugging Face LlamaForCausalLM layout)");
  args.add_flag("dtype", "dtype of the exported weights: bf16 (default; round to nearest even) or fp32");
  args.add_flag("max-shard-size", "largest safetensors file in tensor bytes (default 5e9; also 5GB, 500MB)");
  args.add_flag("force", "replace an existing non-empty output directory", true);
  args.parse(argc, argv);
  if (args.help_requested()) return std::printf("%s", args.usage().c_str()), 0;
  if (!args.positionals().empty()) user_error("ltrain export-hf: unexpected argument '", args.positionals()[0], "'");
  HfExportOptions opt;
  opt.dtype = args.get("dtype", "bf16");
  if (args.has("max-shard-size")) opt.max_shard_bytes = parse_size("max-shard-size", args.get("max-shard-size"));
  opt.force = args.get_bool("force");
  const std::string ckpt = args.get("checkpoint"), out = args.get("out");
  const HfExportSummary s = export_hf(ckpt, out, opt);
  std::printf("exported %s to %s: %.3fM parameters, %s, %d safetensors file%s (%.1f MB)\n", ckpt.c_str(),
              s.out_dir.c_str(), s.num_params / 1e6, opt.dtype.c_str(), s.shards, s.shards == 1 ? "" : "s",
              s.tensor_bytes / 1e6);
  for (const auto& f : s.files) std::printf("  %s\n", f.c_str());
  return 0;
}

int cmd_import_hf(int argc, char** argv) {
  ArgParser args("import-hf");
  args.add_flag("hf", "Hugging Face Llama directory (config.json, model.safetensors or its index and shards)");
  args.add_flag("out", "run directory to create; the checkpoint is OUT/checkpoints/step_00000000");
  args.add_flag("force", "replace an existing non-empty run directory", true);
  args.parse(argc, argv);
  if (args.help_requested()) return std::printf("%s", args.usage().c_str()), 0;
  if (!args.positionals().empty()) user_error("ltrain import-hf: unexpected argument '", args.positionals()[0], "'");
  const std::string hf = args.get("hf"), out = args.get("out");
  const std::string dir = import_hf(hf, out, args.get_bool("force"));
  const CheckpointInfo ck = open_checkpoint(dir);
  const auto& m = ck.config.model;
  std::printf("imported %s to %s: %.3fM parameters (hidden %d, layers %d, heads %d/%d kv, ffn %d, vocab %d)%s\n",
              hf.c_str(), dir.c_str(), llama_num_params(m) / 1e6, m.hidden_size, m.num_hidden_layers,
              m.num_attention_heads, m.kv_heads(), m.ffn_dim(), m.vocab_size,
              ck.meta.contains("tokenizer") ? ", with tokenizer.model" : ", no tokenizer.model");
  std::printf("continue pretraining with: ltrain train --config X.yaml train.init_from=%s\n", out.c_str());
  return 0;
}

}  // namespace ltrain
