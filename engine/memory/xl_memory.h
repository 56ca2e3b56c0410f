// One layer's Transformer-XL memory in projected form: a ring of the last `capacity` positions'
// keys and values ([capacity, H·d_h] each), so a decode step never re-projects the memory and
// costs O(mem_len·d) per layer instead of O(mem_len·d²) (MODEL-SPEC §1.4).
//
// The storage lives on a backend's device (host for the CPU backend, device memory for CUDA);
// this class keeps only the ring's bookkeeping, which is the same for every device. Backends
// write rows at SlotOfNewRow and the model then calls Advance.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#include "engine/tensor/tensor.h"
#include "kernels/cpu/relative_attention.h"

namespace mnemo::engine {

class XlMemory {
 public:
  XlMemory() = default;
  // An empty ring over `keys` and `values` ([capacity, width] each, same device, same dtype:
  // float32, or bfloat16 / float16 for 16-bit session memory (ModelOptions::session_memory)).
  XlMemory(Tensor keys, Tensor values);

  int64_t capacity() const { return capacity_; }
  int64_t width() const { return width_; }
  int64_t size() const { return size_; }
  int64_t start() const { return start_; }  // slot of the oldest stored position
  Device device() const { return keys_.device(); }
  DType dtype() const { return keys_.dtype(); }
  const Tensor& keys() const { return keys_; }
  const Tensor& values() const { return values_; }
  Tensor& keys() { return keys_; }
  Tensor& values() { return values_; }
  // Exact bytes held: 2 · capacity · width · element size (keys and values).
  size_t bytes() const;

  // The slot the r-th of `rows` rows appended next goes to, or −1 when that row is dropped
  // (only the last `capacity` rows of an append stay).
  int64_t SlotOfNewRow(int64_t r, int64_t rows) const;
  // Bookkeeping after `rows` rows were written at their slots: the oldest beyond capacity leave.
  void Advance(int64_t rows);
  // Bookkeeping after every slot was written (the "zeros" first-segment convention fills the
  // ring with the projection of a zero hidden state).
  void MarkFull();
  // The same bookkeeping over other storage of the same shape (clone, offload to host, restore).
  XlMemory WithStorage(Tensor keys, Tensor values) const;
  // Sets the bookkeeping read from a snapshot after checking it against the capacity (start in
  // [0, capacity), size in [0, capacity]; both 0 for a ring without storage). INVALID_ARGUMENT
  // naming `what` and the bad value, the ring unchanged.
  absl::Status SetBookkeeping(int64_t start, int64_t size, absl::string_view what);

  // Host storage only (CPU backend, tests): the stored positions, oldest first, as at most two
  // spans (16-bit spans for a 16-bit ring), and the key/value row of the j-th oldest stored
  // position (float32 rings only).
  void AppendSpans(std::vector<kernels::KvSpan>& spans) const;
  const float* KeyRow(int64_t j) const;
  const float* ValueRow(int64_t j) const;
  // Host storage only: stores a float32 key and value row at `slot` in the ring's dtype (16-bit
  // rings round to nearest even).
  void WriteRow(int64_t slot, const float* key, const float* value);

 private:
  int64_t capacity_ = 0;
  int64_t width_ = 0;
  int64_t start_ = 0;
  int64_t size_ = 0;
  Tensor keys_;    // [capacity, width]
  Tensor values_;  // [capacity, width]
};

}  // namespace mnemo::engine
