// ModelOptions: how a model is prepared at load (TransfoXlModel::Load, engine::api::Model).
#pragma once

namespace mnemo::engine {

// How a model is prepared at load.
struct ModelOptions {
  // CPU: pruned weight matrices (checkpoints store them densely with zeros) run from a sparse
  // form (CSR or 2:4) wherever that moves at most 80% of the dense bytes (sparse_weight.h).
  bool sparse_weights = true;
};

}  // namespace mnemo::engine
