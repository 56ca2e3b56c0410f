// mnemo-client: the command line of the mnemo.v1 server, a thin shell over mnemo::client::Client.
// Sessions (create/get/list/delete/fork), ingesting files, streaming generation, scoring,
// encoding and tokenizing. Exit status: 0 success, 1 an error (printed as "error: CODE: message"),
// 2 a usage error.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "base/flags.h"
#include "base/read_file.h"
#include "base/status_macros.h"
#include "clients/cpp/mnemo_client.h"
#include "google/protobuf/util/json_util.h"

namespace mnemo::client {
namespace {

using mnemo::Flags;
using mnemo::ReadFile;

constexpr char kUsage[] =
    R"(usage: mnemo-client [--target HOST:PORT] [--timeout D] [--no-retry] [--json] [--tls-*]
                    [--token-file F]
                    <command> [args] [flags]

global flags (before or after the command):
  --target HOST:PORT   server address (default: $MNEMO_TARGET, else 127.0.0.1:50051)
  --timeout D          deadline of every call, e.g. 30s, 5m, 1h (default: none)
  --no-retry           do not retry calls refused without effect (SESSION_MOVED, DRAINING) or
                       broken by the network (default: retry with backoff; clients/cpp/README.md)
  --json               print responses as JSON (protobuf field names) instead of text
  --tls-ca FILE        connect with TLS, verifying the server with the CA certificates in FILE
                       (PEM); any --tls-* flag turns TLS on (default: plaintext)
  --tls-cert FILE      client certificate chain (PEM) for servers that require one (mTLS);
                       needs --tls-key
  --tls-key FILE       the client certificate's private key (PEM)
  --tls-server-name N  the name the server's certificate must carry (default: the target's
                       host)
  --token-file FILE    bearer token for a server with an auth file: the first line of FILE
                       (default: $MNEMO_TOKEN; a token is never given on the command line)
  --help               this text

commands:
  models               the models the server has loaded
  create               a new session; prints its id
      --model M            model name (default: the server's default model)
      --label K=V          a label (repeatable)
      --ttl D              idle time before the session is deleted (default: the server's)
      --memory-tokens N    tokens of memory to keep (default: the model's)
  get ID               one session
  list                 every session, oldest first
      --label K=V          only sessions with this label (repeatable)
  delete ID            delete a session
      --expected-version V only if the session is at state version V
  fork ID              a new session with a copy of ID's state; prints its id
      --label K=V, --ttl D, --expected-version V  as above (labels and TTL default to ID's)
  ingest ID FILE       stream FILE's text (UTF-8; "-" for stdin) into the session; progress on
                       stderr, then "[ingest: tokens N, segments S, pending P, version V]"
      --chunk-bytes N      bytes per message, cut at UTF-8 character boundaries (default 65536)
      --expected-version V fail with ABORTED unless the session is at version V
  generate             stream a continuation to stdout, then a summary line to stderr:
                       "[finish: REASON, prompt N, generated M, version V]"
      --session ID         continue this session's document (default: one-shot, no session)
      --model M            model of a one-shot generation
      --prompt TEXT        prompt text (or --prompt-file F; optional with --session)
      --prompt-file F      read the prompt from F
      --max-tokens N       tokens to generate at most (default 64)
      --temperature T      0 = greedy; default 1 when any sampling flag is given
      --top-k K            sample among the K most likely tokens (0 = all)
      --top-p P            nucleus mass in (0, 1]
      --repetition-penalty R  penalty on tokens already seen, [1, 10]
      --seed S             sampler seed
                           (no sampling flag at all: the session's default sampling; greedy for
                           a one-shot generation)
      --stop S             stop before the text S (repeatable; S is not printed)
      --stop-id ID         stop after token ID (repeatable)
      --ignore-eos         do not stop at the end-of-sequence token
      --commit MODE        keep_all (the default), keep_prompt, or scratch (the session and its
                           version stay as they were)
      --expected-version V fail with ABORTED unless the session is at version V
      With --json, every event is printed as one JSON line instead.
  score                log-probabilities of a text; prints tokens, total bits, bits per byte
      --session ID         score given this session's memory (default: no memory)
      --model M            model without a session
      --text T | --file F  the text to score
      --commit             keep the scored text in the session's memory
      --expected-version V fail with ABORTED unless the session is at version V
  encode               an encoder's float32 vectors of a document, written raw (little-endian,
                       row after row) to --output; prints "ROWS DIM"
      --file F | --ids-file F  the document: UTF-8 text ("-" for stdin), or token ids
                           (whitespace- or comma-separated)
      --output F           where the vectors go
      --model M            the encoder (default: the first one the server loaded)
      --pool P             none (every token's vector, the default), mean, first, or funnel
                           (a Funnel encoder's pooled sequence)
      --global-positions P,P,…  document positions that attend globally, ascending
      --window N           tokens per pass (default: the model's maximum)
      --mlm-positions P,…  positions whose masked-LM log-probabilities to write (encoders
                           with the MLM head) to --mlm-output F: float32 [positions, vocab]
      --chunk-bytes N      bytes per text message (default 65536)
  tokenize TEXT        token ids of TEXT (--model M)
  detokenize ID...     text of the token ids (--model M)

exit status: 0 success, 1 error ("error: CODE: message" on stderr), 2 usage error
)";

constexpr char kUsagePayload[] = "mnemo-client/usage";

// A usage error: exit status 2 instead of 1.
absl::Status Usage(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayload, absl::Cord("1"));
  return status;
}

// A flag's value, its error made a usage error (exit status 2).
template <typename T>
absl::StatusOr<T> FlagValue(absl::StatusOr<T> value) {
  if (!value.ok()) return Usage(value.status().message());
  return value;
}

absl::StatusOr<std::optional<absl::Duration>> OptionalDuration(const Flags& flags,
                                                               const std::string& name) {
  if (!flags.Has(name)) return std::nullopt;
  ASSIGN_OR_RETURN(absl::Duration d,
                   FlagValue(flags.Duration(name, absl::ZeroDuration(), absl::Nanoseconds(1))));
  return d;
}

absl::StatusOr<std::map<std::string, std::string>> Labels(const Flags& flags) {
  std::map<std::string, std::string> labels;
  for (const std::string& kv : flags.All("label")) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Usage(absl::StrCat("--label \"", kv, "\" is not KEY=VALUE"));
    }
    labels[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return labels;
}

// Protobuf string fields must hold valid UTF-8: check text from the user before sending it.
absl::Status CheckUtf8(const std::string& text, const std::string& what) {
  ASSIGN_OR_RETURN(size_t complete, CompleteUtf8Prefix(text));
  if (complete != text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": truncated UTF-8 character at byte offset ", complete));
  }
  return absl::OkStatus();
}

void SetDuration(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

std::string FormatDuration(const google::protobuf::Duration& d) {
  return absl::FormatDuration(absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos()));
}

absl::Status PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) return absl::InternalError(std::string(status.message()));
  std::printf("%s\n", json.c_str());
  return absl::OkStatus();
}

// "FINISH_REASON_STOP_STRING" → "stop_string".
template <typename Enum>
std::string EnumName(const std::string& full, const std::string& prefix) {
  std::string name = full.rfind(prefix, 0) == 0 ? full.substr(prefix.size()) : full;
  return absl::AsciiStrToLower(name);
}

std::string TierName(v1::StateTier tier) {
  return EnumName<v1::StateTier>(v1::StateTier_Name(tier), "STATE_TIER_");
}

std::string LabelsText(const google::protobuf::Map<std::string, std::string>& labels) {
  // The map's order is unspecified: sort for stable output.
  std::map<std::string, std::string> sorted(labels.begin(), labels.end());
  return absl::StrJoin(sorted, ",", absl::PairFormatter("="));
}

absl::Status PrintSession(const v1::Session& s, bool json) {
  if (json) return PrintJson(s);
  std::printf("id              %s\n", s.id().c_str());
  std::printf("model           %s\n", s.model().c_str());
  std::printf("labels          %s\n", LabelsText(s.labels()).c_str());
  std::printf("tokens_seen     %lld\n", static_cast<long long>(s.tokens_seen()));
  std::printf("pending_tokens  %lld\n", static_cast<long long>(s.pending_tokens()));
  std::printf("state_version   %lld\n", static_cast<long long>(s.state_version()));
  std::printf("memory_tokens   %lld\n", static_cast<long long>(s.memory_tokens()));
  std::printf("state_bytes     %lld\n", static_cast<long long>(s.state_bytes()));
  std::printf("tier            %s\n", TierName(s.tier()).c_str());
  std::printf("ttl             %s\n", FormatDuration(s.ttl()).c_str());
  return absl::OkStatus();
}

absl::Status RunModels(Client& client, const Flags& flags) {
  ASSIGN_OR_RETURN(std::vector<v1::Model> models, client.ListModels());
  if (flags.Has("json")) {
    v1::ListModelsResponse response;
    for (v1::Model& m : models) *response.add_models() = std::move(m);
    return PrintJson(response);
  }
  for (const v1::Model& m : models) {
    std::printf(
        "%s\t%s vocab %lld, d_model %lld, layers %d, memory %lld, segment %lld, %s on %s, "
        "%lld bytes/session\n",
        m.name().c_str(), m.architecture().c_str(), static_cast<long long>(m.vocab_size()),
        static_cast<long long>(m.d_model()), m.layers_size(),
        static_cast<long long>(m.memory_tokens()), static_cast<long long>(m.segment_tokens()),
        m.dtype().c_str(), m.device().c_str(), static_cast<long long>(m.state_bytes_per_session()));
  }
  return absl::OkStatus();
}

absl::Status RunCreate(Client& client, const Flags& flags) {
  v1::CreateSessionRequest request;
  request.set_model(flags.Get("model"));
  ASSIGN_OR_RETURN(auto labels, Labels(flags));
  request.mutable_labels()->insert(labels.begin(), labels.end());
  ASSIGN_OR_RETURN(std::optional<absl::Duration> ttl, OptionalDuration(flags, "ttl"));
  if (ttl.has_value()) SetDuration(*ttl, request.mutable_ttl());
  ASSIGN_OR_RETURN(int64_t memory_tokens, FlagValue(flags.Int("memory-tokens", 0, 0, INT64_MAX)));
  request.set_memory_tokens(memory_tokens);
  ASSIGN_OR_RETURN(v1::Session session, client.CreateSession(request));
  if (flags.Has("json")) return PrintJson(session);
  std::printf("%s\n", session.id().c_str());
  return absl::OkStatus();
}

absl::Status RunList(Client& client, const Flags& flags) {
  ASSIGN_OR_RETURN(auto labels, Labels(flags));
  ASSIGN_OR_RETURN(std::vector<v1::Session> sessions, client.ListSessions(labels));
  if (flags.Has("json")) {
    v1::ListSessionsResponse response;
    for (v1::Session& s : sessions) *response.add_sessions() = std::move(s);
    return PrintJson(response);
  }
  for (const v1::Session& s : sessions) {
    std::printf("%s\t%s\ttokens %lld\tversion %lld\t%s\t%s\n", s.id().c_str(), s.model().c_str(),
                static_cast<long long>(s.tokens_seen()), static_cast<long long>(s.state_version()),
                TierName(s.tier()).c_str(), LabelsText(s.labels()).c_str());
  }
  return absl::OkStatus();
}

absl::Status RunFork(Client& client, const Flags& flags, const std::string& id) {
  v1::ForkSessionRequest request;
  request.set_session_id(id);
  ASSIGN_OR_RETURN(auto labels, Labels(flags));
  request.mutable_labels()->insert(labels.begin(), labels.end());
  ASSIGN_OR_RETURN(std::optional<absl::Duration> ttl, OptionalDuration(flags, "ttl"));
  if (ttl.has_value()) SetDuration(*ttl, request.mutable_ttl());
  ASSIGN_OR_RETURN(int64_t expected, FlagValue(flags.Int("expected-version", 0, 0, INT64_MAX)));
  request.set_expected_state_version(expected);
  ASSIGN_OR_RETURN(v1::Session session, client.ForkSession(request));
  if (flags.Has("json")) return PrintJson(session);
  std::printf("%s\n", session.id().c_str());
  return absl::OkStatus();
}

absl::Status RunIngest(Client& client, const Flags& flags, const std::string& id,
                       const std::string& path) {
  ASSIGN_OR_RETURN(int64_t chunk_bytes, FlagValue(flags.Int("chunk-bytes", 65536, 4, 64 << 20)));
  ASSIGN_OR_RETURN(int64_t expected, FlagValue(flags.Int("expected-version", 0, 0, INT64_MAX)));
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) return absl::NotFoundError(absl::StrCat("cannot open ", path));
    in = &file;
  }
  std::atomic<uint64_t> bytes_sent{0};  // written by the client's writer thread
  ChunkReader reader = [&, next = MakeUtf8ChunkReader(in, static_cast<size_t>(chunk_bytes))]()
      -> absl::StatusOr<std::optional<std::string>> {
    absl::StatusOr<std::optional<std::string>> chunk = next();
    if (!chunk.ok()) {
      return absl::Status(chunk.status().code(),
                          absl::StrCat(path, ": ", chunk.status().message()));
    }
    if (chunk->has_value()) bytes_sent += (*chunk)->size();
    return chunk;
  };
  // Redraw one line on a terminal; a log only gets the final line.
  const bool tty = isatty(STDERR_FILENO) != 0;
  auto on_progress = [&](const v1::IngestProgress& p) {
    if (!tty || p.done()) return;
    std::fprintf(stderr, "\ringest: %llu bytes sent, %lld tokens, %lld segments",
                 static_cast<unsigned long long>(bytes_sent.load()),
                 static_cast<long long>(p.tokens_ingested()),
                 static_cast<long long>(p.segments_processed()));
    std::fflush(stderr);
  };
  absl::StatusOr<v1::IngestProgress> last =
      client.Ingest(id, std::move(reader), on_progress, expected);
  if (tty) std::fputc('\n', stderr);
  RETURN_IF_ERROR(last.status());
  if (flags.Has("json")) RETURN_IF_ERROR(PrintJson(*last));
  std::fprintf(stderr, "[ingest: tokens %lld, segments %lld, pending %lld, version %lld]\n",
               static_cast<long long>(last->tokens_ingested()),
               static_cast<long long>(last->segments_processed()),
               static_cast<long long>(last->pending_tokens()),
               static_cast<long long>(last->state_version()));
  return absl::OkStatus();
}

