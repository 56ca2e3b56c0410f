#include "server/model_registry.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "base/status_macros.h"
#include "server/echo.h"
#include "server/metrics.h"

namespace mnemo::server {
namespace {

// Wraps a loaded engine model: its description and its engine loop.
absl::StatusOr<std::unique_ptr<LoadedModel>> Wrap(std::string name,
                                                  std::shared_ptr<const engine::api::Model> model,
                                                  int64_t segment_tokens,
                                                  const SchedulerOptions& scheduling,
                                                  Metrics* metrics) {
  auto m = std::make_unique<LoadedModel>();
  m->name = std::move(name);
  m->dir = model->dir();
  m->device = model->device();
  m->tokenizer = model->tokenizer();
  ASSIGN_OR_RETURN(m->description, model->Describe());
  m->model = std::move(model);
  m->segment_tokens = segment_tokens > 0 ? segment_tokens : m->description.default_segment_tokens;
  m->scheduler = std::make_unique<Scheduler>(*m->model, scheduling, metrics);
  if (metrics != nullptr) {
    metrics->ModelInfo(m->name, m->device, DTypeName(m->description.dtype),
                       m->description.attention_summary);
  }
  return m;
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
    const SchedulerOptions& scheduling, Metrics* metrics, const engine::api::ModelOptions& options,
    bool speculative, const std::string& backend_faults) {
  if (specs.empty()) {
    return absl::InvalidArgumentError(
        "no model to serve: pass --model NAME=DIR or --model-repository DIR (tools/run.sh makes "
        "and serves the small default checkpoint)");
  }
  auto registry = std::make_unique<ModelRegistry>();
  for (const ModelSpec& spec : specs) {
    if (registry->Find(spec.name).ok() || registry->IsEncoder(spec.name)) {
      return absl::InvalidArgumentError(absl::StrCat("model \"", spec.name, "\" given twice"));
    }
    auto with_name = [&](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("model \"", spec.name, "\": ", s.message()));
    };
    auto encoder_checkpoint = engine::api::IsEncoderCheckpoint(spec.dir);
    if (!encoder_checkpoint.ok()) return with_name(encoder_checkpoint.status());
    if (*encoder_checkpoint) {
      auto encoder = engine::api::Encoder::Load(spec.dir);
      if (!encoder.ok()) return with_name(encoder.status());
      auto e = std::make_unique<LoadedEncoder>();
      e->name = spec.name;
      e->dir = spec.dir;
      e->encoder = *std::move(encoder);
      e->tokenizer = e->encoder->tokenizer();
      e->scheduler = std::make_unique<Scheduler>(*e->encoder, scheduling, metrics);
      if (metrics != nullptr) {
        metrics->ModelInfo(e->name, e->device, DTypeName(e->encoder->config().dtype),
                           e->encoder->config().architecture);
      }
      registry->encoders_.push_back(std::move(e));
      continue;
    }
    engine::api::LoadOptions load;
    load.device = device;
    load.model = options;
    load.draft_from_json = speculative;
    load.backend_faults = backend_faults;
    auto model = engine::api::Model::Load(spec.dir, load);
    if (!model.ok()) return with_name(model.status());
    std::shared_ptr<const engine::api::Model> shared = *std::move(model);
    auto m = Wrap(spec.name, shared, segment_tokens, scheduling, metrics);
    if (!m.ok()) return with_name(m.status());
    if (shared->draft() != nullptr) {
      auto d = Wrap(absl::StrCat(spec.name, "/draft"), shared->draft(), segment_tokens, scheduling,
                    metrics);
      if (!d.ok()) return with_name(d.status());
      (*m)->draft = d->get();
      (*m)->draft_tokens = shared->draft_tokens();
      registry->drafts_.push_back(*std::move(d));
    }
    registry->models_.push_back(*std::move(m));
  }
  return registry;
}

std::string ModelRegistry::LoadedNames() const {
  std::vector<std::string> names;
  for (const auto& m : models_) names.push_back(m->name);
  for (const auto& e : encoders_) names.push_back(absl::StrCat(e->name, " (encoder)"));
  return absl::StrJoin(names, ", ");
}

bool ModelRegistry::IsEncoder(const std::string& name) const {
  if (name.empty()) return false;
  return std::any_of(encoders_.begin(), encoders_.end(),
                     [&](const auto& e) { return e->name == name; });
}

absl::StatusOr<LoadedModel*> ModelRegistry::Find(const std::string& name) const {
  if (name.empty() && !models_.empty()) return models_.front().get();
  for (const auto& m : models_) {
    if (m->name == name) return m.get();
  }
  if (IsEncoder(name)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model \"", name, "\" is an encoder: it has no sessions and only serves Encode"));
  }
  if (name.empty()) {
    return absl::NotFoundError(
        absl::StrCat("this server has no decoder model (loaded: ", LoadedNames(), "); name one"));
  }
  return absl::NotFoundError(
      absl::StrCat("no model named \"", Echo(name), "\" (loaded: ", LoadedNames(), ")"));
}

absl::StatusOr<LoadedEncoder*> ModelRegistry::FindEncoder(const std::string& name) const {
  if (name.empty() && !encoders_.empty()) return encoders_.front().get();
  for (const auto& e : encoders_) {
    if (e->name == name) return e.get();
  }
  if (name.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("this server has no encoder model (loaded: ", LoadedNames(), ")"));
  }
  for (const auto& m : models_) {
    if (m->name == name) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model \"", name, "\" is a decoder (", m->model->config().architecture,
          "): Encode needs an encoder model (docs/checkpoint-format.md \"Encoders\")"));
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no model named \"", Echo(name), "\" (loaded: ", LoadedNames(), ")"));
}

void ModelRegistry::Shutdown() {
  for (auto& m : models_) m->scheduler->Shutdown();
  for (auto& d : drafts_) d->scheduler->Shutdown();
  for (auto& e : encoders_) e->scheduler->Shutdown();
}

}  // namespace mnemo::server
