// mnemo::client: a thin, synchronous C++ client of the mnemo.v1 gRPC services.
//
// Every call returns absl::Status / absl::StatusOr; a gRPC status becomes an absl::Status with the
// same code and message (the BadRequest detail, when the server sends one, rides along as a
// payload: FieldViolations() reads it). Requests and responses are the generated mnemo.v1
// messages, so nothing of the contract is hidden; the helpers add paging, streaming loops,
// UTF-8-safe chunking of files and transparent retries of what replicas refuse without doing it
// (RetryPolicy below; README.md, "Retries", lists the calls and failures).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "mnemo/v1/mnemo.grpc.pb.h"
#include "mnemo/v1/mnemo.pb.h"

namespace mnemo::client {

// grpc::Status → absl::Status: same code and message; the `grpc-status-details-bin` bytes (a
// google.rpc.Status, mnemo.v1.RpcStatus here) are kept as the payload kStatusDetailsPayload.
absl::Status FromGrpcStatus(const grpc::Status& status);
inline constexpr char kStatusDetailsPayload[] = "type.googleapis.com/google.rpc.Status";

// The field violations of the BadRequest detail carried by `status` (empty when there is none).
std::vector<v1::BadRequest::FieldViolation> FieldViolations(const absl::Status& status);

// The ErrorInfo detail carried by `status` (std::nullopt when there is none), and its reason
// ("" when there is none).
std::optional<v1::ErrorInfo> GetErrorInfo(const absl::Status& status);
std::string ErrorReason(const absl::Status& status);
// ErrorInfo reasons (domain "mnemo.v1") the client retries.
inline constexpr char kSessionMoved[] = "SESSION_MOVED";  // ABORTED: another replica owns it
inline constexpr char kDraining[] = "DRAINING";           // UNAVAILABLE: the server drains

// The outcome of a state-changing call is unknown: it broke on the transport (UNAVAILABLE,
// perhaps after reaching the server), was retried because its expected_state_version was pinned,
// and the retry was refused (ABORTED: version moved on or session busy; NOT_FOUND for a delete),
// so the first attempt may have taken effect. Such a status keeps the original UNAVAILABLE code,
// says "outcome unknown" in its message and carries the payload kOutcomeUnknownPayload (the
// refusal's status as google.rpc.Status bytes). Read the session to learn what happened.
inline constexpr char kOutcomeUnknownPayload[] = "mnemo.client/outcome-unknown";
bool IsOutcomeUnknown(const absl::Status& status);

// When and how often a Client retries, transparently:
// * every call after ABORTED with reason SESSION_MOVED, UNAVAILABLE with reason DRAINING, or an
//   UNAVAILABLE that never reached a server (the channel failed to connect);
// * after an UNAVAILABLE without a reason (the connection broke; the server may have got the
//   request): read-only calls, and state-changing ones only with expected_state_version pinned
//   (a refused retry is then IsOutcomeUnknown). CreateSession and ForkSession are not retried so.
// Generate is retried only before its first event; Ingest sends the chunks again (kept up to
// `replay_buffer_bytes`; beyond that it is not retried). The n-th retry waits a random time
// between half and all of min(max_backoff, initial_backoff * multiplier^(n-1)); the call's
// timeout is one deadline for all attempts, and no retry starts that would begin after it.
struct RetryPolicy {
  int max_attempts = 5;  // the first attempt included: 1 turns retries off
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  double multiplier = 2.0;
  size_t replay_buffer_bytes = size_t{64} << 20;

