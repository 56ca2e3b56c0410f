// One layer's Transformer-XL memory in projected form: a ring of the last `capacity` positions'
// keys and values ([capacity, H·d_h] each), so a decode step never re-projects the memory and
// costs O(mem_len·d) per layer instead of O(mem_len·d²) (MODEL-SPEC §1.4).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor/tensor.h"
#include "kernels/cpu/relative_attention.h"

namespace mnemo::engine {

class XlMemory {
 public:
  XlMemory() = default;
  // Allocates an empty ring (host memory).
  XlMemory(int64_t capacity, int64_t width);

  int64_t capacity() const { return capacity_; }
  int64_t width() const { return width_; }
  int64_t size() const { return size_; }
  // Exact bytes held: 2 · capacity · width · 4 (keys and values, float32).
  size_t bytes() const;

  // Fills the ring with `capacity` copies of one key row and one value row (the projection of a
  // zero hidden state: the "zeros" first-segment convention).
  void FillWith(const float* k_row, const float* v_row);
  // Appends `rows` positions (k/v rows `ld` floats apart), dropping the oldest beyond capacity.
  void Append(const float* k, const float* v, int64_t ld, int64_t rows);
  // The stored positions, oldest first, as at most two spans.
  void AppendSpans(std::vector<kernels::KvSpan>& spans) const;
  // Key/value row of the j-th oldest stored position.
  const float* KeyRow(int64_t j) const;
  const float* ValueRow(int64_t j) const;

  // A deep copy (fork / snapshot).
  XlMemory Clone() const;

 private:
  int64_t capacity_ = 0;
  int64_t width_ = 0;
  int64_t start_ = 0;  // slot of the oldest position
  int64_t size_ = 0;
  Tensor keys_;    // [capacity, width]
  Tensor values_;  // [capacity, width]
};

}  // namespace mnemo::engine
