// End to end: the C++ client library (clients/cpp) against the real mnemo-server binary.
// The suite makes a tiny checkpoint (tools/make_tiny_model.py), starts $MNEMO_SERVER_BIN once on
// free loopback ports, drives it through mnemo::client::Client (and, when $MNEMO_CLIENT_BIN is
// set, the mnemo-client command line), then stops it with SIGTERM and expects exit status 0.
// TlsConnect starts a second server with mTLS (certificates from /usr/bin/openssl).
// Environment: MNEMO_SERVER_BIN (required), MNEMO_SOURCE_DIR, MNEMO_PYTHON (default
// /usr/bin/python3), MNEMO_CLIENT_BIN (optional).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "clients/cpp/mnemo_client.h"

namespace mnemo::client {
namespace {

constexpr char kModel[] = "tiny";
constexpr int64_t kSegmentTokens = 16;
// The server runs with an auth file: the suite's client is tenant "e2e"; "other" is another
// tenant. The file holds their SHA-256 (printf %s TOKEN | sha256sum).
constexpr char kToken[] = "e2e-tenant-token-1";
constexpr char kOtherToken[] = "e2e-other-tenant-token-2";
constexpr char kAuthFile[] =
    R"({"tenants": [
  {"name": "e2e", "token_sha256": ["364cf95c5d84abfa05a2911eef3e54e8fc4ee9bbc4d6393b7aab0d533915a8dd"]},
  {"name": "other", "token_sha256": ["ab847296f74350bb440f164b6d1592fb8e81e98561c11e8d3683ae1ff6dd5381"]}
]})";

std::string Env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

// Starts argv[0] (a path: no PATH search, no shell) with stdin from /dev/null and stdout and
// stderr written to the given files. The child is killed if this thread dies, so a crashed test
// leaves no server behind.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& stdout_path,
                            const std::string& stderr_path) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int out = open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out < 0 || err < 0 || in < 0) return absl::InternalError("cannot open the child's files");
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {  // only async-signal-safe calls from here on
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in);
  close(out);
  close(err);
  return pid;
}

