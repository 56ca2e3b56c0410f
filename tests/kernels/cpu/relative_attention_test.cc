// kernels::RelativeAttention against a naive double-precision implementation of MODEL-SPEC §1.1
// steps 5–7 (direct δ indexing, the Hugging Face same_length rule), over decode (T = 1) and BLAS
// (T > 1, across the 64-row query blocks) paths, memory empty / partial / full, keys split in
// 1–3 spans (ring wrap-around), same_length on and off, clamp_len 0 and small.
#include "kernels/cpu/relative_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {
namespace {

struct Case {
  int num_heads;
  int head_dim;
  int64_t query_len;
  int64_t memory_len;
  int64_t mem_len_max;
  int64_t clamp_len;
  bool same_length;
  int num_spans;
  uint32_t seed;

  std::string Name() const {
    return absl::StrCat("H", num_heads, "_dh", head_dim, "_T", query_len, "_M", memory_len, "_Mmax",
                        mem_len_max, "_clamp", clamp_len, "_same", same_length, "_spans",
                        num_spans);
  }
};

// Inputs laid out as the kernel sees them, each buffer allocated to its exact extent (so reading
// past what the contract allows is a heap overflow under ASan), with row strides wider than the
// rows.
struct Inputs {
  RelativeAttentionShape shape;
  int64_t width;  // H·d_h
  int64_t ldq, ldr, ldo;
  std::vector<float> q;                       // [T, ldq]
  std::vector<std::vector<float>> k_storage;  // per span [rows, ld]
  std::vector<std::vector<float>> v_storage;  // per span [rows, ld]
  std::vector<KvSpan> spans;
  std::vector<int64_t> span_of_key, row_in_span;  // key position → (span, row)
  std::vector<float> rk;                          // [table rows, ldr] (16-bit: widened)
  std::vector<uint16_t> rk16;                     // the table stored 16-bit (type), if set
  WeightType table_type = WeightType::kF32;
  std::vector<float> r_w_bias, r_r_bias;  // [H, d_h]

  KvSpan Table() const {
    const auto rows = static_cast<int64_t>((rk.size() + ldr - 1) / ldr);
    if (table_type == WeightType::kF32) return KvSpan{rk.data(), nullptr, ldr, rows};
    return KvSpan{nullptr, nullptr, ldr, rows, rk16.data(), nullptr, table_type};
  }

