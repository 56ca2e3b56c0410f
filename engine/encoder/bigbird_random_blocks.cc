#include "engine/encoder/bigbird_random_blocks.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mnemo::engine {
namespace {

// numpy.random's legacy generator (RandomState) after np.random.seed(int): MT19937 seeded by
// init_genrand, which std::mt19937 is, with numpy's own bounded draw and shuffle.
class NumpyLegacyRandom {
 public:
  explicit NumpyLegacyRandom(uint32_t seed) : mt_(seed) {}

  // random_interval: a value in [0, max] by masked rejection (32-bit draws for max < 2^32).
  uint32_t Interval(uint32_t max) {
    if (max == 0) return 0;
    uint32_t mask = max;
    for (int shift : {1, 2, 4, 8, 16}) mask |= mask >> shift;
    uint32_t value = 0;
    do {
      value = static_cast<uint32_t>(mt_()) & mask;
    } while (value > max);
    return value;
  }

  // RandomState.permutation of a 1-d array: Fisher–Yates from the end.
  std::vector<int32_t> Permutation(std::vector<int32_t> x) {
    for (size_t i = x.size(); i-- > 1;) std::swap(x[i], x[Interval(static_cast<uint32_t>(i))]);
    return x;
  }

 private:
  std::mt19937 mt_;
};

// Python's a[lo:hi] of a non-negative range.
std::vector<int32_t> Slice(const std::vector<int32_t>& a, int64_t lo, int64_t hi) {
  const auto n = static_cast<int64_t>(a.size());
  lo = std::clamp<int64_t>(lo, 0, n);
  hi = std::clamp<int64_t>(hi, lo, n);
  return {a.begin() + lo, a.begin() + hi};
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// numpy's row[...] = drawn[:r]: r values, or one broadcast; anything else is Hugging Face's error.
absl::Status Assign(const std::vector<int32_t>& drawn, int64_t r, int32_t* row) {
  const auto n = static_cast<int64_t>(drawn.size());
  if (n != 1 && n < r) {
    return absl::InvalidArgumentError(
        absl::StrCat("BigBird's random-block draw found ", n, " candidate blocks for ", r,
                     " random blocks per row; the pass is too short for block-sparse attention"));
  }
  for (int64_t t = 0; t < r; ++t) row[t] = drawn[n == 1 ? 0 : t];
  return absl::OkStatus();
}

// _bigbird_block_rand_mask: the paper's plan, used for passes of 1024, 3072 and 4096 positions.
// Rows are drawn for the whole position table (only the pass's first ones are kept), with random
// blocks among the first last_idx = 1024 positions' blocks.
absl::Status PaperPlan(NumpyLegacyRandom& rng, int64_t rows_kept, int64_t b, int64_t r,
                       int64_t table, int32_t* out) {
  const int64_t blocks = table / b;
  std::vector<int32_t> middle;  // blocks 1 … blocks − 2
  for (int64_t j = 1; j < blocks - 1; ++j) middle.push_back(static_cast<int32_t>(j));
  int64_t last = blocks - 1;
  if (1024 > 2 * b) last = 1024 / b - 1;
  std::vector<int32_t> row(static_cast<size_t>(r));
  for (int64_t i = 1; i < blocks - 1; ++i) {
    std::vector<int32_t> pool;
    int64_t start = i - 2;
    const int64_t end = i;
    if (i == 1) {
      pool = Slice(middle, 2, last);
    } else if (i == 2) {
      pool = Slice(middle, 3, last);
    } else if (i == blocks - 3 || i == blocks - 2) {
      pool = Slice(middle, 0, last);
    } else if (start > last) {
      start = last;
      pool = Slice(middle, 0, start);
    } else if (end + 1 == last) {
      pool = Slice(middle, 0, start);
    } else {
      pool = Concat(Slice(middle, 0, start), Slice(middle, end + 1, last));
    }
    const std::vector<int32_t> drawn = Slice(rng.Permutation(std::move(pool)), 0, r);
    if (i - 1 < rows_kept) {
      if (absl::Status s = Assign(drawn, r, out + (i - 1) * r); !s.ok()) return s;
    } else if (absl::Status s = Assign(drawn, r, row.data()); !s.ok()) {
      return s;  // Hugging Face fails on a row it later drops too
    }
  }
  return absl::OkStatus();
}

// _get_single_block_row_attention: r blocks of [0, to_end) outside the row's window, block 0 and
// block to_end − 1 (and block to_end − 2 for row 1, block 1 for row to_end − 2).
std::vector<int32_t> SingleRow(NumpyLegacyRandom& rng, int64_t row, int64_t to_end, int64_t r) {
  std::vector<int32_t> candidates;
  for (int64_t j = 0; j < to_end; ++j) candidates.push_back(static_cast<int32_t>(j));
  const std::vector<int32_t> perm = rng.Permutation(std::move(candidates));
  auto illegal = [&](int64_t j) {
    return (j >= row - 1 && j <= row + 1) || j == 0 || j == to_end - 1 ||
           (row == 1 && j == to_end - 2) || (row == to_end - 2 && j == 1);
  };
  std::vector<int32_t> chosen;
  for (int32_t j : perm) {
    if (!illegal(j)) chosen.push_back(j);
    if (static_cast<int64_t>(chosen.size()) == r) break;
  }
  return chosen;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> BigBirdRandomBlocks(const BigBirdRandomPlan& p) {
  const int64_t b = p.block_size, r = p.num_random, blocks = p.len / b, rows = blocks - 2;
  if (r < 1 || b < 1 || p.len % b != 0 || blocks < 2 * r + 6) {
    return absl::InvalidArgumentError(
        absl::StrCat("block-sparse attention needs more than 2·r + 5 = ", 2 * r + 5,
                     " blocks; the pass has ", blocks, " of ", b));
  }
  std::vector<int32_t> out(static_cast<size_t>(p.num_heads * rows * r));
  NumpyLegacyRandom rng(static_cast<uint32_t>(p.layer));
  if (p.len == 1024 || p.len == 3072 || p.len == 4096) {
    for (int64_t h = 0; h < p.num_heads; ++h) {
      if (absl::Status s = PaperPlan(rng, rows, b, r, p.position_rows, out.data() + h * rows * r);
          !s.ok()) {
        return s;
      }
    }
    return out;
  }
  // _bigbird_block_rand_mask_with_head. A block-sparse pass has more than 2r + 5 blocks, so
  // _get_rand_attn_plan's plan is always [(2r + 5)·b: r blocks, L: 0 blocks], and every row
  // 1 … blocks − 1 (the last one drawn, then dropped) draws, head by head, its r blocks among the
  // first 2r + 5.
  const int64_t plan_blocks = 2 * r + 5;
  std::vector<int32_t> dropped(static_cast<size_t>(r));
  for (int64_t i = 1; i < blocks; ++i) {
    for (int64_t h = 0; h < p.num_heads; ++h) {
      int32_t* row = i < blocks - 1 ? out.data() + (h * rows + i - 1) * r : dropped.data();
      if (absl::Status s = Assign(SingleRow(rng, i, plan_blocks, r), r, row); !s.ok()) return s;
    }
  }
  return out;
}

}  // namespace mnemo::engine
