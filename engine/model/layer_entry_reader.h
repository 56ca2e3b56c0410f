// LayerEntryReader: reads one entry of config.json's "layers" for the attention kind that owns it
// (engine/attention/*::ParseConfig): typed fields with ranges and defaults, errors that name the
// entry and the field (INVALID_ARGUMENT), and a final check that no field went unread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace mnemo::engine {

// Positions a layer may keep or name (windows, spans, histories): 2^20.
constexpr int64_t kMaxSpan = int64_t{1} << 20;

// Reads one "layers" entry's fields, naming the entry in errors and remembering which fields
// were read so that any other field is rejected.
class LayerEntryReader {
 public:
  LayerEntryReader(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {}

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", where_, " ", what));
  }
  // The entry itself, for fields of a shape the helpers below do not read (mark them with Has).
  const nlohmann::json& json() const { return j_; }
  bool Has(const char* field) {
    used_.insert(field);
    return j_.contains(field);
  }
  // An integer in [min, max]; `fallback` when absent, or an error when no fallback is given.
  absl::StatusOr<int64_t> Int(const char* field, int64_t min, int64_t max,
                              std::optional<int64_t> fallback = std::nullopt) {
    if (!Has(field)) {
      if (fallback) return *fallback;
      return Error(absl::StrCat("needs \"", field, "\": an integer in [", min, ", ", max, "]"));
    }
    const nlohmann::json& v = j_.at(field);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(max)) ||
        v.get<int64_t>() < min || v.get<int64_t>() > max) {
      return Error(absl::StrCat("\"", field, "\" must be an integer in [", min, ", ", max, "]"));
    }
    return v.get<int64_t>();
  }
  // A list of integers in [min, max]: sorted, a repeated entry refused, unless `as_written`
  // (then in the order written, repeats allowed).
  absl::StatusOr<std::vector<int64_t>> IntList(const char* field, int64_t min, int64_t max,
                                               bool as_written = false) {
    std::vector<int64_t> out;
    if (!Has(field)) return out;
    const nlohmann::json& v = j_.at(field);
    if (!v.is_array() || v.size() > 65536) {
      return Error(absl::StrCat("\"", field, "\" must be a list of at most 65536 integers"));
    }
    for (const nlohmann::json& x : v) {
      if (!x.is_number_integer() || x.get<int64_t>() < min || x.get<int64_t>() > max) {
        return Error(
            absl::StrCat("\"", field, "\" entries must be integers in [", min, ", ", max, "]"));
      }
      out.push_back(x.get<int64_t>());
    }
    if (as_written) return out;
    std::sort(out.begin(), out.end());
    if (std::adjacent_find(out.begin(), out.end()) != out.end()) {
      return Error(absl::StrCat("\"", field, "\" repeats an entry"));
    }
    return out;
  }
  absl::StatusOr<std::string> String(const char* field, std::optional<std::string> fallback,
                                     const std::vector<std::string>& allowed) {
    std::string value;
    if (!Has(field)) {
      if (!fallback) return Error(absl::StrCat("needs \"", field, "\""));
      value = *fallback;
    } else if (!j_.at(field).is_string()) {
      return Error(absl::StrCat("\"", field, "\" must be a string"));
    } else {
      value = j_.at(field).get<std::string>();
    }
    if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
      std::string names;
      for (const std::string& a : allowed) absl::StrAppend(&names, names.empty() ? "" : ", ", a);
      return Error(absl::StrCat("\"", field, "\" must be one of ", names, "; got \"", value, "\""));
    }
    return value;
  }
  // A boolean; `fallback` when absent.
  absl::StatusOr<bool> Bool(const char* field, bool fallback) {
    if (!Has(field)) return fallback;
    if (!j_.at(field).is_boolean()) {
      return Error(absl::StrCat("\"", field, "\" must be true or false"));
    }
    return j_.at(field).get<bool>();
  }
  // Every field present must have been read.
  absl::Status CheckAllRead() const {
    for (const auto& item : j_.items()) {
      if (!used_.count(item.key())) {
        return Error(absl::StrCat("has unknown or misplaced field \"", item.key(), "\""));
      }
    }
    return absl::OkStatus();
  }

 private:
  const nlohmann::json& j_;
  std::string where_;
  std::set<std::string> used_;
};

}  // namespace mnemo::engine
