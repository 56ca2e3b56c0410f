// The mnemo.v1 client: status conversion, paging and streaming loops, UTF-8-safe file chunking.
#include "clients/cpp/mnemo_client.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>
#include <utility>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/status.h>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

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

template <typename T>
absl::StatusOr<T> Done(const grpc::Status& status, T value) {
  if (!status.ok()) return FromGrpcStatus(status);
  return value;
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  if (!status.error_details().empty()) {
    out.SetPayload(kStatusDetailsPayload, absl::Cord(status.error_details()));
  }
  return out;
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

Client::Client(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)),
      models_(v1::ModelService::NewStub(channel_)),
      sessions_(v1::SessionService::NewStub(channel_)),
      inference_(v1::InferenceService::NewStub(channel_)) {}

absl::StatusOr<Client> Client::Connect(const std::string& target) {
  if (target.empty()) return absl::InvalidArgumentError("empty server address");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  return Client(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

void Client::Prepare(grpc::ClientContext* context, const std::string& session_id) const {
  if (timeout_.has_value()) {
    context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(*timeout_));
  }
  // Session-affinity routers send a session's requests to the replica that holds it.
  if (!session_id.empty()) context->AddMetadata("x-session-id", session_id);
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
  grpc::ClientContext context;
  Prepare(&context);
  v1::ListModelsResponse response;
  const grpc::Status status = models_->ListModels(&context, v1::ListModelsRequest(), &response);
  return Done(status, std::vector<v1::Model>(response.models().begin(), response.models().end()));
}

absl::StatusOr<v1::Model> Client::GetModel(const std::string& name) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetModelRequest request;
  request.set_name(name);
  v1::Model response;
  const grpc::Status status = models_->GetModel(&context, request, &response);
  return Done(status, std::move(response));
}

absl::StatusOr<std::vector<int32_t>> Client::Tokenize(const std::string& text,
                                                      const std::string& model) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::TokenizeRequest request;
  request.set_model(model);
  request.set_text(text);
  v1::TokenizeResponse response;
  const grpc::Status status = models_->Tokenize(&context, request, &response);
  return Done(status, std::vector<int32_t>(response.ids().begin(), response.ids().end()));
}

absl::StatusOr<std::string> Client::Detokenize(const std::vector<int32_t>& ids,
                                               const std::string& model) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::DetokenizeRequest request;
  request.set_model(model);
  request.mutable_ids()->Add(ids.begin(), ids.end());
  v1::DetokenizeResponse response;
  const grpc::Status status = models_->Detokenize(&context, request, &response);
  return Done(status, std::move(*response.mutable_text()));
}

absl::StatusOr<v1::Session> Client::CreateSession(const v1::CreateSessionRequest& options) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::Session response;
  const grpc::Status status = sessions_->CreateSession(&context, options, &response);
  return Done(status, std::move(response));
}

absl::StatusOr<v1::Session> Client::GetSession(const std::string& session_id) {
  grpc::ClientContext context;
  Prepare(&context, session_id);
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  v1::Session response;
  const grpc::Status status = sessions_->GetSession(&context, request, &response);
  return Done(status, std::move(response));
}

absl::StatusOr<std::vector<v1::Session>> Client::ListSessions(
    const std::map<std::string, std::string>& label_filter, int32_t page_size) {
  std::vector<v1::Session> out;
  v1::ListSessionsRequest request;
  request.set_page_size(page_size);
  request.mutable_label_filter()->insert(label_filter.begin(), label_filter.end());
  for (;;) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListSessionsResponse response;
    const grpc::Status status = sessions_->ListSessions(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
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
  grpc::ClientContext context;
  Prepare(&context, session_id);
  v1::DeleteSessionRequest request;
  request.set_session_id(session_id);
  request.set_expected_state_version(expected_state_version);
  v1::DeleteSessionResponse response;
  return FromGrpcStatus(sessions_->DeleteSession(&context, request, &response));
}

absl::StatusOr<v1::Session> Client::ForkSession(const v1::ForkSessionRequest& request) {
  grpc::ClientContext context;
  Prepare(&context, request.session_id());
  v1::Session response;
  const grpc::Status status = sessions_->ForkSession(&context, request, &response);
  return Done(status, std::move(response));
}

absl::StatusOr<v1::Session> Client::ForkSession(const std::string& session_id) {
  v1::ForkSessionRequest request;
  request.set_session_id(session_id);
  return ForkSession(request);
}

absl::StatusOr<v1::IngestProgress> Client::Ingest(const std::string& session_id,
                                                  ChunkReader next_chunk,
                                                  const IngestProgressCallback& on_progress,
                                                  int64_t expected_state_version) {
  grpc::ClientContext context;
  Prepare(&context, session_id);
  std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestProgress>> stream =
      inference_->Ingest(&context);
  // Writes run on their own thread while this one reads: the server answers every message, and
  // a client that only wrote would stall once the unread answers filled the flow-control window.
  absl::Status reader_status;  // an error of next_chunk; written by the writer thread only
  std::thread writer([&] {
    v1::IngestRequest request;
    request.set_session_id(session_id);
    request.set_expected_state_version(expected_state_version);
    bool sent_any = false;
    for (;;) {
      absl::StatusOr<std::optional<std::string>> chunk = next_chunk();
      if (!chunk.ok()) {
        reader_status = chunk.status();
        context.TryCancel();
        return;
      }
      if (!chunk->has_value()) break;
      request.set_text(std::move(**chunk));
      if (!stream->Write(request)) return;  // the call failed: Finish() says why
      sent_any = true;
      request.Clear();
    }
    // An empty document still names the session, so the server can answer with its version.
    if (!sent_any && !stream->Write(request)) return;
    stream->WritesDone();
  });
  v1::IngestProgress progress;
  std::optional<v1::IngestProgress> last;
  while (stream->Read(&progress)) {
    if (on_progress) on_progress(progress);
    last = progress;
  }
  writer.join();
  const grpc::Status status = stream->Finish();
  if (!reader_status.ok()) return reader_status;
  if (!status.ok()) return FromGrpcStatus(status);
  if (!last.has_value() || !last->done()) {
    return absl::InternalError("the Ingest stream ended without a final (done) progress message");
  }
  return *std::move(last);
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
  grpc::ClientContext context;
  Prepare(&context, request.session_id());
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> stream =
      inference_->Generate(&context, request);
  v1::GenerateEvent event;
  std::optional<v1::Final> final_event;
  while (stream->Read(&event)) {
    if (on_event) on_event(event);
    if (event.has_final()) final_event = event.final();
  }
  const grpc::Status status = stream->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!final_event.has_value()) {
    return absl::InternalError("the Generate stream ended without a Final event");
  }
  return *std::move(final_event);
}

absl::StatusOr<v1::ScoreResponse> Client::Score(const v1::ScoreRequest& request) {
  grpc::ClientContext context;
  Prepare(&context, request.session_id());
  v1::ScoreResponse response;
  const grpc::Status status = inference_->Score(&context, request, &response);
  return Done(status, std::move(response));
}

}  // namespace mnemo::client
