// engine/tensor/sparse_weight (which pruned matrices get which sparse form) and pruned models
// executed from sparse forms against the same models executed densely: logits within 1e-5
// relative through prefill, decode and batches, for unstructured (CSR) and 2:4 pruning.
#include "engine/tensor/sparse_weight.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/model/transfo_xl_model.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

// A [rows, cols] matrix with `keep` of every `group` entries nonzero (positions random).
Tensor Pruned(int64_t rows, int64_t cols, int keep, int group, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Tensor t = Tensor::Zeros(DType::kF32, {rows, cols});
  float* d = t.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols; g += group) {
      std::vector<int> idx(static_cast<size_t>(group));
      for (int i = 0; i < group; ++i) idx[i] = i;
      std::shuffle(idx.begin(), idx.end(), rng);
      for (int i = 0; i < keep && g + idx[i] < cols; ++i) d[r * cols + g + idx[i]] = normal(rng);
    }
  }
  return t;
}

TEST(SparseWeightTest, TheFormatThatMovesFewestBytesIsChosenOnlyWhenItPays) {
  // 10% unstructured → CSR (0.6 bytes per element vs 4).
  auto csr = PlanSparseWeight(Pruned(64, 80, 1, 10, 1));
  ASSERT_NE(csr, nullptr);
  EXPECT_EQ(csr->format, SparseFormat::kCsr);
  EXPECT_NEAR(csr->density, 0.1, 1e-9);
  // 2:4 → the 2:4 layout (2.25 bytes per element beats CSR's 3).
  auto s24 = PlanSparseWeight(Pruned(64, 80, 2, 4, 2));
  ASSERT_NE(s24, nullptr);
  EXPECT_EQ(s24->format, SparseFormat::k24);
  // 2:4 but much sparser (1 of 4) → CSR is smaller (1.5 bytes).
  auto sparse24 = PlanSparseWeight(Pruned(64, 80, 1, 4, 3));
  ASSERT_NE(sparse24, nullptr);
  EXPECT_EQ(sparse24->format, SparseFormat::kCsr);
  // 3 of 4 → neither format saves 20%: dense.
  EXPECT_EQ(PlanSparseWeight(Pruned(64, 80, 3, 4, 4)), nullptr);
  // 50% unstructured: CSR 3 bytes ≤ 0.8·4 → CSR; 60%: 3.6 > 3.2 → dense.
  auto half = PlanSparseWeight(Pruned(64, 80, 5, 10, 5));
  ASSERT_NE(half, nullptr);
  EXPECT_EQ(half->format, SparseFormat::kCsr);
  EXPECT_EQ(PlanSparseWeight(Pruned(64, 80, 6, 10, 6)), nullptr);
  // One extra nonzero breaks the 2:4 pattern: CSR at 50%.
  Tensor broken = Pruned(64, 80, 2, 4, 7);
  float* d = broken.data<float>();
  for (int i = 0; i < 4; ++i) d[i] = 1.0f + static_cast<float>(i);
  auto from_broken = PlanSparseWeight(broken);
  ASSERT_NE(from_broken, nullptr);
  EXPECT_EQ(from_broken->format, SparseFormat::kCsr);
  // A product of many rows reads the sparse form once per 8-row tile: not worth it at 50%.
  EXPECT_TRUE(SparsePaysFor(*csr, 1, 64 * 80 * 4));
  EXPECT_TRUE(SparsePaysFor(*csr, 32, 64 * 80 * 4));
  EXPECT_FALSE(SparsePaysFor(*half, 9, 64 * 80 * 4));
}

// Magnitude-prunes every matrix the model multiplies by: keeps the `keep` largest |w| of each
// group of `group` consecutive inputs (unstructured: group = a whole row, keep = a fraction).
void Prune(std::vector<test::RawTensor>& tensors, double keep_fraction, bool two_four) {
  for (test::RawTensor& t : tensors) {
    const std::string& n = t.name;
    const bool matrix = n.ends_with("qkv.weight") || n.ends_with("attn.o.weight") ||
                        n.ends_with("fc1.weight") || n.ends_with("fc2.weight") ||
                        n == "lm_head.weight";
    if (!matrix) continue;
    auto* w = reinterpret_cast<float*>(t.bytes.data());
    const int64_t cols = t.shape[1], rows = t.shape[0];
    const int64_t group = two_four ? 4 : cols;
    const int64_t keep = two_four ? 2 : static_cast<int64_t>(std::ceil(keep_fraction * cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < cols; g += group) {
        float* p = w + r * cols + g;
        const int64_t n_in = std::min(group, cols - g);
        std::vector<float> mags(p, p + n_in);
        for (float& m : mags) m = std::abs(m);
        std::sort(mags.begin(), mags.end(), std::greater<>());
        const float cut = keep < n_in ? mags[keep] : -1.0f;
        int64_t kept = 0;
        for (int64_t i = 0; i < n_in; ++i) {
          if (std::abs(p[i]) > cut && kept < keep) {
            ++kept;
          } else {
            p[i] = 0.0f;
          }
        }
      }
    }
  }
}

std::vector<float> RunCalls(TransfoXlModel& model, const std::vector<std::vector<int32_t>>& calls) {
  SessionState a = *model.NewState(), b = *model.NewState();
  std::vector<float> out;
  for (const auto& ids : calls) {
    // Two sequences in one batch (a and b) so batched sparse products are covered too.
    Tensor logits;
    const absl::Status s = model.Forward(
        {SequenceInput{ids.data(), static_cast<int64_t>(ids.size()), &a},
         SequenceInput{ids.data(), static_cast<int64_t>(ids.size()) - 1 + (ids.size() == 1), &b}},
        LogitsMode::kAll, &logits);
    EXPECT_TRUE(s.ok()) << s;
    out.insert(out.end(), logits.data<float>(), logits.data<float>() + logits.numel());
  }
  return out;
}

TEST(SparseWeightTest, PrunedModelsRunFromSparseFormsLikeDense) {
  struct Case {
    const char* name;
    double keep;
    bool two_four;
  };
  for (const Case& k : {Case{"90% unstructured", 0.1, false}, Case{"80% unstructured", 0.2, false},
                        Case{"2:4", 0.5, true}}) {
    SCOPED_TRACE(k.name);
    ModelConfig c = test::SmallConfig();
    c.d_model = 32;
    c.d_head = 8;
    c.d_inner = 64;
    c.vocab_size = 64;
    std::vector<test::RawTensor> weights = test::RandomWeights(c, 3);
    Prune(weights, k.keep, k.two_four);
    test::ScopedTempDir dir = test::WriteCheckpointFiles(test::ConfigJson(c), weights);
    auto sparse = TransfoXlModel::Load(dir.path(), MakeCpuBackend(), ModelOptions{true});
    auto dense = TransfoXlModel::Load(dir.path(), MakeCpuBackend(), ModelOptions{false});
    ASSERT_TRUE(sparse.ok() && dense.ok());
    EXPECT_TRUE((*dense)->SparseWeightSummary().empty());
    // qkv, o, fc1, fc2 of both layers and the head.
    EXPECT_EQ((*sparse)->SparseWeightSummary().size(), 9u);
    std::mt19937 rng(5);
    std::vector<std::vector<int32_t>> calls;
    for (int len : {9, 3, 1, 1, 1, 20, 1}) {
      std::vector<int32_t> ids(static_cast<size_t>(len));
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % c.vocab_size);
      calls.push_back(ids);
    }
    EXPECT_TRUE(test::NearRelative(RunCalls(**sparse, calls), RunCalls(**dense, calls), 1e-5));
  }
}

}  // namespace
}  // namespace mnemo::engine
