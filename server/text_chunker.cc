#include "server/text_chunker.h"

#include "engine/api/types.h"

namespace mnemo::server {

std::string TextChunker::Push(std::string_view piece) {
  carry_.append(piece);
  size_t cut = carry_.rfind(' ');
  if (cut == std::string::npos || cut == 0) {
    if (carry_.size() <= max_carry_) return {};
    cut = engine::api::CompleteUtf8Prefix(carry_);
  }
  std::string ready = carry_.substr(0, cut);
  carry_.erase(0, cut);
  return ready;
}

std::string TextChunker::Finish() {
  std::string rest;
  rest.swap(carry_);
  return rest;
}

}  // namespace mnemo::server
