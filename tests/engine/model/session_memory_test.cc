// ModelOptions::session_memory on the CPU backend: with bfloat16 or float16 session memory the
// key/value rings of dense and compressive layers (XL memory and compressed memory) hold 16-bit
// values, every other kind's state stays float32, a session holds exactly the bytes StateBytes
// says, dense layers' distance tables are 16-bit too, the logits are those of the float32 memory
// (the oracle) on keys, values and distance tables rounded as they are stored (within the float32
// tolerance; the distance from the unrounded oracle is printed), runs are reproducible bit for bit,
// and a snapshot carries its memory dtype: it restores exactly into a model with the same session
// memory and is refused (FAILED_PRECONDITION, naming the flag) by one with another.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "engine/api/model.h"
#include "engine/api/snapshot.h"
#include "engine/attention/dense_attention.h"
#include "engine/attention/lsh_attention.h"
#include "engine/attention/memory_compressed_attention.h"
#include "engine/attention/routing_attention.h"
#include "engine/attention/sparse_attention.h"
#include "engine/backend/backend.h"
#include "engine/model/model_options.h"
#include "engine/model/transfo_xl_model.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

std::unique_ptr<TransfoXlModel> Load(const std::string& dir, DType memory) {
  ModelOptions options;
  options.session_memory = memory;
  return test::LoadCpuModel(dir, options);
}

// The key/value rings 16-bit session memory stores as 16-bit: the XL and compressed memory of
// dense layers, the window of sparse layers (not their global store), LSH layers' history (not
// its buckets), memory-compressed layers' open block and compressed blocks, and routing layers'
// history (not its clusters).
std::vector<XlMemory*> SixteenBitRings(LayerState& layer) {
  if (auto* dense = dynamic_cast<DenseLayerState*>(&layer)) {
    return {&dense->memory, &dense->compressive.compressed};
  }
  if (auto* sparse = dynamic_cast<SparseLayerState*>(&layer)) return {&sparse->window};
  if (auto* lsh = dynamic_cast<LshLayerState*>(&layer)) return {&lsh->history};
  if (auto* mc = dynamic_cast<MemoryCompressedLayerState*>(&layer)) {
    return {&mc->block, &mc->compressed};
  }
  if (auto* routing = dynamic_cast<RoutingLayerState*>(&layer)) return {&routing->history};
  return {};
}

// Rounds a float32 tensor to `dtype` (bfloat16 or float16) and back, in place: what storing it as
// `dtype` keeps.
void RoundInPlace(const Tensor& t, DType dtype) {
  float* x = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    x[i] = dtype == DType::kBF16 ? BFloat16ToFloat(FloatToBFloat16(x[i]))
                                 : HalfToFloat(FloatToHalf(x[i]));
  }
}

// Rounds every such float32 ring of a state as `dtype` memory stores it.
void RoundRings(SessionState& state, DType dtype) {
  for (int64_t l = 0; l < state.num_layers(); ++l) {
    for (XlMemory* ring : SixteenBitRings(state.layer(l))) {
      for (Tensor* t : {&ring->keys(), &ring->values()}) {
        if (t->defined()) RoundInPlace(*t, dtype);
      }
    }
  }
}

// Rounds a float32 model's distance tables to `dtype` and back, in place: what a model with
// `dtype` session memory stores.
void RoundTables(const TransfoXlModel& model, DType dtype) {
  for (int64_t l = 0; l < model.config().n_layer; ++l) {
    const auto* dense = dynamic_cast<const DenseAttentionLayer*>(&model.attention(l));
    if (dense == nullptr) continue;
    ASSERT_EQ(dense->relative_table().dtype(), DType::kF32);
    RoundInPlace(dense->relative_table(), dtype);
  }
}

