#include "engine/attention/registry.h"

#include "engine/attention/dense_attention.h"
#include "engine/attention/linear_attention.h"
#include "engine/attention/lsh_attention.h"
#include "engine/attention/memory_compressed_attention.h"
#include "engine/attention/routing_attention.h"
#include "engine/attention/sparse_attention.h"

namespace mnemo::engine {

absl::StatusOr<std::unique_ptr<AttentionLayer>> MakeAttentionLayer(
    const ModelConfig& config, int64_t layer, const TransfoXlLayerWeights& host_weights,
    AttentionLoadContext& context) {
  switch (config.layer(layer).attention) {
    case AttentionKind::kDense:
      return DenseAttentionLayer::Create(config, layer, host_weights, context);
    case AttentionKind::kLinear:
      return std::make_unique<LinearAttentionLayer>(config, layer);
    case AttentionKind::kSparse:
      return std::make_unique<SparseAttentionLayer>(config, layer, context.session_memory);
    case AttentionKind::kLsh:
      return std::make_unique<LshAttentionLayer>(config, layer, context.session_memory);
    case AttentionKind::kMemoryCompressed:
      return MemoryCompressedAttentionLayer::Create(config, layer, host_weights,
                                                    context.session_memory);
    case AttentionKind::kRouting:
      return RoutingAttentionLayer::Create(config, layer, host_weights, context.session_memory);
  }
  return absl::InternalError("unknown attention kind");
}

absl::Status ParseAttentionConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer) {
  switch (layer.attention) {
    case AttentionKind::kDense:
      return DenseAttentionLayer::ParseConfig(reader, config, layer);
    case AttentionKind::kLinear:
      return LinearAttentionLayer::ParseConfig(reader, config, layer);
    case AttentionKind::kSparse:
      return SparseAttentionLayer::ParseConfig(reader, config, layer);
    case AttentionKind::kLsh:
      return LshAttentionLayer::ParseConfig(reader, config, layer);
    case AttentionKind::kMemoryCompressed:
      return MemoryCompressedAttentionLayer::ParseConfig(reader, config, layer);
    case AttentionKind::kRouting:
      return RoutingAttentionLayer::ParseConfig(reader, config, layer);
  }
  return absl::InternalError("unknown attention kind");
}

absl::Status ReadAttentionWeights(const ModelConfig& config, int64_t layer,
                                  const std::string& prefix, ReadTensorFn read,
                                  const SharedAttentionWeights& shared,
                                  TransfoXlLayerWeights& weights) {
  switch (config.layer(layer).attention) {
    case AttentionKind::kDense:
      return DenseAttentionLayer::ReadWeights(config, layer, prefix, read, shared, weights);
    case AttentionKind::kLinear:
      return LinearAttentionLayer::ReadWeights(config, layer, prefix, read, weights);
    case AttentionKind::kSparse:
      return SparseAttentionLayer::ReadWeights(config, prefix, read, weights);
    case AttentionKind::kLsh:
      return LshAttentionLayer::ReadWeights(config, layer, prefix, read, weights);
    case AttentionKind::kMemoryCompressed:
      return MemoryCompressedAttentionLayer::ReadWeights(config, layer, prefix, read, weights);
    case AttentionKind::kRouting:
      return RoutingAttentionLayer::ReadWeights(config, layer, prefix, read, weights);
  }
  return absl::InternalError("unknown attention kind");
}

}  // namespace mnemo::engine