// The child's wait status, or std::nullopt if it is still running after `timeout`.
std::optional<int> WaitFor(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    if (absl::Now() > deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

struct ProcessResult {
  int wait_status = -1;
  std::string out;
  std::string err;
};

// Runs a program to completion (at most `timeout`, then SIGKILL).
absl::StatusOr<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                         const std::string& scratch_prefix,
                                         absl::Duration timeout = absl::Seconds(120)) {
  const std::string out_path = scratch_prefix + ".out", err_path = scratch_prefix + ".err";
  absl::StatusOr<pid_t> pid = Spawn(argv, out_path, err_path);
  if (!pid.ok()) return pid.status();
  std::optional<int> status = WaitFor(*pid, timeout);
  if (!status.has_value()) {
    kill(*pid, SIGKILL);
    waitpid(*pid, nullptr, 0);
    return absl::DeadlineExceededError(
        absl::StrCat(argv[0], " ran past ", absl::FormatDuration(timeout)));
  }
  return ProcessResult{*status, ReadFileOrEmpty(out_path), ReadFileOrEmpty(err_path)};
}

// Two distinct free loopback ports (both sockets stay bound until both are picked).
absl::StatusOr<std::pair<int, int>> FreePorts() {
  int fds[2];
  int ports[2];
  for (int i = 0; i < 2; ++i) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (fds[i] < 0 || bind(fds[i], reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        getsockname(fds[i], reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return absl::InternalError("cannot bind a loopback port");
    }
    ports[i] = ntohs(addr.sin_port);
  }
  close(fds[0]);
  close(fds[1]);
  return std::make_pair(ports[0], ports[1]);
}

ChunkReader FromChunks(std::vector<std::string> chunks) {
  return [chunks = std::move(chunks),
          i = size_t{0}]() mutable -> absl::StatusOr<std::optional<std::string>> {
    if (i == chunks.size()) return std::nullopt;
    return chunks[i++];
  };
}

v1::GenerateRequest Greedy(const std::string& session_id, int32_t max_tokens) {
  v1::GenerateRequest request;
  request.set_session_id(session_id);
  request.set_max_tokens(max_tokens);
  request.mutable_sampling()->set_temperature(0.0f);
  request.set_ignore_eos(true);
  return request;
}

// What one Generate call streamed.
struct Generation {
  v1::Final final_event;
  std::vector<v1::GenerateEvent> events;
  std::string delta_text;
  int delta_ids = 0;
};

absl::StatusOr<Generation> RunGenerate(Client& client, const v1::GenerateRequest& request) {
  Generation g;
  absl::StatusOr<v1::Final> final_event = client.Generate(request, [&](const v1::GenerateEvent& e) {
    g.events.push_back(e);
    if (e.has_delta()) {
      g.delta_text += e.delta().text();
      g.delta_ids += e.delta().ids_size();
    }
  });
  if (!final_event.ok()) return final_event.status();
  g.final_event = *std::move(final_event);
  return g;
}

class ClientE2eTest : public ::testing::Test {
 protected:
  // The server and everything the tests share; built once per process.
  struct Suite {
    std::string error;  // non-empty: set-up failed, every test fails with it
    std::string dir;
    std::string target;
    std::string server_log;
    pid_t server_pid = -1;
    std::unique_ptr<Client> client;
    v1::Model model;
  };
  static Suite* suite_;

  static void SetUpTestSuite() {
    suite_ = new Suite;
    suite_->error = StartServer(*suite_);
  }

  static std::string StartServer(Suite& s) {
    const std::string server_bin = Env("MNEMO_SERVER_BIN");
    if (server_bin.empty()) return "MNEMO_SERVER_BIN must name the mnemo-server binary";
    std::string source_dir = Env("MNEMO_SOURCE_DIR");
#ifdef MNEMO_SOURCE_DIR
    if (source_dir.empty()) source_dir = MNEMO_SOURCE_DIR;
#endif
    if (source_dir.empty()) return "MNEMO_SOURCE_DIR must name the source tree";
    const std::string python = Env("MNEMO_PYTHON", "/usr/bin/python3");

    std::string templ = (std::filesystem::temp_directory_path() / "mnemo_client_e2e_XXXXXX");
    if (mkdtemp(templ.data()) == nullptr) return "mkdtemp failed";
    s.dir = templ;

    const std::string model_dir = s.dir + "/tiny";
    absl::StatusOr<ProcessResult> made =
        RunProcess({python, source_dir + "/tools/make_tiny_model.py", model_dir, "--seed", "3"},
                   s.dir + "/make_tiny_model");
    if (!made.ok()) return std::string(made.status().message());
    if (made->wait_status != 0) {
      return absl::StrCat("make_tiny_model.py failed (", DescribeWaitStatus(made->wait_status),
                          "): ", made->err);
    }

    std::ofstream(s.dir + "/auth.json") << kAuthFile;
    std::ofstream(s.dir + "/token") << kToken << "\n";
    absl::StatusOr<std::pair<int, int>> ports = FreePorts();
    if (!ports.ok()) return std::string(ports.status().message());
    s.target = absl::StrCat("127.0.0.1:", ports->first);
    s.server_log = s.dir + "/server.log";
    absl::StatusOr<pid_t> pid = Spawn(
        {server_bin, "--listen", s.target, "--metrics-listen",
         absl::StrCat("127.0.0.1:", ports->second), "--model", absl::StrCat(kModel, "=", model_dir),
         "--segment-tokens", absl::StrCat(kSegmentTokens), "--session-ttl", "600s",
         "--shutdown-grace", "10s", "--auth-file", s.dir + "/auth.json"},
        s.dir + "/server.out", s.server_log);
    if (!pid.ok()) return std::string(pid.status().message());
    s.server_pid = *pid;

    // Ready when ListModels answers (at most 30 s); a server that exits early fails at once. Each
    // attempt gets a fresh channel: a refused one backs off for seconds before trying again.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    absl::StatusOr<std::vector<v1::Model>> models;
    for (;;) {
      int status = 0;
      if (waitpid(s.server_pid, &status, WNOHANG) == s.server_pid) {
        s.server_pid = -1;
        return absl::StrCat("the server exited during start-up (", DescribeWaitStatus(status),
                            "):\n", ReadFileOrEmpty(s.server_log));
      }
      absl::StatusOr<Client> client = Client::Connect(s.target);
      if (!client.ok()) return std::string(client.status().message());
      s.client = std::make_unique<Client>(*std::move(client));
      s.client->set_token(kToken);
      s.client->set_timeout(absl::Seconds(2));
      models = s.client->ListModels();
      if (models.ok() || absl::Now() > deadline) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    if (!models.ok()) {
      return absl::StrCat("the server did not answer ListModels within 30 s: ",
                          models.status().ToString(), "\n", ReadFileOrEmpty(s.server_log));
    }
    for (const v1::Model& m : *models) {
      if (m.name() == kModel) s.model = m;
    }
    if (s.model.name() != kModel) return "ListModels does not list the model \"tiny\"";
    // Generous, but a hung server fails the test instead of hanging it.
    s.client->set_timeout(absl::Seconds(60));
    return "";
  }

  static void TearDownTestSuite() {
    Suite& s = *suite_;
    s.client.reset();
    if (s.server_pid > 0) {
      // SIGTERM drains and exits 0 (the contract of the server's shutdown).
      kill(s.server_pid, SIGTERM);
      std::optional<int> status = WaitFor(s.server_pid, absl::Seconds(30));
      if (!status.has_value()) {
        ADD_FAILURE() << "the server did not exit within 30 s of SIGTERM";
        kill(s.server_pid, SIGKILL);
        waitpid(s.server_pid, nullptr, 0);
      } else {
        EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
            << "the server ended with " << DescribeWaitStatus(*status) << " after SIGTERM";
      }
    }
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0 && !s.server_log.empty()) {
      std::string log = ReadFileOrEmpty(s.server_log);
      if (log.size() > 8000) log = "…" + log.substr(log.size() - 8000);
      std::fprintf(stderr, "---- server log (%s) ----\n%s\n----\n", s.server_log.c_str(),
                   log.c_str());
    } else if (!s.dir.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(s.dir, ignored);
    }
    delete suite_;
    suite_ = nullptr;
  }

  void SetUp() override { ASSERT_TRUE(suite_->error.empty()) << suite_->error; }

  Client& client() { return *suite_->client; }
  const v1::Model& model() { return suite_->model; }
  std::string Path(const std::string& name) { return suite_->dir + "/" + name; }

  // The first `bytes` bytes of the GPL-3 text (ASCII), written to a file of the scratch dir.
  std::string WriteDocument(const std::string& name, size_t bytes, std::string* text) {
    std::string gpl = ReadFileOrEmpty("/usr/share/common-licenses/GPL-3");
    EXPECT_GE(gpl.size(), bytes) << "/usr/share/common-licenses/GPL-3 is missing or short";
    *text = gpl.substr(0, bytes);
    std::string path = Path(name);
    std::ofstream(path, std::ios::binary) << *text;
    return path;
  }

  v1::Session NewSession(const std::map<std::string, std::string>& labels = {}) {
    v1::CreateSessionRequest request;
    request.set_model(kModel);
    request.mutable_labels()->insert(labels.begin(), labels.end());
    absl::StatusOr<v1::Session> session = client().CreateSession(request);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *session : v1::Session();
  }
};

ClientE2eTest::Suite* ClientE2eTest::suite_ = nullptr;

TEST_F(ClientE2eTest, ListsAndDescribesTheModel) {
  EXPECT_GT(model().vocab_size(), 0);
  EXPECT_EQ(model().architecture(), "transfo_xl");
  EXPECT_EQ(model().segment_tokens(), kSegmentTokens);
  EXPECT_GT(model().state_bytes_per_session(), 0);
  absl::StatusOr<v1::Model> got = client().GetModel(kModel);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->vocab_size(), model().vocab_size());
  EXPECT_EQ(client().GetModel("no-such-model").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientE2eTest, TokenizeDetokenizeRoundTrip) {
  const std::string text = "Everyone is permitted to copy and distribute verbatim copies.";
  absl::StatusOr<std::vector<int32_t>> ids = client().Tokenize(text, kModel);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_FALSE(ids->empty());
  for (int32_t id : *ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, model().vocab_size());
  }
  absl::StatusOr<std::string> back = client().Detokenize(*ids, kModel);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, text);
  // The default model (the only one) tokenizes the same way.
  absl::StatusOr<std::vector<int32_t>> default_ids = client().Tokenize(text);
  ASSERT_TRUE(default_ids.ok()) << default_ids.status();
  EXPECT_EQ(*default_ids, *ids);
}

