// The CUDA backend against the CPU backend (the oracle): every op on random inputs over a sweep
// of shapes, the relative attention over memories empty / partial / full / wrapped and ragged
// batches of mixed fill levels, whole-model logits, 200-token greedy generation, clone and
// host offload. Tests that need a GPU skip with a message where there is none; the work planner
// and backend selection are tested everywhere.
//
// Tolerance (float32 on both sides, no TF32): ops and attention ‖gpu − cpu‖∞ ≤ 1e-5 · ‖cpu‖∞
// (summation order differs; float32 rounding is ~1e-7 per add); whole-model logits ≤ 1e-4.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "engine/attention/dense_attention.h"
#include "engine/attention/linear_attention.h"
#include "engine/attention/lsh_attention.h"
#include "engine/backend/backend.h"
#include "engine/model/transfo_xl_model.h"
#include "engine/tensor/sparse_weight.h"
#include "gtest/gtest.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/convert.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

namespace kc = kernels::cuda;

constexpr double kOpTol = 1e-5;
constexpr double kModelTol = 1e-4;

// ---- Work planning (no device needed) ------------------------------------------------------

// Every (sequence, query, key) the attention must visit is covered by exactly one work item.
void ExpectPlanCovers(const std::vector<kc::AttentionShapeInput>& seqs, int heads,
                      int64_t mem_len_max, bool same_length, int min_blocks,
                      int64_t cmem_len_max = 0) {
  const kc::AttentionPlan plan = kc::PlanRelativeAttention(seqs, heads, mem_len_max, same_length,
                                                           min_blocks, 128, cmem_len_max);
  std::set<std::tuple<int, int64_t, int64_t>> seen;  // (seq, query, key)
  std::set<int64_t> partial_rows;
  for (const kc::AttentionWorkItem& item : plan.items) {
    ASSERT_LE(item.q_count, plan.query_tile);
    ASSERT_GT(item.q_count, 0);
    const kc::AttentionShapeInput& s = seqs[static_cast<size_t>(item.seq)];
    for (int q = 0; q < item.q_count; ++q) {
      const int64_t i = item.q_begin + q;
      ASSERT_LT(i, s.query_len);
      const int64_t first =
          kc::FirstVisibleKey(i, s.memory_len, s.query_len, mem_len_max, same_length);
      for (int64_t j = std::max(item.k_begin, first); j < item.k_end && j <= s.memory_len + i;
           ++j) {
        EXPECT_TRUE(seen.insert({item.seq, i, j}).second) << "key visited twice";
      }
      if (item.partial >= 0) {
        EXPECT_TRUE(partial_rows.insert(item.partial + q).second);
      }
    }
  }
  int64_t expected = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    for (int64_t i = 0; i < seqs[b].query_len; ++i) {
      const int64_t first =
          kc::FirstVisibleKey(i, seqs[b].memory_len, seqs[b].query_len, mem_len_max, same_length);
      expected += std::max<int64_t>(0, seqs[b].memory_len + i - first + 1);
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), expected);
  EXPECT_EQ(static_cast<int64_t>(partial_rows.size()), plan.partial_rows);
  int64_t combined = 0;
  for (const kc::AttentionCombineItem& c : plan.combines) {
    EXPECT_GE(c.splits, 2);
    combined += c.splits * c.q_count;
  }
  EXPECT_EQ(combined, plan.partial_rows);
}

TEST(CudaAttentionPlanTest, CoversEveryVisibleKeyOnce) {
  for (bool same_length : {false, true}) {
    ExpectPlanCovers({{1, 0}}, 2, 8, same_length, 1);
    ExpectPlanCovers({{1, 1600}}, 16, 1600, same_length, 264);  // split decode
    ExpectPlanCovers({{37, 5}, {1, 0}, {8, 20}}, 3, 20, same_length, 4);
    ExpectPlanCovers({{64, 100}, {9, 100}}, 2, 100, same_length, 1000);  // split prefill
  }
}

// A sliding window of W keys (dilation 1) runs as the relative-attention kernel without its
// positional term, with same_length and mem_len_max = W: every query sees exactly the keys
// M + i − W + 1 … M + i (those that exist), and the work items stay within a query tile of the
// band, so a long segment's work grows with T·W, not T².
TEST(CudaAttentionPlanTest, SlidingWindowsRunAsBands) {
  for (const int64_t window : {1, 5, 64, 512}) {
    SCOPED_TRACE(testing::Message() << "window " << window);
    for (const kc::AttentionShapeInput s : std::vector<kc::AttentionShapeInput>{
             {1, 0}, {1, window - 1}, {3, 0}, {700, 0}, {700, window - 1}, {2000, window - 1}}) {
      for (int64_t i = 0; i < s.query_len; ++i) {
        const int64_t want = std::max<int64_t>(0, s.memory_len + i - window + 1);
        ASSERT_EQ(kc::FirstVisibleKey(i, s.memory_len, s.query_len, window, true), want)
            << "query " << i << " of " << s.query_len << ", memory " << s.memory_len;
      }
      ExpectPlanCovers({s}, 4, window, true, 64);
      const kc::AttentionPlan plan = kc::PlanRelativeAttention({s}, 4, window, true, 64);
      int64_t keys = 0;
      for (const kc::AttentionWorkItem& item : plan.items) keys += item.k_end - item.k_begin;
      EXPECT_LE(keys, (s.query_len + plan.query_tile) * (window + plan.query_tile));
    }
  }
}

TEST(CudaAttentionPlanTest, DecodeUsesOneQueryTilesAndSplitsLongMemories) {
  const kc::AttentionPlan plan = kc::PlanRelativeAttention({{1, 1600}}, 16, 1600, false, 264);
  EXPECT_EQ(plan.query_tile, kc::kDecodeQueryTile);
  // 1601 keys in chunks of 64 (one key tile per decode warp): 26 chunks × 16 heads ≥ 264.
  EXPECT_EQ(plan.items.size(), 26u);
  ASSERT_EQ(plan.combines.size(), 1u);
  for (size_t i = 0; i + 1 < plan.items.size(); ++i) {
    EXPECT_EQ(plan.items[i].k_end - plan.items[i].k_begin, kc::kDecodeChunkUnit);
    EXPECT_EQ(plan.items[i].k_end, plan.items[i + 1].k_begin);
  }
}

TEST(CudaAttentionPlanTest, DecodeGridDependsOnlyOnTheBatch) {
  // A recorded decode step replays one grid while memories fill: same items and partial rows for
  // every fill level, only the key ranges move.
  const kc::AttentionPlan full =
      kc::PlanRelativeAttention({{1, 600}, {1, 600}}, 8, 600, false, 264);
  for (int64_t fill : {0, 1, 100, 599}) {
    for (bool same_length : {false, true}) {
      const kc::AttentionPlan plan =
          kc::PlanRelativeAttention({{1, fill}, {1, 600}}, 8, 600, same_length, 264);
      EXPECT_EQ(plan.items.size(), full.items.size()) << fill;
      EXPECT_EQ(plan.combines.size(), full.combines.size());
      EXPECT_EQ(plan.partial_rows, full.partial_rows);
      ExpectPlanCovers({{1, fill}, {1, 600}}, 8, 600, same_length, 264);
    }
  }
}

// Compressive layers: memory_len counts the compressed slots ahead of the XL memory, beyond
// mem_len_max. Every key is still covered, and a decode grid stays the same while both fill.
TEST(CudaAttentionPlanTest, CompressedMemoryKeysAreCoveredAndDecodeGridsStayFixed) {
  for (bool same_length : {false, true}) {
    ExpectPlanCovers({{1, 40 + 16}}, 4, 40, same_length, 264, 16);
    ExpectPlanCovers({{1, 3}, {1, 40 + 16}}, 4, 40, same_length, 8, 16);
    ExpectPlanCovers({{9, 40 + 7}, {30, 12}}, 2, 40, same_length, 64, 16);
    ExpectPlanCovers({{1, 600 + 300}}, 8, 600, same_length, 264, 300);
  }
  const kc::AttentionPlan full =
      kc::PlanRelativeAttention({{1, 600 + 300}, {1, 600 + 300}}, 8, 600, false, 264, 128, 300);
  for (int64_t fill : {0, 1, 599, 600, 700, 899}) {
    const kc::AttentionPlan plan =
        kc::PlanRelativeAttention({{1, fill}, {1, 600 + 300}}, 8, 600, false, 264, 128, 300);
    EXPECT_EQ(plan.items.size(), full.items.size()) << fill;
    EXPECT_EQ(plan.combines.size(), full.combines.size()) << fill;
    EXPECT_EQ(plan.partial_rows, full.partial_rows) << fill;
  }
}

