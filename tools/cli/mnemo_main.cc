// mnemo: the command line front end of the engine. Sub-commands:
//   generate  stream a continuation of a prompt
//   score     per-token log-probabilities and bits per byte of a text or id file
//   logits    dump raw logits of every position (parity tests and tools)
//   encode    an encoder's vector of every token, or one pooled vector, of a document
// Every sub-command but encode works on any decoder checkpoint directory (config.json +
// model.safetensors
// [+ tokenizer.model or vocab.words, or a byte vocabulary]) and feeds input in segments with memory
// carried across them; generate and score can save the session (memory and pending tail) to a
// snapshot file and start from one.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#include "base/flags.h"
#include "base/read_file.h"
#include "base/status_macros.h"
#include "engine/api/encoder.h"
#include "engine/api/generation.h"
#include "engine/api/model.h"
#include "engine/api/snapshot.h"

namespace mnemo::cli {
namespace {

namespace api = engine::api;
using api::LogitsMode;
using api::Model;
using api::SequenceInput;
using api::SessionState;
using api::Tensor;

constexpr char kUsage[] = R"(usage: mnemo <command> [flags]

commands:
  generate   stream a continuation of a prompt to stdout
  score      per-token log-probabilities and bits per byte of a text or token-id file
  logits     write raw float32 logits of every position of a token-id file
  encode     write an encoder's float32 vector of every token (or one pooled vector) of a
             document (encoder checkpoints: docs/checkpoint-format.md "Encoders")

common flags:
  --model DIR          checkpoint directory: config.json, model.safetensors, tokenizer.model or
                       vocab.words (none for a byte vocabulary: "tokenizer": "bytes")
  --segment-len N      tokens per forward segment when feeding input (default: the model's
                       mem_len, at least 1; 512 for a model without dense layers); memory is
                       carried between segments
  --device D           where the model runs: cpu (default), cuda or cuda:N (weights and
                       session memory on that GPU; f32, same results as cpu within 1e-4)
  --sparse-weights M   on (default) or off: on the CPU, pruned weight matrices run from a sparse
                       form (CSR or 2:4) wherever it moves at most 80% of the dense bytes
  --cpu-weights W      stored (default), float32 or bf16-products: on the CPU, a bf16 or f16
                       checkpoint's weight matrices stay 16-bit (half the bytes per decode step)
                       or are widened to float32 at load (the oracle the 16-bit products match);
                       bf16-products keeps them 16-bit and lets decode steps round activations
                       to bf16 for AVX-512 BF16 dot products (within 2^-9 of sum |x*w|)
  --session-memory T   float32 (default), bfloat16 or float16: on the CPU, the dtype of the
                       Transformer-XL key/value memory of dense and compressive layers
  --load-state FILE    (generate, score) start from the session snapshot in FILE, written by
                       --save-state with the same model (and draft): its memory and its pending
                       tail, which the new input continues
  --save-state FILE    (generate, score) after the command, write the session (memory and the
                       document's pending tail) to FILE (docs/session-snapshots.md); the file
                       is replaced atomically
  --help               this text

generate:
  --prompt TEXT        prompt text (or --prompt-file FILE; one of the two is required, except
                       with --load-state, where the prompt continues the saved document)
  --prompt-file FILE   read the prompt from FILE (UTF-8)
  --max-tokens N       tokens to generate (default 64, at most 1000000)
  --temperature T      0 = greedy (default 1.0)
  --top-k K            sample among the K most likely tokens (default 0 = all)
  --top-p P            nucleus sampling mass in (0, 1] (default 1.0)
  --repetition-penalty R  CTRL-style penalty for already seen tokens (default 1.0 = off)
  --seed S             random seed (default 0)
  --stop STRING        stop when STRING is generated (repeatable; STRING is not printed)
  --stop-id ID         stop when token ID is generated (repeatable)
  --ignore-eos         do not stop at the end-of-sequence token
  --logprobs N         after the text, print each generated token with its log-probability
                       and the N most likely alternatives to stderr (0..20, default 0)
  --draft DIR          speculative decoding with the draft model in DIR (same tokenizer): it
                       proposes tokens, the model verifies them in one pass; greedy output is
                       the model's own, sampled output follows the model's distribution.
                       Default: the draft named by the model directory's draft.json; off: none
  --draft-tokens K     tokens the draft proposes per verification (1..64; default draft.json's
                       draft_tokens, else 4)

score:
  --text-file FILE     UTF-8 text to score (tokenized with the checkpoint's tokenizer)
  --ids-file FILE      whitespace-separated token ids to score (instead of --text-file)
  --json               one JSON object per token {"position","token","logprob"} and a final
                       {"summary":…} line, instead of the human-readable summary
  Token 0 has no context and is not scored; bits per byte divides the total bits by the
  UTF-8 byte length of the scored tokens' text (text input, or ids with a tokenizer). With
  --load-state every token of the input is scored, after the saved document; positions count
  from the start of that document.

logits:
  --ids FILE           whitespace-separated token ids
  --output FILE        raw little-endian float32 [num_tokens, vocab_size]
  --decode             feed one token per step (decode path) instead of segments

encode (--model DIR names an encoder checkpoint; only --model of the common flags applies):
  --ids FILE           whitespace-separated token ids (or --text-file FILE with a
                       tokenizer.model in the checkpoint)
  --output FILE        raw little-endian float32 [num_tokens, d_model], or [1, d_model] pooled
                       ([rows, d_model] for --pool funnel)
  --pool P             none (default: every token), mean, first (the first token's vector),
                       or funnel (a Funnel encoder's pooled sequence, one pass)
  --global-positions L comma-separated ascending token positions that attend globally
  --window N           tokens per pass (default and most: the model's position table); a
                       longer document runs in windows every N/2 tokens, each token taking its
                       vector from the window where it is farthest from an edge
  --mlm-positions L    comma-separated ascending token positions whose masked-LM
                       log-probabilities to write (a checkpoint with the MLM head)
  --mlm-output FILE    where they go: raw little-endian float32 [positions, vocab_size]
  Prints the output's shape to stdout.
)";

using mnemo::Flags;
using mnemo::ReadFile;

absl::StatusOr<std::vector<int32_t>> ReadIds(const std::string& path, int64_t vocab) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::istringstream in(text);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    int64_t id;
    if (!absl::SimpleAtoi(word, &id) || id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": \"", word, "\" is not a token id in [0, ", vocab, ")"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// Loads the --model checkpoint with the device and sparse-weight flags; with `draft`, also the
// draft for speculative decoding: --draft DIR, else the model directory's draft.json (none with
// --draft off or without either), proposing --draft-tokens per pass when given.
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const Flags& flags, bool need_tokenizer,
                                                 bool draft = false) {
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model DIR is required");
  api::LoadOptions options;
  options.device = flags.Has("device") ? flags.Get("device") : "cpu";
  const std::string sparse = flags.Get("sparse-weights", "on");
  if (sparse != "on" && sparse != "off") {
    return absl::InvalidArgumentError("--sparse-weights must be on or off");
  }
  options.model.sparse_weights = sparse == "on";
  ASSIGN_OR_RETURN(options.model.cpu_weights,
                   api::ParseCpuWeights(flags.Get("cpu-weights", "stored")));
  ASSIGN_OR_RETURN(options.model.session_memory,
                   api::ParseSessionMemory(flags.Get("session-memory", "float32")));
  options.require_tokenizer = need_tokenizer;
  if (draft) {
    if (flags.Has("draft")) {
      if (flags.Get("draft") != "off") options.draft_dir = flags.Get("draft");
    } else {
      options.draft_from_json = true;
    }
    if (flags.Has("draft-tokens")) {
      ASSIGN_OR_RETURN(int64_t k, flags.Int("draft-tokens", 4, 1, api::kMaxDraftTokens));
      options.draft_tokens = static_cast<int>(k);
    }
  }
  return Model::Load(flags.Get("model"), options);
}

absl::StatusOr<int64_t> SegmentLen(const Flags& flags, const Model& model) {
  return flags.Int("segment-len", model.config().default_segment_tokens(), 1, 1 << 20);
}

// A session read from --load-state, or a fresh one (no pending tokens) without it. A model with a
// draft gets the draft's state too.
struct CliSession {
  SessionState state;
  SessionState draft_state;
  std::vector<int32_t> pending;  // the document's tail, not run yet
};

absl::StatusOr<CliSession> OpenSession(const Flags& flags, const Model& model,
                                       const api::SnapshotIdentity& identity) {
  CliSession out;
  if (!flags.Has("load-state")) {
    ASSIGN_OR_RETURN(out.state, model.NewState());
    if (model.draft() != nullptr) {
      ASSIGN_OR_RETURN(out.draft_state, model.draft()->NewState());
    }
    return out;
  }
  const std::string path = flags.Get("load-state");
  ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path));
  absl::StatusOr<api::RestoredSession> restored = api::ReadSnapshot(model, identity, bytes);
  if (!restored.ok()) {
    return absl::Status(restored.status().code(),
                        absl::StrCat(path, ": ", restored.status().message()));
  }
  out.state = std::move(restored->state);
  out.draft_state = std::move(restored->draft_state);
  out.pending = std::move(restored->manifest.session.pending);
  return out;
}

// Writes the session to `path` through a temporary file in the same directory and a rename, so
// the file is either the old one or the whole new one.
absl::Status SaveSession(const std::string& path, const Model& model,
                         const api::SnapshotIdentity& identity, const CliSession& session) {
  api::SnapshotSession fields;
  fields.model_name = std::filesystem::path(model.dir()).filename().string();
  fields.pending = session.pending;
  fields.tokens_seen = session.state.position() + static_cast<int64_t>(session.pending.size());
  ASSIGN_OR_RETURN(
      const std::string bytes,
      api::WriteSnapshot(model, identity, session.state,
                         model.draft() != nullptr ? &session.draft_state : nullptr, fields));
  const std::string temp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.flush()) {
      std::error_code ignored;
      std::filesystem::remove(temp, ignored);
      return absl::PermissionDeniedError(absl::StrCat("cannot write ", temp));
    }
  }
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) {
    std::filesystem::remove(temp, error);
    return absl::PermissionDeniedError(absl::StrCat("cannot replace ", path));
  }
  return absl::OkStatus();
}

// The model's snapshot identity when a state is loaded or saved (Describe reads the checkpoint).
absl::StatusOr<api::SnapshotIdentity> IdentityFor(const Flags& flags, const Model& model) {
  if (!flags.Has("load-state") && !flags.Has("save-state")) return api::SnapshotIdentity{};
  return api::IdentityOf(model);
}

// Feeds `ids` through `state` in segments; calls on_logits(first_position, logits[T, V]) for
// each segment when logits are wanted.
template <typename OnLogits>
absl::Status Feed(const Model& model, SessionState& state, const std::vector<int32_t>& ids,
                  int64_t segment_len, LogitsMode mode, OnLogits on_logits) {
  for (size_t begin = 0; begin < ids.size(); begin += static_cast<size_t>(segment_len)) {
    const int64_t t = std::min<int64_t>(segment_len, static_cast<int64_t>(ids.size() - begin));
    Tensor logits;
    RETURN_IF_ERROR(model.Forward({SequenceInput{ids.data() + begin, t, &state}}, mode, &logits));
    if (mode != LogitsMode::kNone) on_logits(static_cast<int64_t>(begin), logits);
  }
  return absl::OkStatus();
}

absl::Status RunLogits(const Flags& flags) {
  ASSIGN_OR_RETURN(std::unique_ptr<Model> loaded, LoadModel(flags, /*need_tokenizer=*/false));
  const Model& model = *loaded;
  if (!flags.Has("ids") || !flags.Has("output")) {
    return absl::InvalidArgumentError("logits needs --ids FILE and --output FILE");
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, ReadIds(flags.Get("ids"), model.config().vocab_size));
  ASSIGN_OR_RETURN(int64_t segment_len, SegmentLen(flags, model));
  if (flags.Has("decode")) segment_len = 1;
  std::ofstream out(flags.Get("output"), std::ios::binary);
  if (!out) return absl::NotFoundError(absl::StrCat("cannot write ", flags.Get("output")));
  ASSIGN_OR_RETURN(SessionState state, model.NewState());
  RETURN_IF_ERROR(
      Feed(model, state, ids, segment_len, LogitsMode::kAll, [&](int64_t, const Tensor& logits) {
        out.write(static_cast<const char*>(logits.raw()),
                  static_cast<std::streamsize>(logits.bytes()));
      }));
  if (!out.flush()) return absl::InternalError("writing logits failed");
  return absl::OkStatus();
}

absl::Status RunEncode(const Flags& flags) {
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model DIR is required");
  if (!flags.Has("output") || flags.Has("ids") == flags.Has("text-file")) {
    return absl::InvalidArgumentError(
        "encode needs --output FILE and one of --ids FILE or --text-file FILE");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<api::Encoder> encoder, api::Encoder::Load(flags.Get("model")));
  std::vector<int32_t> ids;
  if (flags.Has("ids")) {
    ASSIGN_OR_RETURN(ids, ReadIds(flags.Get("ids"), encoder->config().vocab_size));
  } else {
    if (encoder->tokenizer() == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          flags.Get("model"), " has no tokenizer.model: give token ids with --ids FILE"));
    }
    ASSIGN_OR_RETURN(const std::string text, ReadFile(flags.Get("text-file")));
    ASSIGN_OR_RETURN(ids, encoder->tokenizer()->Encode(text));
  }
  api::EncodeOptions options;
  const std::string pool = flags.Get("pool", "none");
  if (pool == "none") {
    options.pooling = api::Pooling::kNone;
  } else if (pool == "mean") {
    options.pooling = api::Pooling::kMean;
  } else if (pool == "first") {
    options.pooling = api::Pooling::kFirst;
  } else if (pool == "funnel") {
    options.pooling = api::Pooling::kFunnel;
  } else {
    return absl::InvalidArgumentError("--pool must be none, mean, first or funnel");
  }
  for (const auto& [flag, list] : {std::pair{"global-positions", &options.global_positions},
                                   std::pair{"mlm-positions", &options.mlm_positions}}) {
    if (!flags.Has(flag)) continue;
    for (absl::string_view part : absl::StrSplit(flags.Get(flag), ',')) {
      int64_t p = 0;
      if (!absl::SimpleAtoi(part, &p)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", flag, ": \"", part, "\" is not a position"));
      }
      list->push_back(p);
    }
  }
  if (options.mlm_positions.empty() != !flags.Has("mlm-output")) {
    return absl::InvalidArgumentError("--mlm-positions and --mlm-output go together");
  }
  ASSIGN_OR_RETURN(options.window_tokens, flags.Int("window", 0, 0, int64_t{1} << 24));
  ASSIGN_OR_RETURN(const api::EncodeOutput encoded, encoder->Encode(ids, options));
  const Tensor& out = encoded.vectors;
  if (!options.mlm_positions.empty()) {
    std::ofstream mlm(flags.Get("mlm-output"), std::ios::binary);
    if (!mlm) return absl::NotFoundError(absl::StrCat("cannot write ", flags.Get("mlm-output")));
    mlm.write(static_cast<const char*>(encoded.mlm_logprobs.raw()),
              static_cast<std::streamsize>(encoded.mlm_logprobs.bytes()));
    if (!mlm.flush()) return absl::InternalError("writing the MLM log-probabilities failed");
  }
  std::ofstream file(flags.Get("output"), std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot write ", flags.Get("output")));
  file.write(static_cast<const char*>(out.raw()), static_cast<std::streamsize>(out.bytes()));
  if (!file.flush()) return absl::InternalError("writing the vectors failed");
  std::printf("%lld %lld\n", static_cast<long long>(out.dim(0)),
              static_cast<long long>(out.dim(1)));
  return absl::OkStatus();
}

