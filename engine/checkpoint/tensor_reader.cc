#include "engine/checkpoint/tensor_reader.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

// Element i of a float32, float16 or bfloat16 host tensor.
float ElementAsFloat(const Tensor& t, size_t i) {
  switch (t.dtype()) {
    case DType::kF16:
      return HalfToFloat(t.data<uint16_t>()[i]);
    case DType::kBF16:
      return BFloat16ToFloat(t.data<uint16_t>()[i]);
    default:
      return t.data<float>()[i];
  }
}

}  // namespace

// An all-ones exponent, tested on the bits (a branch-free loop the compiler vectorises; loading a
// model checks every weight).
size_t FirstNonFinite(const Tensor& t) {
  const auto n = static_cast<size_t>(t.numel());
  auto scan = [n](const auto* bits, auto exponent) {
    size_t i = 0;
    constexpr size_t kBlock = 4096;
    for (; i < n; i += kBlock) {  // whole blocks without an early exit, then find the element
      const size_t end = std::min(n, i + kBlock);
      bool bad = false;
      for (size_t j = i; j < end; ++j) bad |= (bits[j] & exponent) == exponent;
      if (bad) {
        while ((bits[i] & exponent) != exponent) ++i;
        return i;
      }
    }
    return n;
  };
  switch (t.dtype()) {
    case DType::kF32:
      return scan(static_cast<const uint32_t*>(t.raw()), uint32_t{0x7f800000});
    case DType::kBF16:
      return scan(static_cast<const uint16_t*>(t.raw()), uint16_t{0x7f80});
    case DType::kF16:
      return scan(static_cast<const uint16_t*>(t.raw()), uint16_t{0x7c00});
    default:
      return n;
  }
}

absl::Status TensorReader::CheckNoExtra() const {
  std::vector<std::string> extra;
  for (const SafetensorsTensor& t : file_.tensors()) {
    if (!used_.count(t.name)) extra.push_back(t.name);
  }
  if (extra.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(file_.path(),
                   ": unexpected tensor(s) not used by this config: ", absl::StrJoin(extra, ", ")));
}

absl::StatusOr<Tensor> TensorReader::ReadAs(const std::string& name, std::vector<int64_t> shape,
                                            DType dtype, bool fixed) {
  used_.insert(name);
  const SafetensorsTensor* t = file_.Find(name);
  if (t == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_.path(), ": missing tensor \"", name, "\" ", ShapeToString(shape)));
  }
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(file_.path(), ": tensor \"", name,
                                                   "\" has shape ", ShapeToString(t->shape),
                                                   ", config.json implies ", ShapeToString(shape)));
  }
  if (t->dtype != dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_.path(), ": tensor \"", name, "\" is ", DTypeName(t->dtype), " but ",
                     fixed ? "it must be " : "config.json torch_dtype is ", DTypeName(dtype)));
  }
  if (keep_alive_ != nullptr && reinterpret_cast<uintptr_t>(t->data) % DTypeSize(t->dtype) == 0) {
    void* data = const_cast<unsigned char*>(t->data);  // read-only by contract (see header)
    Tensor out(std::shared_ptr<void>(keep_alive_, data), t->dtype, Device::kCpu, std::move(shape));
    RETURN_IF_ERROR(CheckFinite(name, out));
    return out;
  }
  Tensor out = Tensor::Zeros(DType::kF32, std::move(shape));
  ConvertToFloat(t->dtype, t->data, out.data<float>(), static_cast<size_t>(out.numel()));
  RETURN_IF_ERROR(CheckFinite(name, out));
  return out;
}

absl::Status TensorReader::CheckFinite(const std::string& name, const Tensor& t) const {
  const size_t i = FirstNonFinite(t);
  if (i == static_cast<size_t>(t.numel())) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(file_.path(), ": tensor \"", name, "\" holds a non-finite value (",
                   ElementAsFloat(t, i), ") at element ", i, ": a corrupt checkpoint?"));
}

}  // namespace mnemo::engine
