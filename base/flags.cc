#include "base/flags.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#include "base/status_macros.h"

namespace mnemo {

absl::StatusOr<Flags> Flags::Parse(int argc, char** argv, int first,
                                   const std::map<std::string, bool>& known) {
  ASSIGN_OR_RETURN(Flags f, ParseWithPositionals(std::vector<std::string>(argv, argv + argc),
                                                 static_cast<size_t>(first), known));
  if (!f.positional_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", f.positional_.front(), "\""));
  }
  return f;
}

absl::StatusOr<Flags> Flags::ParseWithPositionals(const std::vector<std::string>& args,
                                                  size_t first,
                                                  const std::map<std::string, bool>& known,
                                                  bool stop_at_positional, size_t* stopped_at) {
  Flags f;
  bool flags_done = false;
  for (size_t i = first; i < args.size(); ++i) {
    std::string arg = args[i];
    if (flags_done || arg.rfind("--", 0) != 0) {
      if (stop_at_positional) {
        if (stopped_at != nullptr) *stopped_at = i;
        return f;
      }
      f.positional_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    arg = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto it = known.find(arg);
    if (it == known.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", arg, " (see --help)"));
    }
    const bool takes_value = it->second;
    if (takes_value && !has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", arg, " needs a value"));
      }
      value = args[++i];
    } else if (!takes_value && has_value) {
      return absl::InvalidArgumentError(absl::StrCat("--", arg, " takes no value"));
    }
    f.values_[arg].push_back(takes_value ? value : "true");
  }
  if (stop_at_positional && stopped_at != nullptr) *stopped_at = args.size();
  return f;
}

void Flags::Merge(const Flags& other) {
  for (const auto& [k, v] : other.values_) values_[k].insert(values_[k].end(), v.begin(), v.end());
  positional_.insert(positional_.end(), other.positional_.begin(), other.positional_.end());
}

std::string Flags::EnvironmentName(const std::string& prefix, const std::string& name) {
  std::string env = prefix;
  for (const char c : name) {
    env.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return env;
}

void Flags::AddFromEnvironment(const std::string& prefix, const std::map<std::string, bool>& known,
                               const std::vector<std::string>& repeatable) {
  for (const auto& [name, takes_value] : known) {
    if (!takes_value || Has(name)) continue;
    const char* value = std::getenv(EnvironmentName(prefix, name).c_str());
    if (value == nullptr || *value == '\0') continue;
    if (std::find(repeatable.begin(), repeatable.end(), name) == repeatable.end()) {
      values_[name].push_back(value);
      continue;
    }
    for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      values_[name].emplace_back(part);
    }
  }
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> Flags::All(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<int64_t> Flags::Int(const std::string& name, int64_t fallback, int64_t min,
                                   int64_t max) const {
  if (!Has(name)) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(Get(name), &v) || v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be an integer in [", min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<float> Flags::Float(const std::string& name, float fallback) const {
  if (!Has(name)) return fallback;
  float v;
  if (!absl::SimpleAtof(Get(name), &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number"));
  }
  return v;
}

absl::StatusOr<absl::Duration> Flags::Duration(const std::string& name, absl::Duration fallback,
                                               absl::Duration min) const {
  if (!Has(name)) return fallback;
  absl::Duration d;
  if (!absl::ParseDuration(Get(name), &d) || d < min || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a duration such as 30s, ",
                                                   "5m or 2h, at least ",
                                                   absl::FormatDuration(min)));
  }
  return d;
}

}  // namespace mnemo
