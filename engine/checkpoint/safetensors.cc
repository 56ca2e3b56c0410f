#include "engine/checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit is 100 MB
constexpr size_t kMaxRank = 8;

absl::StatusOr<DType> ParseSafetensorsDType(const std::string& s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "I32") return DType::kI32;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype \"", s, "\" (supported: F32, F16, BF16, I32)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  if (size > 0) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("mmap ", path, ": ", std::strerror(errno)));
    }
    file->mapping_ = m;
    file->mapping_size_ = size;
  }
  ::close(fd);
  RETURN_IF_ERROR(file->Parse(static_cast<const unsigned char*>(file->mapping_), size));
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBuffer(
    const unsigned char* bytes, size_t size, std::string display_name) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::move(display_name);
  RETURN_IF_ERROR(file->Parse(bytes, size));
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const SafetensorsTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::Parse(const unsigned char* bytes, size_t size) {
  auto error = [this](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", what));
  };
  if (size < 8) return error(absl::StrCat("file of ", size, " bytes is too short for a header"));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes) {
    return error(absl::StrCat("header length ", header_len, " exceeds the 100 MB limit"));
  }
  if (header_len > size - 8) {
    return error(absl::StrCat("header length ", header_len, " runs past the end of the file (",
                              size, " bytes): truncated?"));
  }
  const char* header = reinterpret_cast<const char*>(bytes + 8);
  const unsigned char* data = bytes + 8 + header_len;
  const size_t data_size = size - 8 - static_cast<size_t>(header_len);

  // Duplicate keys are not valid JSON objects for us: nlohmann would silently keep the last one.
  std::set<std::string> top_keys;
  bool duplicate = false;
  std::string duplicate_name;
  Json::parser_callback_t callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1) {
      const std::string key = parsed.get<std::string>();
      if (!top_keys.insert(key).second && !duplicate) {
        duplicate = true;
        duplicate_name = key;
      }
    }
    return true;
  };
  Json j = Json::parse(header, header + header_len, callback, /*allow_exceptions=*/false);
  if (j.is_discarded()) return error("header is not valid JSON");
  if (duplicate) return error(absl::StrCat("tensor \"", duplicate_name, "\" appears twice"));
  if (!j.is_object()) return error("header must be a JSON object");

  struct Range {
    size_t begin, end;
    size_t tensor;
  };
  std::vector<Range> ranges;
  for (const auto& item : j.items()) {
    const std::string& name = item.key();
    const Json& v = item.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return error("__metadata__ must be an object of strings");
      for (const auto& m : v.items()) {
        if (!m.value().is_string()) return error("__metadata__ values must be strings");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto terr = [&](absl::string_view what) {
      return error(absl::StrCat("tensor \"", name, "\": ", what));
    };
    if (!v.is_object()) return terr("entry must be an object");
    for (const auto& f : v.items()) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        return terr(absl::StrCat("unknown field \"", f.key(), "\""));
      }
    }
    if (!v.contains("dtype") || !v.at("dtype").is_string()) return terr("missing string \"dtype\"");
    auto dtype = ParseSafetensorsDType(v.at("dtype").get<std::string>());
    if (!dtype.ok()) return terr(dtype.status().message());
    if (!v.contains("shape") || !v.at("shape").is_array()) return terr("missing array \"shape\"");
    const Json& shape_json = v.at("shape");
    if (shape_json.size() > kMaxRank) return terr(absl::StrCat("rank above ", kMaxRank));
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const Json& d : shape_json) {
      if (!d.is_number_unsigned()) return terr("shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > (uint64_t{1} << 40) || (dim != 0 && numel > (uint64_t{1} << 48) / dim)) {
        return terr("shape is absurdly large");
      }
      numel *= dim;
      shape.push_back(static_cast<int64_t>(dim));
    }
    if (!v.contains("data_offsets") || !v.at("data_offsets").is_array() ||
        v.at("data_offsets").size() != 2 || !v.at("data_offsets")[0].is_number_unsigned() ||
        !v.at("data_offsets")[1].is_number_unsigned()) {
      return terr("\"data_offsets\" must be [begin, end] non-negative integers");
    }
    const uint64_t begin = v.at("data_offsets")[0].get<uint64_t>();
    const uint64_t end = v.at("data_offsets")[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return terr(absl::StrCat("data_offsets [", begin, ", ", end,
                               "] fall outside the data buffer of ", data_size, " bytes"));
    }
    const uint64_t expected = numel * DTypeSize(*dtype);
    if (end - begin != expected) {
      return terr(absl::StrCat("holds ", end - begin, " bytes but shape ", shape_json.dump(),
                               " of ", v.at("dtype").get<std::string>(), " needs ", expected));
    }
    ranges.push_back({static_cast<size_t>(begin), static_cast<size_t>(end), tensors_.size()});
    tensors_.push_back(SafetensorsTensor{name, *dtype, std::move(shape), data + begin,
                                         static_cast<size_t>(end - begin)});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return error(absl::StrCat("tensors \"", tensors_[ranges[i - 1].tensor].name, "\" and \"",
                                tensors_[ranges[i].tensor].name, "\" overlap"));
    }
  }
  // The tensors must tile the data buffer exactly. A header length off by a few bytes moves
  // the buffer's start and every tensor with it while each still fits (and the JSON may still
  // parse, its padding being spaces): that leaves bytes before the first tensor, between two or
  // after the last, which are refused here rather than loaded as shifted, garbage weights.
  size_t covered = 0;
  for (const Range& r : ranges) {
    if (r.begin != covered) {
      return error(absl::StrCat(r.begin - covered, " bytes of the data buffer before tensor \"",
                                tensors_[r.tensor].name, "\" (offset ", covered,
                                ") belong to no tensor: a wrong header length?"));
    }
    covered = r.end;
  }
  if (covered != data_size) {
    return error(absl::StrCat("the data buffer holds ", data_size, " bytes but the tensors cover ",
                              covered, ": a wrong header length, or trailing bytes?"));
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  return absl::OkStatus();
}

}  // namespace mnemo::engine
