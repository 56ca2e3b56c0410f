// The host-side plan of the CUDA relative-attention kernel (attention_plan.h): which block runs
// which queries and keys, split-key decode and its combine items. Plain C++, tested without a GPU.
#include "kernels/cuda/attention_plan.h"

#include <algorithm>

namespace mnemo::kernels::cuda {

AttentionPlan PlanRelativeAttention(const std::vector<AttentionShapeInput>& seqs, int num_heads,
                                    int64_t mem_len_max, bool same_length, int min_blocks,
                                    int64_t min_split_keys, int64_t cmem_len_max) {
  AttentionPlan plan;
  const bool decode = std::all_of(seqs.begin(), seqs.end(),
                                  [](const AttentionShapeInput& s) { return s.query_len == 1; });
  plan.query_tile = decode ? kDecodeQueryTile : kPrefillQueryTile;
  struct Tile {
    int32_t seq, q_begin, q_count;
    int64_t k_begin, k_end;
  };
  std::vector<Tile> tiles;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const AttentionShapeInput& s = seqs[b];
    for (int64_t q0 = 0; q0 < s.query_len; q0 += plan.query_tile) {
      const int64_t q1 = std::min(s.query_len, q0 + plan.query_tile);
      // Keys any query of the tile sees: from the first query's first visible key (the window
      // only moves forward) to the last query's own position.
      const int64_t k_begin =
          FirstVisibleKey(q0, s.memory_len, s.query_len, mem_len_max, same_length);
      const int64_t k_end = s.memory_len + q1;
      tiles.push_back({static_cast<int32_t>(b), static_cast<int32_t>(q0),
                       static_cast<int32_t>(q1 - q0), k_begin, std::max(k_begin, k_end)});
    }
  }
  const int64_t blocks = static_cast<int64_t>(tiles.size()) * num_heads;
  const int64_t want_splits =
      std::min<int64_t>(kMaxSplits, blocks >= min_blocks ? 1 : (min_blocks + blocks - 1) / blocks);
  // Decode: every sequence gets the same chunks, sized for the longest key range the model
  // allows (cmem_len_max + mem_len_max + 1) whatever its memory holds now; chunks past a short
  // memory are empty. The grid then depends only on the batch size, so a recorded decode step (CUDA
  // graph) replays unchanged while memories fill. Chunks are 64 keys (one tile per warp) or longer:
  // the longest that still yields min_blocks blocks, so a lone decode step spreads over the
  // GPU and large batches are not split at all.
  const int64_t max_keys = cmem_len_max + mem_len_max + 1;
  int64_t decode_chunk = max_keys;
  if (want_splits > 1) {
    decode_chunk = std::max<int64_t>(kDecodeChunkUnit,
                                     max_keys / want_splits / kDecodeChunkUnit * kDecodeChunkUnit);
  }
  for (const Tile& t : tiles) {
    const int64_t keys = t.k_end - t.k_begin;
    int64_t splits = std::min(want_splits, std::max<int64_t>(1, keys / min_split_keys));
    if (decode) {
      const int64_t span = std::max(max_keys, keys);
      const int64_t chunk = std::max(decode_chunk, (span + kMaxSplits - 1) / kMaxSplits);
      splits = (span + chunk - 1) / chunk;
      const int64_t partial = splits > 1 ? plan.partial_rows : -1;
      for (int64_t s = 0; s < splits; ++s) {
        const int64_t k0 = std::min(t.k_end, t.k_begin + s * chunk);
        plan.items.push_back({t.seq, t.q_begin, t.q_count, 0, k0, std::min(t.k_end, k0 + chunk),
                              splits > 1 ? partial + s : -1});
      }
      if (splits > 1) {
        plan.combines.push_back(
            {t.seq, t.q_begin, t.q_count, static_cast<int32_t>(splits), partial});
        plan.partial_rows += splits;
      }
      continue;
    }
    if (splits <= 1) {
      plan.items.push_back({t.seq, t.q_begin, t.q_count, 0, t.k_begin, t.k_end, -1});
      continue;
    }
    // Chunks of whole key tiles, so no warp loads a tile that straddles two chunks.
    int64_t chunk = (keys + splits - 1) / splits;
    chunk = (chunk + kKeyTile - 1) / kKeyTile * kKeyTile;
    splits = (keys + chunk - 1) / chunk;
    const int64_t partial = plan.partial_rows;
    for (int64_t s = 0; s < splits; ++s) {
      const int64_t k0 = t.k_begin + s * chunk;
      plan.items.push_back({t.seq, t.q_begin, t.q_count, 0, k0, std::min(t.k_end, k0 + chunk),
                            partial + s * t.q_count});
    }
    plan.combines.push_back({t.seq, t.q_begin, t.q_count, static_cast<int32_t>(splits), partial});
    plan.partial_rows += splits * t.q_count;
  }
  return plan;
}

}  // namespace mnemo::kernels::cuda
