#include "ltrain/metrics/logger.h"

#include <cerrno>
#include <cstring>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

MetricsLogger::MetricsLogger(const std::string& run_dir, bool enabled, bool append)
    : enabled_(enabled), start_(wall_time_seconds()) {
  if (!enabled_ || run_dir.empty()) return;
  const char* mode = append ? "a" : "w";
  std::string log = path_join(run_dir, "train.log"), jsonl = path_join(run_dir, "metrics.jsonl");
  log_ = std::fopen(log.c_str(), mode);
  jsonl_ = std::fopen(jsonl.c_str(), mode);
  if (!log_ || !jsonl_) user_error("cannot write logs in run directory '", run_dir, "': ", std::strerror(errno));
}

MetricsLogger::~MetricsLogger() {
  if (log_) std::fclose(log_);
  if (jsonl_) std::fclose(jsonl_);
}

void MetricsLogger::info(const std::string& line) {
  if (!enabled_) return;
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
  if (log_) {
    std::fprintf(log_, "%s\n", line.c_str());
    std::fflush(log_);
  }
}

void MetricsLogger::record(const nlohmann::json& obj) {
  if (!enabled_ || !jsonl_) return;
  nlohmann::json o = obj;
  o["time"] = wall_time_seconds() - start_;
  std::string s = o.dump();
  std::fprintf(jsonl_, "%s\n", s.c_str());
  std::fflush(jsonl_);
}

}  // namespace ltrain