TEST(CudaAttentionPlanTest, DecodeChunksShrinkAsTheBatchGrows) {
  for (auto [batch, items_per_seq] : {std::pair{8, 4}, {64, 1}}) {
    std::vector<kc::AttentionShapeInput> seqs(static_cast<size_t>(batch), {1, 1600});
    const kc::AttentionPlan plan = kc::PlanRelativeAttention(seqs, 16, 1600, false, 264);
    EXPECT_EQ(plan.items.size(), static_cast<size_t>(batch * items_per_seq)) << batch;
  }
}

TEST(CudaAttentionPlanTest, LargeBatchesAreNotSplit) {
  std::vector<kc::AttentionShapeInput> seqs(256, {1, 1600});
  const kc::AttentionPlan plan = kc::PlanRelativeAttention(seqs, 16, 1600, false, 264);
  EXPECT_EQ(plan.items.size(), 256u);
  EXPECT_TRUE(plan.combines.empty());
  EXPECT_EQ(plan.partial_rows, 0);
}

TEST(CudaBackendSelectionTest, NamesAreParsed) {
  EXPECT_EQ(MakeBackend("tpu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeBackend("cuda:x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeBackend("cuda:99").status().code(), absl::StatusCode::kUnavailable);
  auto cpu = MakeBackend("cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->name(), "cpu");
}

// ---- Against the CPU backend (GPU needed) --------------------------------------------------

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kc::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device on this machine: GPU test not run";
    auto gpu = MakeCudaBackend(0);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
    cpu_ = MakeCpuBackend();
  }

  Tensor Random(std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f) {
    Tensor t = Tensor::Zeros(DType::kF32, std::move(shape));
    std::uniform_real_distribution<float> dist(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng_);
    return t;
  }
  Tensor Up(const Tensor& host) {
    auto t = gpu_->CopyFromHost(host);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : Tensor();
  }
  // A device tensor of `shape` poisoned with NaN, so an element the kernel fails to write shows.
  Tensor Poisoned(std::vector<int64_t> shape) {
    Tensor host = Tensor::Zeros(DType::kF32, std::move(shape));
    std::fill(host.data<float>(), host.data<float>() + host.numel(), std::nanf(""));
    return Up(host);
  }
  std::vector<float> Down(const Tensor& t) {
    auto host = gpu_->CopyToHost(t);
    EXPECT_TRUE(host.ok()) << host.status();
    if (!host.ok()) return {};
    return std::vector<float>(host->data<float>(), host->data<float>() + host->numel());
  }
  static std::vector<float> Values(const Tensor& t) {
    return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
  }

  std::mt19937 rng_{42};
  std::unique_ptr<Backend> gpu_, cpu_;
};

TEST_F(CudaBackendTest, LinearMatchesCpu) {
  // rows = 1 runs the own matrix-vector kernel (or cuBLAS's where in % 4 ≠ 0); more rows GEMM.
  for (auto [rows, in, out] : {std::tuple{1, 64, 96},
                               {1, 1024, 3072},
                               {1, 4096, 1023},
                               {1, 33, 7},
                               {1, 128, 32001},
                               {7, 33, 5},
                               {130, 257, 129},
                               {512, 128, 64}}) {
    for (bool with_bias : {false, true}) {
      const Tensor x = Random({rows, in}), w = Random({out, in}), b = Random({out});
      Tensor y_cpu = Tensor::Zeros(DType::kF32, {rows, out});
      ASSERT_TRUE(cpu_->Linear(x, w, with_bias ? &b : nullptr, y_cpu).ok());
      Tensor y = Poisoned({rows, out});
      const Tensor b_dev = Up(b);
      ASSERT_TRUE(gpu_->Linear(Up(x), Up(w), with_bias ? &b_dev : nullptr, y).ok());
      EXPECT_TRUE(test::NearRelative(Down(y), Values(y_cpu), kOpTol))
          << rows << "x" << in << "→" << out << " bias " << with_bias;
    }
  }
}

// Pruned weights: the device CSR (16- and 32-bit columns) and 2:4 kernels against the CPU's, over
// shapes, densities and row counts spanning several 8-row tiles, with and without a bias.
TEST_F(CudaBackendTest, SparseLinearMatchesCpu) {
  for (auto [out, in] : {std::pair{64, 96}, {257, 128}, {33, 70000}}) {
    for (bool two_four : {false, true}) {
      Tensor w = Random({out, in});
      std::uniform_real_distribution<float> u(0.0f, 1.0f);
      float* wp = w.data<float>();
      for (int64_t o = 0; o < out; ++o) {
        for (int64_t k = 0; k < in; ++k) {
          const bool keep = two_four ? (k % 4 == (o % 3)) || (k % 4 == 3) : u(rng_) < 0.1f;
          if (!keep) wp[o * in + k] = 0.0f;
        }
      }
      const std::shared_ptr<const SparseWeight> plan = PlanSparseWeight(w);
      ASSERT_NE(plan, nullptr);
      EXPECT_EQ(plan->format, two_four ? SparseFormat::k24 : SparseFormat::kCsr);
      auto dev = CopySparseWeightTo(*plan, *gpu_);
      ASSERT_TRUE(dev.ok()) << dev.status();
      for (int64_t rows : {1, 3, 8, 9, 20}) {
        for (bool with_bias : {false, true}) {
          const Tensor x = Random({rows, in}), b = Random({out});
          Tensor y_cpu = Tensor::Zeros(DType::kF32, {rows, out});
          ASSERT_TRUE(cpu_->SparseLinear(x, *plan, with_bias ? &b : nullptr, y_cpu).ok());
          Tensor y = Poisoned({rows, out});
          const Tensor b_dev = Up(b);
          const absl::Status status =
              gpu_->SparseLinear(Up(x), **dev, with_bias ? &b_dev : nullptr, y);
          ASSERT_TRUE(status.ok()) << status;
          EXPECT_TRUE(test::NearRelative(Down(y), Values(y_cpu), kOpTol))
              << out << "x" << in << " 2:4 " << two_four << " rows " << rows << " bias "
              << with_bias;
        }
      }
    }
  }
  // A weight without a device copy is refused, not read from host memory.
  Tensor w = Random({8, 16});
  std::fill(w.data<float>(), w.data<float>() + 100, 0.0f);
  const auto plan = PlanSparseWeight(w);
  ASSERT_NE(plan, nullptr);
  Tensor y = Poisoned({1, 8});
  EXPECT_EQ(gpu_->SparseLinear(Up(Random({1, 16})), *plan, nullptr, y).code(),
            absl::StatusCode::kFailedPrecondition);
}

// 16-bit weights (bf16/f16 checkpoints keep their type on the GPU): a single row runs the
// matrix-vector kernel, which widens each weight exactly, so it matches float32 arithmetic on the
// same values; more rows run on the tensor cores with the activations rounded to the weight type,
// which matches the CPU on the rounded activations up to summation order.
TEST_F(CudaBackendTest, SixteenBitWeightsMatchCpuOnTheSameValues) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    auto round = [&](float v) {
      return dtype == DType::kBF16 ? BFloat16ToFloat(FloatToBFloat16(v))
                                   : HalfToFloat(FloatToHalf(v));
    };
    for (auto [rows, in, out] :
         {std::tuple{1, 1024, 3072}, {1, 40, 9}, {1, 12, 5}, {37, 96, 130}}) {
      Tensor w = Random({out, in}), x = Random({rows, in});
      const Tensor b = Random({out});
      Tensor w16 = Tensor::Empty(dtype, {out, in});
      for (int64_t i = 0; i < w.numel(); ++i) {
        w.data<float>()[i] = round(w.data<float>()[i]);
        w16.data<uint16_t>()[i] = dtype == DType::kBF16 ? FloatToBFloat16(w.data<float>()[i])
                                                        : FloatToHalf(w.data<float>()[i]);
      }
      Tensor x_ref = Tensor::Zeros(DType::kF32, {rows, in});
      ASSERT_TRUE(cpu_->Copy(x, x_ref).ok());
      if (rows > 1 || in % 8 != 0) {  // the tensor-core path rounds the activations
        for (int64_t i = 0; i < x_ref.numel(); ++i) {
          x_ref.data<float>()[i] = round(x_ref.data<float>()[i]);
        }
      }
      Tensor y_cpu = Tensor::Zeros(DType::kF32, {rows, out});
      ASSERT_TRUE(cpu_->Linear(x_ref, w, &b, y_cpu).ok());
      Tensor y = Poisoned({rows, out});
      const Tensor b_dev = Up(b);
      const absl::Status status = gpu_->Linear(Up(x), Up(w16), &b_dev, y);
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_TRUE(test::NearRelative(Down(y), Values(y_cpu), kOpTol))
          << DTypeName(dtype) << " " << rows << "x" << in << "→" << out;
    }
    // Embedding rows widen exactly.
    const Tensor table = Random({20, 16});
    Tensor table16 = Tensor::Empty(dtype, {20, 16}),
           table_ref = Tensor::Zeros(DType::kF32, {20, 16});
    for (int64_t i = 0; i < table.numel(); ++i) {
      const float v = round(table.data<float>()[i]);
      table_ref.data<float>()[i] = v;
      table16.data<uint16_t>()[i] = dtype == DType::kBF16 ? FloatToBFloat16(v) : FloatToHalf(v);
    }
    const std::vector<int32_t> ids = {3, 19, 0};
    Tensor e_cpu = Tensor::Zeros(DType::kF32, {3, 16}), e = Poisoned({3, 16});
    ASSERT_TRUE(cpu_->Embedding(table_ref, ids, 1.5f, e_cpu).ok());
    ASSERT_TRUE(gpu_->Embedding(Up(table16), ids, 1.5f, e).ok());
    EXPECT_EQ(Down(e), Values(e_cpu));
  }
}

