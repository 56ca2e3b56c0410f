// mnemo-server: serves the mnemo.v1 gRPC API (models, sessions, ingest, generate, score) for the
// models given with --model, with the standard health service, server reflection, and Prometheus
// metrics over HTTP; TLS or mTLS from files re-read on change, and a plaintext health-only listener
// for probes. SIGTERM/SIGINT drain: health turns NOT_SERVING and new requests get
// UNAVAILABLE at once, requests in flight get --shutdown-grace to finish, then (replicas) every
// session is written to the store and let go, and the process exits. Every flag may also come
// from the environment (MNEMO_SESSION_STORE for --session-store; the command line wins).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/flags.h"
#include "base/read_file.h"
#include "base/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/certificate_mirror.h"
#include "server/fault_injecting_store_env.h"
#include "server/health_listener.h"
#include "server/memory_releaser.h"
#include "server/metrics.h"
#include "server/metrics_http_server.h"
#include "server/model_registry.h"
#include "server/replica_service.h"
#include "server/services.h"
#include "server/session_manager.h"
#include "server/session_store.h"
#include "server/transport_security.h"

namespace mnemo::server {
namespace {

constexpr char kUsage[] = R"(usage: mnemo-server (--model NAME=DIR | --model-repository DIR) [flags]

Serves the mnemo.v1 gRPC API for the given checkpoints (config.json, model.safetensors and
tokenizer.model or vocab.words in DIR, or a byte vocabulary named by config.json). The first
--model is the default one.

