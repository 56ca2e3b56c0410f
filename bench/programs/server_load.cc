// server_load: a closed-loop load generator for mnemo-server. N sessions, one thread each:
// create a session, ingest a document of random ids, then, once every session has its document,
// generate continuations (SCRATCH, so every request sees the same memory) back to back until the
// time is up. Prints one JSON line: generated tokens per second, time to first token and
// inter-token latency percentiles, errors.
//
//   server_load --target HOST:PORT --sessions N [--seconds S] [--doc-tokens D] [--max-tokens M]
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"

#include "base/flags.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "mnemo/v1/mnemo.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Samples {
  std::mutex mu;
  std::vector<double> ttft_ms, itl_ms;
  int64_t tokens = 0, requests = 0, errors = 0;
  std::string first_error;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

// The measured window: from the moment the last session finished its ingest.
struct Window {
  std::barrier<std::function<void()>>* ready;
  Clock::time_point start, end;
};

void Worker(const std::shared_ptr<grpc::Channel>& channel, int index, int64_t doc_tokens,
            int max_tokens, int64_t vocab, Window& window, Samples& out) {
  auto sessions = mnemo::v1::SessionService::NewStub(channel);
  auto inference = mnemo::v1::InferenceService::NewStub(channel);
  bool arrived = false;
  auto fail = [&](const grpc::Status& s) {
    if (!arrived) window.ready->arrive_and_drop();  // the others must not wait for this one
    std::lock_guard lock(out.mu);
    ++out.errors;
    if (out.first_error.empty()) out.first_error = s.error_message();
  };
  mnemo::v1::Session session;
  {
    grpc::ClientContext ctx;
    const grpc::Status s =
        sessions->CreateSession(&ctx, mnemo::v1::CreateSessionRequest(), &session);
    if (!s.ok()) return fail(s);
  }
  {
    std::mt19937 rng(static_cast<uint32_t>(index));
    grpc::ClientContext ctx;
    auto stream = inference->Ingest(&ctx);
    mnemo::v1::IngestRequest req;
    req.set_session_id(session.id());
    for (int64_t i = 0; i < doc_tokens; ++i) {
      req.mutable_ids()->add_ids(static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab)));
    }
    stream->Write(req);
    stream->WritesDone();
    mnemo::v1::IngestProgress progress;
    while (stream->Read(&progress)) {
    }
    const grpc::Status s = stream->Finish();
    if (!s.ok()) return fail(s);
  }
  arrived = true;
  window.ready->arrive_and_wait();  // every session starts generating together
  std::vector<double> ttft, itl;
  int64_t tokens = 0, requests = 0;
  while (Clock::now() < window.end) {
    mnemo::v1::GenerateRequest req;
    req.set_session_id(session.id());
    req.set_max_tokens(max_tokens);
    req.set_ignore_eos(true);
    req.set_commit(mnemo::v1::COMMIT_MODE_SCRATCH);
    req.mutable_sampling()->set_temperature(0.8f);
    req.mutable_sampling()->set_seed(static_cast<uint64_t>(requests));
    grpc::ClientContext ctx;
    const auto sent = Clock::now();
    auto last = sent;
    bool first = true;
    auto reader = inference->Generate(&ctx, req);
    mnemo::v1::GenerateEvent event;
    while (reader->Read(&event)) {
      if (!event.has_delta() || event.delta().ids_size() == 0) continue;
      const auto now = Clock::now();
      const double ms =
          std::chrono::duration<double, std::milli>(now - (first ? sent : last)).count();
      (first ? ttft : itl).push_back(ms);
      first = false;
      last = now;
      tokens += event.delta().ids_size();
    }
    const grpc::Status s = reader->Finish();
    if (!s.ok()) return fail(s);
    ++requests;
  }
  grpc::ClientContext ctx;
  mnemo::v1::DeleteSessionRequest del;
  del.set_session_id(session.id());
  mnemo::v1::DeleteSessionResponse ignored;
  sessions->DeleteSession(&ctx, del, &ignored);
  std::lock_guard lock(out.mu);
  out.ttft_ms.insert(out.ttft_ms.end(), ttft.begin(), ttft.end());
  out.itl_ms.insert(out.itl_ms.end(), itl.begin(), itl.end());
  out.tokens += tokens;
  out.requests += requests;
}

int Run(int argc, char** argv) {
  auto flags = mnemo::Flags::Parse(argc, argv, 1,
                                   {{"target", true},
                                    {"sessions", true},
                                    {"seconds", true},
                                    {"doc-tokens", true},
                                    {"max-tokens", true}});
  if (!flags.ok()) {
    std::fprintf(stderr, "server_load: %s\n", flags.status().ToString().c_str());
    return 2;
  }
  const std::string target = flags->Get("target", "127.0.0.1:50051");
  const int sessions = static_cast<int>(flags->Int("sessions", 1, 1, 4096).value_or(1));
  const double seconds = flags->Float("seconds", 10).value_or(10);
  const int64_t doc_tokens = flags->Int("doc-tokens", 512, 1, 1 << 24).value_or(512);
  const int max_tokens = static_cast<int>(flags->Int("max-tokens", 32, 1, 1 << 20).value_or(32));

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  mnemo::v1::ListModelsResponse models;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    const grpc::Status s = mnemo::v1::ModelService::NewStub(channel)->ListModels(
        &ctx, mnemo::v1::ListModelsRequest(), &models);
    if (!s.ok() || models.models_size() == 0) {
      std::fprintf(stderr, "server_load: cannot list models at %s: %s\n", target.c_str(),
                   s.error_message().c_str());
      return 1;
    }
  }
  const int64_t vocab = models.models(0).vocab_size();
  Samples samples;
  Window window;
  const auto length = std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
  std::barrier<std::function<void()>> ready(sessions, std::function<void()>([&] {
                                              window.start = Clock::now();
                                              window.end = window.start + length;
                                            }));
  window.ready = &ready;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(sessions));
  for (int i = 0; i < sessions; ++i) {
    threads.emplace_back(Worker, channel, i, doc_tokens, max_tokens, vocab, std::ref(window),
                         std::ref(samples));
  }
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - window.start).count();
  std::printf(
      "%s\n",
      absl::StrFormat(
          "{\"figure\":\"server_load\",\"sessions\":%d,\"seconds\":%.2f,\"doc_tokens\":%d,"
          "\"max_tokens\":%d,\"requests\":%d,\"generated_tokens\":%d,\"tokens_per_s\":%.1f,"
          "\"ttft_p50_ms\":%.3f,\"ttft_p99_ms\":%.3f,\"itl_p50_ms\":%.3f,\"itl_p99_ms\":%.3f,"
          "\"errors\":%d,\"first_error\":\"%s\"}",
          sessions, elapsed, doc_tokens, max_tokens, samples.requests, samples.tokens,
          static_cast<double>(samples.tokens) / elapsed, Percentile(samples.ttft_ms, 0.5),
          Percentile(samples.ttft_ms, 0.99), Percentile(samples.itl_ms, 0.5),
          Percentile(samples.itl_ms, 0.99), samples.errors, samples.first_error)
          .c_str());
  return samples.errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
