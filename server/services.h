// The mnemo.v1 gRPC services (synchronous API: each call runs on a gRPC thread and blocks in the
// scheduler while its steps run in shared forward passes).
#pragma once

#include "mnemo/v1/mnemo.grpc.pb.h"
#include "server/service_context.h"

namespace mnemo::server {

class ModelServiceImpl final : public v1::ModelService::Service {
 public:
  explicit ModelServiceImpl(ServiceContext& ctx) : ctx_(ctx) {}
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                        v1::Model* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;

 private:
  ServiceContext& ctx_;
};

class SessionServiceImpl final : public v1::SessionService::Service {
 public:
  explicit SessionServiceImpl(ServiceContext& ctx) : ctx_(ctx) {}
  grpc::Status CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest* request,
                             v1::Session* response) override;
  grpc::Status GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                          v1::Session* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest* request,
                             v1::DeleteSessionResponse* response) override;
  grpc::Status ForkSession(grpc::ServerContext* context, const v1::ForkSessionRequest* request,
                           v1::Session* response) override;

 private:
  ServiceContext& ctx_;
};

class InferenceServiceImpl final : public v1::InferenceService::Service {
 public:
  explicit InferenceServiceImpl(ServiceContext& ctx) : ctx_(ctx) {}
  grpc::Status Ingest(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::IngestProgress, v1::IngestRequest>* stream) override;
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override;
  grpc::Status Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                     v1::ScoreResponse* response) override;

 private:
  ServiceContext& ctx_;
};

}  // namespace mnemo::server
