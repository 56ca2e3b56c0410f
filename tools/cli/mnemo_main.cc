// mnemo: the command line front end of the engine. Sub-commands:
//   generate  stream a continuation of a prompt
//   score     per-token log-probabilities and bits per byte of a text or id file
//   logits    dump raw logits of every position (parity tests and tools)
// Every sub-command works on any checkpoint directory (config.json + model.safetensors
// [+ tokenizer.model]) and feeds input in segments with memory carried across them.
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "base/flags.h"
#include "base/read_file.h"
#include "base/status_macros.h"
#include "engine/backend/backend.h"
#include "engine/model/draft_spec.h"
#include "engine/model/transfo_xl_model.h"
#include "engine/sampling/sampler.h"
#include "engine/sampling/speculative_decoder.h"
#include "engine/sampling/stop_condition.h"
#include "engine/tokenizer/incremental_decoder.h"
#include "engine/tokenizer/tokenizer.h"

namespace mnemo::cli {
namespace {

using engine::LogitsMode;
using engine::SequenceInput;
using engine::SessionState;
using engine::Tensor;
using engine::TransfoXlModel;

constexpr char kUsage[] = R"(usage: mnemo <command> [flags]

commands:
  generate   stream a continuation of a prompt to stdout
  score      per-token log-probabilities and bits per byte of a text or token-id file
  logits     write raw float32 logits of every position of a token-id file

common flags:
  --model DIR          checkpoint directory: config.json, model.safetensors, tokenizer.model
  --segment-len N      tokens per forward segment when feeding input (default: the model's
                       mem_len, at least 1; 512 for a model without dense layers); memory is
                       carried between segments
  --device D           where the model runs: cpu (default), cuda or cuda:N (weights and
                       session memory on that GPU; f32, same results as cpu within 1e-4)
  --sparse-weights M   on (default) or off: on the CPU, pruned weight matrices run from a sparse
                       form (CSR or 2:4) wherever it moves at most 80% of the dense bytes
  --help               this text

generate:
  --prompt TEXT        prompt text (or --prompt-file FILE; one of the two is required)
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
  --text-file FILE     UTF-8 text to score (tokenized with tokenizer.model)
  --ids-file FILE      whitespace-separated token ids to score (instead of --text-file)
  --json               one JSON object per token {"position","token","logprob"} and a final
                       {"summary":…} line, instead of the human-readable summary
  Token 0 has no context and is not scored; bits per byte divides the total bits by the
  UTF-8 byte length of the scored tokens' text (text input, or ids with a tokenizer).

logits:
  --ids FILE           whitespace-separated token ids
  --output FILE        raw little-endian float32 [num_tokens, vocab_size]
  --decode             feed one token per step (decode path) instead of segments
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

struct Loaded {
  std::unique_ptr<TransfoXlModel> model;
  std::unique_ptr<engine::Tokenizer> tokenizer;  // null when the directory has none
};

// Loads the checkpoint in `dir` with the device and sparse-weight flags.
absl::StatusOr<Loaded> LoadModelFrom(const Flags& flags, const std::string& dir,
                                     bool need_tokenizer) {
  Loaded loaded;
  ASSIGN_OR_RETURN(std::unique_ptr<engine::Backend> backend,
                   engine::MakeBackend(flags.Has("device") ? flags.Get("device") : "cpu"));
  engine::ModelOptions options;
  const std::string sparse = flags.Get("sparse-weights", "on");
  if (sparse != "on" && sparse != "off") {
    return absl::InvalidArgumentError("--sparse-weights must be on or off");
  }
  options.sparse_weights = sparse == "on";
  ASSIGN_OR_RETURN(loaded.model, TransfoXlModel::Load(dir, std::move(backend), options));
  const std::string spm_path = dir + "/tokenizer.model";
  if (need_tokenizer || std::ifstream(spm_path).good()) {
    ASSIGN_OR_RETURN(loaded.tokenizer, engine::LoadSentencePieceTokenizer(spm_path));
    if (loaded.tokenizer->vocab_size() > loaded.model->config().vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(spm_path, " has ", loaded.tokenizer->vocab_size(),
                       " pieces but the model only ", loaded.model->config().vocab_size, " ids"));
    }
  }
  return loaded;
}

absl::StatusOr<Loaded> LoadModel(const Flags& flags, bool need_tokenizer) {
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model DIR is required");
  return LoadModelFrom(flags, flags.Get("model"), need_tokenizer);
}

// The draft model for speculative decoding: --draft DIR, else the model directory's draft.json;
// none with --draft off or without either.
absl::StatusOr<std::optional<engine::DraftSpec>> DraftFor(const Flags& flags) {
  const std::string model_dir = flags.Get("model");
  std::optional<engine::DraftSpec> spec;
  if (flags.Has("draft")) {
    if (flags.Get("draft") == "off") return spec;
    RETURN_IF_ERROR(engine::CheckDraftTokenizer(model_dir, flags.Get("draft")));
    spec = engine::DraftSpec{flags.Get("draft")};
  } else {
    ASSIGN_OR_RETURN(spec, engine::ReadDraftSpec(model_dir));
  }
  if (spec && flags.Has("draft-tokens")) {
    ASSIGN_OR_RETURN(int64_t k,
                     flags.Int("draft-tokens", spec->draft_tokens, 1, engine::kMaxDraftTokens));
    spec->draft_tokens = static_cast<int>(k);
  }
  return spec;
}

absl::StatusOr<int64_t> SegmentLen(const Flags& flags, const TransfoXlModel& model) {
  return flags.Int("segment-len", model.config().default_segment_tokens(), 1, 1 << 20);
}

// Feeds `ids` through `state` in segments; calls on_logits(first_position, logits[T, V]) for
// each segment when logits are wanted.
template <typename OnLogits>
absl::Status Feed(TransfoXlModel& model, SessionState& state, const std::vector<int32_t>& ids,
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
  ASSIGN_OR_RETURN(Loaded loaded, LoadModel(flags, /*need_tokenizer=*/false));
  TransfoXlModel& model = *loaded.model;
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

absl::Status RunScore(const Flags& flags) {
  const bool from_text = flags.Has("text-file");
  if (from_text == flags.Has("ids-file")) {
    return absl::InvalidArgumentError("score needs exactly one of --text-file or --ids-file");
  }
  ASSIGN_OR_RETURN(Loaded loaded, LoadModel(flags, /*need_tokenizer=*/from_text));
  TransfoXlModel& model = *loaded.model;
  const int64_t vocab = model.config().vocab_size;
  std::vector<int32_t> ids;
  if (from_text) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(flags.Get("text-file")));
    ASSIGN_OR_RETURN(ids, loaded.tokenizer->Encode(text));
  } else {
    ASSIGN_OR_RETURN(ids, ReadIds(flags.Get("ids-file"), vocab));
  }
  if (ids.size() < 2) return absl::InvalidArgumentError("need at least two tokens to score");
  ASSIGN_OR_RETURN(int64_t segment_len, SegmentLen(flags, model));
  const bool json = flags.Has("json");

