#include "tests/fuzz/fuzz_model.h"

#include <cstdio>
#include <cstdlib>

#include "engine/model/model_config.h"
#include "tests/test_checkpoint.h"

namespace mnemo::fuzz {

const std::string& TinyCheckpointDir() {
  static const test::ScopedTempDir* dir = [] {
    const engine::ModelConfig config = test::ConfigWith(
        {R"({"attention": "dense"})",
         R"({"attention": "dense", "memory": "compressive", "compression": "most_used",
             "compression_rate": 3, "cmem_len": 3})",
         R"({"attention": "linear", "feature_map": "elu"})",
         R"({"attention": "sparse", "window": 4, "global_tokens": [3, 7], "max_global": 2})",
         R"({"attention": "sparse", "pattern": "fixed", "block": 4, "summary": 2, "span": 12,
             "global_positions": [0, 3, 9, 17], "max_global": 2})",
         R"({"attention": "lsh", "n_hashes": 1, "n_buckets": 4, "chunk_len": 3, "history": 9})"},
        {}, 8);
    if (config.layers.size() != 6) {
      std::fprintf(stderr, "fuzz: the tiny model's config does not parse\n");
      std::abort();
    }
    return new test::ScopedTempDir(test::WriteCheckpoint(config, 7));
  }();
  return dir->path();
}

}  // namespace mnemo::fuzz
