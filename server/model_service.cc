#include "base/status_macros.h"
#include "server/proto_conversion.h"
#include "server/services.h"

namespace mnemo::server {
namespace {

// A model's tokenizer and vocabulary size, decoder or encoder; `name` empty: the default decoder
// or, on a server without one, the first encoder.
struct TokenizerOfModel {
  const engine::api::Tokenizer* tokenizer;
  int64_t vocab_size;
};

absl::StatusOr<TokenizerOfModel> TokenizerOf(const ModelRegistry& models, const std::string& name) {
  std::string found;
  TokenizerOfModel t{};
  if (models.IsEncoder(name) || (name.empty() && models.models().empty())) {
    ASSIGN_OR_RETURN(LoadedEncoder * e, models.FindEncoder(name));
    found = e->name;
    t = {e->tokenizer, e->encoder->config().vocab_size};
  } else {
    ASSIGN_OR_RETURN(LoadedModel * m, models.Find(name));
    found = m->name;
    t = {m->tokenizer, m->model->config().vocab_size};
  }
  if (t.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "model \"" + found +
        "\" has no tokenizer (tokenizer.model, vocab.words or a byte vocabulary): use token ids");
  }
  return t;
}

}  // namespace

grpc::Status ModelServiceImpl::HandleListModels(grpc::ServerContext* context,
                                                const v1::ListModelsRequest*,
                                                v1::ListModelsResponse* response) {
  RpcScope scope(ctx_, "ListModels", context);
  if (absl::Status s = scope.Admit(); !s.ok()) return scope.Finish(s);
  for (const auto& m : ctx_.models->models()) ModelToProto(*m, response->add_models());
  for (const auto& e : ctx_.models->encoders()) EncoderToProto(*e, response->add_models());
  return scope.Finish(absl::OkStatus());
}

grpc::Status ModelServiceImpl::HandleGetModel(grpc::ServerContext* context,
                                              const v1::GetModelRequest* request,
                                              v1::Model* response) {
  RpcScope scope(ctx_, "GetModel", context);
  if (absl::Status s = scope.Admit(); !s.ok()) return scope.Finish(s);
  if (ctx_.models->IsEncoder(request->name())) {
    EncoderToProto(**ctx_.models->FindEncoder(request->name()), response);
    return scope.Finish(absl::OkStatus());
  }
  auto m = ctx_.models->Find(request->name());
  if (m.ok()) ModelToProto(**m, response);
  return scope.Finish(m.status());
}

grpc::Status ModelServiceImpl::HandleTokenize(grpc::ServerContext* context,
                                              const v1::TokenizeRequest* request,
                                              v1::TokenizeResponse* response) {
  RpcScope scope(ctx_, "Tokenize", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    ASSIGN_OR_RETURN(const TokenizerOfModel m, TokenizerOf(*ctx_.models, request->model()));
    auto ids = m.tokenizer->Encode(request->text());
    if (!ids.ok()) return InvalidField("text", std::string(ids.status().message()));
    response->mutable_ids()->Add(ids->begin(), ids->end());
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status ModelServiceImpl::HandleDetokenize(grpc::ServerContext* context,
                                                const v1::DetokenizeRequest* request,
                                                v1::DetokenizeResponse* response) {
  RpcScope scope(ctx_, "Detokenize", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    ASSIGN_OR_RETURN(const TokenizerOfModel m, TokenizerOf(*ctx_.models, request->model()));
    FieldViolations violations;
    CheckTokenIds(request->ids(), m.vocab_size, "ids", violations);
    RETURN_IF_ERROR(violations.ToStatus());
    ASSIGN_OR_RETURN(std::string text,
                     m.tokenizer->Decode({request->ids().begin(), request->ids().end()}));
    response->set_text(std::move(text));
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status ModelServiceImpl::StreamedListModels(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::ListModelsRequest, v1::ListModelsResponse>* stream) {
  return ServeUnary(ctx_, "ListModels", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleListModels(c, req, resp);
  });
}

grpc::Status ModelServiceImpl::StreamedGetModel(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::GetModelRequest, v1::Model>* stream) {
  return ServeUnary(ctx_, "GetModel", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleGetModel(c, req, resp);
  });
}

grpc::Status ModelServiceImpl::StreamedTokenize(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::TokenizeRequest, v1::TokenizeResponse>* stream) {
  return ServeUnary(ctx_, "Tokenize", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleTokenize(c, req, resp);
  });
}

grpc::Status ModelServiceImpl::StreamedDetokenize(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::DetokenizeRequest, v1::DetokenizeResponse>* stream) {
  return ServeUnary(ctx_, "Detokenize", context, stream, [this](auto* c, auto* req, auto* resp) {
    return HandleDetokenize(c, req, resp);
  });
}

}  // namespace mnemo::server
