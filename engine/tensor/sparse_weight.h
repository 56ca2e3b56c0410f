// A pruned weight matrix W [out, in] in the sparse format that moves the fewest bytes per
// product (MODEL-SPEC §8): CSR for unstructured pruning, 2:4 for structured. Checkpoints store
// pruned weights densely with zeros, as pruning tools write them; the loader measures each
// matrix and keeps a sparse form only where it pays (PlanSparseWeight).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

#include "engine/tensor/tensor.h"
#include "kernels/cpu/sparse_matmul.h"

namespace mnemo::engine {

class Backend;

enum class SparseFormat : uint8_t { kCsr, k24 };

struct SparseWeight {
  SparseFormat format = SparseFormat::kCsr;
  double density = 1.0;  // nonzeros ÷ elements
  kernels::CsrMatrix csr;
  kernels::Sparse24Matrix s24;
  // Device backends: the arrays above copied to the device as raw words (CSR: row_start, the
  // 16- or 32-bit columns, values; 2:4: values, meta). Undefined on the CPU.
  Tensor device_row_start, device_cols, device_values, device_meta;
  size_t bytes() const { return format == SparseFormat::kCsr ? csr.bytes() : s24.bytes(); }
};

// A sparse form pays when it moves at most this fraction of the dense float32 bytes.
constexpr double kSparseMaxByteFraction = 0.8;

// The sparse form of the host float32 matrix `w` [out, in] that moves the fewest bytes, or null
// when none moves at most kSparseMaxByteFraction of the dense bytes.
std::shared_ptr<const SparseWeight> PlanSparseWeight(const Tensor& w);

// `host` with its arrays also copied to `backend`'s device (device_* set), for a device backend's
// SparseLinear.
absl::StatusOr<std::shared_ptr<const SparseWeight>> CopySparseWeightTo(const SparseWeight& host,
                                                                       Backend& backend);

// Whether a product of `rows` input rows should use `w`'s sparse form: each 8-row tile reads
// the sparse arrays once, dense BLAS reads the dense matrix once.
bool SparsePaysFor(const SparseWeight& w, int64_t rows, size_t dense_bytes);

}  // namespace mnemo::engine
