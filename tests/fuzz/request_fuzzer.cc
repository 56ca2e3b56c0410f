// Every mnemo.v1 request type from raw bytes through the server's own path: a real server (the
// services of server/, a tiny model without tokenizer, fuzz_model.h) in this process, reached over
// gRPC's in-process transport, so each message is parsed by proto/mnemo/v1/request_parsing and
// validated and run by the services exactly as a network request would be.
//
// Input: byte 0 picks the method (kMethods). For unary and server-streaming methods the rest is
// the request message; for client-streaming ones (ImportSession, Ingest) it is a sequence of
// messages, each a little-endian u16 length and that many bytes. Every occurrence of the 32 bytes
// kSessionPlaceholder is replaced by the id of a session the harness creates before each input
// (a fuzzer cannot guess the server's random ids); every session is deleted afterwards.
// Every call must end with a status other than UNKNOWN, INTERNAL or DEADLINE_EXCEEDED.
//
// MNEMO_FUZZ_WRITE_SEEDS=DIR writes one or more valid requests per method into DIR and exits.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "google/protobuf/stubs/logging.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "grpcpp/impl/codegen/rpc_method.h"
#include "grpcpp/impl/codegen/sync_stream.h"
#include "grpcpp/support/byte_buffer.h"
#include "mnemo/v1/mnemo.grpc.pb.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/scheduler.h"
#include "server/service_context.h"
#include "server/services.h"
#include "server/session_manager.h"
#include "tests/fuzz/fuzz_model.h"
#include "tests/fuzz/request_input.h"

namespace {

using grpc::internal::RpcMethod;
namespace v1 = mnemo::v1;

constexpr char kSessionPlaceholder[] = "ffffffffffffffffffffffffffffffff";
constexpr size_t kIdBytes = sizeof(kSessionPlaceholder) - 1;

struct Method {
  const char* path;
  RpcMethod::RpcType type;
};
const Method kMethods[] = {
    {"/mnemo.v1.ModelService/ListModels", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.ModelService/GetModel", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.ModelService/Tokenize", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.ModelService/Detokenize", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.SessionService/CreateSession", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.SessionService/GetSession", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.SessionService/ListSessions", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.SessionService/DeleteSession", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.SessionService/ForkSession", RpcMethod::NORMAL_RPC},
    {"/mnemo.v1.SessionService/ExportSession", RpcMethod::SERVER_STREAMING},
    {"/mnemo.v1.SessionService/ImportSession", RpcMethod::CLIENT_STREAMING},
    {"/mnemo.v1.InferenceService/Ingest", RpcMethod::BIDI_STREAMING},
    {"/mnemo.v1.InferenceService/Generate", RpcMethod::SERVER_STREAMING},
    {"/mnemo.v1.InferenceService/Score", RpcMethod::NORMAL_RPC},
};
constexpr size_t kNumMethods = sizeof(kMethods) / sizeof(kMethods[0]);

void Die(const std::string& what) {
  std::fprintf(stderr, "request_fuzzer: %s\n", what.c_str());
  std::abort();
}

// The server: what mnemo-server's main assembles, without a listening port.
struct Server {
  mnemo::server::Metrics metrics;
  std::unique_ptr<mnemo::server::ModelRegistry> models;
  std::unique_ptr<mnemo::server::SessionManager> sessions;
  mnemo::server::ServiceContext ctx;
  std::unique_ptr<mnemo::server::ModelServiceImpl> model_service;
  std::unique_ptr<mnemo::server::SessionServiceImpl> session_service;
  std::unique_ptr<mnemo::server::InferenceServiceImpl> inference_service;
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::SessionService::Stub> sessions_stub;
  std::unique_ptr<v1::InferenceService::Stub> inference_stub;
};

Server& GetServer() {
  static Server* s = [] {
    // Protobuf logs every string field with invalid UTF-8; request_parsing still captures the
    // message (it installs its handler in front of this one), nothing is printed.
    google::protobuf::SetLogHandler(nullptr);
    auto* s = new Server;
    mnemo::server::SchedulerOptions scheduling;
    scheduling.batch_wait = absl::ZeroDuration();
    auto models = mnemo::server::ModelRegistry::Load({{"tiny", mnemo::fuzz::TinyCheckpointDir()}},
                                                     "cpu", 0, scheduling, &s->metrics);
    if (!models.ok()) Die("loading the tiny model: " + models.status().ToString());
    s->models = std::move(*models);
    mnemo::server::SessionManagerOptions options;
    options.max_sessions = 64;
    options.models = s->models.get();
    s->sessions = std::make_unique<mnemo::server::SessionManager>(options, &s->metrics);
    s->ctx.models = s->models.get();
    s->ctx.sessions = s->sessions.get();
    s->ctx.metrics = &s->metrics;
    // Small enough that the longest valid request runs in milliseconds under ASan.
    s->ctx.limits.max_generate_tokens = 32;
    s->ctx.limits.max_input_tokens = 4096;
    s->ctx.limits.max_session_ttl = options.max_ttl;
    s->model_service = std::make_unique<mnemo::server::ModelServiceImpl>(s->ctx);
    s->session_service = std::make_unique<mnemo::server::SessionServiceImpl>(s->ctx);
    s->inference_service = std::make_unique<mnemo::server::InferenceServiceImpl>(s->ctx);
    grpc::ServerBuilder builder;
    // Enough polling threads that a streaming handler never waits for one to be started.
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 4);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 16);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::CQ_TIMEOUT_MSEC, 5);
    builder.RegisterService(s->model_service.get());
    builder.RegisterService(s->session_service.get());
    builder.RegisterService(s->inference_service.get());
    s->server = builder.BuildAndStart();
    if (s->server == nullptr) Die("the in-process server did not start");
    s->channel = s->server->InProcessChannel(grpc::ChannelArguments());
    s->sessions_stub = v1::SessionService::NewStub(s->channel);
    s->inference_stub = v1::InferenceService::NewStub(s->channel);
    return s;
  }();
  return *s;
}

