#include "ltrain/core/args.h"

#include <cstdlib>
#include <sstream>

#include "ltrain/core/check.h"

namespace ltrain {

void ArgParser::add_flag(const std::string& name, const std::string& help, bool is_bool,
                         bool is_list) {
  flags_[name] = Flag{help, is_bool, is_list};
  order_.push_back(name);
}

std::string ArgParser::usage() const {
  std::ostringstream os;
  os << "usage: ltrain " << command_ << " [flags]\n";
  for (const auto& name : order_) {
    const Flag& f = flags_.at(name);
    const std::string left = "  --" + name + (f.is_bool ? "" : (f.is_list ? " V..." : " V"));
    os << left << std::string(left.size() < 28 ? 28 - left.size() : 1, ' ') << f.help << "\n";
  }
  return os.str();
}

void ArgParser::parse(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    std::string word = argv[i];
    if (word == "-h" || word == "--help") {
      help_ = true;
      continue;
    }
    if (word.rfind("--", 0) != 0) {
      positionals_.push_back(word);
      continue;
    }
    std::string name = word.substr(2), inline_value;
    bool has_inline = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline = true;
    }
    auto it = flags_.find(name);
    if (it == flags_.end()) {
      std::string known;
      for (const auto& n : order_) known += (known.empty() ? "--" : ", --") + n;
      user_error("ltrain ", command_, ": unknown flag '--", name, "' (known flags: ", known, ")");
    }
    auto& vals = values_[name];
    if (it->second.is_bool) {
      vals = {has_inline ? inline_value : "true"};
    } else if (has_inline) {
      vals.push_back(inline_value);
    } else if (it->second.is_list) {
      int start = i;
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) vals.push_back(argv[++i]);
      if (i == start) user_error("ltrain ", command_, ": flag '--", name, "' needs at least one value");
    } else {
      if (i + 1 >= argc) user_error("ltrain ", command_, ": flag '--", name, "' needs a value");
      vals = {argv[++i]};
    }
  }
}

bool ArgParser::has(const std::string& name) const { return values_.count(name) > 0; }

std::string ArgParser::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty())
    user_error("ltrain ", command_, ": missing required flag '--", name, "' (", flags_.at(name).help, ")");
  return it->second.back();
}

std::string ArgParser::get(const std::string& name, const std::string& fallback) const {
  return has(name) ? get(name) : fallback;
}

std::vector<std::string> ArgParser::get_list(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

bool ArgParser::get_bool(const std::string& name) const {
  if (!has(name)) return false;
  std::string v = get(name);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  user_error("ltrain ", command_, ": flag '--", name, "' takes true or false, got '", v, "'");
}

long long ArgParser::get_int(const std::string& name, long long fallback) const {
  if (!has(name)) return fallback;
  std::string v = get(name);
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0')
    user_error("ltrain ", command_, ": flag '--", name, "' takes an integer, got '", v, "'");
  return x;
}

double ArgParser::get_double(const std::string& name, double fallback) const {
  if (!has(name)) return fallback;
  std::string v = get(name);
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0')
    user_error("ltrain ", command_, ": flag '--", name, "' takes a number, got '", v, "'");
  return x;
}

}  // namespace ltrain
