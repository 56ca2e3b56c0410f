// What the gRPC services share: the loaded models, the sessions, the metrics, the request limits,
// the tenants and the draining flag; and RpcScope, which authenticates, counts and times every
// RPC the same way.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"

#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "mnemo/v1/request_parsing.h"
#include "server/auth.h"
#include "server/grpc_status.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/request_bounds.h"
#include "server/session_manager.h"
#include "server/session_runner.h"
#include "server/tenant_limiter.h"

namespace mnemo::server {

// What one request may carry (server/request_bounds.h checks it; docs/server-api.md "Request
// limits"). The flags of the same names set them.
struct RequestLimits {
  int64_t max_generate_tokens = 4096;  // GenerateRequest.max_tokens
  // Tokens of one prompt or scored text, ids of one Detokenize and of one Ingest message.
  int64_t max_input_tokens = 1 << 20;
  int64_t max_encode_tokens = 1 << 20;  // tokens of one Encode document
  // Bytes of one text field: Tokenize, a prompt, a scored text, one Ingest message's chunk.
  int64_t max_text_bytes = int64_t{8} << 20;
  int max_stop_strings = 16;
  int max_stop_bytes = 256;
  int max_stop_ids = 64;  // GenerateRequest.stop_ids
  int max_labels = 16;    // labels, label_filter
  absl::Duration max_session_ttl = absl::Hours(168);
};

struct ServiceContext {
  ModelRegistry* models = nullptr;
  SessionManager* sessions = nullptr;
  Metrics* metrics = nullptr;
  Authenticator* auth = nullptr;     // null: every caller is the implicit tenant ""
  TenantLimiter* limiter = nullptr;  // null: no concurrency or token quotas
  RequestLimits limits;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};  // RPCs between RpcScope's construction and destruction
};

// UNAVAILABLE while the server drains: every new call is refused, reads included.
inline absl::Status AdmitNewWork(ServiceContext& ctx) {
  if (!ctx.draining.load()) return absl::OkStatus();
  ctx.metrics->Rejected("shutting_down");
  return WithReason(absl::UnavailableError("the server is shutting down; retry on another replica"),
                    kReasonDraining);
}

// The caller of an RPC from its bearer token ("authorization: Bearer …" metadata) or its verified
// client certificate's subject; UNAUTHENTICATED when the auth file maps neither.
inline absl::StatusOr<Caller> CallerOf(const ServiceContext& ctx, grpc::ServerContext* context) {
  if (ctx.auth == nullptr || !ctx.auth->enabled()) return Caller{"", /*admin=*/true, {}};
  std::optional<std::string_view> token;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    const std::string_view value(it->second.data(), it->second.size());
    constexpr std::string_view kBearer = "Bearer ";
    if (value.size() <= kBearer.size() ||
        !absl::EqualsIgnoreCase(absl::string_view(value.data(), kBearer.size()),
                                absl::string_view(kBearer.data(), kBearer.size()))) {
      return absl::UnauthenticatedError("the authorization metadata must be \"Bearer <token>\"");
    }
    token = value.substr(kBearer.size());
  }
  std::optional<std::string_view> subject;
  std::string subject_text;
  const std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    const std::vector<grpc::string_ref> values = auth->FindPropertyValues("x509_subject");
    if (!values.empty()) {
      subject_text.assign(values.front().data(), values.front().size());
      subject = subject_text;
    }
  }
  return ctx.auth->Authenticate(token, subject);
}

// Counts an RPC as running while alive and records its code and duration when finished. Given
// the call's context it also authenticates the caller and takes one of its tenant's concurrent
// requests (what went wrong is what Admit returns); given nullptr (only calls between replicas,
// which carry no tenant's credentials) the caller is the implicit tenant.
class RpcScope {
 public:
  RpcScope(ServiceContext& ctx, const char* rpc, grpc::ServerContext* context)
      : ctx_(ctx), rpc_(rpc), start_(absl::Now()) {
    ctx_.metrics->RequestStarted();
    ++ctx_.in_flight;
    if (context == nullptr) {
      caller_ = Caller{"", /*admin=*/true, {}};
      return;
    }
    absl::StatusOr<Caller> caller = CallerOf(ctx_, context);
    if (!caller.ok()) {
      ctx_.metrics->AuthFailure();
      admitted_ = caller.status();
      return;
    }
    caller_ = *std::move(caller);
    authenticated_ = true;
    if (ctx_.limiter != nullptr) admitted_ = ctx_.limiter->Enter(caller_, &slot_);
  }
  ~RpcScope() {
    ctx_.metrics->RequestEnded();
    --ctx_.in_flight;
  }
  RpcScope(const RpcScope&) = delete;
  RpcScope& operator=(const RpcScope&) = delete;

