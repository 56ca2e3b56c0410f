// Read-only, memory-mapped safetensors file with a fully validated header.
// Layout: u64 little-endian header length N, N bytes of JSON header, then the data buffer.
// Every header entry is checked (dtype known, shape sane, offsets inside the data buffer, byte
// size equal to numel·dtype size, no two tensors overlapping, no duplicate names) and the
// tensors must cover the data buffer exactly (no gap, nothing after the last) before any tensor
// is exposed, so a truncated, shifted or hostile file gives an error, never an out-of-bounds read
// or weights read from the wrong bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "base/dtype.h"

namespace mnemo::engine {

struct SafetensorsTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const unsigned char* data;  // inside the mapping; no alignment guarantee
  size_t size_bytes;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. NOT_FOUND if it cannot be opened; INVALID_ARGUMENT (naming the
  // file and the offending tensor/field) if it is malformed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates an in-memory image (for tests and fuzzing); `bytes` must outlive the object.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBuffer(const unsigned char* bytes,
                                                                     size_t size,
                                                                     std::string display_name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr when absent.
  const SafetensorsTensor* Find(const std::string& name) const;
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  absl::Status Parse(const unsigned char* bytes, size_t size);

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mnemo::engine
