// Small integer and string helpers shared across floors, each defined once.
#pragma once
#include <cstdint>
#include <string>

namespace ltrain {

// splitmix64's output function applied to x + the golden-ratio increment: a bijection of 64-bit
// words that scrambles every bit. The shuffles (data windows, blends) use it as a keyed hash.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The splitmix64 generator: the next value of the sequence seeded by `state`, which advances.
inline uint64_t splitmix64_next(uint64_t& state) {
  const uint64_t x = state;
  state += 0x9E3779B97F4A7C15ull;
  return splitmix64(x);
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace ltrain