  // From the float32 storage (which holds a 16-bit span's values widened).
  const float* Key(int64_t j) const {
    const auto s = static_cast<size_t>(span_of_key[j]);
    return k_storage[s].data() + row_in_span[j] * spans[s].ld;
  }
  const float* Value(int64_t j) const {
    const auto s = static_cast<size_t>(span_of_key[j]);
    return v_storage[s].data() + row_in_span[j] * spans[s].ld;
  }
};

std::vector<float> RandomVector(size_t n, std::mt19937& rng, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Rows [rows, ld] with only `width` meaningful columns in the last row (exact extent).
size_t Extent(int64_t rows, int64_t ld, int64_t width) {
  return rows == 0 ? 0 : static_cast<size_t>((rows - 1) * ld + width);
}

int64_t ExpectedTableRows(const RelativeAttentionShape& s) {
  const int64_t max_distance = s.memory_len + s.query_len - 1;
  return (s.clamp_len > 0 ? std::min(max_distance, s.clamp_len) : max_distance) + 1;
}

Inputs MakeInputs(const Case& c) {
  std::mt19937 rng(c.seed);
  Inputs in;
  in.shape = RelativeAttentionShape{c.num_heads,   c.head_dim,  c.query_len,  c.memory_len,
                                    c.mem_len_max, c.clamp_len, c.same_length};
  in.width = static_cast<int64_t>(c.num_heads) * c.head_dim;
  in.ldq = in.width + 2;
  in.ldr = in.width + 1;
  in.ldo = in.width + 3;
  in.q = RandomVector(Extent(c.query_len, in.ldq, in.width), rng, 1.0f);
  const int64_t keys = c.memory_len + c.query_len;
  // Split [0, keys) into num_spans non-empty runs at random points.
  const int64_t n_spans = std::min<int64_t>(c.num_spans, keys);
  std::vector<int64_t> cuts;
  std::vector<int64_t> candidates;
  for (int64_t p = 1; p < keys; ++p) candidates.push_back(p);
  std::shuffle(candidates.begin(), candidates.end(), rng);
  cuts.assign(candidates.begin(), candidates.begin() + (n_spans - 1));
  cuts.push_back(0);
  cuts.push_back(keys);
  std::sort(cuts.begin(), cuts.end());
  in.k_storage.resize(static_cast<size_t>(n_spans));
  in.v_storage.resize(static_cast<size_t>(n_spans));
  for (int64_t s = 0; s < n_spans; ++s) {
    const int64_t rows = cuts[s + 1] - cuts[s];
    const int64_t ld = in.width + static_cast<int64_t>(rng() % 4);
    in.k_storage[s] = RandomVector(Extent(rows, ld, in.width), rng, 1.0f);
    in.v_storage[s] = RandomVector(Extent(rows, ld, in.width), rng, 1.0f);
    in.spans.push_back(KvSpan{in.k_storage[s].data(), in.v_storage[s].data(), ld, rows});
    for (int64_t r = 0; r < rows; ++r) {
      in.span_of_key.push_back(s);
      in.row_in_span.push_back(r);
    }
  }
  const int64_t table_rows = RelativeTableRowsNeeded(in.shape);
  in.rk = RandomVector(Extent(table_rows, in.ldr, in.width), rng, 1.0f);
  in.r_w_bias = RandomVector(static_cast<size_t>(in.width), rng, 0.5f);
  in.r_r_bias = RandomVector(static_cast<size_t>(in.width), rng, 0.5f);
  return in;
}

// MODEL-SPEC §1.1 steps 5–7 in double, written from the text: a full K-column mask, distance δ =
// (M + i) − j indexed straight into the table, masked rows that are entirely masked give zeros.
std::vector<double> NaiveAttention(const Inputs& in) {
  const RelativeAttentionShape& s = in.shape;
  const int64_t t_len = s.query_len, m = s.memory_len, k_len = m + t_len;
  const int dh = s.head_dim;
  std::vector<double> out(static_cast<size_t>(t_len * in.width), 0.0);
  for (int h = 0; h < s.num_heads; ++h) {
    for (int64_t i = 0; i < t_len; ++i) {
      std::vector<double> score(static_cast<size_t>(k_len));
      std::vector<bool> masked(static_cast<size_t>(k_len), false);
      for (int64_t j = 0; j < k_len; ++j) {
        bool forbid = j > m + i;
        if (s.same_length) {
          const int64_t mask_len = k_len - s.mem_len_max;
          const int64_t shift = mask_len > 0 ? t_len - mask_len : t_len;
          forbid = forbid || j <= i - shift;
        }
        masked[j] = forbid;
        if (forbid) continue;
        int64_t delta = (m + i) - j;
        if (s.clamp_len > 0) delta = std::min(delta, s.clamp_len);
        const float* q = in.q.data() + i * in.ldq + h * dh;
        const float* k = in.Key(j) + h * dh;
        const float* r = in.rk.data() + delta * in.ldr + h * dh;
        double ac = 0.0, bd = 0.0;
        for (int d = 0; d < dh; ++d) {
          ac += (static_cast<double>(q[d]) + in.r_w_bias[h * dh + d]) * k[d];
          bd += (static_cast<double>(q[d]) + in.r_r_bias[h * dh + d]) * r[d];
        }
        score[j] = (ac + bd) / std::sqrt(static_cast<double>(dh));
      }
      double max = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < k_len; ++j) {
        if (!masked[j]) max = std::max(max, score[j]);
      }
      if (max == -std::numeric_limits<double>::infinity()) continue;  // every key masked
      double z = 0.0;
      for (int64_t j = 0; j < k_len; ++j) {
        if (!masked[j]) z += std::exp(score[j] - max);
      }
      for (int64_t j = 0; j < k_len; ++j) {
        if (masked[j]) continue;
        const double p = std::exp(score[j] - max) / z;
        const float* v = in.Value(j) + h * dh;
        for (int d = 0; d < dh; ++d) out[i * in.width + h * dh + d] += p * v[d];
      }
    }
  }
  return out;
}

constexpr float kSentinel = -12345.0f;

// Runs the kernel into an output whose padding columns and unwritten cells hold a sentinel.
std::vector<float> RunKernel(const Inputs& in, ThreadPool& pool) {
  std::vector<float> out(Extent(in.shape.query_len, in.ldo, in.width), kSentinel);
  RelativeAttention(in.shape, in.q.data(), in.ldq, in.spans, in.Table(), in.r_w_bias.data(),
                    in.r_r_bias.data(), out.data(), in.ldo, pool);
  return out;
}

::testing::AssertionResult Compare(const Inputs& in, const std::vector<float>& got,
                                   const std::vector<double>& want, double tol) {
  double max_want = 0.0, max_diff = 0.0;
  int64_t worst = -1;
  for (int64_t i = 0; i < in.shape.query_len; ++i) {
    for (int64_t c = 0; c < in.width; ++c) {
      const double w = want[i * in.width + c];
      const double g = got[i * in.ldo + c];
      if (std::isnan(g)) return ::testing::AssertionFailure() << "NaN at row " << i << " col " << c;
      max_want = std::max(max_want, std::fabs(w));
      if (std::fabs(g - w) > max_diff) {
        max_diff = std::fabs(g - w);
        worst = i * in.width + c;
      }
    }
    for (int64_t c = in.width; c < in.ldo && i + 1 < in.shape.query_len; ++c) {
      if (got[i * in.ldo + c] != kSentinel) {
        return ::testing::AssertionFailure() << "wrote into row padding at row " << i;
      }
    }
  }
  if (max_diff <= tol * max_want) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |kernel - naive| " << max_diff << " > " << tol
                                       << " * " << max_want << " (flat index " << worst << ")";
}

std::vector<Case> SweepCases() {
  std::vector<Case> cases;
  uint32_t seed = 1;
  const std::pair<int, int> heads[] = {{1, 4}, {3, 5}, {2, 16}};
  for (const auto& [h, dh] : heads) {
    for (int64_t t : {1, 2, 7, 64, 65, 128, 129, 300}) {
      for (int64_t m_max : {0, 10, 50}) {
        std::vector<int64_t> fills = {0};
        if (m_max > 0) fills = {0, m_max / 2, m_max};  // empty, partial, full
        for (int64_t m : fills) {
          for (bool same : {false, true}) {
            if (same && m_max == 0) continue;  // every key masked: FullyMaskedRowsAreZero
            for (int64_t clamp : {0, 3}) {
              for (int spans : {1, 2, 3}) {
                // Keep the sweep affordable: the longest segments with one head layout only.
                if (t == 300 && h != 3) continue;
                cases.push_back(Case{h, dh, t, m, m_max, clamp, same, spans, seed++});
              }
            }
          }
        }
      }
    }
  }
  return cases;
}

TEST(RelativeAttentionTest, MatchesNaiveImplementationOverSweep) {
  ThreadPool pool3(3);
  ThreadPool pool1(1);
  int checked = 0;
  for (const Case& c : SweepCases()) {
    SCOPED_TRACE(c.Name());
    const Inputs in = MakeInputs(c);
    ASSERT_EQ(RelativeTableRowsNeeded(in.shape), ExpectedTableRows(in.shape));
    const std::vector<double> want = NaiveAttention(in);
    ThreadPool& pool = (c.seed % 2 == 0) ? pool1 : pool3;
    ASSERT_TRUE(Compare(in, RunKernel(in, pool), want, 1e-5));
    ++checked;
  }
  EXPECT_GT(checked, 1000);
}

// Decode (T = 1) and multi-row paths agree whichever pool size runs them.
TEST(RelativeAttentionTest, ResultDoesNotDependOnThreadCount) {
  for (int64_t t : {1, 9, 200}) {
    const Case c{4, 8, t, 40, 48, 0, true, 3, 99u + static_cast<uint32_t>(t)};
    SCOPED_TRACE(c.Name());
    const Inputs in = MakeInputs(c);
    ThreadPool one(1), four(4);
    const std::vector<float> a = RunKernel(in, one);
    const std::vector<float> b = RunKernel(in, four);
    ASSERT_TRUE(Compare(in, a, NaiveAttention(in), 1e-5));
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-6f * (std::fabs(a[i]) + 1));
  }
}

