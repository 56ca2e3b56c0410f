// The mnemo.v1 client: status conversion, retries, paging and streaming loops, UTF-8-safe file
// chunking.
#include "clients/cpp/mnemo_client.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/status.h>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "base/status_macros.h"

namespace mnemo::client {
namespace {

// Score responses carry one entry per token of a possibly long text: allow more than gRPC's
// 4 MiB default.
constexpr int kMaxReceiveMessageBytes = 256 << 20;

// Result of scanning UTF-8: the end of the complete characters, or the offset of the first
// invalid byte.
struct Utf8Scan {
  size_t complete = 0;
  std::optional<size_t> invalid_at;
};

Utf8Scan ScanUtf8(std::string_view s) {
  Utf8Scan scan;
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte (RFC 3629 table)
    if (b0 < 0x80) {
      len = 1;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;  // overlong
      if (b0 == 0xED) hi = 0x9F;  // surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;  // overlong
      if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      scan.invalid_at = i;
      return scan;
    }
    for (size_t k = 1; k < len; ++k) {
      if (i + k == s.size()) {  // the character continues past the end
        scan.complete = i;
        return scan;
      }
      const auto b = static_cast<unsigned char>(s[i + k]);
      const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) {
        scan.invalid_at = i + k;
        return scan;
      }
    }
    i += len;
  }
  scan.complete = i;
  return scan;
}

// Substrings of gRPC's UNAVAILABLE message when the channel could not connect at all (the call
// was never sent): grpc-core's pick_first / round_robin messages and resolver failures.
constexpr const char* kNotConnected[] = {"failed to connect to all addresses",
                                         "connections to all backends failing",
                                         "connection refused", "dns resolution failed"};

// Why a failed call might be retryable.
enum class Failure {
  kFinal,         // not retryable, whatever the call
  kMoved,         // ABORTED SESSION_MOVED: nothing committed
  kDraining,      // UNAVAILABLE DRAINING: nothing done
  kNotConnected,  // UNAVAILABLE before reaching a server
  kTransport,     // UNAVAILABLE without a reason: the server may have got the request
};

Failure FailureOf(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kAborted) {
    return ErrorReason(status) == kSessionMoved ? Failure::kMoved : Failure::kFinal;
  }
  if (status.code() != absl::StatusCode::kUnavailable) return Failure::kFinal;
  const std::string reason = ErrorReason(status);
  if (reason == kDraining) return Failure::kDraining;
  if (!reason.empty()) return Failure::kFinal;  // a reason we do not know: not ours to retry
  const std::string message = absl::AsciiStrToLower(status.message());
  for (const char* s : kNotConnected) {
    if (absl::StrContains(message, s)) return Failure::kNotConnected;
  }
  return Failure::kTransport;
}

absl::Status OutcomeUnknown(const char* method, const absl::Status& original,
                            const absl::Status& refusal) {
  absl::Status out(
      original.code(),
      absl::StrCat(method, ": outcome unknown: the first attempt failed (",
                   absl::StatusCodeToString(original.code()), ": ", original.message(),
                   ") and its retry was refused (", absl::StatusCodeToString(refusal.code()), ": ",
                   refusal.message(), "); the first attempt may have taken effect"));
  v1::RpcStatus refused;
  refused.set_code(static_cast<int32_t>(refusal.code()));
  refused.set_message(std::string(refusal.message()));
  out.SetPayload(kOutcomeUnknownPayload, absl::Cord(refused.SerializeAsString()));
  if (const auto details = original.GetPayload(kStatusDetailsPayload); details.has_value()) {
    out.SetPayload(kStatusDetailsPayload, *details);
  }
  return out;
}

}  // namespace

// One call's attempts: the deadline they share, the backoff between them, and the rule that a
// refused retry of a possibly-applied change is "outcome unknown". Used by one thread.
class Client::Retrier {
 public:
  Retrier(const RetryPolicy& policy, const std::optional<absl::Duration>& timeout, Safety safety,
          const char* method, bool not_found_is_unknown = false)
      : policy_(policy),
        safety_(safety),
        method_(method),
        not_found_is_unknown_(not_found_is_unknown) {
    if (timeout.has_value()) deadline_ = absl::Now() + *timeout;
  }