absl::Status RunGenerate(Client& client, const Flags& flags) {
  v1::GenerateRequest request;
  request.set_session_id(flags.Get("session"));
  request.set_model(flags.Get("model"));
  if (flags.Has("prompt") && flags.Has("prompt-file")) {
    return Usage("give --prompt or --prompt-file, not both");
  }
  if (!flags.Has("session") && !flags.Has("prompt") && !flags.Has("prompt-file")) {
    return Usage("generate without --session needs --prompt or --prompt-file");
  }
  if (flags.Has("prompt")) {
    request.set_text(flags.Get("prompt"));
    RETURN_IF_ERROR(CheckUtf8(request.text(), "--prompt"));
  } else if (flags.Has("prompt-file")) {
    ASSIGN_OR_RETURN(*request.mutable_text(), ReadFile(flags.Get("prompt-file")));
    RETURN_IF_ERROR(CheckUtf8(request.text(), flags.Get("prompt-file")));
  }
  ASSIGN_OR_RETURN(int64_t max_tokens, FlagValue(flags.Int("max-tokens", 64, 1, INT32_MAX)));
  request.set_max_tokens(static_cast<int32_t>(max_tokens));
  // Any sampling flag replaces the session's default sampling as a whole; a sampler asked for
  // top-k or a seed without a temperature means to sample, so the temperature defaults to 1.
  bool sampling = false;
  for (const char* f : {"temperature", "top-k", "top-p", "repetition-penalty", "seed"}) {
    sampling = sampling || flags.Has(f);
  }
  if (sampling) {
    v1::SamplingParams* p = request.mutable_sampling();
    ASSIGN_OR_RETURN(float temperature, FlagValue(flags.Float("temperature", 1.0f)));
    p->set_temperature(temperature);
    ASSIGN_OR_RETURN(int64_t top_k, FlagValue(flags.Int("top-k", 0, 0, INT32_MAX)));
    p->set_top_k(static_cast<int32_t>(top_k));
    ASSIGN_OR_RETURN(float top_p, FlagValue(flags.Float("top-p", 0.0f)));
    p->set_top_p(top_p);
    ASSIGN_OR_RETURN(float penalty, FlagValue(flags.Float("repetition-penalty", 0.0f)));
    p->set_repetition_penalty(penalty);
    uint64_t seed = 0;
    if (flags.Has("seed") && !absl::SimpleAtoi(flags.Get("seed"), &seed)) {
      return Usage("--seed must be an unsigned integer");
    }
    p->set_seed(seed);
  }
  for (const std::string& s : flags.All("stop")) {
    RETURN_IF_ERROR(CheckUtf8(s, "--stop"));
    request.add_stop(s);
  }
  for (const std::string& s : flags.All("stop-id")) {
    int32_t id;
    if (!absl::SimpleAtoi(s, &id)) return Usage(absl::StrCat("--stop-id \"", s, "\" is not an id"));
    request.add_stop_ids(id);
  }
  request.set_ignore_eos(flags.Has("ignore-eos"));
  // Unset: COMMIT_MODE_UNSPECIFIED, the server's default (keep_all).
  const std::string commit = flags.Get("commit");
  if (commit.empty() && !flags.Has("commit")) {
    request.set_commit(v1::COMMIT_MODE_UNSPECIFIED);
  } else if (commit == "keep_all") {
    request.set_commit(v1::COMMIT_MODE_KEEP_ALL);
  } else if (commit == "keep_prompt") {
    request.set_commit(v1::COMMIT_MODE_KEEP_PROMPT);
  } else if (commit == "scratch") {
    request.set_commit(v1::COMMIT_MODE_SCRATCH);
  } else {
    return Usage("--commit must be keep_all, keep_prompt or scratch");
  }
  ASSIGN_OR_RETURN(int64_t expected, FlagValue(flags.Int("expected-version", 0, 0, INT64_MAX)));
  request.set_expected_state_version(expected);

  const bool json = flags.Has("json");
  absl::Status print_status;
  ASSIGN_OR_RETURN(
      v1::Final final_event, client.Generate(request, [&](const v1::GenerateEvent& event) {
        if (json) {
          if (print_status.ok()) print_status = PrintJson(event);
          std::fflush(stdout);
        } else if (event.has_delta() && !event.delta().text().empty()) {
          std::fwrite(event.delta().text().data(), 1, event.delta().text().size(), stdout);
          std::fflush(stdout);
        }
      }));
  RETURN_IF_ERROR(print_status);
  if (!json) {
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  std::fprintf(stderr, "[finish: %s, prompt %lld, generated %lld, version %lld]\n",
               EnumName<v1::FinishReason>(v1::FinishReason_Name(final_event.finish_reason()),
                                          "FINISH_REASON_")
                   .c_str(),
               static_cast<long long>(final_event.usage().prompt_tokens()),
               static_cast<long long>(final_event.usage().generated_tokens()),
               static_cast<long long>(final_event.state_version_after()));
  return absl::OkStatus();
}

absl::Status RunScore(Client& client, const Flags& flags) {
  v1::ScoreRequest request;
  request.set_session_id(flags.Get("session"));
  request.set_model(flags.Get("model"));
  if (flags.Has("text") == flags.Has("file")) {
    return Usage("score needs exactly one of --text or --file");
  }
  if (flags.Has("text")) {
    request.set_text(flags.Get("text"));
    RETURN_IF_ERROR(CheckUtf8(request.text(), "--text"));
  } else {
    ASSIGN_OR_RETURN(*request.mutable_text(), ReadFile(flags.Get("file")));
    RETURN_IF_ERROR(CheckUtf8(request.text(), flags.Get("file")));
  }
  request.set_commit(flags.Has("commit"));
  ASSIGN_OR_RETURN(int64_t expected, FlagValue(flags.Int("expected-version", 0, 0, INT64_MAX)));
  request.set_expected_state_version(expected);
  ASSIGN_OR_RETURN(v1::ScoreResponse response, client.Score(request));
  if (flags.Has("json")) return PrintJson(response);
  const int n = response.tokens_size();
  std::printf("tokens %d, total bits %.3f, bits/token %.4f, bits/byte %.4f, version %lld\n", n,
              response.total_bits(), n > 0 ? response.total_bits() / n : 0.0,
              response.bits_per_byte(), static_cast<long long>(response.state_version()));
  return absl::OkStatus();
}

// Integers separated by commas or whitespace ("what" names them in errors).
absl::StatusOr<std::vector<int64_t>> IntegerList(absl::string_view text, absl::string_view what) {
  std::vector<int64_t> out;
  for (absl::string_view word : absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"))) {
    if (word.empty()) continue;
    int64_t value;
    if (!absl::SimpleAtoi(word, &value)) {
      return Usage(absl::StrCat(what, ": \"", word, "\" is not an integer"));
    }
    out.push_back(value);
  }
  return out;
}

absl::Status RunEncode(Client& client, const Flags& flags) {
  if (flags.Has("file") == flags.Has("ids-file")) {
    return Usage("encode needs exactly one of --file or --ids-file");
  }
  if (!flags.Has("output")) return Usage("encode needs --output");
  v1::EncodeRequest options;
  options.set_model(flags.Get("model"));
  const std::string pool = flags.Get("pool", "none");
  if (pool == "none") {
    options.set_pooling(v1::POOLING_NONE);
  } else if (pool == "mean") {
    options.set_pooling(v1::POOLING_MEAN);
  } else if (pool == "first") {
    options.set_pooling(v1::POOLING_FIRST);
  } else if (pool == "funnel") {
    options.set_pooling(v1::POOLING_FUNNEL);
  } else {
    return Usage(absl::StrCat("--pool must be none, mean, first or funnel; got \"", pool, "\""));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> globals,
                   IntegerList(flags.Get("global-positions"), "--global-positions"));
  options.mutable_global_positions()->Add(globals.begin(), globals.end());
  ASSIGN_OR_RETURN(std::vector<int64_t> mlm,
                   IntegerList(flags.Get("mlm-positions"), "--mlm-positions"));
  if (mlm.empty() != !flags.Has("mlm-output")) {
    return Usage("--mlm-positions and --mlm-output go together");
  }
  options.mutable_mlm_positions()->Add(mlm.begin(), mlm.end());
  ASSIGN_OR_RETURN(int64_t window, FlagValue(flags.Int("window", 0, 0, INT64_MAX)));
  options.set_window_tokens(window);
  ASSIGN_OR_RETURN(int64_t chunk_bytes, FlagValue(flags.Int("chunk-bytes", 65536, 4, 64 << 20)));
  absl::StatusOr<EncodeResult> result;
  if (flags.Has("ids-file")) {
    ASSIGN_OR_RETURN(const std::string text, ReadFile(flags.Get("ids-file")));
    ASSIGN_OR_RETURN(std::vector<int64_t> wide, IntegerList(text, flags.Get("ids-file")));
    std::vector<int32_t> ids;
    for (int64_t id : wide) {
      if (id < INT32_MIN || id > INT32_MAX) {
        return absl::InvalidArgumentError(absl::StrCat(id, " is not a token id"));
      }
      ids.push_back(static_cast<int32_t>(id));
    }
    result = client.Encode(options, ids);
  } else {
    const std::string path = flags.Get("file");
    std::ifstream file;
    std::istream* in = &std::cin;
    if (path != "-") {
      file.open(path, std::ios::binary);
      if (!file) return absl::NotFoundError(absl::StrCat("cannot open ", path));
      in = &file;
    }
    result = client.Encode(options, MakeUtf8ChunkReader(in, static_cast<size_t>(chunk_bytes)));
  }
  if (!result.ok()) return result.status();
  std::ofstream out(flags.Get("output"), std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(result->vectors.data()),
            static_cast<std::streamsize>(result->vectors.size() * sizeof(float)));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", flags.Get("output")));
  if (!mlm.empty()) {
    std::ofstream mlm_out(flags.Get("mlm-output"), std::ios::binary | std::ios::trunc);
    mlm_out.write(reinterpret_cast<const char*>(result->mlm_logprobs.data()),
                  static_cast<std::streamsize>(result->mlm_logprobs.size() * sizeof(float)));
    mlm_out.close();
    if (!mlm_out)
      return absl::DataLossError(absl::StrCat("cannot write ", flags.Get("mlm-output")));
  }
  std::printf("%lld %lld\n", static_cast<long long>(result->rows),
              static_cast<long long>(result->dim));
  std::fprintf(stderr, "[encode: tokens %lld, passes %lld]\n",
               static_cast<long long>(result->tokens), static_cast<long long>(result->windows));
  return absl::OkStatus();
}

absl::Status RunTokenize(Client& client, const Flags& flags, const std::string& text) {
  RETURN_IF_ERROR(CheckUtf8(text, "TEXT"));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, client.Tokenize(text, flags.Get("model")));
  if (flags.Has("json")) {
    v1::TokenizeResponse response;
    response.mutable_ids()->Add(ids.begin(), ids.end());
    return PrintJson(response);
  }
  std::printf("%s\n", absl::StrJoin(ids, " ").c_str());
  return absl::OkStatus();
}