  --model NAME=DIR           a model to serve (repeatable; NAME: [A-Za-z0-9._-], ≤ 64)
  --model-repository DIR     serve every subdirectory of DIR that holds a config.json, named
                             after it (after the --model ones)
  --listen ADDR              gRPC address (default 0.0.0.0:50051)
  --tls-cert FILE            serve TLS with this certificate chain (PEM, leaf first); needs
                             --tls-key. Without it the listener is plaintext
  --tls-key FILE             the certificate's private key (PEM, unencrypted)
  --tls-client-ca FILE       mTLS: clients must present a certificate that chains to a CA in
                             FILE (PEM bundle); others are refused in the handshake. Replicas
                             present --tls-cert to each other and verify it against FILE
  --tls-reload-interval D    how often the three files are checked for change (default 10s):
                             new connections get the new certificate within this and a second,
                             open ones keep theirs; a set that does not check out (a file that
                             does not parse, a key that does not match) is logged and the last
                             good one stays in use
  --health-listen ADDR       a plaintext listener serving only grpc.health.v1 (same statuses:
                             "" readiness, "liveness"), for probes that cannot speak TLS
                             (default: none)
  --reflection M             on (default) or off: gRPC server reflection on the main listener
  --metrics-listen ADDR      Prometheus /metrics over HTTP (default 0.0.0.0:9464; "off": none)
  --device D                 cpu (default), cuda or cuda:N
  --speculative M            off (default) or on: a model whose directory names a draft model
                             (draft.json) also loads the draft, keeps a draft state in each of
                             its sessions and generates speculatively (same greedy output, same
                             sampling distribution; faster when a draft step is much cheaper
                             than a model step)
  --sparse-weights M         on (default) or off: on the CPU, pruned weight matrices run from a
                             sparse form (CSR or 2:4) wherever it moves at most 80% of the
                             dense bytes
  --cpu-weights W            stored (default), float32 or bf16-products: on the CPU, a bf16 or
                             f16 checkpoint's weight matrices stay 16-bit (half the bytes per
                             decode step) or are widened to float32 at load (the oracle the
                             16-bit products match); bf16-products keeps them 16-bit and lets
                             decode steps round activations to bf16 for AVX-512 BF16 dot
                             products (faster batches; within 2^-9 of sum |x*w| of stored)
  --session-memory T         float32 (default), bfloat16 or float16: on the CPU, the dtype of
                             every session's Transformer-XL key/value memory (dense and
                             compressive layers): 16-bit halves those state bytes
  --segment-tokens N         tokens per model segment for ingest and prompts (default: each
                             model's memory length; 512 for a model without dense layers)
  --session-ttl D            idle time after which a session is deleted (default 1h)
  --max-session-ttl D        the largest TTL a client may ask for (default 168h)
  --max-sessions N           open sessions at most (default 10000)
  --device-state-budget B    bytes of session state kept on the device; beyond it the least
                             recently used idle states move to host memory (default 4294967296)
  --host-state-budget B      bytes of session state kept in host memory (default 0: no limit);
                             beyond it the least recently used idle states are written to the
                             session store and freed (needs --session-store)
  --session-store DIR        keep sessions in DIR (a local disk or a shared volume): the third
                             tier, durable sessions, and the sessions a restart serves again
  --durability L             none (default), async or sync: how the changes of sessions that
                             do not choose reach the store (needs --session-store for async
                             and sync; docs/server-api.md "Durable sessions")
  --session-store-faults S   test facility: inject store failures (rules op:mode[@N][%P], or
                             @FILE to read them from FILE whenever it changes; docs/testing.md)
  --backend-faults S         test facility: every model's backend fails the operations the
                             rules name (op:mode[@N[+]][%P]: ops alloc, upload, download, copy,
                             compute, attention, append, sync or any; modes oom, fail or late),
                             or @FILE to read them from FILE whenever it changes; faults start
                             once the models are loaded (docs/testing.md)
  --max-batch-tokens N       prefill tokens per forward pass (default 512): bounds how long a
                             pass of ingest or prompt segments holds up decoding
  --max-batch-sequences N    sequences per forward pass (default 256)
  --max-queue N              model steps waiting per model before RESOURCE_EXHAUSTED (default 4096)
  --batch-wait D             how long a forward pass waits for other streams' steps after the
                             last pass (default 500us; a quarter of the last pass's time if longer)
  --max-generate-tokens N    GenerateRequest.max_tokens at most (default 4096)
  --max-input-tokens N       tokens of one prompt or scored text, ids of one Detokenize or one
                             Ingest message, at most (default 1048576)
  --max-encode-tokens N      tokens of one Encode document at most (default 1048576)
  --max-text-bytes N         bytes of one text field (Tokenize, a prompt, a scored text, one
                             Ingest message) at most (default 8388608)
  --max-stop-ids N           GenerateRequest.stop_ids at most (default 64); every other string
                             and repeated field has a fixed limit (docs/server-api.md)
  --max-message-bytes N      largest request message (default 16777216)
  --memory-release-interval D
                             how often freed heap memory the allocator keeps (when 8 MiB or
                             more) is handed back to the system, so the RSS follows what the
                             server holds (default 10s; 0: never)
  --shutdown-grace D         time requests in flight get to finish on SIGTERM (default 30s);
                             then they are cancelled, and a request still running 7s later (a
                             store that stopped answering) is abandoned: the process exits 1
  --auth-file FILE           tenants (JSON: names, admin flags, SHA-256 hashes of bearer tokens,
                             client-certificate subjects, quotas; docs/server-api.md
                             "Tenants"), checked for changes every second and applied without
                             a restart. Every call then needs "authorization: Bearer <token>"
                             metadata (or a mapped client certificate) or gets UNAUTHENTICATED;
                             each session belongs to its creator's tenant. Without it every
                             caller is one implicit tenant
  --replica-id NAME          replica mode, for servers sharing one --session-store: this
                             replica's name in session owner records (unique per replica; the
                             pod name in Kubernetes). A request for a session another replica
                             holds takes it over (hand-off, then a fenced claim); SIGTERM writes
                             every session to the store and lets go of it (docs/deploy.md)
  --advertise ADDR           where the other replicas reach this one for hand-offs (default:
                             --listen when it names a host; in Kubernetes $(POD_IP):50051)
  --handoff-timeout D        how long a take-over waits for the owner's hand-off (default 10s)
  --replica-token-file FILE  with --auth-file: the bearer token (first line of FILE) this
                             replica sends when it asks another for a hand-off; the auth file
                             must give it an admin tenant (or the replicas use mTLS with an
                             admin certificate subject). Hand-offs from anyone else are refused
  --help                     this text

Durations are like 90s, 5m, 1h30m, 250ms. Every flag can also be set in the environment as
MNEMO_ and its name in capitals with '_' for '-' (MNEMO_SESSION_STORE=/data); --model and
--model-repository take comma-separated lists there. The command line wins.
)";

// How long the drain waits for requests to return once the transport has cancelled them.
constexpr absl::Duration kAbandonRequestsAfter = absl::Seconds(5);

