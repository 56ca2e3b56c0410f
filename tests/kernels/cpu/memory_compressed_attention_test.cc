// kernels/cpu/memory_compressed_attention: the attention against a naive double-precision loop
// that lists every query's keys from the definition (the compressed blocks max(0, b − S) … b − 1
// and its own block's positions up to itself), over a sweep of positions, segment lengths, block
// sizes and spans, with the rows cut into spans as rings cut them, in float32 and 16-bit rings;
// and the block counts the callers size their buffers with.
#include "kernels/cpu/memory_compressed_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "base/dtype.h"
#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

// Rows [0, n) of width w cut into spans of at most `piece` rows, each in its own buffer, stored
// as `type` (16-bit rows hold the values the float32 copies were rounded to).
struct Rows {
  std::vector<std::vector<float>> kf, vf;
  std::vector<std::vector<uint16_t>> k16, v16;
  std::vector<KvSpan> spans;
};

Rows Cut(const std::vector<float>& k, const std::vector<float>& v, int64_t w, int64_t piece,
         WeightType type) {
  Rows out;
  const int64_t n = static_cast<int64_t>(k.size()) / w;
  for (int64_t r0 = 0; r0 < n; r0 += piece) {
    const int64_t rows = std::min(piece, n - r0);
    const auto begin = static_cast<size_t>(r0 * w), end = static_cast<size_t>((r0 + rows) * w);
    if (type == WeightType::kF32) {
      out.kf.emplace_back(k.begin() + begin, k.begin() + end);
      out.vf.emplace_back(v.begin() + begin, v.begin() + end);
      out.spans.push_back({out.kf.back().data(), out.vf.back().data(), w, rows});
    } else {
      const DType dtype = type == WeightType::kBF16 ? DType::kBF16 : DType::kF16;
      out.k16.emplace_back(end - begin);
      out.v16.emplace_back(end - begin);
      ConvertFromFloat(k.data() + begin, dtype, out.k16.back().data(), end - begin);
      ConvertFromFloat(v.data() + begin, dtype, out.v16.back().data(), end - begin);
      out.spans.push_back(
          {nullptr, nullptr, w, rows, out.k16.back().data(), out.v16.back().data(), type});
    }
  }
  return out;
}

// Values as a 16-bit ring stores them.
void RoundTo(std::vector<float>& x, WeightType type) {
  for (float& e : x) {
    if (type == WeightType::kBF16) e = BFloat16ToFloat(FloatToBFloat16(e));
    if (type == WeightType::kF16) e = HalfToFloat(FloatToHalf(e));
  }
}

struct Param {
  int heads, head_dim;
  int64_t position, query_len, rate, cmem_len, piece;
};

