// Metrics: the server's Prometheus instruments (prometheus-cpp), named and labelled by Prometheus
// conventions: `mnemo_` prefix, base units (seconds, bytes), `_total` counters, and only
// low-cardinality labels (never a session id). Exposed over HTTP by an Exposer in main.
//
// Threading: every method is safe to call from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mnemo::server {

class Metrics {
 public:
  Metrics();
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One finished RPC: `rpc` is the method name, `code` the gRPC code name ("OK", …).
  void Request(std::string_view rpc, std::string_view code, double seconds);
  void RequestStarted() { running_.Increment(); }
  void RequestEnded() { running_.Decrement(); }
  void Rejected(std::string_view reason);
  // `state_source`: "resident", "promoted" (from host), "store" (restored) or "new".
  void TimeToFirstToken(std::string_view state_source, double seconds);
  void InterTokenLatency(double seconds) { inter_token_.Observe(seconds); }
  void PromptTokens(int64_t n) { prompt_tokens_.Increment(static_cast<double>(n)); }
  void GeneratedTokens(int64_t n) { generated_tokens_.Increment(static_cast<double>(n)); }
  void IngestedTokens(int64_t n) { ingested_tokens_.Increment(static_cast<double>(n)); }
  void EncodedTokens(int64_t n) { encoded_tokens_.Increment(static_cast<double>(n)); }
  void SetWaiting(int64_t n) { waiting_.Set(static_cast<double>(n)); }
  void ObserveBatch(int64_t sequences) { batch_size_.Observe(static_cast<double>(sequences)); }
  // `phase`: "decode", "prefill", "ingest" or "score".
  void ObserveStep(std::string_view phase, double seconds);
  // `tier`: "device", "host" or "store".
  void SetSessions(std::string_view tier, int64_t count, int64_t bytes);
  void TierMove(std::string_view from, std::string_view to);
  // `reason`: "deleted", "expired" or "shutdown".
  void SessionClosed(std::string_view reason);
  void Compressions(int64_t n) { compressions_.Increment(static_cast<double>(n)); }
  // Speculative decoding: draft tokens proposed and how many the model kept.
  void DraftTokens(int64_t proposed, int64_t accepted) {
    draft_proposed_.Increment(static_cast<double>(proposed));
    draft_accepted_.Increment(static_cast<double>(accepted));
  }
  // Session store: a snapshot written (`reason`: "async", "sync", "evict"), a session restored
  // (`source`: "store", "import"), a store or snapshot error by kind (StoreErrorKind).
  void SnapshotWritten(std::string_view reason, int64_t bytes, double seconds);
  void SnapshotRestored(std::string_view source, int64_t bytes, double seconds);
  void StoreError(std::string_view kind);
  // Replicas sharing a store: hand-offs asked of others ("in") or done for them ("out"), by
  // result; ownership events (claimed, fenced, released, lost_race).
  void HandOff(std::string_view direction, std::string_view result);
  void Ownership(std::string_view event);
  void SetServing(bool serving) { serving_.Set(serving ? 1 : 0); }
  void SetReplica(const std::string& replica);
  // The state budget of a tier in bytes (0: no limit).
  void SetStateBudget(std::string_view tier, int64_t bytes);
  // Tenants (label `tenant`: the auth file's tenant name, "" without one; never a token).
  void TenantRequest(const std::string& tenant, std::string_view code);
  void TenantTokens(const std::string& tenant, int64_t n);
  // `quota`: "sessions", "state_bytes", "concurrent_requests" or "tokens_per_minute".
  void TenantQuotaRejected(const std::string& tenant, std::string_view quota);
  void SetTenantSessions(const std::string& tenant, int64_t count, int64_t bytes);
  void AuthFailure() { auth_failures_.Increment(); }
  void ModelInfo(const std::string& name, const std::string& device, const std::string& dtype,
                 const std::string& attention);
  // Reads the allocator's figures into mnemo_heap_allocated_bytes and mnemo_heap_bytes (the
  // metrics endpoint calls it before each scrape).
  void RefreshAllocatorStats();
  // A release of the allocator's free memory (server/memory_releaser.h) and the bytes the RSS
  // fell by.
  void HeapReleased(int64_t bytes);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& request_duration_;
  prometheus::Family<prometheus::Histogram>& ttft_;
  prometheus::Histogram& inter_token_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generated_tokens_;
  prometheus::Counter& ingested_tokens_;
  prometheus::Counter& encoded_tokens_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Histogram& batch_size_;
  prometheus::Family<prometheus::Histogram>& step_;
  prometheus::Family<prometheus::Gauge>& sessions_;
  prometheus::Family<prometheus::Gauge>& state_bytes_;
  prometheus::Family<prometheus::Counter>& tier_moves_;
  prometheus::Family<prometheus::Counter>& closed_;
  prometheus::Counter& compressions_;
  prometheus::Counter& draft_proposed_;
  prometheus::Counter& draft_accepted_;
  prometheus::Family<prometheus::Gauge>& model_info_;
  prometheus::Family<prometheus::Counter>& snapshots_;
  prometheus::Family<prometheus::Counter>& restores_;
  prometheus::Family<prometheus::Histogram>& snapshot_bytes_;
  prometheus::Family<prometheus::Histogram>& snapshot_seconds_;
  prometheus::Family<prometheus::Counter>& store_errors_;
  prometheus::Family<prometheus::Counter>& handoffs_;
  prometheus::Family<prometheus::Counter>& ownership_;
  prometheus::Gauge& serving_;
  prometheus::Gauge& heap_allocated_;
  prometheus::Gauge& heap_bytes_;
  prometheus::Counter& heap_releases_;
  prometheus::Counter& heap_released_bytes_;
  prometheus::Family<prometheus::Gauge>& replica_info_;
  prometheus::Family<prometheus::Gauge>& state_budget_;
  prometheus::Family<prometheus::Counter>& tenant_requests_;
  prometheus::Family<prometheus::Counter>& tenant_tokens_;
  prometheus::Family<prometheus::Counter>& tenant_quota_rejected_;
  prometheus::Family<prometheus::Gauge>& tenant_sessions_;
  prometheus::Family<prometheus::Gauge>& tenant_state_bytes_;
  prometheus::Counter& auth_failures_;
  // The per-step and per-request series, made once: a lookup here costs no lock or allocation.
  std::array<prometheus::Histogram*, 5> step_by_phase_{};   // kPhases order
  std::array<prometheus::Histogram*, 4> ttft_by_source_{};  // kStateSources order
};

}  // namespace mnemo::server
