// A user's program built against the installed mnemo_client package: lists the models, opens a
// session, streams a short document into it and generates a few tokens.
//   consumer HOST:PORT
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "mnemo/client/mnemo_client.h"

namespace {

int Fail(const char* what, const absl::Status& status) {
  std::cerr << "consumer: " << what << ": " << status << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: consumer HOST:PORT\n";
    return 2;
  }
  absl::StatusOr<mnemo::client::Client> client = mnemo::client::Client::Connect(argv[1]);
  if (!client.ok()) return Fail("connect", client.status());
  client->set_timeout(absl::Seconds(60));

  absl::StatusOr<std::vector<mnemo::v1::Model>> models = client->ListModels();
  if (!models.ok()) return Fail("ListModels", models.status());
  if (models->empty()) return Fail("ListModels", absl::NotFoundError("no models"));

  absl::StatusOr<mnemo::v1::Session> session = client->CreateSession();
  if (!session.ok()) return Fail("CreateSession", session.status());

  std::vector<std::string> chunks = {"The quick brown fox ", "jumps over the lazy dog. "};
  size_t next = 0;
  absl::StatusOr<mnemo::v1::IngestProgress> ingested =
      client->Ingest(session->id(), [&]() -> absl::StatusOr<std::optional<std::string>> {
        if (next == chunks.size()) return std::nullopt;
        return chunks[next++];
      });
  if (!ingested.ok()) return Fail("Ingest", ingested.status());

  mnemo::v1::GenerateRequest request;
  request.set_session_id(session->id());
  request.set_text("The end");
  request.set_max_tokens(4);
  request.set_ignore_eos(true);
  std::string text;
  absl::StatusOr<mnemo::v1::Final> final_event =
      client->Generate(request, [&text](const mnemo::v1::GenerateEvent& event) {
        if (event.has_delta()) text += event.delta().text();
      });
  if (!final_event.ok()) return Fail("Generate", final_event.status());

  std::printf("model %s; session %s; ingested %lld tokens; generated %lld tokens\n",
              models->front().name().c_str(), session->id().c_str(),
              static_cast<long long>(ingested->tokens_ingested()),
              static_cast<long long>(final_event->usage().generated_tokens()));
  return client->DeleteSession(session->id()).ok() ? 0 : 1;
}
