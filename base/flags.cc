#include "base/flags.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mnemo {

absl::StatusOr<Flags> Flags::Parse(int argc, char** argv, int first,
                                   const std::map<std::string, bool>& known) {
  Flags f;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
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
      if (i + 1 >= argc)
        return absl::InvalidArgumentError(absl::StrCat("--", arg, " needs a value"));
      value = argv[++i];
    } else if (!takes_value && has_value) {
      return absl::InvalidArgumentError(absl::StrCat("--", arg, " takes no value"));
    }
    f.values_[arg].push_back(takes_value ? value : "true");
  }
  return f;
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
