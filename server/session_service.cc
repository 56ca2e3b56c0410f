#include <charconv>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "server/proto_conversion.h"
#include "server/services.h"

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

absl::Status RequireId(const std::string& id) {
  if (id.empty()) return InvalidField("session_id", "is required");
  return absl::OkStatus();
}

}  // namespace

grpc::Status SessionServiceImpl::HandleCreateSession(grpc::ServerContext*,
                                                     const v1::CreateSessionRequest* request,
                                                     v1::Session* response) {
  RpcScope scope(ctx_, "CreateSession");
  auto run = [&]() -> absl::Status {
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
    ASSIGN_OR_RETURN(SessionInfo info, ctx_.sessions->Create(*model, options));
    SessionToProto(info, response);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleGetSession(grpc::ServerContext*,
                                                  const v1::GetSessionRequest* request,
                                                  v1::Session* response) {
  RpcScope scope(ctx_, "GetSession");
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(RequireId(request->session_id()));
    ASSIGN_OR_RETURN(SessionInfo info, ctx_.sessions->Get(request->session_id()));
    SessionToProto(info, response);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleListSessions(grpc::ServerContext*,
                                                    const v1::ListSessionsRequest* request,
                                                    v1::ListSessionsResponse* response) {
  RpcScope scope(ctx_, "ListSessions");
  auto run = [&]() -> absl::Status {
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
    std::vector<SessionInfo> page = ctx_.sessions->List(after, limit, filter, &more);
    for (const SessionInfo& info : page) SessionToProto(info, response->add_sessions());
    if (more) response->set_next_page_token(std::to_string(page.back().sequence));
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleDeleteSession(grpc::ServerContext*,
                                                     const v1::DeleteSessionRequest* request,
                                                     v1::DeleteSessionResponse*) {
  RpcScope scope(ctx_, "DeleteSession");
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(RequireId(request->session_id()));
    return ctx_.sessions->Delete(request->session_id(), request->expected_state_version());
  };
  return scope.Finish(run());
}

grpc::Status SessionServiceImpl::HandleForkSession(grpc::ServerContext*,
                                                   const v1::ForkSessionRequest* request,
                                                   v1::Session* response) {
  RpcScope scope(ctx_, "ForkSession");
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(RequireId(request->session_id()));
    ASSIGN_OR_RETURN(SessionOptions options, OptionsFrom(request->labels(), request->has_ttl(),
                                                         request->ttl(), nullptr, ctx_.limits));
    ASSIGN_OR_RETURN(
        SessionInfo info,
        ctx_.sessions->Fork(request->session_id(), request->expected_state_version(), options));
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