  std::vector<float> logprobs(ids.size(), 0.0f);  // logprobs[t] = log p(ids[t] | ids[<t])
  std::vector<float> row(static_cast<size_t>(vocab));
  ASSIGN_OR_RETURN(SessionState state, model.NewState());
  RETURN_IF_ERROR(Feed(model, state, ids, segment_len, LogitsMode::kAll,
                       [&](int64_t first, const Tensor& logits) {
                         for (int64_t r = 0; r < logits.dim(0); ++r) {
                           const size_t next = static_cast<size_t>(first + r + 1);
                           if (next >= ids.size()) break;
                           engine::LogSoftmax(logits.data<float>() + r * vocab, vocab, row.data());
                           logprobs[next] = row[ids[next]];
                         }
                       }));
  double total_nats = 0.0;
  for (size_t t = 1; t < ids.size(); ++t) {
    total_nats -= logprobs[t];
    if (json) {
      std::printf("{\"position\":%zu,\"token\":%d,\"logprob\":%.9g}\n", t, ids[t], logprobs[t]);
    }
  }
  const double total_bits = total_nats / std::log(2.0);
  const size_t scored = ids.size() - 1;
  int64_t bytes = -1;
  if (loaded.tokenizer) {
    ASSIGN_OR_RETURN(std::string scored_text,
                     loaded.tokenizer->Decode(std::vector<int32_t>(ids.begin() + 1, ids.end())));
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
  ASSIGN_OR_RETURN(Loaded loaded, LoadModel(flags, /*need_tokenizer=*/true));
  TransfoXlModel& model = *loaded.model;
  const engine::Tokenizer& tokenizer = *loaded.tokenizer;
  std::string prompt;
  if (flags.Has("prompt") == flags.Has("prompt-file")) {
    return absl::InvalidArgumentError("generate needs exactly one of --prompt or --prompt-file");
  }
  if (flags.Has("prompt")) {
    prompt = flags.Get("prompt");
  } else {
    ASSIGN_OR_RETURN(prompt, ReadFile(flags.Get("prompt-file")));
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(prompt));
  if (ids.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");

  engine::SamplingParams params;
  ASSIGN_OR_RETURN(params.temperature, flags.Float("temperature", 1.0f));
  ASSIGN_OR_RETURN(int64_t top_k, flags.Int("top-k", 0, 0, 1 << 30));
  params.top_k = static_cast<int32_t>(top_k);
  ASSIGN_OR_RETURN(params.top_p, flags.Float("top-p", 1.0f));
  ASSIGN_OR_RETURN(params.repetition_penalty, flags.Float("repetition-penalty", 1.0f));
  ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 0, 0, INT64_MAX));
  params.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(int64_t top_logprobs, flags.Int("logprobs", 0, 0, 20));
  params.top_logprobs = static_cast<int32_t>(top_logprobs);
  RETURN_IF_ERROR(engine::ValidateSamplingParams(params));
  ASSIGN_OR_RETURN(int64_t max_tokens, flags.Int("max-tokens", 64, 0, 1000000));
  ASSIGN_OR_RETURN(int64_t segment_len, SegmentLen(flags, model));
  std::vector<int32_t> stop_ids;
  for (const std::string& s : flags.All("stop-id")) {
    int64_t id;
    if (!absl::SimpleAtoi(s, &id) || id < 0 || id >= model.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("--stop-id \"", s, "\" is not a token id"));
    }
    stop_ids.push_back(static_cast<int32_t>(id));
  }
  for (const std::string& s : flags.All("stop")) {
    if (!engine::IsValidUtf8(s)) return absl::InvalidArgumentError("--stop is not valid UTF-8");
  }
  const int32_t eos = flags.Has("ignore-eos") ? -1 : tokenizer.eos_id();
  engine::StopCondition stop(flags.All("stop"), stop_ids, eos);
  engine::Sampler sampler(params);
  ASSIGN_OR_RETURN(std::optional<engine::DraftSpec> draft_spec, DraftFor(flags));

  // Prefill all but the last prompt token in segments, then decode from the last one.
  ASSIGN_OR_RETURN(SessionState state, model.NewState());
  std::vector<int32_t> head(ids.begin(), ids.end() - 1);
  RETURN_IF_ERROR(
      Feed(model, state, head, segment_len, LogitsMode::kNone, [](int64_t, const Tensor&) {}));
  // Speculative decoding: the draft reads the same prompt and proposes; the model verifies.
  Loaded draft;
  SessionState draft_state;
  std::optional<engine::SpeculativeDecoder> speculative;
  if (draft_spec) {
    ASSIGN_OR_RETURN(draft, LoadModelFrom(flags, draft_spec->dir, /*need_tokenizer=*/false));
    ASSIGN_OR_RETURN(draft_state, draft.model->NewState());
    ASSIGN_OR_RETURN(int64_t draft_segment, SegmentLen(flags, *draft.model));
    RETURN_IF_ERROR(Feed(*draft.model, draft_state, head, draft_segment, LogitsMode::kNone,
                         [](int64_t, const Tensor&) {}));
    ASSIGN_OR_RETURN(speculative,
                     engine::SpeculativeDecoder::Create(model, &state, *draft.model, &draft_state,
                                                        params, draft_spec->draft_tokens, ids));
  }
  std::deque<engine::SampledToken> proposed;  // speculative tokens not yet emitted
  std::vector<int32_t> history = ids;
  std::vector<int32_t> generated;
  std::vector<engine::SampledToken> samples;
  engine::IncrementalDecoder decoder(tokenizer);
  std::string text;    // decoded generated text
  size_t printed = 0;  // bytes of `text` already on stdout
  engine::FinishReason reason = engine::FinishReason::kLength;
  bool stopped = false;
  int32_t next = ids.back();
  for (int64_t step = 0; step < max_tokens && !stopped; ++step) {
    engine::SampledToken sample;
    if (speculative) {
      if (proposed.empty()) {
        ASSIGN_OR_RETURN(std::vector<engine::SampledToken> more, speculative->Next());
        proposed.assign(more.begin(), more.end());
      }
      sample = std::move(proposed.front());
      proposed.pop_front();
    } else {
      Tensor logits;
      RETURN_IF_ERROR(model.Forward({SequenceInput{&next, 1, &state}}, LogitsMode::kLast, &logits));
      sample = sampler.Sample(logits.data<float>(), model.config().vocab_size, history);
    }
    next = sample.id;
    samples.push_back(sample);
    history.push_back(next);
    generated.push_back(next);
    ASSIGN_OR_RETURN(std::string delta, decoder.Push(next));
    text += delta;
    size_t keep = text.size();
    if (auto r = stop.Check(next, text, &keep, delta.size())) {
      reason = *r;
      text.resize(keep);
      stopped = true;
      break;
    }
    // Emit what can no longer change: whole UTF-8 characters not possibly starting a stop string.
    const size_t ready = engine::CompleteUtf8Prefix(
        std::string_view(text).substr(0, text.size() - stop.PendingBytes(text)));
    if (ready > printed) {
      std::fwrite(text.data() + printed, 1, ready - printed, stdout);
      std::fflush(stdout);
      printed = ready;
    }
  }
  if (!stopped) {  // the length limit: what the decoder still holds ends the text
    ASSIGN_OR_RETURN(std::string rest, decoder.Flush());
    text += rest;
    size_t keep = text.size();
    if (stop.Check(-1, text, &keep, rest.size()).has_value()) {
      reason = engine::FinishReason::kStopString;
      text.resize(keep);
    }
  }
  if (text.size() > printed) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  std::string draft_note;
  if (speculative) {
    const engine::SpeculativeStats& st = speculative->stats();
    draft_note =
        absl::StrCat(", draft ", draft_spec->dir, ": ", st.cycles, " passes of ",
                     draft_spec->draft_tokens, ", accepted ", st.accepted, " of ", st.drafted);
  }
  std::fprintf(stderr, "[finish: %s, prompt tokens %zu, generated %zu%s]\n",
               std::string(engine::FinishReasonName(reason)).c_str(), ids.size(), generated.size(),
               draft_note.c_str());
  if (params.top_logprobs > 0) {
    for (const engine::SampledToken& s : samples) {
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
  const std::map<std::string, bool> common = {{"model", true},
                                              {"segment-len", true},
                                              {"device", true},
                                              {"sparse-weights", true},
                                              {"help", false}};
  std::map<std::string, bool> known = common;
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
