// The mnemo.v1 gRPC services (synchronous API: each call runs on a gRPC thread and blocks in the
// scheduler while its steps run in shared forward passes). Unary methods are served as streamed
// unary methods so a request that does not parse is answered with INVALID_ARGUMENT naming the
// field (proto/mnemo/v1/request_parsing.h); Handle* hold their logic.
#pragma once

#include "mnemo/v1/mnemo.grpc.pb.h"
#include "server/service_context.h"

namespace mnemo::server {

class ModelServiceImpl final : public v1::ModelService::StreamedUnaryService {
 public:
  explicit ModelServiceImpl(ServiceContext& ctx) : ctx_(ctx) {}

  grpc::Status StreamedListModels(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::ListModelsRequest, v1::ListModelsResponse>* stream) override;
  grpc::Status StreamedGetModel(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::GetModelRequest, v1::Model>* stream) override;
  grpc::Status StreamedTokenize(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::TokenizeRequest, v1::TokenizeResponse>* stream) override;
  grpc::Status StreamedDetokenize(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::DetokenizeRequest, v1::DetokenizeResponse>* stream) override;

 private:
  grpc::Status HandleListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                                v1::ListModelsResponse* response);
  grpc::Status HandleGetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                              v1::Model* response);
  grpc::Status HandleTokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                              v1::TokenizeResponse* response);
  grpc::Status HandleDetokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                                v1::DetokenizeResponse* response);
  ServiceContext& ctx_;
};

class SessionServiceImpl final : public v1::SessionService::StreamedUnaryService {
 public:
  explicit SessionServiceImpl(ServiceContext& ctx) : ctx_(ctx) {}

  grpc::Status StreamedCreateSession(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::CreateSessionRequest, v1::Session>* stream) override;
  grpc::Status StreamedGetSession(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::GetSessionRequest, v1::Session>* stream) override;
  grpc::Status StreamedListSessions(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::ListSessionsRequest, v1::ListSessionsResponse>* stream)
      override;
  grpc::Status StreamedDeleteSession(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::DeleteSessionRequest, v1::DeleteSessionResponse>* stream)
      override;
  grpc::Status StreamedForkSession(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::ForkSessionRequest, v1::Session>* stream) override;
  grpc::Status ExportSession(grpc::ServerContext* context, const v1::ExportSessionRequest* request,
                             grpc::ServerWriter<v1::SessionSnapshotChunk>* writer) override;
  grpc::Status ImportSession(grpc::ServerContext* context,
                             grpc::ServerReader<v1::ImportSessionRequest>* reader,
                             v1::Session* response) override;

 private:
  grpc::Status HandleCreateSession(grpc::ServerContext* context,
                                   const v1::CreateSessionRequest* request, v1::Session* response);
  grpc::Status HandleGetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                                v1::Session* response);
  grpc::Status HandleListSessions(grpc::ServerContext* context,
                                  const v1::ListSessionsRequest* request,
                                  v1::ListSessionsResponse* response);
  grpc::Status HandleDeleteSession(grpc::ServerContext* context,
                                   const v1::DeleteSessionRequest* request,
                                   v1::DeleteSessionResponse* response);
  grpc::Status HandleForkSession(grpc::ServerContext* context,
                                 const v1::ForkSessionRequest* request, v1::Session* response);
  ServiceContext& ctx_;
};

class InferenceServiceImpl final : public v1::InferenceService::StreamedUnaryService {
 public:
  explicit InferenceServiceImpl(ServiceContext& ctx) : ctx_(ctx) {}
  grpc::Status Ingest(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::IngestProgress, v1::IngestRequest>* stream) override;
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override;
  // server/encode_service.cc
  grpc::Status Encode(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::EncodeResponse, v1::EncodeRequest>* stream) override;

  grpc::Status StreamedScore(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::ScoreRequest, v1::ScoreResponse>* stream) override;

 private:
  grpc::Status HandleScore(grpc::ServerContext* context, const v1::ScoreRequest* request,
                           v1::ScoreResponse* response);
  ServiceContext& ctx_;
};

}  // namespace mnemo::server
