// ltrain eval --checkpoint DIR --data DIR [--batches N]
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/args.h"
#include "ltrain/core/check.h"
#include "ltrain/backends/factory.h"
#include "ltrain/data/dataset.h"
#include "ltrain/model/llama.h"
#include "ltrain/train/trainer.h"

namespace ltrain {

int cmd_eval(int argc, char** argv) {
  ArgParser args("eval");
  args.add_flag("checkpoint", "checkpoint directory, or a run directory (its latest checkpoint)");
  args.add_flag("data", "data as data.path takes it: an `ltrain prepare` directory, a Megatron prefix or llm.c shards (its val split is used)");
  args.add_flag("batches", "micro-batches to evaluate (default: the whole val split)");
  args.add_flag("device", "auto, cpu or cuda (default: auto)");
  args.parse(argc, argv);
  if (args.help_requested()) return std::printf("%s", args.usage().c_str()), 0;
  if (!args.positionals().empty())
    user_error("ltrain eval: unexpected argument '", args.positionals()[0], "'");
  const long long batches = args.get_int("batches", 0);
  if (batches < 0) user_error("ltrain eval: --batches ", batches, " must be >= 0 (0: the whole val split)");

  CheckpointInfo ck = open_checkpoint(args.get("checkpoint"));
  const DatasetMeta meta = load_dataset_meta(args.get("data"));
  check_data_matches_model(meta, ck.config.model);
  const int B = ck.config.train.micro_batch_size, T = ck.config.train.seq_len;
  DataLoader val(meta, Split::kVal, B, T, false, 0);
  auto backend = make_backend(args.get("device", "auto"));
  LlamaModel model(ck.config.model, *backend, B, T);
  load_checkpoint_weights(ck, model.parameters());
  const EvalSums r = evaluate(model, val, uint64_t(batches) * uint64_t(B));
  const double loss = r.counted > 0 ? r.loss_sum / r.counted : NAN;
  std::printf("checkpoint %s (step %d) | data %s | val_loss %.4f | val_ppl %.3f | %s\n", ck.dir.c_str(), ck.step,
              meta.dir.c_str(), loss, std::exp(loss), describe_eval(r.windows, r.batches, r.short_split, 1, B).c_str());
  return 0;
}

}  // namespace ltrain