  std::optional<std::chrono::system_clock::time_point> deadline() const {
    if (!deadline_.has_value()) return std::nullopt;
    return absl::ToChronoTime(*deadline_);
  }

  // True (after the backoff) when the call should be attempted again; false when `*status`, the
  // failure of this attempt, is the call's result (it may be replaced by an outcome-unknown
  // status). `received`: a response message already reached the caller (server streams are not
  // retried then). `replayable`: the request messages can be sent again.
  bool Retry(absl::Status* status, bool received = false, bool replayable = true) {
    const Failure failure = FailureOf(*status);
    if (uncertain_.has_value() && failure != Failure::kMoved &&
        (status->code() == absl::StatusCode::kAborted ||
         (not_found_is_unknown_ && status->code() == absl::StatusCode::kNotFound))) {
      *status = OutcomeUnknown(method_, *uncertain_, *status);
      return false;
    }
    ++attempts_;
    if (failure == Failure::kFinal || received || !replayable ||
        attempts_ >= policy_.max_attempts) {
      return false;
    }
    if (failure == Failure::kTransport) {
      if (safety_ == Safety::kUnsafe) return false;
      if (safety_ == Safety::kPinned && !uncertain_.has_value()) uncertain_ = *status;
    }
    absl::Duration base = policy_.initial_backoff * std::pow(policy_.multiplier, attempts_ - 1);
    base = std::min(base, policy_.max_backoff);
    thread_local absl::BitGen random;
    const absl::Duration delay = base * absl::Uniform(random, 0.5, 1.0);
    if (deadline_.has_value() && absl::Now() + delay >= *deadline_) return false;
    absl::SleepFor(delay);
    return true;
  }

 private:
  const RetryPolicy policy_;  // a copy: the call keeps the policy it started with
  const Safety safety_;
  const char* const method_;
  const bool not_found_is_unknown_;
  std::optional<absl::Time> deadline_;
  int attempts_ = 0;
  std::optional<absl::Status> uncertain_;  // the transport failure of a pinned change
};

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  if (!status.error_details().empty()) {
    out.SetPayload(kStatusDetailsPayload, absl::Cord(status.error_details()));
  }
  return out;
}

std::optional<v1::ErrorInfo> GetErrorInfo(const absl::Status& status) {
  const auto payload = status.GetPayload(kStatusDetailsPayload);  // absl::optional here
  if (!payload.has_value()) return std::nullopt;
  v1::RpcStatus details;
  if (!details.ParseFromString(std::string(*payload))) return std::nullopt;
  for (const google::protobuf::Any& any : details.details()) {
    if (!absl::EndsWith(any.type_url(), "/google.rpc.ErrorInfo") &&
        !absl::EndsWith(any.type_url(), "/mnemo.v1.ErrorInfo")) {
      continue;
    }
    v1::ErrorInfo info;
    if (info.ParseFromString(any.value())) return info;
  }
  return std::nullopt;
}

std::string ErrorReason(const absl::Status& status) {
  std::optional<v1::ErrorInfo> info = GetErrorInfo(status);
  return info.has_value() ? info->reason() : std::string();
}

bool IsOutcomeUnknown(const absl::Status& status) {
  return status.GetPayload(kOutcomeUnknownPayload).has_value();
}

std::vector<v1::BadRequest::FieldViolation> FieldViolations(const absl::Status& status) {
  std::vector<v1::BadRequest::FieldViolation> out;
  const auto payload = status.GetPayload(kStatusDetailsPayload);  // absl::optional here
  if (!payload.has_value()) return out;
  v1::RpcStatus details;
  if (!details.ParseFromString(std::string(*payload))) return out;
  for (const google::protobuf::Any& any : details.details()) {
    // Packed under google.rpc.BadRequest's type URL; accept our own name too.
    if (!absl::EndsWith(any.type_url(), "/google.rpc.BadRequest") &&
        !absl::EndsWith(any.type_url(), "/mnemo.v1.BadRequest")) {
      continue;
    }
    v1::BadRequest bad_request;
    if (!bad_request.ParseFromString(any.value())) continue;
    for (const auto& v : bad_request.field_violations()) out.push_back(v);
  }
  return out;
}

