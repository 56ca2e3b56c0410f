// Fault specs: the rule syntax, the @PATH file that switches faults in a running process, and the
// per-rule counting, shared by every fault-injecting layer (engine/backend/fault_injecting_backend,
// server/fault_injecting_store_env). Each layer names its ops and modes and decides what a fault
// does; the parsing, counting and file watching are here, once.
//
// A spec is comma- (or newline-) separated rules `op:mode[@N[+]][%P]`; "" means no faults:
//   op    one of the layer's op names, or any;
//   mode  one of the layer's mode names;
//   @N    only the N-th op the rule matches, counted from when the spec took effect (1-based);
//         @N+ that one and every later one; without @, every op;
//   %P    each op the rule picks fails with probability P in [0, 1], drawn from a generator
//         seeded at construction, so a run repeats.
// The first rule that picks an op decides its fault; every rule counts every op it matches.
//
// A spec `@PATH` takes the rules from the file PATH, re-read whenever its size, modification time
// or inode changes (a missing or empty file: no faults; a bad one: no faults and a line on
// stderr), so a test switches faults on and off in a running process by renaming a new file over
// the old one.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mnemo {

// One rule, its op and mode as indices into the names the parser was given (op −1: any).
struct FaultRuleIndices {
  int op = -1;
  int mode = 0;
  int64_t nth = 0;         // 0: every op
  bool and_later = false;  // with nth: the nth op and every later one
  double probability = 1;
};

// The rules of `spec` (not an @PATH spec) whose ops are `ops` (or any) and modes `modes`;
// INVALID_ARGUMENT "<what>: bad rule "<rule>": <why>".
absl::StatusOr<std::vector<FaultRuleIndices>> ParseFaultRules(
    std::string_view what, std::string_view spec, std::span<const std::string_view> ops,
    std::span<const std::string_view> modes);

// A rule over a layer's op and mode enums (each numbered 0, 1, … in the order of its names).
template <typename Op, typename Mode>
struct FaultRule {
  std::optional<Op> op;  // nullopt: any op
  Mode mode{};
  int64_t nth = 0;
  bool and_later = false;
  double probability = 1;
};

template <typename Op, typename Mode>
absl::StatusOr<std::vector<FaultRule<Op, Mode>>> ParseTypedFaultRules(
    std::string_view what, std::string_view spec, std::span<const std::string_view> ops,
    std::span<const std::string_view> modes) {
  absl::StatusOr<std::vector<FaultRuleIndices>> parsed = ParseFaultRules(what, spec, ops, modes);
  if (!parsed.ok()) return parsed.status();
  std::vector<FaultRule<Op, Mode>> rules;
  for (const FaultRuleIndices& r : *parsed) {
    FaultRule<Op, Mode> rule;
    if (r.op >= 0) rule.op = static_cast<Op>(r.op);
    rule.mode = static_cast<Mode>(r.mode);
    rule.nth = r.nth;
    rule.and_later = r.and_later;
    rule.probability = r.probability;
    rules.push_back(rule);
  }
  return rules;
}

// The file of an @PATH spec: tells when its contents may have changed (size, modification time
// or inode), looking at most once per `check_interval`. Thread-compatible.
class FaultSpecFile {
 public:
  FaultSpecFile(std::string path, std::chrono::nanoseconds check_interval)
      : path_(std::move(path)), check_interval_(check_interval) {}
  const std::string& path() const { return path_; }
  // nullopt: unchanged since the last call (or not looked at yet again). Otherwise the file's
  // text, "" when it is missing, or the error reading it.
  std::optional<absl::StatusOr<std::string>> Changed();

 private:
  struct Stamp {
    bool exists = false;
    int64_t size = 0;
    int64_t mtime_ns = 0;
    uint64_t inode = 0;
    bool operator==(const Stamp&) const = default;
  };
  std::string path_;
  std::chrono::nanoseconds check_interval_;
  std::optional<Stamp> stamp_;  // nullopt: never looked at
  std::chrono::steady_clock::time_point next_check_{};
};

// Whether a spec is an @PATH spec; its path (INVALID_ARGUMENT when empty).
std::optional<absl::StatusOr<std::string>> FaultSpecPath(std::string_view what,
                                                         std::string_view spec);

// A bad spec file's line on stderr ("mnemo: <what> <path>: <message> (no faults)").
void ReportBadFaultSpecFile(const std::string& what, const std::string& path,
                            const absl::Status& status);

// The rules in force and their counts: from a spec, or from an @PATH spec's file as it changes.
// Thread-compatible: the layer holds its own lock around every call.
template <typename Op, typename Mode>
class FaultRuleSet {
 public:
  using Rule = FaultRule<Op, Mode>;
  using Parser = absl::StatusOr<std::vector<Rule>> (*)(std::string_view spec);

  // `what` names the spec in messages ("store fault spec"); `parse` is the layer's parser.
  FaultRuleSet(std::string what, Parser parse, uint64_t seed,
               std::chrono::nanoseconds check_interval)
      : what_(std::move(what)), parse_(parse), rng_(seed), check_interval_(check_interval) {}

  // Replaces the rules and restarts their counts. INVALID_ARGUMENT naming the bad rule (the rules
  // stay as they were).
  absl::Status Set(std::string_view spec) {
    std::optional<absl::StatusOr<std::string>> path = FaultSpecPath(what_, spec);
    if (path.has_value()) {
      if (!path->ok()) return path->status();
      file_.emplace(**path, check_interval_);
      Replace({});
      Reload();
      return absl::OkStatus();
    }
    absl::StatusOr<std::vector<Rule>> rules = parse_(spec);
    if (!rules.ok()) return rules.status();
    file_.reset();
    Replace(*std::move(rules));
    return absl::OkStatus();
  }

  // Counts `op` in every rule that matches it; the first rule that picks it, or nullptr. The
  // pointer is valid until the next call.
  const Rule* Pick(Op op) {
    if (file_.has_value()) Reload();
    const Rule* fired = nullptr;
    for (size_t i = 0; i < rules_.size(); ++i) {
      const Rule& rule = rules_[i];
      if (rule.op.has_value() && *rule.op != op) continue;
      const int64_t n = ++matched_[i];
      bool pick = rule.nth == 0 || n == rule.nth || (rule.and_later && n > rule.nth);
      if (pick && rule.probability < 1) {
        pick = std::uniform_real_distribution<double>(0, 1)(rng_) < rule.probability;
      }
      if (pick && fired == nullptr) fired = &rule;
    }
    return fired;
  }

 private:
  void Replace(std::vector<Rule> rules) {
    rules_ = std::move(rules);
    matched_.assign(rules_.size(), 0);
  }
  void Reload() {
    std::optional<absl::StatusOr<std::string>> text = file_->Changed();
    if (!text.has_value()) return;
    absl::StatusOr<std::vector<Rule>> rules = text->ok() ? parse_(**text) : text->status();
    if (!rules.ok()) {
      ReportBadFaultSpecFile(what_, file_->path(), rules.status());
      Replace({});
      return;
    }
    Replace(*std::move(rules));
  }
  const std::string what_;
  const Parser parse_;
  std::mt19937_64 rng_;
  const std::chrono::nanoseconds check_interval_;
  std::optional<FaultSpecFile> file_;
  std::vector<Rule> rules_;
  std::vector<int64_t> matched_;  // per rule: ops it matched
};

}  // namespace mnemo