absl::Status RunScore(const Flags& flags) {
  const bool from_text = flags.Has("text-file");
  if (from_text == flags.Has("ids-file")) {
    return absl::InvalidArgumentError("score needs exactly one of --text-file or --ids-file");
  }
  const bool keep = flags.Has("load-state") || flags.Has("save-state");
  // A saved session carries the draft's state when the model has one, as generate uses it.
  ASSIGN_OR_RETURN(std::unique_ptr<Model> loaded,
                   LoadModel(flags, /*need_tokenizer=*/from_text, /*draft=*/keep));
  const Model& model = *loaded;
  const int64_t vocab = model.config().vocab_size;
  std::vector<int32_t> input;
  if (from_text) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(flags.Get("text-file")));
    ASSIGN_OR_RETURN(input, model.tokenizer()->Encode(text));
  } else {
    ASSIGN_OR_RETURN(input, ReadIds(flags.Get("ids-file"), vocab));
  }
  ASSIGN_OR_RETURN(const api::SnapshotIdentity identity, IdentityFor(flags, model));
  ASSIGN_OR_RETURN(CliSession session, OpenSession(flags, model, identity));
  // The document not run yet: the loaded session's pending tail, then the input. Its tokens from
  // `first_scored` on are scored (the first token of a fresh document has no context).
  std::vector<int32_t> ids = std::move(session.pending);
  const size_t first_scored = std::max<size_t>(1, ids.size());
  const int64_t base = session.state.position();  // stream position of ids[0]
  ids.insert(ids.end(), input.begin(), input.end());
  if (ids.size() <= first_scored) {
    return absl::InvalidArgumentError(
        flags.Has("load-state") ? "no tokens to score" : "need at least two tokens to score");
  }
  ASSIGN_OR_RETURN(int64_t segment_len, SegmentLen(flags, model));
  const bool json = flags.Has("json");

  std::vector<float> logprobs(ids.size(), 0.0f);  // logprobs[t] = log p(ids[t] | ids[<t])
  std::vector<float> row(static_cast<size_t>(vocab));
  const auto on_logits = [&](int64_t first, const Tensor& logits) {
    for (int64_t r = 0; r < logits.dim(0); ++r) {
      const size_t next = static_cast<size_t>(first + r + 1);
      if (next >= ids.size()) break;
      api::LogSoftmax(logits.data<float>() + r * vocab, vocab, row.data());
      logprobs[next] = row[ids[next]];
    }
  };
  // Whole segments first; the tail (1 … segment_len tokens) stays pending in a saved session, so
  // a later --load-state run continues with the segments one run over the whole document would
  // have made. Its scores come from a copy of the state.
  const size_t tail = (ids.size() - 1) % static_cast<size_t>(segment_len) + 1;
  const std::vector<int32_t> body(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(tail));
  RETURN_IF_ERROR(Feed(model, session.state, body, segment_len, LogitsMode::kAll, on_logits));
  if (model.draft() != nullptr) {
    RETURN_IF_ERROR(Feed(*model.draft(), session.draft_state, body, segment_len, LogitsMode::kNone,
                         [](int64_t, const Tensor&) {}));
  }
  SessionState copy;
  if (flags.Has("save-state")) {
    ASSIGN_OR_RETURN(copy, model.CloneState(session.state));
  }
  SessionState& tail_state = flags.Has("save-state") ? copy : session.state;
  const std::vector<int32_t> tail_ids(ids.end() - static_cast<std::ptrdiff_t>(tail), ids.end());
  RETURN_IF_ERROR(Feed(model, tail_state, tail_ids, segment_len, LogitsMode::kAll,
                       [&](int64_t first, const Tensor& logits) {
                         on_logits(static_cast<int64_t>(body.size()) + first, logits);
                       }));
  if (flags.Has("save-state")) {
    session.pending = tail_ids;
    RETURN_IF_ERROR(SaveSession(flags.Get("save-state"), model, identity, session));
  }
  double total_nats = 0.0;
  for (size_t t = first_scored; t < ids.size(); ++t) {
    total_nats -= logprobs[t];
    if (json) {
      const long long position = base + static_cast<int64_t>(t);
      std::printf("{\"position\":%lld,\"token\":%d,\"logprob\":%.9g}\n", position, ids[t],
                  logprobs[t]);
    }
  }
  const double total_bits = total_nats / std::log(2.0);
  const size_t scored = ids.size() - first_scored;
  int64_t bytes = -1;
  if (model.tokenizer() != nullptr) {
    ASSIGN_OR_RETURN(std::string scored_text,
                     model.tokenizer()->Decode(std::vector<int32_t>(
                         ids.begin() + static_cast<std::ptrdiff_t>(first_scored), ids.end())));
    bytes = static_cast<int64_t>(scored_text.size());
  }
  const double bpb = bytes > 0 ? total_bits / static_cast<double>(bytes) : NAN;
  if (json) {
    std::printf(
        "{\"summary\":{\"tokens\":%zu,\"scored_tokens\":%zu,\"total_bits\":%.9g,"
        "\"bits_per_token\":%.9g,\"bytes\":%lld,\"bits_per_byte\":%s,\"segment_len\":%lld}}\n",
        ids.size(), scored, total_bits, total_bits / static_cast<double>(scored),
        static_cast<long long>(bytes), bytes > 0 ? absl::StrCat(bpb).c_str() : "null",
        static_cast<long long>(segment_len));
  } else {
    std::printf("tokens %zu (scored %zu), total bits %.3f, bits/token %.4f, perplexity %.3f\n",
                ids.size(), scored, total_bits, total_bits / static_cast<double>(scored),
                std::exp(total_nats / static_cast<double>(scored)));
    if (bytes > 0) std::printf("bytes %lld, bits/byte %.4f\n", static_cast<long long>(bytes), bpb);
  }
  return absl::OkStatus();
}

