// `ltrain prepare --tokenizer X.model --input FILE... --out DIR [options]`
// `ltrain prepare --sft --tokenizer X.model --input FILE.jsonl... --out DIR [options]`: prompt/answer
// examples with a loss mask per token (docs/data-format.md, "SFT datasets").
#include <cmath>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "ltrain/core/args.h"
#include "ltrain/core/check.h"
#include "ltrain/data/prepare.h"

namespace ltrain {

int cmd_prepare(int argc, char** argv) {
  ArgParser args("prepare");
  args.add_flag("tokenizer", "tokenizer model (from `ltrain tokenizer train`)");
  args.add_flag("input", "text files (documents split by --doc-boundary) or .jsonl (\"text\" field)", false, true);
  args.add_flag("out", "output dataset directory");
  args.add_flag("val-fraction", "fraction of documents held out for validation (default 0.01)");
  args.add_flag("shard-tokens", "tokens per shard file (default 100000000)");
  args.add_flag("format", "output format: ltrain (default), megatron (OUT/train.bin+.idx, OUT/val.bin+.idx), "
                "llmc (OUT/tokens_train_000000.bin..., OUT/tokens_val_000000.bin...)");
  args.add_flag("doc-boundary", "plain-text documents: paragraph (blank lines, default), line, file");
  args.add_flag("force", "overwrite an existing prepared dataset in --out", true);
  args.add_flag("quiet", "no progress bar", true);
  args.add_flag("sft", "supervised fine-tuning data: .jsonl lines with \"prompt\" and \"answer\"; the loss is "
                "taken on answer tokens only (writes a .mask file next to each shard)", true);
  args.add_flag("sft-separator", "with --sft: text between prompt and answer, not in the loss (default: two "
                "newlines; pass real newlines, e.g. $'\\n\\n', no escapes are interpreted)");
  args.parse(argc, argv);
  if (args.help_requested()) {
    std::printf("%s", args.usage().c_str());
    return 0;
  }
  if (!args.positionals().empty())
    user_error("ltrain prepare: unexpected argument '", args.positionals()[0], "' (inputs go after --input)");

  PrepareOptions opt;
  opt.tokenizer_path = args.get("tokenizer");
  opt.inputs = args.get_list("input");
  if (opt.inputs.empty()) user_error("ltrain prepare: missing required flag '--input' (text or .jsonl files)");
  opt.out_dir = args.get("out");
  opt.val_fraction = args.get_double("val-fraction", 0.01);
  long long shard_tokens = args.get_int("shard-tokens", 100'000'000);
  if (shard_tokens <= 0) user_error("--shard-tokens must be positive, got ", shard_tokens);
  opt.shard_tokens = static_cast<uint64_t>(shard_tokens);
  opt.boundary = parse_doc_boundary(args.get("doc-boundary", "paragraph"));
  opt.format = parse_data_format(args.get("format", "ltrain"));
  opt.force = args.get_bool("force");
  opt.progress = !args.get_bool("quiet");
  opt.sft = args.get_bool("sft");
  if (args.has("sft-separator")) {
    if (!opt.sft) user_error("ltrain prepare: --sft-separator needs --sft");
    opt.sft_separator = args.get("sft-separator");
  }
  if (opt.sft && args.has("doc-boundary"))
    user_error("ltrain prepare: --doc-boundary does not apply to --sft (every .jsonl line is one example)");

  PrepareSummary s = prepare_dataset(opt);
  double total = static_cast<double>(s.train_tokens + s.val_tokens);
  std::printf("prepared %s: %llu documents (%.1f MB) in %.1fs, %.3g tokens/s\n", opt.out_dir.c_str(),
              static_cast<unsigned long long>(s.docs), s.bytes / 1e6, s.seconds,
              s.seconds > 0 ? total / s.seconds : 0.0);
  std::printf("  train: %llu docs, %llu tokens, %d shard(s)\n", static_cast<unsigned long long>(s.train_docs),
              static_cast<unsigned long long>(s.train_tokens), s.train_shards);
  std::printf("  val:   %llu docs, %llu tokens, %d shard(s)\n", static_cast<unsigned long long>(s.val_docs),
              static_cast<unsigned long long>(s.val_tokens), s.val_shards);
  if (opt.sft)
    std::printf("  sft: loss on %llu of %llu train tokens (answers + EOS), %llu of %llu val tokens\n",
                static_cast<unsigned long long>(s.train_loss_tokens), static_cast<unsigned long long>(s.train_tokens),
                static_cast<unsigned long long>(s.val_loss_tokens), static_cast<unsigned long long>(s.val_tokens));
  if (s.val_docs == 0 && opt.val_fraction > 0)
    std::printf("  note: no validation documents (only %llu documents; --val-fraction %g needs at least %.0f)\n",
                static_cast<unsigned long long>(s.docs), opt.val_fraction, std::ceil(1.0 / opt.val_fraction));
  if (opt.format != DataFormat::kLtrain) std::printf("  format: %s\n", data_format_name(opt.format));
  if (opt.format == DataFormat::kMegatron)
    std::printf("  train with data.path=%s/train (the val split is read from %s/val)\n", opt.out_dir.c_str(),
                opt.out_dir.c_str());
  return 0;
}

}  // namespace ltrain