TEST_F(ClientE2eTest, IngestFileThenGreedyGenerationOnTwoForksAgrees) {
  v1::Session session = NewSession({{"suite", "client-cpp-e2e"}});
  ASSERT_FALSE(session.id().empty());
  EXPECT_EQ(session.state_version(), 0);
  EXPECT_EQ(session.tokens_seen(), 0);

  std::string text;
  const std::string path = WriteDocument("gpl3-head.txt", 6000, &text);
  constexpr size_t kChunkBytes = 1000;
  std::vector<v1::IngestProgress> progress;
  absl::StatusOr<v1::IngestProgress> last = client().IngestFile(
      session.id(), path, kChunkBytes, [&](const v1::IngestProgress& p) { progress.push_back(p); });
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_TRUE(last->done());
  EXPECT_GT(last->state_version(), session.state_version());
  // One answer per message (6 chunks), then the final one after the half-close.
  EXPECT_GE(progress.size(), text.size() / kChunkBytes);
  for (size_t i = 0; i + 1 < progress.size(); ++i) {
    EXPECT_FALSE(progress[i].done()) << "progress message " << i << " of " << progress.size();
    EXPECT_LE(progress[i].tokens_ingested(), progress[i + 1].tokens_ingested());
    EXPECT_EQ(progress[i].state_version(), session.state_version())
        << "the version changes only with the final message";
  }
  // The document's tokens do not depend on where the chunks were cut.
  absl::StatusOr<std::vector<int32_t>> ids = client().Tokenize(text, kModel);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(last->tokens_ingested(), static_cast<int64_t>(ids->size()));
  // Full segments ran; at most one segment waits.
  EXPECT_LE(last->pending_tokens(), kSegmentTokens);
  EXPECT_EQ(last->segments_processed() * kSegmentTokens + last->pending_tokens(),
            last->tokens_ingested());

  absl::StatusOr<v1::Session> after = client().GetSession(session.id());
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->state_version(), last->state_version());
  EXPECT_EQ(after->tokens_seen(), last->tokens_ingested());
  EXPECT_EQ(after->pending_tokens(), last->pending_tokens());
  EXPECT_EQ(after->labels().at("suite"), "client-cpp-e2e");

  absl::StatusOr<v1::Session> fork_a = client().ForkSession(session.id());
  ASSERT_TRUE(fork_a.ok()) << fork_a.status();
  absl::StatusOr<v1::Session> fork_b = client().ForkSession(session.id());
  ASSERT_TRUE(fork_b.ok()) << fork_b.status();
  EXPECT_NE(fork_a->id(), fork_b->id());
  EXPECT_NE(fork_a->id(), session.id());
  EXPECT_EQ(fork_a->tokens_seen(), after->tokens_seen());
  EXPECT_EQ(fork_a->model(), kModel);

  std::vector<std::string> texts;
  for (const v1::Session* fork : {&*fork_a, &*fork_b}) {
    SCOPED_TRACE(fork->id());
    absl::StatusOr<Generation> g = RunGenerate(client(), Greedy(fork->id(), 16));
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_FALSE(g->events.empty());
    EXPECT_TRUE(g->events.front().has_started()) << "the first event is Started";
    EXPECT_TRUE(g->events.back().has_final()) << "the last event is Final";
    EXPECT_GT(g->events.front().started().memory_tokens_reused(), 0);
    EXPECT_EQ(g->final_event.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(g->final_event.usage().generated_tokens(), 16);
    EXPECT_EQ(g->delta_ids, 16);
    EXPECT_EQ(g->delta_text, g->final_event.text());
    EXPECT_GT(g->final_event.state_version_after(), fork->state_version());
    absl::StatusOr<v1::Session> grown = client().GetSession(fork->id());
    ASSERT_TRUE(grown.ok()) << grown.status();
    EXPECT_EQ(grown->state_version(), g->final_event.state_version_after());
    EXPECT_EQ(grown->tokens_seen(), fork->tokens_seen() + 16);  // keep_all, no prompt
    texts.push_back(g->final_event.text());
  }
  ASSERT_EQ(texts.size(), 2u);
  EXPECT_EQ(texts[0], texts[1]) << "greedy decoding from equal states must agree";
  EXPECT_FALSE(texts[0].empty());

  // The source is untouched by its forks and decodes the same continuation.
  absl::StatusOr<Generation> source = RunGenerate(client(), Greedy(session.id(), 16));
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ(source->final_event.text(), texts[0]);

  absl::StatusOr<std::vector<v1::Session>> listed =
      client().ListSessions({{"suite", "client-cpp-e2e"}}, /*page_size=*/1);
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::vector<std::string> listed_ids;
  for (const v1::Session& s : *listed) listed_ids.push_back(s.id());
  EXPECT_NE(std::find(listed_ids.begin(), listed_ids.end(), session.id()), listed_ids.end());

  for (const std::string& id : {fork_a->id(), fork_b->id(), session.id()}) {
    EXPECT_TRUE(client().DeleteSession(id).ok());
    EXPECT_EQ(client().GetSession(id).status().code(), absl::StatusCode::kNotFound);
  }
}

