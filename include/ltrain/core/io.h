// File helpers shared by data preparation, checkpoints and logs.
// Everything that writes a user-visible file writes it atomically: to `path.tmp.<pid>` first, then
// rename(2), so an interrupted or failed write never leaves a half-written file under the real name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace ltrain {

// CRC-32 (IEEE 802.3, the zlib polynomial). Pass the previous value to continue a running checksum.
uint32_t crc32(const void* data, size_t size, uint32_t prev = 0);

bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p; UserError naming the path on failure
uint64_t file_size(const std::string& path);  // UserError if missing
std::string read_text_file(const std::string& path);  // UserError naming the file if unreadable
void write_file_atomic(const std::string& path, const void* data, size_t size);
// The same for content written piece by piece: `write` returns false on a failed write.
void write_file_atomic(const std::string& path, const std::function<bool(FILE*)>& write);
void write_text_file_atomic(const std::string& path, const std::string& text);
void remove_tree(const std::string& path);  // rm -rf; no error if missing
// Atomically replaces directory `dst` by `src` (a fully written temporary directory).
void replace_directory(const std::string& src, const std::string& dst);
std::string path_join(const std::string& a, const std::string& b);
std::string dirname_of(const std::string& path);
std::string basename_of(const std::string& path);
std::vector<std::string> list_directory(const std::string& dir);  // sorted file names

// A progress bar on stderr for long work (tokenizing, preparing data, saving). It redraws at most
// a few times a second, and prints plain lines instead when stderr is not a terminal.
class Progress {
 public:
  Progress(std::string label, uint64_t total, std::string unit = "");
  void update(uint64_t done);  // thread-safe
  void finish();
  ~Progress();

 private:
  void draw(uint64_t done, bool final);
  std::string label_, unit_;
  uint64_t total_;
  double start_, last_draw_ = -1.0;
  int last_percent_ = -1;
  bool tty_, finished_ = false;
};

double wall_time_seconds();  // monotonic

// printf into a std::string (for log lines).
std::string strfmt(const char* f, ...) __attribute__((format(printf, 1, 2)));

}  // namespace ltrain
