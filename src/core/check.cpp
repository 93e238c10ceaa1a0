#include "ltrain/core/check.h"

#include <cstdio>
#include <cstdlib>

namespace ltrain {

static int g_error_rank = 0;
static void (*g_fatal_exit)() = nullptr;

void set_error_rank(int rank) { g_error_rank = rank; }
void set_fatal_exit(void (*handler)()) { g_fatal_exit = handler; }

std::string one_line(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

void fatal_error(const char* file, int line, const char* func, const char* expr,
                 const std::string& msg) {
  std::fprintf(stderr, "[rank %d] ltrain internal error at %s:%d in %s: check '%s' failed%s%s\n",
               g_error_rank, file, line, func, expr, msg.empty() ? "" : ": ", msg.c_str());
  std::fflush(stderr);
  // Under a launcher: MPI_Abort, every rank of the job at once (set_fatal_exit). Otherwise
  // abort(), for a core dump and a non-zero exit.
  if (void (*handler)() = g_fatal_exit) {
    g_fatal_exit = nullptr;  // an error inside the handler itself must not loop back here
    handler();
  }
  std::abort();
}

}  // namespace ltrain
