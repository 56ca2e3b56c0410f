#include "engine/sampling/stop_condition.h"

#include <algorithm>

namespace mnemo::engine {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kStopToken:
      return "stop_token";
    case FinishReason::kEos:
      return "eos";
  }
  return "unknown";
}

StopCondition::StopCondition(std::vector<std::string> stop_strings, std::vector<int32_t> stop_ids,
                             int32_t eos_id)
    : stop_strings_(std::move(stop_strings)), stop_ids_(std::move(stop_ids)), eos_id_(eos_id) {
  stop_strings_.erase(std::remove(stop_strings_.begin(), stop_strings_.end(), std::string()),
                      stop_strings_.end());
  for (const std::string& s : stop_strings_) longest_ = std::max(longest_, s.size());
}

std::optional<FinishReason> StopCondition::Check(int32_t token, std::string_view text,
                                                 size_t* keep_bytes, size_t new_bytes) const {
  *keep_bytes = text.size();
  if (eos_id_ >= 0 && token == eos_id_) return FinishReason::kEos;
  if (std::find(stop_ids_.begin(), stop_ids_.end(), token) != stop_ids_.end()) {
    return FinishReason::kStopToken;
  }
  // The earliest match wins: a token may complete several stop strings at once.
  // A match must end inside the new bytes, so it starts at most longest_ − 1 bytes before them.
  const size_t reach = new_bytes == std::string_view::npos ? text.size() : new_bytes + longest_ - 1;
  const size_t from = text.size() > reach ? text.size() - reach : 0;
  size_t best = std::string_view::npos;
  for (const std::string& s : stop_strings_) {
    const size_t pos = text.find(s, from);
    if (pos != std::string_view::npos) best = std::min(best, pos);
  }
  if (best != std::string_view::npos) {
    *keep_bytes = best;
    return FinishReason::kStopString;
  }
  return std::nullopt;
}

size_t StopCondition::PendingBytes(std::string_view text) const {
  size_t pending = 0;
  for (const std::string& s : stop_strings_) {
    // Longest proper prefix of s that is a suffix of text.
    for (size_t len = std::min(s.size() - 1, text.size()); len > pending; --len) {
      if (text.substr(text.size() - len) == std::string_view(s).substr(0, len)) {
        pending = len;
        break;
      }
    }
  }
  return pending;
}

}  // namespace mnemo::engine