void WithDeadline(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
}

void CheckStatus(const char* method, const grpc::Status& status) {
  const grpc::StatusCode code = status.error_code();
  if (code == grpc::StatusCode::UNKNOWN || code == grpc::StatusCode::INTERNAL ||
      code == grpc::StatusCode::DEADLINE_EXCEEDED) {
    Die(std::string(method) + " answered " + std::to_string(code) + ": " + status.error_message());
  }
}

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

// The messages of one input (see the file comment).
std::vector<std::string> Messages(const Method& m, const std::string& rest) {
  return mnemo::fuzz::RequestMessages(
      m.type == RpcMethod::CLIENT_STREAMING || m.type == RpcMethod::BIDI_STREAMING, rest);
}

grpc::Status Call(Server& s, const Method& m, const std::vector<std::string>& messages) {
  const RpcMethod method(m.path, m.type);
  grpc::ClientContext context;
  WithDeadline(context);
  grpc::ByteBuffer response;
  switch (m.type) {
    case RpcMethod::NORMAL_RPC:
      return grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
          s.channel.get(), method, &context, Buffer(messages[0]), &response);
    case RpcMethod::SERVER_STREAMING: {
      std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
          grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
              s.channel.get(), method, &context, Buffer(messages[0])));
      while (reader->Read(&response)) {
      }
      return reader->Finish();
    }
    case RpcMethod::CLIENT_STREAMING: {
      std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
          grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(s.channel.get(), method,
                                                                        &context, &response));
      for (const std::string& message : messages) {
        if (!writer->Write(Buffer(message))) break;
      }
      writer->WritesDone();
      return writer->Finish();
    }
    case RpcMethod::BIDI_STREAMING: {
      std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
          grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
              s.channel.get(), method, &context));
      for (const std::string& message : messages) {
        if (!stream->Write(Buffer(message))) break;
        if (!stream->Read(&response)) break;  // one progress message per request message
      }
      stream->WritesDone();
      while (stream->Read(&response)) {
      }
      return stream->Finish();
    }
    default:
      Die("unknown method type");
  }
  return grpc::Status::OK;
}

