#include "engine/attention/memory_compressed_attention.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/model/layer_entry_reader.h"
#include "kernels/cpu/memory_compressed_attention.h"

namespace mnemo::engine {
namespace {

// Most positions a block may hold: a block's c rows are one input row of c·H·d_h to each
// compression product.
constexpr int64_t kMaxCompressionRate = 4096;

// conv [out, in, c] (PyTorch's Conv1d) → [out, c·in] with column t·in + i = conv[o, i, t].
Tensor BlockProduct(const Tensor& conv) {
  const int64_t out = conv.dim(0), in = conv.dim(1), c = conv.dim(2);
  Tensor w = Tensor::Empty(DType::kF32, {out, c * in});
  const float* src = conv.data<float>();
  float* dst = w.data<float>();
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) {
      for (int64_t t = 0; t < c; ++t) dst[o * c * in + t * in + i] = src[(o * in + i) * c + t];
    }
  }
  return w;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LayerState>> MemoryCompressedLayerState::Map(TensorCopy copy) const {
  auto out = std::make_unique<MemoryCompressedLayerState>();
  ASSIGN_OR_RETURN(out->block, CopyRing(block, copy));
  ASSIGN_OR_RETURN(out->compressed, CopyRing(compressed, copy));
  return out;
}

std::vector<int64_t> MemoryCompressedLayerState::Bookkeeping() const {
  return {block.start(), block.size(), compressed.start(), compressed.size()};
}

absl::Status MemoryCompressedLayerState::SetBookkeeping(std::span<const int64_t> values,
                                                        int64_t position) {
  RETURN_IF_ERROR(CheckBookkeepingCount(values, 4, "memory_compressed"));
  RETURN_IF_ERROR(block.SetBookkeeping(values[0], values[1], "memory_compressed block"));
  RETURN_IF_ERROR(
      compressed.SetBookkeeping(values[2], values[3], "memory_compressed compressed blocks"));
  // The block ring holds c − 1 rows: the rate is its capacity + 1.
  const int64_t rate = block.capacity() + 1;
  const int64_t held = std::min(position, block.capacity());
  const int64_t blocks = std::min(position / rate, compressed.capacity());
  if (block.size() != held || compressed.size() != blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory_compressed: rings of ", block.size(), " positions and ",
                     compressed.size(), " compressed blocks, expected ", held, " and ", blocks,
                     " at the session's position ", position));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<AttentionLayer>> MemoryCompressedAttentionLayer::Create(
    const ModelConfig& config, int64_t layer, const TransfoXlLayerWeights& host, DType memory) {
  std::unique_ptr<MemoryCompressedAttentionLayer> out(
      new MemoryCompressedAttentionLayer(config, layer, memory));
  out->compress_k_ = BlockProduct(host.memory_compressed.compress_k);
  out->compress_v_ = BlockProduct(host.memory_compressed.compress_v);
  return out;
}

absl::Status MemoryCompressedAttentionLayer::ParseConfig(LayerEntryReader& r, const ModelConfig& c,
                                                         LayerConfig& layer) {
  ASSIGN_OR_RETURN(layer.memory_compressed.compression_rate,
                   r.Int("compression_rate", 2, kMaxCompressionRate));
  ASSIGN_OR_RETURN(layer.memory_compressed.cmem_len, r.Int("cmem_len", 1, kMaxSpan));
  return absl::OkStatus();
}

absl::Status MemoryCompressedAttentionLayer::ReadWeights(const ModelConfig& c, int64_t layer,
                                                         const std::string& p, ReadTensorFn read,
                                                         TransfoXlLayerWeights& lw) {
  const int64_t hd = c.attn_width(), rate = c.layer(layer).memory_compressed.compression_rate;
  ASSIGN_OR_RETURN(lw.qkv, read(p + "qkv.weight", {3 * hd, c.d_model}));
  MemoryCompressedWeights& w = lw.memory_compressed;
  ASSIGN_OR_RETURN(w.compress_k, read(p + "compress_k.weight", {hd, hd, rate}));
  ASSIGN_OR_RETURN(w.compress_k_bias, read(p + "compress_k.bias", {hd}));
  ASSIGN_OR_RETURN(w.compress_v, read(p + "compress_v.weight", {hd, hd, rate}));
  ASSIGN_OR_RETURN(w.compress_v_bias, read(p + "compress_v.bias", {hd}));
  return absl::OkStatus();
}

absl::Status MemoryCompressedAttentionLayer::Bind(const TransfoXlLayerWeights& weights,
                                                  Backend& backend) {
  weights_ = &weights;
  if (backend.device() != Device::kCpu) {
    return absl::UnimplementedError(absl::StrCat(
        "layer ", layer_, ": memory_compressed attention runs on the CPU backend only (no ",
        std::string(backend.name()), " kernel yet); load this model with --device cpu"));
  }
  return absl::OkStatus();
}

size_t MemoryCompressedAttentionLayer::StateBytes() const {
  const MemoryCompressedConfig& m = lc_.memory_compressed;
  return SessionStateBytes(1, m.compression_rate - 1 + m.cmem_len, config_.attn_width(),
                           memory_dtype_);
}

absl::StatusOr<std::unique_ptr<LayerState>> MemoryCompressedAttentionLayer::NewState(
    Backend& be) const {
  const MemoryCompressedConfig& m = lc_.memory_compressed;
  auto state = std::make_unique<MemoryCompressedLayerState>();
  ASSIGN_OR_RETURN(state->block,
                   AllocateRing(be, m.compression_rate - 1, config_.attn_width(), memory_dtype_));
  ASSIGN_OR_RETURN(state->compressed,
                   AllocateRing(be, m.cmem_len, config_.attn_width(), memory_dtype_));
  return state;
}

bool MemoryCompressedAttentionLayer::Fits(const LayerState& state) const {
  const auto* s = dynamic_cast<const MemoryCompressedLayerState*>(&state);
  const MemoryCompressedConfig& m = lc_.memory_compressed;
  const int64_t width = config_.attn_width();
  return s != nullptr && s->block.keys().defined() && s->compressed.keys().defined() &&
         s->block.dtype() == memory_dtype_ && s->compressed.dtype() == memory_dtype_ &&
         s->block.capacity() == m.compression_rate - 1 && s->block.width() == width &&
         s->compressed.capacity() == m.cmem_len && s->compressed.width() == width;
}

absl::Status MemoryCompressedAttentionLayer::Forward(const AttentionCall& call) const {
  RETURN_IF_ERROR(call.matmul(call.input, weights_->qkv, nullptr, call.qkv));
  const std::vector<SequenceInput>& batch = call.batch;
  const MemoryCompressedWeights& w = weights_->memory_compressed;
  std::vector<MemoryCompressedAttentionArgs> args;
  for (size_t b = 0; b < batch.size(); ++b) {
    auto& st = call.StateOf<MemoryCompressedLayerState>(b, layer_);
    args.push_back({&call.qkv_rows[b], &st.block, &st.compressed, &lc_.memory_compressed,
                    &compress_k_, &w.compress_k_bias, &compress_v_, &w.compress_v_bias,
                    batch[b].state->position(), static_cast<int>(config_.n_head),
                    static_cast<int>(config_.d_head), &call.out_rows[b]});
  }
  RETURN_IF_ERROR(call.backend.MemoryCompressedAttention(args));
  for (size_t b = 0; b < batch.size(); ++b) {
    auto& st = call.StateOf<MemoryCompressedLayerState>(b, layer_);
    const MemoryCompressedConfig& m = lc_.memory_compressed;
    const kernels::MemoryCompressedShape shape{
        0, 0, batch[b].num_tokens, batch[b].state->position(), m.compression_rate, m.cmem_len};
    st.block.Advance(batch[b].num_tokens);
    st.compressed.Advance(kernels::BlocksCompleted(shape));
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
