// Dense Transformer-XL attention (MODEL-SPEC §1): relative positions through a distance table,
// the two learned biases, over [compressed memory | memory | segment]. Its memory is the XL ring
// of projected keys/values (MODEL-SPEC §1.2) and, for a compressive layer, the compressed memory
// beside it (§2). Supports token_by_token sequences and RealFormer residual scores.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/attention/attention_layer.h"
#include "engine/memory/compressive_memory.h"
#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

class LayerEntryReader;

struct DenseLayerState final : LayerState {
  XlMemory memory;                // [mem_len, H·d_h] keys and values
  CompressiveMemory compressive;  // compressive layers only (undefined tensors otherwise)

  size_t bytes() const override { return memory.bytes() + compressive.bytes(); }
  Device device() const override { return memory.device(); }
  const XlMemory* ring() const override { return &memory; }
  CompressionStats compression() const override {
    return {compressive.compressions, compressive.tokens_compressed};
  }
  absl::StatusOr<std::unique_ptr<LayerState>> Map(TensorCopy copy) const override;
  // The XL ring's start and size, then (compressive) CompressiveMemory's values. The ring is not
  // checked against the position: a "zeros" memory is full from the first token.
  std::vector<int64_t> Bookkeeping() const override;
  absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position) override;
};

class DenseAttentionLayer final : public AttentionLayer {
 public:
  // Precomputes the distance table and the "zeros" memory's rows from the host weights, in
  // float32 on the CPU backend, so every backend starts from the same constants bit for bit.
  // Reads and validates the kind's fields of a "layers" entry into `layer` (errors name the
  // field; docs/checkpoint-format.md "layers").
  static absl::Status ParseConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer);
  // qkv [3·H·d_h, D], r [H·d_h, D], r_w_bias / r_r_bias [H, d_h] (shared ones when untie_r is
  // false), and the learned compression [D, D, taps] + [D] of conv1d / dilated_conv layers.
  static absl::Status ReadWeights(const ModelConfig& config, int64_t layer,
                                  const std::string& prefix, ReadTensorFn read,
                                  const SharedAttentionWeights& shared,
                                  TransfoXlLayerWeights& weights);
  static absl::StatusOr<std::unique_ptr<AttentionLayer>> Create(
      const ModelConfig& config, int64_t layer, const TransfoXlLayerWeights& host_weights,
      AttentionLoadContext& context);

  absl::Status Bind(const TransfoXlLayerWeights& weights, Backend& backend) override;
  size_t StateBytes() const override;
  absl::StatusOr<std::unique_ptr<LayerState>> NewState(Backend& backend) const override;
  bool Fits(const LayerState& state) const override;
  // Compressive layers change a step's ops every compression_rate steps.
  bool RepeatsSteps() const override { return !lc_.dense.compressive(); }
  std::pair<int64_t, int64_t> ScoredMemoryKeys(const LayerState& state) const override;
  absl::Status Forward(const AttentionCall& call) const override;

  // The precomputed distance table, stored as the session memory's dtype (a decode step reads
  // all of it).
  const Tensor& relative_table() const { return rel_table_; }

 private:
  DenseAttentionLayer(const ModelConfig& config, int64_t layer) : AttentionLayer(config, layer) {}
  // Rows [begin, begin + count) of one sequence of the batch.
  struct Rows {
    size_t seq;
    int64_t begin;
    int64_t count;
  };
  // Attention (and compression) for the given rows, each against its sequence's memory as it
  // stands; `append` then adds the rows to the memory.
  absl::Status Attend(const AttentionCall& call, const std::vector<Rows>& rows, bool append) const;
  // The distance table with at least `rows` rows: the precomputed one when it is long enough,
  // else one computed for this call into `scratch`.
  absl::StatusOr<const Tensor*> RelativeTable(Backend& backend, int64_t rows,
                                              Tensor& scratch) const;

  DType memory_dtype_ = DType::kF32;  // of the key/value rings (XL and compressed memory)
  Tensor rel_table_;                  // [P, H·d_h]: row p = W_r·sinusoid(p)
  Tensor zero_keys_;                  // [1, H·d_h]: key of a zero hidden row (memory_dtype_)
  Tensor zero_values_;                // [1, H·d_h]
  Tensor zero_hidden_;  // [1, d_model]: the zero row's attention input (compressive layers)
};

// [rows, d_model] sinusoid embeddings of distances 0 … rows − 1, clamped to clamp_len.
Tensor RelativeSinusoids(const ModelConfig& config, int64_t rows);

}  // namespace mnemo::engine
