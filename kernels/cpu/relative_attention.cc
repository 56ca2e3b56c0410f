// Transformer-XL relative attention on the CPU (relative_attention.h), one task per head and query
// block on the thread pool; the oracle of kernels/cuda/relative_attention.cu.
#include "kernels/cpu/relative_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/half_linear.h"

namespace mnemo::kernels {
namespace {

// Query rows per score block. A block computes scores for every key any of its rows sees, so with
// a causal or same_length window larger blocks waste more columns; smaller ones make the BLAS
// calls less efficient. 64 measured best here (prefill S=512: 1518 → 1621 tok/s against 128).
constexpr int64_t kQueryBlock = 64;
// A decode step's heads run on the calling thread while they hold less than this many
// multiply-adds in all: waking the pool costs more than small heads (a small model's) gain.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;
// Key rows per block of a decode step: 64 rows of every head (256 KiB at H·d_h = 1024) stay in
// cache while each head reads its slice.
constexpr int64_t kKeyBlock = 64;

int64_t EffectiveClamp(const RelativeAttentionShape& s) {
  return s.clamp_len > 0 ? s.clamp_len : std::numeric_limits<int64_t>::max();
}

// First key query i may see. Hugging Face rule for same_length: with K = M + T keys and
// K > mem_len_max, forbid j ≤ i − (mem_len_max − M); otherwise nothing extra is masked.
int64_t FirstVisibleKey(const RelativeAttentionShape& s, int64_t i) {
  if (!s.same_length) return 0;
  const int64_t k = s.memory_len + s.query_len;
  const int64_t shift = k > s.mem_len_max ? s.mem_len_max - s.memory_len : s.query_len;
  return std::max<int64_t>(0, i - shift + 1);
}

// Adds probabilities of keys [first, first + n) (row `p`) to the shape's key_mass (the task's
// own row: RelativeAttention).
void AddKeyMass(const RelativeAttentionShape& s, const float* p, int64_t first, int64_t n) {
  const int64_t lo = std::max(first, s.mass_begin), hi = std::min(first + n, s.mass_end);
  if (s.key_mass == nullptr || lo >= hi) return;
  for (int64_t j = lo; j < hi; ++j) s.key_mass[j - s.mass_begin] += p[j - first];
}

// RealFormer: scores of query i for keys [first, first + n) += the previous layer's, and the sums
// are passed on.
void CarryScores(const RelativeAttentionShape& s, int head, int64_t i, int64_t first, float* scores,
                 int64_t n) {
  const int64_t keys = s.memory_len + s.query_len;
  const int64_t at = (head * s.query_len + i) * keys + first;
  if (s.prev_scores != nullptr) {
    for (int64_t j = 0; j < n; ++j) scores[j] += s.prev_scores[at + j];
  }
  if (s.out_scores != nullptr) std::copy(scores, scores + n, s.out_scores + at);
}

// s[h·lds + j] = x's head h · (head h's slice of the key row row0 + j) for j < n and every
// head: each row read once, whole, where the head kernels run (AVX-512); otherwise head by head,
// 16-bit rows widened in registers, float32 rows through the decode kernel (BLAS on a CPU without
// AVX-512). The head kernels' sums are the head-by-head kernels', bit for bit.
void DotAllHeads(const KvSpan& span, int64_t row0, int64_t n, int heads, int head_dim,
                 const float* x, float* s, int64_t lds) {
  const int64_t off = row0 * span.ld;
  if (HeadKernelsAvailable(head_dim)) {
    if (span.type != WeightType::kF32) {
      HeadDots(x, span.k16 + off, span.type, span.ld, n, heads, head_dim, s, lds);
    } else {
      HeadDots(x, span.k + off, span.ld, n, heads, head_dim, s, lds);
    }
    return;
  }
  for (int h = 0; h < heads; ++h) {
    const int64_t at = off + static_cast<int64_t>(h) * head_dim;
    if (span.type != WeightType::kF32) {
      HalfDotRows(SupportedHalfIsas().front(), x + h * head_dim, span.k16 + at, span.ld, span.type,
                  n, head_dim, s + h * lds);
    } else if (FloatDecodeKernelAvailable()) {
      FloatDotRows(x + h * head_dim, span.k + at, span.ld, n, head_dim, s + h * lds);
    } else {
      Gemv(n, head_dim, span.k + at, span.ld, x + h * head_dim, 0.0f, s + h * lds);
    }
  }
}

// y[h·d_h …] += Σ_j p[h·ldp + j] · (head h's slice of the value row row0 + j) for every head,
// read the same ways.
void AddAllHeadsRowSum(const KvSpan& span, int64_t row0, int64_t n, int heads, int head_dim,
                       const float* p, int64_t ldp, float* y) {
  const int64_t off = row0 * span.ld;
  if (HeadKernelsAvailable(head_dim)) {
    if (span.type != WeightType::kF32) {
      HeadRowSums(p, ldp, span.v16 + off, span.type, span.ld, n, heads, head_dim, y);
    } else {
      HeadRowSums(p, ldp, span.v + off, span.ld, n, heads, head_dim, y);
    }
    return;
  }
  for (int h = 0; h < heads; ++h) {
    const int64_t at = off + static_cast<int64_t>(h) * head_dim;
    if (span.type != WeightType::kF32) {
      HalfRowSum(SupportedHalfIsas().front(), p + h * ldp, span.v16 + at, span.ld, span.type, n,
                 head_dim, y + h * head_dim);
    } else if (FloatDecodeKernelAvailable()) {
      FloatRowSum(p + h * ldp, span.v + at, span.ld, n, head_dim, y + h * head_dim);
    } else {
      GemvT(n, head_dim, span.v + at, span.ld, p + h * ldp, 1.0f, y + h * head_dim);
    }
  }
}

// Decode steps (T = 1 each), key block by key block: each row of a block is read once, whole, for
// every head (DotAllHeads, AddAllHeadsRowSum; without the head kernels, every head's slice while
// the block is in cache), so the memory streams as whole rows. (Head by head over the whole
// memory, each head read d_h of every H·d_h floats of a row: 256 of every 4096 bytes at wt103's
// shape, about half the read bandwidth, which made attention over a 1600-row memory twice its
// bytes' time.) Blocks of
// every query's keys and of the distance table are split over the pool; a table block is read
// once for all the queries (a batch's sessions share their layer's table), not once per query. Then
// each query's heads' softmaxes; then the values' blocks. The values' sums are kept per block and
// added in block order, and a query's key mass is summed in head order, so nothing depends on how
// the pool scheduled the work.
void AttendDecodeSteps(const std::vector<RelativeDecodeQuery>& queries, const KvSpan& table,
                       ThreadPool& pool) {
  struct Job {  // one query's extent and its parts of the scratch
    int64_t first, last, n, table_rows, key_blocks, block0;
    float *qu, *qv, *scores, *bd, *partial;
  };
  const int64_t count = static_cast<int64_t>(queries.size());
  std::vector<Job> jobs(queries.size());
  int64_t floats = 0, total_key_blocks = 0, table_rows = 0, width_max = 0;
  for (int64_t i = 0; i < count; ++i) {
    const RelativeAttentionShape& s = queries[i].shape;
    const int64_t width = static_cast<int64_t>(s.num_heads) * s.head_dim;
    Job& job = jobs[i];
    job.last = s.memory_len;  // the query's own position
    job.first = FirstVisibleKey(s, 0);
    job.n = std::max<int64_t>(0, job.last - job.first + 1);
    job.table_rows = job.n > 0 ? std::min(job.last - job.first, EffectiveClamp(s)) + 1 : 0;
    job.key_blocks = (job.n + kKeyBlock - 1) / kKeyBlock;
    job.block0 = total_key_blocks;
    total_key_blocks += job.key_blocks;
    table_rows = std::max(table_rows, job.table_rows);
    width_max = std::max(width_max, width);
    floats += 2 * width + s.num_heads * (job.n + job.table_rows) + job.key_blocks * width;
  }
  // The calling thread's scratch: grows to the largest step, then stays.
  thread_local std::vector<float> work;
  work.resize(static_cast<size_t>(floats));
  float* at = work.data();
  for (int64_t i = 0; i < count; ++i) {
    const RelativeDecodeQuery& q = queries[i];
    const RelativeAttentionShape& s = q.shape;
    const int64_t width = static_cast<int64_t>(s.num_heads) * s.head_dim;
    Job& job = jobs[i];
    job.qu = at;
    job.qv = job.qu + width;
    job.scores = job.qv + width;                          // [H, n]
    job.bd = job.scores + s.num_heads * job.n;            // [H, table_rows]
    job.partial = job.bd + s.num_heads * job.table_rows;  // [key_blocks, H·d_h]
    at = job.partial + job.key_blocks * width;
    AddVectors(q.q, q.r_w_bias, job.qu, width);
    AddVectors(q.q, q.r_r_bias, job.qv, width);
    std::fill(q.out, q.out + width, 0.0f);  // (every key masked: zeros)
  }
  const int64_t table_blocks = (table_rows + kKeyBlock - 1) / kKeyBlock;
  // A block holds kKeyBlock rows of every head: ~kKeyBlock·H·d_h multiply-adds per query.
  const int64_t grain =
      std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(kKeyBlock * width_max, 1));
  auto job_of_block = [&](int64_t b) {  // the query whose key blocks hold global block b
    return std::upper_bound(jobs.begin(), jobs.end(), b,
                            [](int64_t v, const Job& j) { return v < j.block0; }) -
           jobs.begin() - 1;
  };
  // Items of about one key block's work each: every query's key blocks, then the table's blocks
  // once per query (block-major: a block's rows serve each query in turn from the cache). The pool
  // splits a job into a few equal runs of items, so an item of every query's table rows at once
  // left one thread a run many times the others' (B = 32 sessions: half the pass's work in the
  // last run, the other thread idle for it).
  pool.ParallelFor(total_key_blocks + table_blocks * count, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (b >= total_key_blocks) {  // positional term once per distance (beyond clamp: last row)
        const int64_t r0 = (b - total_key_blocks) / count * kKeyBlock;
        const int64_t i = (b - total_key_blocks) % count;
        const Job& job = jobs[i];
        const RelativeDecodeQuery& q = queries[i];
        const int64_t r1 = std::min(job.table_rows, r0 + kKeyBlock);
        if (r0 < r1) {
          DotAllHeads(table, r0, r1 - r0, q.shape.num_heads, q.shape.head_dim, job.qv, job.bd + r0,
                      job.table_rows);
        }
        continue;
      }
      const int64_t i = job_of_block(b);
      const Job& job = jobs[i];
      const RelativeDecodeQuery& q = queries[i];
      const int heads = q.shape.num_heads, head_dim = q.shape.head_dim;
      const int64_t j0 = job.first + (b - job.block0) * kKeyBlock;
      const int64_t j1 = std::min(job.last + 1, j0 + kKeyBlock);
      ForEachKeyRange(*q.keys, j0, j1, [&](const KvSpan& span, int64_t row, int64_t j, int64_t m) {
        DotAllHeads(span, row, m, heads, head_dim, job.qu, job.scores + (j - job.first), job.n);
      });
    }
  });
  // Each query's softmaxes (its heads in order: its key mass sums in head order); a batch's queries
  // split over the pool.
  const auto softmax = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const Job& job = jobs[i];
      const RelativeAttentionShape& s = queries[i].shape;
      const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
      const int64_t clamp = EffectiveClamp(s);
      for (int h = 0; h < s.num_heads && job.n > 0; ++h) {
        float* row = job.scores + h * job.n;
        const float* pos = job.bd + h * job.table_rows;
        for (int64_t j = job.first; j <= job.last; ++j) {
          row[j - job.first] = (row[j - job.first] + pos[std::min(job.last - j, clamp)]) * scale;
        }
        CarryScores(s, h, 0, job.first, row, job.n);
        SoftmaxRow(row, job.n);
        AddKeyMass(s, row, job.first, job.n);
      }
    }
  };
  int64_t score_count = 0;  // (small batches of a small model stay on this thread)
  for (int64_t i = 0; i < count; ++i) score_count += queries[i].shape.num_heads * jobs[i].n;
  if (count > 1 && score_count >= kMinParallelWork) {
    pool.ParallelFor(count, 1, softmax);
  } else {
    softmax(0, count);
  }
  pool.ParallelFor(total_key_blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i = job_of_block(b);
      const Job& job = jobs[i];
      const RelativeDecodeQuery& q = queries[i];
      const int heads = q.shape.num_heads, head_dim = q.shape.head_dim;
      const int64_t width = static_cast<int64_t>(heads) * head_dim;
      float* sum = job.partial + (b - job.block0) * width;
      std::fill(sum, sum + width, 0.0f);
      const int64_t j0 = job.first + (b - job.block0) * kKeyBlock;
      const int64_t j1 = std::min(job.last + 1, j0 + kKeyBlock);
      ForEachKeyRange(*q.keys, j0, j1, [&](const KvSpan& span, int64_t row, int64_t j, int64_t m) {
        AddAllHeadsRowSum(span, row, m, heads, head_dim, job.scores + (j - job.first), job.n, sum);
      });
    }
  });
  for (int64_t i = 0; i < count; ++i) {
    const Job& job = jobs[i];
    const RelativeDecodeQuery& q = queries[i];
    const int64_t width = static_cast<int64_t>(q.shape.num_heads) * q.shape.head_dim;
    for (int64_t b = 0; b < job.key_blocks; ++b) {
      const float* sum = job.partial + b * width;
      for (int64_t c = 0; c < width; ++c) q.out[c] += sum[c];
    }
  }
}

