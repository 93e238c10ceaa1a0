// Tokenizer loading and training on top of SentencePiece. SentencePiece reports failures as
// util::Status; a failure caused by the user's files or flags becomes a one-line UserError here.
#include "ltrain/data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdio>
#include <regex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/data/prepare.h"

namespace ltrain {

Tokenizer Tokenizer::load(const std::string& model_path) {
  if (!file_exists(model_path))
    user_error("tokenizer not found: '", model_path, "' (train one with `ltrain tokenizer train`)");
  if (is_directory(model_path))
    user_error("tokenizer '", model_path, "' is a directory; pass the .model file");
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  // Load from bytes we read ourselves: SentencePiece's own file errors are less specific.
  std::string bytes = read_text_file(model_path);
  auto status = sp->LoadFromSerializedProto(bytes);
  if (!status.ok() || sp->GetPieceSize() <= 0)
    user_error("'", model_path, "' is not a SentencePiece tokenizer model (",
               status.ok() ? "it has no pieces" : "it does not parse as one",
               "); pass the .model file written by `ltrain tokenizer train`");
  Tokenizer t;
  t.vocab_size_ = sp->GetPieceSize();
  t.bos_id_ = sp->bos_id();
  t.eos_id_ = sp->eos_id();
  t.path_ = model_path;
  if (t.bos_id_ < 0 || t.eos_id_ < 0)
    user_error("tokenizer '", model_path, "' has no BOS/EOS pieces; ltrain needs both (retrain it with `ltrain tokenizer train`)");
  t.sp_ = std::move(sp);
  return t;
}

std::vector<int> Tokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  std::vector<int> pieces;
  auto status = sp_->Encode(text, &pieces);
  LTRAIN_CHECK(status.ok(), "SentencePiece encode failed: " << status.ToString());
  std::vector<int> ids;
  ids.reserve(pieces.size() + 2);
  if (add_bos) ids.push_back(bos_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (add_eos) ids.push_back(eos_id_);
  return ids;
}

std::vector<int> Tokenizer::encode_continuation(const std::string& text) const {
  // Newlines are never part of a learned piece (training is on lines; '\n' is byte fallback), so
  // the pieces after a leading "\n" are those of `text` with no dummy prefix in front: encode
  // "\n" + text and drop the pieces of "\n" alone ("▁" and <0x0A>).
  const std::vector<int> prefix = encode("\n", false, false);
  std::vector<int> ids = encode("\n" + text, false, false);
  LTRAIN_CHECK(ids.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), ids.begin()),
               "tokenizer '" << path_ << "' merges a newline into a piece; it cannot encode a continuation");
  ids.erase(ids.begin(), ids.begin() + prefix.size());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids)
    if (id < 0 || id >= vocab_size_)
      user_error("cannot decode token id ", id, ": tokenizer '", path_, "' has ids 0..", vocab_size_ - 1);
  std::string text;
  auto status = sp_->Decode(ids, &text);
  LTRAIN_CHECK(status.ok(), "SentencePiece decode failed: " << status.ToString());
  return text;
}

std::string Tokenizer::id_to_piece(int id) const {
  LTRAIN_CHECK(id >= 0 && id < vocab_size_, "id " << id);
  return sp_->IdToPiece(id);
}

// ---- training ---------------------------------------------------------------------------------

namespace {

// Feeds SentencePiece one line at a time: it trains on lines, so a newline can never be part of a
// learned piece (it is encoded by byte fallback as <0x0A>). Errors in our inputs cannot be thrown
// through SentencePiece, so they are kept here and rethrown after Train() returns.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& inputs)
      : reader_(inputs, DocBoundary::kLine) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override {
    if (error_.empty()) return sentencepiece::util::Status();
    return sentencepiece::util::Status(sentencepiece::util::StatusCode::kInvalidArgument, error_);
  }
  void Next() override {
    try {
      while (true) {
        if (pos_ < doc_.size()) {
          size_t nl = doc_.find('\n', pos_);
          if (nl == std::string::npos) nl = doc_.size();
          line_.assign(doc_, pos_, nl - pos_);
          pos_ = nl + 1;
          if (!is_blank(line_)) {
            ++lines_;
            return;
          }
          continue;
        }
        if (!reader_.next(&doc_)) {
          done_ = true;
          return;
        }
        pos_ = 0;
      }
    } catch (const UserError& e) {
      error_ = e.what();
      done_ = true;
    }
  }
  const std::string& error() const { return error_; }
  uint64_t lines() const { return lines_; }

