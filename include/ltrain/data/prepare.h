// Data preparation: text corpus -> tokenized dataset directory (token shards + meta.json).
//
// Inputs are read as a stream of documents. A .jsonl file holds one document per line in its
// "text" field; any other file is plain UTF-8 text cut into documents by DocBoundary. Documents
// that are empty or whitespace only are skipped everywhere. Each document is stored as
// BOS + tokens + EOS, never split across shards. See docs/data-format.md.
#pragma once
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "ltrain/data/dataset.h"

namespace ltrain {

enum class DocBoundary {
  kParagraph,  // documents are separated by one or more blank (whitespace-only) lines
  kLine,       // every non-blank line is a document
  kFile,       // every file is one document, verbatim
};
DocBoundary parse_doc_boundary(const std::string& name);  // UserError naming --doc-boundary
const char* doc_boundary_name(DocBoundary b);

bool is_blank(const std::string& s);  // empty or only ASCII whitespace

// Streams documents out of a list of files in order. The constructor checks that every file
// exists (UserError naming the first missing one), so a long run never fails late on a typo.
class DocumentReader {
 public:
  DocumentReader(std::vector<std::string> files, DocBoundary boundary);
  ~DocumentReader();
  // Next non-blank document into *doc; false when all files are done. A .jsonl line that is not a
  // JSON object with a string "text" is a UserError naming file:line.
  bool next(std::string* doc);
  uint64_t bytes_read() const { return bytes_done_ + bytes_in_file_; }
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  bool open_next_file();
  bool next_in_file(std::string* doc);
  std::vector<std::string> files_;
  DocBoundary boundary_;
  size_t file_index_ = 0;  // index of the next file to open
  std::unique_ptr<std::ifstream> in_;
  bool jsonl_ = false;
  uint64_t line_no_ = 0, total_bytes_ = 0, bytes_done_ = 0, bytes_in_file_ = 0;
  std::string line_;
};

// Supervised fine-tuning examples (`prepare --sft`): every non-blank line of every input (any
// extension) is a JSON object with string fields "prompt" and "answer"; other fields are ignored.
// The constructor checks that every file exists, as DocumentReader's does.
struct SftExample {
  std::string prompt, answer;
};
class SftReader {
 public:
  explicit SftReader(std::vector<std::string> files);
  ~SftReader();
  // Next example into *ex; false when all files are done. UserError naming file:line for a line
  // that is not a JSON object with string "prompt" and "answer".
  bool next(SftExample* ex);
  uint64_t bytes_read() const { return bytes_done_ + bytes_in_file_; }
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  std::vector<std::string> files_;
  size_t file_index_ = 0;
  std::unique_ptr<std::ifstream> in_;
  uint64_t line_no_ = 0, total_bytes_ = 0, bytes_done_ = 0, bytes_in_file_ = 0;
  std::string line_;
};

// One SFT example's tokens and loss mask (docs/data-format.md, "SFT datasets"):
//   ids  = BOS, encode(prompt), encode_continuation(separator), encode_continuation(answer), EOS
//   mask =  0 ,   0 ...       ,   0 ...                       ,   1 ...                     ,  1
class Tokenizer;
void sft_example_tokens(const Tokenizer& tok, const SftExample& ex, const std::vector<int>& separator_ids,
                        std::vector<int>* ids, std::vector<uint8_t>* mask);

DataFormat parse_data_format(const std::string& name);  // UserError naming --format

struct PrepareOptions {
  DataFormat format = DataFormat::kLtrain;  // what to write (docs/data-format.md, "Other formats")
  std::string tokenizer_path;
  std::vector<std::string> inputs;
  std::string out_dir;
  double val_fraction = 0.01;  // document i goes to val iff floor((i+1)*F) > floor(i*F)
  uint64_t shard_tokens = 100'000'000;  // a shard is closed once it holds at least this many tokens
  DocBoundary boundary = DocBoundary::kParagraph;
  bool force = false;     // overwrite a directory that already holds a prepared dataset
  bool progress = true;   // progress bar on stderr
  bool sft = false;       // inputs are prompt/answer JSONL; write loss masks (ltrain format only)
  std::string sft_separator = "\n\n";  // text between prompt and answer (not in the loss)
};

struct PrepareSummary {
  uint64_t docs = 0, train_docs = 0, val_docs = 0;
  uint64_t train_tokens = 0, val_tokens = 0;
  uint64_t bytes = 0;
  int train_shards = 0, val_shards = 0;
  uint64_t train_loss_tokens = 0, val_loss_tokens = 0;  // sft: tokens with mask 1 (answers + EOS)
  double seconds = 0;
};

// Writes OUT/train_00000.bin..., OUT/val_00000.bin..., OUT/tokenizer.model, and OUT/meta.json last.
// --sft: the inputs are SftReader examples, each stored as one document (sft_example_tokens), and
// every shard X.bin gets its loss mask X.mask; meta.json says "sft": true.
// --format megatron: OUT/train.bin + .idx and OUT/val.bin + .idx (one sequence per document);
// --format llmc: OUT/tokens_train_000000.bin..., OUT/tokens_val_000000.bin... (shards cut by the
// same --shard-tokens rule as ltrain's); both with OUT/tokenizer.model and OUT/ltrain-data.json
// (vocab size, BOS/EOS ids, tokenizer) last. The documents, their split and their order are the
// same for every format, so the loader reads the same windows from each.
// On failure, the files it wrote are removed (and OUT itself when this call created it).
PrepareSummary prepare_dataset(const PrepareOptions& opt);

}  // namespace ltrain
