// Flags: the small command-line parser the binaries share ("--name value", "--name=value",
// boolean "--name"; a flag may repeat; "--" ends the flags). Unknown flags and missing values are
// errors that name the flag, so a typo never passes silently.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace mnemo {

class Flags {
 public:
  // `known` maps each flag name (without "--") to whether it takes a value. Parsing starts at
  // argv[first].
  static absl::StatusOr<Flags> Parse(int argc, char** argv, int first,
                                     const std::map<std::string, bool>& known);
  // The same over args[first…], keeping other arguments as positionals; with
  // `stop_at_positional` it stops at the first one (a sub-command) and sets *stopped_at to its
  // index (args.size() when there is none).
  static absl::StatusOr<Flags> ParseWithPositionals(const std::vector<std::string>& args,
                                                    size_t first,
                                                    const std::map<std::string, bool>& known,
                                                    bool stop_at_positional = false,
                                                    size_t* stopped_at = nullptr);
  // Adds `other`'s values (they win for Get) and positionals.
  void Merge(const Flags& other);
  // For each flag in `known` that takes a value and was not given, its value from the
  // environment variable `prefix` + the name upper-cased with '-' as '_' (MNEMO_SESSION_STORE
  // for --session-store), when that is set and not empty. A flag named in `repeatable` takes a
  // comma-separated list there. Containers and Kubernetes configure servers this way; the command
  // line wins.
  void AddFromEnvironment(const std::string& prefix, const std::map<std::string, bool>& known,
                          const std::vector<std::string>& repeatable = {});
  // The environment variable AddFromEnvironment reads for `name`.
  static std::string EnvironmentName(const std::string& prefix, const std::string& name);
  const std::vector<std::string>& positional() const { return positional_; }

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The last value given (flags given twice: the later one wins), or `fallback`.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  // Every value given, in order (repeatable flags).
  std::vector<std::string> All(const std::string& name) const;
  // INVALID_ARGUMENT naming the flag and the range when the value is no integer in [min, max].
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t fallback, int64_t min,
                              int64_t max) const;
  // A finite float.
  absl::StatusOr<float> Float(const std::string& name, float fallback) const;
  // An Abseil duration ("90s", "1h30m", "250ms"), at least `min`.
  absl::StatusOr<absl::Duration> Duration(const std::string& name, absl::Duration fallback,
                                          absl::Duration min) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

}  // namespace mnemo
