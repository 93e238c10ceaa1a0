// ltrain: one binary, one subcommand per task.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "ltrain/core/check.h"
#include "ltrain/parallel/communicator.h"

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
    "  ckpt info|verify  what a checkpoint holds / check its checksums\n"
    "  export-hf         a checkpoint as a Hugging Face LlamaForCausalLM directory (safetensors)\n"
    "  import-hf         a Hugging Face Llama directory as an ltrain checkpoint\n"
    "  estimate          days, GPU-hours, energy and CO2 of a run; tokens/s/GPU projected on a cluster\n"
    "  bench             tokens/s, step time, memory and MFU of real training steps on synthetic tokens\n"
    "\n"
    "`ltrain <command> --help` lists a command's flags.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  // Under mpirun/srun every rank runs this; MPI is initialized only when a launcher started us.
  std::unique_ptr<ltrain::ParallelContext> context = ltrain::ParallelContext::init(&argc, &argv);
  ltrain::ParallelContext& par = *context;
  int sub_argc = argc - 2;
  char** sub_argv = argv + 2;
  // A failure on any rank ends every rank (MPI_Abort), so none is left waiting in a collective.
  auto fail = [&](int code, const char* what) {
    std::fflush(stdout);
    if (par.world_size() > 1)
      std::fprintf(stderr, "ltrain: error: [rank %d/%d] %s\n", par.world_rank(), par.world_size(), what);
    else
      std::fprintf(stderr, "ltrain: error: %s\n", what);
    if (par.world_size() > 1) par.abort(code);
    par.finalize();
    return code;
  };
  int rc = 2;
  try {
    if (cmd == "tokenizer") rc = ltrain::cmd_tokenizer(sub_argc, sub_argv);
    else if (cmd == "prepare") rc = ltrain::cmd_prepare(sub_argc, sub_argv);
    else if (cmd == "train") rc = ltrain::cmd_train(sub_argc, sub_argv, par);
    else if (cmd == "eval") rc = ltrain::cmd_eval(sub_argc, sub_argv);
    else if (cmd == "generate") rc = ltrain::cmd_generate(sub_argc, sub_argv);
    else if (cmd == "config") rc = ltrain::cmd_config(sub_argc, sub_argv);
    else if (cmd == "bench") rc = ltrain::cmd_bench(sub_argc, sub_argv, par);
    else if (cmd == "ckpt") rc = ltrain::cmd_ckpt(sub_argc, sub_argv);
    else if (cmd == "export-hf") rc = ltrain::cmd_export_hf(sub_argc, sub_argv);
    else if (cmd == "import-hf") rc = ltrain::cmd_import_hf(sub_argc, sub_argv);
    else if (cmd == "estimate") rc = ltrain::cmd_estimate(sub_argc, sub_argv);
    else
      return fail(2, ("unknown command '" + cmd + "' (commands: tokenizer, prepare, train, eval, generate, config, bench, ckpt, export-hf, import-hf, estimate)").c_str());
  } catch (const ltrain::RunStopped& e) {
    return fail(ltrain::RunStopped::kExitCode, e.what());
  } catch (const ltrain::UserError& e) {
    return fail(2, e.what());
  } catch (const std::exception& e) {
    return fail(1, e.what());
  }
  par.finalize();
  return rc;
}
