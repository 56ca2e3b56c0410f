// How gRPC turns the bytes of a mnemo.v1 request into a message. gRPC's default answers a request
// that does not parse (malformed bytes, or a string field holding invalid UTF-8, which proto3
// refuses) with INTERNAL and no message; the contract promises INVALID_ARGUMENT naming the field.
// These SerializationTraits specialisations parse each request type with ParseRequest. A
// server-streaming handler returns its status to the client directly; where gRPC only reports
// "no message" (a stream's Read, and so the server's unary methods, which are served as streamed
// unary methods for this reason), TakeRequestParseError tells the handler why.
//
// The specialisations must be visible wherever the stubs are instantiated (the generated code
// included), so mnemo_proto force-includes this header into every translation unit that uses it
// (proto/CMakeLists.txt).
#pragma once

#include "grpcpp/impl/codegen/proto_buffer_reader.h"
#include "grpcpp/impl/codegen/proto_buffer_writer.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/impl/codegen/serialization_traits.h"
#include "mnemo/v1/mnemo.pb.h"

namespace mnemo::v1 {

// Parses `buffer` into `message`; INVALID_ARGUMENT with a BadRequest detail (the field holding
// invalid UTF-8 when protobuf names one) when it does not parse.
grpc::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* message);

// The error of this thread's latest ParseRequest (OK if it parsed, or none ran since the last
// call), and clears it. Handlers call it once before their first Read to drop what an earlier
// request on the same thread left behind.
grpc::Status TakeRequestParseError();

}  // namespace mnemo::v1

#define MNEMO_V1_REQUEST_PARSING(Type)                                                    \
  template <>                                                                             \
  class grpc::SerializationTraits<mnemo::v1::Type, void> {                                \
   public:                                                                                \
    static grpc::Status Serialize(const grpc::protobuf::MessageLite& msg, ByteBuffer* bb, \
                                  bool* own_buffer) {                                     \
      return GenericSerialize<ProtoBufferWriter, mnemo::v1::Type>(msg, bb, own_buffer);   \
    }                                                                                     \
    static grpc::Status Deserialize(ByteBuffer* buffer, mnemo::v1::Type* msg) {           \
      return mnemo::v1::ParseRequest(buffer, msg);                                        \
    }                                                                                     \
  };

MNEMO_V1_REQUEST_PARSING(ListModelsRequest)
MNEMO_V1_REQUEST_PARSING(GetModelRequest)
MNEMO_V1_REQUEST_PARSING(TokenizeRequest)
MNEMO_V1_REQUEST_PARSING(DetokenizeRequest)
MNEMO_V1_REQUEST_PARSING(CreateSessionRequest)
MNEMO_V1_REQUEST_PARSING(GetSessionRequest)
MNEMO_V1_REQUEST_PARSING(ListSessionsRequest)
MNEMO_V1_REQUEST_PARSING(DeleteSessionRequest)
MNEMO_V1_REQUEST_PARSING(ForkSessionRequest)
MNEMO_V1_REQUEST_PARSING(ExportSessionRequest)
MNEMO_V1_REQUEST_PARSING(ImportSessionRequest)
MNEMO_V1_REQUEST_PARSING(IngestRequest)
MNEMO_V1_REQUEST_PARSING(GenerateRequest)
MNEMO_V1_REQUEST_PARSING(EncodeRequest)
MNEMO_V1_REQUEST_PARSING(ScoreRequest)

#undef MNEMO_V1_REQUEST_PARSING
