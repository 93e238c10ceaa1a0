// ltrain ckpt info DIR     what a checkpoint holds
// ltrain ckpt verify DIR   checks every file's size and CRC-32, and that the shard files cover
//                          every tensor exactly once (exit 2 naming the bad file)
// DIR is a checkpoint directory or a run directory (its latest checkpoint).
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "cli/commands.h"
#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/model/layout.h"

namespace ltrain {

namespace {

void print_info(const CheckpointInfo& ck) {
  const auto& m = ck.config.model;
  std::printf("checkpoint   %s\n", ck.dir.c_str());
  std::printf("format       %s v%d\n", ck.meta.value("format", "?").c_str(), ck.meta.value("version", 0));
  std::printf("step         %d (%lld tokens)\n", ck.step, (long long)ck.meta.value("tokens", int64_t(0)));
  std::printf("model        %.3fB parameters: hidden %d, layers %d, heads %d/%d kv, ffn %d, vocab %d\n",
              llama_num_params(m) / 1e9, m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.kv_heads(),
              m.ffn_dim(), m.vocab_size);
  if (ck.meta.contains("layout")) {
    const auto& l = ck.meta["layout"];
    std::printf("layout       data %d x pipeline %d x tensor %d, ZeRO-1 %s (saved by that layout; any layout resumes it)\n",
                l.value("data", 1), l.value("pipeline", 1), l.value("tensor", 1), l.value("zero", 0) ? "on" : "off");
    if (l.contains("writer_rule")) std::printf("writers      %s: ranks %s\n", l["writer_rule"].get<std::string>().c_str(),
                                               l.value("writers", nlohmann::json::array()).dump().c_str());
  }
  if (ck.meta.contains("data")) std::printf("data         %s\n", ck.meta["data"].dump().c_str());
  std::printf("tensors      %zu weights%s\n", ck.meta["tensors"].size(),
              ck.meta.contains("optimizer") ? ", AdamW moments" : "");
  // Who wrote each shard file (version 2: a weights and a moments file per writing rank).
  std::map<std::string, std::string> writer;
  if (ck.meta.contains("shards") && ck.meta["shards"].is_array()) {
    const auto& sh = ck.meta["shards"];
    std::set<int> ranks;
    for (const auto& s : sh) {
      ranks.insert(s.at("rank").get<int>());
      writer[s.at("file").get<std::string>()] =
          strfmt("  rank %d (data %d, stage %d, tensor %d), %zu pieces", s.at("rank").get<int>(),
                 s.at("data_rank").get<int>(), s.value("pipeline_rank", 0), s.at("tensor_rank").get<int>(),
                 s.at("pieces").size());
    }
    std::printf("shards       %zu files from %zu writing rank(s)\n", sh.size(), ranks.size());
  }
  if (ck.meta.contains("files"))
    for (const auto& [name, f] : ck.meta["files"].items())
      std::printf("file         %-18s %12llu bytes  crc32 %08x%s\n", name.c_str(),
                  (unsigned long long)f.at("bytes").get<uint64_t>(), f.at("crc32").get<uint32_t>(),
                  writer.count(name) ? writer[name].c_str() : "");
}

}  // namespace

int cmd_ckpt(int argc, char** argv) {
  const std::string action = argc > 0 ? argv[0] : "";
  if ((action != "info" && action != "verify") || argc != 2)
    user_error("usage: ltrain ckpt info DIR | ltrain ckpt verify DIR (a checkpoint or run directory)");
  CheckpointInfo ck = open_checkpoint(argv[1]);
  if (action == "verify") {
    verify_checkpoint(ck);  // also checks that the shard files' slices tile every tensor
    const size_t tensors =
        ck.meta["tensors"].size() + (ck.meta.contains("optimizer") ? ck.meta["optimizer"].size() : 0);
    std::printf("%s: OK (%zu files verified; %zu tensors, each covered exactly once)\n", ck.dir.c_str(),
                ck.meta["files"].size(), tensors);
    return 0;
  }
  try {
    print_info(ck);
  } catch (const nlohmann::json::exception& e) {
    user_error(path_join(ck.dir, "meta.json"), ": malformed checkpoint manifest (", e.what(), ")");
  }
  return 0;
}

}  // namespace ltrain