absl::Status RunDetokenize(Client& client, const Flags& flags,
                           const std::vector<std::string>& words) {
  std::vector<int32_t> ids;
  for (const std::string& w : words) {
    int32_t id;
    if (!absl::SimpleAtoi(w, &id)) return Usage(absl::StrCat("\"", w, "\" is not a token id"));
    ids.push_back(id);
  }
  ASSIGN_OR_RETURN(std::string text, client.Detokenize(ids, flags.Get("model")));
  if (flags.Has("json")) {
    v1::DetokenizeResponse response;
    response.set_text(text);
    return PrintJson(response);
  }
  std::printf("%s\n", text.c_str());
  return absl::OkStatus();
}

struct Command {
  std::vector<std::string> flags_with_value;
  std::vector<std::string> bool_flags;
  size_t min_args = 0;
  size_t max_args = 0;  // SIZE_MAX: any number
};

const std::map<std::string, Command>& Commands() {
  static const auto* commands = new std::map<std::string, Command>{
      {"models", {}},
      {"create", {{"model", "label", "ttl", "memory-tokens"}, {}}},
      {"get", {{}, {}, 1, 1}},
      {"list", {{"label"}, {}}},
      {"delete", {{"expected-version"}, {}, 1, 1}},
      {"fork", {{"label", "ttl", "expected-version"}, {}, 1, 1}},
      {"ingest", {{"chunk-bytes", "expected-version"}, {}, 2, 2}},
      {"generate",
       {{"session", "model", "prompt", "prompt-file", "max-tokens", "temperature", "top-k", "top-p",
         "repetition-penalty", "seed", "stop", "stop-id", "commit", "expected-version"},
        {"ignore-eos"}}},
      {"score", {{"session", "model", "text", "file", "expected-version"}, {"commit"}}},
      {"encode",
       {{"file", "ids-file", "output", "model", "pool", "global-positions", "window",
         "mlm-positions", "mlm-output", "chunk-bytes"},
        {}}},
      {"tokenize", {{"model"}, {}, 1, 1}},
      {"detokenize", {{"model"}, {}, 1, SIZE_MAX}},
  };
  return *commands;
}