// The logits of every position of `doc` fed in segments of the given lengths (1: decode steps);
// with `round` set, the state's rings are rounded to it after every segment (RoundRings).
std::vector<float> Logits(TransfoXlModel& model, const std::vector<int32_t>& doc,
                          const std::vector<int64_t>& lengths,
                          std::optional<DType> round = std::nullopt) {
  SessionState state = *model.NewState();
  if (!round.has_value()) return test::FeedInPieces(model, state, doc, lengths);
  RoundRings(state, *round);  // the "zeros" memory's rows
  std::vector<float> out;
  size_t pos = 0;
  for (int64_t len : lengths) {
    const std::vector<int32_t> piece(doc.begin() + static_cast<int64_t>(pos),
                                     doc.begin() + static_cast<int64_t>(pos) + len);
    const std::vector<float> logits = test::FeedInPieces(model, state, piece, {len});
    RoundRings(state, *round);
    out.insert(out.end(), logits.begin(), logits.end());
    pos += static_cast<size_t>(len);
  }
  return out;
}

// max |a − b| over max |b|.
double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

struct Case {
  std::string name;
  ModelConfig config;
};

std::vector<Case> Cases() {
  ModelConfig dense = test::SmallConfig();
  dense.mem_len = 24;
  ModelConfig zeros = dense;
  zeros.memory_init = MemoryInit::kZeros;
  ModelConfig compressive = test::ConfigWith(
      {R"({"attention": "dense", "memory": "compressive", "compression": "conv1d",
           "compression_rate": 2, "cmem_len": 6})",
       R"({"attention": "dense", "memory": "compressive", "compression": "most_used",
           "compression_rate": 3, "cmem_len": 4})"},
      {}, 8);
  return {
      {"Dense", dense},
      {"DenseZeros", zeros},
      {"Compressive", compressive},
      {"MixedKinds", test::MixedKindsConfig()},
      // Sparse windows: a dilated window (decode steps read strided rows) beside patterns
      // read key by key with a float32 global store; and grouped-query windows.
      {"SparsePatterns",
       test::ConfigWith(
           {R"({"attention": "sparse", "window": 4, "dilation": [1, 2]})",
            R"({"attention": "sparse", "pattern": "fixed", "block": 5, "summary": 2,
                    "span": 12, "split": "union", "global_positions": [0, 3]})",
            R"({"attention": "sparse", "pattern": "window", "window": 3,
                    "global_tokens": [1, 2, 3], "max_global": 4})",
            R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 20})",
            R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 20,
                    "residual_attention": true})"},
           {}, 8)},
      {"Mistral", test::MistralConfig(1, 6)},
      // LSH histories under both sorts (the call sort reads every key).
      {"Lsh",
       test::ConfigWith({R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 4,
                    "history": 30})",
                         R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 4,
                    "history": 12, "sort": "call"})"},
                        {}, 8)},
      // Memory-compressed layers: blocks compressed within a call and read from the ring.
      {"MemoryCompressed",
       test::ConfigWith(
           {R"({"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 4})",
            R"({"attention": "memory_compressed", "compression_rate": 2, "cmem_len": 30})"},
           {}, 8)},
      {"Routing", test::ConfigWith({R"({"attention": "routing", "n_clusters": 2, "history": 9})",
                                    R"({"attention": "routing", "n_clusters": 3, "history": 64})"},
                                   {}, 8)}};
}

// 16-bit memory computes exactly what float32 memory computes on keys and values rounded as it
// stores them: within the float32 tolerance of that (only sum orders may differ).
constexpr double kSameValuesTol = 1e-5;

class SessionMemoryTest : public ::testing::TestWithParam<Case> {};

