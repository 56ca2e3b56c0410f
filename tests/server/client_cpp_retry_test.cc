// The C++ client's retries against a fake replica: a real gRPC server in this process that answers
// each attempt of a method from a script (SESSION_MOVED, DRAINING, a bare UNAVAILABLE, a plain
// ABORTED, or success) with the status details a mnemo server sends, and counts the attempts and
// the x-session-id each carried. No mnemo-server needed.
#include <unistd.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/channel_arguments.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "clients/cpp/mnemo_client.h"

namespace mnemo::client {
namespace {

// A google.rpc.Status with one ErrorInfo detail, as the server sends in grpc-status-details-bin.
std::string StatusDetails(grpc::StatusCode code, const std::string& message,
                          const std::string& reason) {
  v1::ErrorInfo info;
  info.set_reason(reason);
  info.set_domain("mnemo.v1");
  v1::RpcStatus status;
  status.set_code(code);
  status.set_message(message);
  google::protobuf::Any* detail = status.add_details();
  detail->set_type_url("type.googleapis.com/google.rpc.ErrorInfo");
  detail->set_value(info.SerializeAsString());
  return status.SerializeAsString();
}

// What one attempt gets.
grpc::Status Outcome(const std::string& name) {
  if (name == "moved") {
    return grpc::Status(grpc::StatusCode::ABORTED, "session moved",
                        StatusDetails(grpc::StatusCode::ABORTED, "session moved", kSessionMoved));
  }
  if (name == "draining") {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining",
                        StatusDetails(grpc::StatusCode::UNAVAILABLE, "draining", kDraining));
  }
  if (name == "unavailable") return grpc::Status(grpc::StatusCode::UNAVAILABLE, "reset");
  if (name == "aborted") return grpc::Status(grpc::StatusCode::ABORTED, "version 4 != 3");
  if (name == "not_found") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no session");
  return grpc::Status::OK;
}

class FakeReplica final : public v1::ModelService::Service,
                          public v1::SessionService::Service,
                          public v1::InferenceService::Service {
 public:
  void Script(const std::string& method, std::vector<std::string> outcomes) {
    std::lock_guard<std::mutex> lock(mu_);
    scripts_[method] = std::deque<std::string>(outcomes.begin(), outcomes.end());
  }
  int Attempts(const std::string& method) {
    std::lock_guard<std::mutex> lock(mu_);
    return attempts_[method];
  }
  std::string LastSessionHeader(const std::string& method) {
    std::lock_guard<std::mutex> lock(mu_);
    return session_header_[method];
  }
  std::vector<std::vector<std::string>> IngestTexts() {
    std::lock_guard<std::mutex> lock(mu_);
    return ingest_texts_;
  }

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    response->add_models()->set_name("tiny");
    return Next("ListModels", context);
  }
  grpc::Status CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest*,
                             v1::Session* response) override {
    response->set_id("s1");
    return Next("CreateSession", context);
  }
  grpc::Status GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                          v1::Session* response) override {
    response->set_id(request->session_id());
    return Next("GetSession", context);
  }
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override {
    return Next("DeleteSession", context);
  }
  grpc::Status ForkSession(grpc::ServerContext* context, const v1::ForkSessionRequest*,
                           v1::Session* response) override {
    response->set_id("child");
    return Next("ForkSession", context);
  }
  grpc::Status Score(grpc::ServerContext* context, const v1::ScoreRequest*,
                     v1::ScoreResponse* response) override {
    response->set_total_bits(1.5);
    return Next("Score", context);
  }
  grpc::Status Ingest(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::IngestProgress, v1::IngestRequest>* stream) override {
    std::vector<std::string> texts;
    v1::IngestRequest request;
    while (stream->Read(&request)) texts.push_back(request.text());
    {
      std::lock_guard<std::mutex> lock(mu_);
      ingest_texts_.push_back(texts);
    }
    v1::IngestProgress progress;
    progress.set_tokens_ingested(1);
    stream->Write(progress);  // progress before the answer, as the server sends it
    const grpc::Status status = Next("Ingest", context);
    if (!status.ok()) return status;
    progress.set_tokens_ingested(static_cast<int64_t>(texts.size()));
    progress.set_done(true);
    stream->Write(progress);
    return status;
  }
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest*,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    const std::string outcome = NextName("Generate", context);
    v1::GenerateEvent event;
    if (outcome.rfind("late_", 0) == 0) {  // one event, then the error
      event.mutable_delta()->set_text("partial");
      writer->Write(event);
      return Outcome(outcome.substr(5));
    }
    if (outcome != "ok") return Outcome(outcome);
    event.mutable_delta()->set_text("hello");
    writer->Write(event);
    event.Clear();
    event.mutable_final()->set_finish_reason(v1::FINISH_REASON_LENGTH);
    writer->Write(event);
    return grpc::Status::OK;
  }

 private:
  std::string NextName(const std::string& method, grpc::ServerContext* context) {
    std::lock_guard<std::mutex> lock(mu_);
    ++attempts_[method];
    const auto& metadata = context->client_metadata();
    auto it = metadata.find("x-session-id");
    session_header_[method] =
        it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
    std::deque<std::string>& script = scripts_[method];
    if (script.empty()) return "ok";
    std::string next = script.front();
    script.pop_front();
    return next;
  }
  grpc::Status Next(const std::string& method, grpc::ServerContext* context) {
    return Outcome(NextName(method, context));
  }

  std::mutex mu_;
  std::map<std::string, std::deque<std::string>> scripts_;
  std::map<std::string, int> attempts_;
  std::map<std::string, std::string> session_header_;
  std::vector<std::vector<std::string>> ingest_texts_;
};