TEST_F(CudaBackendTest, LinearBiasActivationMatchesCpu) {
  for (auto [rows, in, out] : {std::tuple{1, 1024, 4096}, {1, 30, 17}, {5, 64, 33}}) {
    for (Activation act : {Activation::kRelu, Activation::kGelu}) {
      const Tensor x = Random({rows, in}), w = Random({out, in}), b = Random({out});
      Tensor y_cpu = Tensor::Zeros(DType::kF32, {rows, out});
      ASSERT_TRUE(cpu_->LinearBiasActivation(x, w, b, act, y_cpu).ok());
      Tensor y = Poisoned({rows, out});
      ASSERT_TRUE(gpu_->LinearBiasActivation(Up(x), Up(w), Up(b), act, y).ok());
      EXPECT_TRUE(test::NearRelative(Down(y), Values(y_cpu), kOpTol)) << rows << "x" << in;
    }
  }
}

TEST_F(CudaBackendTest, RowOpsMatchCpu) {
  for (auto [rows, cols] : {std::pair{1, 1}, {3, 31}, {17, 1024}, {65, 4097}}) {
    const Tensor x = Random({rows, cols}, -3, 5), g = Random({cols}), b = Random({cols});
    Tensor ln_cpu = Tensor::Zeros(DType::kF32, {rows, cols});
    ASSERT_TRUE(cpu_->LayerNorm(x, g, b, 1e-5f, ln_cpu).ok());
    Tensor ln = Poisoned({rows, cols});
    ASSERT_TRUE(gpu_->LayerNorm(Up(x), Up(g), Up(b), 1e-5f, ln).ok());
    EXPECT_TRUE(test::NearRelative(Down(ln), Values(ln_cpu), kOpTol)) << "LayerNorm " << cols;
    // In place, as the post-LN model calls it.
    Tensor inplace = Up(x);
    ASSERT_TRUE(gpu_->LayerNorm(inplace, Up(g), Up(b), 1e-5f, inplace).ok());
    EXPECT_TRUE(test::NearRelative(Down(inplace), Values(ln_cpu), kOpTol));

    // Residual + LayerNorm, into another tensor (pre-LN) and in place (post-LN).
    const Tensor delta = Random({rows, cols});
    Tensor x_cpu = Tensor::Zeros(DType::kF32, {rows, cols}), res_cpu = x_cpu;
    ASSERT_TRUE(cpu_->Copy(x, x_cpu).ok());
    res_cpu = Tensor::Zeros(DType::kF32, {rows, cols});
    ASSERT_TRUE(cpu_->AddLayerNorm(x_cpu, delta, g, b, 1e-5f, res_cpu).ok());
    Tensor x_gpu = Up(x), res = Poisoned({rows, cols});
    ASSERT_TRUE(gpu_->AddLayerNorm(x_gpu, Up(delta), Up(g), Up(b), 1e-5f, res).ok());
    EXPECT_TRUE(test::NearRelative(Down(x_gpu), Values(x_cpu), kOpTol));
    EXPECT_TRUE(test::NearRelative(Down(res), Values(res_cpu), kOpTol));
    Tensor same = Up(x);
    ASSERT_TRUE(gpu_->AddLayerNorm(same, Up(delta), Up(g), Up(b), 1e-5f, same).ok());
    EXPECT_TRUE(test::NearRelative(Down(same), Values(res_cpu), kOpTol));

    for (Activation act : {Activation::kRelu, Activation::kGelu}) {
      Tensor y_cpu = Tensor::Zeros(DType::kF32, {rows, cols});
      ASSERT_TRUE(cpu_->Copy(x, y_cpu).ok());
      ASSERT_TRUE(cpu_->BiasActivation(b, act, y_cpu).ok());
      Tensor y = Up(x);
      ASSERT_TRUE(gpu_->BiasActivation(Up(b), act, y).ok());
      EXPECT_TRUE(test::NearRelative(Down(y), Values(y_cpu), kOpTol));
    }
    const Tensor other = Random({rows, cols});
    Tensor sum_cpu = Tensor::Zeros(DType::kF32, {rows, cols});
    ASSERT_TRUE(cpu_->Add(x, other, sum_cpu).ok());
    Tensor sum = Poisoned({rows, cols});
    ASSERT_TRUE(gpu_->Add(Up(x), Up(other), sum).ok());
    EXPECT_EQ(Down(sum), Values(sum_cpu));

    Tensor filled = Poisoned({rows, cols});
    ASSERT_TRUE(gpu_->FillRows(Up(g), filled).ok());
    const std::vector<float> f = Down(filled);
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_TRUE(std::equal(g.data<float>(), g.data<float>() + cols, f.begin() + r * cols));
    }
  }
}

// The sliding-window decoders' row ops: RMSNorm (in place too), the gated MLP's activation for
// each gate function, and rotary positions over query and key heads of a qkv row.
TEST_F(CudaBackendTest, DecoderRowOpsMatchCpu) {
  for (const int64_t cols : {1, 37, 256, 1030}) {
    const int64_t rows = 5;
    const Tensor x = Random({rows, cols}), g = Random({cols}, 0.5f, 1.5f);
    Tensor rms_cpu = Tensor::Zeros(DType::kF32, {rows, cols});
    ASSERT_TRUE(cpu_->RmsNorm(x, g, 1e-6f, rms_cpu).ok());
    Tensor rms = Poisoned({rows, cols});
    ASSERT_TRUE(gpu_->RmsNorm(Up(x), Up(g), 1e-6f, rms).ok());
    EXPECT_TRUE(test::NearRelative(Down(rms), Values(rms_cpu), kOpTol)) << "RmsNorm " << cols;
    Tensor inplace = Up(x);
    ASSERT_TRUE(gpu_->RmsNorm(inplace, Up(g), 1e-6f, inplace).ok());
    EXPECT_TRUE(test::NearRelative(Down(inplace), Values(rms_cpu), kOpTol));

    const Tensor gate_up = Random({rows, 2 * cols}, -6.0f, 6.0f);
    for (Activation act : {Activation::kSilu, Activation::kGelu, Activation::kRelu}) {
      Tensor y_cpu = Tensor::Zeros(DType::kF32, {rows, cols});
      ASSERT_TRUE(cpu_->GatedActivation(gate_up, act, y_cpu).ok());
      Tensor y = Poisoned({rows, cols});
      ASSERT_TRUE(gpu_->GatedActivation(Up(gate_up), act, y).ok());
      EXPECT_TRUE(test::NearRelative(Down(y), Values(y_cpu), kOpTol)) << "gated " << int(act);
    }
  }
  for (const int head_dim : {2, 8, 64, 128}) {
    const int heads = 6;  // e.g. 4 query heads and 2 key heads, then 2 value heads untouched
    const int64_t rows = 7, ld = (heads + 2) * head_dim;
    std::vector<int64_t> positions = {0, 1, 2, 15, 4096, 70000, 1 << 20};
    Tensor inv_freq = Tensor::Zeros(DType::kF32, {head_dim / 2});
    for (int i = 0; i < head_dim / 2; ++i) {
      inv_freq.data<float>()[i] = static_cast<float>(std::pow(1e4, -2.0 * i / head_dim));
    }
    const Tensor x = Random({rows, ld});
    Tensor x_cpu = Tensor::Zeros(DType::kF32, {rows, ld});
    ASSERT_TRUE(cpu_->Copy(x, x_cpu).ok());
    ASSERT_TRUE(cpu_->Rotary(x_cpu, positions, heads, head_dim, inv_freq).ok());
    Tensor y = Up(x);
    ASSERT_TRUE(gpu_->Rotary(y, positions, heads, head_dim, Up(inv_freq)).ok());
    // The same float32 angles and double cosines: equal up to the last bit of the products.
    EXPECT_TRUE(test::NearRelative(Down(y), Values(x_cpu), 1e-6)) << "rotary d_h " << head_dim;
  }
}

