#include "engine/model/draft_spec.h"

#include <filesystem>
#include <system_error>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "base/read_file.h"
#include "base/status_macros.h"
#include "engine/tokenizer/word_tokenizer.h"

namespace mnemo::engine {

absl::Status CheckDraftTokenizer(const std::string& model_dir, const std::string& draft_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(draft_dir, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("draft model directory ", draft_dir, " does not exist"));
  }
  for (const char* file : {"tokenizer.model", kWordVocabularyFile}) {
    const std::string mine = absl::StrCat(model_dir, "/", file);
    if (!std::filesystem::exists(mine, ec)) continue;
    const std::string theirs = absl::StrCat(draft_dir, "/", file);
    if (!std::filesystem::exists(theirs, ec)) {
      return absl::InvalidArgumentError(absl::StrCat("draft model ", draft_dir, " has no ", file));
    }
    ASSIGN_OR_RETURN(std::string a, ReadFile(mine));
    ASSIGN_OR_RETURN(std::string b, ReadFile(theirs));
    if (a != b) {
      return absl::InvalidArgumentError(
          absl::StrCat("draft model ", draft_dir, " has another ", file, " than ", model_dir));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<DraftSpec>> ReadDraftSpec(const std::string& model_dir) {
  const std::filesystem::path path = std::filesystem::path(model_dir) / "draft.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<DraftSpec>();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path.string()));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const std::string where = path.string();
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  }
  for (const auto& [key, value] : j.items()) {
    if (key != "model" && key != "draft_tokens") {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown field \"", key, "\""));
    }
  }
  if (!j.contains("model") || !j.at("model").is_string() ||
      j.at("model").get<std::string>().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"model\" must name the draft checkpoint directory"));
  }
  DraftSpec spec;
  const std::filesystem::path model = j.at("model").get<std::string>();
  spec.dir = (model.is_absolute() ? model : std::filesystem::path(model_dir) / model).string();
  if (j.contains("draft_tokens")) {
    const nlohmann::json& k = j.at("draft_tokens");
    if (!k.is_number_integer() || k.get<int64_t>() < 1 || k.get<int64_t>() > kMaxDraftTokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": \"draft_tokens\" must be an integer in [1, ", kMaxDraftTokens, "]"));
    }
    spec.draft_tokens = static_cast<int>(k.get<int64_t>());
  }
  RETURN_IF_ERROR(CheckDraftTokenizer(model_dir, spec.dir));
  return std::optional<DraftSpec>(std::move(spec));
}

}  // namespace mnemo::engine