absl::Status Run(Client& client, const std::string& command, const Flags& flags) {
  const std::vector<std::string>& args = flags.positional();
  if (command == "models") return RunModels(client, flags);
  if (command == "create") return RunCreate(client, flags);
  if (command == "get") {
    ASSIGN_OR_RETURN(v1::Session session, client.GetSession(args[0]));
    return PrintSession(session, flags.Has("json"));
  }
  if (command == "list") return RunList(client, flags);
  if (command == "delete") {
    ASSIGN_OR_RETURN(int64_t expected, FlagValue(flags.Int("expected-version", 0, 0, INT64_MAX)));
    return client.DeleteSession(args[0], expected);
  }
  if (command == "fork") return RunFork(client, flags, args[0]);
  if (command == "ingest") return RunIngest(client, flags, args[0], args[1]);
  if (command == "generate") return RunGenerate(client, flags);
  if (command == "score") return RunScore(client, flags);
  if (command == "encode") return RunEncode(client, flags);
  if (command == "tokenize") return RunTokenize(client, flags, args[0]);
  if (command == "detokenize") return RunDetokenize(client, flags, args);
  return Usage(absl::StrCat("unknown command \"", command, "\""));
}

// The PEM files the --tls-* flags name, read now.
absl::StatusOr<TlsOptions> ReadTlsOptions(const Flags& flags) {
  TlsOptions tls;
  const std::pair<const char*, std::string*> files[] = {
      {"tls-ca", &tls.ca_pem}, {"tls-cert", &tls.cert_pem}, {"tls-key", &tls.key_pem}};
  for (const auto& [flag, pem] : files) {
    if (!flags.Has(flag)) continue;
    absl::StatusOr<std::string> text = ReadFile(flags.Get(flag));
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          absl::StrCat("--", flag, ": ", text.status().message()));
    }
    *pem = *std::move(text);
  }
  tls.server_name = flags.Get("tls-server-name", "");
  return tls;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "mnemo-client: %s (see mnemo-client --help)\n", message.c_str());
  return 2;
}

