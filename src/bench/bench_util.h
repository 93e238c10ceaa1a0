// Small helpers shared by bench's sources (src/bench/): statistics of the step times and JSON
// numbers that may be unavailable.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

namespace ltrain::bench_util {

inline double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / double(v.size());
}

// JSON number, or null for "not available" (NaN).
inline nlohmann::json num_or_null(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}

}  // namespace ltrain::bench_util
