// A small command-line parser shared by the subcommands.
// Flags are `--name value`, `--name=value`, or `--name` alone for booleans; a flag declared as a
// list takes every following word up to the next `--flag`. Words that are not flags are
// positionals (the `key=value` config overrides of `ltrain train`). Unknown flags are a UserError
// that names the flag and lists the known ones.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace ltrain {

class ArgParser {
 public:
  explicit ArgParser(std::string command) : command_(std::move(command)) {}

  // Declare flags before parse(). `help` is shown by --help.
  void add_flag(const std::string& name, const std::string& help, bool is_bool = false,
                bool is_list = false);
  void parse(int argc, char** argv);  // argv[0] is not skipped: pass the words after the command

  bool help_requested() const { return help_; }
  std::string usage() const;

  bool has(const std::string& name) const;
  std::string get(const std::string& name) const;  // UserError if missing
  std::string get(const std::string& name, const std::string& fallback) const;
  std::vector<std::string> get_list(const std::string& name) const;
  bool get_bool(const std::string& name) const;
  long long get_int(const std::string& name, long long fallback) const;
  double get_double(const std::string& name, double fallback) const;
  const std::vector<std::string>& positionals() const { return positionals_; }

 private:
  struct Flag {
    std::string help;
    bool is_bool;
    bool is_list;
  };
  std::string command_;
  std::vector<std::string> order_;
  std::map<std::string, Flag> flags_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positionals_;
  bool help_ = false;
};

}  // namespace ltrain
