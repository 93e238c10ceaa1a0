// ltrain: one binary, one subcommand per task.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "ltrain/core/check.h"

namespace {

const char* kUsage =
    "usage: ltrain <command> [flags]\n"
    "\n"
    "commands:\n"
    "  tokenizer train   train a SentencePiece BPE tokenizer (LLaMA settings)\n"
    "  prepare           tokenize text/JSONL into binary token shards with train/val splits\n"
    "  train             train a model from a YAML/JSON config: ltrain train --config FILE [key=value ...]\n"
    "  eval              validation loss and perplexity of a checkpoint\n"
    "  generate          sample a continuation of a prompt from a checkpoint\n"
    "  config            show a resolved config, or the reference of every key\n"
    "\n"
    "`ltrain <command> --help` lists a command's flags.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  int sub_argc = argc - 2;
  char** sub_argv = argv + 2;
  try {
    if (cmd == "tokenizer") return ltrain::cmd_tokenizer(sub_argc, sub_argv);
    if (cmd == "prepare") return ltrain::cmd_prepare(sub_argc, sub_argv);
    if (cmd == "train") return ltrain::cmd_train(sub_argc, sub_argv);
    if (cmd == "eval") return ltrain::cmd_eval(sub_argc, sub_argv);
    if (cmd == "generate") return ltrain::cmd_generate(sub_argc, sub_argv);
    if (cmd == "config") return ltrain::cmd_config(sub_argc, sub_argv);
    std::fprintf(stderr, "ltrain: error: unknown command '%s' (commands: tokenizer, prepare, train, eval, generate, config)\n",
                 cmd.c_str());
    return 2;
  } catch (const ltrain::UserError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "ltrain: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "ltrain: error: %s\n", e.what());
    return 1;
  }
}