// narrow = wide stored as `type`; wide = what that stores, widened again.
void Narrow16(std::vector<float>& wide, std::vector<uint16_t>& narrow, WeightType type) {
  narrow.resize(wide.size());
  for (size_t i = 0; i < wide.size(); ++i) {
    narrow[i] = type == WeightType::kBF16 ? FloatToBFloat16(wide[i]) : FloatToHalf(wide[i]);
    wide[i] = type == WeightType::kBF16 ? BFloat16ToFloat(narrow[i]) : HalfToFloat(narrow[i]);
  }
}

// 16-bit rings (KvSpan::type, --session-memory): every span but the last (the segment's own rows,
// float32 in the engine) and in half the cases the distance table stored as bf16 or f16. The kernel
// computes on the stored values exactly as on float32 rows holding them: checked against the naive
// reference on the widened values, over decode and multi-row cases of the sweep, partial and
// wrapped rings included.
TEST(RelativeAttentionTest, SixteenBitMemorySpansComputeOnTheirStoredValues) {
  ThreadPool pool(3);
  int checked = 0;
  for (const WeightType type : {WeightType::kBF16, WeightType::kF16}) {
    for (const Case& c : SweepCases()) {
      if (c.seed % 5 != 0 || c.num_spans < 2) continue;  // a fifth of the multi-span cases
      SCOPED_TRACE(c.Name() + (type == WeightType::kBF16 ? " bf16" : " f16"));
      Inputs in = MakeInputs(c);
      std::vector<std::vector<uint16_t>> k16(in.spans.size()), v16(in.spans.size());
      if (c.seed % 2 == 1) {  // the distance table too (a long segment's table stays float32)
        Narrow16(in.rk, in.rk16, type);
        in.table_type = type;
      }
      for (size_t s = 0; s + 1 < in.spans.size(); ++s) {
        Narrow16(in.k_storage[s], k16[s], type);
        Narrow16(in.v_storage[s], v16[s], type);
        const KvSpan f32 = in.spans[s];
        in.spans[s] =
            KvSpan{nullptr, nullptr, f32.ld, f32.rows, k16[s].data(), v16[s].data(), type};
      }
      ASSERT_TRUE(Compare(in, RunKernel(in, pool), NaiveAttention(in), 1e-5));
      ++checked;
    }
  }
  EXPECT_GT(checked, 150);
}