TEST_F(ClientE2eTest, ScratchGenerationLeavesTheSessionUnchanged) {
  v1::Session session = NewSession();
  ASSERT_FALSE(session.id().empty());
  absl::StatusOr<v1::IngestProgress> ingested = client().Ingest(
      session.id(),
      FromChunks({"This program is free software: you can redistribute it ",
                  "and/or modify it under the terms of the GNU General Public License."}));
  ASSERT_TRUE(ingested.ok()) << ingested.status();
  absl::StatusOr<v1::Session> before = client().GetSession(session.id());
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->state_version(), ingested->state_version());

  v1::GenerateRequest request = Greedy(session.id(), 8);
  request.set_text(" As used in this License");
  request.set_commit(v1::COMMIT_MODE_SCRATCH);
  absl::StatusOr<Generation> first = RunGenerate(client(), request);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->final_event.state_version_after(), before->state_version());
  EXPECT_GT(first->final_event.usage().prompt_tokens(), 0);
  absl::StatusOr<v1::Session> after = client().GetSession(session.id());
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->state_version(), before->state_version());
  EXPECT_EQ(after->tokens_seen(), before->tokens_seen());
  // Nothing changed, so the same request gives the same text again.
  absl::StatusOr<Generation> second = RunGenerate(client(), request);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->final_event.text(), first->final_event.text());

  // keep_prompt keeps only the prompt's tokens.
  request.set_commit(v1::COMMIT_MODE_KEEP_PROMPT);
  absl::StatusOr<Generation> kept = RunGenerate(client(), request);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->final_event.text(), first->final_event.text());
  EXPECT_GT(kept->final_event.state_version_after(), before->state_version());
  absl::StatusOr<v1::Session> prompted = client().GetSession(session.id());
  ASSERT_TRUE(prompted.ok()) << prompted.status();
  EXPECT_EQ(prompted->state_version(), kept->final_event.state_version_after());
  EXPECT_EQ(prompted->tokens_seen(),
            before->tokens_seen() + kept->final_event.usage().prompt_tokens());
  EXPECT_TRUE(client().DeleteSession(session.id()).ok());
}

