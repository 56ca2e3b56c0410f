// Memory-compressed attention (Liu et al. 2018, "Generating Wikipedia by Summarizing Long
// Sequences", in causal form; docs/checkpoint-format.md "memory_compressed"): the keys and values
// of every completed block of `compression_rate` positions are compressed into one row each by a
// strided convolution; a query attends to the last `cmem_len` compressed blocks before its own
// block and to its own block's positions up to itself. Its memory is a ring of compressed rows
// and the uncompressed rows of the block in progress: fixed in size however long the document.
#pragma once

#include <memory>
#include <string>

#include "engine/attention/attention_layer.h"
#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

class LayerEntryReader;

struct MemoryCompressedLayerState final : LayerState {
  XlMemory block;       // [c − 1, H·d_h]: the last positions' keys and values (the open block's)
  XlMemory compressed;  // [cmem_len, H·d_h]: the last compressed blocks

  size_t bytes() const override { return block.bytes() + compressed.bytes(); }
  Device device() const override { return block.device(); }
  const XlMemory* ring() const override { return &compressed; }
  absl::StatusOr<std::unique_ptr<LayerState>> Map(TensorCopy copy) const override;
  // The block ring's start and size, then the compressed ring's. Each size must be what the
  // session's position implies: the kernel reads the open block's rows and the compressed blocks
  // a query sees by position.
  std::vector<int64_t> Bookkeeping() const override;
  absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position) override;
};

class MemoryCompressedAttentionLayer final : public AttentionLayer {
 public:
  // Rearranges the convolutions into products over a block's rows side by side. `memory`: the
  // dtype of both rings (ModelOptions::session_memory).
  static absl::StatusOr<std::unique_ptr<AttentionLayer>> Create(const ModelConfig& config,
                                                                int64_t layer,
                                                                const TransfoXlLayerWeights& host,
                                                                DType memory);

  // Reads and validates the kind's fields of a "layers" entry into `layer` (errors name the
  // field; docs/checkpoint-format.md "layers").
  static absl::Status ParseConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer);
  // qkv [3·H·d_h, D]; compress_k and compress_v: weight [H·d_h, H·d_h, c] and bias [H·d_h].
  static absl::Status ReadWeights(const ModelConfig& config, int64_t layer,
                                  const std::string& prefix, ReadTensorFn read,
                                  TransfoXlLayerWeights& weights);

  // Refuses a device backend (UNIMPLEMENTED, naming the layer): the kind has a CPU kernel only
  // (docs/cuda-backend.md "What has no GPU kernel").
  absl::Status Bind(const TransfoXlLayerWeights& weights, Backend& backend) override;
  size_t StateBytes() const override;
  absl::StatusOr<std::unique_ptr<LayerState>> NewState(Backend& backend) const override;
  bool Fits(const LayerState& state) const override;
  absl::Status Forward(const AttentionCall& call) const override;

 private:
  MemoryCompressedAttentionLayer(const ModelConfig& config, int64_t layer, DType memory)
      : AttentionLayer(config, layer), memory_dtype_(memory) {}

  DType memory_dtype_;
  // [H·d_h, c·H·d_h]: column t·H·d_h + i holds the convolution's weight [·, i, t].
  Tensor compress_k_, compress_v_;
};

}  // namespace mnemo::engine
