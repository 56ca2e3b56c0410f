// One linear-attention layer's session state (MODEL-SPEC §5.1): per head the running sums
// S [m', d_h] and z [m'], float32 whatever the weights (sums grow with the document), on the
// model's device. Its size does not depend on how many tokens the session has seen.
#pragma once

#include <cstddef>

#include "engine/tensor/tensor.h"

namespace mnemo::engine {

struct LinearState {
  Tensor s;  // [H, m', d_h]
  Tensor z;  // [H, m']

  bool defined() const { return s.defined(); }
  size_t bytes() const { return defined() ? s.bytes() + z.bytes() : 0; }
};

}  // namespace mnemo::engine
