// ltrain generate --checkpoint DIR --prompt TEXT [--max-tokens N --temperature T --top-p P --seed S]
// Sampling recomputes the whole context for each new token (no KV cache): simple and exact, and
// fast enough for the small models this command is for.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "cli/commands.h"
#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/args.h"
#include "ltrain/backends/factory.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/tokenizer.h"
#include "ltrain/model/llama.h"

namespace ltrain {

namespace {

// Samples from softmax(logits / temperature) restricted to the smallest set of tokens whose
// probability reaches top_p. temperature 0 is greedy.
int sample(const std::vector<float>& logits, double temperature, double top_p, std::mt19937_64& rng) {
  const int V = int(logits.size());
  if (temperature <= 0) return int(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(V);
  double sum = 0;
  for (int i = 0; i < V; ++i) sum += p[i] = std::exp((logits[i] - m) / temperature);
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  double cum = 0;
  int keep = 0;
  while (keep < V && (keep == 0 || cum < top_p * sum)) cum += p[order[keep++]];
  std::uniform_real_distribution<double> u(0.0, cum);
  double r = u(rng);
  for (int i = 0; i < keep; ++i) {
    r -= p[order[i]];
    if (r <= 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  ArgParser args("generate");
  args.add_flag("checkpoint", "checkpoint directory, or a run directory (its latest checkpoint)");
  args.add_flag("prompt", "text to continue");
  args.add_flag("max-tokens", "tokens to generate (default 200)");
  args.add_flag("temperature", "sampling temperature; 0 = greedy (default 0.8)");
  args.add_flag("top-p", "nucleus sampling threshold (default 0.9)");
  args.add_flag("seed", "sampling seed (default 0)");
  args.add_flag("tokenizer", "tokenizer model (default: the checkpoint's copy)");
  args.add_flag("ignore-eos", "keep generating after the end-of-document token", true);
  args.add_flag("device", "auto, cpu or cuda (default: auto)");
  args.parse(argc, argv);
  if (args.help_requested()) return std::printf("%s", args.usage().c_str()), 0;
  if (!args.positionals().empty())
    user_error("ltrain generate: unexpected argument '", args.positionals()[0], "'");

  CheckpointInfo ck = open_checkpoint(args.get("checkpoint"));
  const std::string prompt = args.get("prompt");
  const int max_tokens = int(args.get_int("max-tokens", 200));
  const double temperature = args.get_double("temperature", 0.8);
  const double top_p = args.get_double("top-p", 0.9);
  if (max_tokens < 1) user_error("ltrain generate: --max-tokens must be >= 1, got ", max_tokens);
  if (temperature < 0) user_error("ltrain generate: --temperature must be >= 0, got ", temperature);
  if (!(top_p > 0 && top_p <= 1)) user_error("ltrain generate: --top-p must be in (0, 1], got ", top_p);
  std::string tok_path = args.get("tokenizer", path_join(ck.dir, "tokenizer.model"));
  Tokenizer tok = Tokenizer::load(tok_path);
  if (tok.vocab_size() > ck.config.model.vocab_size)
    user_error("tokenizer '", tok_path, "' has ", tok.vocab_size(), " tokens but the model only ",
               ck.config.model.vocab_size);

  const int ctx = ck.config.model.max_position_embeddings;
  auto backend = make_backend(args.get("device", "auto"));
  LlamaModel model(ck.config.model, *backend, 1, ctx);
  load_checkpoint_weights(ck, model.parameters());

  std::vector<int> ids = tok.encode(prompt, true, false);
  std::mt19937_64 rng(uint64_t(args.get_int("seed", 0)));
  std::vector<int> generated;
  std::string printed;
  std::fputs(prompt.c_str(), stdout);
  for (int i = 0; i < max_tokens; ++i) {
    // Keep the most recent `ctx` tokens.
    const size_t start = ids.size() > size_t(ctx) ? ids.size() - ctx : 0;
    std::vector<int32_t> window(ids.begin() + start, ids.end());
    std::vector<float> logits = model.forward_last_logits(window.data(), int(window.size()));
    logits.resize(tok.vocab_size());  // ids past the tokenizer's vocabulary cannot be decoded
    const int next = sample(logits, temperature, top_p, rng);
    if (next == tok.eos_id() && !args.get_bool("ignore-eos")) break;
    ids.push_back(next);
    generated.push_back(next);
    // Decode the whole continuation and print what is new: pieces can merge across tokens.
    std::string text = tok.decode(generated);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::fputs(text.c_str() + printed.size(), stdout);
      std::fflush(stdout);
      printed = text;
    }
  }
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace ltrain
