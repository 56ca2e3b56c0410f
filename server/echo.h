// Echo: a client-supplied value as error messages may quote it, cut to a few dozen bytes. An
// error that repeated a long model name or session id in full once outgrew gRPC's metadata
// limit (~8 KiB), and the client got a transport error instead of the status.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace mnemo::server {

inline constexpr size_t kMaxEchoBytes = 64;

// `value` when it has at most `max_bytes` bytes; otherwise its first bytes (cut at a UTF-8
// character boundary) followed by "…(N bytes)".
std::string Echo(absl::string_view value, size_t max_bytes = kMaxEchoBytes);

}  // namespace mnemo::server