 private:
  DocumentReader reader_;
  std::string doc_, line_, error_;
  size_t pos_ = 0;
  uint64_t lines_ = 0;
  bool done_ = false;
};

// SentencePiece messages look like "./src/x.cc(580) [expr] What went wrong."; keep the last part.
std::string sentencepiece_reason(const sentencepiece::util::Status& status) {
  std::string msg = status.message();
  size_t bracket = msg.rfind("] ");
  if (bracket != std::string::npos) msg = msg.substr(bracket + 2);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return msg;
}

}  // namespace

void train_tokenizer(const std::vector<std::string>& inputs, int vocab_size,
                     const std::string& out_prefix) {
  if (inputs.empty()) user_error("ltrain tokenizer train: no input files (pass --input FILE...)");
  if (vocab_size < kMinVocabSize)
    user_error("--vocab-size ", vocab_size, " is too small: byte fallback needs 256 byte pieces plus "
               "<unk>, <s>, </s>, so the minimum is ", kMinVocabSize,
               " (and more for the corpus's characters)");
  if (out_prefix.empty() || out_prefix.back() == '/')
    user_error("--out '", out_prefix, "' must be a file prefix such as 'data/tok' (writes data/tok.model)");
  // First pass: check that there is text at all, so an empty corpus gets our message rather than
  // SentencePiece's, and missing/malformed files are reported before any training time is spent.
  {
    DocumentReader probe(inputs, DocBoundary::kLine);
    std::string doc;
    if (!probe.next(&doc)) {
      std::string list;
      for (const auto& f : inputs) list += (list.empty() ? "'" : ", '") + f + "'";
      user_error("empty corpus: no text in ", list, " (the tokenizer needs training text)");
    }
  }

  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // The LLaMA recipe. identity normalization and remove_extra_whitespaces=false keep the text
  // byte-exact; add_dummy_prefix makes a word at the start of a document use the same "▁word"
  // piece as mid-text (decode strips that one space again). allow_whitespace_only_pieces lets
  // runs of spaces (indentation) become pieces.
  std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"split_digits", "true"},
      {"byte_fallback", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"character_coverage", "0.99995"},
      {"max_sentence_length", "16384"},
      // Beyond this many lines SentencePiece trains on a random sample; the vocabulary barely
      // changes and memory stays bounded for large corpora.
      {"input_sentence_size", "10000000"},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(threads)},
      {"minloglevel", "2"},  // errors come back as a Status; warnings would only add noise
  };
  LineIterator lines(inputs);
  std::string model;
  auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  if (!lines.error().empty()) throw UserError(lines.error());
  if (!status.ok()) {
    std::string reason = sentencepiece_reason(status);
    // "Vocabulary size is smaller than required_chars. 300 vs 320. ..."
    std::smatch m;
    if (std::regex_search(reason, m, std::regex("smaller than required_chars\\. (\\d+) vs (\\d+)")))
      user_error("--vocab-size ", vocab_size, " is too small for this corpus: byte fallback plus its "
                 "characters need at least ", m[2].str());
    // "Vocabulary size too high (5000). Please set it to a value <= 4000."
    if (std::regex_search(reason, m, std::regex("Vocabulary size too high.*<= (\\d+)")))
      user_error("--vocab-size ", vocab_size, " is too large for this corpus: use at most ", m[1].str(),
                 ", or train on more text");
    user_error("tokenizer training failed: ", reason);
  }

  std::string dir = dirname_of(out_prefix);
  make_dirs(dir);
  write_file_atomic(out_prefix + ".model", model.data(), model.size());
  // The .vocab file is for people reading the vocabulary; nothing in ltrain reads it.
  sentencepiece::SentencePieceProcessor sp;
  status = sp.LoadFromSerializedProto(model);
  LTRAIN_CHECK(status.ok(), "reloading the trained model failed: " << status.ToString());
  std::ostringstream vocab;
  for (int i = 0; i < sp.GetPieceSize(); ++i) vocab << sp.IdToPiece(i) << '\t' << sp.GetScore(i) << '\n';
  write_text_file_atomic(out_prefix + ".vocab", vocab.str());
}

}  // namespace ltrain
