// The request fuzzers' input format after byte 0 (request_fuzzer.cc, request_bounds_fuzzer.cc):
// one message for a unary or server-streaming method; for a client-streaming one a sequence of
// messages, each a little-endian u16 length and that many bytes (at most 64 messages).
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

namespace mnemo::fuzz {

inline std::vector<std::string> RequestMessages(bool streamed, const std::string& rest) {
  if (!streamed) return {rest};
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos + 2 <= rest.size() && out.size() < 64) {
    const size_t len = static_cast<unsigned char>(rest[pos]) |
                       static_cast<size_t>(static_cast<unsigned char>(rest[pos + 1])) << 8;
    pos += 2;
    out.push_back(rest.substr(pos, len));
    pos += std::min(len, rest.size() - pos);
  }
  return out;
}

}  // namespace mnemo::fuzz
