#include "server/proto_conversion.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

#include "base/dtype.h"

namespace mnemo::server {

engine::api::SamplingParams SamplingFromProto(const v1::SamplingParams& p, const std::string& field,
                                              FieldViolations& violations) {
  engine::api::SamplingParams s;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  s.repetition_penalty = p.repetition_penalty() == 0.0f ? 1.0f : p.repetition_penalty();
  s.seed = p.seed();
  if (!std::isfinite(s.temperature) || s.temperature < 0 || s.temperature > 100) {
    violations.Add(field + ".temperature", "must be in [0, 100] (0: greedy)");
  }
  if (s.top_k < 0) violations.Add(field + ".top_k", "must be ≥ 0 (0: no limit)");
  if (!std::isfinite(s.top_p) || s.top_p <= 0 || s.top_p > 1) {
    violations.Add(field + ".top_p", "must be in (0, 1] (0: no limit)");
  }
  if (!std::isfinite(s.repetition_penalty) || s.repetition_penalty < 1 ||
      s.repetition_penalty > 10) {
    violations.Add(field + ".repetition_penalty", "must be in [1, 10] (0: off)");
  }
  return s;
}

v1::SamplingParams SamplingToProto(const engine::api::SamplingParams& p) {
  v1::SamplingParams out;
  out.set_temperature(p.temperature);
  out.set_top_k(p.top_k);
  out.set_top_p(p.top_p);
  out.set_repetition_penalty(p.repetition_penalty);
  out.set_seed(p.seed);
  return out;
}

void CheckTokenIds(const google::protobuf::RepeatedField<int32_t>& ids, int64_t vocab,
                   const std::string& field, FieldViolations& violations) {
  int reported = 0;
  for (int i = 0; i < ids.size() && reported < 8; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      violations.Add(
          absl::StrCat(field, "[", i, "]"),
          absl::StrCat("token id ", ids[i], " is outside the vocabulary [0, ", vocab, ")"));
      ++reported;
    }
  }
}

void CheckLabels(const google::protobuf::Map<std::string, std::string>& labels, int max_labels,
                 const std::string& field, FieldViolations& violations) {
  if (static_cast<int>(labels.size()) > max_labels) {
    violations.Add(field, absl::StrCat("at most ", max_labels, " labels"));
  }
  for (const auto& [k, v] : labels) {
    bool ok = !k.empty() && k.size() <= 63;
    for (char ch : k)
      ok = ok && ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-');
    if (!ok) violations.Add(absl::StrCat(field, "[", k, "]"), "keys are 1–63 of [a-z0-9_-]");
    if (v.size() > 256) violations.Add(absl::StrCat(field, "[", k, "]"), "values are ≤ 256 bytes");
  }
}

google::protobuf::Timestamp TimeToProto(absl::Time t) {
  google::protobuf::Timestamp out;
  const int64_t ns = absl::ToUnixNanos(t);
  out.set_seconds(ns / 1000000000);
  out.set_nanos(static_cast<int32_t>(ns % 1000000000));
  return out;
}

google::protobuf::Duration DurationToProto(absl::Duration d) {
  google::protobuf::Duration out;
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  out.set_seconds(ns / 1000000000);
  out.set_nanos(static_cast<int32_t>(ns % 1000000000));
  return out;
}

absl::Duration DurationFromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

void SessionToProto(const SessionInfo& info, v1::Session* out) {
  out->set_id(info.id);
  out->set_model(info.model);
  out->mutable_labels()->insert(info.labels.begin(), info.labels.end());
  *out->mutable_create_time() = TimeToProto(info.create_time);
  *out->mutable_last_use_time() = TimeToProto(info.last_use_time);
  *out->mutable_ttl() = DurationToProto(info.ttl);
  out->set_tokens_seen(info.tokens_seen);
  out->set_state_bytes(info.state_bytes);
  switch (info.tier) {
    case Tier::kDevice:
      out->set_tier(v1::STATE_TIER_DEVICE);
      break;
    case Tier::kHost:
      out->set_tier(v1::STATE_TIER_HOST);
      break;
    case Tier::kStore:
      out->set_tier(v1::STATE_TIER_STORE);
      break;
  }
  out->set_state_version(info.state_version);
  out->set_memory_tokens(info.memory_tokens);
  if (info.default_sampling)
    *out->mutable_default_sampling() = SamplingToProto(*info.default_sampling);
  out->set_pending_tokens(info.pending_tokens);
  out->set_tenant(info.tenant);
  out->set_durability(DurabilityToProto(info.durability));
  out->set_durable_version(info.durable_version);
}