std::unique_ptr<grpc::Server> StartServer(FakeReplica* replica, int* port) {
  grpc::ServerBuilder builder;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", *port), grpc::InsecureServerCredentials(),
                           port);
  builder.RegisterService(static_cast<v1::ModelService::Service*>(replica));
  builder.RegisterService(static_cast<v1::SessionService::Service*>(replica));
  builder.RegisterService(static_cast<v1::InferenceService::Service*>(replica));
  return builder.BuildAndStart();
}

RetryPolicy Fast() {
  RetryPolicy policy;
  policy.max_attempts = 5;
  policy.initial_backoff = absl::Milliseconds(5);
  policy.max_backoff = absl::Milliseconds(20);
  return policy;
}

class ClientRetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int port = 0;
    server_ = StartServer(&replica_, &port);
    ASSERT_NE(server_, nullptr);
    target_ = absl::StrCat("127.0.0.1:", port);
    client_ = std::make_unique<Client>(*Client::Connect(target_, Fast()));
    client_->set_timeout(absl::Seconds(10));
  }
  void TearDown() override { server_->Shutdown(); }

  FakeReplica replica_;
  std::unique_ptr<grpc::Server> server_;
  std::string target_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientRetryTest, SessionMovedIsRetried) {
  replica_.Script("GetSession", {"moved", "moved"});
  absl::StatusOr<v1::Session> session = client_->GetSession("s1");
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(replica_.Attempts("GetSession"), 3);
}

TEST_F(ClientRetryTest, TheReasonOfARefusalIsReadable) {
  replica_.Script("GetSession", {"moved"});
  client_->set_retry_policy(RetryPolicy::Off());
  const absl::Status status = client_->GetSession("s1").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(ErrorReason(status), kSessionMoved);
  ASSERT_TRUE(GetErrorInfo(status).has_value());
  EXPECT_EQ(GetErrorInfo(status)->domain(), "mnemo.v1");
  EXPECT_EQ(replica_.Attempts("GetSession"), 1);
}

TEST_F(ClientRetryTest, PlainAbortedIsNotRetried) {
  replica_.Script("GetSession", {"aborted"});
  const absl::Status status = client_->GetSession("s1").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(IsOutcomeUnknown(status));
  EXPECT_EQ(replica_.Attempts("GetSession"), 1);
}

TEST_F(ClientRetryTest, DrainingIsRetriedEvenForAnUnpinnedChange) {
  replica_.Script("CreateSession", {"draining"});
  EXPECT_TRUE(client_->CreateSession().ok());
  EXPECT_EQ(replica_.Attempts("CreateSession"), 2);
}