  static RetryPolicy Off() {
    RetryPolicy policy;
    policy.max_attempts = 1;
    return policy;
  }
};

// TLS settings of a channel: PEM contents (not paths). Empty ca_pem trusts the system's roots;
// cert_pem and key_pem (both or neither) are the client certificate chain and its private key,
// for servers that require one (mTLS); a non-empty server_name is the name the server's
// certificate must carry instead of the target's host.
struct TlsOptions {
  std::string ca_pem, cert_pem, key_pem, server_name;
};

// The next chunk of a document, std::nullopt at its end, or an error (which cancels the ingest
// and is returned by Ingest).
using ChunkReader = std::function<absl::StatusOr<std::optional<std::string>>()>;
using IngestProgressCallback = std::function<void(const v1::IngestProgress&)>;
using GenerateEventCallback = std::function<void(const v1::GenerateEvent&)>;

// What Encode returned: `rows` vectors of `dim` floats, row after row; per-token output also
// carries the rows' token ids. `tokens`: the document's tokens; `windows`: the passes it ran in.
// With EncodeRequest.mlm_positions: those positions, in order, and their masked-LM
// log-probabilities, vocab_size floats each, position after position.
struct EncodeResult {
  int64_t rows = 0;
  int64_t dim = 0;
  std::vector<float> vectors;
  std::vector<int32_t> ids;
  int64_t tokens = 0;
  int64_t windows = 0;
  std::vector<int64_t> mlm_positions;
  std::vector<float> mlm_logprobs;
};

// Reads `in` in chunks of about `chunk_bytes` (at least 4) bytes cut only at UTF-8 character
// boundaries (protobuf string fields must be valid UTF-8): an incomplete character at the end of
// a read is carried into the next chunk. Invalid UTF-8 gives INVALID_ARGUMENT naming the byte
// offset; a read error gives DATA_LOSS. `in` must outlive the reader.
ChunkReader MakeUtf8ChunkReader(std::istream* in, size_t chunk_bytes);

// Length of the longest prefix of `bytes` that ends on a character boundary, or INVALID_ARGUMENT
// for invalid UTF-8 (an incomplete character at the very end is not an error: it is left out).
absl::StatusOr<size_t> CompleteUtf8Prefix(std::string_view bytes);

// Thread-safe: one Client may serve calls from many threads at once (the stubs are).
class Client {
 public:
  explicit Client(std::shared_ptr<grpc::Channel> channel, RetryPolicy retry = {});
  // An insecure channel to `target` ("host:port", "unix:/path", …). Does not wait for the server:
  // the first call does (or WaitUntilReady).
  static absl::StatusOr<Client> Connect(const std::string& target, RetryPolicy retry = {});
  // A TLS channel to `target`. INVALID_ARGUMENT when only one of cert_pem and key_pem is given;
  // a refused handshake (unknown CA, expired certificate, no client certificate under mTLS)
  // makes calls fail with UNAVAILABLE.
  static absl::StatusOr<Client> Connect(const std::string& target, RetryPolicy retry,
                                        const TlsOptions& tls);

  Client(Client&&) = default;
  Client& operator=(Client&&) = default;

  // Deadline of each call from its start (default: none). Calls that run past it fail with
  // DEADLINE_EXCEEDED; a streaming call's deadline covers the whole stream.
  void set_timeout(std::optional<absl::Duration> timeout) { timeout_ = timeout; }
  // Replaces the RetryPolicy given at construction. Like set_timeout, not to be called while
  // other threads use the client.
  void set_retry_policy(const RetryPolicy& retry) { retry_ = retry; }
  const RetryPolicy& retry_policy() const { return retry_; }

  // Waits until the channel is connected; DEADLINE_EXCEEDED after `timeout`.
  absl::Status WaitUntilReady(absl::Duration timeout);

  // --- ModelService
  absl::StatusOr<std::vector<v1::Model>> ListModels();
  absl::StatusOr<v1::Model> GetModel(const std::string& name);
  // Empty `model`: the server's default model.
  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& text,
                                                const std::string& model = "");
  absl::StatusOr<std::string> Detokenize(const std::vector<int32_t>& ids,
                                         const std::string& model = "");

  // --- SessionService
  absl::StatusOr<v1::Session> CreateSession(const v1::CreateSessionRequest& options = {});
  absl::StatusOr<v1::Session> GetSession(const std::string& session_id);
  // Every page, oldest first.
  absl::StatusOr<std::vector<v1::Session>> ListSessions(
      const std::map<std::string, std::string>& label_filter = {}, int32_t page_size = 0);
  // expected_state_version 0: any version.
  absl::Status DeleteSession(const std::string& session_id, int64_t expected_state_version = 0);
  absl::StatusOr<v1::Session> ForkSession(const v1::ForkSessionRequest& request);
  absl::StatusOr<v1::Session> ForkSession(const std::string& session_id);