TEST_F(CudaBackendTest, EmbeddingAndGatherMatchCpu) {
  const Tensor table = Random({50, 37});
  const std::vector<int32_t> ids = {0, 49, 7, 7, 13};
  Tensor y_cpu = Tensor::Zeros(DType::kF32, {5, 37});
  ASSERT_TRUE(cpu_->Embedding(table, ids, 2.5f, y_cpu).ok());
  Tensor y = Poisoned({5, 37});
  ASSERT_TRUE(gpu_->Embedding(Up(table), ids, 2.5f, y).ok());
  EXPECT_EQ(Down(y), Values(y_cpu));
  const std::vector<int64_t> rows = {4, 0, 2};
  Tensor g_cpu = Tensor::Zeros(DType::kF32, {3, 37});
  ASSERT_TRUE(cpu_->GatherRows(y_cpu, rows, g_cpu).ok());
  Tensor g = Poisoned({3, 37});
  ASSERT_TRUE(gpu_->GatherRows(y, rows, g).ok());
  EXPECT_EQ(Down(g), Values(g_cpu));
}

// Recorded steps: run 1 measures, run 2 captures a graph, later runs replay it with new host
// inputs (token ids here) and new device contents; a step whose ops change falls back to eager
// execution with correct results.
TEST_F(CudaBackendTest, RecordedStepsReplayWithNewInputsAndFallBackWhenTheStepChanges) {
  const Tensor table = Random({40, 24}), w = Random({16, 24}), b = Random({16});
  const Tensor table_dev = Up(table), w_dev = Up(w), b_dev = Up(b);
  Tensor w_other = Up(w);  // same values, another address: a different step
  for (int run = 0; run < 7; ++run) {
    std::vector<int32_t> ids;
    for (int i = 0; i < 3; ++i) ids.push_back(static_cast<int32_t>(rng_() % 40));
    const Tensor& weight = run == 5 ? w_other : w_dev;
    ASSERT_TRUE(gpu_->BeginStep(7).ok());
    auto x = gpu_->AllocateUninitialized(DType::kF32, {3, 24});
    auto y = gpu_->AllocateUninitialized(DType::kF32, {3, 16});
    ASSERT_TRUE(x.ok() && y.ok());
    ASSERT_TRUE(gpu_->Embedding(table_dev, ids, 0.5f, *x).ok());
    ASSERT_TRUE(gpu_->Linear(*x, weight, &b_dev, *y).ok());
    auto host = gpu_->CopyToHost(*y);
    ASSERT_TRUE(host.ok()) << host.status();
    const absl::Status end = gpu_->EndStep();
    ASSERT_TRUE(end.ok()) << end;

    Tensor x_cpu = Tensor::Zeros(DType::kF32, {3, 24}), y_cpu = Tensor::Zeros(DType::kF32, {3, 16});
    ASSERT_TRUE(cpu_->Embedding(table, ids, 0.5f, x_cpu).ok());
    ASSERT_TRUE(cpu_->Linear(x_cpu, w, &b, y_cpu).ok());
    EXPECT_TRUE(test::NearRelative(Values(*host), Values(y_cpu), kOpTol)) << "run " << run;
  }
  // Steps do not nest, and EndStep needs a BeginStep.
  ASSERT_TRUE(gpu_->BeginStep(8).ok());
  EXPECT_EQ(gpu_->BeginStep(9).code(), absl::StatusCode::kFailedPrecondition);
  gpu_->AbortStep();
  EXPECT_EQ(gpu_->EndStep().code(), absl::StatusCode::kFailedPrecondition);
}

// A memory ring on each backend with the same contents and bookkeeping: `fill` positions
// appended in chunks, so the ring may wrap.
struct MemoryPair {
  XlMemory cpu, gpu;
};

class CudaAttentionTest : public CudaBackendTest {
 protected:
  MemoryPair MakeMemory(int64_t capacity, int64_t width, int64_t fill) {
    MemoryPair m{XlMemory(Tensor::Zeros(DType::kF32, {capacity, width}),
                          Tensor::Zeros(DType::kF32, {capacity, width})),
                 XlMemory(*gpu_->Allocate(DType::kF32, {capacity, width}),
                          *gpu_->Allocate(DType::kF32, {capacity, width}))};
    for (int64_t done = 0; done < fill;) {
      const int64_t rows = std::min<int64_t>(fill - done, 1 + static_cast<int64_t>(rng_() % 7));
      const Tensor qkv = Random({rows, 3 * width});
      const Tensor qkv_dev = Up(qkv);
      EXPECT_TRUE(cpu_->AppendToMemory({{&qkv, &m.cpu}}).ok());
      EXPECT_TRUE(gpu_->AppendToMemory({{&qkv_dev, &m.gpu}}).ok());
      m.cpu.Advance(rows);
      m.gpu.Advance(rows);
      done += rows;
    }
    return m;
  }
};

TEST_F(CudaAttentionTest, AppendToMemoryWritesTheSameRing) {
  for (auto [capacity, fill] : {std::pair{5, 3}, {5, 5}, {5, 23}, {16, 40}}) {
    MemoryPair m = MakeMemory(capacity, 24, fill);
    EXPECT_EQ(m.gpu.start(), m.cpu.start());
    EXPECT_EQ(m.gpu.size(), m.cpu.size());
    EXPECT_EQ(Down(m.gpu.keys()), Values(m.cpu.keys()));
    EXPECT_EQ(Down(m.gpu.values()), Values(m.cpu.values()));
  }
}

struct AttentionCase {
  int heads, head_dim;
  int64_t mem_len_max, clamp;
  bool same_length;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (query_len T, memory fill)
};

TEST_F(CudaAttentionTest, RelativeAttentionMatchesCpu) {
  const std::vector<AttentionCase> cases = {
      {2, 32, 16, 0, false, {{1, 0}}},                         // empty memory, decode
      {2, 32, 16, 0, false, {{1, 9}}},                         // partial memory
      {4, 64, 16, 0, false, {{1, 40}}},                        // full, wrapped ring
      {1, 8, 12, 0, false, {{5, 12}, {1, 3}, {17, 0}}},        // ragged batch, mixed fill
      {3, 40, 20, 7, false, {{13, 25}}},                       // clamp_len, d_h not /32
      {2, 64, 20, 0, true, {{9, 20}, {30, 8}, {1, 20}}},       // same_length
      {2, 128, 32, 0, true, {{64, 32}}},                       // d_h 128
      {16, 64, 1600, 1000, true, {{1, 1600}}},                 // wt103-like decode (split)
      {4, 64, 300, 0, false, {{100, 300}, {1, 300}, {1, 0}}},  // prefill + decode mix
      {2, 16, 8, 0, true, {{40, 0}}},                          // same_length masks whole rows
  };
  for (const AttentionCase& c : cases) {
    const int64_t w = static_cast<int64_t>(c.heads) * c.head_dim;
    int64_t rows = 1;
    for (auto [t, fill] : c.seqs) rows = std::max(rows, std::min(fill, c.mem_len_max) + t);
    if (c.clamp > 0) rows = std::min(rows, c.clamp + 1);
    const Tensor rel = Random({rows, w}), u = Random({c.heads, c.head_dim}),
                 v = Random({c.heads, c.head_dim});
    const Tensor rel_dev = Up(rel), u_dev = Up(u), v_dev = Up(v);
    std::vector<MemoryPair> memories;
    std::vector<Tensor> qkv, qkv_dev, out_cpu, out_gpu;
    for (auto [t, fill] : c.seqs) {
      memories.push_back(MakeMemory(c.mem_len_max, w, fill));
      qkv.push_back(Random({t, 3 * w}));
      qkv_dev.push_back(Up(qkv.back()));
      out_cpu.push_back(Tensor::Zeros(DType::kF32, {t, w}));
      out_gpu.push_back(Poisoned({t, w}));
    }
    std::vector<RelativeAttentionArgs> cpu_args, gpu_args;
    for (size_t b = 0; b < c.seqs.size(); ++b) {
      cpu_args.push_back({&qkv[b], &memories[b].cpu, &rel, &u, &v, c.heads, c.head_dim,
                          c.mem_len_max, c.clamp, c.same_length, &out_cpu[b]});
      gpu_args.push_back({&qkv_dev[b], &memories[b].gpu, &rel_dev, &u_dev, &v_dev, c.heads,
                          c.head_dim, c.mem_len_max, c.clamp, c.same_length, &out_gpu[b]});
    }
    ASSERT_TRUE(cpu_->RelativeAttention(cpu_args).ok());
    const absl::Status status = gpu_->RelativeAttention(gpu_args);
    ASSERT_TRUE(status.ok()) << status;
    for (size_t b = 0; b < c.seqs.size(); ++b) {
      EXPECT_TRUE(test::NearRelative(Down(out_gpu[b]), Values(out_cpu[b]), kOpTol))
          << "heads " << c.heads << " d_h " << c.head_dim << " seq " << b << " T "
          << c.seqs[b].first << " fill " << c.seqs[b].second << " same_length " << c.same_length
          << " clamp " << c.clamp;
    }
  }
}

