// `ltrain tokenizer train --input FILE... --vocab-size N --out PREFIX`
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "ltrain/core/args.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/tokenizer.h"

namespace ltrain {

int cmd_tokenizer(int argc, char** argv) {
  std::string action = argc > 0 ? argv[0] : "";
  if (action == "-h" || action == "--help" || action == "help") {
    std::printf("usage: ltrain tokenizer train --input FILE... --vocab-size N --out PREFIX\n");
    return 0;
  }
  if (action != "train")
    user_error("ltrain tokenizer: unknown action '", action, "' (expected: ltrain tokenizer train ...)");
  ArgParser args("tokenizer train");
  args.add_flag("input", "training text: plain text files, or .jsonl with a \"text\" field", false, true);
  args.add_flag("vocab-size", "number of pieces, e.g. 32000 (at least 260)");
  args.add_flag("out", "output prefix: writes PREFIX.model and PREFIX.vocab");
  args.parse(argc - 1, argv + 1);
  if (args.help_requested()) {
    std::printf("%s", args.usage().c_str());
    return 0;
  }
  if (!args.positionals().empty())
    user_error("ltrain tokenizer train: unexpected argument '", args.positionals()[0],
               "' (inputs go after --input)");
  std::vector<std::string> inputs = args.get_list("input");
  if (inputs.empty()) user_error("ltrain tokenizer train: missing required flag '--input' (training text files)");
  long long vocab = args.get_int("vocab-size", -1);
  if (vocab < 0) user_error("ltrain tokenizer train: missing required flag '--vocab-size' (e.g. 32000)");
  if (vocab > (1 << 30)) user_error("--vocab-size ", vocab, " is too large");
  std::string out = args.get("out");

  double t0 = wall_time_seconds();
  train_tokenizer(inputs, static_cast<int>(vocab), out);
  double secs = wall_time_seconds() - t0;
  Tokenizer tok = Tokenizer::load(out + ".model");
  std::printf("tokenizer: %d pieces (BPE, byte fallback), bos=%d eos=%d, trained in %.1fs\n",
              tok.vocab_size(), tok.bos_id(), tok.eos_id(), secs);
  std::printf("wrote %s.model and %s.vocab\n", out.c_str(), out.c_str());
  return 0;
}

}  // namespace ltrain
