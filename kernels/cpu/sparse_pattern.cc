// Sparse patterns' allowed positions, the per-query key plan (SparseQueryKeys) and the key-by-key
// CPU attention over them (sparse_pattern.h).
#include "kernels/cpu/sparse_pattern.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/half_linear.h"

namespace mnemo::kernels {
namespace {

// splitmix64's finaliser (docs/checkpoint-format.md: BigBird's random blocks).
uint64_t SplitMix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Positions [a, b] ∩ [lo, p], appended.
void AppendRange(int64_t a, int64_t b, int64_t lo, int64_t p, std::vector<int64_t>& out) {
  a = std::max(a, lo);
  b = std::min(b, p);
  for (int64_t j = a; j <= b; ++j) out.push_back(j);
}

void SortUnique(std::vector<int64_t>& v, size_t from) {
  std::sort(v.begin() + static_cast<std::ptrdiff_t>(from), v.end());
  v.erase(std::unique(v.begin() + static_cast<std::ptrdiff_t>(from), v.end()), v.end());
}

// Key index `j` → the span holding it, `j` becoming its row there.
inline const KvSpan* Locate(const std::vector<KvSpan>& spans, int64_t& j) {
  for (const KvSpan& span : spans) {
    if (j < span.rows) return &span;
    j -= span.rows;
  }
  return nullptr;  // unreachable for valid shapes
}

}  // namespace

std::vector<int64_t> BigBirdRandomBlocks(const SparsePattern& pattern, int h, int64_t q) {
  const int64_t b = pattern.block;
  const int64_t lo = std::max<int64_t>(0, q - pattern.span / b);
  const int64_t hi = q - pattern.window_blocks;
  std::vector<int64_t> out;
  if (hi < lo) return out;
  const int64_t n = hi - lo + 1, r = pattern.random_blocks;
  if (n <= r) {
    for (int64_t k = lo; k <= hi; ++k) out.push_back(k);
    return out;
  }
  // A partial Fisher–Yates shuffle over C = [lo, hi], remembering only the swapped slots.
  std::vector<std::pair<int64_t, int64_t>> moved;  // (index into C, value now there)
  auto at = [&](int64_t i) {
    for (auto it = moved.rbegin(); it != moved.rend(); ++it) {
      if (it->first == i) return it->second;
    }
    return lo + i;
  };
  for (int64_t t = 0; t < r; ++t) {
    const uint64_t mix = SplitMix(
        SplitMix(SplitMix(pattern.seed ^ static_cast<uint64_t>(h)) ^ static_cast<uint64_t>(q)) ^
        static_cast<uint64_t>(t));
    const int64_t i = t + static_cast<int64_t>(mix % static_cast<uint64_t>(n - t));
    const int64_t at_t = at(t), at_i = at(i);
    moved.emplace_back(t, at_i);
    moved.emplace_back(i, at_t);
    out.push_back(at_i);
  }
  return out;
}

void AppendAllowedPositions(const SparsePattern& pattern, int h, int64_t p,
                            std::vector<int64_t>& out) {
  const size_t from = out.size();
  const int64_t lo = std::max<int64_t>(0, p - pattern.span);
  switch (pattern.kind) {
    case SparsePatternKind::kWindow: {
      const int64_t dil = pattern.dilations[h];
      for (int64_t r = pattern.window - 1; r >= 0; --r) {
        if (p - r * dil >= lo) out.push_back(p - r * dil);
      }
      return;  // ascending already
    }
    case SparsePatternKind::kStrided: {
      const int64_t l = pattern.stride;
      const uint8_t parts = pattern.head_components[h];
      if (parts & 2u) {
        for (int64_t j = p - ((p - lo) / l) * l; j <= p; j += l) out.push_back(j);
      }
      if (parts & 1u) AppendRange(p - l + 1, p, lo, p, out);
      if (parts == 3u) SortUnique(out, from);
      return;
    }
    case SparsePatternKind::kFixed: {
      const int64_t l = pattern.block, c = pattern.summary;
      const uint8_t parts = pattern.head_components[h];
      if (parts & 2u) {
        for (int64_t blk = lo / l; blk <= p / l; ++blk) {
          AppendRange(blk * l + l - c, blk * l + l - 1, lo, p, out);
        }
      }
      if (parts & 1u) AppendRange((p / l) * l, p, lo, p, out);
      if (parts == 3u) SortUnique(out, from);
      return;
    }
    case SparsePatternKind::kBigBird: {
      const int64_t b = pattern.block, q = p / b;
      for (int64_t k : BigBirdRandomBlocks(pattern, h, q))
        AppendRange(k * b, k * b + b - 1, lo, p, out);
      AppendRange((q - pattern.window_blocks + 1) * b, p, lo, p, out);
      SortUnique(out, from);
      return;
    }
  }
}

SparseQueryKeys::SparseQueryKeys(const SparsePattern& pattern, const SparsePatternShape& shape,
                                 const std::vector<int64_t>& stored_globals,
                                 const std::vector<uint8_t>& segment_global)
    : pattern_(pattern),
      shape_(shape),
      stored_(stored_globals),
      segment_global_(segment_global),
      segment_start_(shape.first_position + shape.memory_len),
      globals_before_(static_cast<size_t>(shape.query_len), 0) {
  for (int64_t i = 0; i < shape.query_len; ++i) {
    globals_before_[i] = static_cast<int64_t>(seg_globals_.size());
    if (!segment_global.empty() && segment_global[i]) seg_globals_.push_back(segment_start_ + i);
  }
}

void SparseQueryKeys::Positions(int h, int64_t i, std::vector<int64_t>* out) const {
  std::vector<int64_t>& positions = *out;
  positions.clear();
  const int64_t p = segment_start_ + i;
  if (!segment_global_.empty() && segment_global_[i]) {
    AppendRange(p - pattern_.span, p, std::max<int64_t>(0, p - pattern_.span), p, positions);
  } else {
    AppendAllowedPositions(pattern_, h, p, positions);
  }
  // K(p): the last max_global global positions before p (stored, then the segment's).
  const auto stored = static_cast<int64_t>(stored_.size());
  const int64_t before = globals_before_[i];
  const int64_t kept = std::min(shape_.max_global, stored + before);
  const size_t own = positions.size();
  for (int64_t g = stored + before - kept; g < stored + before; ++g) {
    positions.push_back(g < stored ? stored_[g] : seg_globals_[g - stored]);
  }
  if (positions.size() > own) {
    std::inplace_merge(positions.begin(), positions.begin() + static_cast<std::ptrdiff_t>(own),
                       positions.end());
    positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  }
}

void SparsePatternAttention(const SparsePattern& pattern, const SparsePatternShape& shape,
                            const float* q, int64_t ldq, const std::vector<KvSpan>& keys,
                            const GlobalKeys& globals, const std::vector<uint8_t>& segment_global,
                            float* out, int64_t ldo, ThreadPool& pool) {
  const int head_dim = shape.head_dim;
  const int64_t t_len = shape.query_len, m = shape.memory_len;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const SparseQueryKeys query_keys(pattern, shape, globals.positions, segment_global);
  pool.ParallelFor(shape.num_heads * t_len, 4, [&](int64_t i0, int64_t i1) {
    thread_local std::vector<int64_t> positions;
    thread_local std::vector<float> scores;
    thread_local std::vector<const float*> krows, vrows;
    thread_local std::vector<float> widened;  // [2·n, d_h]: 16-bit rows' head slices, widened
    for (int64_t task = i0; task < i1; ++task) {
      const int h = static_cast<int>(task / t_len);
      const int64_t i = task % t_len;
      query_keys.Positions(h, i, &positions);
      const int64_t n = static_cast<int64_t>(positions.size());
      scores.resize(static_cast<size_t>(n));
      krows.resize(static_cast<size_t>(n));
      vrows.resize(static_cast<size_t>(n));
      widened.resize(static_cast<size_t>(2 * n * head_dim));
      const float* qh = q + i * ldq + h * head_dim;
      for (int64_t r = 0; r < n; ++r) {
        const int64_t pos = positions[r];
        if (pos >= shape.first_position) {
          int64_t j = pos - shape.first_position;
          const KvSpan& span = *Locate(keys, j);
          const int64_t at = j * span.ld + h * head_dim;
          if (span.type == WeightType::kF32) {
            krows[r] = span.k + at;
            vrows[r] = span.v + at;
          } else {  // a 16-bit ring (16-bit session memory)
            float* k = widened.data() + 2 * r * head_dim;
            WidenRow(span.k16 + at, span.type, 1.0f, k, head_dim);
            WidenRow(span.v16 + at, span.type, 1.0f, k + head_dim, head_dim);
            krows[r] = k;
            vrows[r] = k + head_dim;
          }
        } else {  // a kept global position older than the ring
          const auto it = std::lower_bound(globals.positions.begin(), globals.positions.end(), pos);
          const int64_t row = globals.rows[static_cast<size_t>(it - globals.positions.begin())];
          krows[r] = globals.k + row * globals.ld + h * head_dim;
          vrows[r] = globals.v + row * globals.ld + h * head_dim;
        }
        float dot = 0.0f;
        for (int d = 0; d < head_dim; ++d) dot += qh[d] * krows[r][d];
        scores[r] = dot * scale;
        if (shape.prev_scores != nullptr || shape.out_scores != nullptr) {  // RealFormer
          const int64_t at = (h * t_len + i) * (m + t_len) + (pos - shape.first_position);
          if (shape.prev_scores != nullptr) scores[r] += shape.prev_scores[at];
          if (shape.out_scores != nullptr) shape.out_scores[at] = scores[r];
        }
      }
      if (n > 0) SoftmaxRow(scores.data(), n);  // no key at all (a summary-only head): zeros
      float* o = out + i * ldo + h * head_dim;
      for (int d = 0; d < head_dim; ++d) o[d] = 0.0f;
      for (int64_t r = 0; r < n; ++r) {
        const float w = scores[r];
        const float* vr = vrows[r];
        for (int d = 0; d < head_dim; ++d) o[d] += w * vr[d];
      }
    }
  });
}

}  // namespace mnemo::kernels
