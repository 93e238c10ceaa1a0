// The tokenizer: a SentencePiece BPE model set up the way LLaMA's was (byte fallback, digits split
// into single pieces, no normalization), so that decode(encode(text)) == text for any UTF-8 text,
// newlines and runs of spaces included. Ids: 0 = <unk>, 1 = <s> (BOS), 2 = </s> (EOS), no pad.
// Characters the model never learned (and '\n', which SentencePiece never sees in training because
// it trains on lines) are encoded as their UTF-8 bytes, one <0xXX> piece per byte.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace ltrain {

class Tokenizer {
 public:
  // UserError when the file is missing or is not a SentencePiece model.
  static Tokenizer load(const std::string& model_path);

  // Thread-safe: any number of threads may encode/decode with one Tokenizer at once.
  std::vector<int> encode(const std::string& text, bool add_bos, bool add_eos) const;
  // `text` as it continues a document after other text: without the leading "▁" that encode()
  // adds at the start of a document (add_dummy_prefix), so decode(encode(a) + encode_continuation(b))
  // == a + b. Thread-safe. (SFT uses it for the separator and the answer.)
  std::vector<int> encode_continuation(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;  // BOS/EOS/unk ids decode to nothing
  std::string id_to_piece(int id) const;

  int vocab_size() const { return vocab_size_; }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  const std::string& path() const { return path_; }

 private:
  Tokenizer() = default;
  // Shared and immutable after load, so copies are cheap and encode() needs no lock.
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  int vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1;
};

// Smallest vocabulary byte fallback allows: 3 special pieces + 256 byte pieces + at least one
// learned piece. The corpus's own characters raise the real minimum; training reports it.
constexpr int kMinVocabSize = 260;

// Trains a BPE tokenizer on `inputs` and writes OUT_PREFIX.model and OUT_PREFIX.vocab (one
// "piece<TAB>score" line per id). Files ending in .jsonl contribute the "text" field of each line;
// other files are read as plain UTF-8 text. UserError for a missing or malformed input, a corpus
// with no text, or a vocabulary too small or too large for the corpus.
void train_tokenizer(const std::vector<std::string>& inputs, int vocab_size,
                     const std::string& out_prefix);

}  // namespace ltrain