TEST_F(ClientRetryTest, MaxAttemptsBoundsTheRetries) {
  replica_.Script("ListModels", std::vector<std::string>(10, "moved"));
  EXPECT_EQ(client_->ListModels().status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(replica_.Attempts("ListModels"), 5);
}

TEST_F(ClientRetryTest, TheDeadlineBoundsTheRetries) {
  replica_.Script("ListModels", std::vector<std::string>(10, "moved"));
  RetryPolicy slow;
  slow.max_attempts = 10;
  slow.initial_backoff = slow.max_backoff = absl::Seconds(1);
  client_->set_retry_policy(slow);
  client_->set_timeout(absl::Milliseconds(300));
  const absl::Time start = absl::Now();
  EXPECT_FALSE(client_->ListModels().ok());
  // The first backoff (0.5 to 1 s) would end past the deadline: no second attempt.
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_EQ(replica_.Attempts("ListModels"), 1);
}

TEST_F(ClientRetryTest, ReadOnlyCallsAreRetriedAfterATransportFailure) {
  replica_.Script("Score", {"unavailable", "unavailable"});
  v1::ScoreRequest request;
  request.set_session_id("s1");
  request.set_text("x");
  EXPECT_TRUE(client_->Score(request).ok());
  EXPECT_EQ(replica_.Attempts("Score"), 3);
}

TEST_F(ClientRetryTest, UnpinnedChangesAreNotRetriedAfterATransportFailure) {
  v1::ScoreRequest score;
  score.set_session_id("s1");
  score.set_text("x");
  score.set_commit(true);
  replica_.Script("Score", {"unavailable"});
  EXPECT_EQ(client_->Score(score).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(replica_.Attempts("Score"), 1);
  replica_.Script("CreateSession", {"unavailable"});
  EXPECT_EQ(client_->CreateSession().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(replica_.Attempts("CreateSession"), 1);
  v1::ForkSessionRequest fork;
  fork.set_session_id("s1");
  fork.set_expected_state_version(3);  // pinning the source does not make a fork repeatable
  replica_.Script("ForkSession", {"unavailable"});
  EXPECT_EQ(client_->ForkSession(fork).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(replica_.Attempts("ForkSession"), 1);
}

TEST_F(ClientRetryTest, APinnedChangeIsRetriedAndARefusedRetryIsOutcomeUnknown) {
  v1::ScoreRequest score;
  score.set_session_id("s1");
  score.set_text("x");
  score.set_commit(true);
  score.set_expected_state_version(3);
  replica_.Script("Score", {"unavailable"});
  EXPECT_TRUE(client_->Score(score).ok());
  EXPECT_EQ(replica_.Attempts("Score"), 2);

  replica_.Script("Score", {"unavailable", "aborted"});
  const absl::Status status = client_->Score(score).status();
  EXPECT_TRUE(IsOutcomeUnknown(status)) << status;
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);  // the original failure
  EXPECT_NE(status.message().find("outcome unknown"), std::string::npos) << status;
  EXPECT_EQ(replica_.Attempts("Score"), 4);

  replica_.Script("DeleteSession", {"unavailable", "not_found"});
  EXPECT_TRUE(IsOutcomeUnknown(client_->DeleteSession("s1", 3)));
}

TEST_F(ClientRetryTest, IngestIsRetriedBySendingTheChunksAgain) {
  replica_.Script("Ingest", {"moved"});
  int next = 0;
  ChunkReader reader = [&next]() -> absl::StatusOr<std::optional<std::string>> {
    if (next == 4) return std::nullopt;
    return absl::StrCat("chunk ", next++, " ");
  };
  absl::StatusOr<v1::IngestProgress> done = client_->Ingest("s1", reader);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->tokens_ingested(), 4);
  const std::vector<std::vector<std::string>> texts = replica_.IngestTexts();
  ASSERT_EQ(texts.size(), 2u);
  EXPECT_EQ(texts[0], texts[1]);
  EXPECT_EQ(texts[1], (std::vector<std::string>{"chunk 0 ", "chunk 1 ", "chunk 2 ", "chunk 3 "}));
}

TEST_F(ClientRetryTest, IngestBeyondTheReplayBufferIsNotRetried) {
  RetryPolicy small = Fast();
  small.replay_buffer_bytes = 64;
  client_->set_retry_policy(small);
  replica_.Script("Ingest", {"moved"});
  int next = 0;
  ChunkReader reader = [&next]() -> absl::StatusOr<std::optional<std::string>> {
    if (next++ == 3) return std::nullopt;
    return std::string(40, 'x');
  };
  EXPECT_EQ(client_->Ingest("s1", reader).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(replica_.Attempts("Ingest"), 1);
}

TEST_F(ClientRetryTest, GenerateIsRetriedOnlyBeforeItsFirstEvent) {
  v1::GenerateRequest request;
  request.set_session_id("s1");
  request.set_text("hi");
  replica_.Script("Generate", {"draining", "moved"});
  std::vector<std::string> seen;
  absl::StatusOr<v1::Final> final_event =
      client_->Generate(request, [&seen](const v1::GenerateEvent& e) {
        if (e.has_delta()) seen.push_back(e.delta().text());
      });
  ASSERT_TRUE(final_event.ok()) << final_event.status();
  EXPECT_EQ(replica_.Attempts("Generate"), 3);
  EXPECT_EQ(seen, std::vector<std::string>{"hello"});

  replica_.Script("Generate", {"late_moved"});
  seen.clear();
  EXPECT_EQ(client_
                ->Generate(request,
                           [&seen](const v1::GenerateEvent& e) {
                             if (e.has_delta()) seen.push_back(e.delta().text());
                           })
                .status()
                .code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(seen, std::vector<std::string>{"partial"});
  EXPECT_EQ(replica_.Attempts("Generate"), 4);
}

TEST_F(ClientRetryTest, EveryCallNamingASessionSendsXSessionId) {
  ASSERT_TRUE(client_->GetSession("s1").ok());
  ASSERT_TRUE(client_->DeleteSession("s1").ok());
  ASSERT_TRUE(client_->ForkSession("s1").ok());
  v1::ScoreRequest score;
  score.set_session_id("s1");
  score.set_text("x");
  ASSERT_TRUE(client_->Score(score).ok());
  ChunkReader empty = []() -> absl::StatusOr<std::optional<std::string>> { return std::nullopt; };
  ASSERT_TRUE(client_->Ingest("s1", empty).ok());
  v1::GenerateRequest generate;
  generate.set_session_id("s1");
  ASSERT_TRUE(client_->Generate(generate).ok());
  for (const char* method :
       {"GetSession", "DeleteSession", "ForkSession", "Score", "Ingest", "Generate"}) {
    EXPECT_EQ(replica_.LastSessionHeader(method), "s1") << method;
  }
  ASSERT_TRUE(client_->CreateSession().ok());
  EXPECT_EQ(replica_.LastSessionHeader("CreateSession"), "");
}

int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(ClientRetryConnectTest, ACallThatNeverReachedAServerIsRetriedEvenWhenUnpinned) {
  int port = ClosedPort();
  const std::string target = absl::StrCat("127.0.0.1:", port);
  grpc::ChannelArguments args;  // reconnect quickly once the server is up
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 100);
  RetryPolicy patient;
  patient.max_attempts = 40;
  patient.initial_backoff = absl::Milliseconds(50);
  patient.max_backoff = absl::Milliseconds(200);
  Client client(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args),
                patient);
  client.set_timeout(absl::Seconds(10));

  FakeReplica replica;
  std::unique_ptr<grpc::Server> server;
  std::thread later([&] {
    absl::SleepFor(absl::Milliseconds(300));
    server = StartServer(&replica, &port);
  });
  absl::StatusOr<v1::Session> session = client.CreateSession();
  later.join();
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(replica.Attempts("CreateSession"), 1);
  server->Shutdown();
}

}  // namespace
}  // namespace mnemo::client
