// ltrain config show --config FILE [key=value ...]   the resolved, validated config
// ltrain config reference                          every key, its default and meaning (Markdown)
#include <cstdio>

#include "cli/commands.h"
#include "ltrain/config/config.h"
#include "ltrain/core/args.h"
#include "ltrain/core/check.h"
#include "ltrain/model/layout.h"

namespace ltrain {

int cmd_config(int argc, char** argv) {
  const std::string action = argc > 0 ? argv[0] : "";
  if (action == "reference") {
    std::printf("%s", config_reference_markdown().c_str());
    return 0;
  }
  if (action != "show")
    user_error("ltrain config: expected 'show --config FILE [key=value ...]' or 'reference', got '", action, "'");
  ArgParser args("config show");
  args.add_flag("config", "YAML or JSON run config");
  args.parse(argc - 1, argv + 1);
  if (args.help_requested()) return std::printf("%s", args.usage().c_str()), 0;
  Config cfg = load_config(args.get("config"), args.positionals());
  validate_config(cfg);
  std::printf("%s", config_to_text(cfg).c_str());
  std::printf("  # derived: %.3fB parameters, intermediate_size %d, head_dim %d, %d micro-batches per step\n",
              llama_num_params(cfg.model) / 1e9, cfg.model.ffn_dim(), cfg.model.head_dim(), cfg.grad_accum_steps());
  return 0;
}

}  // namespace ltrain
