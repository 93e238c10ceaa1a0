// Run logging: one human-readable line per event on stdout (and in RUN_DIR/train.log), and one
// JSON object per line in RUN_DIR/metrics.jsonl. Both are flushed per line, so a crashed run keeps
// everything up to its last step. Only rank 0 writes.
#pragma once
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace ltrain {

class MetricsLogger {
 public:
  // An empty run_dir logs to stdout only. `append` continues existing files (a resumed run).
  MetricsLogger(const std::string& run_dir, bool enabled, bool append = false);
  ~MetricsLogger();
  void info(const std::string& line);            // stdout + train.log
  void record(const nlohmann::json& obj);        // metrics.jsonl (adds "time")
  bool enabled() const { return enabled_; }

 private:
  bool enabled_;
  FILE* log_ = nullptr;
  FILE* jsonl_ = nullptr;
  double start_;
};

}  // namespace ltrain