  // --- InferenceService
  // Streams the chunks `next_chunk` returns into the session as one change. `on_progress` (may be
  // empty) sees every progress message, on the calling thread; `next_chunk` runs on a helper
  // thread, never concurrently with itself. Returns the last progress message (done, with the new
  // state version). An error from `next_chunk` cancels the stream and is returned as is; a failed
  // stream stops the reading at the next chunk boundary (a `next_chunk` blocked on its source is
  // not interrupted, so Ingest returns once it does). A retried attempt sends the chunks read so
  // far again (`on_progress` starts over), then reads on.
  absl::StatusOr<v1::IngestProgress> Ingest(const std::string& session_id, ChunkReader next_chunk,
                                            const IngestProgressCallback& on_progress = {},
                                            int64_t expected_state_version = 0);
  // Ingest of a file's text in chunks of `chunk_bytes`, cut at UTF-8 character boundaries.
  absl::StatusOr<v1::IngestProgress> IngestFile(const std::string& session_id,
                                                const std::string& path, size_t chunk_bytes,
                                                const IngestProgressCallback& on_progress = {},
                                                int64_t expected_state_version = 0);

  // Runs a generation, calling `on_event` (may be empty) for each event as it arrives (Started,
  // Deltas, Final) on the calling thread. Returns the Final event; a stream that ends without one
  // is an INTERNAL error. Retried only before the first event: `on_event` never sees one twice.
  absl::StatusOr<v1::Final> Generate(const v1::GenerateRequest& request,
                                     const GenerateEventCallback& on_event = {});

  absl::StatusOr<v1::ScoreResponse> Score(const v1::ScoreRequest& request);
  // Encodes a document with an encoder model. `options` names the model, pooling, global
  // positions and window (its chunk is ignored); the document is the text chunks `next_chunk`
  // returns (read as Ingest reads them), or `ids`. Read-only: retried as such, resending the
  // document (text kept up to the policy's replay_buffer_bytes).
  absl::StatusOr<EncodeResult> Encode(const v1::EncodeRequest& options, ChunkReader next_chunk);
  absl::StatusOr<EncodeResult> Encode(const v1::EncodeRequest& options,
                                      const std::vector<int32_t>& ids);

  // A bearer token for a server with an auth file, sent as "authorization: Bearer <token>"
  // metadata on every later call ("" : none).
  void set_token(std::string token) { token_ = std::move(token); }

 private:
  // How a call may be retried after a transport failure that may have reached the server.
  enum class Safety {
    kReadOnly,  // changes nothing: always safe to repeat
    kPinned,    // state-changing with expected_state_version: a duplicate is refused
    kUnsafe,    // state-changing: a duplicate would apply twice
  };
  static Safety Pinned(int64_t expected_state_version) {
    return expected_state_version != 0 ? Safety::kPinned : Safety::kUnsafe;
  }

  // Sets the deadline, the bearer token (set_token), and names the session in `x-session-id`
  // metadata when there is one.
  void Prepare(grpc::ClientContext* context, const std::string& session_id,
               std::optional<std::chrono::system_clock::time_point> deadline) const;
  // The retry bookkeeping of one call (attempts, deadline, backoff); defined in the .cc file.
  class Retrier;

  // Encode's stream: the `leading` messages (ids), then the text chunks.
  absl::StatusOr<EncodeResult> EncodeStream(const v1::EncodeRequest& options,
                                            const std::vector<v1::EncodeRequest>& leading,
                                            ChunkReader next_chunk);
  // One unary call, retried per retry_: `attempt` runs the stub on a fresh context.
  absl::Status Unary(const char* method, Safety safety, const std::string& session_id,
                     const std::function<grpc::Status(grpc::ClientContext*)>& attempt,
                     bool not_found_is_unknown = false) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ModelService::Stub> models_;
  std::unique_ptr<v1::SessionService::Stub> sessions_;
  std::unique_ptr<v1::InferenceService::Stub> inference_;
  std::optional<absl::Duration> timeout_;
  RetryPolicy retry_;
  std::string token_;
};

}  // namespace mnemo::client