void AttendBlock(const RelativeAttentionShape& s, const float* q, int64_t ldq,
                 const std::vector<KvSpan>& keys, const KvSpan& table, const float* r_w_bias,
                 const float* r_r_bias, float* out, int64_t ldo, int head, int64_t i0, int64_t i1,
                 std::vector<float>& work) {
  const int head_dim = s.head_dim;
  const int64_t b = i1 - i0;
  const int64_t col0 = FirstVisibleKey(s, i0);  // first key any row of the block sees
  const int64_t col1 = s.memory_len + i1;       // one past the last key it sees
  const int64_t ncols = col1 - col0;
  const int64_t clamp = EffectiveClamp(s);
  const int64_t table_rows = std::min(col1 - 1 - col0, clamp) + 1;  // max distance in the block + 1
  work.resize(2 * b * head_dim + b * ncols + b * table_rows);
  float* qu = work.data();            // [b, head_dim]
  float* qv = qu + b * head_dim;      // [b, head_dim]
  float* scores = qv + b * head_dim;  // [b, ncols]
  float* bd = scores + b * ncols;     // [b, table_rows]
  for (int64_t r = 0; r < b; ++r) {
    const float* qh = q + (i0 + r) * ldq + head * head_dim;
    AddVectors(qh, r_w_bias + head * head_dim, qu + r * head_dim, head_dim);
    AddVectors(qh, r_r_bias + head * head_dim, qv + r * head_dim, head_dim);
  }
  // Content term against every key span overlapping [col0, col1).
  ForEachKeyRange(keys, col0, col1, [&](const KvSpan& span, int64_t row, int64_t j, int64_t n) {
    const HeadRows k = HeadSlice(span, /*values=*/false, row, n, head, head_dim);
    GemmNT(b, n, head_dim, 1.0f, qu, head_dim, k.data, k.ld, 0.0f, scores + (j - col0), ncols);
  });
  // Positional term per distance: bd[r, p] = (q_r + v)·Rk[p].
  const HeadRows rk = HeadSlice(table, /*values=*/false, 0, table_rows, head, head_dim);
  GemmNT(b, table_rows, head_dim, 1.0f, qv, head_dim, rk.data, rk.ld, 0.0f, bd, table_rows);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  {
    for (int64_t r = 0; r < b; ++r) {
      const int64_t i = i0 + r;
      const int64_t last = s.memory_len + i;
      const int64_t first = FirstVisibleKey(s, i);
      float* row = scores + r * ncols;
      if (first > last) {  // every key masked: the row attends to nothing and outputs zeros
        std::fill(row, row + ncols, 0.0f);
        continue;
      }
      const float* bd_row = bd + r * table_rows;
      for (int64_t j = first; j <= last; ++j) {
        row[j - col0] = (row[j - col0] + bd_row[std::min(last - j, clamp)]) * scale;
      }
      CarryScores(s, head, i, first, row + (first - col0), last - first + 1);
      SoftmaxRow(row + (first - col0), last - first + 1);
      std::fill(row, row + (first - col0), 0.0f);
      std::fill(row + (last - col0) + 1, row + ncols, 0.0f);
      AddKeyMass(s, row, col0, ncols);
    }
  }
  // out[b, head_dim] = P · V over the same spans, accumulating after the first product.
  float beta = 0.0f;
  ForEachKeyRange(keys, col0, col1, [&](const KvSpan& span, int64_t row, int64_t j, int64_t n) {
    const HeadRows v = HeadSlice(span, /*values=*/true, row, n, head, head_dim);
    GemmNN(b, head_dim, n, 1.0f, scores + (j - col0), ncols, v.data, v.ld, beta,
           out + i0 * ldo + head * head_dim, ldo);
    beta = 1.0f;
  });
  if (beta == 0.0f) {  // no key visible to any row of the block
    for (int64_t r = i0; r < i1; ++r) std::fill_n(out + r * ldo + head * head_dim, head_dim, 0.0f);
  }
}

}  // namespace