absl::StatusOr<size_t> CompleteUtf8Prefix(std::string_view bytes) {
  const Utf8Scan scan = ScanUtf8(bytes);
  if (scan.invalid_at.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid UTF-8 at byte offset ", *scan.invalid_at));
  }
  return scan.complete;
}

ChunkReader MakeUtf8ChunkReader(std::istream* in, size_t chunk_bytes) {
  // At least one whole character (≤ 4 bytes) must fit, or no chunk could ever be cut.
  const size_t want = std::max<size_t>(chunk_bytes, 4);
  return [in, want, carry = std::string(), offset = uint64_t{0},
          done = false]() mutable -> absl::StatusOr<std::optional<std::string>> {
    if (done) return std::nullopt;
    std::string buf = std::move(carry);
    carry.clear();
    const size_t old = buf.size();
    bool at_end = false;
    if (old < want) {
      buf.resize(want);
      in->read(buf.data() + old, static_cast<std::streamsize>(want - old));
      if (in->bad()) return absl::DataLossError(absl::StrCat("read error at byte ", offset + old));
      const auto got = static_cast<size_t>(in->gcount());
      buf.resize(old + got);
      at_end = got < want - old;
    }
    const Utf8Scan scan = ScanUtf8(buf);
    if (scan.invalid_at.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid UTF-8 at byte offset ", offset + *scan.invalid_at));
    }
    if (at_end && scan.complete < buf.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("truncated UTF-8 character at byte offset ", offset + scan.complete));
    }
    carry = buf.substr(scan.complete);
    buf.resize(scan.complete);
    offset += scan.complete;
    if (at_end) done = true;
    if (buf.empty()) return std::nullopt;  // only at the end: `want` ≥ 4 always completes one
    return buf;
  };
}

Client::Client(std::shared_ptr<grpc::Channel> channel, RetryPolicy retry)
    : channel_(std::move(channel)),
      models_(v1::ModelService::NewStub(channel_)),
      sessions_(v1::SessionService::NewStub(channel_)),
      inference_(v1::InferenceService::NewStub(channel_)),
      retry_(retry) {}

absl::StatusOr<Client> Client::Connect(const std::string& target, RetryPolicy retry) {
  if (target.empty()) return absl::InvalidArgumentError("empty server address");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  return Client(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args), retry);
}

absl::StatusOr<Client> Client::Connect(const std::string& target, RetryPolicy retry,
                                       const TlsOptions& tls) {
  if (target.empty()) return absl::InvalidArgumentError("empty server address");
  if (tls.cert_pem.empty() != tls.key_pem.empty()) {
    return absl::InvalidArgumentError(
        "TLS: the client certificate and its key go together (both or neither)");
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = tls.ca_pem;
  ssl.pem_cert_chain = tls.cert_pem;
  ssl.pem_private_key = tls.key_pem;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  if (!tls.server_name.empty()) args.SetSslTargetNameOverride(tls.server_name);
  return Client(grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args), retry);
}

void Client::Prepare(grpc::ClientContext* context, const std::string& session_id,
                     std::optional<std::chrono::system_clock::time_point> deadline) const {
  if (deadline.has_value()) context->set_deadline(*deadline);
  if (!token_.empty()) context->AddMetadata("authorization", "Bearer " + token_);
  // Session-affinity routers send a session's requests to the replica that holds it.
  if (!session_id.empty()) context->AddMetadata("x-session-id", session_id);
}

absl::Status Client::Unary(const char* method, Safety safety, const std::string& session_id,
                           const std::function<grpc::Status(grpc::ClientContext*)>& attempt,
                           bool not_found_is_unknown) const {
  Retrier retrier(retry_, timeout_, safety, method, not_found_is_unknown);
  for (;;) {
    grpc::ClientContext context;
    Prepare(&context, session_id, retrier.deadline());
    absl::Status status = FromGrpcStatus(attempt(&context));
    if (status.ok() || !retrier.Retry(&status)) return status;
  }
}

