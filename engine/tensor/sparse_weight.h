// A pruned weight matrix W [out, in] in the sparse format that moves the fewest bytes per
// product (MODEL-SPEC §8): CSR for unstructured pruning, 2:4 for structured. Checkpoints store
// pruned weights densely with zeros, as pruning tools write them; the loader measures each
// matrix and keeps a sparse form only where it pays (PlanSparseWeight).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/tensor/tensor.h"
#include "kernels/cpu/sparse_matmul.h"

namespace mnemo::engine {

enum class SparseFormat : uint8_t { kCsr, k24 };

struct SparseWeight {
  SparseFormat format = SparseFormat::kCsr;
  double density = 1.0;  // nonzeros ÷ elements
  kernels::CsrMatrix csr;
  kernels::Sparse24Matrix s24;
  size_t bytes() const { return format == SparseFormat::kCsr ? csr.bytes() : s24.bytes(); }
};

// A sparse form pays when it moves at most this fraction of the dense float32 bytes.
constexpr double kSparseMaxByteFraction = 0.8;

// The sparse form of the host float32 matrix `w` [out, in] that moves the fewest bytes, or null
// when none moves at most kSparseMaxByteFraction of the dense bytes.
std::shared_ptr<const SparseWeight> PlanSparseWeight(const Tensor& w);

// Whether a product of `rows` input rows should use `w`'s sparse form: each 8-row tile reads
// the sparse arrays once, dense BLAS reads the dense matrix once.
bool SparsePaysFor(const SparseWeight& w, int64_t rows, size_t dense_bytes);

}  // namespace mnemo::engine