// A session holding a few tokens, through the real API.
std::string CreateSession(Server& s) {
  v1::CreateSessionRequest request;
  v1::Session session;
  grpc::ClientContext context;
  WithDeadline(context);
  const grpc::Status created = s.sessions_stub->CreateSession(&context, request, &session);
  if (!created.ok()) Die("CreateSession: " + created.error_message());
  grpc::ClientContext ingest_context;
  WithDeadline(ingest_context);
  auto stream = s.inference_stub->Ingest(&ingest_context);
  v1::IngestRequest ingest;
  ingest.set_session_id(session.id());
  for (int32_t id : {1, 5, 9, 13, 17, 21, 25, 29, 33, 2, 6}) ingest.mutable_ids()->add_ids(id);
  v1::IngestProgress progress;
  if (!stream->Write(ingest) || !stream->Read(&progress)) Die("Ingest to the fresh session failed");
  stream->WritesDone();
  while (stream->Read(&progress)) {
  }
  const grpc::Status ingested = stream->Finish();
  if (!ingested.ok()) Die("Ingest: " + ingested.error_message());
  if (session.id().size() != kIdBytes) Die("session ids are not " + std::to_string(kIdBytes));
  return session.id();
}

void DeleteAllSessions(Server& s) {
  for (int round = 0; round < 4; ++round) {
    v1::ListSessionsRequest request;
    request.set_page_size(1000);
    v1::ListSessionsResponse list;
    grpc::ClientContext context;
    WithDeadline(context);
    const grpc::Status listed = s.sessions_stub->ListSessions(&context, request, &list);
    if (!listed.ok()) Die("ListSessions: " + listed.error_message());
    if (list.sessions().empty()) return;
    for (const v1::Session& session : list.sessions()) {
      v1::DeleteSessionRequest del;
      del.set_session_id(session.id());
      v1::DeleteSessionResponse deleted;
      grpc::ClientContext del_context;
      WithDeadline(del_context);
      (void)s.sessions_stub->DeleteSession(&del_context, del, &deleted);
    }
  }
  Die("sessions remain after four rounds of deleting them");
}

void WriteSeed(const char* dir, const std::string& name, size_t method,
               const std::vector<std::string>& messages) {
  std::string bytes(1, static_cast<char>(method));
  const Method& m = kMethods[method];
  if (m.type == RpcMethod::NORMAL_RPC || m.type == RpcMethod::SERVER_STREAMING) {
    bytes += messages[0];
  } else {
    for (const std::string& message : messages) {
      bytes += static_cast<char>(message.size() & 0xff);
      bytes += static_cast<char>(message.size() >> 8);
      bytes += message;
    }
  }
  std::ofstream(std::string(dir) + "/" + name, std::ios::binary) << bytes;
}

v1::TokenIds Ids(std::initializer_list<int32_t> ids) {
  v1::TokenIds out;
  for (int32_t id : ids) out.add_ids(id);
  return out;
}

