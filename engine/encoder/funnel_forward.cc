#include "engine/encoder/funnel_forward.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

// A pooling level's positions: p_i = first + i·step (level 0: the tokens; each pooling doubles
// the step, and with separate_cls the first token moves to 1 − step, keeping the grid uniform:
// Hugging Face's stride_pool_pos).
struct Level {
  int64_t first;
  int64_t step;
};

Level LevelOf(const EncoderConfig& c, int64_t level) {
  const int64_t step = int64_t{1} << level;
  return {level > 0 && c.separate_cls ? 1 - step : 0, step};
}

// Rows of every window at one level, concatenated.
struct Rows {
  std::vector<int64_t> len, offset;  // per window; offset has one more entry (the total)
  int64_t total() const { return offset.back(); }
};

Rows RowsOf(std::vector<int64_t> len) {
  Rows r{std::move(len), {0}};
  for (int64_t n : r.len) r.offset.push_back(r.offset.back() + n);
  return r;
}

// pool_tensor: the sequence c (x with its first row repeated in front when separate_cls, and
// without its last row when also truncate_seq) reduced in pairs, a lone last row kept.
void Pool(const EncoderConfig& c, const float* x, int64_t t, int64_t d, float* out) {
  const bool sep = c.separate_cls;
  const int64_t n = sep ? (c.truncate_seq ? t : t + 1) : t;  // rows of c
  auto row = [&](int64_t i) { return x + (sep ? std::max<int64_t>(i - 1, 0) : i) * d; };
  for (int64_t m = 0; 2 * m < n; ++m, out += d) {
    const float* a = row(2 * m);
    if (2 * m + 1 >= n) {
      std::copy(a, a + d, out);
      continue;
    }
    const float* b = row(2 * m + 1);
    for (int64_t e = 0; e < d; ++e) {
      out[e] = c.pooling == "max" ? std::max(a[e], b[e]) : (a[e] + b[e]) * 0.5f;
    }
  }
}

// upsample: each row of the last block repeated `stride` times (the separate first row once),
// zero past the repeated rows, for t rows.
void Upsample(const EncoderConfig& c, const float* x, int64_t rows, int64_t stride, int64_t t,
              int64_t d, float* out) {
  for (int64_t i = 0; i < t; ++i, out += d) {
    int64_t from = i / stride;
    if (c.separate_cls) from = i == 0 ? 0 : 1 + (i - 1) / stride;
    if (from < rows) {
      std::copy(x + from * d, x + (from + 1) * d, out);
    } else {
      std::fill(out, out + d, 0.0f);
    }
  }
}

class FunnelPass {
 public:
  FunnelPass(const EncoderConfig& c, const EncoderWeights& w, Backend& be)
      : c_(c), w_(w), be_(be) {}

  absl::StatusOr<std::vector<EncodedWindow>> Run(std::span<const EncoderSequence> batch);

 private:
  // One layer over the queries `q_in` at level lq (rows `rq`) attending to `kv_in` at level lk
  // (rows `rk`; the same tensor when lq = lk and nothing was pooled). Returns the new hidden
  // states at level lq.
  absl::StatusOr<Tensor> Layer(const EncoderLayerWeights& lw, const Tensor& q_in, int64_t lq,
                               const Rows& rq, const Tensor& kv_in, int64_t lk, const Rows& rk);
  // The sinusoids of every relative distance of the (lq, lk) level pair: one table of
  // q_stride·(Tq − 1) + Tk rows per distinct window shape (Tq, Tk), one after the other (windows
  // of one length share theirs, and so does the projection of it).
  struct Distances {
    Tensor pe;                                                 // [rows, D]
    std::map<std::pair<int64_t, int64_t>, int64_t> first_row;  // by (Tq, Tk)
  };
  const Distances& Sinusoids(int64_t lq, const Rows& rq, int64_t lk, const Rows& rk);

  const EncoderConfig& c_;
  const EncoderWeights& w_;
  Backend& be_;
  std::map<std::pair<int64_t, int64_t>, Distances> sinusoids_;
};