v1::Durability DurabilityToProto(Durability durability) {
  switch (durability) {
    case Durability::kNone:
      return v1::DURABILITY_NONE;
    case Durability::kAsync:
      return v1::DURABILITY_ASYNC;
    case Durability::kSync:
      return v1::DURABILITY_SYNC;
  }
  return v1::DURABILITY_NONE;
}

std::optional<Durability> DurabilityFromProto(v1::Durability durability) {
  switch (durability) {
    case v1::DURABILITY_NONE:
      return Durability::kNone;
    case v1::DURABILITY_ASYNC:
      return Durability::kAsync;
    case v1::DURABILITY_SYNC:
      return Durability::kSync;
    default:
      return std::nullopt;  // unspecified (or a value this server does not know): the default
  }
}

void ModelToProto(const LoadedModel& m, v1::Model* out) {
  const engine::api::ModelConfig& c = m.model->config();
  out->set_name(m.name);
  out->set_architecture(c.architecture);
  out->set_vocab_size(c.vocab_size);
  out->set_d_model(c.d_model);
  out->set_n_head(c.n_head);
  out->set_d_head(c.d_head);
  out->set_d_inner(c.d_inner);
  out->set_n_kv_head(c.kv_heads());
  out->set_max_positions(c.max_positions());
  int64_t compression_rate = 0;  // the largest of the compressive layers
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const engine::api::LayerConfig& lc = c.layer(l);
    v1::Layer* layer = out->add_layers();
    layer->set_state_bytes(m.description.layers[static_cast<size_t>(l)].state_bytes);
    switch (lc.attention) {
      case engine::api::AttentionKind::kDense:
        layer->set_attention(v1::ATTENTION_KIND_DENSE);
        layer->set_memory_tokens(c.mem_len);
        if (lc.dense.compressive()) {
          layer->set_compression(std::string(engine::api::EnumName(lc.dense.compression)));
          layer->set_compression_rate(lc.dense.compression_rate);
          layer->set_cmem_len(lc.dense.cmem_len);
          compression_rate = std::max(compression_rate, lc.dense.compression_rate);
        }
        break;
      case engine::api::AttentionKind::kLsh:
        layer->set_attention(v1::ATTENTION_KIND_LSH);
        layer->set_memory_tokens(lc.lsh.history - 1);
        layer->set_n_hashes(lc.lsh.n_hashes);
        layer->set_n_buckets(lc.lsh.n_buckets);
        layer->set_chunk_len(lc.lsh.chunk_len);
        layer->set_history(lc.lsh.history);
        break;
      case engine::api::AttentionKind::kMemoryCompressed:
        layer->set_attention(v1::ATTENTION_KIND_MEMORY_COMPRESSED);
        layer->set_compression_rate(lc.memory_compressed.compression_rate);
        layer->set_cmem_len(lc.memory_compressed.cmem_len);
        layer->set_memory_tokens(lc.memory_compressed.cmem_len *
                                     lc.memory_compressed.compression_rate +
                                 lc.memory_compressed.compression_rate - 1);
        break;
      case engine::api::AttentionKind::kRouting:
        layer->set_attention(v1::ATTENTION_KIND_ROUTING);
        layer->set_memory_tokens(lc.routing.history - 1);
        layer->set_history(lc.routing.history);
        layer->set_n_clusters(lc.routing.n_clusters);
        break;
      case engine::api::AttentionKind::kLinear:
        layer->set_attention(v1::ATTENTION_KIND_LINEAR);
        layer->set_feature_map(std::string(engine::api::EnumName(lc.linear.feature_map)));
        layer->set_num_features(lc.linear.num_features);
        break;
      case engine::api::AttentionKind::kSparse:
        layer->set_attention(v1::ATTENTION_KIND_SPARSE);
        layer->set_pattern(std::string(engine::api::EnumName(lc.sparse.pattern)));
        layer->set_window(lc.sparse.window);
        for (int64_t d : lc.sparse.dilations) layer->add_dilations(d);
        layer->set_memory_tokens(lc.sparse.sparse_span());
        layer->set_span(lc.sparse.sparse_span());
        layer->set_max_global(lc.sparse.max_global);
        break;
    }
    layer->set_parameter_group(c.param_layer(l));
  }
  out->set_memory_tokens(c.mem_len);
  out->set_segment_tokens(m.segment_tokens);
  out->set_compression_rate(compression_rate);
  out->set_dtype(DTypeName(c.dtype));
  out->set_device(m.device);
  out->set_state_bytes_per_session(m.SessionBytes());
  out->set_weight_sparsity(m.description.weight_sparsity);
  out->set_eos_token_id(m.tokenizer != nullptr ? m.tokenizer->eos_id()
                                               : static_cast<int32_t>(c.eos_token_id.value_or(-1)));
  out->set_fingerprint(m.description.fingerprint);
  out->set_family("decoder");
  if (m.draft != nullptr) {
    out->set_draft_model(m.draft->dir);
    out->set_draft_tokens(m.draft_tokens);
  }
}