// Compressive layers: keys over [compressed ring | XL ring | segment], with wrapped rings, and
// most_used's attention mass per XL slot.
TEST_F(CudaAttentionTest, RelativeAttentionOverCompressedMemoryMatchesCpu) {
  struct Case {
    int heads, head_dim;
    int64_t mem_len_max, cmem_len, clamp;
    bool same_length;
    std::vector<std::array<int64_t, 3>> seqs;  // (T, memory fill, compressed fill)
  };
  const std::vector<Case> cases = {
      {2, 32, 16, 8, 0, false, {{1, 16, 3}}},                            // decode, partial cmem
      {2, 32, 16, 8, 0, false, {{1, 16, 21}}},                           // wrapped cmem
      {4, 64, 24, 12, 0, true, {{7, 24, 12}, {1, 5, 0}, {30, 24, 30}}},  // ragged, same_length
      {3, 40, 20, 10, 9, false, {{13, 20, 14}}},                         // clamp_len
      {8, 64, 512, 256, 0, false, {{1, 512, 300}}},                      // long: split decode
  };
  for (const Case& c : cases) {
    const int64_t w = static_cast<int64_t>(c.heads) * c.head_dim;
    int64_t rows = 1;
    for (const auto& sq : c.seqs) {
      rows = std::max(rows, std::min(sq[1], c.mem_len_max) + std::min(sq[2], c.cmem_len) + sq[0]);
    }
    if (c.clamp > 0) rows = std::min(rows, c.clamp + 1);
    const Tensor rel = Random({rows, w}), u = Random({c.heads, c.head_dim}),
                 v = Random({c.heads, c.head_dim});
    const Tensor rel_dev = Up(rel), u_dev = Up(u), v_dev = Up(v);
    std::vector<MemoryPair> memories, compressed;
    std::vector<Tensor> qkv, qkv_dev, out_cpu, out_gpu, usage_cpu, usage_gpu;
    for (const auto& sq : c.seqs) {
      memories.push_back(MakeMemory(c.mem_len_max, w, sq[1]));
      compressed.push_back(MakeMemory(c.cmem_len, w, sq[2]));
      qkv.push_back(Random({sq[0], 3 * w}));
      qkv_dev.push_back(Up(qkv.back()));
      out_cpu.push_back(Tensor::Zeros(DType::kF32, {sq[0], w}));
      out_gpu.push_back(Poisoned({sq[0], w}));
      // most_used: attention mass per XL slot, added to what is there.
      usage_cpu.push_back(Random({c.mem_len_max}, 0.0f, 2.0f));
      usage_gpu.push_back(Up(usage_cpu.back()));
    }
    std::vector<RelativeAttentionArgs> cpu_args, gpu_args;
    for (size_t b = 0; b < c.seqs.size(); ++b) {
      cpu_args.push_back({&qkv[b], &memories[b].cpu, &rel, &u, &v, c.heads, c.head_dim,
                          c.mem_len_max, c.clamp, c.same_length, &out_cpu[b]});
      cpu_args.back().compressed = &compressed[b].cpu;
      cpu_args.back().usage = &usage_cpu[b];
      gpu_args.push_back({&qkv_dev[b], &memories[b].gpu, &rel_dev, &u_dev, &v_dev, c.heads,
                          c.head_dim, c.mem_len_max, c.clamp, c.same_length, &out_gpu[b]});
      gpu_args.back().compressed = &compressed[b].gpu;
      gpu_args.back().usage = &usage_gpu[b];
    }
    ASSERT_TRUE(cpu_->RelativeAttention(cpu_args).ok());
    const absl::Status status = gpu_->RelativeAttention(gpu_args);
    ASSERT_TRUE(status.ok()) << status;
    for (size_t b = 0; b < c.seqs.size(); ++b) {
      EXPECT_TRUE(test::NearRelative(Down(out_gpu[b]), Values(out_cpu[b]), kOpTol))
          << "heads " << c.heads << " seq " << b << " T " << c.seqs[b][0] << " fill "
          << c.seqs[b][1] << " compressed " << c.seqs[b][2];
      EXPECT_TRUE(test::NearRelative(Down(usage_gpu[b]), Values(usage_cpu[b]), kOpTol))
          << "usage, seq " << b;
    }
  }
}

// ---- Whole model ---------------------------------------------------------------------------

class CudaModelTest : public CudaBackendTest {
 protected:
  void LoadBoth(const ModelConfig& config, uint32_t seed = 1) {
    dir_ = std::make_unique<test::ScopedTempDir>(test::WriteCheckpoint(config, seed));
    auto cpu = TransfoXlModel::Load(dir_->path());
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    auto gpu = TransfoXlModel::Load(dir_->path(), std::move(gpu_));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    cpu_model_ = std::move(*cpu);
    gpu_model_ = std::move(*gpu);
  }
  std::vector<int32_t> Tokens(int64_t n) {
    std::uniform_int_distribution<int32_t> dist(
        0, static_cast<int32_t>(cpu_model_->config().vocab_size - 1));
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (int32_t& t : out) t = dist(rng_);
    return out;
  }
  static std::vector<float> Run(TransfoXlModel& model, std::vector<SessionState*> states,
                                const std::vector<std::vector<int32_t>>& tokens, LogitsMode mode) {
    std::vector<SequenceInput> batch;
    for (size_t b = 0; b < states.size(); ++b) {
      batch.push_back({tokens[b].data(), static_cast<int64_t>(tokens[b].size()), states[b]});
    }
    Tensor logits;
    const absl::Status status = model.Forward(batch, mode, &logits);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok() || mode == LogitsMode::kNone) return {};
    EXPECT_EQ(logits.device(), Device::kCpu);
    return Values(logits);
  }

  // Two fresh sessions per model advance together, one batch per entry of `steps` (the two
  // sessions' segment lengths): every position's logits agree. The states are left in *cs / *gs.
  void ExpectSameLogitsOverTwoSessions(const std::vector<std::vector<int64_t>>& steps,
                                       std::vector<SessionState>* cs,
                                       std::vector<SessionState>* gs) {
    for (int b = 0; b < 2; ++b) {
      cs->push_back(*cpu_model_->NewState());
      gs->push_back(*gpu_model_->NewState());
    }
    for (const auto& lengths : steps) {
      std::vector<std::vector<int32_t>> tokens;
      for (int64_t n : lengths) tokens.push_back(Tokens(n));
      const std::vector<float> want =
          Run(*cpu_model_, {&(*cs)[0], &(*cs)[1]}, tokens, LogitsMode::kAll);
      const std::vector<float> got =
          Run(*gpu_model_, {&(*gs)[0], &(*gs)[1]}, tokens, LogitsMode::kAll);
      ASSERT_TRUE(test::NearRelative(got, want, kModelTol))
          << "segments of " << lengths[0] << " and " << lengths[1];
    }
  }

  // Fresh sessions on both models read the same 20-token prompt, then each decodes `steps`
  // tokens greedily, feeding its own choice back: the tokens must be the same all along.
  void ExpectSameGreedyTokens(int steps) {
    SessionState cs = *cpu_model_->NewState(), gs = *gpu_model_->NewState();
    const std::vector<int32_t> prompt = Tokens(20);
    std::vector<float> cpu_logits = Run(*cpu_model_, {&cs}, {prompt}, LogitsMode::kLast);
    std::vector<float> gpu_logits = Run(*gpu_model_, {&gs}, {prompt}, LogitsMode::kLast);
    const auto argmax = [](const std::vector<float>& l) {
      return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    };
    for (int step = 0; step < steps; ++step) {
      const int32_t cpu_next = argmax(cpu_logits), gpu_next = argmax(gpu_logits);
      ASSERT_EQ(gpu_next, cpu_next) << "diverged at token " << step;
      cpu_logits = Run(*cpu_model_, {&cs}, {{cpu_next}}, LogitsMode::kLast);
      gpu_logits = Run(*gpu_model_, {&gs}, {{gpu_next}}, LogitsMode::kLast);
    }
  }

  std::unique_ptr<test::ScopedTempDir> dir_;
  std::unique_ptr<TransfoXlModel> cpu_model_, gpu_model_;
};

