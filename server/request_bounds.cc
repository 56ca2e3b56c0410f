#include "server/request_bounds.h"

#include <string>

#include "absl/strings/str_cat.h"

#include "server/grpc_status.h"
#include "server/service_context.h"

namespace mnemo::server {
namespace {

// Collects the fields of one message past their limits; `prefix` names the message in a stream.
class Bounds {
 public:
  explicit Bounds(std::string prefix = {}) : prefix_(std::move(prefix)) {}

  void Bytes(const char* field, const std::string& value, int64_t max) {
    const auto n = static_cast<int64_t>(value.size());
    if (n > max) {
      violations_.Add(absl::StrCat(prefix_, field),
                      absl::StrCat(n, " bytes is more than the ", max, " allowed"));
    }
  }
  void Count(const char* field, int64_t n, int64_t max, const char* what) {
    if (n > max) {
      violations_.Add(absl::StrCat(prefix_, field),
                      absl::StrCat(n, " ", what, " is more than the ", max, " allowed"));
    }
  }
  // Labels and label filters: the entry count first, then (only then) each key and value.
  void Labels(const char* field, const google::protobuf::Map<std::string, std::string>& labels,
              int max_labels) {
    const auto n = static_cast<int64_t>(labels.size());
    if (n > max_labels) {
      Count(field, n, max_labels, "labels");
      return;
    }
    for (const auto& [key, value] : labels) {
      // Named by the map field, not by the key: the key may be the oversized part.
      if (static_cast<int64_t>(key.size()) > kMaxLabelKeyBytes) {
        violations_.Add(absl::StrCat(prefix_, field),
                        absl::StrCat("a key of ", key.size(), " bytes is more than the ",
                                     kMaxLabelKeyBytes, " a label key may hold"));
      }
      if (static_cast<int64_t>(value.size()) > kMaxLabelValueBytes) {
        violations_.Add(absl::StrCat(prefix_, field),
                        absl::StrCat("a value of ", value.size(), " bytes is more than the ",
                                     kMaxLabelValueBytes, " a label value may hold"));
      }
    }
  }
  // proto3 enums are open: a value this server does not know parses and must be refused here
  // rather than read as the default.
  template <typename Enum>
  void Known(const char* field, Enum value, bool (*is_valid)(int)) {
    if (!is_valid(static_cast<int>(value))) {
      violations_.Add(absl::StrCat(prefix_, field),
                      absl::StrCat(static_cast<int>(value), " is not a value of this enum"));
    }
  }
  absl::Status ToStatus() const { return violations_.ToStatus(); }

 private:
  std::string prefix_;
  FieldViolations violations_;
};

void TokenIds(Bounds& b, const char* field, const v1::TokenIds& ids, const RequestLimits& limits) {
  b.Count(field, ids.ids_size(), limits.max_input_tokens, "ids");
}

}  // namespace

absl::Status CheckRequest(const v1::ListModelsRequest&, const RequestLimits&) {
  return absl::OkStatus();
}

absl::Status CheckRequest(const v1::GetModelRequest& request, const RequestLimits&) {
  Bounds b;
  b.Bytes("name", request.name(), kMaxNameBytes);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::TokenizeRequest& request, const RequestLimits& limits) {
  Bounds b;
  b.Bytes("model", request.model(), kMaxNameBytes);
  b.Bytes("text", request.text(), limits.max_text_bytes);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::DetokenizeRequest& request, const RequestLimits& limits) {
  Bounds b;
  b.Bytes("model", request.model(), kMaxNameBytes);
  b.Count("ids", request.ids_size(), limits.max_input_tokens, "ids");
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::CreateSessionRequest& request, const RequestLimits& limits) {
  Bounds b;
  b.Bytes("model", request.model(), kMaxNameBytes);
  b.Labels("labels", request.labels(), limits.max_labels);
  b.Known("durability", request.durability(), v1::Durability_IsValid);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::GetSessionRequest& request, const RequestLimits&) {
  Bounds b;
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::ListSessionsRequest& request, const RequestLimits& limits) {
  Bounds b;
  b.Bytes("page_token", request.page_token(), kMaxPageTokenBytes);
  b.Labels("label_filter", request.label_filter(), limits.max_labels);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::DeleteSessionRequest& request, const RequestLimits&) {
  Bounds b;
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::ForkSessionRequest& request, const RequestLimits& limits) {
  Bounds b;
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  b.Labels("labels", request.labels(), limits.max_labels);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::ExportSessionRequest& request, const RequestLimits&) {
  Bounds b;
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::GenerateRequest& request, const RequestLimits& limits) {
  Bounds b;
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  b.Bytes("model", request.model(), kMaxNameBytes);
  b.Bytes("text", request.text(), limits.max_text_bytes);
  TokenIds(b, "ids.ids", request.ids(), limits);
  b.Count("stop", request.stop_size(), limits.max_stop_strings, "strings");
  // Each stop string's length is checked by the service (1 … max_stop_bytes) once the count is.
  b.Count("stop_ids", request.stop_ids_size(), limits.max_stop_ids, "ids");
  b.Known("commit", request.commit(), v1::CommitMode_IsValid);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::ScoreRequest& request, const RequestLimits& limits) {
  Bounds b;
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  b.Bytes("model", request.model(), kMaxNameBytes);
  b.Bytes("text", request.text(), limits.max_text_bytes);
  TokenIds(b, "ids.ids", request.ids(), limits);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::HandOffSessionRequest& request, const RequestLimits&) {
  Bounds b;
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  b.Bytes("to_replica", request.to_replica(), kMaxReplicaNameBytes);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::IngestRequest& request, const RequestLimits& limits,
                          int64_t index) {
  Bounds b(index == 0 ? std::string() : absl::StrCat("messages[", index, "]."));
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  b.Bytes("text", request.text(), limits.max_text_bytes);
  TokenIds(b, "ids.ids", request.ids(), limits);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::EncodeRequest& request, const RequestLimits& limits,
                          int64_t index) {
  Bounds b(index == 0 ? std::string() : absl::StrCat("messages[", index, "]."));
  b.Bytes("model", request.model(), kMaxNameBytes);
  b.Known("pooling", request.pooling(), v1::Pooling_IsValid);
  b.Count("global_positions", request.global_positions_size(), kMaxGlobalPositions, "positions");
  b.Count("mlm_positions", request.mlm_positions_size(), kMaxMlmPositions, "positions");
  b.Bytes("text", request.text(), limits.max_text_bytes);
  TokenIds(b, "ids.ids", request.ids(), limits);
  return b.ToStatus();
}

absl::Status CheckRequest(const v1::ImportSessionRequest& request, const RequestLimits& limits,
                          int64_t index) {
  Bounds b(index == 0 ? std::string() : absl::StrCat("messages[", index, "]."));
  b.Bytes("model", request.model(), kMaxNameBytes);
  b.Bytes("session_id", request.session_id(), kMaxSessionIdBytes);
  b.Labels("labels", request.labels(), limits.max_labels);
  b.Known("durability", request.durability(), v1::Durability_IsValid);
  return b.ToStatus();
}

}  // namespace mnemo::server