void EncoderToProto(const LoadedEncoder& e, v1::Model* out) {
  const engine::api::EncoderConfig& c = e.encoder->config();
  out->set_name(e.name);
  out->set_family("encoder");
  out->set_architecture(c.architecture);
  out->set_vocab_size(c.vocab_size);
  out->set_d_model(c.d_model);
  out->set_n_head(c.n_head);
  out->set_d_head(c.d_head);
  out->set_n_kv_head(c.n_head);
  out->set_d_inner(c.d_inner);
  out->set_max_positions(c.max_tokens());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    v1::Layer* layer = out->add_layers();
    if (c.nystromformer()) {
      layer->set_attention(v1::ATTENTION_KIND_NYSTROMFORMER);
      layer->set_window(c.segment_len);
      layer->set_num_landmarks(c.num_landmarks);
      layer->set_conv_kernel_size(c.conv_kernel_size);
    } else if (c.linformer()) {
      layer->set_attention(v1::ATTENTION_KIND_LINFORMER);
      layer->set_window(c.segment_len);
      layer->set_projected_length(c.linformer_k);
    } else if (c.synthesized()) {
      layer->set_attention(v1::ATTENTION_KIND_SYNTHESIZER);
      layer->set_window(c.segment_len);
      layer->set_synthesizer(c.synthesizer);
    } else if (c.funnel()) {
      layer->set_attention(v1::ATTENTION_KIND_FUNNEL);
      layer->set_window(c.segment_len);
      layer->set_pattern(c.pooling);
    } else if (c.bigbird()) {
      layer->set_attention(v1::ATTENTION_KIND_BIGBIRD);
      layer->set_window(c.max_tokens());
      layer->set_pattern(c.block_sparse ? "block_sparse" : "original_full");
      layer->set_block_size(c.block_size);
      layer->set_num_random_blocks(c.num_random_blocks);
    } else {
      layer->set_attention(v1::ATTENTION_KIND_LONGFORMER);
      layer->set_window(c.one_sided_window[static_cast<size_t>(l)]);
    }
  }
  out->set_dtype(DTypeName(c.dtype));
  out->set_device(e.device);
  out->set_eos_token_id(e.tokenizer != nullptr ? e.tokenizer->eos_id() : -1);
}

}  // namespace mnemo::server
