// How a session's changes reach durable storage: the server's durability levels, recorded in
// session snapshots (engine/api/snapshot.h). Names: engine/model/enum_names.h.
#pragma once

#include <cstdint>

namespace mnemo::engine {

enum class Durability : uint8_t { kNone, kAsync, kSync };

}  // namespace mnemo::engine