void Check(const Param& p, WeightType type) {
  SCOPED_TRACE(testing::Message() << "position " << p.position << " T " << p.query_len << " c "
                                  << p.rate << " S " << p.cmem_len << " piece " << p.piece);
  const MemoryCompressedShape shape{p.heads,    p.head_dim, p.query_len,
                                    p.position, p.rate,     p.cmem_len};
  const int64_t w = static_cast<int64_t>(p.heads) * p.head_dim;
  const int64_t before = CompressedBlocksBefore(shape), open = OpenBlockRows(shape);
  const int64_t blocks = BlocksCompleted(shape);
  EXPECT_EQ(before, std::min(p.position / p.rate, p.cmem_len));
  EXPECT_EQ(open, p.position % p.rate);
  EXPECT_EQ(blocks, (p.position + p.query_len) / p.rate - p.position / p.rate);
  std::mt19937 rng(static_cast<uint32_t>(p.position * 131 + p.query_len * 7 + p.rate));
  std::normal_distribution<float> dist;
  const auto random = [&](int64_t rows) {
    std::vector<float> x(static_cast<size_t>(rows * w));
    for (float& e : x) e = dist(rng);
    return x;
  };
  // Compressed rows of blocks first_block … first_block + before + blocks − 1; the stored ones
  // round as the ring stores them, the call's own stay float32.
  std::vector<float> ck = random(before + blocks), cv = random(before + blocks);
  std::vector<float> rk = random(open + p.query_len), rv = random(open + p.query_len);
  std::vector<float> stored_ck(ck.begin(), ck.begin() + before * w);
  std::vector<float> stored_cv(cv.begin(), cv.begin() + before * w);
  std::vector<float> stored_rk(rk.begin(), rk.begin() + open * w);
  std::vector<float> stored_rv(rv.begin(), rv.begin() + open * w);
  for (auto* x : {&stored_ck, &stored_cv, &stored_rk, &stored_rv}) RoundTo(*x, type);
  std::copy(stored_ck.begin(), stored_ck.end(), ck.begin());
  std::copy(stored_cv.begin(), stored_cv.end(), cv.begin());
  std::copy(stored_rk.begin(), stored_rk.end(), rk.begin());
  std::copy(stored_rv.begin(), stored_rv.end(), rv.begin());
  Rows cring = Cut(stored_ck, stored_cv, w, p.piece, type);
  Rows rring = Cut(stored_rk, stored_rv, w, p.piece, type);
  std::vector<KvSpan> compressed = cring.spans, raw = rring.spans;
  compressed.push_back({ck.data() + before * w, cv.data() + before * w, w, blocks});
  raw.push_back({rk.data() + open * w, rv.data() + open * w, w, p.query_len});
  const std::vector<float> q = random(p.query_len);
  std::vector<float> out(static_cast<size_t>(p.query_len * w), -1.0f);
  MemoryCompressedAttention(shape, q.data(), w, compressed, raw, out.data(), w,
                            ThreadPool::Default());

  const int64_t first_block = p.position / p.rate - before, first_raw = p.position - open;
  double worst = 0.0;
  for (int64_t i = 0; i < p.query_len; ++i) {
    const int64_t pos = p.position + i, b = pos / p.rate;
    for (int h = 0; h < p.heads; ++h) {
      // (key row, value row) of every key the definition names
      std::vector<std::pair<const float*, const float*>> keys;
      for (int64_t j = std::max<int64_t>(0, b - p.cmem_len); j < b; ++j) {
        const int64_t r = j - first_block;
        ASSERT_GE(r, 0);
        keys.emplace_back(ck.data() + r * w, cv.data() + r * w);
      }
      for (int64_t m = b * p.rate; m <= pos; ++m) {
        const int64_t r = m - first_raw;
        ASSERT_GE(r, 0);
        keys.emplace_back(rk.data() + r * w, rv.data() + r * w);
      }
      std::vector<double> s(keys.size());
      double top = -1e300;
      for (size_t k = 0; k < keys.size(); ++k) {
        double dot = 0;
        for (int e = 0; e < p.head_dim; ++e) {
          dot += double(q[i * w + h * p.head_dim + e]) * keys[k].first[h * p.head_dim + e];
        }
        s[k] = dot / std::sqrt(double(p.head_dim));
        top = std::max(top, s[k]);
      }
      double z = 0;
      for (double& x : s) z += (x = std::exp(x - top));
      for (int e = 0; e < p.head_dim; ++e) {
        double want = 0;
        for (size_t k = 0; k < keys.size(); ++k) {
          want += s[k] / z * keys[k].second[h * p.head_dim + e];
        }
        worst = std::max(worst, std::abs(want - out[i * w + h * p.head_dim + e]));
      }
    }
  }
  EXPECT_LE(worst, 2e-5);
}

TEST(MemoryCompressedAttentionTest, MatchesTheDefinitionKeyByKey) {
  const std::vector<Param> params = {
      {2, 8, 0, 1, 3, 4, 2},      // the first position: itself only
      {2, 8, 0, 17, 3, 4, 2},     // a first segment completing blocks as it goes
      {3, 4, 5, 1, 3, 4, 1},      // decode inside a block
      {3, 4, 6, 1, 3, 4, 3},      // decode opening a block: every key compressed but itself
      {3, 4, 8, 1, 3, 4, 2},      // decode completing a block
      {2, 8, 40, 1, 3, 4, 3},     // S blocks kept, older ones left behind
      {2, 8, 41, 23, 2, 5, 2},    // a long segment past S with c = 2
      {4, 8, 10, 30, 5, 100, 4},  // S beyond every block seen
      {1, 16, 7, 9, 4, 1, 1},     // S = 1
  };
  for (const Param& p : params) {
    for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kF16}) {
      SCOPED_TRACE(static_cast<int>(type));
      Check(p, type);
    }
  }
}

}  // namespace
}  // namespace mnemo::kernels
