#include "server/model_registry.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

#include "base/read_file.h"
#include "base/status_macros.h"
#include "engine/backend/backend.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/model/draft_spec.h"
#include "server/metrics.h"

namespace mnemo::server {
namespace {

using mnemo::ReadFile;

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t Fnv1a(uint64_t h, const unsigned char* data, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ data[i]) * kFnvPrime;
  return h;
}

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

// The fingerprint (config and every tensor's bytes) and the fraction of zero weights.
absl::Status Describe(LoadedModel& m) {
  ASSIGN_OR_RETURN(const std::string config_text, ReadFile(m.dir + "/config.json"));
  uint64_t h = Fnv1a(kFnvOffset, reinterpret_cast<const unsigned char*>(config_text.data()),
                     config_text.size());
  ASSIGN_OR_RETURN(auto file, engine::SafetensorsFile::Open(m.dir + "/model.safetensors"));
  int64_t zeros = 0, total = 0;
  for (const engine::SafetensorsTensor& t : file->tensors()) {
    h = Fnv1a(h, reinterpret_cast<const unsigned char*>(t.name.data()), t.name.size());
    h = Fnv1a(h, t.data, t.size_bytes);
    if (t.dtype == DType::kI32) continue;
    const size_t width = DTypeSize(t.dtype);
    for (size_t off = 0; off < t.size_bytes; off += width) zeros += IsZero(t.data + off, t.dtype);
    total += static_cast<int64_t>(t.size_bytes / width);
  }
  m.fingerprint = absl::StrFormat("%016x", h);
  m.weight_sparsity = total > 0 ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0;
  return absl::OkStatus();
}

std::string AttentionSummary(const engine::ModelConfig& c) {
  int dense = 0, linear = 0, sparse = 0, lsh = 0;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    switch (c.layer(l).attention) {
      case engine::AttentionKind::kDense:
        ++dense;
        break;
      case engine::AttentionKind::kLinear:
        ++linear;
        break;
      case engine::AttentionKind::kSparse:
        ++sparse;
        break;
      case engine::AttentionKind::kLsh:
        ++lsh;
        break;
    }
  }
  std::vector<std::string> parts;
  if (dense > 0) parts.emplace_back("dense");
  if (linear > 0) parts.emplace_back("linear");
  if (sparse > 0) parts.emplace_back("sparse");
  if (lsh > 0) parts.emplace_back("lsh");
  return absl::StrJoin(parts, "+");
}

// One model with its tokenizer, description and engine loop.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadOne(
    const ModelSpec& spec, const std::string& device, int64_t segment_tokens,
    const SchedulerOptions& scheduling, Metrics* metrics, const engine::ModelOptions& options) {
  auto m = std::make_unique<LoadedModel>();
  m->name = spec.name;
  m->dir = spec.dir;
  m->device = device;
  ASSIGN_OR_RETURN(auto backend, engine::MakeBackend(device));
  ASSIGN_OR_RETURN(m->model, engine::TransfoXlModel::Load(spec.dir, std::move(backend), options));
  const std::string spm = spec.dir + "/tokenizer.model";
  if (std::filesystem::exists(spm)) {
    ASSIGN_OR_RETURN(m->tokenizer, engine::LoadSentencePieceTokenizer(spm));
  }
  RETURN_IF_ERROR(Describe(*m));
  const engine::ModelConfig& c = m->model->config();
  for (int64_t l = 0; l < c.n_layer; ++l) {
    m->layer_state_bytes.push_back(static_cast<int64_t>(m->model->LayerStateBytes(l)));
  }
  m->segment_tokens = segment_tokens > 0 ? segment_tokens : c.default_segment_tokens();
  m->scheduler = std::make_unique<Scheduler>(*m->model, scheduling, metrics);
  if (metrics != nullptr) {
    metrics->ModelInfo(m->name, device, DTypeName(c.dtype), AttentionSummary(c));
  }
  return m;
}