absl::Status Client::WaitUntilReady(absl::Duration timeout) {
  if (channel_->WaitForConnected(std::chrono::system_clock::now() +
                                 absl::ToChronoNanoseconds(timeout))) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("no connection to the server within ", absl::FormatDuration(timeout)));
}

absl::StatusOr<std::vector<v1::Model>> Client::ListModels() {
  v1::ListModelsResponse response;
  RETURN_IF_ERROR(Unary("ListModels", Safety::kReadOnly, "", [&](grpc::ClientContext* context) {
    return models_->ListModels(context, v1::ListModelsRequest(), &response);
  }));
  return std::vector<v1::Model>(response.models().begin(), response.models().end());
}

absl::StatusOr<v1::Model> Client::GetModel(const std::string& name) {
  v1::GetModelRequest request;
  request.set_name(name);
  v1::Model response;
  RETURN_IF_ERROR(Unary("GetModel", Safety::kReadOnly, "", [&](grpc::ClientContext* context) {
    return models_->GetModel(context, request, &response);
  }));
  return response;
}

absl::StatusOr<std::vector<int32_t>> Client::Tokenize(const std::string& text,
                                                      const std::string& model) {
  v1::TokenizeRequest request;
  request.set_model(model);
  request.set_text(text);
  v1::TokenizeResponse response;
  RETURN_IF_ERROR(Unary("Tokenize", Safety::kReadOnly, "", [&](grpc::ClientContext* context) {
    return models_->Tokenize(context, request, &response);
  }));
  return std::vector<int32_t>(response.ids().begin(), response.ids().end());
}

absl::StatusOr<std::string> Client::Detokenize(const std::vector<int32_t>& ids,
                                               const std::string& model) {
  v1::DetokenizeRequest request;
  request.set_model(model);
  request.mutable_ids()->Add(ids.begin(), ids.end());
  v1::DetokenizeResponse response;
  RETURN_IF_ERROR(Unary("Detokenize", Safety::kReadOnly, "", [&](grpc::ClientContext* context) {
    return models_->Detokenize(context, request, &response);
  }));
  return std::move(*response.mutable_text());
}

absl::StatusOr<v1::Session> Client::CreateSession(const v1::CreateSessionRequest& options) {
  v1::Session response;
  // Not repeated after a transport failure: a duplicate would open a second session.
  RETURN_IF_ERROR(Unary("CreateSession", Safety::kUnsafe, "", [&](grpc::ClientContext* context) {
    return sessions_->CreateSession(context, options, &response);
  }));
  return response;
}

absl::StatusOr<v1::Session> Client::GetSession(const std::string& session_id) {
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  v1::Session response;
  RETURN_IF_ERROR(
      Unary("GetSession", Safety::kReadOnly, session_id, [&](grpc::ClientContext* context) {
        return sessions_->GetSession(context, request, &response);
      }));
  return response;
}

absl::StatusOr<std::vector<v1::Session>> Client::ListSessions(
    const std::map<std::string, std::string>& label_filter, int32_t page_size) {
  std::vector<v1::Session> out;
  v1::ListSessionsRequest request;
  request.set_page_size(page_size);
  request.mutable_label_filter()->insert(label_filter.begin(), label_filter.end());
  for (;;) {
    v1::ListSessionsResponse response;
    RETURN_IF_ERROR(Unary("ListSessions", Safety::kReadOnly, "", [&](grpc::ClientContext* context) {
      return sessions_->ListSessions(context, request, &response);
    }));
    for (v1::Session& s : *response.mutable_sessions()) out.push_back(std::move(s));
    if (response.next_page_token().empty()) return out;
    // A server handing back the token it was given would loop forever.
    if (response.next_page_token() == request.page_token()) {
      return absl::InternalError("ListSessions returned the same page token twice");
    }
    request.set_page_token(response.next_page_token());
  }
}