TEST_P(SessionMemoryTest, RingsAre16BitAndComputeOnTheRoundedValues) {
  const ModelConfig& config = GetParam().config;
  test::ScopedTempDir dir = test::WriteCheckpoint(config, 11);
  auto oracle = Load(dir.path(), DType::kF32);
  ASSERT_NE(oracle, nullptr);
  const std::vector<int32_t> doc = test::RandomTokens(40, config.vocab_size, 5);
  const std::vector<std::vector<int64_t>> cuts = {{40}, {1, 1, 1, 1, 9, 1, 26}, {3, 8, 12, 17}};
  for (const DType memory : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(memory));
    auto model = Load(dir.path(), memory);
    ASSERT_NE(model, nullptr);
    EXPECT_EQ(model->session_memory(), memory);
    auto rounded_oracle = Load(dir.path(), DType::kF32);  // float32, its tables rounded
    ASSERT_NE(rounded_oracle, nullptr);
    RoundTables(*rounded_oracle, memory);
    for (int64_t l = 0; l < config.n_layer; ++l) {
      if (const auto* dense = dynamic_cast<const DenseAttentionLayer*>(&model->attention(l))) {
        EXPECT_EQ(dense->relative_table().dtype(), memory) << "layer " << l;
      }
    }
    SessionState state = *model->NewState();
    const SessionState wide = *oracle->NewState();
    EXPECT_EQ(state.bytes(), model->StateBytes());
    size_t saved = 0;  // half of every 16-bit ring's float32 bytes
    for (int64_t l = 0; l < config.n_layer; ++l) {
      const std::vector<XlMemory*> rings = SixteenBitRings(state.layer(l));
      if (rings.empty()) {  // other kinds keep float32 state
        EXPECT_EQ(state.layer(l).bytes(), wide.layer(l).bytes()) << "layer " << l;
        if (state.layer(l).ring() != nullptr && state.layer(l).ring()->keys().defined()) {
          EXPECT_EQ(state.layer(l).ring()->dtype(), DType::kF32) << "layer " << l;
        }
        continue;
      }
      for (XlMemory* ring : rings) {
        if (!ring->keys().defined()) continue;  // (no compressed memory)
        EXPECT_EQ(ring->dtype(), memory) << "layer " << l;
        saved += ring->bytes();
      }
      if (const auto* dense = dynamic_cast<const DenseLayerState*>(&state.layer(l));
          dense != nullptr && config.layer(l).dense.compressive()) {
        EXPECT_EQ(dense->compressive.hidden.dtype(), DType::kF32) << "layer " << l;
      }
      EXPECT_EQ(model->LayerStateBytes(l), state.layer(l).bytes()) << "layer " << l;
    }
    EXPECT_GT(saved, 0u);
    EXPECT_EQ(model->StateBytes() + saved, oracle->StateBytes());

    for (const std::vector<int64_t>& cut : cuts) {
      const std::vector<float> a = Logits(*model, doc, cut);
      const std::vector<float> b = Logits(*oracle, doc, cut);
      const std::vector<float> rounded = Logits(*rounded_oracle, doc, cut, memory);
      ASSERT_EQ(a.size(), b.size());
      ASSERT_EQ(a.size(), rounded.size());
      EXPECT_LE(RelativeError(a, rounded), kSameValuesTol) << "segments starting with " << cut[0];
      const double error = RelativeError(a, b);
      if (cut.size() > 1) {  // (one segment reads no memory: the same logits)
        EXPECT_GT(error, 0.0) << "16-bit memory changed nothing: is it read as stored?";
      }
      std::fprintf(stderr, "session memory %s, %s, segments from %lld: max error %.3g\n",
                   DTypeName(memory), GetParam().name.c_str(), static_cast<long long>(cut[0]),
                   error);
      // Reproducible bit for bit.
      const std::vector<float> again = Logits(*model, doc, cut);
      EXPECT_EQ(std::memcmp(a.data(), again.data(), a.size() * sizeof(float)), 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SessionMemoryTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(ParseSessionMemoryTest, NamesAndErrors) {
  EXPECT_EQ(*ParseSessionMemory("float32"), DType::kF32);
  EXPECT_EQ(*ParseSessionMemory("bfloat16"), DType::kBF16);
  EXPECT_EQ(*ParseSessionMemory("float16"), DType::kF16);
  for (const char* bad : {"int32", "bf16", "", "Float16"}) {
    const auto parsed = ParseSessionMemory(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("--session-memory must be float32, bfloat16 or"),
              std::string::npos)
        << parsed.status();
  }
}

// ---- Snapshots -------------------------------------------------------------------------------

std::unique_ptr<api::Model> LoadApi(const std::string& dir, DType memory) {
  api::LoadOptions options;
  options.model.session_memory = memory;
  auto model = api::Model::Load(dir, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

std::vector<float> Feed(const api::Model& model, SessionState& state,
                        const std::vector<int32_t>& tokens, const std::vector<int64_t>& lengths) {
  return test::FeedInPieces(model, state, tokens, lengths);
}

TEST(SessionMemorySnapshotTest, RestoresExactlyAndOnlyIntoTheSameMemoryDtype) {
  const ModelConfig config = Cases()[2].config;  // compressive: XL and compressed rings
  test::ScopedTempDir dir = test::WriteCheckpoint(config, 7);
  auto bf16 = LoadApi(dir.path(), DType::kBF16);
  auto f16 = LoadApi(dir.path(), DType::kF16);
  auto f32 = LoadApi(dir.path(), DType::kF32);
  ASSERT_TRUE(bf16 != nullptr && f16 != nullptr && f32 != nullptr);
  const auto identity = api::IdentityOf(*bf16);
  ASSERT_TRUE(identity.ok()) << identity.status();

  const std::vector<int32_t> first = test::RandomTokens(13, config.vocab_size, 11);
  const std::vector<int32_t> then = test::RandomTokens(11, config.vocab_size, 12);
  SessionState state = *bf16->NewState();
  Feed(*bf16, state, first, {7, 5, 1});
  api::SnapshotSession session;
  session.id = "0123456789abcdef0123456789abcdef";
  session.model_name = "tiny";
  const auto bytes = api::WriteSnapshot(*bf16, *identity, state, nullptr, session);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_NE(bytes->find("\"session_memory\":\"bfloat16\""), std::string::npos);

  auto restored = api::ReadSnapshot(*bf16, *identity, *bytes);
  ASSERT_TRUE(restored.ok()) << restored.status();
  const std::vector<float> a = Feed(*bf16, state, then, {4, 1, 1, 5});
  const std::vector<float> b = Feed(*bf16, restored->state, then, {4, 1, 1, 5});
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
      << "logits differ after the restore";

  // The same checkpoint served with other session memory: same fingerprint, other state layout.
  for (const api::Model* other : {f16.get(), f32.get()}) {
    const auto refused = api::ReadSnapshot(*other, *identity, *bytes);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
    EXPECT_NE(refused.status().message().find("session memory is bfloat16"), std::string::npos)
        << refused.status();
    EXPECT_NE(refused.status().message().find("--session-memory bfloat16"), std::string::npos)
        << refused.status();
  }
}

TEST(SessionMemorySnapshotTest, AFloat32MemorySnapshotIsRefusedBy16BitMemory) {
  const ModelConfig config = test::SmallConfig();
  test::ScopedTempDir dir = test::WriteCheckpoint(config, 3);
  auto f32 = LoadApi(dir.path(), DType::kF32);
  auto bf16 = LoadApi(dir.path(), DType::kBF16);
  ASSERT_TRUE(f32 != nullptr && bf16 != nullptr);
  const auto identity = api::IdentityOf(*f32);
  ASSERT_TRUE(identity.ok()) << identity.status();
  SessionState state = *f32->NewState();
  Feed(*f32, state, test::RandomTokens(9, config.vocab_size, 4), {9});
  api::SnapshotSession session;
  session.id = "0123456789abcdef0123456789abcdef";
  session.model_name = "tiny";
  const auto bytes = api::WriteSnapshot(*f32, *identity, state, nullptr, session);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_TRUE(api::ReadSnapshot(*f32, *identity, *bytes).ok());
  const auto refused = api::ReadSnapshot(*bf16, *identity, *bytes);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
}

}  // namespace
}  // namespace mnemo::engine
