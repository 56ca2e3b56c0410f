#include "server/metrics.h"

#include <array>
#include <string>
#include <string_view>

#include "prometheus/histogram.h"
#include "server/allocator_stats.h"

namespace mnemo::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// Request and first-token latencies: 1 ms … ~17 min, long enough for a book's ingest.
Histogram::BucketBoundaries LatencyBuckets() {
  Histogram::BucketBoundaries b;
  for (double v = 0.001; v < 1100; v *= 2) b.push_back(v);
  return b;
}

// Inter-token and step times: 50 µs … ~3.3 s.
Histogram::BucketBoundaries StepBuckets() {
  Histogram::BucketBoundaries b;
  for (double v = 50e-6; v < 4; v *= 2) b.push_back(v);
  return b;
}

// Snapshot sizes: 4 KiB … 64 GiB.
Histogram::BucketBoundaries ByteBuckets() {
  Histogram::BucketBoundaries b;
  for (double v = 4096; v < 7e10; v *= 4) b.push_back(v);
  return b;
}

Histogram::BucketBoundaries BatchBuckets() { return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}; }

constexpr std::array<const char*, 5> kPhases = {"decode", "prefill", "ingest", "score", "encode"};
constexpr std::array<const char*, 4> kStateSources = {"resident", "promoted", "store", "new"};