// With same_length, once K > mem_len_max every query sees exactly mem_len_max keys: the oldest
// visible key is the boundary case (one more would change the result).
TEST(RelativeAttentionTest, SameLengthWindowBoundary) {
  for (int64_t t : {1, 5, 130}) {
    for (int64_t m : {0, 3, 8}) {
      const Case c{2, 4, t, m, 8, 0, true, 2, 500u + static_cast<uint32_t>(t * 10 + m)};
      SCOPED_TRACE(c.Name());
      const Inputs in = MakeInputs(c);
      ASSERT_TRUE(Compare(in, RunKernel(in, ThreadPool::Default()), NaiveAttention(in), 1e-5));
    }
  }
}

TEST(RelativeAttentionTest, ClampLenLargerThanAnyDistanceEqualsNoClamp) {
  const Case clamped{2, 6, 20, 10, 16, 1000, false, 2, 4242u};
  Case plain = clamped;
  plain.clamp_len = 0;
  Inputs a = MakeInputs(clamped);
  const Inputs b = MakeInputs(plain);  // same seed: same data, same table rows needed
  ASSERT_EQ(a.rk.size(), b.rk.size());
  ThreadPool pool(2);
  EXPECT_EQ(RunKernel(a, pool), RunKernel(b, pool));
}

TEST(RelativeAttentionTest, EmptyQueryWritesNothing) {
  const Case c{2, 4, 1, 5, 8, 0, false, 1, 7u};
  Inputs in = MakeInputs(c);
  in.shape.query_len = 0;
  std::vector<float> out(4, kSentinel);
  RelativeAttention(in.shape, in.q.data(), in.ldq, in.spans, in.Table(), in.r_w_bias.data(),
                    in.r_r_bias.data(), out.data(), in.ldo, ThreadPool::Default());
  for (float v : out) EXPECT_EQ(v, kSentinel);
}

// mem_len_max = 0 with same_length masks every key of every query (the Hugging Face rule keeps
// mem_len_max = 0 keys). MODEL-SPEC §0 item 2: a fully masked row must produce zeros, not NaN and
// not whatever the output buffer held before.
TEST(RelativeAttentionTest, FullyMaskedRowsAreZero) {
  for (int64_t t : {1, 2, 3, 128, 129, 257}) {
    const Case c{2, 4, t, 0, 0, 0, true, 1, 900u + static_cast<uint32_t>(t)};
    SCOPED_TRACE(c.Name());
    const Inputs in = MakeInputs(c);
    const std::vector<float> got = RunKernel(in, ThreadPool::Default());
    for (int64_t i = 0; i < t; ++i) {
      for (int64_t col = 0; col < in.width; ++col) {
        ASSERT_EQ(got[i * in.ldo + col], 0.0f) << "row " << i << " col " << col;
      }
    }
  }
}

}  // namespace
}  // namespace mnemo::kernels
