// EncoderSequence: one window of an encoder pass (engine/encoder/encoder_model.h): its token ids
// and the positions in it that attend globally.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace mnemo::engine {

struct EncoderSequence {
  std::span<const int32_t> ids;
  std::vector<int64_t> global_positions;  // ascending, each < ids.size()
};

}  // namespace mnemo::engine
