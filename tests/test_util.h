// Helpers shared by the tests: scratch directories, running the ltrain binary, catching a
// UserError's message, and comparisons that report max abs/rel error, fail on NaN, and refuse an
// all-zero reference.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ltrain/core/check.h"

namespace ltrain::test {

// A fresh directory under the test's working directory, removed when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};
// Runs `ltrain ARGS` (the binary built with the tests) through the shell.
CommandResult run_ltrain(const std::string& args);
CommandResult run_shell(const std::string& command);

std::string test_data(const std::string& name);  // tests/data/NAME

// Runs f and returns the UserError message ("" when nothing was thrown).
template <class F>
std::string user_error_of(F f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

// Deterministic random numbers for test inputs (never zeros).
std::vector<double> random_vector(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0);

// Per-element |got - ref| <= atol + rtol*|ref|. Returns an empty string when all pass, otherwise a
// description of the worst element and max abs/rel errors. NaN in `got` fails; so does a
// reference whose norm is zero.
std::string compare(const double* got, const double* ref, size_t n, double atol, double rtol);

// Expects fn() to throw a UserError whose message is one line containing every needle.
void expect_user_error(const std::function<void()>& fn, const std::vector<std::string>& needles);

}  // namespace ltrain::test
