// ltrain ckpt info DIR     what a checkpoint holds
// ltrain ckpt verify DIR   checks every file's size and CRC-32 (exit 2 naming the bad file)
// DIR is a checkpoint directory or a run directory (its latest checkpoint).
#include <cstdio>

#include "cli/commands.h"
#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/check.h"

namespace ltrain {

int cmd_ckpt(int argc, char** argv) {
  const std::string action = argc > 0 ? argv[0] : "";
  if ((action != "info" && action != "verify") || argc != 2)
    user_error("usage: ltrain ckpt info DIR | ltrain ckpt verify DIR (a checkpoint or run directory)");
  CheckpointInfo ck = open_checkpoint(argv[1]);
  if (action == "verify") {
    verify_checkpoint(ck);
    std::printf("%s: OK (%zu files verified)\n", ck.dir.c_str(), ck.meta["files"].size());
    return 0;
  }
  const auto& m = ck.config.model;
  std::printf("checkpoint   %s\n", ck.dir.c_str());
  std::printf("format       %s v%d\n", ck.meta.value("format", "?").c_str(), ck.meta.value("version", 0));
  std::printf("step         %d (%lld tokens)\n", ck.step, (long long)ck.meta.value("tokens", int64_t(0)));
  std::printf("model        %.3fB parameters: hidden %d, layers %d, heads %d/%d kv, ffn %d, vocab %d\n",
              m.num_params() / 1e9, m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.kv_heads(),
              m.ffn_dim(), m.vocab_size);
  if (ck.meta.contains("layout")) std::printf("layout       %s\n", ck.meta["layout"].dump().c_str());
  if (ck.meta.contains("data")) std::printf("data         %s\n", ck.meta["data"].dump().c_str());
  std::printf("tensors      %zu weights%s\n", ck.meta["tensors"].size(),
              ck.meta.contains("optimizer") ? ", AdamW moments" : "");
  if (ck.meta.contains("files"))
    for (const auto& [name, f] : ck.meta["files"].items())
      std::printf("file         %-18s %12llu bytes  crc32 %08x\n", name.c_str(),
                  (unsigned long long)f.at("bytes").get<uint64_t>(), f.at("crc32").get<uint32_t>());
  return 0;
}

}  // namespace ltrain
