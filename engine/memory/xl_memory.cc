#include "engine/memory/xl_memory.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

#include "base/dtype.h"
#include "engine/tensor/weight_type.h"

namespace mnemo::engine {

XlMemory::XlMemory(Tensor keys, Tensor values)
    : capacity_(keys.dim(0)),
      width_(keys.dim(1)),
      keys_(std::move(keys)),
      values_(std::move(values)) {}

size_t XlMemory::bytes() const {
  return keys_.defined() ? keys_.bytes() + values_.bytes() : 0;  // no storage: a linear layer
}

int64_t XlMemory::SlotOfNewRow(int64_t r, int64_t rows) const {
  const int64_t kept = std::min(rows, capacity_);
  const int64_t first_kept = rows - kept;
  if (r < first_kept) return -1;
  const int64_t end = (start_ + size_) % capacity_;  // slot after the newest position
  return (end + (r - first_kept)) % capacity_;
}

void XlMemory::Advance(int64_t rows) {
  if (capacity_ == 0) return;
  const int64_t kept = std::min(rows, capacity_);
  const int64_t end = (start_ + size_) % capacity_;
  const int64_t new_size = std::min(capacity_, size_ + kept);
  // The newest position sits at end + kept − 1; the oldest kept one new_size − 1 slots before.
  start_ = (end + kept - new_size + capacity_) % capacity_;
  size_ = new_size;
}

void XlMemory::MarkFull() {
  start_ = 0;
  size_ = capacity_;
}

XlMemory XlMemory::WithStorage(Tensor keys, Tensor values) const {
  XlMemory copy(std::move(keys), std::move(values));
  copy.start_ = start_;
  copy.size_ = size_;
  return copy;
}

absl::Status XlMemory::SetBookkeeping(int64_t start, int64_t size, absl::string_view what) {
  const bool start_ok = capacity_ == 0 ? start == 0 : start >= 0 && start < capacity_;
  if (!start_ok) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ring start ", start, " outside [0, ",
                                                   std::max<int64_t>(capacity_, 1), ")"));
  }
  if (size < 0 || size > capacity_) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ring size ", size, " outside [0, ", capacity_, "]"));
  }
  start_ = start;
  size_ = size;
  return absl::OkStatus();
}

void XlMemory::AppendSpans(std::vector<kernels::KvSpan>& spans) const {
  if (size_ == 0) return;
  const int64_t first = std::min(size_, capacity_ - start_);
  if (dtype() == DType::kF32) {
    const float* k = keys_.data<float>();
    const float* v = values_.data<float>();
    spans.push_back({k + start_ * width_, v + start_ * width_, width_, first});
    if (first < size_) spans.push_back({k, v, width_, size_ - first});
    return;
  }
  const uint16_t* k = keys_.data<uint16_t>();
  const uint16_t* v = values_.data<uint16_t>();
  const kernels::WeightType type = WeightTypeOf(dtype());
  spans.push_back(
      {nullptr, nullptr, width_, first, k + start_ * width_, v + start_ * width_, type});
  if (first < size_) spans.push_back({nullptr, nullptr, width_, size_ - first, k, v, type});
}

void XlMemory::WriteRow(int64_t slot, const float* key, const float* value) {
  const size_t at = static_cast<size_t>(slot * width_) * DTypeSize(dtype());
  ConvertFromFloat(key, dtype(), static_cast<char*>(keys_.raw()) + at, static_cast<size_t>(width_));
  ConvertFromFloat(value, dtype(), static_cast<char*>(values_.raw()) + at,
                   static_cast<size_t>(width_));
}

const float* XlMemory::KeyRow(int64_t j) const {
  return keys_.data<float>() + ((start_ + j) % capacity_) * width_;
}

const float* XlMemory::ValueRow(int64_t j) const {
  return values_.data<float>() + ((start_ + j) % capacity_) * width_;
}

}  // namespace mnemo::engine
