#include "engine/tensor/tensor.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mnemo::engine {

Tensor::Tensor(std::shared_ptr<void> buffer, DType dtype, Device device, std::vector<int64_t> shape)
    : buffer_(std::move(buffer)), dtype_(dtype), device_(device), shape_(std::move(shape)) {}

Tensor Tensor::Empty(DType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const size_t bytes = static_cast<size_t>(n) * DTypeSize(dtype);
  const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void* p = ::operator new (rounded, std::align_val_t{64});
  return Tensor(
      std::shared_ptr<void>(p, [](void* q) { ::operator delete (q, std::align_val_t{64}); }), dtype,
      Device::kCpu, std::move(shape));
}

Tensor Tensor::Zeros(DType dtype, std::vector<int64_t> shape) {
  Tensor t = Empty(dtype, std::move(shape));
  std::memset(t.raw(), 0, t.bytes());
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

Tensor Tensor::Rows(int64_t begin, int64_t end) const {
  std::vector<int64_t> shape = shape_;
  shape[0] = end - begin;
  const size_t row_bytes = bytes() / static_cast<size_t>(std::max<int64_t>(shape_[0], 1));
  auto* base = static_cast<char*>(buffer_.get()) + static_cast<size_t>(begin) * row_bytes;
  return Tensor(std::shared_ptr<void>(buffer_, base), dtype_, device_, std::move(shape));
}

absl::StatusOr<Tensor> Tensor::Reshaped(std::vector<int64_t> shape) const {
  Tensor out(buffer_, dtype_, device_, std::move(shape));
  if (out.numel() != numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot view ", ShapeToString(shape_), " as ", ShapeToString(out.shape_)));
  }
  return out;
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return "[" + absl::StrJoin(shape, ", ") + "]";
}

Tensor Converted(const Tensor& host, DType dtype) {
  Tensor out = Tensor::Empty(dtype, host.shape());
  const auto n = static_cast<size_t>(host.numel());
  if (dtype == DType::kF32) {
    ConvertToFloat(host.dtype(), host.raw(), out.data<float>(), n);
  } else if (host.dtype() == DType::kF32) {
    ConvertFromFloat(host.data<float>(), dtype, out.raw(), n);
  } else {  // one 16-bit type to the other, through float32
    std::vector<float> wide(n);
    ConvertToFloat(host.dtype(), host.raw(), wide.data(), n);
    ConvertFromFloat(wide.data(), dtype, out.raw(), n);
  }
  return out;
}

}  // namespace mnemo::engine
