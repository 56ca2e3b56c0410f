// 16-bit key/value rows widened for float32 products (kv_span.h).
#include "kernels/cpu/kv_span.h"

#include "kernels/cpu/half_linear.h"

namespace mnemo::kernels {

HeadRows HeadSlice(const KvSpan& span, bool values, int64_t row, int64_t n, int head,
                   int head_dim) {
  const int64_t at = row * span.ld + static_cast<int64_t>(head) * head_dim;
  if (span.type == WeightType::kF32) return {(values ? span.v : span.k) + at, span.ld};
  thread_local std::vector<float> widened;  // [n, head_dim]; grows once to the largest span
  const auto need = static_cast<size_t>(n * head_dim);
  if (widened.size() < need) widened.resize(need);
  WidenRows((values ? span.v16 : span.k16) + at, span.ld, span.type, n, head_dim, widened.data(),
            head_dim);
  return {widened.data(), head_dim};
}

}  // namespace mnemo::kernels