absl::Status RunGenerate(const Flags& flags) {
  ASSIGN_OR_RETURN(std::unique_ptr<Model> loaded,
                   LoadModel(flags, /*need_tokenizer=*/true, /*draft=*/true));
  const Model& model = *loaded;
  const api::Tokenizer& tokenizer = *model.tokenizer();
  std::string prompt;
  if (flags.Has("prompt") && flags.Has("prompt-file")) {
    return absl::InvalidArgumentError("generate takes one of --prompt or --prompt-file");
  }
  if (!flags.Has("prompt") && !flags.Has("prompt-file") && !flags.Has("load-state")) {
    return absl::InvalidArgumentError("generate needs --prompt or --prompt-file");
  }
  if (flags.Has("prompt")) {
    prompt = flags.Get("prompt");
  } else if (flags.Has("prompt-file")) {
    ASSIGN_OR_RETURN(prompt, ReadFile(flags.Get("prompt-file")));
  }
  std::vector<int32_t> prompt_ids;
  if (!prompt.empty()) {
    ASSIGN_OR_RETURN(prompt_ids, tokenizer.Encode(prompt));
  }
  ASSIGN_OR_RETURN(const api::SnapshotIdentity identity, IdentityFor(flags, model));
  ASSIGN_OR_RETURN(CliSession session, OpenSession(flags, model, identity));
  // The pending document: a loaded session's tail, then the prompt.
  std::vector<int32_t> ids = session.pending;
  ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  if (ids.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");

  api::GenerationParams params;
  api::SamplingParams& sampling = params.sampling;
  ASSIGN_OR_RETURN(sampling.temperature, flags.Float("temperature", 1.0f));
  ASSIGN_OR_RETURN(int64_t top_k, flags.Int("top-k", 0, 0, 1 << 30));
  sampling.top_k = static_cast<int32_t>(top_k);
  ASSIGN_OR_RETURN(sampling.top_p, flags.Float("top-p", 1.0f));
  ASSIGN_OR_RETURN(sampling.repetition_penalty, flags.Float("repetition-penalty", 1.0f));
  ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 0, 0, INT64_MAX));
  sampling.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(int64_t top_logprobs, flags.Int("logprobs", 0, 0, 20));
  sampling.top_logprobs = static_cast<int32_t>(top_logprobs);
  RETURN_IF_ERROR(api::ValidateSamplingParams(sampling));
  ASSIGN_OR_RETURN(params.max_tokens, flags.Int("max-tokens", 64, 0, 1000000));
  ASSIGN_OR_RETURN(int64_t segment_len, SegmentLen(flags, model));
  for (const std::string& s : flags.All("stop-id")) {
    int64_t id;
    if (!absl::SimpleAtoi(s, &id) || id < 0 || id >= model.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("--stop-id \"", s, "\" is not a token id"));
    }
    params.stop_ids.push_back(static_cast<int32_t>(id));
  }
  for (const std::string& s : flags.All("stop")) {
    if (!api::IsValidUtf8(s)) return absl::InvalidArgumentError("--stop is not valid UTF-8");
  }
  params.stop = flags.All("stop");
  params.ignore_eos = flags.Has("ignore-eos");

  // All of the pending document but the last token is fed in segments (to the draft as well),
  // then generation decodes from the last one, which leaves the last sampled token pending.
  session.pending = ids;
  const api::GenerationMemory memory{&session.state, &session.draft_state, &session.pending};
  std::vector<api::SampledToken> samples;
  ASSIGN_OR_RETURN(
      api::GenerationResult result,
      api::Generate(model, segment_len, memory, params, ids, api::DirectSteps(model, memory),
                    [&](const api::GeneratedToken& token) {
                      samples.push_back(token.sample);
                      if (!token.text.empty()) {
                        // Whole UTF-8 characters not possibly starting a stop string.
                        std::fwrite(token.text.data(), 1, token.text.size(), stdout);
                        std::fflush(stdout);
                      }
                      return true;
                    }));
  if (!result.tail.empty()) std::fwrite(result.tail.data(), 1, result.tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (flags.Has("save-state")) {
    RETURN_IF_ERROR(SaveSession(flags.Get("save-state"), model, identity, session));
  }
  std::string draft_note;
  if (model.draft() != nullptr) {
    draft_note = absl::StrCat(", draft ", model.draft()->dir(), ": ", result.draft_passes,
                              " passes of ", model.draft_tokens(), ", accepted ",
                              result.draft_accepted, " of ", result.draft_proposed);
  }
  std::fprintf(stderr, "[finish: %s, prompt tokens %zu, generated %lld%s]\n",
               std::string(api::FinishReasonName(result.reason)).c_str(), ids.size(),
               static_cast<long long>(result.generated), draft_note.c_str());
  if (sampling.top_logprobs > 0) {
    for (const api::SampledToken& s : samples) {
      std::fprintf(stderr, "%d\t%.4f", s.id, s.logprob);
      for (const auto& [id, lp] : s.top) std::fprintf(stderr, "\t%d:%.4f", id, lp);
      std::fputc('\n', stderr);
    }
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::map<std::string, bool> common = {
      {"model", true},       {"segment-len", true},    {"device", true}, {"sparse-weights", true},
      {"cpu-weights", true}, {"session-memory", true}, {"help", false}};
  std::map<std::string, bool> known = common;
  if (command == "generate" || command == "score") {
    known["load-state"] = true;
    known["save-state"] = true;
  }
  if (command == "generate") {
    for (auto f :
         {"prompt", "prompt-file", "max-tokens", "temperature", "top-k", "top-p",
          "repetition-penalty", "seed", "stop", "stop-id", "logprobs", "draft", "draft-tokens"}) {
      known[f] = true;
    }
    known["ignore-eos"] = false;
  } else if (command == "score") {
    known["text-file"] = true;
    known["ids-file"] = true;
    known["json"] = false;
  } else if (command == "logits") {
    known["ids"] = true;
    known["output"] = true;
    known["decode"] = false;
  } else if (command == "encode") {
    known = {
        {"model", true},      {"ids", true},    {"text-file", true},        {"output", true},
        {"pool", true},       {"window", true}, {"global-positions", true}, {"mlm-positions", true},
        {"mlm-output", true}, {"help", false}};
  } else {
    std::fprintf(stderr, "mnemo: unknown command \"%s\"\n\n%s", command.c_str(), kUsage);
    return 2;
  }
  auto flags = Flags::Parse(argc, argv, 2, known);
  if (!flags.ok()) {
    std::fprintf(stderr, "mnemo %s: %s\n", command.c_str(),
                 std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  absl::Status status;
  if (command == "generate") {
    status = RunGenerate(*flags);
  } else if (command == "score") {
    status = RunScore(*flags);
  } else if (command == "encode") {
    status = RunEncode(*flags);
  } else {
    status = RunLogits(*flags);
  }
  if (!status.ok()) {
    std::fprintf(stderr, "mnemo %s: %s\n", command.c_str(), status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace mnemo::cli

int main(int argc, char** argv) { return mnemo::cli::Main(argc, argv); }
