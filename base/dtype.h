// Element types of tensors and checkpoints, and the scalar conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace mnemo {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32 };

// Size of one element in bytes.
size_t DTypeSize(DType dtype);
// Canonical lower-case name ("float32", "float16", "bfloat16", "int32").
const char* DTypeName(DType dtype);
// Parses a torch-style dtype name ("float32", "float16", "bfloat16", "int32").
absl::StatusOr<DType> ParseDTypeName(std::string_view name);

// IEEE binary16 → binary32, exact (subnormals, inf and NaN included).
float HalfToFloat(uint16_t h);
// binary32 → binary16 with round-to-nearest-even.
uint16_t FloatToHalf(float f);

inline float BFloat16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// binary32 → bfloat16 with round-to-nearest-even (NaN stays NaN).
inline uint16_t FloatToBFloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// Converts `count` elements stored as `src_dtype` (f32, f16 or bf16) to float32.
void ConvertToFloat(DType src_dtype, const void* src, float* dst, size_t count);
// Stores `count` float32 values as `dst_dtype` (f32 copied; f16 and bf16 rounded to nearest
// even, exact for values that came from that type).
void ConvertFromFloat(const float* src, DType dst_dtype, void* dst, size_t count);

}  // namespace mnemo