// The write end of the pipe the stop signals go to.
int stop_pipe_write = -1;

extern "C" void OnStopSignal(int signal) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(signal);
  (void)!::write(stop_pipe_write, &byte, 1);  // a full pipe already holds a signal: fine
  errno = saved;
}

int stop_pipe_read = -1;

absl::Status InstallStopSignals() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  stop_pipe_read = fds[0];
  stop_pipe_write = fds[1];
  // The read end blocks; only the handler's writes must never block.
  ::fcntl(stop_pipe_read, F_SETFL, ::fcntl(stop_pipe_read, F_GETFL) & ~O_NONBLOCK);
  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (const int signal : {SIGTERM, SIGINT}) {
    if (::sigaction(signal, &action, nullptr) != 0) {
      return absl::InternalError(absl::StrCat("sigaction: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

// Blocks until SIGTERM or SIGINT; returns which. Later ones are written to the pipe and ignored.
int WaitForStopSignal() {
  unsigned char byte = 0;
  while (true) {
    const ssize_t n = ::read(stop_pipe_read, &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    std::perror("mnemo-server: reading the stop-signal pipe");
    return SIGTERM;
  }
}

absl::Status Serve(int argc, char** argv) {
  const std::map<std::string, bool> known = {{"model", true},
                                             {"model-repository", true},
                                             {"listen", true},
                                             {"tls-cert", true},
                                             {"tls-key", true},
                                             {"tls-client-ca", true},
                                             {"tls-reload-interval", true},
                                             {"health-listen", true},
                                             {"reflection", true},
                                             {"metrics-listen", true},
                                             {"device", true},
                                             {"sparse-weights", true},
                                             {"cpu-weights", true},
                                             {"session-memory", true},
                                             {"speculative", true},
                                             {"segment-tokens", true},
                                             {"session-ttl", true},
                                             {"max-session-ttl", true},
                                             {"max-sessions", true},
                                             {"device-state-budget", true},
                                             {"host-state-budget", true},
                                             {"session-store", true},
                                             {"durability", true},
                                             {"session-store-faults", true},
                                             {"backend-faults", true},
                                             {"max-batch-tokens", true},
                                             {"max-batch-sequences", true},
                                             {"max-queue", true},
                                             {"batch-wait", true},
                                             {"max-generate-tokens", true},
                                             {"max-input-tokens", true},
                                             {"max-encode-tokens", true},
                                             {"max-text-bytes", true},
                                             {"max-stop-ids", true},
                                             {"max-message-bytes", true},
                                             {"shutdown-grace", true},
                                             {"memory-release-interval", true},
                                             {"replica-id", true},
                                             {"advertise", true},
                                             {"handoff-timeout", true},
                                             {"replica-token-file", true},
                                             {"auth-file", true},
                                             {"help", false}};
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(argc, argv, 1, known));
  flags.AddFromEnvironment("MNEMO_", known, {"model", "model-repository"});
  if (flags.Has("help")) {
    std::fputs(kUsage, stdout);
    return absl::OkStatus();
  }
  std::vector<ModelSpec> specs;
  for (const std::string& m : flags.All("model")) {
    ASSIGN_OR_RETURN(ModelSpec spec, ParseModelSpec(m));
    specs.push_back(spec);
  }
  for (const std::string& dir : flags.All("model-repository")) {
    ASSIGN_OR_RETURN(std::vector<ModelSpec> found, ModelRepository(dir));
    specs.insert(specs.end(), found.begin(), found.end());
  }
  SchedulerOptions scheduling;
  ASSIGN_OR_RETURN(scheduling.max_batch_tokens, flags.Int("max-batch-tokens", 512, 1, 1 << 24));
  ASSIGN_OR_RETURN(int64_t max_seqs, flags.Int("max-batch-sequences", 256, 1, 65536));
  scheduling.max_batch_sequences = static_cast<int>(max_seqs);
  ASSIGN_OR_RETURN(scheduling.max_queue, flags.Int("max-queue", 4096, 1, 1 << 24));
  ASSIGN_OR_RETURN(scheduling.batch_wait,
                   flags.Duration("batch-wait", absl::Microseconds(500), absl::ZeroDuration()));
  SessionManagerOptions session_options;
  ASSIGN_OR_RETURN(session_options.default_ttl,
                   flags.Duration("session-ttl", absl::Hours(1), absl::Seconds(1)));
  ASSIGN_OR_RETURN(session_options.max_ttl,
                   flags.Duration("max-session-ttl", absl::Hours(168), absl::Seconds(1)));
  ASSIGN_OR_RETURN(session_options.max_sessions, flags.Int("max-sessions", 10000, 1, 1 << 24));
  ASSIGN_OR_RETURN(session_options.device_budget_bytes,
                   flags.Int("device-state-budget", int64_t{4} << 30, 0, INT64_MAX));
  ASSIGN_OR_RETURN(session_options.host_budget_bytes,
                   flags.Int("host-state-budget", 0, 0, INT64_MAX));
  const std::optional<Durability> durability =
      engine::api::ParseEnum<Durability>(flags.Get("durability", "none"));
  if (!durability) return absl::InvalidArgumentError("--durability must be none, async or sync");
  session_options.default_durability = *durability;
  const std::string store_dir = flags.Get("session-store", "");
  const std::string store_faults = flags.Get("session-store-faults", "");
  if (store_dir.empty()) {
    if (session_options.default_durability != Durability::kNone) {
      return absl::InvalidArgumentError("--durability async or sync needs --session-store DIR");
    }
    if (session_options.host_budget_bytes > 0) {
      return absl::InvalidArgumentError(
          "--host-state-budget needs --session-store DIR (where the states beyond it go)");
    }
    if (!store_faults.empty()) {
      return absl::InvalidArgumentError("--session-store-faults needs --session-store DIR");
    }
  }
  std::unique_ptr<FaultInjectingStoreEnv> fault_env;
  std::unique_ptr<SessionStore> store;
  if (!store_dir.empty()) {
    StoreEnv* env = PosixStoreEnv();
    if (!store_faults.empty()) {
      fault_env = std::make_unique<FaultInjectingStoreEnv>(env);
      RETURN_IF_ERROR(fault_env->SetSpec(store_faults));
      env = fault_env.get();
    }
    ASSIGN_OR_RETURN(store, OpenFileSessionStore(store_dir, env));
    session_options.store = store.get();
  }
  ServiceContext ctx;
  ctx.limits.max_session_ttl = session_options.max_ttl;
  ASSIGN_OR_RETURN(ctx.limits.max_generate_tokens,
                   flags.Int("max-generate-tokens", 4096, 1, 1 << 24));
  ASSIGN_OR_RETURN(ctx.limits.max_input_tokens, flags.Int("max-input-tokens", 1 << 20, 1, 1 << 28));
  ASSIGN_OR_RETURN(ctx.limits.max_encode_tokens,
                   flags.Int("max-encode-tokens", 1 << 20, 1, 1 << 28));
  ASSIGN_OR_RETURN(ctx.limits.max_text_bytes,
                   flags.Int("max-text-bytes", int64_t{8} << 20, 1, int64_t{1} << 30));
  ASSIGN_OR_RETURN(int64_t max_stop_ids, flags.Int("max-stop-ids", 64, 0, 1 << 20));
  ctx.limits.max_stop_ids = static_cast<int>(max_stop_ids);
  ASSIGN_OR_RETURN(int64_t max_message, flags.Int("max-message-bytes", 16 << 20, 1024, 1 << 30));
  ASSIGN_OR_RETURN(absl::Duration grace,
                   flags.Duration("shutdown-grace", absl::Seconds(30), absl::ZeroDuration()));
  ASSIGN_OR_RETURN(int64_t segment_tokens, flags.Int("segment-tokens", 0, 0, 1 << 20));
  ASSIGN_OR_RETURN(
      absl::Duration memory_release_interval,
      flags.Duration("memory-release-interval", absl::Seconds(10), absl::ZeroDuration()));
  const std::string listen = flags.Get("listen", "0.0.0.0:50051");
  TlsFiles tls;
  tls.cert = flags.Get("tls-cert", "");
  tls.key = flags.Get("tls-key", "");
  tls.client_ca = flags.Get("tls-client-ca", "");
  ASSIGN_OR_RETURN(tls.reload_interval,
                   flags.Duration("tls-reload-interval", absl::Seconds(10), absl::Seconds(1)));
  // gRPC reads checked copies of the files, so that a broken rotation keeps the last good set.
  std::unique_ptr<CertificateMirror> tls_mirror;
  TlsFiles tls_served;
  if (tls.enabled()) {
    ASSIGN_OR_RETURN(tls_mirror, CertificateMirror::Start(tls));
    tls_served = tls_mirror->copies();
  } else {
    RETURN_IF_ERROR(CheckTlsFlags(tls));
  }
  const std::string health_listen = flags.Get("health-listen", "");
  const std::string reflection = flags.Get("reflection", "on");
  if (reflection != "on" && reflection != "off") {
    return absl::InvalidArgumentError("--reflection must be on or off");
  }
  const std::string metrics_listen = flags.Get("metrics-listen", "0.0.0.0:9464");
  session_options.replica_id = flags.Get("replica-id", "");
  ASSIGN_OR_RETURN(absl::Duration handoff_timeout,
                   flags.Duration("handoff-timeout", absl::Seconds(10), absl::Milliseconds(100)));
  if (!session_options.replica_id.empty()) {
    if (store_dir.empty()) {
      return absl::InvalidArgumentError("--replica-id needs --session-store DIR (shared)");
    }
    const bool wildcard = listen.rfind("0.0.0.0:", 0) == 0 || listen.rfind("[::]:", 0) == 0 ||
                          listen.rfind(':', 0) == 0;
    session_options.advertise = flags.Get("advertise", wildcard ? "" : listen);
    if (session_options.advertise.empty()) {
      std::fprintf(stderr,
                   "mnemo-server: no --advertise address: other replicas take sessions over "
                   "from this one without a hand-off (their newest stored version moves)\n");
    }
  }
  std::string replica_token;
  if (flags.Has("replica-token-file")) {
    if (session_options.replica_id.empty()) {
      return absl::InvalidArgumentError("--replica-token-file needs --replica-id");
    }
    const std::string path = flags.Get("replica-token-file", "");
    absl::StatusOr<std::string> text = ReadFile(path);
    if (!text.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--replica-token-file ", path, ": ", text.status().message()));
    }
    replica_token = text->substr(0, text->find_first_of("\r\n"));
    if (replica_token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--replica-token-file ", path, ": no token on its first line"));
    }
  }
  std::unique_ptr<ReplicaClient> replicas;
  if (!session_options.replica_id.empty()) {
    replicas =
        std::make_unique<ReplicaClient>(session_options.replica_id, handoff_timeout,
                                        MakeReplicaChannelCredentials(tls_served), replica_token);
    session_options.hand_off = [&replicas](const std::string& address, const std::string& id) {
      return replicas->HandOff(address, id);
    };
  }

  // SIGTERM and SIGINT write their number to a pipe the main thread reads. A handler, not a
  // blocked mask with sigwait: libraries start threads of their own before main (OpenBLAS), and
  // a signal delivered to one of those would otherwise kill the process — a second Ctrl-C in
  // the middle of a drain, say — before its sessions reach the store.
  RETURN_IF_ERROR(InstallStopSignals());

  engine::api::ModelOptions model_options;
  const std::string sparse = flags.Get("sparse-weights", "on");
  if (sparse != "on" && sparse != "off") {
    return absl::InvalidArgumentError("--sparse-weights must be on or off");
  }
  model_options.sparse_weights = sparse == "on";
  ASSIGN_OR_RETURN(model_options.cpu_weights,
                   engine::api::ParseCpuWeights(flags.Get("cpu-weights", "stored")));
  ASSIGN_OR_RETURN(model_options.session_memory,
                   engine::api::ParseSessionMemory(flags.Get("session-memory", "float32")));
  const std::string speculative = flags.Get("speculative", "off");
  if (speculative != "on" && speculative != "off") {
    return absl::InvalidArgumentError("--speculative must be on or off");
  }
  const std::string backend_faults = flags.Get("backend-faults", "");
  if (!backend_faults.empty()) {
    std::fprintf(stderr, "mnemo-server: test facility: backend faults \"%s\"\n",
                 backend_faults.c_str());
  }
  Metrics metrics;
  if (tls_mirror != nullptr) tls_mirror->ExportMetrics(*metrics.registry());
  ctx.metrics = &metrics;
  std::unique_ptr<Authenticator> auth;
  if (const std::string auth_file = flags.Get("auth-file", ""); !auth_file.empty()) {
    ASSIGN_OR_RETURN(auth, Authenticator::Open(auth_file, absl::Seconds(1)));
    std::fprintf(stderr, "mnemo-server: tenants from %s (re-read when it changes)\n",
                 auth_file.c_str());
  } else {
    auth = std::make_unique<Authenticator>();
    std::fprintf(stderr,
                 "mnemo-server: no --auth-file: every caller is one implicit tenant with full "
                 "access to every session (no authentication)\n");
  }
  ctx.auth = auth.get();
  TenantLimiter limiter(&metrics);
  ctx.limiter = &limiter;
  ASSIGN_OR_RETURN(
      std::unique_ptr<ModelRegistry> models,
      ModelRegistry::Load(specs, flags.Get("device", "cpu"), segment_tokens, scheduling, &metrics,
                          model_options, speculative == "on", backend_faults));
  ctx.models = models.get();
  session_options.models = models.get();
  auto sessions = std::make_unique<SessionManager>(session_options, &metrics);
  ctx.sessions = sessions.get();
  metrics.SetStateBudget("device", session_options.device_budget_bytes);
  metrics.SetStateBudget("host", session_options.host_budget_bytes);
  if (sessions->replica_mode()) {
    metrics.SetReplica(session_options.replica_id);
    std::fprintf(stderr, "mnemo-server: replica %s (hand-offs at %s) on %s\n",
                 session_options.replica_id.c_str(),
                 session_options.advertise.empty() ? "-" : session_options.advertise.c_str(),
                 store->Describe().c_str());
  } else if (store != nullptr) {
    ASSIGN_OR_RETURN(int recovered, sessions->Recover(*models));
    std::fprintf(stderr, "mnemo-server: %s: %d sessions (restored on first use)\n",
                 store->Describe().c_str(), recovered);
  }

  std::unique_ptr<MetricsHttpServer> metrics_http;
  if (metrics_listen != "off") {
    ASSIGN_OR_RETURN(metrics_http,
                     MetricsHttpServer::Start(metrics_listen, metrics.registry(),
                                              [&metrics] { metrics.RefreshAllocatorStats(); }));
  }
  // Freed memory goes back to the system once 8 MiB of it are kept (server/memory_releaser.h).
  std::unique_ptr<MemoryReleaser> memory_releaser;
  if (memory_release_interval > absl::ZeroDuration()) {
    memory_releaser =
        std::make_unique<MemoryReleaser>(memory_release_interval, int64_t{8} << 20, &metrics);
  }

  ModelServiceImpl model_service(ctx);
  SessionServiceImpl session_service(ctx);
  InferenceServiceImpl inference_service(ctx);
  // A hand-off waits at most half the caller's timeout for a running request.
  ReplicaServiceImpl replica_service(ctx, handoff_timeout / 2);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, MakeServerCredentials(tls_served), &port);
  if (reflection == "off") {
    builder.SetOption(
        std::make_unique<WithoutPlugins>(std::vector<std::string>{kReflectionPlugin}));
  }
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message));
  builder.RegisterService(&model_service);
  builder.RegisterService(&session_service);
  builder.RegisterService(&inference_service);
  if (sessions->replica_mode()) builder.RegisterService(&replica_service);
  // This server owns its port: a second one on it must fail, not share the connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen));
  }
  std::unique_ptr<HealthListener> health_listener;
  if (!health_listen.empty()) {
    ASSIGN_OR_RETURN(health_listener, HealthListener::Start(health_listen));
    std::fprintf(stderr, "mnemo-server: health (plaintext) on %s (port %d)\n",
                 health_listen.c_str(), health_listener->port());
  }
  Health health(server.get(), health_listener.get());
  for (const auto& m : models->models()) {
    std::fprintf(stderr, "mnemo-server: model %s (%s, %s weights, %s session memory, %s) from %s\n",
                 m->name.c_str(), m->device.c_str(), DTypeName(m->model->weight_dtype()),
                 DTypeName(m->model->session_memory()), m->description.fingerprint.c_str(),
                 m->dir.c_str());
    if (m->draft != nullptr) {
      std::fprintf(stderr, "mnemo-server: model %s generates speculatively: draft %s, %d tokens\n",
                   m->name.c_str(), m->draft->dir.c_str(), m->draft_tokens);
    }
  }
  for (const auto& e : models->encoders()) {
    std::fprintf(stderr, "mnemo-server: encoder %s (%s, %s, Encode only) from %s\n",
                 e->name.c_str(), e->encoder->config().architecture.c_str(), e->device.c_str(),
                 e->dir.c_str());
  }
  std::fprintf(stderr,
               "mnemo-server: listening on %s (port %d, %s, reflection %s), metrics on %s\n",
               listen.c_str(), port, DescribeTransport(tls).c_str(), reflection.c_str(),
               metrics_listen.c_str());

  // Health: the service "" is readiness, NOT_SERVING while draining or when a new session would
  // be refused; "liveness" stays SERVING while the process answers at all (a liveness probe must
  // not restart a replica for being busy or draining).
  health.Set("liveness", true);
  std::mutex ready_mu;
  std::condition_variable ready_cv;
  bool stop_ready = false;
  std::thread readiness([&] {
    bool serving = true;
    std::unique_lock<std::mutex> lock(ready_mu);
    while (!stop_ready) {
      const bool now = !ctx.draining.load() && !sessions->full();
      if (now != serving) {
        serving = now;
        health.Set("", serving);
        metrics.SetServing(serving);
      }
      ready_cv.wait_for(lock, std::chrono::milliseconds(250));
    }
  });

  const int signal = WaitForStopSignal();
  std::fprintf(stderr, "mnemo-server: signal %d, draining (grace %s)\n", signal,
               absl::FormatDuration(grace).c_str());
  // Drain: health says NOT_SERVING and new work gets UNAVAILABLE while the listener stays open
  // (so probes see the change), requests in flight get the grace to finish, then whatever is
  // left is cancelled (and rolled back) by the transport's shutdown.
  ctx.draining = true;
  health.Set("", false);
  metrics.SetServing(false);
  {
    std::lock_guard<std::mutex> lock(ready_mu);
    stop_ready = true;
  }
  ready_cv.notify_all();
  readiness.join();
  const absl::Time deadline = absl::Now() + grace;
  while (ctx.in_flight.load() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  // Replicas: sessions go to the store and are let go while the listener still answers
  // hand-offs, so a replica taking one over meanwhile gets it from here.
  int released = sessions->ReleaseAll();
  // The grace is over (or nothing runs). Calls that arrived meanwhile get two more seconds to
  // send their DRAINING answer (cancelling them would tell a client "CANCELLED", which it may
  // not retry); then whatever still runs is cancelled, and idle connections are not waited for.
  // A request that does not return once cancelled (stuck in a store that stopped answering, or
  // in work that does not look at cancellation) must not keep the process: past
  // kAbandonRequestsAfter the process exits 1 without it (its session stays at its last
  // committed version; nothing half-done was committed).
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  bool requests_done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(stop_mu);
    if (stop_cv.wait_for(lock, absl::ToChronoSeconds(absl::Seconds(2) + kAbandonRequestsAfter),
                         [&] { return requests_done; })) {
      return;
    }
    std::fprintf(stderr,
                 "mnemo-server: %lld requests still running %s after they were cancelled; "
                 "exiting without them\n",
                 static_cast<long long>(ctx.in_flight.load()),
                 absl::FormatDuration(kAbandonRequestsAfter).c_str());
    std::fflush(stderr);
    std::_Exit(1);
  });
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  models->Shutdown();
  server->Wait();
  {
    std::lock_guard<std::mutex> lock(stop_mu);
    requests_done = true;
  }
  stop_cv.notify_all();
  watchdog.join();
  // Probes see NOT_SERVING readiness until the main listener is gone.
  if (health_listener != nullptr) health_listener->Shutdown();
  released += sessions->ReleaseAll();  // those whose requests ran past the grace
  sessions->FlushStore();              // ASYNC snapshots already queued reach the store
  if (sessions->replica_mode()) {
    std::fprintf(stderr, "mnemo-server: %d sessions written to the store and released\n", released);
  }
  std::fprintf(stderr, "mnemo-server: stopped\n");
  return absl::OkStatus();
}

}  // namespace
}  // namespace mnemo::server

int main(int argc, char** argv) {
  absl::Status status = mnemo::server::Serve(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "mnemo-server: %s\n", status.ToString().c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
