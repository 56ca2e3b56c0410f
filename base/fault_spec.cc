// Fault specs: the rule parser, the @PATH file's change detection.
#include "base/fault_spec.h"

#include <cstdio>

#include <sys/stat.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#include "base/read_file.h"

namespace mnemo {
namespace {

// Abseil here is built with its own string_view (Debian's ABI), distinct from std::string_view.
absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

absl::Status BadRule(std::string_view what, absl::string_view rule, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(AbslView(what), ": bad rule \"", rule, "\": ", why));
}

// "a, b or c".
std::string Alternatives(std::span<const std::string_view> names, absl::string_view last) {
  std::string out;
  for (const std::string_view name : names) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", AbslView(name));
  }
  absl::StrAppend(&out, out.empty() ? "" : " or ", last);
  return out;
}

// The index of `name` in `names`, or −1.
int IndexOf(std::span<const std::string_view> names, absl::string_view name) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (AbslView(names[i]) == name) return static_cast<int>(i);
  }
  return -1;
}

absl::StatusOr<FaultRuleIndices> ParseRule(std::string_view what, absl::string_view text,
                                           std::span<const std::string_view> ops,
                                           std::span<const std::string_view> modes) {
  FaultRuleIndices rule;
  absl::string_view rest = text;
  const size_t colon = rest.find(':');
  if (colon == absl::string_view::npos) return BadRule(what, text, "expected op:mode");
  const absl::string_view op = rest.substr(0, colon);
  rest.remove_prefix(colon + 1);
  if (op != "any") {
    rule.op = IndexOf(ops, op);
    if (rule.op < 0) return BadRule(what, text, "op must be " + Alternatives(ops, "any"));
  }
  const size_t mode_end = rest.find_first_of("@%");
  rule.mode = IndexOf(modes, rest.substr(0, mode_end));
  if (rule.mode < 0) {
    const std::string_view last = modes.back();
    return BadRule(what, text,
                   "mode must be " + Alternatives(modes.first(modes.size() - 1), AbslView(last)));
  }
  rest.remove_prefix(mode_end == absl::string_view::npos ? rest.size() : mode_end);
  if (!rest.empty() && rest.front() == '@') {
    rest.remove_prefix(1);
    absl::string_view n = rest.substr(0, rest.find('%'));
    rest.remove_prefix(n.size());
    if (!n.empty() && n.back() == '+') {
      rule.and_later = true;
      n.remove_suffix(1);
    }
    if (!absl::SimpleAtoi(n, &rule.nth) || rule.nth < 1) {
      return BadRule(what, text, "@N needs a whole number N >= 1");
    }
  }
  if (!rest.empty() && rest.front() == '%') {
    rest.remove_prefix(1);
    if (!absl::SimpleAtod(rest, &rule.probability) || !(rule.probability >= 0) ||
        rule.probability > 1) {
      return BadRule(what, text, "%P needs a probability P in [0, 1]");
    }
    rest = {};
  }
  if (!rest.empty()) return BadRule(what, text, "expected op:mode[@N[+]][%P]");
  return rule;
}

}  // namespace

absl::StatusOr<std::vector<FaultRuleIndices>> ParseFaultRules(
    std::string_view what, std::string_view spec, std::span<const std::string_view> ops,
    std::span<const std::string_view> modes) {
  std::vector<FaultRuleIndices> rules;
  for (const absl::string_view piece : absl::StrSplit(AbslView(spec), absl::ByAnyChar(",\n"))) {
    const absl::string_view text = absl::StripAsciiWhitespace(piece);
    if (text.empty()) continue;
    absl::StatusOr<FaultRuleIndices> rule = ParseRule(what, text, ops, modes);
    if (!rule.ok()) return rule.status();
    rules.push_back(*rule);
  }
  return rules;
}

std::optional<absl::StatusOr<std::string>> FaultSpecPath(std::string_view what,
                                                         std::string_view spec) {
  const absl::string_view text = absl::StripAsciiWhitespace(AbslView(spec));
  if (text.empty() || text.front() != '@') return std::nullopt;
  std::string path(absl::StripAsciiWhitespace(text.substr(1)));
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(AbslView(what), ": @ needs a file path"));
  }
  return path;
}

std::optional<absl::StatusOr<std::string>> FaultSpecFile::Changed() {
  const auto now = std::chrono::steady_clock::now();
  if (stamp_.has_value() && now < next_check_) return std::nullopt;
  next_check_ = now + check_interval_;
  Stamp stamp;
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0) {
    stamp.exists = true;
    stamp.size = st.st_size;
    stamp.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
    stamp.inode = st.st_ino;
  }
  if (stamp_ == stamp) return std::nullopt;
  stamp_ = stamp;
  if (!stamp.exists) return std::string();
  return ReadFile(path_);
}

void ReportBadFaultSpecFile(const std::string& what, const std::string& path,
                            const absl::Status& status) {
  std::fprintf(stderr, "mnemo: %s %s: %s (no faults)\n", what.c_str(), path.c_str(),
               std::string(status.message()).c_str());
}

}  // namespace mnemo
