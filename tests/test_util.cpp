#include "test_util.h"

#include "ltrain/core/check.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>
#include <sys/wait.h>

namespace ltrain::test {

TempDir::TempDir(const std::string& tag) {
  static int counter = 0;
  path_ = std::filesystem::current_path().string() + "/tmp_" + tag + "_" +
          std::to_string(::getpid()) + "_" + std::to_string(counter++);
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

CommandResult run_shell(const std::string& command) {
  std::string full = command + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  CommandResult r{-1, ""};
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

CommandResult run_ltrain(const std::string& args) {
  return run_shell(std::string(LTRAIN_BINARY) + " " + args);
}

std::string test_data(const std::string& name) { return std::string(LTRAIN_TEST_DATA) + "/" + name; }

std::vector<double> random_vector(size_t n, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) {
    do x = dist(rng);
    while (x == 0.0);
  }
  return v;
}

std::string compare(const double* got, const double* ref, size_t n, double atol, double rtol) {
  double ref_norm = 0, max_abs = 0, max_rel = 0;
  size_t worst = 0, bad = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < n; ++i) {
    ref_norm += ref[i] * ref[i];
    double err = std::fabs(got[i] - ref[i]);
    if (std::isnan(got[i]) || std::isnan(ref[i])) err = INFINITY;
    max_abs = std::max(max_abs, err);
    if (ref[i] != 0) max_rel = std::max(max_rel, err / std::fabs(ref[i]));
    double excess = err - (atol + rtol * std::fabs(ref[i]));
    if (excess > 0) {
      ++bad;
      if (excess > worst_excess) worst_excess = excess, worst = i;
    }
  }
  std::ostringstream os;
  if (n > 0 && ref_norm == 0) os << "reference is all zeros (n=" << n << "); the test proves nothing";
  if (bad) {
    os << bad << "/" << n << " elements out of tolerance (atol " << atol << ", rtol " << rtol
       << "); worst at " << worst << ": got " << got[worst] << " ref " << ref[worst]
       << "; max abs err " << max_abs << ", max rel err " << max_rel;
  }
  return os.str();
}

void expect_user_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no UserError (expected one mentioning '" << (needles.empty() ? "" : needles[0]) << "')";
}

}  // namespace ltrain::test
