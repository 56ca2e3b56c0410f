#include "engine/tensor/sparse_weight.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/status_macros.h"
#include "engine/backend/backend.h"

namespace mnemo::engine {

std::shared_ptr<const SparseWeight> PlanSparseWeight(const Tensor& w) {
  if (w.device() != Device::kCpu || w.shape().size() != 2 ||
      (w.dtype() != DType::kF32 && w.dtype() != DType::kBF16 && w.dtype() != DType::kF16)) {
    return nullptr;
  }
  const int64_t rows = w.dim(0), cols = w.dim(1);
  // The sparse forms hold float32 values: a 16-bit matrix is widened (exactly) to build them.
  std::vector<float> widened;
  if (w.dtype() != DType::kF32) {
    widened.resize(static_cast<size_t>(rows * cols));
    ConvertToFloat(w.dtype(), w.raw(), widened.data(), widened.size());
  }
  const float* data = w.dtype() == DType::kF32 ? w.data<float>() : widened.data();
  int64_t nonzeros = 0;
  for (int64_t i = 0; i < rows * cols; ++i) nonzeros += data[i] != 0.0f;
  const auto dense_bytes = static_cast<double>(w.bytes());
  auto out = std::make_shared<SparseWeight>();
  out->density =
      rows * cols > 0 ? static_cast<double>(nonzeros) / static_cast<double>(rows * cols) : 1.0;
  // CSR costs ~6 bytes per nonzero (value + 16-bit column); 2:4 a fixed 2.25 per element.
  const double csr_bytes = 6.0 * static_cast<double>(nonzeros) + 8.0 * static_cast<double>(rows);
  const bool two_four = kernels::Is24Sparse(data, rows, cols);
  const double s24_bytes = 2.25 * static_cast<double>(rows * cols);
  const double best = std::min(csr_bytes, two_four ? s24_bytes : csr_bytes);
  if (best > kSparseMaxByteFraction * dense_bytes) return nullptr;
  if (two_four && s24_bytes <= csr_bytes) {
    out->format = SparseFormat::k24;
    out->s24 = kernels::To24(data, rows, cols);
  } else {
    out->format = SparseFormat::kCsr;
    out->csr = kernels::ToCsr(data, rows, cols);
  }
  return out;
}

bool SparsePaysFor(const SparseWeight& w, int64_t rows, size_t dense_bytes) {
  const int64_t tiles = (rows + 7) / 8;
  return static_cast<double>(tiles) * static_cast<double>(w.bytes()) <=
         kSparseMaxByteFraction * static_cast<double>(dense_bytes);
}

namespace {

// `bytes` bytes of host data as a device tensor of 32-bit words.
absl::StatusOr<Tensor> UploadWords(Backend& be, const void* data, size_t bytes) {
  const int64_t words = std::max<int64_t>(1, static_cast<int64_t>((bytes + 3) / 4));
  Tensor host = Tensor::Zeros(DType::kI32, {words});
  if (bytes > 0) std::memcpy(host.raw(), data, bytes);
  return be.CopyFromHost(host);
}

template <typename T>
absl::StatusOr<Tensor> UploadVector(Backend& be, const std::vector<T>& v) {
  return UploadWords(be, v.data(), v.size() * sizeof(T));
}

}  // namespace

absl::StatusOr<std::shared_ptr<const SparseWeight>> CopySparseWeightTo(const SparseWeight& host,
                                                                       Backend& backend) {
  auto copy = std::make_shared<SparseWeight>(host);
  if (copy->format == SparseFormat::kCsr) {
    ASSIGN_OR_RETURN(copy->device_row_start, UploadVector(backend, copy->csr.row_start));
    ASSIGN_OR_RETURN(copy->device_cols, copy->csr.col16.empty()
                                            ? UploadVector(backend, copy->csr.col32)
                                            : UploadVector(backend, copy->csr.col16));
    ASSIGN_OR_RETURN(copy->device_values, UploadVector(backend, copy->csr.values));
  } else {
    ASSIGN_OR_RETURN(copy->device_values, UploadVector(backend, copy->s24.values));
    ASSIGN_OR_RETURN(copy->device_meta, UploadVector(backend, copy->s24.meta));
  }
  return std::shared_ptr<const SparseWeight>(std::move(copy));
}

}  // namespace mnemo::engine
