// Test helpers shared by the engine tests: small random Transformer-XL configs, a tiny
// safetensors writer (so tests can also craft hostile files), checkpoint directories written into
// fresh temporary folders, and the relative-error check the exactness tests use.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/dtype.h"
#include "engine/memory/session_state.h"
#include "engine/memory/xl_memory.h"
#include "engine/model/model_config.h"
#include "engine/model/model_options.h"
#include "engine/model/transfo_xl_model.h"
#include "gtest/gtest.h"

namespace mnemo::test {

// Layer l's K/V ring (the layer's kind must keep one: dense, sparse, LSH).
const engine::XlMemory& Ring(const engine::SessionState& state, int64_t l);
// The K/V rings of every layer that keeps one, in layer order (views of the same storage).
std::vector<engine::XlMemory> Rings(const engine::SessionState& state);

// One tensor of a safetensors file as written: `dtype` is the safetensors spelling ("F32",
// "F16", "BF16", "I32"; anything else for hostile files) and `bytes` the raw little-endian data.
struct RawTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Safetensors spelling of a dtype ("F32", "F16", "BF16", "I32").
std::string SafetensorsDTypeName(DType dtype);

// Float values stored as `dtype` (f32, f16 or bf16; f16/bf16 rounded to nearest even).
std::string FloatBytes(const std::vector<float>& values, DType dtype);

// A complete safetensors image: header (tensors in the given order, data laid out back to back in
// that order, optional __metadata__ of string pairs) padded with spaces to a multiple of 8, then
// the data. Names and strings must not need JSON escaping.
std::string SafetensorsBytes(const std::vector<RawTensor>& tensors,
                             const std::vector<std::pair<std::string, std::string>>& metadata = {});

// A safetensors image from a literal header text and data buffer (for hostile headers).
std::string SafetensorsFromHeader(const std::string& header_json, const std::string& data);

// A fixed small config (f32, post-LN, relu, untied r biases, "empty" memory, mem_len 16).
engine::ModelConfig SmallConfig();
// SmallConfig with one layer per JSON entry of `layers` (docs/checkpoint-format.md "layers"), extra
// top-level fields (replacing existing ones) and the given mem_len; the test fails if it does not
// parse.
engine::ModelConfig ConfigWith(const std::vector<std::string>& layers,
                               std::vector<std::pair<std::string, std::string>> extra = {},
                               int64_t mem_len = 16);
// A two-layer architecture "mistral" config (4 heads of 8, n_kv_head key/value heads, sliding
// windows of `window`; max_positions when > 0).
engine::ModelConfig MistralConfig(int64_t n_kv_head, int64_t window, int64_t max_positions = 0);
// A two-layer architecture "gemma2" config: a sliding window of `window`, then a global layer
// (a window of the whole `context`, max_positions = context); 4 heads of 8, gelu_tanh, scores
// scaled by 1/sqrt(24), soft caps 5 (scores) and 3 (logits), small enough to matter.
engine::ModelConfig Gemma2Config(int64_t n_kv_head, int64_t window, int64_t context);
// A random small config: every size in a few units, every flag and enum drawn from `seed`.
engine::ModelConfig RandomConfig(uint32_t seed);

// One layer of each kind with session state beside dense: compressive (conv1d, rate 2,
// cmem_len 6), a sliding window of 5, linear (elu) and LSH (2 hashes, 4 buckets, history 30);
// mem_len 8.
engine::ModelConfig MixedKindsConfig();

// config.json as (field, raw JSON value) pairs in docs/checkpoint-format.md order; eos_token_id
// only when set. Tests edit the list to build invalid configs.
std::vector<std::pair<std::string, std::string>> ConfigFields(const engine::ModelConfig& config);
// {"k": v, ...} from raw JSON values.
std::string RenderJsonObject(const std::vector<std::pair<std::string, std::string>>& fields);
std::string ConfigJson(const engine::ModelConfig& config);

// Every tensor name and shape the checkpoint format requires for `config`, in a fixed order.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const engine::ModelConfig& config);
// Weights for `config` drawn from std::mt19937(seed), stored as config.dtype: matrices and
// embeddings uniform in ±0.1, biases ±0.05, LayerNorm gammas 1 ± 0.1. The values depend only on
// the tensor shapes and the seed, so configs that differ only in mem_len, clamp_len,
// same_length, memory_init… get identical weights.
std::vector<RawTensor> RandomWeights(const engine::ModelConfig& config, uint32_t seed);

// A model loaded on the CPU from a fresh checkpoint of `config` with RandomWeights(config, seed);
// the test fails (and null comes back) when loading fails.
std::unique_ptr<engine::TransfoXlModel> LoadModel(const engine::ModelConfig& config,
                                                  uint32_t seed = 1);
// The checkpoint in `dir` loaded on the CPU with `options`; the test fails (and null comes back)
// when loading fails.
std::unique_ptr<engine::TransfoXlModel> LoadCpuModel(const std::string& dir,
                                                     const engine::ModelOptions& options);
// The same with default options but for the form its weights are kept in (--cpu-weights).
std::unique_ptr<engine::TransfoXlModel> LoadCpuModel(const std::string& dir,
                                                     engine::CpuWeights weights);

// The backends every exactness suite runs on, by device name: "cpu" (the oracle), then "cuda".
// One test body, instantiated per backend: a backend this build or machine lacks skips with a
// message (LoadModelOn).
std::vector<std::string> TestBackends();
// LoadModel on `device`'s backend. When that backend is not available here, null comes back with
// the reason in *unavailable (the caller skips); a load failure fails the test.
std::unique_ptr<engine::TransfoXlModel> LoadModelOn(const std::string& device,
                                                    const engine::ModelConfig& config,
                                                    uint32_t seed, std::string* unavailable);
// Relative tolerance of the exactness properties on `device`: 1e-5 on the CPU (float32), the
// CUDA backend's stated bound (1e-4 against the CPU) on a GPU, where one pass and its segments
// may take different kernels (split-key decode, tiles).
double ExactnessTolerance(const std::string& device);

// `n` token ids uniform in [0, vocab) from std::mt19937(seed).
std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed);