// Whether `draft` can draft for `target`: one vocabulary, and a target whose verification pass
// (token_by_token) it supports.
absl::Status CheckDraft(const LoadedModel& target, const LoadedModel& draft) {
  if (target.model->config().vocab_size != draft.model->config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the draft model (", draft.dir, ") has vocabulary ", draft.model->config().vocab_size,
        ", the model ", target.model->config().vocab_size));
  }
  if (target.model->UsesResidualAttention()) {
    return absl::InvalidArgumentError(
        "speculative decoding does not support residual_attention (RealFormer) models");
  }
  return absl::OkStatus();
}

}  // namespace

int64_t LoadedModel::SessionBytes() const {
  int64_t bytes = static_cast<int64_t>(model->StateBytes());
  if (draft != nullptr) bytes += static_cast<int64_t>(draft->model->StateBytes());
  return bytes;
}

absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size() || eq > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model \"", text, "\" must be NAME=DIR (NAME: 1–64 of [A-Za-z0-9._-])"));
  }
  ModelSpec spec{text.substr(0, eq), text.substr(eq + 1)};
  for (char ch : spec.name) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("--model name \"", spec.name, "\" may hold only [A-Za-z0-9._-]"));
    }
  }
  return spec;
}

absl::StatusOr<std::vector<ModelSpec>> ModelRepository(const std::string& dir) {
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) {
    return absl::NotFoundError(absl::StrCat("--model-repository ", dir, " is not a directory"));
  }
  std::vector<ModelSpec> specs;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (!entry.is_directory() || !std::filesystem::exists(entry.path() / "config.json")) continue;
    ASSIGN_OR_RETURN(ModelSpec spec, ParseModelSpec(absl::StrCat(entry.path().filename().string(),
                                                                 "=", entry.path().string())));
    specs.push_back(std::move(spec));
  }
  if (error) return absl::NotFoundError(absl::StrCat("cannot list ", dir, ": ", error.message()));
  std::sort(specs.begin(), specs.end(),
            [](const ModelSpec& a, const ModelSpec& b) { return a.name < b.name; });
  return specs;
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Load(
    const std::vector<ModelSpec>& specs, const std::string& device, int64_t segment_tokens,
    const SchedulerOptions& scheduling, Metrics* metrics, const engine::ModelOptions& options,
    bool speculative) {
  if (specs.empty()) {
    return absl::InvalidArgumentError(
        "no model to serve: pass --model NAME=DIR or --model-repository DIR (tools/run.sh makes "
        "and serves the small default checkpoint)");
  }
  auto registry = std::make_unique<ModelRegistry>();
  for (const ModelSpec& spec : specs) {
    if (registry->Find(spec.name).ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model \"", spec.name, "\" given twice"));
    }
    auto with_name = [&](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("model \"", spec.name, "\": ", s.message()));
    };
    auto m = LoadOne(spec, device, segment_tokens, scheduling, metrics, options);
    if (!m.ok()) return with_name(m.status());
    if (speculative) {
      auto draft_spec = engine::ReadDraftSpec(spec.dir);
      if (!draft_spec.ok()) return with_name(draft_spec.status());
      if (*draft_spec) {
        const ModelSpec draft{absl::StrCat(spec.name, "/draft"), (*draft_spec)->dir};
        auto d = LoadOne(draft, device, segment_tokens, scheduling, metrics, options);
        if (!d.ok()) return with_name(d.status());
        if (absl::Status s = CheckDraft(**m, **d); !s.ok()) return with_name(s);
        (*m)->draft = d->get();
        (*m)->draft_tokens = (*draft_spec)->draft_tokens;
        registry->drafts_.push_back(*std::move(d));
      }
    }
    registry->models_.push_back(*std::move(m));
  }
  return registry;
}

absl::StatusOr<LoadedModel*> ModelRegistry::Find(const std::string& name) const {
  if (name.empty() && !models_.empty()) return models_.front().get();
  std::vector<std::string> names;
  for (const auto& m : models_) {
    if (m->name == name) return m.get();
    names.push_back(m->name);
  }
  return absl::NotFoundError(
      absl::StrCat("no model named \"", name, "\" (loaded: ", absl::StrJoin(names, ", "), ")"));
}

void ModelRegistry::Shutdown() {
  for (auto& m : models_) m->scheduler->Shutdown();
  for (auto& d : drafts_) d->scheduler->Shutdown();
}

}  // namespace mnemo::server
