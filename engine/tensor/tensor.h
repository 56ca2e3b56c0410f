// Tensor: a shared buffer + dtype + device + shape. No autograd, no strides beyond row views:
// the engine runs one model family and keeps tensors contiguous.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "base/dtype.h"

namespace mnemo::engine {

enum class Device : uint8_t { kCpu, kCuda };

class Tensor {
 public:
  Tensor() = default;
  // Wraps `buffer` (owned through the shared_ptr's deleter) holding a contiguous tensor.
  Tensor(std::shared_ptr<void> buffer, DType dtype, Device device, std::vector<int64_t> shape);

  // A zero-filled host tensor, 64-byte aligned.
  static Tensor Zeros(DType dtype, std::vector<int64_t> shape);
  // A host tensor with unspecified contents, 64-byte aligned (scratch written before it is read).
  static Tensor Empty(DType dtype, std::vector<int64_t> shape);

  bool defined() const { return buffer_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i)]; }
  int64_t numel() const;
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }

  void* raw() const { return buffer_.get(); }
  template <typename T>
  T* data() const {
    return static_cast<T*>(buffer_.get());
  }

  // Rows [begin, end) along the first dimension, sharing this tensor's buffer.
  Tensor Rows(int64_t begin, int64_t end) const;
  // The same elements under another shape of equal element count, sharing the buffer (e.g. a
  // [D, D, taps] convolution weight as the [D, D·taps] matrix of one product).
  // INVALID_ARGUMENT when the counts differ.
  absl::StatusOr<Tensor> Reshaped(std::vector<int64_t> shape) const;

 private:
  std::shared_ptr<void> buffer_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCpu;
  std::vector<int64_t> shape_;
};

// A host copy of a float32, float16 or bfloat16 tensor as `dtype`: widening is exact; narrowing
// rounds to nearest even (exact for values that came from that type, as a 16-bit checkpoint's).
Tensor Converted(const Tensor& host, DType dtype);

// "[2, 3, 4]"
std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace mnemo::engine
