// A tiny checkpoint for the fuzz targets that need a model: every layer kind whose state a
// snapshot carries (dense XL and compressive, linear, sparse with globals, LSH), random weights,
// no tokenizer. Written once per process into a temporary directory.
#pragma once

#include <string>

namespace mnemo::fuzz {

// The checkpoint directory (aborts if it cannot be written).
const std::string& TinyCheckpointDir();

}  // namespace mnemo::fuzz
