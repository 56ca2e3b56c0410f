// mnemo::client: a thin, synchronous C++ client of the mnemo.v1 gRPC services.
//
// Every call returns absl::Status / absl::StatusOr; a gRPC status becomes an absl::Status with the
// same code and message (the BadRequest detail, when the server sends one, rides along as a
// payload: FieldViolations() reads it). Requests and responses are the generated mnemo.v1
// messages, so nothing of the contract is hidden; the helpers add paging, streaming loops and
// UTF-8-safe chunking of files.
#pragma once

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

// The next chunk of a document, std::nullopt at its end, or an error (which cancels the ingest
// and is returned by Ingest).
using ChunkReader = std::function<absl::StatusOr<std::optional<std::string>>()>;
using IngestProgressCallback = std::function<void(const v1::IngestProgress&)>;
using GenerateEventCallback = std::function<void(const v1::GenerateEvent&)>;

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
  explicit Client(std::shared_ptr<grpc::Channel> channel);
  // An insecure channel to `target` ("host:port", "unix:/path", …). Does not wait for the server:
  // the first call does (or WaitUntilReady).
  static absl::StatusOr<Client> Connect(const std::string& target);

  Client(Client&&) = default;
  Client& operator=(Client&&) = default;

  // Deadline of each call from its start (default: none). Calls that run past it fail with
  // DEADLINE_EXCEEDED; a streaming call's deadline covers the whole stream.
  void set_timeout(std::optional<absl::Duration> timeout) { timeout_ = timeout; }

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
  // not interrupted, so Ingest returns once it does).
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
  // is an INTERNAL error.
  absl::StatusOr<v1::Final> Generate(const v1::GenerateRequest& request,
                                     const GenerateEventCallback& on_event = {});

  absl::StatusOr<v1::ScoreResponse> Score(const v1::ScoreRequest& request);

 private:
  // Applies the timeout, and names the session in `x-session-id` metadata when there is one.
  void Prepare(grpc::ClientContext* context, const std::string& session_id = "") const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ModelService::Stub> models_;
  std::unique_ptr<v1::SessionService::Stub> sessions_;
  std::unique_ptr<v1::InferenceService::Stub> inference_;
  std::optional<absl::Duration> timeout_;
};

}  // namespace mnemo::client