// Feeds `tokens` into `state` in consecutive pieces of the given lengths (1: decode steps) and
// returns every position's logits (LogitsMode::kAll). `model` is an engine::TransfoXlModel or an
// engine::api::Model; a failed Forward fails the test and ends the feed.
template <typename Model>
std::vector<float> FeedInPieces(Model& model, engine::SessionState& state,
                                const std::vector<int32_t>& tokens,
                                const std::vector<int64_t>& lengths) {
  std::vector<float> out;
  size_t pos = 0;
  for (int64_t len : lengths) {
    engine::Tensor logits;
    const absl::Status status =
        model.Forward({engine::SequenceInput{tokens.data() + pos, len, &state}},
                      engine::LogitsMode::kAll, &logits);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) return {};
    out.insert(out.end(), logits.data<float>(), logits.data<float>() + logits.numel());
    pos += static_cast<size_t>(len);
  }
  EXPECT_EQ(pos, tokens.size());
  return out;
}

// FeedInPieces into a new session of `model`.
template <typename Model>
std::vector<float> FeedNewSession(Model& model, const std::vector<int32_t>& tokens,
                                  const std::vector<int64_t>& lengths) {
  auto state = model.NewState();
  EXPECT_TRUE(state.ok()) << state.status();
  if (!state.ok()) return {};
  return FeedInPieces(model, *state, tokens, lengths);
}

// A fresh directory under testing::TempDir(), removed with its contents on destruction.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& label);
  ~ScopedTempDir();
  ScopedTempDir(ScopedTempDir&& other) noexcept;
  ScopedTempDir& operator=(ScopedTempDir&&) = delete;
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name
  std::string File(const std::string& name) const;

 private:
  std::string path_;
};

// Writes `bytes` to `path` (the test fails on I/O errors).
void WriteFile(const std::string& path, const std::string& bytes);

// A checkpoint directory: config.json from `config_json`, model.safetensors from `tensors`.
ScopedTempDir WriteCheckpointFiles(const std::string& config_json,
                                   const std::vector<RawTensor>& tensors);
// A valid checkpoint of `config` with RandomWeights(config, seed).
ScopedTempDir WriteCheckpoint(const engine::ModelConfig& config, uint32_t seed);

// A random Longformer encoder checkpoint: d_model 16 (2 heads of 8), 2 layers with windows 4 and
// 6, 40 ids, passes of up to 30 tokens, weights from std::mt19937(seed).
ScopedTempDir WriteRandomLongformer(uint32_t seed);
// A random block-sparse BigBird encoder checkpoint of the same shape: blocks of 4, one random
// block per row (windows over 28 tokens run block-sparse, padded to whole blocks), 66 positions
// (passes of up to 64 tokens).
ScopedTempDir WriteRandomBigBird(uint32_t seed);
// A random Funnel encoder checkpoint: d_model 16 (2 heads of 8), blocks [1, 1, 1] (the second
// run twice), one decoder layer, mean pooling with the first token separate and the last
// truncated: passes of 5 … 64 tokens.
ScopedTempDir WriteRandomFunnel(uint32_t seed);

// Succeeds when a and b have the same size and max|a − b| ≤ tol · max|b| (and nothing is NaN).
::testing::AssertionResult NearRelative(const std::vector<float>& a, const std::vector<float>& b,
                                        double tol);

}  // namespace mnemo::test