// The index of `name` in `names` (the documented label values; an unknown one, a programming
// error, lands in the last entry rather than creating an unbounded label).
template <size_t N>
size_t IndexOf(const std::array<const char*, N>& names, std::string_view name) {
  for (size_t i = 0; i < N; ++i) {
    if (name == names[i]) return i;
  }
  return N - 1;
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(BuildCounter()
                    .Name("mnemo_requests_total")
                    .Help("Finished RPCs by method and gRPC status code")
                    .Register(*registry_)),
      request_duration_(BuildHistogram()
                            .Name("mnemo_request_duration_seconds")
                            .Help("RPC duration from receipt to the last response")
                            .Register(*registry_)),
      ttft_(BuildHistogram()
                .Name("mnemo_time_to_first_token_seconds")
                .Help("Generate: from receipt to the first generated token, by where the "
                      "session's state was (resident, promoted from host, new)")
                .Register(*registry_)),
      inter_token_(BuildHistogram()
                       .Name("mnemo_inter_token_latency_seconds")
                       .Help("Generate: time between consecutive generated tokens")
                       .Register(*registry_)
                       .Add({}, StepBuckets())),
      prompt_tokens_(BuildCounter()
                         .Name("mnemo_prompt_tokens_total")
                         .Help("Prompt tokens of Generate and Score requests")
                         .Register(*registry_)
                         .Add({})),
      generated_tokens_(BuildCounter()
                            .Name("mnemo_generated_tokens_total")
                            .Help("Tokens generated")
                            .Register(*registry_)
                            .Add({})),
      ingested_tokens_(BuildCounter()
                           .Name("mnemo_ingested_tokens_total")
                           .Help("Document tokens received by Ingest")
                           .Register(*registry_)
                           .Add({})),
      encoded_tokens_(BuildCounter()
                          .Name("mnemo_encoded_tokens_total")
                          .Help("Document tokens encoded by Encode")
                          .Register(*registry_)
                          .Add({})),
      running_(BuildGauge()
                   .Name("mnemo_requests_running")
                   .Help("RPCs being handled")
                   .Register(*registry_)
                   .Add({})),
      waiting_(BuildGauge()
                   .Name("mnemo_requests_waiting")
                   .Help("Model steps queued for the next forward passes")
                   .Register(*registry_)
                   .Add({})),
      rejected_(BuildCounter()
                    .Name("mnemo_requests_rejected_total")
                    .Help("Requests refused for lack of capacity, by reason")
                    .Register(*registry_)),
      batch_size_(BuildHistogram()
                      .Name("mnemo_batch_size")
                      .Help("Sequences per engine step")
                      .Register(*registry_)
                      .Add({}, BatchBuckets())),
      step_(BuildHistogram()
                .Name("mnemo_engine_step_seconds")
                .Help("Forward-pass time by phase")
                .Register(*registry_)),
      sessions_(BuildGauge()
                    .Name("mnemo_sessions")
                    .Help("Open sessions by the tier their state lives in")
                    .Register(*registry_)),
      state_bytes_(BuildGauge()
                       .Name("mnemo_session_state_bytes")
                       .Help("Bytes of session state by tier")
                       .Register(*registry_)),
      tier_moves_(BuildCounter()
                      .Name("mnemo_session_tier_moves_total")
                      .Help("Session states moved between tiers")
                      .Register(*registry_)),
      closed_(BuildCounter()
                  .Name("mnemo_sessions_closed_total")
                  .Help("Sessions closed, by reason")
                  .Register(*registry_)),
      compressions_(BuildCounter()
                        .Name("mnemo_memory_compressions_total")
                        .Help("Compressive-memory compression steps")
                        .Register(*registry_)
                        .Add({})),
      draft_proposed_(BuildCounter()
                          .Name("mnemo_draft_tokens_proposed_total")
                          .Help("Speculative decoding: tokens the draft models proposed")
                          .Register(*registry_)
                          .Add({})),
      draft_accepted_(BuildCounter()
                          .Name("mnemo_draft_tokens_accepted_total")
                          .Help("Speculative decoding: proposed tokens the models kept")
                          .Register(*registry_)
                          .Add({})),
      model_info_(BuildGauge()
                      .Name("mnemo_model_info")
                      .Help("Loaded models (value 1)")
                      .Register(*registry_)),
      snapshots_(BuildCounter()
                     .Name("mnemo_session_snapshots_total")
                     .Help("Session snapshots written to the session store, by reason")
                     .Register(*registry_)),
      restores_(BuildCounter()
                    .Name("mnemo_session_restores_total")
                    .Help("Sessions restored from snapshots, by source (store, import)")
                    .Register(*registry_)),
      snapshot_bytes_(BuildHistogram()
                          .Name("mnemo_session_snapshot_bytes")
                          .Help("Size of session snapshots written or read")
                          .Register(*registry_)),
      snapshot_seconds_(BuildHistogram()
                            .Name("mnemo_session_snapshot_seconds")
                            .Help("Time to write a snapshot to the store or read and restore one")
                            .Register(*registry_)),
      store_errors_(BuildCounter()
                        .Name("mnemo_session_store_errors_total")
                        .Help("Session store and snapshot failures, by kind")
                        .Register(*registry_)),
      handoffs_(BuildCounter()
                    .Name("mnemo_session_handoffs_total")
                    .Help("Sessions handed between replicas: asked of another (in) or done for "
                          "another (out), by result")
                    .Register(*registry_)),
      ownership_(BuildCounter()
                     .Name("mnemo_session_ownership_total")
                     .Help("Session ownership events of this replica (claimed, fenced, released, "
                           "lost_race)")
                     .Register(*registry_)),
      serving_(BuildGauge()
                   .Name("mnemo_serving")
                   .Help("1 while the server takes new work (its readiness), 0 while draining "
                         "or full")
                   .Register(*registry_)
                   .Add({})),
      heap_allocated_(BuildGauge()
                          .Name("mnemo_heap_allocated_bytes")
                          .Help("Heap bytes the server holds (allocated, not yet freed), as its "
                                "allocator counts them; unlike the RSS, without the freed memory "
                                "the allocator keeps for reuse")
                          .Register(*registry_)
                          .Add({})),
      heap_bytes_(BuildGauge()
                      .Name("mnemo_heap_bytes")
                      .Help("Bytes the allocator has obtained from the system for the heap "
                            "(held by the server or kept free for reuse)")
                      .Register(*registry_)
                      .Add({})),
      heap_releases_(BuildCounter()
                         .Name("mnemo_heap_releases_total")
                         .Help("Times the allocator's free memory was handed back to the system "
                               "(--memory-release-interval)")
                         .Register(*registry_)
                         .Add({})),
      heap_released_bytes_(BuildCounter()
                               .Name("mnemo_heap_released_bytes_total")
                               .Help("Bytes the resident set fell by when the allocator's free "
                                     "memory was handed back to the system")
                               .Register(*registry_)
                               .Add({})),
      replica_info_(BuildGauge()
                        .Name("mnemo_replica_info")
                        .Help("This replica's name in session ownership records (value 1)")
                        .Register(*registry_)),
      state_budget_(BuildGauge()
                        .Name("mnemo_session_state_budget_bytes")
                        .Help("Bytes of session state a tier may hold (0: no limit)")
                        .Register(*registry_)),
      tenant_requests_(BuildCounter()
                           .Name("mnemo_tenant_requests_total")
                           .Help("Finished RPCs by tenant and gRPC status code")
                           .Register(*registry_)),
      tenant_tokens_(BuildCounter()
                         .Name("mnemo_tenant_tokens_total")
                         .Help("Tokens run through a model (ingested, prompt, scored, generated) "
                               "by tenant")
                         .Register(*registry_)),
      tenant_quota_rejected_(BuildCounter()
                                 .Name("mnemo_tenant_quota_rejections_total")
                                 .Help("Requests refused for a tenant quota, by tenant and quota")
                                 .Register(*registry_)),
      tenant_sessions_(BuildGauge()
                           .Name("mnemo_tenant_sessions")
                           .Help("Open sessions by tenant")
                           .Register(*registry_)),
      tenant_state_bytes_(BuildGauge()
                              .Name("mnemo_tenant_session_state_bytes")
                              .Help("Bytes of session state by tenant (every tier)")
                              .Register(*registry_)),
      auth_failures_(BuildCounter()
                         .Name("mnemo_auth_failures_total")
                         .Help("RPCs refused UNAUTHENTICATED")
                         .Register(*registry_)
                         .Add({})) {
  BuildGauge()
      .Name("mnemo_build_info")
      .Help("Build of this server (value 1)")
      .Register(*registry_)
      .Add({{"version", MNEMO_VERSION}})
      .Set(1);
  for (const char* tier : {"device", "host", "store"}) SetSessions(tier, 0, 0);
  for (const char* direction : {"in", "out"}) {
    for (const char* result : {"ok", "unreachable", "error"}) {
      handoffs_.Add({{"direction", direction}, {"result", result}});
    }
  }
  for (const char* event : {"claimed", "fenced", "released", "lost_race"}) {
    ownership_.Add({{"event", event}});
  }
  serving_.Set(1);
  for (const char* op : {"write", "read"}) {
    snapshot_bytes_.Add({{"op", op}}, ByteBuckets());
    snapshot_seconds_.Add({{"op", op}}, LatencyBuckets());
  }
  for (size_t i = 0; i < kPhases.size(); ++i) {
    step_by_phase_[i] = &step_.Add({{"phase", kPhases[i]}}, StepBuckets());
  }
  for (size_t i = 0; i < kStateSources.size(); ++i) {
    ttft_by_source_[i] = &ttft_.Add({{"state_source", kStateSources[i]}}, LatencyBuckets());
  }
}

void Metrics::Request(std::string_view rpc, std::string_view code, double seconds) {
  requests_.Add({{"rpc", std::string(rpc)}, {"code", std::string(code)}}).Increment();
  request_duration_.Add({{"rpc", std::string(rpc)}}, LatencyBuckets()).Observe(seconds);
}

void Metrics::TenantRequest(const std::string& tenant, std::string_view code) {
  tenant_requests_.Add({{"tenant", tenant}, {"code", std::string(code)}}).Increment();
}

void Metrics::TenantTokens(const std::string& tenant, int64_t n) {
  tenant_tokens_.Add({{"tenant", tenant}}).Increment(static_cast<double>(n));
}

void Metrics::TenantQuotaRejected(const std::string& tenant, std::string_view quota) {
  tenant_quota_rejected_.Add({{"tenant", tenant}, {"quota", std::string(quota)}}).Increment();
}

void Metrics::SetTenantSessions(const std::string& tenant, int64_t count, int64_t bytes) {
  tenant_sessions_.Add({{"tenant", tenant}}).Set(static_cast<double>(count));
  tenant_state_bytes_.Add({{"tenant", tenant}}).Set(static_cast<double>(bytes));
}

void Metrics::Rejected(std::string_view reason) {
  rejected_.Add({{"reason", std::string(reason)}}).Increment();
}

void Metrics::TimeToFirstToken(std::string_view state_source, double seconds) {
  ttft_by_source_[IndexOf(kStateSources, state_source)]->Observe(seconds);
}

void Metrics::ObserveStep(std::string_view phase, double seconds) {
  step_by_phase_[IndexOf(kPhases, phase)]->Observe(seconds);
}

void Metrics::SetSessions(std::string_view tier, int64_t count, int64_t bytes) {
  sessions_.Add({{"tier", std::string(tier)}}).Set(static_cast<double>(count));
  state_bytes_.Add({{"tier", std::string(tier)}}).Set(static_cast<double>(bytes));
}

void Metrics::TierMove(std::string_view from, std::string_view to) {
  tier_moves_.Add({{"from", std::string(from)}, {"to", std::string(to)}}).Increment();
}

void Metrics::SessionClosed(std::string_view reason) {
  closed_.Add({{"reason", std::string(reason)}}).Increment();
}

void Metrics::SnapshotWritten(std::string_view reason, int64_t bytes, double seconds) {
  snapshots_.Add({{"reason", std::string(reason)}}).Increment();
  snapshot_bytes_.Add({{"op", "write"}}, ByteBuckets()).Observe(static_cast<double>(bytes));
  snapshot_seconds_.Add({{"op", "write"}}, LatencyBuckets()).Observe(seconds);
}

void Metrics::SnapshotRestored(std::string_view source, int64_t bytes, double seconds) {
  restores_.Add({{"source", std::string(source)}}).Increment();
  snapshot_bytes_.Add({{"op", "read"}}, ByteBuckets()).Observe(static_cast<double>(bytes));
  snapshot_seconds_.Add({{"op", "read"}}, LatencyBuckets()).Observe(seconds);
}

void Metrics::StoreError(std::string_view kind) {
  store_errors_.Add({{"kind", std::string(kind)}}).Increment();
}

void Metrics::ModelInfo(const std::string& name, const std::string& device,
                        const std::string& dtype, const std::string& attention) {
  model_info_.Add({{"model", name}, {"device", device}, {"dtype", dtype}, {"attention", attention}})
      .Set(1);
}

void Metrics::HandOff(std::string_view direction, std::string_view result) {
  handoffs_.Add({{"direction", std::string(direction)}, {"result", std::string(result)}})
      .Increment();
}

void Metrics::Ownership(std::string_view event) {
  ownership_.Add({{"event", std::string(event)}}).Increment();
}

void Metrics::SetReplica(const std::string& replica) {
  replica_info_.Add({{"replica", replica}}).Set(1);
}

void Metrics::RefreshAllocatorStats() {
  const AllocatorStats stats = ReadAllocatorStats();
  heap_allocated_.Set(static_cast<double>(stats.allocated_bytes));
  heap_bytes_.Set(static_cast<double>(stats.heap_bytes));
}

void Metrics::HeapReleased(int64_t bytes) {
  heap_releases_.Increment();
  heap_released_bytes_.Increment(static_cast<double>(bytes));
}

void Metrics::SetStateBudget(std::string_view tier, int64_t bytes) {
  state_budget_.Add({{"tier", std::string(tier)}}).Set(static_cast<double>(bytes));
}

}  // namespace mnemo::server