// A pruned float32 checkpoint (90% of every layer matrix zero): the GPU model keeps sparse forms
// of its matrices and its decode steps and segments give the CPU's logits.
TEST_F(CudaModelTest, PrunedWeightsRunFromSparseFormsAndMatchCpu) {
  ModelConfig config = test::SmallConfig();
  config.d_model = 64;
  config.d_inner = 128;
  std::vector<test::RawTensor> tensors = test::RandomWeights(config, 5);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (test::RawTensor& t : tensors) {
    const std::string& n = t.name;
    const bool pruned = n.ends_with("attn.qkv.weight") || n.ends_with("attn.o.weight") ||
                        n.ends_with("ff.fc1.weight") || n.ends_with("ff.fc2.weight");
    if (!pruned) continue;
    std::vector<float> v(t.bytes.size() / sizeof(float));
    std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
    for (float& x : v) {
      if (u(rng) < 0.9f) x = 0.0f;
    }
    t.bytes = test::FloatBytes(v, DType::kF32);
  }
  dir_ = std::make_unique<test::ScopedTempDir>(
      test::WriteCheckpointFiles(test::ConfigJson(config), tensors));
  auto cpu = TransfoXlModel::Load(dir_->path());
  auto gpu = TransfoXlModel::Load(dir_->path(), std::move(gpu_));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  cpu_model_ = std::move(*cpu);
  gpu_model_ = std::move(*gpu);
  EXPECT_EQ(gpu_model_->SparseWeightSummary().size(), cpu_model_->SparseWeightSummary().size());
  EXPECT_GE(gpu_model_->SparseWeightSummary().size(), 4u * static_cast<size_t>(config.n_layer));
  SessionState cs = *cpu_model_->NewState(), gs = *gpu_model_->NewState();
  for (int64_t n : {7, 1, 1, 1, 3, 1, 1, 20, 1}) {
    const std::vector<std::vector<int32_t>> tokens = {Tokens(n)};
    const std::vector<float> want = Run(*cpu_model_, {&cs}, tokens, LogitsMode::kAll);
    const std::vector<float> got = Run(*gpu_model_, {&gs}, tokens, LogitsMode::kAll);
    ASSERT_TRUE(test::NearRelative(got, want, kModelTol)) << "segment of " << n;
  }
}

TEST_F(CudaModelTest, LogitsMatchCpuOverSegmentsDecodeAndMixedBatches) {
  for (uint32_t seed = 1; seed <= 12; ++seed) {
    gpu_ = *MakeCudaBackend(0);
    ModelConfig config = test::RandomConfig(seed);
    // The float32 oracle path (16-bit checkpoints keep their type on the GPU: tested below).
    config.dtype = DType::kF32;
    LoadBoth(config, seed);
    ASSERT_NE(gpu_model_, nullptr);
    // Three sessions of different fill levels, advanced together: prefill segments of ragged
    // lengths, then decode steps, in one batch.
    std::vector<SessionState> cpu_states, gpu_states;
    for (int b = 0; b < 3; ++b) {
      cpu_states.push_back(*cpu_model_->NewState());
      gpu_states.push_back(*gpu_model_->NewState());
    }
    // Decode batches run as recorded steps: measured, captured, then replayed while the
    // memories' fill levels change.
    const std::vector<std::vector<int64_t>> steps = {
        {5, 1, 2}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {config.mem_len + 3, 4, 1},
        {1, 1, 1}, {1, 7, 1}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}};
    for (const auto& lengths : steps) {
      std::vector<std::vector<int32_t>> tokens;
      for (int64_t n : lengths) tokens.push_back(Tokens(n));
      std::vector<SessionState*> cs, gs;
      for (int b = 0; b < 3; ++b) {
        cs.push_back(&cpu_states[b]);
        gs.push_back(&gpu_states[b]);
      }
      const std::vector<float> want = Run(*cpu_model_, cs, tokens, LogitsMode::kAll);
      const std::vector<float> got = Run(*gpu_model_, gs, tokens, LogitsMode::kAll);
      ASSERT_TRUE(test::NearRelative(got, want, kModelTol)) << "config seed " << seed;
    }
    // The device states hold the same memory as the host ones.
    auto host = gpu_model_->StateToHost(gpu_states[1]);
    ASSERT_TRUE(host.ok()) << host.status();
    for (size_t l = 0; l < host->layers().size(); ++l) {
      EXPECT_EQ(test::Ring(*host, l).start(), test::Ring(cpu_states[1], l).start());
      EXPECT_TRUE(test::NearRelative(Values(test::Ring(*host, l).keys()),
                                     Values(test::Ring(cpu_states[1], l).keys()), kModelTol));
    }
  }
}

// bf16 / f16 checkpoints: the GPU keeps the 16-bit weights, prefill products round their
// activations to that type (tensor cores, f32 accumulation), decode widens weights exactly. The
// CPU computes everything in float32 from the same weights. Bounds (max |Δlogit| ÷ max |logit|):
// activations rounded to an 8-bit (bf16) / 11-bit (f16) mantissa carry 2^-9 / 2^-12 relative
// error into every product, compounded over the layers and into the memory the decode steps
// read; 3e-2 and 5e-3 are about 15× those unit errors. The measured values are printed.
TEST_F(CudaModelTest, SixteenBitCheckpointsStayCloseToTheFloat32Cpu) {
  for (auto [dtype, tol] : {std::pair{DType::kBF16, 3e-2}, {DType::kF16, 5e-3}}) {
    for (uint32_t seed = 1; seed <= 4; ++seed) {
      gpu_ = *MakeCudaBackend(0);
      ModelConfig config = test::RandomConfig(seed);
      config.dtype = dtype;
      LoadBoth(config, seed);
      ASSERT_NE(gpu_model_, nullptr);
      SessionState cs = *cpu_model_->NewState(), gs = *gpu_model_->NewState();
      double worst = 0;
      for (int64_t n : {config.mem_len + 5, int64_t{1}, int64_t{1}, int64_t{7}, int64_t{1}}) {
        const std::vector<int32_t> tokens = Tokens(n);
        const std::vector<float> want = Run(*cpu_model_, {&cs}, {tokens}, LogitsMode::kAll);
        const std::vector<float> got = Run(*gpu_model_, {&gs}, {tokens}, LogitsMode::kAll);
        ASSERT_EQ(got.size(), want.size());
        float max_want = 0, max_diff = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          max_want = std::max(max_want, std::fabs(want[i]));
          max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
        }
        worst = std::max(worst, static_cast<double>(max_diff / max_want));
        ASSERT_TRUE(test::NearRelative(got, want, tol))
            << DTypeName(dtype) << " config seed " << seed;
      }
      std::printf("[ measured ] %s config %u: max |Δlogit| / max |logit| = %.2e (bound %.0e)\n",
                  DTypeName(dtype), seed, worst, tol);
    }
  }
}

TEST_F(CudaModelTest, GreedyGenerationOf200TokensEqualsCpu) {
  ModelConfig config = test::SmallConfig();
  config.mem_len = 32;
  LoadBoth(config, 7);
  ASSERT_NE(gpu_model_, nullptr);
  ExpectSameGreedyTokens(200);
}

// An adaptive embedding and softmax (Transformer-XL as published): the bands' embeddings,
// projections and log-probabilities on the GPU give the CPU's over ragged two-session batches of
// segments and decode steps, with div_val 1 (one table, projected) and 2 (a table per band), and
// the same greedy tokens.
TEST_F(CudaModelTest, AdaptiveEmbeddingAndSoftmaxMatchCpu) {
  for (int64_t div_val : {1, 2}) {
    gpu_ = *MakeCudaBackend(0);
    ModelConfig config = test::SmallConfig();
    config.mem_len = 16;
    config.adaptive = true;
    config.cutoffs = {10, 20};
    config.div_val = div_val;
    config.d_embed = div_val == 1 ? 8 : 16;
    config.tie_word_embeddings = div_val == 2;
    LoadBoth(config, 13);
    ASSERT_NE(gpu_model_, nullptr);
    std::vector<SessionState> cs, gs;
    ExpectSameLogitsOverTwoSessions({{9, 4}, {1, 1}, {1, 1}, {17, 1}, {1, 6}}, &cs, &gs);
    ExpectSameGreedyTokens(40);
  }
}

