#include "engine/api/model.h"

#include <cstring>
#include <filesystem>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

#include "base/read_file.h"
#include "base/status_macros.h"
#include "engine/backend/backend.h"
#include "engine/backend/fault_injecting_backend.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/model/draft_spec.h"
#include "engine/model/transfo_xl_model.h"
#include "engine/tokenizer/byte_tokenizer.h"
#include "engine/tokenizer/word_tokenizer.h"

namespace mnemo::engine::api {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t Fnv1a(uint64_t h, const unsigned char* data, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ data[i]) * kFnvPrime;
  return h;
}

// Whether the element at `p` is ±0 (integers are never counted as weights).
bool IsZero(const unsigned char* p, DType dtype) {
  switch (dtype) {
    case DType::kF32: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return (v & 0x7fffffffU) == 0;
    }
    case DType::kF16:
    case DType::kBF16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return (v & 0x7fffU) == 0;
    }
    case DType::kI32:
      return false;
  }
  return false;
}

// Whether `draft` can draft for `target`: one vocabulary, and a target whose verification pass
// (token_by_token) it supports.
absl::Status CheckDraft(const Model& target, const Model& draft) {
  if (target.config().vocab_size != draft.config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the draft model (", draft.dir(),
                                                   ") has vocabulary ", draft.config().vocab_size,
                                                   ", the model ", target.config().vocab_size));
  }
  if (target.config().byte_tokenizer != draft.config().byte_tokenizer) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the draft model (", draft.dir(), ") and the model disagree on the byte tokenizer"));
  }
  if (target.UsesResidualAttention()) {
    return absl::InvalidArgumentError(
        "speculative decoding does not support residual_attention (RealFormer) models");
  }
  return absl::OkStatus();
}

}  // namespace

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir,
                                                   const LoadOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->device_ = options.device;
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, MakeBackend(options.device));
  // Faults start after the load: the weights' upload is not what a fault spec is about.
  FaultInjectingBackend* faults = nullptr;
  if (!options.backend_faults.empty()) {
    if (options.backend_faults.front() != '@') {
      RETURN_IF_ERROR(ParseBackendFaultSpec(options.backend_faults).status());
    }
    auto wrapped =
        std::make_unique<FaultInjectingBackend>(std::move(backend), options.backend_fault_seed);
    faults = wrapped.get();
    backend = std::move(wrapped);
  }
  ASSIGN_OR_RETURN(m->impl_, TransfoXlModel::Load(dir, std::move(backend), options.model));
  // A word vocabulary (Transformer-XL as published) or a sentencepiece model.
  const std::string words = dir + "/" + kWordVocabularyFile;
  const std::string spm = dir + "/tokenizer.model";
  std::error_code error;
  const bool has_words = std::filesystem::exists(words, error);
  if (m->config().byte_tokenizer) {
    for (const std::string& file : {words, spm}) {
      if (std::filesystem::exists(file, error)) {
        return absl::InvalidArgumentError(absl::StrCat(
            dir, "/config.json names the byte tokenizer but the directory also holds ", file));
      }
    }
    ASSIGN_OR_RETURN(
        m->tokenizer_,
        MakeByteTokenizer(m->config().vocab_size,
                          static_cast<int32_t>(m->config().eos_token_id.value_or(-1))));
  } else if (has_words || options.require_tokenizer || std::filesystem::exists(spm, error)) {
    const std::string& path = has_words ? words : spm;
    ASSIGN_OR_RETURN(m->tokenizer_,
                     has_words ? LoadWordTokenizer(words) : LoadSentencePieceTokenizer(spm));
    if (m->tokenizer_->vocab_size() > m->config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(path, " has ", m->tokenizer_->vocab_size(),
                                                     " symbols but the model only ",
                                                     m->config().vocab_size, " ids"));
    }
  }

  std::optional<DraftSpec> spec;
  if (!options.draft_dir.empty()) {
    RETURN_IF_ERROR(CheckDraftTokenizer(dir, options.draft_dir));
    spec = DraftSpec{options.draft_dir};
  } else if (options.draft_from_json) {
    ASSIGN_OR_RETURN(spec, ReadDraftSpec(dir));
  }
  if (spec) {
    if (options.draft_tokens != 0) spec->draft_tokens = options.draft_tokens;
    if (spec->draft_tokens < 1 || spec->draft_tokens > kMaxDraftTokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "draft_tokens must be in [1, ", kMaxDraftTokens, "], got ", spec->draft_tokens));
    }
    LoadOptions draft_options;
    draft_options.device = options.device;
    draft_options.model = options.model;
    draft_options.backend_faults = options.backend_faults;
    draft_options.backend_fault_seed = options.backend_fault_seed + 1;
    ASSIGN_OR_RETURN(std::unique_ptr<Model> draft, Load(spec->dir, draft_options));
    RETURN_IF_ERROR(CheckDraft(*m, *draft));
    m->draft_ = std::move(draft);
    m->draft_tokens_ = spec->draft_tokens;
  }
  if (faults != nullptr) RETURN_IF_ERROR(faults->SetSpec(options.backend_faults));
  return m;
}