int Main(int argc, char** argv) {
  const std::vector<std::string> args(argv, argv + argc);
  const std::map<std::string, bool> global = {
      {"target", true},          {"timeout", true},   {"no-retry", false}, {"json", false},
      {"help", false},           {"tls-ca", true},    {"tls-cert", true},  {"tls-key", true},
      {"tls-server-name", true}, {"token-file", true}};
  size_t command_at = 0;
  absl::StatusOr<Flags> flags = Flags::ParseWithPositionals(args, 1, global, true, &command_at);
  if (!flags.ok()) return UsageError(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (command_at == args.size()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string& command = args[command_at];
  if (command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  auto it = Commands().find(command);
  if (it == Commands().end()) return UsageError(absl::StrCat("unknown command \"", command, "\""));
  std::map<std::string, bool> known = global;
  for (const std::string& f : it->second.flags_with_value) known[f] = true;
  for (const std::string& f : it->second.bool_flags) known[f] = false;
  absl::StatusOr<Flags> rest = Flags::ParseWithPositionals(args, command_at + 1, known);
  if (!rest.ok()) return UsageError(absl::StrCat(command, ": ", rest.status().message()));
  flags->Merge(*rest);
  if (flags->Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const size_t n = flags->positional().size();
  if (n < it->second.min_args || n > it->second.max_args) {
    return UsageError(absl::StrCat(command, ": wrong number of arguments (", n, ")"));
  }

  const char* env_target = std::getenv("MNEMO_TARGET");
  const std::string target =
      flags->Get("target", env_target != nullptr && *env_target ? env_target : "127.0.0.1:50051");
  absl::StatusOr<std::optional<absl::Duration>> timeout = OptionalDuration(*flags, "timeout");
  if (!timeout.ok()) return UsageError(std::string(timeout.status().message()));
  if (flags->Has("tls-cert") != flags->Has("tls-key")) {
    return UsageError("--tls-cert and --tls-key go together");
  }
  const RetryPolicy retry = flags->Has("no-retry") ? RetryPolicy::Off() : RetryPolicy();
  absl::StatusOr<Client> client = absl::UnknownError("unreached");
  if (flags->Has("tls-ca") || flags->Has("tls-cert") || flags->Has("tls-server-name")) {
    absl::StatusOr<TlsOptions> tls = ReadTlsOptions(*flags);
    client = tls.ok() ? Client::Connect(target, retry, *tls) : tls.status();
  } else {
    client = Client::Connect(target, retry);
  }
  std::string token;
  if (flags->Has("token-file")) {
    absl::StatusOr<std::string> text = ReadFile(flags->Get("token-file"));
    if (!text.ok()) return UsageError(absl::StrCat("--token-file: ", text.status().message()));
    token = text->substr(0, text->find_first_of("\r\n"));
    if (token.empty()) return UsageError("--token-file: no token on its first line");
  } else if (const char* env_token = std::getenv("MNEMO_TOKEN"); env_token != nullptr) {
    token = env_token;
  }
  absl::Status status = client.status();
  if (status.ok()) {
    client->set_token(token);
    client->set_timeout(*timeout);
    status = Run(*client, command, *flags);
  }
  if (status.ok()) return 0;
  if (status.GetPayload(kUsagePayload).has_value()) {
    return UsageError(absl::StrCat(command, ": ", status.message()));
  }
  std::fflush(stdout);
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  // The violations the message does not already spell out, one per line.
  for (const auto& v : FieldViolations(status)) {
    const std::string line = absl::StrCat(v.field(), ": ", v.description());
    if (!absl::StrContains(status.message(), line)) std::fprintf(stderr, "  %s\n", line.c_str());
  }
  return 1;
}

}  // namespace
}  // namespace mnemo::client

int main(int argc, char** argv) { return mnemo::client::Main(argc, argv); }