const FunnelPass::Distances& FunnelPass::Sinusoids(int64_t lq, const Rows& rq, int64_t lk,
                                                   const Rows& rk) {
  Distances& table = sinusoids_[{lq, lk}];
  if (table.pe.defined()) return table;
  const Level q = LevelOf(c_, lq), k = LevelOf(c_, lk);
  const int64_t ratio = q.step / k.step, d = c_.d_model, half = d / 2;
  int64_t rows = 0;
  for (size_t n = 0; n < rq.len.size(); ++n) {
    if (table.first_row.emplace(std::pair{rq.len[n], rk.len[n]}, rows).second) {
      rows += ratio * (rq.len[n] - 1) + rk.len[n];
    }
  }
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t e = 0; e < half; ++e) {
    inv_freq[e] = std::pow(10000.0, -static_cast<double>(e) / static_cast<double>(half));
  }
  table.pe = Tensor::Empty(DType::kF32, {rows, d});
  for (const auto& [shape, first] : table.first_row) {
    const auto [tq, tk] = shape;
    float* out = table.pe.data<float>() + first * d;
    for (int64_t t = 0; t < ratio * (tq - 1) + tk; ++t, out += d) {
      // In double: the distances reach the pass's length, too far for float arguments.
      const auto delta = static_cast<double>(q.first - k.first - (tk - 1 - t) * k.step);
      for (int64_t e = 0; e < half; ++e) {
        out[e] = static_cast<float>(std::sin(delta * inv_freq[e]));
        out[half + e] = static_cast<float>(std::cos(delta * inv_freq[e]));
      }
    }
  }
  return table;
}

absl::StatusOr<Tensor> FunnelPass::Layer(const EncoderLayerWeights& lw, const Tensor& q_in,
                                         int64_t lq, const Rows& rq, const Tensor& kv_in,
                                         int64_t lk, const Rows& rk) {
  const int64_t d = c_.d_model, width = c_.attn_width();
  const auto eps = static_cast<float>(c_.layer_norm_epsilon);
  Tensor q_qkv, kv_qkv;  // one product when queries, keys and values read the same rows
  if (&kv_in == &q_in) {
    q_qkv = Tensor::Empty(DType::kF32, {rq.total(), 3 * width});
    RETURN_IF_ERROR(be_.Linear(q_in, lw.qkv, &lw.qkv_bias, q_qkv));
    kv_qkv = q_qkv;
  } else {  // the pooling layer: queries of the pooled rows, keys and values of the others
    q_qkv = Tensor::Empty(DType::kF32, {rq.total(), width});
    const Tensor wq = lw.qkv.Rows(0, width), bq = lw.qkv_bias.Rows(0, width);
    RETURN_IF_ERROR(be_.Linear(q_in, wq, &bq, q_qkv));
    kv_qkv = Tensor::Empty(DType::kF32, {rk.total(), 2 * width});
    const Tensor wkv = lw.qkv.Rows(width, 3 * width), bkv = lw.qkv_bias.Rows(width, 3 * width);
    RETURN_IF_ERROR(be_.Linear(kv_in, wkv, &bkv, kv_qkv));
  }
  const Distances& distances = Sinusoids(lq, rq, lk, rk);
  Tensor r = Tensor::Empty(DType::kF32, {distances.pe.dim(0), width});
  RETURN_IF_ERROR(be_.Linear(distances.pe, lw.r, nullptr, r));
  const Tensor seg = lw.seg_embed.Rows(1, 2);  // every token has type 0: "same" everywhere
  Tensor attn = Tensor::Empty(DType::kF32, {rq.total(), width});
  const int64_t ratio = LevelOf(c_, lq).step / LevelOf(c_, lk).step;
  for (size_t n = 0; n < rq.len.size(); ++n) {
    const int64_t m = ratio * (rq.len[n] - 1) + rk.len[n];
    const int64_t r_row = distances.first_row.at({rq.len[n], rk.len[n]});
    const Tensor q = q_qkv.Rows(rq.offset[n], rq.offset[n + 1]);
    const Tensor kv = kv_qkv.Rows(rk.offset[n], rk.offset[n + 1]);
    const Tensor rn = r.Rows(r_row, r_row + m);
    Tensor out = attn.Rows(rq.offset[n], rq.offset[n + 1]);
    RETURN_IF_ERROR(be_.FunnelAttention({&q, &kv, &rn, &lw.r_w_bias, &lw.r_r_bias, &lw.r_s_bias,
                                         &seg, ratio, c_.separate_cls, static_cast<int>(c_.n_head),
                                         static_cast<int>(c_.d_head), &out}));
  }
  Tensor x = Tensor::Empty(DType::kF32, {rq.total(), d});
  Tensor add = Tensor::Empty(DType::kF32, {rq.total(), d});
  RETURN_IF_ERROR(be_.Copy(q_in, x));
  RETURN_IF_ERROR(be_.Linear(attn, lw.o, &lw.o_bias, add));
  RETURN_IF_ERROR(be_.AddLayerNorm(x, add, lw.attn_ln_gamma, lw.attn_ln_beta, eps, x));
  Tensor hidden = Tensor::Empty(DType::kF32, {rq.total(), c_.d_inner});
  RETURN_IF_ERROR(be_.LinearBiasActivation(x, lw.fc1, lw.fc1_bias, c_.activation, hidden));
  RETURN_IF_ERROR(be_.Linear(hidden, lw.fc2, &lw.fc2_bias, add));
  RETURN_IF_ERROR(be_.AddLayerNorm(x, add, lw.ff_ln_gamma, lw.ff_ln_beta, eps, x));
  return x;
}

