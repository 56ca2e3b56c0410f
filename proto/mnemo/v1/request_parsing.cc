#include "mnemo/v1/request_parsing.h"

#include <mutex>
#include <string>

#include "google/protobuf/stubs/logging.h"

namespace mnemo::v1 {
namespace {

// Protobuf reports which string field held invalid UTF-8 only through its log; keep the last
// message of this thread (and still print it, as protobuf would).
thread_local std::string last_protobuf_error;
thread_local grpc::Status last_parse_error;
google::protobuf::LogHandler* previous_handler = nullptr;

void CaptureLog(google::protobuf::LogLevel level, const char* file, int line,
                const std::string& message) {
  if (level >= google::protobuf::LOGLEVEL_ERROR) last_protobuf_error = message;
  if (previous_handler != nullptr) previous_handler(level, file, line, message);
}

// "String field 'mnemo.v1.GenerateRequest.text' contains invalid UTF-8 …" → "text".
std::string InvalidUtf8Field(const std::string& log, const std::string& type) {
  if (log.find("invalid UTF-8") == std::string::npos) return {};
  const size_t open = log.find('\'');
  const size_t close = open == std::string::npos ? open : log.find('\'', open + 1);
  if (close == std::string::npos) return {};
  std::string field = log.substr(open + 1, close - open - 1);
  if (field.rfind(type + ".", 0) == 0) field = field.substr(type.size() + 1);
  return field;
}

}  // namespace

grpc::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* message) {
  static std::once_flag once;
  std::call_once(once, [] { previous_handler = google::protobuf::SetLogHandler(CaptureLog); });
  const std::string type = message->GetDescriptor()->full_name();
  if (buffer == nullptr) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the request carried no message");
  }
  last_protobuf_error.clear();
  last_parse_error = grpc::Status::OK;  // only the latest parse on this thread counts
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(buffer);
    if (!reader.status().ok()) return reader.status();
    parsed = message->ParseFromZeroCopyStream(&reader);
  }
  buffer->Clear();
  if (parsed) return grpc::Status::OK;
  const std::string field = InvalidUtf8Field(last_protobuf_error, type);
  const std::string text =
      field.empty() ? "the request is not a valid " + type + " message"
                    : field + ": string fields must hold valid UTF-8 (send text as UTF-8)";
  // The same BadRequest detail the services attach to their own field errors.
  RpcStatus details;
  details.set_code(grpc::StatusCode::INVALID_ARGUMENT);
  details.set_message(text);
  BadRequest bad;
  auto* v = bad.add_field_violations();
  v->set_field(field.empty() ? "request" : field);
  v->set_description(field.empty() ? "does not parse as " + type : "is not valid UTF-8");
  google::protobuf::Any* any = details.add_details();
  any->set_type_url("type.googleapis.com/google.rpc.BadRequest");
  any->set_value(bad.SerializeAsString());
  last_parse_error =
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, text, details.SerializeAsString());
  return last_parse_error;
}

grpc::Status TakeRequestParseError() {
  grpc::Status error = last_parse_error;
  last_parse_error = grpc::Status::OK;
  return error;
}

}  // namespace mnemo::v1