// Compressive memory on the GPU: every compression (pooling, convolutions, most_used with its
// attention mass) gives the CPU's logits over ragged segments and decode steps that compress
// mid-stream, the same compressed rings, pending rows and usage, and 200 identical greedy
// tokens.
TEST_F(CudaModelTest, CompressiveMemoryMatchesCpu) {
  const std::vector<std::string> layers = {
      R"({"attention": "dense", "memory": "compressive", "compression": "max_pool",
          "compression_rate": 3, "cmem_len": 4})",
      R"({"attention": "dense", "memory": "compressive", "compression": "mean_pool",
          "compression_rate": 2, "cmem_len": 5})",
      R"({"attention": "dense", "memory": "compressive", "compression": "conv1d",
          "compression_rate": 3, "cmem_len": 6})",
      R"({"attention": "dense", "memory": "compressive", "compression": "dilated_conv",
          "compression_rate": 4, "compression_kernel": 2, "cmem_len": 3})",
      R"({"attention": "dense", "memory": "compressive", "compression": "most_used",
          "compression_rate": 2, "cmem_len": 3})",
  };
  for (const char* memory_init : {"\"zeros\"", "\"empty\""}) {
    SCOPED_TRACE(memory_init);
    gpu_ = *MakeCudaBackend(0);
    const ModelConfig config = test::ConfigWith(layers, {{"memory_init", memory_init}}, 8);
    LoadBoth(config, 21);
    ASSERT_NE(gpu_model_, nullptr);
    SessionState cs = *cpu_model_->NewState(), gs = *gpu_model_->NewState();
    for (int64_t n : {5, 1, 1, 1, 13, 1, 1, 1, 1, 2, 30, 1, 1, 1, 1, 1, 1, 1}) {
      const std::vector<std::vector<int32_t>> tokens = {Tokens(n)};
      const std::vector<float> want = Run(*cpu_model_, {&cs}, tokens, LogitsMode::kAll);
      const std::vector<float> got = Run(*gpu_model_, {&gs}, tokens, LogitsMode::kAll);
      ASSERT_TRUE(test::NearRelative(got, want, kModelTol)) << "segment of " << n;
    }
    auto host = gpu_model_->StateToHost(gs);
    ASSERT_TRUE(host.ok()) << host.status();
    EXPECT_EQ(host->compressions(), cs.compressions());
    EXPECT_GT(cs.compressions(), 0);
    for (size_t l = 0; l < layers.size(); ++l) {
      const CompressiveMemory& g = dynamic_cast<const DenseLayerState&>(host->layer(l)).compressive;
      const CompressiveMemory& c = dynamic_cast<const DenseLayerState&>(cs.layer(l)).compressive;
      EXPECT_EQ(g.pending_rows, c.pending_rows) << "layer " << l;
      EXPECT_EQ(g.compressed.size(), c.compressed.size()) << "layer " << l;
      EXPECT_EQ(g.compressed.start(), c.compressed.start()) << "layer " << l;
      EXPECT_TRUE(
          test::NearRelative(Values(g.compressed.keys()), Values(c.compressed.keys()), kModelTol))
          << "layer " << l;
      if (c.usage.defined()) {
        EXPECT_TRUE(test::NearRelative(Values(g.usage), Values(c.usage), kModelTol))
            << "layer " << l;
      }
    }
  }
  // Greedy decode, 200 tokens, compressing all along.
  gpu_ = *MakeCudaBackend(0);
  LoadBoth(test::ConfigWith(layers, {{"memory_init", "\"zeros\""}}, 8), 22);
  ASSERT_NE(gpu_model_, nullptr);
  ExpectSameGreedyTokens(200);
}

// Linear attention on the GPU: every feature map (rfa gated too), mixed with dense and
// compressive layers, gives the CPU's logits over long prefill segments and decode steps in
// ragged batches, the same carried state, and 200 identical greedy tokens.
TEST_F(CudaModelTest, LinearAttentionMatchesCpu) {
  const std::vector<std::vector<std::string>> models = {
      {R"({"attention": "linear", "feature_map": "elu"})",
       R"({"attention": "linear", "feature_map": "rfa", "num_features": 8, "gated": true})"},
      {R"({"attention": "linear", "feature_map": "favor", "num_features": 24})",
       R"({"attention": "dense"})",
       R"({"attention": "linear", "feature_map": "rfa", "num_features": 12, "gated": true})"},
      {R"({"attention": "dense", "memory": "compressive", "compression": "conv1d",
           "compression_rate": 2, "cmem_len": 4})",
       R"({"attention": "linear", "feature_map": "favor", "num_features": 16})"},
  };
  for (size_t k = 0; k < models.size(); ++k) {
    SCOPED_TRACE("model " + std::to_string(k));
    gpu_ = *MakeCudaBackend(0);
    LoadBoth(test::ConfigWith(models[k], {{"memory_init", "\"zeros\""}}, 8),
             static_cast<uint32_t>(30 + k));
    ASSERT_NE(gpu_model_, nullptr);
    std::vector<SessionState> cs, gs;
    ExpectSameLogitsOverTwoSessions({{150, 3}, {1, 1}, {1, 1}, {70, 1}, {1, 1}, {1, 9}, {1, 1}},
                                    &cs, &gs);
    auto host = gpu_model_->StateToHost(gs[0]);
    ASSERT_TRUE(host.ok()) << host.status();
    for (int64_t l = 0; l < host->num_layers(); ++l) {
      const auto* want = dynamic_cast<const LinearLayerState*>(&cs[0].layer(l));
      if (want == nullptr) continue;
      const LinearState& got_sums = dynamic_cast<const LinearLayerState&>(host->layer(l)).sums;
      EXPECT_TRUE(test::NearRelative(Values(got_sums.s), Values(want->sums.s), kModelTol))
          << "layer " << l;
      EXPECT_TRUE(test::NearRelative(Values(got_sums.z), Values(want->sums.z), kModelTol))
          << "layer " << l;
    }
    ExpectSameGreedyTokens(200);  // 200 greedy tokens, from fresh sessions
  }
}

// Sparse attention on the GPU: sliding and dilated windows (their own kernel), strided, fixed
// and BigBird patterns and global tokens (listed keys), mixed with dense and linear layers: the
// CPU's logits over segments longer than the span, decode batches, and 200 identical greedy
// tokens.
TEST_F(CudaModelTest, SparsePatternsMatchCpu) {
  const std::vector<std::vector<std::string>> models = {
      {R"({"attention": "sparse", "window": 5})",
       R"({"attention": "sparse", "window": 4, "dilation": 3})"},
      {R"({"attention": "sparse", "window": 40, "dilation": [1, 2]})", R"({"attention": "dense"})",
       R"({"attention": "linear", "feature_map": "elu"})"},
      // Listed keys: the other patterns and global tokens.
      {R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 20})",
       R"({"attention": "sparse", "pattern": "fixed", "block": 4, "summary": 2, "span": 30})"},
      {R"({"attention": "sparse", "pattern": "bigbird", "block": 3, "span": 60})",
       R"({"attention": "sparse", "window": 4, "global_positions": [0, 5], "global_tokens": [7],
           "max_global": 3})"},
  };
  for (size_t k = 0; k < models.size(); ++k) {
    SCOPED_TRACE("model " + std::to_string(k));
    gpu_ = *MakeCudaBackend(0);
    LoadBoth(test::ConfigWith(models[k], {{"memory_init", "\"zeros\""}}, 8),
             static_cast<uint32_t>(40 + k));
    ASSERT_NE(gpu_model_, nullptr);
    std::vector<SessionState> cs, gs;
    ExpectSameLogitsOverTwoSessions({{130, 2}, {1, 1}, {1, 1}, {37, 1}, {1, 1}, {1, 90}, {1, 1}},
                                    &cs, &gs);
    ExpectSameGreedyTokens(200);  // 200 greedy tokens, from fresh sessions
  }
}

// Architecture "mistral": rotary positions, RMSNorm, the gated MLP and sliding windows, with
// grouped-query attention (the listed-keys kernel reading each query head's key head), one
// key/value head, and every head its own (the band kernel): the CPU's logits over segments,
// decode and ragged batches, and 200 identical greedy tokens.
TEST_F(CudaModelTest, SlidingWindowDecodersMatchCpu) {
  for (const int64_t kv_heads : {2, 1, 4}) {
    SCOPED_TRACE(absl::StrCat(kv_heads, " key/value heads"));
    gpu_ = *MakeCudaBackend(0);
    LoadBoth(test::MistralConfig(kv_heads, /*window=*/9), static_cast<uint32_t>(60 + kv_heads));
    ASSERT_NE(gpu_model_, nullptr);
    std::vector<SessionState> cs, gs;
    ExpectSameLogitsOverTwoSessions({{130, 2}, {1, 1}, {1, 1}, {37, 1}, {1, 1}, {1, 90}, {1, 1}},
                                    &cs, &gs);
    ExpectSameGreedyTokens(200);
  }
  // Gemma-2: soft-capped scores with their own scale (the listed-keys kernel), a global layer.
  gpu_ = *MakeCudaBackend(0);
  LoadBoth(test::Gemma2Config(2, /*window=*/7, /*context=*/512), 70);
  ASSERT_NE(gpu_model_, nullptr);
  std::vector<SessionState> cs, gs;
  ExpectSameLogitsOverTwoSessions({{130, 2}, {1, 1}, {37, 1}, {1, 90}, {1, 1}}, &cs, &gs);
  ExpectSameGreedyTokens(200);
}

