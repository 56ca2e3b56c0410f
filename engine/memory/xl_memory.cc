#include "engine/memory/xl_memory.h"

#include <algorithm>
#include <cstring>

namespace mnemo::engine {

XlMemory::XlMemory(int64_t capacity, int64_t width)
    : capacity_(capacity),
      width_(width),
      keys_(Tensor::Zeros(DType::kF32, {capacity, width})),
      values_(Tensor::Zeros(DType::kF32, {capacity, width})) {}

size_t XlMemory::bytes() const { return keys_.bytes() + values_.bytes(); }

void XlMemory::FillWith(const float* k_row, const float* v_row) {
  for (int64_t s = 0; s < capacity_; ++s) {
    std::memcpy(keys_.data<float>() + s * width_, k_row, width_ * sizeof(float));
    std::memcpy(values_.data<float>() + s * width_, v_row, width_ * sizeof(float));
  }
  start_ = 0;
  size_ = capacity_;
}

void XlMemory::Append(const float* k, const float* v, int64_t ld, int64_t rows) {
  if (capacity_ == 0) return;
  const int64_t skip = std::max<int64_t>(0, rows - capacity_);  // only the last capacity rows stay
  for (int64_t r = skip; r < rows; ++r) {
    int64_t slot;
    if (size_ < capacity_) {
      slot = (start_ + size_) % capacity_;
      ++size_;
    } else {
      slot = start_;
      start_ = (start_ + 1) % capacity_;
    }
    std::memcpy(keys_.data<float>() + slot * width_, k + r * ld, width_ * sizeof(float));
    std::memcpy(values_.data<float>() + slot * width_, v + r * ld, width_ * sizeof(float));
  }
}

void XlMemory::AppendSpans(std::vector<kernels::KvSpan>& spans) const {
  if (size_ == 0) return;
  const int64_t first = std::min(size_, capacity_ - start_);
  const float* k = keys_.data<float>();
  const float* v = values_.data<float>();
  spans.push_back({k + start_ * width_, v + start_ * width_, width_, first});
  if (first < size_) spans.push_back({k, v, width_, size_ - first});
}

const float* XlMemory::KeyRow(int64_t j) const {
  return keys_.data<float>() + ((start_ + j) % capacity_) * width_;
}

const float* XlMemory::ValueRow(int64_t j) const {
  return values_.data<float>() + ((start_ + j) % capacity_) * width_;
}

XlMemory XlMemory::Clone() const {
  XlMemory copy(capacity_, width_);
  std::memcpy(copy.keys_.raw(), keys_.raw(), keys_.bytes());
  std::memcpy(copy.values_.raw(), values_.raw(), values_.bytes());
  copy.start_ = start_;
  copy.size_ = size_;
  return copy;
}

}  // namespace mnemo::engine
