// ModelAccess: the engine model behind an api::Model, for engine/api's own implementation files
// (the generation loop's speculative decoder and direct steps, snapshots). Not part of the API:
// server/ and tools/cli/ never include it (tools/check_layering.sh).
#pragma once

#include "engine/api/model.h"
#include "engine/model/transfo_xl_model.h"

namespace mnemo::engine::api {

struct ModelAccess {
  static TransfoXlModel& Impl(const Model& model) { return *model.impl_; }
};

}  // namespace mnemo::engine::api
