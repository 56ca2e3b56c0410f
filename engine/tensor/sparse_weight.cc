#include "engine/tensor/sparse_weight.h"

#include <algorithm>

namespace mnemo::engine {

std::shared_ptr<const SparseWeight> PlanSparseWeight(const Tensor& w) {
  if (w.dtype() != DType::kF32 || w.device() != Device::kCpu || w.shape().size() != 2) {
    return nullptr;
  }
  const int64_t rows = w.dim(0), cols = w.dim(1);
  const float* data = w.data<float>();
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

}  // namespace mnemo::engine
