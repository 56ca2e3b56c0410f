// ModelRegistry: the models a server loaded at start, by name, each with its tokenizer, its
// scheduler (the engine loop that batches its steps) and the facts clients may ask about.
// Decoders (sessions, Generate, Score) and encoders (Encode) share one namespace of names; each
// lookup says which family it wants and names the other as such.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/api/encoder.h"
#include "engine/api/model.h"
#include "server/scheduler.h"

namespace mnemo::server {

struct LoadedModel {
  std::string name;
  std::string dir;
  std::string device;  // "cpu", "cuda:0", …
  // Shared with the target's engine::api::Model for a draft.
  std::shared_ptr<const engine::api::Model> model;
  const engine::api::Tokenizer* tokenizer = nullptr;  // the model's; null when it has none
  int64_t segment_tokens = 0;                         // tokens per prefill step
  engine::api::ModelDescription description;          // fingerprint, per-layer state bytes, …
  std::unique_ptr<Scheduler> scheduler;
  // Speculative decoding (server --speculative and the directory's draft.json): the model's
  // draft, with its own engine loop; every session of this model also carries a draft state that
  // holds the same document. Null: plain decoding.
  LoadedModel* draft = nullptr;
  int draft_tokens = 0;  // proposals per verification pass

  // Bytes of one session's memory: the model's state and, with a draft, the draft's.
  int64_t SessionBytes() const;
};

// An encoder checkpoint (docs/checkpoint-format.md "Encoders"), served by Encode on the CPU.
struct LoadedEncoder {
  std::string name;
  std::string dir;
  std::string device = "cpu";
  std::shared_ptr<const engine::api::Encoder> encoder;
  const engine::api::Tokenizer* tokenizer = nullptr;  // null when it has none
  std::unique_ptr<Scheduler> scheduler;
};

struct ModelSpec {
  std::string name;
  std::string dir;
};

class ModelRegistry {
 public:
  // Loads each model on `device` (INVALID_ARGUMENT / NOT_FOUND naming the model on failure);
  // encoders run on the CPU whatever `device` says.
  // `segment_tokens` 0 means each model's memory length. With `speculative`, a model whose
  // directory names a draft (draft.json) also loads the draft and generates speculatively.
  // `backend_faults` (test facility, --backend-faults): every model's backend fails the ops this
  // fault spec names once loaded (engine/backend/fault_injecting_backend.h).
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Load(
      const std::vector<ModelSpec>& specs, const std::string& device, int64_t segment_tokens,
      const SchedulerOptions& scheduling, Metrics* metrics,
      const engine::api::ModelOptions& options = {}, bool speculative = false,
      const std::string& backend_faults = "");

  // A decoder; `name` empty: the default model (the first decoder). NOT_FOUND listing the loaded
  // names; FAILED_PRECONDITION for an encoder's name.
  absl::StatusOr<LoadedModel*> Find(const std::string& name) const;
  // An encoder; `name` empty: the first encoder. NOT_FOUND listing the loaded names;
  // FAILED_PRECONDITION for a decoder's name.
  absl::StatusOr<LoadedEncoder*> FindEncoder(const std::string& name) const;
  // Whether `name` (non-empty) names an encoder.
  bool IsEncoder(const std::string& name) const;
  const std::vector<std::unique_ptr<LoadedModel>>& models() const { return models_; }
  const std::vector<std::unique_ptr<LoadedEncoder>>& encoders() const { return encoders_; }
  // Stops every model's engine loop (pending steps fail with UNAVAILABLE).
  void Shutdown();

 private:
  std::vector<std::unique_ptr<LoadedModel>> models_;
  std::vector<std::unique_ptr<LoadedModel>> drafts_;  // not served on their own
  std::vector<std::unique_ptr<LoadedEncoder>> encoders_;

  std::string LoadedNames() const;
};

// Parses "NAME=DIR" (NAME: 1–64 of [A-Za-z0-9._-]).
absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& text);

// The models of a repository directory: every subdirectory holding a config.json, named after
// it, in name order. NOT_FOUND when `dir` is not a directory.
absl::StatusOr<std::vector<ModelSpec>> ModelRepository(const std::string& dir);

}  // namespace mnemo::server