absl::Status Client::DeleteSession(const std::string& session_id, int64_t expected_state_version) {
  v1::DeleteSessionRequest request;
  request.set_session_id(session_id);
  request.set_expected_state_version(expected_state_version);
  v1::DeleteSessionResponse response;
  // A pinned delete repeated after a transport failure finds the session gone (NOT_FOUND) or busy
  // (ABORTED) if the first attempt got through: both mean "outcome unknown".
  return Unary(
      "DeleteSession", Pinned(expected_state_version), session_id,
      [&](grpc::ClientContext* context) {
        return sessions_->DeleteSession(context, request, &response);
      },
      /*not_found_is_unknown=*/true);
}

absl::StatusOr<v1::Session> Client::ForkSession(const v1::ForkSessionRequest& request) {
  v1::Session response;
  // Never repeated after a transport failure: a fork leaves the source's version as it was, so
  // pinning it does not stop a duplicate (a second child). Routed by the source's id.
  RETURN_IF_ERROR(Unary("ForkSession", Safety::kUnsafe, request.session_id(),
                        [&](grpc::ClientContext* context) {
                          return sessions_->ForkSession(context, request, &response);
                        }));
  return response;
}

absl::StatusOr<v1::Session> Client::ForkSession(const std::string& session_id) {
  v1::ForkSessionRequest request;
  request.set_session_id(session_id);
  return ForkSession(request);
}

namespace {

// The document of a client-streaming call (Ingest, Encode) as its attempts send it: the chunks
// read so far are kept for a retry until they pass the policy's replay_buffer_bytes.
class ChunkReplay {
 public:
  ChunkReplay(ChunkReader next_chunk, size_t max_bytes)
      : next_chunk_(std::move(next_chunk)), max_bytes_(max_bytes) {}
  bool replayable() const { return replayable_; }
  // The status of `next_chunk` when it failed (the attempt was cancelled then).
  const absl::Status& reader_status() const { return reader_status_; }

  // Writes the `leading` messages (the first one holding the header fields) or, when there are
  // none, `header` with the first text chunk; then the kept chunks and the rest of the source as
  // text chunks; then half-closes. A failed write stops (the call's Finish says why); a failed
  // read cancels the call.
  template <typename Request, typename Response>
  void Send(grpc::ClientReaderWriter<Request, Response>* stream, grpc::ClientContext* context,
            const std::vector<Request>& leading, const Request& header) {
    for (const Request& m : leading) {
      if (!stream->Write(m)) return;
    }
    bool sent_any = !leading.empty();
    Request request;
    if (!sent_any) request = header;
    auto write = [&](std::string text) {
      request.set_text(std::move(text));
      if (!stream->Write(request)) return false;
      sent_any = true;
      request.Clear();
      return true;
    };
    if (replayable_) {
      for (const std::string& chunk : sent_) {
        if (!write(chunk)) return;
      }
    }
    while (!source_done_) {
      absl::StatusOr<std::optional<std::string>> chunk = next_chunk_();
      if (!chunk.ok()) {
        reader_status_ = chunk.status();
        context->TryCancel();
        return;
      }
      if (!chunk->has_value()) {
        source_done_ = true;
        break;
      }
      if (replayable_) {
        sent_bytes_ += (*chunk)->size();
        if (sent_bytes_ > max_bytes_) {
          replayable_ = false;
          std::vector<std::string>().swap(sent_);
        } else {
          sent_.push_back(**chunk);
        }
      }
      if (!write(std::move(**chunk))) return;
    }
    // An empty document still sends the header, so the server can answer.
    if (!sent_any && !stream->Write(request)) return;
    stream->WritesDone();
  }

 private:
  ChunkReader next_chunk_;
  size_t max_bytes_;
  std::vector<std::string> sent_;
  size_t sent_bytes_ = 0;
  bool replayable_ = true;
  bool source_done_ = false;
  absl::Status reader_status_;
};

}  // namespace