TEST_F(ClientE2eTest, NonAsciiFileIngestsAsTheWholeDocument) {
  // Multi-byte characters at every offset; 5-byte chunks cut between most of them.
  std::string text;
  for (int i = 0; i < 20; ++i) {
    text +=
        "Licence \xC3\xA9t\xC3\xA9 \xE2\x82\xAC"
        "5 \xF0\x9D\x84\x9E note, ";
  }
  const std::string path = Path("utf8.txt");
  std::ofstream(path, std::ios::binary) << text;
  v1::Session session = NewSession();
  ASSERT_FALSE(session.id().empty());
  int messages = 0;
  absl::StatusOr<v1::IngestProgress> last =
      client().IngestFile(session.id(), path, 5, [&](const v1::IngestProgress&) { ++messages; });
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_GE(messages, static_cast<int>(text.size() / 8));
  absl::StatusOr<std::vector<int32_t>> ids = client().Tokenize(text, kModel);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(last->tokens_ingested(), static_cast<int64_t>(ids->size()));
  EXPECT_TRUE(client().DeleteSession(session.id()).ok());
}

TEST_F(ClientE2eTest, UnknownSessionIsNotFound) {
  const std::string unknown(32, '0');
  EXPECT_EQ(client().GetSession(unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client().DeleteSession(unknown).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client().ForkSession(unknown).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<Generation> g = RunGenerate(client(), Greedy(unknown, 4));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kNotFound) << g.status();
  absl::StatusOr<v1::IngestProgress> ingested = client().Ingest(unknown, FromChunks({"some text"}));
  EXPECT_EQ(ingested.status().code(), absl::StatusCode::kNotFound) << ingested.status();
  v1::ScoreRequest score;
  score.set_session_id(unknown);
  score.set_text("some text");
  EXPECT_EQ(client().Score(score).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientE2eTest, TheTokenNamesTheTenant) {
  const v1::Session mine = NewSession();
  absl::StatusOr<Client> anonymous = Client::Connect(suite_->target);
  ASSERT_TRUE(anonymous.ok());
  anonymous->set_timeout(absl::Seconds(60));
  EXPECT_EQ(anonymous->ListModels().status().code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<Client> other = Client::Connect(suite_->target);
  ASSERT_TRUE(other.ok());
  other->set_timeout(absl::Seconds(60));
  other->set_token(kOtherToken);
  EXPECT_TRUE(other->ListModels().ok());
  EXPECT_EQ(other->GetSession(mine.id()).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<v1::Session>> listed = other->ListSessions();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->empty());
  EXPECT_TRUE(client().GetSession(mine.id()).ok());
}

TEST_F(ClientE2eTest, TokenIdOutsideTheVocabularyIsInvalidArgument) {
  const int32_t vocab = static_cast<int32_t>(model().vocab_size());
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.set_max_tokens(4);
  request.mutable_ids()->add_ids(1);
  request.mutable_ids()->add_ids(vocab);
  absl::StatusOr<Generation> g = RunGenerate(client(), request);
  ASSERT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << g.status();
  // The BadRequest detail names the field.
  std::vector<v1::BadRequest::FieldViolation> violations = FieldViolations(g.status());
  EXPECT_FALSE(violations.empty()) << "no BadRequest detail in " << g.status();
  bool names_ids = false;
  for (const auto& v : violations) names_ids = names_ids || absl::StrContains(v.field(), "ids");
  EXPECT_TRUE(names_ids) << "no violation names the ids field";

  v1::ScoreRequest score;
  score.set_model(kModel);
  score.mutable_ids()->add_ids(2);
  score.mutable_ids()->add_ids(vocab + 5);
  EXPECT_EQ(client().Score(score).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Detokenize({vocab}, kModel).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Detokenize({-1}, kModel).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientE2eTest, StaleExpectedVersionIsAborted) {
  v1::Session session = NewSession();
  ASSERT_FALSE(session.id().empty());
  absl::StatusOr<v1::IngestProgress> ingested =
      client().Ingest(session.id(), FromChunks({"a few words"}), {}, /*expected_state_version=*/5);
  EXPECT_EQ(ingested.status().code(), absl::StatusCode::kAborted) << ingested.status();
  absl::StatusOr<v1::Session> unchanged = client().GetSession(session.id());
  ASSERT_TRUE(unchanged.ok()) << unchanged.status();
  EXPECT_EQ(unchanged->state_version(), 0);
  EXPECT_EQ(client().DeleteSession(session.id(), /*expected_state_version=*/7).code(),
            absl::StatusCode::kAborted);
  EXPECT_TRUE(client().DeleteSession(session.id()).ok());
}

TEST_F(ClientE2eTest, CommandLine) {
  const std::string bin = Env("MNEMO_CLIENT_BIN");
  if (bin.empty()) GTEST_SKIP() << "MNEMO_CLIENT_BIN is not set";
  const std::string target = suite_->target;
  const std::string token_file = Path("token");
  absl::StatusOr<ProcessResult> refused =
      RunProcess({bin, "--target", target, "models"}, Path("cli-no-token"));
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_TRUE(absl::StartsWith(refused->err, "error: UNAUTHENTICATED: ")) << refused->err;
  absl::StatusOr<ProcessResult> models = RunProcess(
      {bin, "--target", target, "--token-file", token_file, "models"}, Path("cli-models"));
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->wait_status, 0) << models->err;
  EXPECT_TRUE(absl::StrContains(models->out, "tiny")) << models->out;

  absl::StatusOr<ProcessResult> missing =
      RunProcess({bin, "get", std::string(32, '0'), "--target", target, "--token-file", token_file},
                 Path("cli-get"));
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_TRUE(WIFEXITED(missing->wait_status) && WEXITSTATUS(missing->wait_status) == 1);
  EXPECT_TRUE(absl::StartsWith(missing->err, "error: NOT_FOUND: ")) << missing->err;

  absl::StatusOr<ProcessResult> generated =
      RunProcess({bin, "--target", target, "--token-file", token_file, "generate", "--prompt",
                  "The licence", "--max-tokens", "4", "--temperature", "0", "--ignore-eos"},
                 Path("cli-generate"));
  ASSERT_TRUE(generated.ok()) << generated.status();
  EXPECT_EQ(generated->wait_status, 0) << generated->err;
  EXPECT_TRUE(absl::StrContains(generated->err, "[finish: length, prompt "));
  EXPECT_TRUE(absl::StrContains(generated->err, ", generated 4, version ")) << generated->err;

  absl::StatusOr<ProcessResult> usage =
      RunProcess({bin, "--target", target, "frobnicate"}, Path("cli-usage"));
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_TRUE(WIFEXITED(usage->wait_status) && WEXITSTATUS(usage->wait_status) == 2);
}

// Connect with TlsOptions against a second server that requires client certificates (mTLS):
// certificates made with the openssl command line, a CA for localhost/127.0.0.1.
TEST_F(ClientE2eTest, TlsConnect) {
  const auto openssl = [&](const std::string& step, std::vector<std::string> args) {
    args.insert(args.begin(), "/usr/bin/openssl");
    absl::StatusOr<ProcessResult> r = RunProcess(args, Path("openssl-" + step));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->wait_status, 0) << step << ": " << r->err;
  };
  const std::string ec[] = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"};
  const auto with_key = [&](std::vector<std::string> args) {
    args.insert(args.begin() + 1, std::begin(ec), std::end(ec));
    return args;
  };
  openssl("ca", with_key({"req", "-x509", "-days", "2", "-subj", "/CN=mnemo e2e CA", "-keyout",
                          Path("ca-key.pem"), "-out", Path("ca.pem")}));
  std::ofstream(Path("server.ext")) << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
  std::ofstream(Path("client.ext")) << "extendedKeyUsage=clientAuth\n";
  for (const std::string leaf : {"server", "client"}) {
    openssl(leaf + "-csr", with_key({"req", "-subj", "/CN=" + leaf, "-keyout",
                                     Path(leaf + "-key.pem"), "-out", Path(leaf + ".csr")}));
    openssl(leaf, {"x509", "-req", "-in", Path(leaf + ".csr"), "-CA", Path("ca.pem"), "-CAkey",
                   Path("ca-key.pem"), "-set_serial", leaf == "server" ? "2" : "3", "-days", "2",
                   "-extfile", Path(leaf + ".ext"), "-out", Path(leaf + ".pem")});
  }
  if (HasFatalFailure()) return;
  absl::StatusOr<std::pair<int, int>> ports = FreePorts();
  ASSERT_TRUE(ports.ok()) << ports.status();
  const std::string target = absl::StrCat("127.0.0.1:", ports->first);
  absl::StatusOr<pid_t> pid =
      Spawn({Env("MNEMO_SERVER_BIN"), "--listen", target, "--metrics-listen", "off", "--model",
             absl::StrCat(kModel, "=", Path("tiny")), "--tls-cert", Path("server.pem"), "--tls-key",
             Path("server-key.pem"), "--tls-client-ca", Path("ca.pem"), "--shutdown-grace", "2s"},
            Path("tls-server.out"), Path("tls-server.log"));
  ASSERT_TRUE(pid.ok()) << pid.status();

  TlsOptions tls{ReadFileOrEmpty(Path("ca.pem")), ReadFileOrEmpty(Path("client.pem")),
                 ReadFileOrEmpty(Path("client-key.pem")), ""};
  // Ready when ListModels answers over mTLS (at most 30 s).
  absl::StatusOr<std::vector<v1::Model>> models;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(30); absl::Now() < deadline;) {
    absl::StatusOr<Client> mtls = Client::Connect(target, RetryPolicy::Off(), tls);
    ASSERT_TRUE(mtls.ok()) << mtls.status();
    mtls->set_timeout(absl::Seconds(2));
    models = mtls->ListModels();
    if (models.ok()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(models.ok()) << models.status() << "\n" << ReadFileOrEmpty(Path("tls-server.log"));

  const auto list_models = [&](const TlsOptions& options) -> absl::Status {
    absl::StatusOr<Client> c = Client::Connect(target, RetryPolicy::Off(), options);
    if (!c.ok()) return c.status();
    c->set_timeout(absl::Seconds(10));
    return c->ListModels().status();
  };
  TlsOptions named = tls;
  named.server_name = "localhost";
  EXPECT_TRUE(list_models(named).ok());
  named.server_name = "elsewhere.example";
  EXPECT_EQ(list_models(named).code(), absl::StatusCode::kUnavailable);
  TlsOptions anonymous{tls.ca_pem, "", "", ""};  // no client certificate
  EXPECT_EQ(list_models(anonymous).code(), absl::StatusCode::kUnavailable);
  TlsOptions half = tls;
  half.key_pem.clear();
  EXPECT_EQ(list_models(half).code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<Client> plain = Client::Connect(target, RetryPolicy::Off());
  ASSERT_TRUE(plain.ok());
  plain->set_timeout(absl::Seconds(10));
  EXPECT_EQ(plain->ListModels().status().code(), absl::StatusCode::kUnavailable);

  kill(*pid, SIGTERM);
  std::optional<int> status = WaitFor(*pid, absl::Seconds(30));
  if (!status.has_value()) {
    kill(*pid, SIGKILL);
    waitpid(*pid, nullptr, 0);
  }
  EXPECT_TRUE(status.has_value() && WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
}

// The chunker alone (no server): every chunk is whole characters, together they are the input.
TEST(Utf8ChunkReaderTest, CutsOnlyAtCharacterBoundaries) {
  const std::string text =
      "a\xC3\xA9\xE2\x82\xAC\xF0\x9D\x84\x9E"
      "bc\xE2\x82\xAC\xE2\x82\xAC\xF0\x9D\x84\x9E\xC3\xA9z";
  for (size_t chunk_bytes = 1; chunk_bytes <= text.size() + 1; ++chunk_bytes) {
    SCOPED_TRACE(chunk_bytes);
    std::istringstream in(text);
    ChunkReader next = MakeUtf8ChunkReader(&in, chunk_bytes);
    std::string joined;
    for (int guard = 0; guard < 100; ++guard) {
      absl::StatusOr<std::optional<std::string>> chunk = next();
      ASSERT_TRUE(chunk.ok()) << chunk.status();
      if (!chunk->has_value()) break;
      ASSERT_FALSE((*chunk)->empty());
      absl::StatusOr<size_t> complete = CompleteUtf8Prefix(**chunk);
      ASSERT_TRUE(complete.ok()) << complete.status();
      EXPECT_EQ(*complete, (*chunk)->size());
      EXPECT_LE((*chunk)->size(), std::max<size_t>(chunk_bytes, 4));
      joined += **chunk;
    }
    EXPECT_EQ(joined, text);
  }
}

TEST(Utf8ChunkReaderTest, RejectsInvalidAndTruncatedText) {
  for (const std::string& bad : {std::string("ab\xFFz"), std::string("ab\xC0\xAFz"),
                                 std::string("ab\xED\xA0\x80z"), std::string("ab\xE2\x82")}) {
    std::istringstream in(bad);
    ChunkReader next = MakeUtf8ChunkReader(&in, 2);
    absl::Status status;
    for (int guard = 0; guard < 10 && status.ok(); ++guard) {
      absl::StatusOr<std::optional<std::string>> chunk = next();
      status = chunk.status();
      if (chunk.ok() && !chunk->has_value()) break;
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << absl::CEscape(bad);
  }
}

}  // namespace
}  // namespace mnemo::client
