#include <algorithm>
#include <charconv>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "server/proto_conversion.h"
#include "server/services.h"
#include "server/session_snapshot.h"

namespace mnemo::server {
namespace {

// Session options from a request's labels, TTL and sampling, validated.
absl::StatusOr<SessionOptions> OptionsFrom(
    const google::protobuf::Map<std::string, std::string>& labels, bool has_ttl,
    const google::protobuf::Duration& ttl, const v1::SamplingParams* sampling,
    const RequestLimits& limits) {
  FieldViolations violations;
  SessionOptions options;
  CheckLabels(labels, limits.max_labels, "labels", violations);
  options.labels.insert(labels.begin(), labels.end());
  if (has_ttl) {
    options.ttl = DurationFromProto(ttl);
    if (options.ttl <= absl::ZeroDuration() || options.ttl > limits.max_session_ttl) {
      violations.Add("ttl", absl::StrCat("must be in (0, ",
                                         absl::FormatDuration(limits.max_session_ttl), "]"));
    }
  }
  if (sampling != nullptr) {
    options.default_sampling = SamplingFromProto(*sampling, "default_sampling", violations);
  }
  RETURN_IF_ERROR(violations.ToStatus());
  return options;
}

// ExportSession's message size: well under gRPC's default 4 MiB receive limit.
constexpr size_t kSnapshotChunkBytes = size_t{1} << 20;

absl::Status RequireId(const std::string& id) {
  if (id.empty()) return InvalidField("session_id", "is required");
  return absl::OkStatus();
}

}  // namespace

grpc::Status SessionServiceImpl::HandleCreateSession(grpc::ServerContext* context,
                                                     const v1::CreateSessionRequest* request,
                                                     v1::Session* response) {
  RpcScope scope(ctx_, "CreateSession", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    ASSIGN_OR_RETURN(LoadedModel * model, ctx_.models->Find(request->model()));
    const int64_t mem_len = model->model->config().mem_len;
    if (request->memory_tokens() != 0 && request->memory_tokens() != mem_len) {
      return InvalidField("memory_tokens",
                          absl::StrCat("this server keeps every session at the model's memory "
                                       "length (",
                                       mem_len, " tokens); pass 0 or ", mem_len));
    }
    ASSIGN_OR_RETURN(
        SessionOptions options,
        OptionsFrom(request->labels(), request->has_ttl(), request->ttl(),
                    request->has_default_sampling() ? &request->default_sampling() : nullptr,
                    ctx_.limits));
    options.durability = DurabilityFromProto(request->durability());
    options.tenant = scope.caller().tenant;
    options.quotas = scope.caller().quotas;
    ASSIGN_OR_RETURN(SessionInfo info, ctx_.sessions->Create(*model, options));
    SessionToProto(info, response);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleGetSession(grpc::ServerContext* context,
                                                  const v1::GetSessionRequest* request,
                                                  v1::Session* response) {
  RpcScope scope(ctx_, "GetSession", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(RequireId(request->session_id()));
    ASSIGN_OR_RETURN(SessionInfo info, ctx_.sessions->Get(request->session_id(), scope.caller()));
    SessionToProto(info, response);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleListSessions(grpc::ServerContext* context,
                                                    const v1::ListSessionsRequest* request,
                                                    v1::ListSessionsResponse* response) {
  RpcScope scope(ctx_, "ListSessions", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    FieldViolations violations;
    int limit = request->page_size() == 0 ? 100 : request->page_size();
    if (limit < 1 || limit > 1000) violations.Add("page_size", "must be in [1, 1000] (0: 100)");
    uint64_t after = 0;
    if (!request->page_token().empty() && !absl::SimpleAtoi(request->page_token(), &after)) {
      violations.Add("page_token", "is not a token this server returned");
    }
    RETURN_IF_ERROR(violations.ToStatus());
    std::map<std::string, std::string> filter(request->label_filter().begin(),
                                              request->label_filter().end());
    bool more = false;
    std::vector<SessionInfo> page =
        ctx_.sessions->List(after, limit, filter, &more, scope.caller());
    for (const SessionInfo& info : page) SessionToProto(info, response->add_sessions());
    if (more) response->set_next_page_token(std::to_string(page.back().sequence));
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleDeleteSession(grpc::ServerContext* context,
                                                     const v1::DeleteSessionRequest* request,
                                                     v1::DeleteSessionResponse*) {
  RpcScope scope(ctx_, "DeleteSession", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(RequireId(request->session_id()));
    return ctx_.sessions->Delete(request->session_id(), request->expected_state_version(),
                                 scope.caller());
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleForkSession(grpc::ServerContext* context,
                                                   const v1::ForkSessionRequest* request,
                                                   v1::Session* response) {
  RpcScope scope(ctx_, "ForkSession", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(RequireId(request->session_id()));
    ASSIGN_OR_RETURN(SessionOptions options, OptionsFrom(request->labels(), request->has_ttl(),
                                                         request->ttl(), nullptr, ctx_.limits));
    options.tenant = scope.caller().tenant;
    options.quotas = scope.caller().quotas;
    ASSIGN_OR_RETURN(SessionInfo info,
                     ctx_.sessions->Fork(request->session_id(), request->expected_state_version(),
                                         options, scope.caller()));
    SessionToProto(info, response);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::ExportSession(
    grpc::ServerContext* context, const v1::ExportSessionRequest* request,
    grpc::ServerWriter<v1::SessionSnapshotChunk>* writer) {
  RpcScope scope(ctx_, "ExportSession", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(CheckRequest(*request, ctx_.limits));
    RETURN_IF_ERROR(RequireId(request->session_id()));
    std::string snapshot;
    int64_t version = 0;
    std::string fingerprint;
    {
      ASSIGN_OR_RETURN(std::unique_ptr<SessionLease> lease,
                       ctx_.sessions->Acquire(request->session_id(),
                                              request->expected_state_version(), scope.caller()));
      version = lease->state_version();
      fingerprint = lease->model().description.fingerprint;
      ASSIGN_OR_RETURN(snapshot, EncodeSession(lease->model(), lease->memory(),
                                               ctx_.sessions->SnapshotFields(*lease)));
    }  // the session is free again while the bytes travel
    const size_t chunk = kSnapshotChunkBytes;
    size_t offset = 0;
    do {
      if (context->IsCancelled()) return absl::CancelledError("the client cancelled");
      v1::SessionSnapshotChunk message;
      const size_t n = std::min(chunk, snapshot.size() - offset);
      message.set_data(snapshot.data() + offset, n);
      if (offset == 0) {
        message.set_total_bytes(static_cast<int64_t>(snapshot.size()));
        message.set_state_version(version);
        message.set_model_fingerprint(fingerprint);
      }
      if (!writer->Write(message)) return absl::CancelledError("the client went away");
      offset += n;
    } while (offset < snapshot.size());
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::ImportSession(grpc::ServerContext* context,
                                               grpc::ServerReader<v1::ImportSessionRequest>* reader,
                                               v1::Session* response) {
  RpcScope scope(ctx_, "ImportSession", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    v1::ImportSessionRequest first;
    (void)v1::TakeRequestParseError();
    if (!reader->Read(&first)) {
      if (grpc::Status e = v1::TakeRequestParseError(); !e.ok()) {
        return InvalidField("messages[0]", e.error_message());
      }
      return InvalidField("data", "the stream ended before its first message");
    }
    RETURN_IF_ERROR(CheckRequest(first, ctx_.limits, 0));
    std::string model_name = first.model();
    if (model_name.empty() && !first.session_id().empty()) {
      // Only the owner may replace a session's state (an admin too answers NOT_FOUND here).
      Caller owner = scope.caller();
      owner.admin = false;
      ASSIGN_OR_RETURN(SessionInfo target, ctx_.sessions->Get(first.session_id(), owner));
      model_name = target.model;
    }
    ASSIGN_OR_RETURN(LoadedModel * model, ctx_.models->Find(model_name));
    // A snapshot of this model is its states plus a manifest: anything longer is refused as it
    // arrives, before it is held.
    const int64_t limit = model->SessionBytes() + engine::api::kMaxSnapshotManifestBytes +
                          int64_t{64} * (model->model->config().n_layer + 2) * 64 + 4096;
    std::string snapshot = std::move(*first.mutable_data());
    v1::ImportSessionRequest message;
    int64_t index = 1;
    while (static_cast<int64_t>(snapshot.size()) <= limit && reader->Read(&message)) {
      RETURN_IF_ERROR(CheckRequest(message, ctx_.limits, index));
      snapshot += message.data();
      ++index;
    }
    if (static_cast<int64_t>(snapshot.size()) > limit) {
      return InvalidField("data",
                          absl::StrCat("more than the ", limit, " bytes a snapshot of model \"",
                                       model->name, "\" can hold"));
    }
    if (context->IsCancelled()) return absl::CancelledError("the client cancelled");
    if (grpc::Status e = v1::TakeRequestParseError(); !e.ok()) {
      return InvalidField(absl::StrCat("messages[", index, "]"), e.error_message());
    }
    const absl::Time start = absl::Now();
    ASSIGN_OR_RETURN(DecodedSession decoded, DecodeSession(*model, snapshot));
    const double decode_seconds = absl::ToDoubleSeconds(absl::Now() - start);
    // Counted once a session holds the state: a refused import restored nothing.
    const auto count_restore = [&] {
      ctx_.metrics->SnapshotRestored("import", static_cast<int64_t>(snapshot.size()),
                                     decode_seconds);
    };
    const engine::api::SnapshotSession& fields = decoded.manifest.session;
    if (!first.session_id().empty()) {
      // Replace an existing session's state: one more version of it.
      ASSIGN_OR_RETURN(std::unique_ptr<SessionLease> lease,
                       ctx_.sessions->Acquire(first.session_id(), first.expected_state_version(),
                                              scope.caller()));
      if (&lease->model() != model) {
        return InvalidField("model",
                            absl::StrCat("session ", first.session_id(), " belongs to model \"",
                                         lease->model().name, "\""));
      }
      const int64_t added = fields.tokens_seen - lease->tokens_seen();
      SessionMemory previous = std::move(lease->memory());
      lease->memory() = std::move(decoded.memory);
      if (absl::Status s = lease->Persist(added); !s.ok()) {
        lease->memory() = std::move(previous);
        return s;
      }
      lease->Commit(added);
      count_restore();
      const std::string id = lease->id();
      lease.reset();
      ASSIGN_OR_RETURN(SessionInfo info, ctx_.sessions->Get(id, scope.caller()));
      SessionToProto(info, response);
      return absl::OkStatus();
    }
    FieldViolations violations;
    SessionOptions options;
    CheckLabels(first.labels(), ctx_.limits.max_labels, "labels", violations);
    if (first.labels().empty()) {
      options.labels = fields.labels;
    } else {
      options.labels.insert(first.labels().begin(), first.labels().end());
    }
    if (first.has_ttl()) {
      options.ttl = DurationFromProto(first.ttl());
      if (options.ttl <= absl::ZeroDuration() || options.ttl > ctx_.limits.max_session_ttl) {
        violations.Add("ttl", absl::StrCat("must be in (0, ",
                                           absl::FormatDuration(ctx_.limits.max_session_ttl), "]"));
      }
    } else if (fields.ttl_ms > 0) {
      options.ttl = std::min(absl::Milliseconds(fields.ttl_ms), ctx_.limits.max_session_ttl);
    }
    RETURN_IF_ERROR(violations.ToStatus());
    options.default_sampling = fields.default_sampling;
    options.durability = DurabilityFromProto(first.durability());
    if (!options.durability && ctx_.sessions->has_store()) options.durability = fields.durability;
    // The importing caller owns the copy, whoever owned the session it was exported from.
    options.tenant = scope.caller().tenant;
    options.quotas = scope.caller().quotas;
    ASSIGN_OR_RETURN(
        SessionInfo info,
        ctx_.sessions->CreateFrom(*model, options, std::move(decoded.memory), fields.tokens_seen));
    count_restore();
    SessionToProto(info, response);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::StreamedCreateSession(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::CreateSessionRequest, v1::Session>* stream) {
  return ServeUnary(ctx_, "CreateSession", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleCreateSession(c, req, resp);
  });
}

grpc::Status SessionServiceImpl::StreamedGetSession(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::GetSessionRequest, v1::Session>* stream) {
  return ServeUnary(ctx_, "GetSession", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleGetSession(c, req, resp);
  });
}

grpc::Status SessionServiceImpl::StreamedListSessions(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::ListSessionsRequest, v1::ListSessionsResponse>* stream) {
  return ServeUnary(ctx_, "ListSessions", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleListSessions(c, req, resp);
  });
}

grpc::Status SessionServiceImpl::StreamedDeleteSession(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::DeleteSessionRequest, v1::DeleteSessionResponse>* stream) {
  return ServeUnary(ctx_, "DeleteSession", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleDeleteSession(c, req, resp);
  });
}

grpc::Status SessionServiceImpl::StreamedForkSession(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::ForkSessionRequest, v1::Session>* stream) {
  return ServeUnary(ctx_, "ForkSession", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleForkSession(c, req, resp);
  });
}

}  // namespace mnemo::server
