// ltrain train --config FILE [key=value ...]
#include "cli/commands.h"
#include "ltrain/config/config.h"
#include "ltrain/core/args.h"
#include "ltrain/train/trainer.h"

#include <cstdio>

namespace ltrain {

int cmd_train(int argc, char** argv, ParallelContext& par) {
  ArgParser args("train");
  args.add_flag("config", "YAML or JSON run config (see configs/ and docs/config.md)");
  args.add_flag("resume", "auto (the newest valid checkpoint of train.run_dir, if any) or a checkpoint directory");
  args.parse(argc, argv);
  if (args.help_requested()) {
    std::printf("%s  key=value ...           config overrides, e.g. optim.lr=1e-3 train.steps=200\n",
                args.usage().c_str());
    return 0;
  }
  Config cfg = load_config(args.get("config"), args.positionals());
  run_training(cfg, par, args.get("resume", ""));  // validates against the parallel layout first
  return 0;
}

}  // namespace ltrain
