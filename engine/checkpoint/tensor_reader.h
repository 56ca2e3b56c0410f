// TensorReader: reads a checkpoint's tensors by name from a validated safetensors file, each
// checked against the shape config.json implies, the checkpoint's dtype and finiteness, with
// errors (INVALID_ARGUMENT) that name the file and the tensor; remembers what was read so that a
// tensor no config field accounts for is refused.
#pragma once

#include <cstddef>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

#include "base/dtype.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// The index of the first NaN or infinity of a float32, float16 or bfloat16 host tensor (numel
// when there is none).
size_t FirstNonFinite(const Tensor& t);

class TensorReader {
 public:
  // `dtype`: config.json's torch_dtype, the type every tensor but the fixed float32 ones must be
  // stored as. `keep_alive`, when set, owns `file` and lets aligned tensors alias the mapping in
  // their stored type (read-only by contract); otherwise every tensor is widened to float32.
  TensorReader(DType dtype, const SafetensorsFile& file,
               std::shared_ptr<const SafetensorsFile> keep_alive)
      : dtype_(dtype), file_(file), keep_alive_(std::move(keep_alive)) {}

  absl::StatusOr<Tensor> Read(const std::string& name, std::vector<int64_t> shape) {
    return ReadAs(name, std::move(shape), dtype_, /*fixed=*/false);
  }
  // A tensor stored as float32 whatever the checkpoint's torch_dtype (the rotary frequencies, as
  // Hugging Face keeps them; the sliding-window decoders' RMSNorm weights, which Gemma-2 applies
  // as 1 + w in float32).
  absl::StatusOr<Tensor> ReadFloat32(const std::string& name, std::vector<int64_t> shape) {
    return ReadAs(name, std::move(shape), DType::kF32, /*fixed=*/true);
  }

  const std::string& path() const { return file_.path(); }

  // Every tensor of the file must have been read.
  absl::Status CheckNoExtra() const;

 private:
  absl::StatusOr<Tensor> ReadAs(const std::string& name, std::vector<int64_t> shape, DType dtype,
                                bool fixed);
  // A NaN or infinite weight makes every output NaN (served with status OK): refused at load.
  absl::Status CheckFinite(const std::string& name, const Tensor& t) const;

  DType dtype_;
  const SafetensorsFile& file_;
  std::shared_ptr<const SafetensorsFile> keep_alive_;
  std::set<std::string> used_;
};

}  // namespace mnemo::engine
