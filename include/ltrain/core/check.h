// Error handling. LTRAIN_CHECK(cond) or LTRAIN_CHECK(cond, "literal" << more): the message, when
// given, starts with a string literal. Two kinds of failure, kept apart on purpose:
//  - UserError: the user's input is wrong (config key, flag, data file, checkpoint). It carries one
//    line that names the key, file or value and what would be right; main() prints it and exits 2.
//    It is an exception so that scoped cleanup runs and nothing is left half-written.
//  - Internal errors (LTRAIN_CHECK): a bug or a library failure. They print file:line, function,
//    the failing expression and a message, then abort every rank.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace ltrain {

class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& msg) : std::runtime_error(msg) {}
};

// The run stopped itself for a documented reason (the guard's rollback limit, a replica
// mismatch): one line, and exit code 3 rather than 2, so schedulers can tell it from bad input.
class RunStopped : public std::runtime_error {
 public:
  explicit RunStopped(const std::string& msg) : std::runtime_error(msg) {}
  static constexpr int kExitCode = 3;
};

// Throws UserError with the concatenation of the arguments.
// Control characters (a newline inside a value the user wrote) are escaped, so the message
// stays one line.
std::string one_line(const std::string& s);

template <class... Args>
[[noreturn]] void user_error(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw UserError(one_line(os.str()));
}

[[noreturn]] void fatal_error(const char* file, int line, const char* func, const char* expr,
                              const std::string& msg);

// Rank shown in error reports; set once by the communicator bootstrap.
void set_error_rank(int rank);
// How an internal error ends the process after its report: abort() by default; under a launcher
// the communicator bootstrap installs MPI_Abort, which ends every rank of the job at once instead
// of leaving the others waiting in a collective until mpirun notices. The handler must not return.
void set_fatal_exit(void (*handler)());

}  // namespace ltrain

#define LTRAIN_CHECK(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::ostringstream ltrain_os_;                                                       \
      ltrain_os_ << "" __VA_ARGS__;                                                        \
      ::ltrain::fatal_error(__FILE__, __LINE__, __func__, #cond, ltrain_os_.str());        \
    }                                                                                      \
  } while (0)
