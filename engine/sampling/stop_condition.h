// StopCondition: decides when generation ends (stop token ids, end-of-sequence, stop strings)
// and how much of the generated text to keep when a stop string matched.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mnemo::engine {

enum class FinishReason : uint8_t { kLength, kStopString, kStopToken, kEos };

std::string_view FinishReasonName(FinishReason reason);

class StopCondition {
 public:
  StopCondition(std::vector<std::string> stop_strings, std::vector<int32_t> stop_ids,
                int32_t eos_id);

  // Checks the token just generated; `text` is the full generated text so far (including it).
  // On a stop string, *keep_bytes is the length of `text` before the match. `new_bytes` is how
  // much of `text` this token added: stop strings are then searched only where they can end in
  // it (earlier text was checked before), which keeps a long generation linear; npos searches
  // the whole text.
  std::optional<FinishReason> Check(int32_t token, std::string_view text, size_t* keep_bytes,
                                    size_t new_bytes = std::string_view::npos) const;

  // Bytes at the end of `text` that might still become the start of a stop string: a streaming
  // client must hold them back until the next token decides.
  size_t PendingBytes(std::string_view text) const;

 private:
  std::vector<std::string> stop_strings_;
  size_t longest_ = 0;  // length of the longest stop string
  std::vector<int32_t> stop_ids_;
  int32_t eos_id_;
};

}  // namespace mnemo::engine
