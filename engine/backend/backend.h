// Backend: the narrow set of device operations the model is built from. The CPU implementation
// is the oracle every other backend is tested against. Tensors passed to a backend live on its
// device; shapes are validated by the caller (the model), not re-checked here.
// Ops return a Status because device backends can fail (launch errors, out of memory); the CPU
// backend never does for valid shapes.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/memory/xl_memory.h"
#include "engine/model/model_config.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// One sequence's relative attention (MODEL-SPEC §1.1) against its layer memory.
struct RelativeAttentionArgs {
  const Tensor* qkv;        // [T, 3·H·d_h]: q | k | v blocks, head-major inside each block
  const XlMemory* memory;   // the M positions before this segment (projected keys/values)
  const Tensor* rel_table;  // [P, H·d_h]: row p = W_r·sinusoid(p), P ≥ rows needed
  const Tensor* r_w_bias;   // [H, d_h]
  const Tensor* r_r_bias;   // [H, d_h]
  int num_heads;
  int head_dim;
  int64_t mem_len_max;
  int64_t clamp_len;  // 0 = no clamp
  bool same_length;
  Tensor* out;  // [T, H·d_h]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual Device device() const = 0;

  // A zero-filled tensor on this backend's device.
  virtual absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) = 0;

  // y[N, out] = x[N, in] · w[out, in]ᵀ (+ bias[out]).
  virtual absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  // Row-wise LayerNorm over the last dimension; y may be x.
  virtual absl::Status LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                 float eps, Tensor& y) = 0;
  // y = act(y + bias[last dim]).
  virtual absl::Status BiasActivation(const Tensor& bias, Activation act, Tensor& y) = 0;
  // y = a + b (same shapes; y may alias either).
  virtual absl::Status Add(const Tensor& a, const Tensor& b, Tensor& y) = 0;
  // y[N, D] = scale · table[ids[n], :]; ids are host int32 already checked against the table.
  virtual absl::Status Embedding(const Tensor& table, const std::vector<int32_t>& ids, float scale,
                                 Tensor& y) = 0;
  // Runs every sequence's attention of one layer (a ragged batch).
  virtual absl::Status RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) = 0;
};

// The CPU backend (OpenBLAS GEMMs, vectorised loops, the process-wide thread pool).
std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace mnemo::engine
