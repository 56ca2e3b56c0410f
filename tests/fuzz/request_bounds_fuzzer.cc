// The request checks alone, at the speed a fuzzer needs to reach millions of inputs: each input's
// messages go through the parser gRPC calls for every mnemo.v1 request
// (proto/mnemo/v1/request_parsing) and then through CheckRequest (server/request_bounds), with no
// server behind them. request_fuzzer drives the same bytes through the whole server, a hundred
// times slower.
//
// Input: as request_fuzzer's (byte 0 picks the request type, in its order, then HandOffSession;
// streamed types take u16-length-prefixed messages), so each seeds the other.
//
// Properties: a parse error is INVALID_ARGUMENT; CheckRequest answers OK or INVALID_ARGUMENT with
// a message short enough for gRPC's metadata; and a message it accepts has no string or bytes
// field longer, and no repeated field (maps included) with more elements, than the largest limit
// in force, walking every field by reflection. A field added to the API without a bound fails the
// last property at once.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/support/byte_buffer.h"
#include "mnemo/v1/mnemo.grpc.pb.h"
#include "server/request_bounds.h"
#include "server/service_context.h"
#include "tests/fuzz/request_input.h"

namespace {

namespace v1 = mnemo::v1;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

// Small limits, so that the reflection property below bites on every field.
mnemo::server::RequestLimits Limits() {
  mnemo::server::RequestLimits limits;
  limits.max_generate_tokens = 64;
  limits.max_input_tokens = 128;
  limits.max_text_bytes = 1024;
  limits.max_stop_strings = 4;
  limits.max_stop_bytes = 32;
  limits.max_stop_ids = 8;
  limits.max_labels = 4;
  return limits;
}
const mnemo::server::RequestLimits kLimits = Limits();
// The largest a string, bytes or repeated field may be when the request passed; the one exception
// is ImportSessionRequest.data, bounded by the model's snapshot size in the service.
constexpr size_t kMaxFieldBytes = 1024;  // max_text_bytes; the fixed limits are smaller
constexpr int kMaxFieldElements = 128;   // max_input_tokens; the other counts are smaller
// gRPC carries the status message in a header; its default limit is 8 KiB.
constexpr size_t kMaxStatusMessageBytes = 4096;

void Die(const std::string& what) {
  std::fprintf(stderr, "request_bounds_fuzzer: %s\n", what.c_str());
  std::abort();
}

void CheckBounded(const Message& m, const std::string& path) {
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string name = path + f->name();
    if (f->full_name() == "mnemo.v1.ImportSessionRequest.data") continue;
    if (f->is_repeated()) {
      const int n = r->FieldSize(m, f);
      if (n > kMaxFieldElements) Die(name + " holds " + std::to_string(n) + " elements");
      for (int i = 0; i < n; ++i) {
        if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING &&
            r->GetRepeatedStringReference(m, f, i, nullptr).size() > kMaxFieldBytes) {
          Die(name + "[] is longer than any limit");
        }
        if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          CheckBounded(r->GetRepeatedMessage(m, f, i), name + "[].");
        }
      }
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
      std::string scratch;
      if (r->GetStringReference(m, f, &scratch).size() > kMaxFieldBytes) {
        Die(name + " is longer than any limit");
      }
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      CheckBounded(r->GetMessage(m, f), name + ".");
    }
  }
}

// Parses `bytes` as a T the way gRPC does, then checks it.
template <typename T, typename Check>
void One(const std::string& bytes, Check check) {
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer buffer(&slice, 1);
  T request;
  const grpc::Status parsed = v1::ParseRequest(&buffer, &request);
  (void)v1::TakeRequestParseError();
  if (!parsed.ok()) {
    if (parsed.error_code() != grpc::StatusCode::INVALID_ARGUMENT) {
      Die("a parse error answered " + std::to_string(parsed.error_code()));
    }
    return;
  }
  const absl::Status checked = check(request);
  if (!checked.ok() && checked.code() != absl::StatusCode::kInvalidArgument) {
    Die("CheckRequest answered " + checked.ToString());
  }
  if (checked.message().size() > kMaxStatusMessageBytes) {
    Die("CheckRequest's message has " + std::to_string(checked.message().size()) + " bytes");
  }
  if (checked.ok()) CheckBounded(request, std::string(T::descriptor()->name()) + ".");
}

template <typename T>
void Unary(const std::vector<std::string>& messages) {
  One<T>(messages[0], [](const T& r) { return mnemo::server::CheckRequest(r, kLimits); });
}

template <typename T>
void Streamed(const std::vector<std::string>& messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    One<T>(messages[i], [i](const T& r) {
      return mnemo::server::CheckRequest(r, kLimits, static_cast<int64_t>(i));
    });
  }
}

struct Type {
  bool streamed;
  void (*run)(const std::vector<std::string>&);
};
// request_fuzzer's method order, then the replica service's request.
const Type kTypes[] = {
    {false, Unary<v1::ListModelsRequest>},      {false, Unary<v1::GetModelRequest>},
    {false, Unary<v1::TokenizeRequest>},        {false, Unary<v1::DetokenizeRequest>},
    {false, Unary<v1::CreateSessionRequest>},   {false, Unary<v1::GetSessionRequest>},
    {false, Unary<v1::ListSessionsRequest>},    {false, Unary<v1::DeleteSessionRequest>},
    {false, Unary<v1::ForkSessionRequest>},     {false, Unary<v1::ExportSessionRequest>},
    {true, Streamed<v1::ImportSessionRequest>}, {true, Streamed<v1::IngestRequest>},
    {false, Unary<v1::GenerateRequest>},        {false, Unary<v1::ScoreRequest>},
    {false, Unary<v1::HandOffSessionRequest>},
};
constexpr size_t kNumTypes = sizeof(kTypes) / sizeof(kTypes[0]);

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 is reported by ParseRequest
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Type& type = kTypes[data[0] % kNumTypes];
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  type.run(mnemo::fuzz::RequestMessages(type.streamed, rest));
  return 0;
}