absl::StatusOr<v1::IngestProgress> Client::Ingest(const std::string& session_id,
                                                  ChunkReader next_chunk,
                                                  const IngestProgressCallback& on_progress,
                                                  int64_t expected_state_version) {
  Retrier retrier(retry_, timeout_, Pinned(expected_state_version), "Ingest");
  ChunkReplay chunks(std::move(next_chunk), retry_.replay_buffer_bytes);
  v1::IngestRequest header;
  header.set_session_id(session_id);
  header.set_expected_state_version(expected_state_version);
  for (;;) {
    grpc::ClientContext context;
    Prepare(&context, session_id, retrier.deadline());
    std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestProgress>> stream =
        inference_->Ingest(&context);
    // Writes run on their own thread while this one reads: the server answers every message,
    // and a client that only wrote would stall once the unread answers filled the flow-control
    // window.
    std::thread writer([&] { chunks.Send(stream.get(), &context, {}, header); });
    v1::IngestProgress progress;
    std::optional<v1::IngestProgress> last;
    while (stream->Read(&progress)) {
      if (on_progress) on_progress(progress);
      last = progress;
    }
    writer.join();
    absl::Status status = FromGrpcStatus(stream->Finish());
    if (!chunks.reader_status().ok()) return chunks.reader_status();
    if (status.ok()) {
      if (!last.has_value() || !last->done()) {
        return absl::InternalError(
            "the Ingest stream ended without a final (done) progress message");
      }
      return *std::move(last);
    }
    // Progress messages do not commit anything: only the final one does, so they do not stop a
    // retry.
    if (!retrier.Retry(&status, /*received=*/false, chunks.replayable())) return status;
  }
}

absl::StatusOr<EncodeResult> Client::Encode(const v1::EncodeRequest& options,
                                            ChunkReader next_chunk) {
  return EncodeStream(options, {}, std::move(next_chunk));
}

absl::StatusOr<EncodeResult> Client::Encode(const v1::EncodeRequest& options,
                                            const std::vector<int32_t>& ids) {
  // Messages of at most kIdsPerMessage ids (well under the server's per-message limits).
  constexpr size_t kIdsPerMessage = size_t{1} << 18;
  std::vector<v1::EncodeRequest> messages;
  for (size_t at = 0; at < ids.size() || messages.empty(); at += kIdsPerMessage) {
    v1::EncodeRequest& m = messages.emplace_back();
    if (messages.size() == 1) m = options;
    m.clear_chunk();
    const size_t end = std::min(ids.size(), at + kIdsPerMessage);
    if (end > at) m.mutable_ids()->mutable_ids()->Add(ids.begin() + at, ids.begin() + end);
  }
  return EncodeStream(options, messages,
                      [] { return absl::StatusOr<std::optional<std::string>>(std::nullopt); });
}