int64_t RelativeTableRowsNeeded(const RelativeAttentionShape& shape) {
  return std::min(shape.memory_len + shape.query_len - 1, EffectiveClamp(shape)) + 1;
}

void RelativeAttention(const RelativeAttentionShape& shape, const float* q, int64_t ldq,
                       const std::vector<KvSpan>& keys, const KvSpan& table, const float* r_w_bias,
                       const float* r_r_bias, float* out, int64_t ldo, ThreadPool& pool) {
  if (shape.query_len <= 0) return;
  if (shape.query_len == 1) {
    AttendDecodeSteps({RelativeDecodeQuery{shape, q, &keys, r_w_bias, r_r_bias, out}}, table, pool);
    return;
  }
  // One task per (head, query block), each on one thread with single-threaded BLAS.
  const int64_t blocks = (shape.query_len + kQueryBlock - 1) / kQueryBlock;
  const int64_t tasks = shape.num_heads * blocks;
  // most_used: each task adds its keys' attention mass into a row of its own, summed in task
  // order afterwards, so the totals do not depend on how the pool schedules the tasks (a
  // session's state is reproducible bit for bit).
  const int64_t mass_width = shape.key_mass != nullptr ? shape.mass_end - shape.mass_begin : 0;
  std::vector<float> task_mass(static_cast<size_t>(tasks * mass_width), 0.0f);
  auto task_shape = [&](int64_t t) {
    RelativeAttentionShape s = shape;
    if (s.key_mass != nullptr) s.key_mass = task_mass.data() + t * mass_width;
    return s;
  };
  pool.ParallelFor(tasks, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> work;
    for (int64_t t = t0; t < t1; ++t) {
      const RelativeAttentionShape s = task_shape(t);
      const int h = static_cast<int>(t / blocks);
      const int64_t i0 = (t % blocks) * kQueryBlock;
      const int64_t i1 = std::min(shape.query_len, i0 + kQueryBlock);
      AttendBlock(s, q, ldq, keys, table, r_w_bias, r_r_bias, out, ldo, h, i0, i1, work);
    }
  });
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t j = 0; j < mass_width; ++j) shape.key_mass[j] += task_mass[t * mass_width + j];
  }
}

void RelativeAttentionDecode(const std::vector<RelativeDecodeQuery>& queries, const KvSpan& table,
                             ThreadPool& pool) {
  if (!queries.empty()) AttendDecodeSteps(queries, table, pool);
}

}  // namespace mnemo::kernels