  absl::Time start() const { return start_; }
  // UNAVAILABLE while the server drains; UNAUTHENTICATED without valid credentials;
  // RESOURCE_EXHAUSTED when the caller's tenant runs its concurrent_requests quota already.
  // Every RPC calls it before anything else.
  absl::Status Admit() const {
    if (absl::Status s = AdmitNewWork(ctx_); !s.ok()) return s;
    return admitted_;
  }
  // Whether the caller's credentials were valid (and its tenant had a concurrent-request slot),
  // without the drain check: for calls served while draining (hand-offs between replicas).
  const absl::Status& Authenticated() const { return admitted_; }
  // Who calls (valid once Admit returned OK).
  const Caller& caller() const { return caller_; }
  // RESOURCE_EXHAUSTED while the caller's tenant has used its tokens_per_minute.
  absl::Status CheckTokens() const {
    return ctx_.limiter == nullptr ? absl::OkStatus() : ctx_.limiter->CheckTokens(caller_);
  }
  // Counts `tokens` run through a model against the caller's tenant.
  void ChargeTokens(int64_t tokens) const {
    if (ctx_.limiter != nullptr) ctx_.limiter->Charge(caller_, tokens);
  }
  grpc::Status Finish(const absl::Status& status) {
    grpc::Status s = ToGrpcStatus(status);
    ctx_.metrics->Request(rpc_, GrpcCodeName(s.error_code()),
                          absl::ToDoubleSeconds(absl::Now() - start_));
    if (authenticated_) ctx_.metrics->TenantRequest(caller_.tenant, GrpcCodeName(s.error_code()));
    return s;
  }

 private:
  ServiceContext& ctx_;
  const char* rpc_;
  absl::Time start_;
  Caller caller_;
  bool authenticated_ = false;
  absl::Status admitted_;
  TenantLimiter::Slot slot_;
};

// Serves a unary method registered as streamed unary: authenticates the caller before reading the
// request (UNAUTHENTICATED), reads it (a request that does not parse is answered with its
// INVALID_ARGUMENT and counted; while draining, every call gets UNAVAILABLE; one past a size
// limit gets INVALID_ARGUMENT before any work), runs `handle` (whose RpcScope resolves the
// caller again), writes the response.
template <typename Request, typename Response, typename Handle>
grpc::Status ServeUnary(ServiceContext& ctx, const char* rpc, grpc::ServerContext* context,
                        grpc::ServerUnaryStreamer<Request, Response>* stream, Handle handle) {
  if (absl::StatusOr<Caller> caller = CallerOf(ctx, context); !caller.ok()) {
    ctx.metrics->AuthFailure();
    ctx.metrics->Request(rpc, "UNAUTHENTICATED", 0);
    return ToGrpcStatus(caller.status());
  }
  Request request;
  (void)v1::TakeRequestParseError();  // what an earlier call on this thread left behind
  if (!stream->Read(&request)) {
    grpc::Status error = v1::TakeRequestParseError();
    if (error.ok()) error = grpc::Status(grpc::StatusCode::CANCELLED, "no request arrived");
    ctx.metrics->Request(rpc, GrpcCodeName(error.error_code()), 0);
    return error;
  }
  if (absl::Status admitted = AdmitNewWork(ctx); !admitted.ok()) {
    ctx.metrics->Request(rpc, "UNAVAILABLE", 0);
    return ToGrpcStatus(admitted);
  }
  if (absl::Status bounded = CheckRequest(request, ctx.limits); !bounded.ok()) {
    ctx.metrics->Request(rpc, "INVALID_ARGUMENT", 0);
    return ToGrpcStatus(bounded);
  }
  Response response;
  grpc::Status status = handle(context, &request, &response);
  if (status.ok() && !stream->Write(response)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  }
  return status;
}

// The request's deadline and cancellation as the server core sees them.
inline RequestControl ControlOf(grpc::ServerContext* context) {
  RequestControl control;
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    control.deadline = absl::FromChrono(deadline);
  }
  control.cancelled = [context] { return context->IsCancelled(); };
  return control;
}

}  // namespace mnemo::server