// LSH attention on the GPU, both sorts: one or several rounds, bucket counts that are powers of
// two and not, histories shorter and longer than the segments, mixed with dense, sparse and
// linear layers, and a reformer (reversible streams, axial positions, Hugging Face's per-call
// sort, a local layer): the CPU's logits over long segments, decode batches and ragged batches
// (the buckets are the CPU's, bit for bit, so the candidates are too), the same ring of buckets,
// and 200 identical greedy tokens.
TEST_F(CudaModelTest, LshAttentionMatchesCpu) {
  using Fields = std::vector<std::pair<std::string, std::string>>;
  const Fields xl = {{"memory_init", "\"zeros\""}};
  const Fields reformer = {{"architecture", "\"reformer\""}, {"pre_lnorm", "true"},
                           {"memory_init", "\"empty\""},     {"tie_word_embeddings", "false"},
                           {"axial_pos_shape", "[16, 32]"},  {"axial_pos_embds_dim", "[6, 10]"}};
  struct Case {
    std::vector<std::string> layers;
    Fields fields;
    int64_t mem_len;
  };
  const std::vector<Case> models = {
      {{R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 4, "history": 12})",
        R"({"attention": "lsh", "n_hashes": 1, "n_buckets": 6, "chunk_len": 3, "history": 200})"},
       xl,
       8},
      {{R"({"attention": "lsh", "n_hashes": 4, "n_buckets": [8, 2], "chunk_len": 8, "history": 64})",
        R"({"attention": "dense"})", R"({"attention": "sparse", "window": 6})"},
       xl,
       8},
      {{R"({"attention": "linear", "feature_map": "elu"})",
        R"({"attention": "lsh", "n_hashes": 3, "n_buckets": 70, "chunk_len": 5, "history": 1})",
        R"({"attention": "lsh", "n_hashes": 8, "n_buckets": 2, "chunk_len": 16, "history": 40})"},
       xl,
       8},
      {{R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 8, "history": 160,
            "sort": "call"})",
        R"({"attention": "lsh", "n_hashes": 3, "n_buckets": 6, "chunk_len": 5, "history": 24,
            "sort": "call"})",
        R"({"attention": "lsh", "n_hashes": 2, "n_buckets": [4, 6, 2], "chunk_len": 5,
            "history": 40, "sort": "call"})"},
       xl,
       8},
      {{R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 8, "chunk_len": 4, "history": 100,
            "sort": "call"})",
        R"({"attention": "sparse", "pattern": "bigbird", "block": 4, "window_blocks": 2,
            "random_blocks": 0, "span": 7})"},
       reformer,
       0},
  };
  for (size_t k = 0; k < models.size(); ++k) {
    SCOPED_TRACE("model " + std::to_string(k));
    gpu_ = *MakeCudaBackend(0);
    const ModelConfig config =
        test::ConfigWith(models[k].layers, models[k].fields, models[k].mem_len);
    LoadBoth(config, static_cast<uint32_t>(50 + k));
    ASSERT_NE(gpu_model_, nullptr);
    std::vector<SessionState> cs, gs;
    ExpectSameLogitsOverTwoSessions({{150, 3}, {1, 1}, {1, 1}, {70, 1}, {1, 1}, {1, 90}, {1, 1}},
                                    &cs, &gs);
    auto host = gpu_model_->StateToHost(gs[1]);
    ASSERT_TRUE(host.ok()) << host.status();
    for (int64_t l = 0; l < host->num_layers(); ++l) {
      const auto* lsh = dynamic_cast<const LshLayerState*>(&cs[1].layer(l));
      if (lsh == nullptr) continue;
      const Tensor& want = lsh->buckets.buckets;
      const Tensor& got = dynamic_cast<const LshLayerState&>(host->layer(l)).buckets.buckets;
      ASSERT_EQ(got.numel(), want.numel()) << "layer " << l;
      EXPECT_EQ(std::memcmp(got.data<int32_t>(), want.data<int32_t>(), want.bytes()), 0)
          << "layer " << l << ": the rings' buckets differ";
    }
    ExpectSameGreedyTokens(200);  // 200 greedy tokens, from fresh sessions
  }
}

// RealFormer on the GPU: dense layers that add the previous layer's scores, with a plain XL
// memory and with a most_used compressive memory (whose attention mass then counts the added
// scores), and sparse ones (dilated and plain windows, strided keys listed per query), mixed with
// LSH and linear layers: the CPU's logits over segments, decode steps and ragged batches, and 200
// identical greedy tokens.
TEST_F(CudaModelTest, ResidualAttentionMatchesCpu) {
  const std::string window = R"({"attention": "sparse", "window": 5, "dilation": [1, 2]})";
  const std::string band = R"({"attention": "sparse", "window": 7})";  // the tiled kernel
  const std::string strided =
      R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 20})";
  auto residual = [](std::string layer) {
    return layer.insert(layer.size() - 1, R"(, "residual_attention": true)");
  };
  const std::vector<std::vector<std::string>> models = {
      {R"({"attention": "dense"})", R"({"attention": "dense", "residual_attention": true})",
       R"({"attention": "dense", "residual_attention": true})"},
      {R"({"attention": "dense", "memory": "compressive", "compression": "most_used",
           "compression_rate": 2, "cmem_len": 6})",
       R"({"attention": "dense", "memory": "compressive", "compression": "most_used",
           "compression_rate": 2, "cmem_len": 6, "residual_attention": true})",
       R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 8, "chunk_len": 4, "history": 30})",
       R"({"attention": "linear", "feature_map": "elu"})"},
      {window, residual(window), strided, residual(strided), residual(strided)},
      {band, residual(band), residual(band)},
  };
  for (size_t k = 0; k < models.size(); ++k) {
    SCOPED_TRACE("model " + std::to_string(k));
    gpu_ = *MakeCudaBackend(0);
    LoadBoth(test::ConfigWith(models[k], {{"memory_init", "\"zeros\""}}, 8),
             static_cast<uint32_t>(60 + k));
    ASSERT_NE(gpu_model_, nullptr);
    std::vector<SessionState> cs, gs;
    ExpectSameLogitsOverTwoSessions({{40, 3}, {1, 1}, {1, 1}, {17, 1}, {1, 1}, {1, 25}, {1, 1}},
                                    &cs, &gs);
    ExpectSameGreedyTokens(200);  // 200 greedy tokens, from fresh sessions
  }
}

TEST_F(CudaModelTest, OffloadRoundTripAndCloneAreExact) {
  ModelConfig config = test::SmallConfig();
  config.memory_init = MemoryInit::kZeros;
  config.mem_len = 10;
  LoadBoth(config, 3);
  ASSERT_NE(gpu_model_, nullptr);
  SessionState state = *gpu_model_->NewState();
  Run(*gpu_model_, {&state}, {Tokens(23)}, LogitsMode::kNone);  // wrapped ring
  auto host = gpu_model_->StateToHost(state);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(host->device(), Device::kCpu);
  EXPECT_EQ(host->bytes(), gpu_model_->StateBytes());
  EXPECT_EQ(host->position(), 23);
  // A host state is refused by the GPU model until it is restored.
  const std::vector<int32_t> next = Tokens(4);
  Tensor logits;
  EXPECT_EQ(gpu_model_->Forward({{next.data(), 4, &*host}}, LogitsMode::kAll, &logits).code(),
            absl::StatusCode::kInvalidArgument);
  auto restored = gpu_model_->StateFromHost(*host);
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto clone = gpu_model_->CloneState(state);
  ASSERT_TRUE(clone.ok()) << clone.status();
  const std::vector<float> original = Run(*gpu_model_, {&state}, {next}, LogitsMode::kAll);
  EXPECT_EQ(Run(*gpu_model_, {&*restored}, {next}, LogitsMode::kAll), original);
  EXPECT_EQ(Run(*gpu_model_, {&*clone}, {next}, LogitsMode::kAll), original);
}

TEST_F(CudaBackendTest, ReportsDeviceMemory) {
  const DeviceMemoryInfo info = gpu_->MemoryInfo();
  EXPECT_GT(info.total_bytes, 0u);
  EXPECT_LE(info.free_bytes, info.total_bytes);
  EXPECT_GT(info.free_bytes, 0u);
}

TEST_F(CudaBackendTest, OutOfMemoryIsResourceExhausted) {
  auto huge = gpu_->Allocate(DType::kF32, {int64_t{1} << 40});  // 4 TiB
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  // The backend still works afterwards: allocations, and kernel launches (whose launch check must
  // not report the handled allocation failure again).
  auto small = gpu_->Allocate(DType::kF32, {4, 16});
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_TRUE(gpu_->FillRows(Up(Random({16})), *small).ok());
  EXPECT_TRUE(gpu_->Synchronize().ok());
}

}  // namespace
}  // namespace mnemo::engine
