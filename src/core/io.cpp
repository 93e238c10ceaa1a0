#include "ltrain/core/io.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdarg>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <exception>
#include <mutex>
#include <sstream>

#include "ltrain/core/check.h"

namespace ltrain {

namespace fs = std::filesystem;

static std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

uint32_t crc32(const void* data, size_t size, uint32_t prev) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = prev ^ 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec || !is_directory(path)) user_error("cannot create directory '", path, "': ", ec.message());
}

uint64_t file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) user_error("file not found: '", path, "'");
  return static_cast<uint64_t>(st.st_size);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error("cannot read file '", path, "': ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::function<bool(FILE*)>& write) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) user_error("cannot write file '", tmp, "': ", std::strerror(errno));
  bool ok = write(f);
  ok = (std::fflush(f) == 0) && ok;
  ok = (::fsync(::fileno(f)) == 0) && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    user_error("failed writing '", path, "' (disk full?): ", std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    user_error("cannot rename '", tmp, "' to '", path, "': ", std::strerror(errno));
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  write_file_atomic(path, [&](FILE* f) { return size == 0 || std::fwrite(data, 1, size, f) == size; });
}

void write_text_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, text.data(), text.size());
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

void replace_directory(const std::string& src, const std::string& dst) {
  // rename(2) cannot replace a non-empty directory, so the old one is moved aside first; a crash
  // between the two renames leaves both `dst.old.*` and the complete new `src` on disk.
  std::string old = dst + ".old." + std::to_string(::getpid());
  bool had_old = is_directory(dst);
  if (had_old && std::rename(dst.c_str(), old.c_str()) != 0)
    user_error("cannot move '", dst, "' aside: ", std::strerror(errno));
  if (std::rename(src.c_str(), dst.c_str()) != 0)
    user_error("cannot rename '", src, "' to '", dst, "': ", std::strerror(errno));
  if (had_old) remove_tree(old);
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (!b.empty() && b[0] == '/') return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string dirname_of(const std::string& path) {
  std::string p = fs::path(path).parent_path().string();
  return p.empty() ? "." : p;
}

std::string basename_of(const std::string& path) { return fs::path(path).filename().string(); }

std::vector<std::string> list_directory(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) user_error("cannot open directory '", dir, "': ", std::strerror(errno));
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string strfmt(const char* f, ...) {
  va_list ap;
  va_start(ap, f);
  char buf[1024];
  const int n = std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  if (n < int(sizeof buf)) return buf;
  std::string out(size_t(n) + 1, '\0');
  va_start(ap, f);
  std::vsnprintf(out.data(), out.size(), f, ap);
  va_end(ap);
  out.resize(size_t(n));
  return out;
}

double wall_time_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// ---- Progress ---------------------------------------------------------------------------------

static std::mutex g_progress_mutex;

Progress::Progress(std::string label, uint64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_(wall_time_seconds()),
      tty_(::isatty(STDERR_FILENO)) {}

Progress::~Progress() {
  // While an exception unwinds, a final "100%" line would follow and bury the one-line error.
  if (std::uncaught_exceptions() == 0) finish();
}

void Progress::update(uint64_t done) {
  std::lock_guard<std::mutex> lock(g_progress_mutex);
  if (finished_) return;
  double now = wall_time_seconds();
  int percent = total_ ? static_cast<int>(100.0 * std::min(done, total_) / total_) : 0;
  if (tty_) {
    if (now - last_draw_ < 0.2) return;
  } else if (percent / 10 == last_percent_ / 10 && now - last_draw_ < 10.0) {
    return;  // plain logs: one line per 10% or every 10 s
  }
  last_draw_ = now;
  last_percent_ = percent;
  draw(done, false);
}

void Progress::finish() {
  std::lock_guard<std::mutex> lock(g_progress_mutex);
  if (finished_) return;
  finished_ = true;
  draw(total_, true);
}

void Progress::draw(uint64_t done, bool final) {
  double elapsed = wall_time_seconds() - start_;
  double frac = total_ ? std::min(1.0, static_cast<double>(done) / total_) : 1.0;
  double rate = elapsed > 0 ? done / elapsed : 0.0;
  char buf[256];
  if (tty_) {
    const int width = 30;
    int fill = static_cast<int>(frac * width);
    std::string bar(fill, '#');
    bar.resize(width, '.');
    std::snprintf(buf, sizeof buf, "\r%s [%s] %5.1f%% %.3g %s/s %.1fs%s", label_.c_str(), bar.c_str(),
                  100 * frac, rate, unit_.c_str(), elapsed, final ? "\n" : "");
  } else {
    std::snprintf(buf, sizeof buf, "%s %5.1f%% (%llu/%llu %s) %.1fs\n", label_.c_str(), 100 * frac,
                  static_cast<unsigned long long>(done), static_cast<unsigned long long>(total_),
                  unit_.c_str(), elapsed);
  }
  std::fputs(buf, stderr);
  std::fflush(stderr);
}

}  // namespace ltrain