void WriteSeeds(const char* dir) {
  const std::string id = kSessionPlaceholder;
  auto one = [&](const std::string& name, size_t method, const google::protobuf::Message& m) {
    WriteSeed(dir, name, method, {m.SerializeAsString()});
  };
  one("list_models", 0, v1::ListModelsRequest());
  v1::GetModelRequest get_model;
  get_model.set_name("tiny");
  one("get_model", 1, get_model);
  v1::TokenizeRequest tokenize;
  tokenize.set_text("in the beginning");
  one("tokenize", 2, tokenize);
  v1::DetokenizeRequest detokenize;
  *detokenize.mutable_ids() = Ids({1, 2, 3}).ids();
  one("detokenize", 3, detokenize);
  v1::CreateSessionRequest create;
  create.set_model("tiny");
  create.mutable_ttl()->set_seconds(60);
  (*create.mutable_labels())["book"] = "genesis";
  create.set_memory_tokens(4);
  create.mutable_default_sampling()->set_temperature(0.7f);
  create.mutable_default_sampling()->set_top_k(5);
  create.set_durability(v1::DURABILITY_NONE);
  one("create_session", 4, create);
  v1::GetSessionRequest get;
  get.set_session_id(id);
  one("get_session", 5, get);
  v1::ListSessionsRequest list;
  list.set_page_size(2);
  (*list.mutable_label_filter())["book"] = "genesis";
  one("list_sessions", 6, list);
  v1::DeleteSessionRequest del;
  del.set_session_id(id);
  del.set_expected_state_version(1);
  one("delete_session", 7, del);
  v1::ForkSessionRequest fork;
  fork.set_session_id(id);
  (*fork.mutable_labels())["branch"] = "b";
  fork.mutable_ttl()->set_seconds(30);
  one("fork_session", 8, fork);
  v1::ExportSessionRequest exp;
  exp.set_session_id(id);
  one("export_session", 9, exp);
  v1::GenerateRequest generate;
  generate.set_session_id(id);
  *generate.mutable_ids() = Ids({4, 8});
  generate.set_max_tokens(5);
  generate.mutable_sampling()->set_temperature(0.9f);
  generate.mutable_sampling()->set_top_p(0.8f);
  generate.mutable_sampling()->set_seed(3);
  generate.add_stop_ids(7);
  generate.set_top_logprobs(2);
  generate.set_logprobs(true);
  generate.set_commit(v1::COMMIT_MODE_KEEP_PROMPT);
  one("generate_session", 12, generate);
  v1::GenerateRequest one_shot;
  *one_shot.mutable_ids() = Ids({3, 1, 4, 1, 5});
  one_shot.set_max_tokens(3);
  one_shot.set_ignore_eos(true);
  one_shot.set_commit(v1::COMMIT_MODE_SCRATCH);
  one("generate_one_shot", 12, one_shot);
  v1::ScoreRequest score;
  score.set_session_id(id);
  *score.mutable_ids() = Ids({9, 2, 6, 5, 3});
  score.set_commit(true);
  one("score_session", 13, score);
  v1::ScoreRequest score_text;
  score_text.set_model("tiny");
  score_text.set_text("a text the model cannot tokenize");
  one("score_text", 13, score_text);

  v1::IngestRequest first, second, third;
  first.set_session_id(id);
  first.set_expected_state_version(1);
  *first.mutable_ids() = Ids({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  *second.mutable_ids() = Ids({12, 13});
  third.set_text("text");
  WriteSeed(dir, "ingest", 11,
            {first.SerializeAsString(), second.SerializeAsString(), third.SerializeAsString()});

  // Import: the export of a real session, in two chunks, as a new session and onto one.
  Server& s = GetServer();
  const std::string real = CreateSession(s);
  v1::ExportSessionRequest export_real;
  export_real.set_session_id(real);
  grpc::ClientContext context;
  auto reader = s.sessions_stub->ExportSession(&context, export_real);
  std::string snapshot;
  v1::SessionSnapshotChunk chunk;
  while (reader->Read(&chunk)) snapshot += chunk.data();
  if (!reader->Finish().ok()) Die("ExportSession for the seeds failed");
  v1::ImportSessionRequest import_first, import_rest;
  (*import_first.mutable_labels())["imported"] = "yes";
  import_first.set_data(snapshot.substr(0, snapshot.size() / 2));
  import_rest.set_data(snapshot.substr(snapshot.size() / 2));
  WriteSeed(dir, "import_new", 10,
            {import_first.SerializeAsString(), import_rest.SerializeAsString()});
  import_first.set_session_id(id);
  import_first.set_expected_state_version(1);
  WriteSeed(dir, "import_onto", 10,
            {import_first.SerializeAsString(), import_rest.SerializeAsString()});
  std::exit(0);
}

}  // namespace

// gRPC's synchronous server starts and ends polling threads while calls run; a thread object (and
// its thread-local destructor list) it has just made or retired is, for a moment, referenced from
// nowhere LeakSanitizer looks, and libFuzzer checks for leaks after every input that allocated
// more than it freed.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:grpc::ThreadManager::MainWorkLoop\nleak:grpc::ThreadManager::MarkAsCompleted\n"
         "leak:grpc_core::Thread::Thread\nleak:__cxa_thread_atexit_impl\n";
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  GetServer();
  if (const char* dir = std::getenv("MNEMO_FUZZ_WRITE_SEEDS")) WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Server& s = GetServer();
  const Method& m = kMethods[data[0] % kNumMethods];
  std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string session;
  if (rest.find(kSessionPlaceholder) != std::string::npos) {
    session = CreateSession(s);
    for (size_t at = rest.find(kSessionPlaceholder); at != std::string::npos;
         at = rest.find(kSessionPlaceholder, at + kIdBytes)) {
      rest.replace(at, kIdBytes, session);
    }
  }
  CheckStatus(m.path, Call(s, m, Messages(m, rest)));
  DeleteAllSessions(s);
  return 0;
}