const ModelConfig& Model::config() const { return impl_->config(); }

DType Model::weight_dtype() const { return impl_->weights().layers[0].fc1.dtype(); }

DType Model::session_memory() const { return impl_->session_memory(); }

absl::StatusOr<ModelDescription> Model::Describe() const {
  const ModelConfig& c = config();
  ModelDescription d;
  d.architecture = c.architecture;
  d.vocab_size = c.vocab_size;
  d.d_model = c.d_model;
  d.n_layer = c.n_layer;
  d.mem_len = c.mem_len;
  d.dtype = c.dtype;
  d.state_bytes = static_cast<int64_t>(StateBytes());
  d.default_segment_tokens = c.default_segment_tokens();
  bool present[EnumTable<AttentionKind>::kEntries.size()] = {};
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const AttentionKind kind = c.layer(l).attention;
    d.layers.push_back({kind, EnumName(kind), static_cast<int64_t>(LayerStateBytes(l))});
    present[static_cast<size_t>(kind)] = true;
  }
  std::vector<std::string> kinds;
  for (const EnumEntry<AttentionKind>& e : EnumTable<AttentionKind>::kEntries) {
    if (present[static_cast<size_t>(e.value)]) kinds.emplace_back(e.name);
  }
  d.attention_summary = absl::StrJoin(kinds, "+");

  // The fingerprint (config and every tensor's bytes) and the fraction of zero weights.
  ASSIGN_OR_RETURN(const std::string config_text, ReadFile(dir_ + "/config.json"));
  uint64_t h = Fnv1a(kFnvOffset, reinterpret_cast<const unsigned char*>(config_text.data()),
                     config_text.size());
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir_ + "/model.safetensors"));
  int64_t zeros = 0, total = 0;
  for (const SafetensorsTensor& t : file->tensors()) {
    h = Fnv1a(h, reinterpret_cast<const unsigned char*>(t.name.data()), t.name.size());
    h = Fnv1a(h, t.data, t.size_bytes);
    if (t.dtype == DType::kI32) continue;
    const size_t width = DTypeSize(t.dtype);
    for (size_t off = 0; off < t.size_bytes; off += width) zeros += IsZero(t.data + off, t.dtype);
    total += static_cast<int64_t>(t.size_bytes / width);
  }
  d.fingerprint = absl::StrFormat("%016x", h);
  d.weight_sparsity = total > 0 ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0;
  return d;
}

size_t Model::StateBytes() const { return impl_->StateBytes(); }
size_t Model::LayerStateBytes(int64_t l) const { return impl_->LayerStateBytes(l); }
absl::StatusOr<SessionState> Model::NewState() const { return impl_->NewState(); }
absl::StatusOr<SessionState> Model::CloneState(const SessionState& state) const {
  return impl_->CloneState(state);
}
absl::Status Model::CopyStateInto(const SessionState& state, SessionState* dst) const {
  return impl_->CopyStateInto(state, dst);
}
absl::StatusOr<SessionState> Model::StateToHost(const SessionState& state) const {
  return impl_->StateToHost(state);
}
absl::StatusOr<SessionState> Model::StateFromHost(const SessionState& host_state) const {
  return impl_->StateFromHost(host_state);
}
absl::Status Model::Forward(const std::vector<SequenceInput>& batch, LogitsMode mode,
                            Tensor* logits) const {
  return impl_->Forward(batch, mode, logits);
}
bool Model::UsesResidualAttention() const { return impl_->UsesResidualAttention(); }

}  // namespace mnemo::engine::api