absl::StatusOr<std::vector<EncodedWindow>> FunnelPass::Run(std::span<const EncoderSequence> batch) {
  const int64_t d = c_.d_model;
  std::vector<int64_t> lengths;
  std::vector<int32_t> ids;
  for (const EncoderSequence& s : batch) {
    lengths.push_back(static_cast<int64_t>(s.ids.size()));
    ids.insert(ids.end(), s.ids.begin(), s.ids.end());
  }
  std::vector<Rows> level{RowsOf(lengths)};
  Tensor x = Tensor::Empty(DType::kF32, {level[0].total(), d});
  RETURN_IF_ERROR(be_.Embedding(w_.word_emb, ids, 1.0f, x));
  RETURN_IF_ERROR(be_.LayerNorm(x, w_.emb_ln_gamma, w_.emb_ln_beta,
                                static_cast<float>(c_.layer_norm_epsilon), x));
  Tensor first_block;  // after the first block_sizes[0] layer runs (Hugging Face's index)
  int64_t runs = 0, layer = 0;
  for (size_t b = 0; b < c_.block_sizes.size(); ++b) {
    const auto lb = static_cast<int64_t>(b);
    Tensor pooled;
    if (b > 0) {  // every block after the first starts by pooling (min_tokens guarantees it)
      std::vector<int64_t> len;
      for (int64_t t : level[b - 1].len) len.push_back(c_.PooledLength(t));
      level.push_back(RowsOf(std::move(len)));
      pooled = Tensor::Empty(DType::kF32, {level[b].total(), d});
      for (size_t n = 0; n < lengths.size(); ++n) {
        Pool(c_, x.data<float>() + level[b - 1].offset[n] * d, level[b - 1].len[n], d,
             pooled.data<float>() + level[b].offset[n] * d);
      }
    }
    for (int64_t i = 0; i < c_.block_sizes[b]; ++i, ++layer) {
      const EncoderLayerWeights& lw = w_.layers[static_cast<size_t>(layer)];
      for (int64_t rep = 0; rep < c_.block_repeats[b]; ++rep) {
        if (pooled.defined()) {  // the block's first run: its queries pooled
          if (c_.pool_q_only) {
            ASSIGN_OR_RETURN(x, Layer(lw, pooled, lb, level[b], x, lb - 1, level[b - 1]));
          } else {
            ASSIGN_OR_RETURN(x, Layer(lw, pooled, lb, level[b], pooled, lb, level[b]));
          }
          pooled = Tensor();
        } else {
          ASSIGN_OR_RETURN(x, Layer(lw, x, lb, level[b], x, lb, level[b]));
        }
        if (++runs == c_.block_sizes[0]) {
          first_block = Tensor::Empty(DType::kF32, x.shape());
          RETURN_IF_ERROR(be_.Copy(x, first_block));
        }
      }
    }
  }
  const Rows& last = level.back();
  std::vector<EncodedWindow> out(batch.size());
  for (size_t n = 0; n < batch.size(); ++n) {
    out[n].pooled = Tensor::Empty(DType::kF32, {last.len[n], d});
    RETURN_IF_ERROR(be_.Copy(x.Rows(last.offset[n], last.offset[n + 1]), out[n].pooled));
  }
  if (c_.decoder_layers == 0) return out;
  // The decoder: the last block up-sampled to every token, plus the first block's output.
  const int64_t stride = int64_t{1} << (c_.block_sizes.size() - 1);
  Tensor h = Tensor::Empty(DType::kF32, {level[0].total(), d});
  for (size_t n = 0; n < batch.size(); ++n) {
    Upsample(c_, x.data<float>() + last.offset[n] * d, last.len[n], stride, level[0].len[n], d,
             h.data<float>() + level[0].offset[n] * d);
  }
  RETURN_IF_ERROR(be_.Add(h, first_block, h));
  for (const EncoderLayerWeights& lw : w_.decoder) {
    ASSIGN_OR_RETURN(h, Layer(lw, h, 0, level[0], h, 0, level[0]));
  }
  for (size_t n = 0; n < batch.size(); ++n) {
    out[n].hidden = h.Rows(level[0].offset[n], level[0].offset[n + 1]);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<EncodedWindow>> FunnelForward(const EncoderConfig& c,
                                                         const EncoderWeights& w, Backend& be,
                                                         std::span<const EncoderSequence> batch) {
  return FunnelPass(c, w, be).Run(batch);
}

}  // namespace mnemo::engine