absl::StatusOr<EncodeResult> Client::EncodeStream(const v1::EncodeRequest& options,
                                                  const std::vector<v1::EncodeRequest>& leading,
                                                  ChunkReader next_chunk) {
  Retrier retrier(retry_, timeout_, Safety::kReadOnly, "Encode");
  ChunkReplay chunks(std::move(next_chunk), retry_.replay_buffer_bytes);
  v1::EncodeRequest header = options;
  header.clear_chunk();
  for (;;) {
    grpc::ClientContext context;
    Prepare(&context, "", retrier.deadline());
    std::unique_ptr<grpc::ClientReaderWriter<v1::EncodeRequest, v1::EncodeResponse>> stream =
        inference_->Encode(&context);
    // (The server answers only after the half-close, but the writer keeps Ingest's shape: a
    // read error from the source must be able to cancel while this thread waits.)
    std::thread writer([&] { chunks.Send(stream.get(), &context, leading, header); });
    EncodeResult result;
    v1::EncodeResponse response;
    bool done = false;
    absl::Status bad;
    while (stream->Read(&response)) {
      if (response.count() > 0) {
        const int64_t floats = response.count() * response.dim();
        if (response.dim() <= 0 || (result.dim != 0 && response.dim() != result.dim) ||
            static_cast<int64_t>(response.vectors().size()) != floats * 4) {
          bad = absl::InternalError("an Encode response whose vectors do not match count × dim");
          context.TryCancel();
          break;
        }
        result.dim = response.dim();
        result.rows += response.count();
        const size_t at = result.vectors.size();
        result.vectors.resize(at + static_cast<size_t>(floats));
        std::memcpy(result.vectors.data() + at, response.vectors().data(),
                    response.vectors().size());  // little-endian float32, as on the wire
        result.ids.insert(result.ids.end(), response.ids().begin(), response.ids().end());
      }
      for (const v1::MaskedLmLogprobs& m : response.mlm()) {
        if (m.logprobs().size() % 4 != 0) {
          bad = absl::InternalError("an Encode response with a partial float32 log-probability");
          context.TryCancel();
          break;
        }
        result.mlm_positions.push_back(m.position());
        const size_t at = result.mlm_logprobs.size();
        result.mlm_logprobs.resize(at + m.logprobs().size() / 4);
        std::memcpy(result.mlm_logprobs.data() + at, m.logprobs().data(), m.logprobs().size());
      }
      if (!bad.ok()) break;
      if (response.done()) {
        done = true;
        result.tokens = response.tokens();
        result.windows = response.windows();
      }
    }
    writer.join();
    absl::Status status = FromGrpcStatus(stream->Finish());
    if (!chunks.reader_status().ok()) return chunks.reader_status();
    if (!bad.ok()) return bad;
    if (status.ok()) {
      if (!done) return absl::InternalError("the Encode stream ended without its last message");
      return result;
    }
    if (!retrier.Retry(&status, /*received=*/false, chunks.replayable())) return status;
  }
}

absl::StatusOr<v1::IngestProgress> Client::IngestFile(const std::string& session_id,
                                                      const std::string& path, size_t chunk_bytes,
                                                      const IngestProgressCallback& on_progress,
                                                      int64_t expected_state_version) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  // Local read and UTF-8 errors name the file.
  ChunkReader reader = [path,
                        next = MakeUtf8ChunkReader(
                            &in, chunk_bytes)]() -> absl::StatusOr<std::optional<std::string>> {
    absl::StatusOr<std::optional<std::string>> chunk = next();
    if (!chunk.ok()) {
      return absl::Status(chunk.status().code(),
                          absl::StrCat(path, ": ", chunk.status().message()));
    }
    return chunk;
  };
  return Ingest(session_id, std::move(reader), on_progress, expected_state_version);
}

absl::StatusOr<v1::Final> Client::Generate(const v1::GenerateRequest& request,
                                           const GenerateEventCallback& on_event) {
  // One-shot and scratch generations change no session: read-only.
  const bool read_only =
      request.session_id().empty() || request.commit() == v1::COMMIT_MODE_SCRATCH;
  Retrier retrier(retry_, timeout_,
                  read_only ? Safety::kReadOnly : Pinned(request.expected_state_version()),
                  "Generate");
  for (;;) {
    grpc::ClientContext context;
    Prepare(&context, request.session_id(), retrier.deadline());
    std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> stream =
        inference_->Generate(&context, request);
    v1::GenerateEvent event;
    std::optional<v1::Final> final_event;
    bool received = false;
    while (stream->Read(&event)) {
      received = true;
      if (on_event) on_event(event);
      if (event.has_final()) final_event = event.final();
    }
    absl::Status status = FromGrpcStatus(stream->Finish());
    if (status.ok()) {
      if (!final_event.has_value()) {
        return absl::InternalError("the Generate stream ended without a Final event");
      }
      return *std::move(final_event);
    }
    if (!retrier.Retry(&status, received)) return status;
  }
}

absl::StatusOr<v1::ScoreResponse> Client::Score(const v1::ScoreRequest& request) {
  const bool read_only = !request.commit() || request.session_id().empty();
  v1::ScoreResponse response;
  RETURN_IF_ERROR(Unary("Score",
                        read_only ? Safety::kReadOnly : Pinned(request.expected_state_version()),
                        request.session_id(), [&](grpc::ClientContext* context) {
                          return inference_->Score(context, request, &response);
                        }));
  return response;
}

}  // namespace mnemo::client
