// The safetensors reader (engine/checkpoint/safetensors) on arbitrary bytes: it must answer every
// input with a status, and every tensor it accepts must lie inside the buffer, hold exactly its
// shape's bytes and overlap no other tensor.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "base/dtype.h"
#include "engine/checkpoint/safetensors.h"

// Read by nobody; keeps the reads of the tensor bytes from being optimised away.
unsigned g_sink = 0;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = mnemo::engine::SafetensorsFile::FromBuffer(data, size, "fuzz.safetensors");
  if (!file.ok()) return 0;
  std::vector<std::pair<const unsigned char*, const unsigned char*>> ranges;
  for (const mnemo::engine::SafetensorsTensor& t : (*file)->tensors()) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    if (t.size_bytes != numel * mnemo::DTypeSize(t.dtype)) std::abort();
    if (t.data < data || t.data + t.size_bytes > data + size) std::abort();
    if ((*file)->Find(t.name) != &t) std::abort();
    // Touch every byte: ASan reports a read outside the input.
    for (size_t i = 0; i < t.size_bytes; ++i) g_sink += t.data[i];
    if (t.size_bytes > 0) ranges.emplace_back(t.data, t.data + t.size_bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) std::abort();
  }
  return 0;
}
